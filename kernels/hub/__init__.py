"""hf_sparse's kernels, packaged for Hugging Face's ``kernels`` library: sparse matrix products (CSR, BSR, N:M, with
float or int8 values) and block-sparse (windowed) attention with its backward pass. CPU builds need AVX2 + FMA;
CUDA builds run the same ops on the GPU (float16, bfloat16 and float32).

This file is the package's entry point; ``hf-sparse package-kernels`` puts it in every build folder beside the
compiled ops (``ops/``) and hf_sparse's own pattern, layout, autograd and fake-tensor modules, so the package needs
only ``torch`` (no ``hf_sparse``)::

    from kernels import get_kernel

    k = get_kernel("<user>/<repo>", version=1, trust_remote_code=True)
    y = k.linear_csr(crow, col, values, rows, cols, x)  # x @ W.T for W in CSR
    out = k.sparse_attention(q, k_, v, window=128)

    # a model whose config.json carries an hf_sparse_attention entry (saved by hf_sparse), or a config with a
    # sliding_window, runs its attention through the package with transformers alone:
    model = AutoModel.from_pretrained(path, attn_implementation="<user>/<repo>:windowed_attention",
                                      allow_all_kernels=True)

Every op also trains: their autograd formulas (and fake implementations for ``torch.compile``) are registered
when the package loads.
"""

from __future__ import annotations

import math
import re

import torch

from .attention.layout import KEY_BLOCK, BlockLayout, build_layout
from .attention.patterns import Full, GlobalTokens, Pattern, SlidingWindow, dense_mask
from .ops import BACKEND, NAMESPACE, ops

__all__ = [
    "BACKEND",
    "NAMESPACE",
    "ops",
    "spmm_csr",
    "spmm_bsr",
    "spmm_nm",
    "linear_csr",
    "linear_qcsr",
    "sparse_attention",
    "windowed_attention",
    "build_layout",
    "BlockLayout",
    "KEY_BLOCK",
    "Full",
    "SlidingWindow",
    "GlobalTokens",
]

#: The model-config entry hf_sparse saves its sparse attention settings in (``config.json``).
CONFIG_KEY = "hf_sparse_attention"
_CUDA_HEAD_DIMS = (32, 64, 96, 128)


def spmm_csr(crow, col, values, rows: int, cols: int, xt, transpose_out: bool = False) -> torch.Tensor:
    """``W @ Xt`` for ``W`` (rows x cols) stored in CSR.

    Shapes:
        crow: (rows + 1,) int32. col: (nnz,) int16 or int32. values: (nnz,). xt: (cols, N).
        Returns: (rows, N), or (N, rows) with ``transpose_out``.
    """
    return ops.spmm_csr(crow, col, values, rows, cols, xt, transpose_out)


def spmm_bsr(crow, col, values, rows: int, cols: int, xt, transpose_out: bool = False) -> torch.Tensor:
    """``W @ Xt`` for ``W`` stored in R x C blocks.

    Shapes:
        crow: (rows / R + 1,) int32. col: (blocks,) int16 or int32 block columns. values: (blocks, R, C).
        xt: (cols, N). Returns: (rows, N), or (N, rows) with ``transpose_out``.
    """
    return ops.spmm_bsr(crow, col, values, rows, cols, xt, transpose_out)


def spmm_nm(values, indices, n: int, m: int, cols: int, xt, transpose_out: bool = False) -> torch.Tensor:
    """``W @ Xt`` for ``W`` with ``n`` kept values in every group of ``m`` columns (e.g. 2:4).

    Shapes:
        values: (rows, cols / m * n). indices: (rows, cols / m * n) int8, positions within each group.
        xt: (cols, N). Returns: (rows, N), or (N, rows) with ``transpose_out``.
    """
    return ops.spmm_nm(values, indices, n, m, cols, xt, transpose_out)


def linear_csr(crow, col, values, rows: int, cols: int, x) -> torch.Tensor:
    """``x @ W.T`` (a Linear layer without bias) for ``W`` in CSR, without a transposed copy of ``x``.

    Shapes:
        x: (N, cols). Returns: (N, rows).
    """
    return ops.linear_csr(crow, col, values, rows, cols, x)


