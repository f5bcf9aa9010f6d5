"""attn_implementation="hf_sparse" inside transformers models: masks respected, same logits as SDPA with the
equivalent dense mask, save -> from_pretrained, training through the Trainer's backward pass."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AttentionInterface,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
)
from transformers.masking_utils import AttentionMaskInterface

import hf_sparse
from hf_sparse import SparseAttentionConfig, apply_sparse_attention_
from hf_sparse.errors import ConfigError
from hf_sparse.testing import tiny_causal_lm


def _bert(seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
        attention_probs_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg).eval()


def _llama(seed=0):
    return tiny_causal_lm("llama", seed)


def _batch(B, S, seed=0, left_pad=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 128, (B, S), generator=g)
    mask = torch.ones_like(ids)
    for b in range(1, B):
        n = 3 * b + 1
        if left_pad:
            mask[b, :n] = 0
        else:
            mask[b, S - n :] = 0
    return ids, mask


def _with_dense_mask(model, ids, mask, cfg: SparseAttentionConfig, causal: bool):
    """SDPA given the pattern as an explicit 4D boolean mask (transformers passes a 4D mask through as is)."""
    S = ids.shape[1]
    allowed = hf_sparse.attention.dense_mask(cfg.pattern_for(0), S, S, causal=causal)
    dense = allowed[None, None] & mask.bool()[:, None, None, :]
    dense = dense | ~dense.any(-1, keepdim=True)  # rows with no key: both sides give what SDPA gives unmasked
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=dense).logits


def test_registered_in_both_interfaces():
    assert "hf_sparse" in AttentionInterface._global_mapping
    assert "hf_sparse" in AttentionMaskInterface._global_mapping


@pytest.mark.parametrize("S", [37, 70])
@pytest.mark.parametrize(
    "cfg",
    [
        SparseAttentionConfig(window=4),
        SparseAttentionConfig(window=6, global_positions=(0,)),
        SparseAttentionConfig(pattern="dilated", window=3, dilation=2),
        SparseAttentionConfig(pattern="bigbird", block=8, random_blocks=1, seed=5),
    ],
    ids=["window", "global", "dilated", "bigbird"],
)
def test_bert_equals_sdpa_with_the_equivalent_mask(S, cfg):
    model = _bert()
    ids, mask = _batch(3, S)
    ref = _with_dense_mask(model, ids, mask, cfg, causal=False)
    apply_sparse_attention_(model, cfg)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_bert_full_window_gives_sdpa_logits_and_a_short_window_changes_them():
    model = _bert(1)
    ids, mask = _batch(2, 45, seed=1)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        hidden_ref = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    apply_sparse_attention_(model, SparseAttentionConfig(window=64))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, ref, rtol=1e-4, atol=1e-5)
    apply_sparse_attention_(model, SparseAttentionConfig(window=2))
    with torch.no_grad():
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (hidden - hidden_ref).abs().max() > 1e-3


@pytest.mark.parametrize(
    "cfg", [SparseAttentionConfig(window=5), SparseAttentionConfig(window=9, global_positions=(0,))]
)
def test_llama_equals_sdpa_with_the_equivalent_mask(cfg):
    model = _llama()
    ids, mask = _batch(2, 41, seed=2, left_pad=True)
    ref = _with_dense_mask(model, ids, mask, cfg, causal=True)
    apply_sparse_attention_(model, cfg)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()  # padded query rows attend nothing on either side
    torch.testing.assert_close(out[keep], ref[keep], rtol=1e-4, atol=1e-4)


def test_llama_generation_with_a_cache_matches_sdpa_when_the_window_covers_everything():
    model = _llama(3)
    ids, _ = _batch(1, 30, seed=3)
    model.set_attn_implementation("sdpa")
    ref = model.generate(ids, max_new_tokens=6, do_sample=False)
    apply_sparse_attention_(model, SparseAttentionConfig(window=512))
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), ref)


def test_token_id_globals_follow_the_tokens():
    model = _bert(4)
    ids, mask = _batch(2, 40, seed=4)
    ids[0, 17] = 7  # a "global" token in the middle of row 0 only
    cfg_pos = SparseAttentionConfig(window=2)
    apply_sparse_attention_(model, SparseAttentionConfig(window=2, global_token_ids=(7,)))
    with torch.no_grad():
        out = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    apply_sparse_attention_(model, cfg_pos)
    with torch.no_grad():
        plain = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    has_global = (ids == 7).any(1)
    assert (out[has_global] - plain[has_global]).abs().max() > 1e-4
    torch.testing.assert_close(out[~has_global], plain[~has_global])


def test_save_and_load_keep_the_pattern(tmp_path):
    model = _bert(5)
    cfg = SparseAttentionConfig(window=3, global_positions=(0,), layers=(1,))
    apply_sparse_attention_(model, cfg)
    ids, mask = _batch(2, 33, seed=5)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="hf_sparse").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits, out)
    assert SparseAttentionConfig.from_dict(loaded.config.hf_sparse_attention) == cfg


def test_missing_config_is_a_clear_error(tmp_path):
    model = _llama(6)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="hf_sparse")
    with pytest.raises(ConfigError, match="apply_sparse_attention_"):
        loaded(input_ids=torch.randint(0, 128, (1, 8)))


def test_training_gradients_match_sdpa_with_the_equivalent_mask():
    cfg = SparseAttentionConfig(window=4, global_positions=(0,))
    ids, mask = _batch(2, 29, seed=7)
    labels = torch.tensor([0, 1])
    grads = []
    for use_ours in (False, True):
        model = _bert(7).train()
        if use_ours:
            apply_sparse_attention_(model, cfg)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        else:
            S = ids.shape[1]
            dense = hf_sparse.attention.dense_mask(cfg.pattern_for(0), S, S)[None, None] & mask.bool()[:, None, None]
            model.set_attn_implementation("sdpa")
            loss = model(input_ids=ids, attention_mask=dense, labels=labels).loss
        loss.backward()
        grads.append(model.bert.encoder.layer[0].attention.self.query.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_lowrank_attention_in_an_encoder_and_refused_in_a_decoder():
    model = _bert(8)
    ids, mask = _batch(2, 40, seed=8)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
    apply_sparse_attention_(model, SparseAttentionConfig(pattern="lowrank", rank=64))  # rank >= length: exact
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, ref, rtol=1e-4, atol=1e-5)
    apply_sparse_attention_(model, SparseAttentionConfig(pattern="lowrank", rank=8))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids, attention_mask=mask).logits).all()
    decoder = _llama(8)
    apply_sparse_attention_(decoder, SparseAttentionConfig(pattern="lowrank", rank=8))
    with pytest.raises(ConfigError, match="causal"):
        decoder(input_ids=ids)
    with pytest.raises(ConfigError, match="lowrank"):
        SparseAttentionConfig(pattern="lowrank", causal=True)


@pytest.mark.real
def test_real_minilm_gives_sdpa_logits_when_the_window_covers_the_sequence():
    from transformers import AutoTokenizer

    from hf_sparse.data import load_rotten_tomatoes, minilm_l6_path, stratified_subset

    path = minilm_l6_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = list(stratified_subset(load_rotten_tomatoes(seed=42)["test"], 8, seed=0)["text"])
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation="sdpa").eval()
    with torch.no_grad():
        ref = model(**batch).logits
        apply_sparse_attention_(model, SparseAttentionConfig(window=128))
        torch.testing.assert_close(model(**batch).logits, ref, rtol=1e-4, atol=1e-5)
        apply_sparse_attention_(model, SparseAttentionConfig(window=8))  # a real window changes the result
        assert (model(**batch).logits - ref).abs().max() > 1e-4


def test_generation_with_a_static_cache_matches_the_dynamic_cache():
    """generate() prepares the mask of static (compileable) caches ahead of the forward pass with our mask function;
    the forward pass takes it back, and greedy tokens equal those of the dynamic cache, with left padding."""
    model = _llama(seed=3)
    apply_sparse_attention_(model, SparseAttentionConfig(window=10))
    ids, mask = _batch(2, 30, seed=4, left_pad=True)
    gen = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, attention_mask=mask)
    with torch.no_grad():
        dynamic = model.generate(ids, **gen)
        static = model.generate(ids, cache_implementation="static", **gen)
    assert torch.equal(static, dynamic)
