"""Windowed attention on the real SmolLM2-135M (a Llama-architecture decoder): a window covering the text equals
transformers' eager attention, a short window changes the logits, greedy generation gives the same tokens with and
without the cache, and a saved checkpoint reloads with the pattern switched on."""

from __future__ import annotations

import pytest
import torch

from hf_sparse import SparseAttentionConfig, apply_sparse_attention_
from hf_sparse.data import smollm2_path

pytestmark = pytest.mark.real

TEXT = "The windmill stood on the hill above the village, and every autumn the farmers brought their grain to it."


@pytest.fixture(scope="module")
def loaded():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    inputs = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        eager = model(**inputs).logits
    return model, inputs, eager


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_windowed_attention_on_real_smollm2(loaded, tmp_path):
    model, inputs, eager = loaded
    length = inputs["input_ids"].shape[1]
    assert length > 16
    apply_sparse_attention_(model, SparseAttentionConfig(window=length))
    torch.testing.assert_close(_logits(model, inputs), eager, atol=2e-4, rtol=1e-4)

    apply_sparse_attention_(model, SparseAttentionConfig(window=8))
    short = _logits(model, inputs)
    assert torch.isfinite(short).all()
    # the window binds only after 8 tokens: the first positions are unchanged, later ones move
    torch.testing.assert_close(short[:, :8], eager[:, :8], atol=2e-4, rtol=1e-4)
    assert (short[:, 12:] - eager[:, 12:]).abs().max() > 1e-2

    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(**inputs, use_cache=True, **kwargs)
        uncached = model.generate(**inputs, use_cache=False, **kwargs)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)

    model.save_pretrained(tmp_path)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert reloaded.config._attn_implementation == "hf_sparse"
    torch.testing.assert_close(_logits(reloaded, inputs), short, atol=1e-5, rtol=0)