def linear_qcsr(crow, col, values, scales, rows: int, cols: int, x) -> torch.Tensor:
    """``x @ W.T`` for ``W`` in CSR with int8 values and one float32 scale per row (``W[r] = values * scales[r]``).

    Shapes:
        values: (nnz,) int8. scales: (rows,) float32. x: (N, cols) float32. Returns: (N, rows).
    """
    return ops.linear_qcsr(crow, col, values, scales, rows, cols, x)


def _check_attention_input(query, key, value) -> None:
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ValueError(
            "sparse_attention: query, key and value must be (batch, heads, length, head_dim), got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}."
        )
    if key.shape != value.shape or key.shape[0] != query.shape[0] or key.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"sparse_attention: key {tuple(key.shape)} and value {tuple(value.shape)} do not match query "
            f"{tuple(query.shape)} (same batch and head_dim; key and value alike)."
        )
    if query.shape[1] % key.shape[1]:
        raise ValueError(
            f"sparse_attention: {query.shape[1]} query heads are not a multiple of {key.shape[1]} key/value heads."
        )
    if query.device.type == "cuda":
        if BACKEND != "cuda":
            raise ValueError(
                "sparse_attention: this is the CPU build of the package and the tensors are on the GPU; on a CUDA "
                "machine get_kernel picks the CUDA build when the repository has one for its torch and CUDA."
            )
        if query.shape[-1] not in _CUDA_HEAD_DIMS:
            raise ValueError(
                f"sparse_attention: head_dim {query.shape[-1]} is not supported on CUDA {_CUDA_HEAD_DIMS}."
            )
    elif query.device.type == "cpu":
        if query.shape[-1] % 16:
            raise ValueError(f"sparse_attention: head_dim {query.shape[-1]} is not a multiple of 16 (CPU kernel).")
    else:
        raise ValueError(f"sparse_attention: device {query.device.type} is not supported (cpu, cuda).")


def sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pattern: Pattern | None = None,
    *,
    window: int | None = None,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    q_offset: int = 0,
    kv_offset: int = 0,
    block_q: int = 24,
) -> torch.Tensor:
    """Attention over the (query, key) pairs ``pattern`` allows (or a sliding ``window`` of that many positions on
    each side), the causal mask when ``causal``, and the keys ``key_padding_mask`` keeps. Differentiable.

    A query with no allowed key returns zeros. On CPU the kernel computes in float32 (other dtypes are converted
    and the result converted back); on CUDA in the inputs' dtype.

    Args:
        q_offset, kv_offset: absolute position of the first query / key (decoding with a cache).
        block_q: query rows per kernel tile.

    Shapes:
        query: (B, H, Sq, D). key, value: (B, Hkv, Skv, D), H a multiple of Hkv. key_padding_mask: (B, Skv) bool,
        True = a real key. Returns: (B, H, Sq, D).
    """
    if (pattern is None) == (window is None):
        raise ValueError("sparse_attention: pass exactly one of pattern= and window=.")
    if pattern is None:
        pattern = SlidingWindow(int(window))
    if not 1 <= block_q <= (128 if query.device.type == "cuda" else 256):
        raise ValueError(f"sparse_attention: block_q {block_q} is out of range.")
    _check_attention_input(query, key, value)
    B, _, Sq, D = query.shape
    Skv = key.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    dtype = query.dtype
    if query.device.type == "cpu" and dtype != torch.float32:
        query, key, value = query.float(), key.float(), value.float()
    bias = torch.empty(0, device=query.device)
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (B, Skv):
            raise ValueError(
                f"sparse_attention: key_padding_mask must be (batch, kv_length) = {(B, Skv)}, got "
                f"{tuple(key_padding_mask.shape)}."
            )
        keep = key_padding_mask.to(device=query.device, dtype=torch.bool)
        if not bool(keep.all()):
            bias = torch.zeros(B, Skv, device=query.device).masked_fill_(~keep, float("-inf"))
    layout = build_layout(pattern, Sq, Skv, q_offset=q_offset, kv_offset=kv_offset, causal=causal, block_q=block_q)
    out, _ = ops.sparse_attention(
        query.contiguous(),
        key.contiguous(),
        value.contiguous(),
        layout.kv_ptr,
        layout.kv_blocks,
        layout.mask_index,
        layout.bits,
        bias,
        scale,
        block_q,
    )
    return out.to(dtype)


def _window_for(settings: dict, layer_idx: int | None) -> int:
    if layer_idx is not None:
        for k, w in (settings.get("layer_windows") or {}).items():
            if k == str(layer_idx) or re.fullmatch(k, str(layer_idx)):
                return int(w)
    return int(settings.get("window", 128))


