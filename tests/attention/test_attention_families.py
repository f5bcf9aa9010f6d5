"""attn_implementation="hf_sparse" across model families: every family either gives eager attention's numbers when
the window covers the sequence (and different numbers when it does not), or is refused with a ConfigError that names
the family and the feature. Tiny random-config models, seconds each."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    AutoModelForSequenceClassification,
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    Gemma2Config,
    Gemma2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

import hf_sparse  # noqa: F401  (registers the attention implementation)
from hf_sparse import SparseAttentionConfig, apply_sparse_attention_
from hf_sparse.attention import check_sparse_attention, sparse_attention
from hf_sparse.attention.config import CONFIG_KEY
from hf_sparse.errors import ConfigError
from hf_sparse.integrations.attention import sparse_attention_forward
from hf_sparse.nn.roles import UnsupportedFamilyError

COVER = SparseAttentionConfig(window=256)  # covers every sequence below
SHORT = SparseAttentionConfig(window=1)


def _ids(B=2, S=16, seed=0, vocab=96):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, S), generator=g)
    mask = torch.ones_like(ids)
    mask[1, S - 4 :] = 0  # right padding in row 1
    return ids, mask


def _bert():
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        attention_probs_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg).eval()


def _t5():
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=96,
        d_model=32,
        d_kv=16,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(cfg).eval()


def _bart():
    torch.manual_seed(0)
    cfg = BartConfig(
        vocab_size=96,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
    )
    return BartForConditionalGeneration(cfg).eval()


def _gemma2(softcap=1.0):
    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=6,
        attn_logit_softcapping=softcap,  # with the large weights below, dropping it changes the logits a lot
        query_pre_attn_scalar=16,
        initializer_range=0.3,
        pad_token_id=0,
    )
    return Gemma2ForCausalLM(cfg).eval()


def _distilbert():
    torch.manual_seed(0)
    cfg = DistilBertConfig(
        vocab_size=96, dim=32, n_layers=2, n_heads=2, hidden_dim=48, dropout=0.0, attention_dropout=0.0
    )
    return DistilBertForSequenceClassification(cfg).eval()


def _albert():
    torch.manual_seed(0)
    cfg = AlbertConfig(
        vocab_size=96,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return AlbertForSequenceClassification(cfg).eval()


def _deberta():
    torch.manual_seed(0)
    cfg = DebertaV2Config(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48
    )
    return DebertaV2ForSequenceClassification(cfg).eval()


def _logits(model, **inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _eager_then_ours(model, cfg, **inputs):
    model.set_attn_implementation("eager")
    ref = _logits(model, **inputs)
    apply_sparse_attention_(model, cfg)
    return ref, _logits(model, **inputs)


def _hidden(model, **inputs):
    """The last hidden states (of the encoder, for encoder-decoders): of order 1, unlike a tiny model's logits."""
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    enc = getattr(out, "encoder_last_hidden_state", None)
    return enc if enc is not None else out.hidden_states[-1]


def _assert_differs(a, b, where):
    assert (a - b).abs().max() > 1e-3, f"{where}: a window shorter than the sequence did not change the result"


def _assert_window_changes(model, where, keep=None, **inputs):
    apply_sparse_attention_(model, COVER)
    full = _hidden(model, **inputs)
    apply_sparse_attention_(model, SHORT)
    short = _hidden(model, **inputs)
    if keep is not None:
        full, short = full[keep], short[keep]
    _assert_differs(short, full, where)


