"""Sparse attention patterns, layouts and the block-sparse kernel against SDPA with the equivalent dense mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_sparse.attention import (
    BlockSparse,
    DilatedWindow,
    Full,
    GlobalTokens,
    SlidingWindow,
    build_layout,
    dense_mask,
    explain,
    sparse_attention,
    sparse_attention_reference,
)
from hf_sparse.attention.functional import layout_mask
from hf_sparse.errors import ConfigError
from hf_sparse.ops import _loader

kernels = pytest.mark.skipif(not _loader.load(), reason="C++ ops unavailable: " + str(_loader.status()["reason"]))

PATTERNS = {
    "window": SlidingWindow(5),
    "window-asym": SlidingWindow(7, 2),
    "dilated": DilatedWindow(4, 3),
    "global-window": SlidingWindow(3) | GlobalTokens((0, 9)),
    "bigbird": BlockSparse(block=16, window_blocks=1, global_blocks=1, random_blocks=2, seed=3),
    "window-and-dilated": SlidingWindow(20) & DilatedWindow(10, 2),
    "full": Full(),
}


def _sdpa_with_mask(q, k, v, mask, scale=None):
    """SDPA with a dense bool mask; rows without any allowed key are zero (SDPA itself gives NaN there)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    empty = ~mask.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | empty, scale=scale)
    return out.masked_fill(empty, 0.0)


def _inputs(B, H, Hkv, S, D, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, S, D, generator=g) for h in (H, Hkv, Hkv))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("S", [33, 130])
def test_layout_is_exactly_the_pattern(name, causal, S):
    pattern = PATTERNS[name]
    for block_q in (16, 32):
        layout = build_layout(pattern, S, S, causal=causal, block_q=block_q)
        expected = dense_mask(pattern, S, S, causal=causal)
        assert torch.equal(layout_mask(layout), expected)
        assert torch.equal(layout.to_dense(), expected)
    if name.startswith("window") and S == 130:
        assert layout.density() < 1.0


def test_layout_with_offsets_matches_the_dense_mask():
    pattern = SlidingWindow(20) | GlobalTokens((0,))
    layout = build_layout(pattern, 7, 150, q_offset=143, kv_offset=0, causal=True)
    assert torch.equal(layout_mask(layout), dense_mask(pattern, 7, 150, q_offset=143, causal=True))


@kernels
@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 4, 4, 77, 16), (1, 4, 2, 130, 32), (3, 2, 1, 9, 16)])
def test_kernel_forward_and_gradients_equal_sdpa_with_the_dense_mask(name, causal, shape):
    B, H, Hkv, S, D = shape
    pattern = PATTERNS[name]
    q, k, v = _inputs(B, H, Hkv, S, D, seed=S + H, requires_grad=True)
    pad = torch.ones(B, S, dtype=torch.bool)
    pad[-1, S - S // 4 :] = False  # padding in the last row
    mask = dense_mask(pattern, S, S, causal=causal).unsqueeze(0).unsqueeze(0) & pad[:, None, None, :]
    grad = torch.randn(B, H, S, D, generator=torch.Generator().manual_seed(1))
    ref = _sdpa_with_mask(q, k, v, mask)
    ref_grads = torch.autograd.grad((ref * grad).sum(), (q, k, v))
    for backend in ("cpu", "reference"):
        out = sparse_attention(q, k, v, pattern, causal=causal, key_padding_mask=pad, backend=backend)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-5)
        grads = torch.autograd.grad((out * grad).sum(), (q, k, v))
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@kernels
def test_kernel_opcheck_and_explain():
    q, k, v = _inputs(1, 2, 2, 40, 16, seed=0)
    layout = build_layout(SlidingWindow(6), 40, 40, block_q=16)
    args = (q, k, v, layout.kv_ptr, layout.kv_blocks, layout.mask_index, layout.bits, torch.empty(0), 0.3, 16)
    torch.library.opcheck(torch.ops.hf_sparse.sparse_attention, args, test_utils=("test_schema", "test_faketensor"))
    out, lse = torch.ops.hf_sparse.sparse_attention(*args)
    bwd_args = (torch.randn_like(out), q, k, v, out, lse, *args[3:])
    torch.library.opcheck(
        torch.ops.hf_sparse.sparse_attention_backward, bwd_args, test_utils=("test_schema", "test_faketensor")
    )
    why = explain(q.double(), k.double(), v.double(), dropout=0.1, top_k=3)["cpu"]
    assert any("float32" in r for r in why) and any("dropout" in r for r in why) and any("top-k" in r for r in why)
    with pytest.raises(ConfigError, match="cannot run this input.*dropout"):
        sparse_attention(q, k, v, SlidingWindow(3), dropout=0.1, backend="cpu")


