"""attn_implementation="hf_sparse" on the tiny models of every family in hf_sparse.testing.families, against an
independent oracle: eager attention (registered here as "banded_ref") with the window written as an explicit mask.

Decoders (Llama, Mistral, Qwen2/3, Gemma2/3, Phi-3, GPT-2): the windowed logits equal the oracle's, and greedy
generation gives the same tokens and scores with and without a cache. Encoder-decoders (T5, BART): the same, with
cross-attention left full. DistilBERT: a per-layer selection windows only the selected layers, also once saved and
loaded back. Checkpoints of BERT, Llama and T5 load with their pattern, or warn when loaded with another
implementation. A 4-D mask passed to the model is refused. Tiny models, about a second each.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import transformers
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import hf_sparse  # noqa: F401  (registers the attention implementation)
from hf_sparse import SparseAttentionConfig, apply_sparse_attention_
from hf_sparse.attention import remove_sparse_attention_
from hf_sparse.errors import ConfigError
from hf_sparse.testing.families import FAMILIES, tiny_model

REFERENCE = "banded_ref"
WINDOW = 3


def _banded_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Eager attention whose band ``|q - k| <= WINDOW`` is an explicit mask, in the modules marked ``_banded``
    (every self-attention module unless a test marks fewer). Queries are the last positions of the keys (a cache
    holds the keys up to the query), so the band is over the same absolute positions with and without a cache."""
    n = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(n, 1), value.repeat_interleave(n, 1)
    sq, skv = query.shape[2], key.shape[2]
    scores = (query @ key.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if kwargs.get("softcap") is not None:
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    if kwargs.get("position_bias") is not None:
        scores = scores + kwargs["position_bias"]
    allowed = torch.ones(sq, skv, dtype=torch.bool)
    if getattr(module, "_banded", True):
        q = torch.arange(skv - sq, skv)[:, None]
        k = torch.arange(skv)[None, :]
        allowed = (q - k).abs() <= WINDOW
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores.float(), -1).nan_to_num(0.0).to(value.dtype)
    return (probs @ value).transpose(1, 2).contiguous(), probs


def _boolean_mask(*args, allow_is_causal_skip=True, allow_is_bidirectional_skip=False, **kwargs):
    return sdpa_mask(*args, allow_is_causal_skip=False, allow_is_bidirectional_skip=False, **kwargs)


AttentionInterface.register(REFERENCE, _banded_attention)
AttentionMaskInterface.register(REFERENCE, _boolean_mask)

DECODERS = [f for f in sorted(FAMILIES) if FAMILIES[f].kind == "decoder"]
# Mistral and Gemma 2 with their own sliding window shorter than the sequences: the model composes it into the
# mask, and the pattern must apply on top of it (Mistral's window is wider than the pattern's; Gemma 2's is
# narrower, in the sliding layers it alternates with full ones). Their caches keep only the window's keys.
OWN_WINDOW = {"mistral": dict(sliding_window=6), "gemma2": dict(sliding_window=2)}
CASES = [(f, {}) for f in DECODERS] + [(f, kw) for f, kw in OWN_WINDOW.items()]


def _inputs(batch=2, length=12, seed=0, left_pad=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 128, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    if left_pad:
        mask[-1, :left_pad] = 0
        ids[-1, :left_pad] = 0
    return ids, mask


def _mark_cross_attention(model):
    """Cross-attention modules (BART's ``encoder_attn``, T5's ``EncDecAttention``) get no band in the oracle."""
    for name, module in model.named_modules():
        if name.endswith(("encoder_attn", "EncDecAttention")):
            module._banded = False


def _generate(model, ids, mask, use_cache):
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            num_beams=1,
            use_cache=use_cache,
            output_scores=True,
            return_dict_in_generate=True,
        )
    return out.sequences, torch.stack(out.scores)


def _assert_scores_close(a, b):
    finite = torch.isfinite(b)  # min_new_tokens puts -inf at the end-of-sequence token
    assert torch.equal(torch.isfinite(a), finite)
    torch.testing.assert_close(a[finite], b[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,overrides", CASES, ids=[f + ("-own-window" if kw else "") for f, kw in CASES])
def test_decoder_window_equals_an_explicit_banded_mask_with_and_without_cache(family, overrides):
    model = tiny_model(family, **overrides)
    ids, mask = _inputs(left_pad=3)
    model.set_attn_implementation(REFERENCE)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    ref_tokens, ref_scores = _generate(model, ids, mask, use_cache=False)
    apply_sparse_attention_(model, SparseAttentionConfig(window=WINDOW))
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], rtol=1e-5, atol=1e-5)
    for use_cache in (True, False):
        tokens, scores = _generate(model, ids, mask, use_cache)
        assert torch.equal(tokens, ref_tokens), f"{family} use_cache={use_cache}"
        _assert_scores_close(scores, ref_scores)
    # The oracle is not vacuous: full attention gives other logits.
    model.set_attn_implementation("eager")
    with pytest.warns(UserWarning, match="NOT applied"):
        with torch.no_grad():
            full = model(input_ids=ids, attention_mask=mask).logits
    assert (full[valid] - expected[valid]).abs().max() > 1e-4


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_seq2seq_window_equals_the_reference_and_cached_generation_equals_recomputation(family):
    model = tiny_model(family)
    _mark_cross_attention(model)
    ids, mask = _inputs(length=12, left_pad=0)
    mask[-1, -3:] = 0  # right padding of the encoder input
    decoder = _inputs(length=7, seed=1)[0]  # another length than the encoder's: cross-attention is not square
    model.set_attn_implementation(REFERENCE)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
    ref_tokens, ref_scores = _generate(model, ids, mask, use_cache=False)
    apply_sparse_attention_(model, SparseAttentionConfig(window=WINDOW))
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # With a cache the decoder's one query sits at its own position, and cross-attention stays full.
    for use_cache in (True, False):
        tokens, scores = _generate(model, ids, mask, use_cache)
        assert torch.equal(tokens, ref_tokens), f"{family} use_cache={use_cache}"
        _assert_scores_close(scores, ref_scores)