def _assert_cached_generation_equals_recomputation(model, ids, mask):
    """Greedy generation with a cache (one query at a time) gives the scores of recomputing every step without one."""
    gen = dict(
        attention_mask=mask,
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        num_beams=1,
        output_scores=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        cached = model.generate(ids, **gen)
        recomputed = model.generate(ids, use_cache=False, **gen)
    assert torch.equal(cached.sequences, recomputed.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(recomputed.scores), rtol=1e-4, atol=1e-4)


# -- encoders ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [_bert, _distilbert, _albert], ids=["bert", "distilbert", "albert"])
def test_encoders_equal_eager_when_the_window_covers_the_sequence(make):
    ids, mask = _ids()
    model = make()
    ref, ours = _eager_then_ours(model, COVER, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    _assert_window_changes(model, make.__name__, input_ids=ids, attention_mask=mask)


def test_a_layer_selection_on_albert_is_refused_naming_its_shared_layers():
    """ALBERT runs one attention module as every layer: a per-layer pattern cannot be honoured."""
    model = _albert()
    for cfg in (SparseAttentionConfig(window=2, layers=(1,)), SparseAttentionConfig(window=2, layer_windows={"1": 4})):
        with pytest.raises(UnsupportedFamilyError, match="ALBERT model family: ALBERT shares one attention module"):
            apply_sparse_attention_(model, cfg)
    assert not hasattr(model.config, CONFIG_KEY)  # nothing recorded
    # A checkpoint whose config already records the selection (no apply_ call) is refused at the forward pass.
    setattr(model.config, CONFIG_KEY, SparseAttentionConfig(window=2, layers=(1,)).to_dict())
    model.set_attn_implementation("hf_sparse")
    ids, mask = _ids()
    with pytest.raises(UnsupportedFamilyError, match="ALBERT shares one attention module"):
        _logits(model, input_ids=ids, attention_mask=mask)


def test_deberta_v2_is_refused_and_nothing_is_recorded():
    model = _deberta()
    with pytest.raises(
        UnsupportedFamilyError, match="DeBERTa-v2 .* disentangled .* not through transformers' Attention"
    ):
        apply_sparse_attention_(model, SHORT)
    assert not hasattr(model.config, CONFIG_KEY)
    assert getattr(model.config, "attn_implementation", None) is None


# -- T5: relative position bias, config copies, cross-attention ----------------------------------------------------


def test_t5_relative_position_bias_is_honoured():
    model = _t5()
    ids, mask = _ids()
    dec = ids[:, :7]
    inputs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    ref, ours = _eager_then_ours(model, COVER, **inputs)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    # the encoder and decoder stacks hold copies of the config: each got the pattern
    assert getattr(model.encoder.config, CONFIG_KEY) == COVER.to_dict()
    assert getattr(model.decoder.config, CONFIG_KEY) == COVER.to_dict()
    _assert_window_changes(model, "T5", **inputs)


def test_t5_cached_generation_equals_recomputation_with_a_short_window():
    model = _t5()
    ids, mask = _ids(seed=1)
    apply_sparse_attention_(model, SparseAttentionConfig(window=2))
    _assert_cached_generation_equals_recomputation(model, ids, mask)


def test_the_kernel_backend_refuses_a_bias_by_name():
    model = _t5()
    apply_sparse_attention_(model, SparseAttentionConfig(window=4, backend="cpu"))
    ids, mask = _ids()
    with pytest.raises(ConfigError, match="T5's relative position bias"):
        _logits(model, input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :5])


# -- BART: cross-attention stays full ------------------------------------------------------------------------------


def test_bart_equals_eager_when_the_window_covers_the_sequence():
    model = _bart()
    ids, mask = _ids(seed=2)
    inputs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :9])
    ref, ours = _eager_then_ours(model, COVER, **inputs)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    _assert_window_changes(model, "BART", **inputs)


def test_bart_cross_attention_is_full_attention():
    model = _bart()
    apply_sparse_attention_(model, SparseAttentionConfig(window=1))
    module = model.model.decoder.layers[0].encoder_attn
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 2, 5, 16, generator=g)
    k, v = torch.randn(2, 2, 12, 16, generator=g), torch.randn(2, 2, 12, 16, generator=g)
    out, _ = sparse_attention_forward(module, q, k, v, None, scaling=0.25)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25).transpose(1, 2)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_bart_cached_generation_equals_recomputation_with_a_short_window():
    """With a cache the decoder sees one query at a time: if the cross-attention were windowed, that query would be
    placed at position 0 of the encoder instead of at its own position, and the tokens would differ."""
    model = _bart()
    ids, mask = _ids(seed=4)
    apply_sparse_attention_(model, SparseAttentionConfig(window=2))
    _assert_cached_generation_equals_recomputation(model, ids, mask)


# -- Gemma2: logit soft-capping ------------------------------------------------------------------------------------