def _layer_pattern(config, layer_idx: int | None, kwargs: dict) -> tuple[Pattern, bool, int]:
    """(pattern, extra causal mask, block_q) of one attention layer, from the model's config."""
    settings = getattr(config, CONFIG_KEY, None)
    if settings is not None:
        if not isinstance(settings, dict):
            settings = settings.to_dict()
        kind = settings.get("pattern", "window")
        if kind not in ("window", "full"):
            raise ValueError(
                f"windowed_attention: this model's {CONFIG_KEY} pattern is {kind!r}; the kernel package runs "
                "'window' and 'full' patterns. Load the model with hf_sparse installed and "
                "attn_implementation='hf_sparse' for the others."
            )
        for name in ("global_token_ids", "top_k"):
            if settings.get(name):
                raise ValueError(
                    f"windowed_attention: {CONFIG_KEY}.{name} needs hf_sparse (attn_implementation='hf_sparse')."
                )
        layers = settings.get("layers") or []
        if kind == "full" or (layers and layer_idx is not None and layer_idx not in layers):
            return Full(), bool(settings.get("causal")), int(settings.get("block_q", 24))
        pattern: Pattern = SlidingWindow(_window_for(settings, layer_idx), settings.get("window_right"))
        if settings.get("global_positions"):
            pattern = pattern | GlobalTokens(tuple(settings["global_positions"]))
        return pattern, bool(settings.get("causal")), int(settings.get("block_q", 24))
    # transformers' own sliding windows: a layer passes sliding_window (None for its full-attention layers); the
    # window counts the query itself, so it reaches sliding_window - 1 positions on each side (a decoder's causal
    # mask removes the side after the query).
    sliding = kwargs["sliding_window"] if "sliding_window" in kwargs else getattr(config, "sliding_window", None)
    if "sliding_window" in kwargs and sliding is None:
        return Full(), False, 24
    if not sliding:
        raise ValueError(
            "windowed_attention: the model's config has no window: save it with hf_sparse's sparse attention "
            f"settings ({CONFIG_KEY} in config.json) or use a model whose config sets sliding_window."
        )
    return SlidingWindow(int(sliding) - 1), False, 24


