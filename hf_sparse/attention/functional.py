"""``sparse_attention``: attention restricted by a pattern, run by our block-sparse C++ kernel or by a PyTorch
reference (dense boolean mask + SDPA maths) that is both the fallback and the test oracle.

Both give what ``torch.nn.functional.scaled_dot_product_attention`` gives with the equivalent dense boolean mask,
except that a query row no key may attend returns zeros (SDPA returns NaN there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError, quote
from ..ops import _loader
from .layout import BlockLayout, build_layout
from .patterns import Pattern, dense_mask

__all__ = ["sparse_attention", "sparse_attention_reference", "lowrank_attention", "explain", "layout_mask"]

_ops = torch.ops.hf_sparse


def _full_mask(
    pattern: Pattern,
    q_length: int,
    kv_length: int,
    *,
    causal: bool,
    q_offset: int,
    kv_offset: int,
    key_padding_mask: torch.Tensor | None,
    is_global: torch.Tensor | None,
    device,
) -> torch.Tensor:
    """(B or 1, 1, Sq, Skv) bool: pattern, causal and padding together."""
    m = dense_mask(
        pattern, q_length, kv_length, q_offset=q_offset, kv_offset=kv_offset, causal=causal, is_global=is_global
    ).to(device)
    m = m.unsqueeze(0) if m.dim() == 2 else m  # (B or 1, Sq, Skv)
    if key_padding_mask is not None:
        m = m & key_padding_mask.to(device=device, dtype=torch.bool).unsqueeze(1)
    return m.unsqueeze(1)


def sparse_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pattern: Pattern,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    q_offset: int = 0,
    kv_offset: int = 0,
    is_global: torch.Tensor | None = None,
    dropout: float = 0.0,
    top_k: int | None = None,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention with the pattern as a dense boolean mask, in plain PyTorch (differentiable).

    ``top_k`` additionally keeps only the ``top_k`` largest allowed scores of each query (dynamic attention
    pruning). ``softcap`` caps the scaled scores as ``tanh(scores / softcap) * softcap`` (Gemma 2's logit
    soft-capping) and ``bias`` is then added to them (T5's relative position bias), both before the pattern masks
    them, in the order transformers' eager attention of those models uses.

    Shapes:
        query: (B, H, Sq, D). key, value: (B, Hkv, Skv, D). key_padding_mask: (B, Skv) bool, True = a real token.
        bias: broadcastable to (B, H, Sq, Skv). Returns: (B, H, Sq, D).
    """
    B, H, Sq, D = query.shape
    Skv = key.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    mask = _full_mask(
        pattern,
        Sq,
        Skv,
        causal=causal,
        q_offset=q_offset,
        kv_offset=kv_offset,
        key_padding_mask=key_padding_mask,
        is_global=is_global,
        device=query.device,
    )
    if key.shape[1] != H:
        key = key.repeat_interleave(H // key.shape[1], dim=1)
        value = value.repeat_interleave(H // value.shape[1], dim=1)
    empty = ~mask.any(-1, keepdim=True)  # rows with no allowed key: computed unmasked, then zeroed
    mask = mask | empty
    if bias is not None:
        _check_bias(bias, B, H, Sq, Skv)
    if top_k is not None or bias is not None or softcap is not None:
        scores = (query @ key.transpose(-1, -2)) * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if bias is not None:
            scores = scores + bias.to(scores.dtype)
        scores = scores.masked_fill(~mask, float("-inf"))
        if top_k is not None and top_k < Skv:
            kth = scores.topk(top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        probs = F.dropout(probs, p=dropout, training=dropout > 0)
        out = probs @ value
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)
    return out.masked_fill(empty, 0.0)


def _check_bias(bias: torch.Tensor, B: int, H: int, Sq: int, Skv: int) -> None:
    if bias.dim() != 4 or any(n not in (1, want) for n, want in zip(bias.shape, (B, H, Sq, Skv))):
        raise ConfigError(
            f"sparse_attention: bias must broadcast to (batch, heads, queries, keys) = {(B, H, Sq, Skv)}, got "
            f"{tuple(bias.shape)}."
        )


def layout_mask(layout: BlockLayout) -> torch.Tensor:
    """(Sq, Skv) bool mask of a block layout (the same as ``layout.to_dense()``)."""
    return layout.to_dense()


# -- backends ------------------------------------------------------------------------------------------------------


_BIAS_REASON = "an additive score bias (e.g. T5's relative position bias) is not implemented in the kernel"
_SOFTCAP_REASON = "logit soft-capping (e.g. Gemma 2's attn_logit_softcapping) is not implemented in the kernel"


def _score_reasons(bias, softcap) -> list[str]:
    return ([_BIAS_REASON] if bias is not None else []) + ([_SOFTCAP_REASON] if softcap is not None else [])


def _kernel_reasons(query, key, value, *, dropout, top_k, bias=None, softcap=None) -> list[str]:
    out = []
    if query.device.type != "cpu":
        out.append(f"device {query.device.type} is not supported (cpu)")
    if {query.dtype, key.dtype, value.dtype} != {torch.float32}:
        out.append(f"dtypes {sorted({str(t.dtype) for t in (query, key, value)})} are not supported (float32)")
    if query.shape[-1] % 16:
        out.append(f"head_dim {query.shape[-1]} is not a multiple of 16")
    if query.shape[1] % key.shape[1]:
        out.append("query heads are not a multiple of key/value heads")
    if dropout > 0:
        out.append("attention dropout is not implemented in the kernel (it runs in training only; eval is exact)")
    if top_k is not None:
        out.append("top-k pruning needs whole score rows; the reference computes it")
    out += _score_reasons(bias, softcap)
    if not _loader.load():
        out.append(f"the C++ ops are not available: {_loader.status()['reason']}")
    return out


_CUDA_HEAD_DIMS = (32, 64, 96, 128)  # what sparse_attention.cu instantiates
_CUDA_MAX_BLOCK_Q = 128


def _cuda_reasons(query, key, value, *, dropout, top_k, block_q, bias=None, softcap=None) -> list[str]:
    """Why our CUDA kernel (kernels/csrc/cuda/sparse_attention.cu, via binding.cpp) cannot take this input."""
    out = []
    if query.device.type != "cuda":
        out.append(f"device {query.device.type} is not supported (cuda)")
    if len({query.device, key.device, value.device}) > 1:
        out.append("query, key and value are on different devices")
    dtypes = {query.dtype, key.dtype, value.dtype}
    if len(dtypes) > 1 or not dtypes <= {torch.float16, torch.bfloat16, torch.float32}:
        out.append(f"dtypes {sorted(map(str, dtypes))} are not supported (one of float16, bfloat16, float32)")
    if query.shape[-1] not in _CUDA_HEAD_DIMS:
        out.append(f"head_dim {query.shape[-1]} is not supported (32, 64, 96 or 128)")
    if query.shape[1] % key.shape[1]:
        out.append("query heads are not a multiple of key/value heads")
    if not 1 <= block_q <= _CUDA_MAX_BLOCK_Q:
        out.append(f"block_q {block_q} is not in [1, {_CUDA_MAX_BLOCK_Q}]")
    if dropout > 0:
        out.append("attention dropout is not implemented in the kernel (it runs in training only; eval is exact)")
    if top_k is not None:
        out.append("top-k pruning needs whole score rows; the reference computes it")
    out += _score_reasons(bias, softcap)
    if not out and not _loader.load_cuda():  # only now: the first call may build the extension (minutes)
        out.append(f"the CUDA ops are not available: {_loader.cuda_status()}")
    return out


def explain(
    query,
    key,
    value,
    *,
    dropout: float = 0.0,
    top_k: int | None = None,
    block_q: int = 24,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
) -> dict[str, list[str]]:
    """For each backend, why it cannot run this input (an empty list: it can)."""
    extra = dict(bias=bias, softcap=softcap)
    return {
        "cpu": _kernel_reasons(query, key, value, dropout=dropout, top_k=top_k, **extra),
        "cuda": _cuda_reasons(query, key, value, dropout=dropout, top_k=top_k, block_q=block_q, **extra),
        "reference": [],
    }


def sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pattern: Pattern,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    q_offset: int = 0,
    kv_offset: int = 0,
    is_global: torch.Tensor | None = None,
    dropout: float = 0.0,
    top_k: int | None = None,
    block_q: int = 24,
    backend: str | None = None,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention restricted to ``pattern`` (and ``causal``, and the keys ``key_padding_mask`` keeps).

    Runs our block-sparse C++ kernel when it can take the input (CPU, float32, no dropout, no top-k), or our CUDA
    kernel for CUDA tensors (float16/bfloat16/float32, head_dim 32/64/96/128, when the CUDA extension is built),
    else the reference; ``backend="cpu"``, ``"cuda"`` or ``"reference"`` insists and raises with the reasons when
    it cannot. (The layout is built on the host and passed as CPU tensors; the CUDA op checks and copies it.)

    Args:
        q_offset, kv_offset: absolute positions of the first query and key (decoding with a cache).
        is_global: (B, kv_offset + Skv) bool, global positions per batch row (token-id globals).
        block_q: query rows per kernel tile.
        bias: an additive score bias (T5's relative position bias), added after scaling (and soft-capping).
        softcap: logit soft-capping, ``tanh(scores / softcap) * softcap`` (Gemma 2). Both run in the reference.

    Shapes:
        query: (B, H, Sq, D). key, value: (B, Hkv, Skv, D), H a multiple of Hkv. bias: broadcastable to
        (B, H, Sq, Skv). Returns: (B, H, Sq, D).
    """
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ConfigError(
            f"sparse_attention: query, key and value must be (batch, heads, length, head_dim), got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}."
        )
    if backend not in (None, "cpu", "cuda", "reference"):
        raise ConfigError(f"sparse_attention: unknown backend {quote(backend)}; choose 'cpu', 'cuda' or 'reference'.")
    on_cuda = query.device.type == "cuda"
    why: dict[str, list[str]] = {}  # only the backends this call could use (checking CUDA may build it)
    if backend == "cpu" or (backend is None and not on_cuda):
        why["cpu"] = _kernel_reasons(query, key, value, dropout=dropout, top_k=top_k, bias=bias, softcap=softcap)
    if backend == "cuda" or (backend is None and on_cuda):
        why["cuda"] = _cuda_reasons(
            query, key, value, dropout=dropout, top_k=top_k, block_q=block_q, bias=bias, softcap=softcap
        )
    if backend in why and why[backend]:
        raise ConfigError(
            f"sparse_attention: backend {quote(backend)} cannot run this input: " + "; ".join(why[backend]) + "."
        )
    reasons = why.get("cuda" if on_cuda else "cpu", ["the reference was asked for"])
    kwargs = dict(
        causal=causal, key_padding_mask=key_padding_mask, scale=scale, q_offset=q_offset, kv_offset=kv_offset
    )
    if backend == "reference" or reasons:
        return sparse_attention_reference(
            query,
            key,
            value,
            pattern,
            is_global=is_global,
            dropout=dropout,
            top_k=top_k,
            bias=bias,
            softcap=softcap,
            **kwargs,
        )
    B, H, Sq, D = query.shape
    Skv = key.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    bias = torch.empty(0)
    if key_padding_mask is not None:
        keep = key_padding_mask.to(torch.bool)
        if not bool(keep.all()):
            bias = torch.zeros(B, Skv, device=query.device).masked_fill_(~keep.to(query.device), float("-inf"))
    rows = range(B) if is_global is not None else [None]
    outs = []
    for b in rows:  # token-id globals make one layout per sequence; otherwise one for the whole batch
        layout = build_layout(
            pattern,
            Sq,
            Skv,
            q_offset=q_offset,
            kv_offset=kv_offset,
            causal=causal,
            block_q=block_q,
            is_global=None if b is None else is_global[b],
        )
        sl = slice(None) if b is None else slice(b, b + 1)
        out, _ = _ops.sparse_attention(
            query[sl],
            key[sl],
            value[sl],
            layout.kv_ptr,
            layout.kv_blocks,
            layout.mask_index,
            layout.bits,
            bias[sl] if bias.numel() else bias,
            float(scale),
            block_q,
        )
        outs.append(out)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def lowrank_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rank: int,
    *,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Low-rank (Linformer-style) attention: keys and values are projected along the sequence to ``rank`` rows
    before the softmax, so the cost is O(S * rank) instead of O(S^2). The projection is fixed, not learned: row r
    averages the r-th of ``rank`` equal segments of each sequence's real (unpadded) keys. With ``rank`` at least the
    sequence length every segment is one key and the result is exact attention.

    Bidirectional only (a pooled key mixes positions after the query).

    Shapes:
        query: (B, H, Sq, D). key, value: (B, Hkv, Skv, D). key_padding_mask: (B, Skv) bool. Returns: (B, H, Sq, D).
    """
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"lowrank_attention: rank must be a positive integer, got {quote(rank)}.")
    B, H, Sq, D = query.shape
    Skv = key.shape[2]
    if key_padding_mask is None:
        lengths = torch.full((B,), Skv, dtype=torch.int64)
    else:
        lengths = key_padding_mask.to(torch.bool).sum(1).cpu()
    pos = torch.arange(Skv).unsqueeze(0)  # real keys are taken as the first `length` positions' order
    order = (
        torch.argsort((~key_padding_mask.to(torch.bool)).to(torch.int8), dim=1, stable=True).cpu()
        if (key_padding_mask is not None)
        else pos.expand(B, Skv)
    )
    r = torch.minimum(lengths, torch.tensor(rank)).clamp(min=1)  # segments per row
    # segment of the j-th real key of row b: floor(j * r_b / length_b); padded keys get no segment
    seg = (pos * r.unsqueeze(1)) // lengths.clamp(min=1).unsqueeze(1)
    real = pos < lengths.unsqueeze(1)
    proj = torch.zeros(B, rank, Skv, dtype=query.dtype)
    rows = torch.arange(B).unsqueeze(1).expand(B, Skv)
    proj[rows[real], seg[real], order[real]] = 1.0
    proj = proj / proj.sum(-1, keepdim=True).clamp(min=1.0)
    proj = proj.to(query.device).unsqueeze(1)  # (B, 1, rank, Skv)
    k_low, v_low = proj @ key, proj @ value  # (B, Hkv, rank, D)
    used = (torch.arange(rank).unsqueeze(0) < r.unsqueeze(1)).to(query.device)  # (B, rank) non-empty segments
    if key.shape[1] != H:
        k_low = k_low.repeat_interleave(H // key.shape[1], dim=1)
        v_low = v_low.repeat_interleave(H // value.shape[1], dim=1)
    mask = used[:, None, None, :]
    return F.scaled_dot_product_attention(query, k_low, v_low, attn_mask=mask, dropout_p=dropout, scale=scale)