@kernels
def test_kernel_rejects_a_malformed_layout_without_crashing():
    q, k, v = _inputs(1, 1, 1, 40, 16, seed=0)
    layout = build_layout(SlidingWindow(6), 40, 40, block_q=16)
    bad_blocks = layout.kv_blocks.clone()
    bad_blocks[0] = 99
    base = [q, k, v, layout.kv_ptr, layout.kv_blocks, layout.mask_index, layout.bits, torch.empty(0), 0.3, 16]
    for i, bad, match in [
        (4, bad_blocks, "kv_blocks.*out of range"),
        (5, torch.full_like(layout.mask_index, 7), "mask_index.*out of range"),
        (3, layout.kv_ptr[:-1], "kv_ptr must be int32"),
        (7, torch.zeros(2, 3), "key_bias must be"),
    ]:
        args = list(base)
        args[i] = bad
        with pytest.raises(ValueError, match=match):
            torch.ops.hf_sparse.sparse_attention(*args)


def test_top_k_keeps_the_largest_scores():
    q, k, v = _inputs(1, 2, 2, 20, 8, seed=4)
    out = sparse_attention(q, k, v, Full(), top_k=1)
    best = (q @ k.transpose(-1, -2)).argmax(-1)  # softmax over one score is that key's value
    torch.testing.assert_close(out, torch.gather(v, 2, best.unsqueeze(-1).expand(-1, -1, -1, 8)))
    full = sparse_attention_reference(q, k, v, Full(), top_k=20)
    torch.testing.assert_close(full, F.scaled_dot_product_attention(q, k, v))


def test_bigbird_random_blocks_are_seeded_and_bounded():
    a = BlockSparse(block=8, random_blocks=3, seed=1)
    m1, m2 = dense_mask(a, 64, 64), dense_mask(BlockSparse(block=8, random_blocks=3, seed=1), 64, 64)
    assert torch.equal(m1, m2)
    assert not torch.equal(m1, dense_mask(BlockSparse(block=8, random_blocks=3, seed=2), 64, 64))
    blocks = m1.reshape(8, 8, 8, 8).any(dim=(1, 3))
    assert int(blocks.sum(1).max()) <= 3 + 1 + 3 + 1  # window (3) + global + random (3) + global row
    with pytest.raises(ConfigError, match="non-negative"):
        SlidingWindow(-1)


@kernels
def test_lse_output_is_the_row_logsumexp_and_differentiable():
    q, k, v = _inputs(1, 2, 2, 50, 16, seed=5, requires_grad=True)
    layout = build_layout(SlidingWindow(7), 50, 50, block_q=24)
    args = (layout.kv_ptr, layout.kv_blocks, layout.mask_index, layout.bits, torch.empty(0), 0.25, 24)
    out, lse = torch.ops.hf_sparse.sparse_attention(q, k, v, *args)
    mask = dense_mask(SlidingWindow(7), 50, 50)
    scores = (q @ k.transpose(-1, -2) * 0.25).masked_fill(~mask, float("-inf"))
    ref = torch.logsumexp(scores, -1)
    torch.testing.assert_close(lse, ref, rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad((lse * 0.5).sum() + out.sum(), (q, k))
    g2 = torch.autograd.grad((ref * 0.5).sum() + _sdpa_with_mask(q, k, v, mask[None, None], 0.25).sum(), (q, k))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_lowrank_attention_is_exact_at_full_rank_and_pools_below_it():
    from hf_sparse.attention import lowrank_attention

    q, k, v = _inputs(2, 4, 2, 30, 16, seed=6, requires_grad=True)
    pad = torch.ones(2, 30, dtype=torch.bool)
    pad[1, :7] = False  # left padding
    full = lowrank_attention(q, k, v, rank=30, key_padding_mask=pad)
    torch.testing.assert_close(full, _sdpa_with_mask(q, k, v, pad[:, None, None, :].expand(2, 1, 30, 30)))
    low = lowrank_attention(q, k, v, rank=5, key_padding_mask=pad)
    # rank 5 over row 0's 30 keys: segments of 6; keys pooled to their segment means
    seg_k = k[0].reshape(2, 5, 6, 16).mean(2)
    seg_v = v[0].reshape(2, 5, 6, 16).mean(2)
    ref0 = F.scaled_dot_product_attention(q[0], seg_k.repeat_interleave(2, 0), seg_v.repeat_interleave(2, 0))
    torch.testing.assert_close(low[0], ref0)
    assert torch.isfinite(low).all()
    low.sum().backward()
    assert q.grad is not None and k.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="rank"):
        lowrank_attention(q, k, v, rank=0)


def test_a_layout_first_built_under_inference_mode_still_trains():
    """The block layout is cached by shape; one first built under torch.inference_mode must not poison a later
    training step at the same length ("Inference tensors cannot be saved for backward")."""
    q, k, v = (torch.randn(1, 2, 37, 16) for _ in range(3))
    with torch.inference_mode():
        sparse_attention(q, k, v, SlidingWindow(7), causal=True)
    q.requires_grad_(True)
    sparse_attention(q, k, v, SlidingWindow(7), causal=True).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