def windowed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function (``attn_implementation="<repo>:windowed_attention"``).

    The window comes from the model's ``config.hf_sparse_attention`` (hf_sparse's settings: ``window``,
    ``window_right``, ``layer_windows``, ``layers``, ``global_positions``, ``causal``), else from the layer's or
    the config's ``sliding_window``. The model's mask may be None, a (batch, kv_length) padding mask (what
    transformers builds for flash attention) or a dense (batch, 1, q_length, kv_length) one (SDPA's; its padding is
    read from it, as are the queries' positions, and a mask with other structure is refused); causal layers
    (decoders) are causal here too.

    Shapes:
        query: (B, H, Sq, D). key, value: (B, Hkv, Skv, D). Returns: ((B, Sq, H, D), None).
    """
    if dropout:
        raise ValueError(
            "windowed_attention: the kernel has no attention dropout; set the model's attention dropout to 0 "
            "(or call model.eval()) to use it."
        )
    pattern, causal_too, block_q = _layer_pattern(
        getattr(module, "config", None), getattr(module, "layer_idx", None), kwargs
    )
    causal = bool(getattr(module, "is_causal", False)) or causal_too
    batch, sq, skv = query.shape[0], query.shape[2], key.shape[2]
    # Where the queries sit among the keys (causal layers): at the end of what is written to the cache. A dynamic
    # cache holds exactly that; a static cache has slots after it that are not written yet, which the mask marks
    # (or, with no padding, transformers passes no mask: then the queries' positions are position_ids).
    q_offset = skv - sq if causal else 0
    padding = None
    if attention_mask is None:
        positions = kwargs.get("position_ids")
        if causal and sq != skv and isinstance(positions, torch.Tensor) and positions.shape[-1] == sq:
            q_offset = _consecutive_start(positions.reshape(-1, sq), skv - sq)
    else:
        if attention_mask.dim() == 2:  # flash-attention style: (batch, tokens so far), True = a real token
            padding = attention_mask.to(torch.bool)
            length = padding.shape[1]
            if length >= skv:
                padding = padding[:, -skv:]
            else:  # a mask shorter than the cache: the slots after it are not written yet
                padding = torch.cat([padding, padding.new_zeros(padding.shape[0], skv - length)], dim=1)
            if causal and sq != skv:  # decoding: the last query is the last written (real) slot
                written = torch.where(padding, torch.arange(skv, device=padding.device), -1).amax()
                q_offset = int(written) + 1 - sq
        elif attention_mask.dim() == 4:  # SDPA style: (batch or 1, 1, q_length, kv_length)
            padding, q_offset = _read_dense_mask(attention_mask, pattern, causal, batch, sq, skv)
        else:
            raise ValueError(
                f"windowed_attention: expected a (batch, kv_length) or (batch, 1, q_length, kv_length) mask, got "
                f"{tuple(attention_mask.shape)}."
            )
    if query.device.type == "cuda":
        block_q = min(block_q, 128)  # the CUDA kernel's largest tile (the tile height changes no result)
    out = sparse_attention(
        query,
        key,
        value,
        pattern,
        causal=causal,
        key_padding_mask=padding,
        scale=scaling,
        q_offset=q_offset,
        block_q=block_q,
    )
    return out.transpose(1, 2).contiguous(), None


#: transformers loads an attention kernel given as attn_implementation="<repo>" through these two names (with SDPA-
#: style masks); "<repo>:windowed_attention" names the function itself.
flash_attn_forward = windowed_attention
supports_flash_attn = True


def _consecutive_start(positions: torch.Tensor, default: int) -> int:
    """The first position of (rows, Sq) position_ids that count up by one from the same start in every row, else
    ``default``."""
    start = positions[:, :1]
    steps = torch.arange(positions.shape[1], device=positions.device)
    return (
        int(start[0, 0])
        if bool((positions == start + steps).all()) and bool((start == start[0, 0]).all())
        else default
    )


def _read_dense_mask(mask: torch.Tensor, pattern: Pattern, causal: bool, batch: int, sq: int, skv: int):
    """(key padding (B, Skv) or None, q_offset) of a dense (B or 1, 1, Sq, Skv) mask, after checking that on every
    real query's row the mask is causal (or bidirectional) attention over the real keys, with or without the
    layer's own window: anything else (packed sequences, a prefix) is refused rather than run differently.

    For causal layers the queries' positions are read from the mask, which places them right with static caches
    too (whose key slots after the tokens so far are not written yet)."""
    if mask.shape[1] != 1 or mask.shape[0] not in (1, batch) or tuple(mask.shape[-2:]) != (sq, skv):
        raise ValueError(f"windowed_attention: expected a ({batch}, 1, {sq}, {skv}) mask, got {tuple(mask.shape)}.")
    m = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0  # boolean, or additive (0 = attend)
    m = m.expand(batch, sq, skv)
    keys = m.any(dim=1)  # a key is real when some query may attend it
    real_q = m.any(dim=2)  # without causality: a query is real when it may attend some key
    q_offset = 0
    if causal:
        # A real query's last allowed key is itself; a right-padded query's is an earlier real key, a left-padded
        # query has none. So the queries start at the largest (last allowed key - row), and a query is real when
        # its own key is.
        position = torch.arange(skv, device=m.device)
        last = torch.where(m, position, -1).amax(dim=2)  # (B, Sq)
        start = (last - torch.arange(sq, device=m.device))[last >= 0]
        q_offset = int(start.max()) if start.numel() else skv - sq
        q_pos = q_offset + torch.arange(sq, device=m.device)
        inside = (q_pos >= 0) & (q_pos < skv)
        real_q = keys[:, q_pos.clamp(0, skv - 1)] & inside
    base = dense_mask(Full(), sq, skv, q_offset=q_offset, causal=causal, device=m.device)
    allowed = dense_mask(pattern, sq, skv, q_offset=q_offset, causal=causal, device=m.device)
    got = m[real_q]
    if not (
        torch.equal(got, (base & keys[:, None, :])[real_q]) or torch.equal(got, (allowed & keys[:, None, :])[real_q])
    ):
        raise ValueError(
            "windowed_attention: the model's attention mask is more than causal/bidirectional attention with padding "
            "(e.g. packed sequences or a prefix), which the kernel's block layout does not express; use "
            "attn_implementation='hf_sparse' (hf_sparse installed) for this model."
        )
    return (None if bool(keys.all()) else keys), q_offset