def test_gemma2_softcapping_is_honoured():
    model = _gemma2()
    ids, mask = _ids(seed=5, S=14)
    ref, ours = _eager_then_ours(model, COVER, input_ids=ids, attention_mask=mask)
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], ref[keep], rtol=1e-4, atol=1e-4)
    _assert_window_changes(model, "Gemma2", keep=keep, input_ids=ids, attention_mask=mask)


def test_gemma2_kernel_backend_refuses_softcapping_by_name():
    model = _gemma2()
    apply_sparse_attention_(model, SparseAttentionConfig(window=4, backend="cpu"))
    ids, mask = _ids()
    with pytest.raises(ConfigError, match="Gemma 2's attn_logit_softcapping"):
        _logits(model, input_ids=ids, attention_mask=mask)


def test_bias_and_softcap_equal_the_eager_formula():
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 2, 9, 16, generator=g) for _ in range(3))
    bias = torch.randn(1, 2, 9, 9, generator=g)
    full = hf_sparse.attention.Full()
    out = sparse_attention(q, k, v, full, scale=0.5, bias=bias, softcap=0.7)
    scores = torch.tanh((q @ k.transpose(-1, -2)) * 0.5 / 0.7) * 0.7 + bias
    torch.testing.assert_close(out, torch.softmax(scores, -1) @ v, rtol=1e-5, atol=1e-6)


# -- arguments the kernel cannot honour ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sinks", "s_aux", "alibi", "some_new_argument"])
def test_an_unknown_argument_that_changes_the_result_is_refused(name):
    model = _bert()
    apply_sparse_attention_(model, COVER)
    module = model.bert.encoder.layer[0].attention.self
    q = k = v = torch.randn(1, 2, 4, 16)
    with pytest.raises(UnsupportedFamilyError, match=f"BERT \\(BertSelfAttention\\) passes .*{name}"):
        sparse_attention_forward(module, q, k, v, None, **{name: torch.zeros(2)})
    out, _ = sparse_attention_forward(module, q, k, v, None, **{name: None}, position_ids=torch.arange(4))
    assert out.shape == (1, 4, 2, 16)


# -- checkpoints ---------------------------------------------------------------------------------------------------


def test_a_saved_pattern_loads_with_the_sparse_implementation(tmp_path):
    model = _bert()
    ids, mask = _ids(seed=7)
    model.set_attn_implementation("sdpa")
    dense = _logits(model, input_ids=ids, attention_mask=mask)
    apply_sparse_attention_(model, SparseAttentionConfig(window=2))
    windowed = _logits(model, input_ids=ids, attention_mask=mask)
    hidden = _hidden(model, input_ids=ids, attention_mask=mask)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["attn_implementation"] == "hf_sparse"
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()  # no attn_implementation given
    assert loaded.config._attn_implementation == "hf_sparse"
    torch.testing.assert_close(_logits(loaded, input_ids=ids, attention_mask=mask), windowed)
    torch.testing.assert_close(_hidden(loaded, input_ids=ids, attention_mask=mask), hidden)
    model.set_attn_implementation("sdpa")  # the pattern stays recorded but no longer runs: said loudly
    with pytest.warns(UserWarning, match="SlidingWindow.* NOT applied"):
        _assert_differs(hidden, _hidden(model, input_ids=ids, attention_mask=mask), "BERT")
    explicit = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    with pytest.warns(UserWarning, match="SlidingWindow.* NOT applied"):
        torch.testing.assert_close(_logits(explicit, input_ids=ids, attention_mask=mask), dense, rtol=1e-4, atol=1e-5)

    assert check_sparse_attention(loaded)


def test_a_pattern_that_does_not_run_is_reported_loudly(tmp_path, caplog):
    """A checkpoint saved without the implementation in its config.json (an earlier version), or loaded with another
    implementation, runs full attention: the check says so, as a warning and in the log."""
    model = _bert()
    apply_sparse_attention_(model, SparseAttentionConfig(window=2))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["attn_implementation"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config._attn_implementation != "hf_sparse"
    with pytest.warns(UserWarning, match="SlidingWindow.* NOT applied .* attn_implementation='hf_sparse'"):
        assert not check_sparse_attention(loaded)
    assert "NOT applied" in caplog.text