def test_distilbert_selects_layers_by_index_and_keeps_the_selection_when_reloaded(tmp_path):
    model = tiny_model("distilbert", dropout=0.0, attention_dropout=0.0)
    reference = tiny_model("distilbert", dropout=0.0, attention_dropout=0.0)
    ids, mask = _inputs(length=12)
    mask[-1, -4:] = 0
    # The oracle: eager attention with the band in layer 1 only.
    reference.set_attn_implementation(REFERENCE)
    reference.distilbert.transformer.layer[0].attention._banded = False
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    report = apply_sparse_attention_(model, SparseAttentionConfig(window=256, layer_windows={"1": WINDOW}))
    assert report["layers"] == [0, 1]
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    valid = mask.bool()
    for i in (1, 2):
        torch.testing.assert_close(got.hidden_states[i][valid], expected.hidden_states[i][valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    # Saved and loaded back (nothing applies the pattern again): the layer order of the first forward pass
    # indexes the layers, and the selection holds.
    model.save_pretrained(tmp_path)
    loaded = transformers.DistilBertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config._attn_implementation == "hf_sparse"
    with torch.no_grad():
        again = loaded(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(again, expected.logits, rtol=1e-5, atol=1e-5)
    # layers= selects layer 1 only: layer 0 is full, so its output is the unbanded one.
    only = tiny_model("distilbert", dropout=0.0, attention_dropout=0.0)
    assert apply_sparse_attention_(only, SparseAttentionConfig(window=WINDOW, layers=(1,)))["layers"] == [1]
    with torch.no_grad():
        torch.testing.assert_close(
            only(input_ids=ids, attention_mask=mask).logits, expected.logits, atol=1e-5, rtol=1e-5
        )


def _inputs_for(family):
    ids, mask = _inputs(length=12, seed=4)
    inputs = dict(input_ids=ids, attention_mask=mask)
    if FAMILIES[family].kind == "seq2seq":
        inputs["decoder_input_ids"] = ids[:, :5]
    return inputs


@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_a_checkpoint_loads_its_pattern_or_warns_loudly(family, tmp_path):
    model = tiny_model(family)
    inputs = _inputs_for(family)
    with torch.no_grad():
        dense = model(**inputs).logits
    apply_sparse_attention_(model, SparseAttentionConfig(window=1))
    with torch.no_grad():
        windowed = model(**inputs).logits
    assert (windowed - dense).abs().max() > 1e-4
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["attn_implementation"] == "hf_sparse"
    model_class = getattr(transformers, FAMILIES[family].model_class)
    # Without attn_implementation: the recorded pattern runs.
    loaded = model_class.from_pretrained(tmp_path).eval()
    assert loaded.config._attn_implementation == "hf_sparse"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, windowed)
    # With another implementation passed explicitly: full attention, said loudly (once) at the first forward pass.
    explicit = model_class.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert explicit.config._attn_implementation == "sdpa"
    with pytest.warns(UserWarning, match=r"SlidingWindow\(left=1.* NOT applied .*attn_implementation='hf_sparse'"):
        with torch.no_grad():
            torch.testing.assert_close(explicit(**inputs).logits, dense, rtol=1e-4, atol=1e-5)
    # Made dense on purpose: no record, no warning, and a checkpoint that loads dense.
    remove_sparse_attention_(loaded)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs).logits, dense, rtol=1e-4, atol=1e-5)
    loaded.save_pretrained(tmp_path / "dense")
    saved = json.loads((tmp_path / "dense" / "config.json").read_text())
    assert "hf_sparse_attention" not in saved and saved.get("attn_implementation") != "hf_sparse"


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_a_4d_mask_or_additive_bias_is_refused(family):
    model = tiny_model(family)
    apply_sparse_attention_(model, SparseAttentionConfig(window=2))
    ids, _ = _inputs(length=6)
    bias = torch.zeros(2, 1, 6, 6)
    bias[..., 0] = -5.0  # an ALiBi-like additive bias
    with pytest.raises(ConfigError, match="got an additive bias of shape \\(2, 1, 6, 6\\)"):
        with torch.no_grad():
            model(input_ids=ids, attention_mask=bias)
