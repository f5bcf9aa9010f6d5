"""Autograd formulas of the hf_sparse:: ops: a sparse layer trains without ever densifying its weight.

For ``Yt = W @ Xt`` with W sparse: ``dXt = W^T @ dYt`` runs through the transposed kernel on the same storage, and
the value gradient is computed only at stored positions (SDDMM), so pruned positions stay pruned.
"""

from __future__ import annotations

import torch

from ._namespace import NAMESPACE

ops = getattr(torch.ops, NAMESPACE)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float32 for a bfloat16 CPU tensor (the backward kernels there are float32 / float64), else ``t`` itself.

    bfloat16 gradients are computed in float32 and rounded once, where each formula below casts its result back to
    its input's dtype: the CPU forward of bfloat16 rounds once per result too, and a sum of many products rounded to
    bfloat16 at every step would lose most of its bits.
    """
    return t.float() if t.dtype == torch.bfloat16 and t.device.type == "cpu" else t


def _csr_setup(ctx, inputs, output):
    crow, col, values, rows, cols, xt, *rest = inputs
    ctx.rows, ctx.cols, ctx.transposed = rows, cols, bool(rest and rest[0])
    ctx.save_for_backward(crow, col, values, xt)


def _csr_backward(ctx, grad):
    # With transpose_out the output (and so its gradient) is (N, rows); the formulas want (rows, N), contiguous:
    # transpose once here rather than once in each kernel.
    grad = grad.t().contiguous() if ctx.transposed else grad
    crow, col, values, xt = ctx.saved_tensors
    g = _wide(grad)
    d_values = d_xt = None
    if ctx.needs_input_grad[2]:
        d_values = ops.sddmm_csr(crow, col, ctx.rows, ctx.cols, g, _wide(xt)).to(values.dtype)
    if ctx.needs_input_grad[5]:
        d_xt = ops.spmm_csr_t(crow, col, _wide(values), ctx.rows, ctx.cols, g).to(xt.dtype)
    return None, None, d_values, None, None, d_xt, None


def _csr_t_setup(ctx, inputs, output):
    crow, col, values, rows, cols, yt = inputs
    ctx.rows, ctx.cols = rows, cols
    ctx.save_for_backward(crow, col, values, yt)


def _csr_t_backward(ctx, grad):
    # Xt_out = W^T @ Yt: dYt = W @ grad, dV[p] = <grad[col(p)], Yt[row(p)]>.
    crow, col, values, yt = ctx.saved_tensors
    g = _wide(grad)
    d_values = d_yt = None
    if ctx.needs_input_grad[2]:
        d_values = ops.sddmm_csr(crow, col, ctx.rows, ctx.cols, _wide(yt), g).to(values.dtype)
    if ctx.needs_input_grad[5]:
        d_yt = ops.spmm_csr(crow, col, _wide(values), ctx.rows, ctx.cols, g).to(yt.dtype)
    return None, None, d_values, None, None, d_yt


def _bsr_backward(ctx, grad):
    # Block-level SDDMM and transposed product with batched matmuls over the stored blocks only.
    grad = grad.t().contiguous() if ctx.transposed else grad
    crow, col, values_in, xt_in = ctx.saved_tensors
    grad, values, xt = _wide(grad), _wide(values_in), _wide(xt_in)
    nb, r, c = values.shape
    n = grad.shape[1]
    brow = torch.repeat_interleave(
        torch.arange(ctx.rows // r, device=crow.device), torch.diff(crow.to(torch.int64)), output_size=nb
    )
    bcol = col.to(torch.int64)
    dy_blocks = grad.reshape(ctx.rows // r, r, n)[brow]  # (nb, r, N)
    d_values = d_xt = None
    if ctx.needs_input_grad[2]:
        d_values = torch.bmm(dy_blocks, xt.reshape(ctx.cols // c, c, n)[bcol].transpose(1, 2)).to(values_in.dtype)
    if ctx.needs_input_grad[5]:
        parts = torch.bmm(values.transpose(1, 2), dy_blocks)  # (nb, c, N)
        d_xt = grad.new_zeros(ctx.cols // c, c, n).index_add_(0, bcol, parts).reshape(ctx.cols, n).to(xt_in.dtype)
    return None, None, d_values, None, None, d_xt, None


def nm_as_csr(indices: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR structure (crow int32, col int32) of an n:m weight whose slots are stored row-major."""
    rows, width = indices.shape
    crow = torch.arange(rows + 1, dtype=torch.int32, device=indices.device) * width
    base = (torch.arange(width, dtype=torch.int32, device=indices.device) // n) * m
    return crow, (base + indices.to(torch.int32)).reshape(-1)


def _nm_setup(ctx, inputs, output):
    values, indices, n, m, cols, xt, *rest = inputs
    ctx.n, ctx.m, ctx.cols, ctx.transposed = n, m, cols, bool(rest and rest[0])
    ctx.save_for_backward(values, indices, xt)


def _nm_backward(ctx, grad):
    # Every n:m slot is a stored position (unused ones hold zeros), so the slots stay n:m while they train.
    grad = _wide(grad.t().contiguous() if ctx.transposed else grad)
    values, indices, xt = ctx.saved_tensors
    rows = values.shape[0]
    crow, col = nm_as_csr(indices, ctx.n, ctx.m)
    d_values = d_xt = None
    if ctx.needs_input_grad[0]:
        d_values = ops.sddmm_csr(crow, col, rows, ctx.cols, grad, _wide(xt)).reshape(values.shape).to(values.dtype)
    if ctx.needs_input_grad[5]:
        d_xt = ops.spmm_csr_t(crow, col, _wide(values).reshape(-1), rows, ctx.cols, grad).to(xt.dtype)
    return d_values, None, None, None, None, d_xt, None


def _qcsr_setup(ctx, inputs, output):
    crow, col, values, scales, rows, cols, xt, *rest = inputs
    ctx.rows, ctx.cols, ctx.transposed = rows, cols, bool(rest and rest[0])
    ctx.save_for_backward(crow, col, values, scales, xt)


def _qcsr_grads(ctx, dyt, xt, need_scales: bool, need_x: bool):
    """Gradients of ``Yt = W @ Xt`` for int8-value CSR, given dYt (rows, N) and Xt (cols, N). Codes are integers
    (no gradient); d scale[r] = sum_p code[p] * <dYt[r], Xt[col(p)]>; dXt = W^T @ dYt with the dequantised values.
    Returns (d_scales, d_xt)."""
    crow, col, values, scales = ctx.saved_tensors[:4]
    row_of = torch.repeat_interleave(
        torch.arange(ctx.rows, device=crow.device), torch.diff(crow.to(torch.int64)), output_size=values.numel()
    )
    d_scales = d_xt = None
    # Gradients of the scales in their own dtype (float32), summed in float32; the dequantised values in the dense
    # operands' dtype (float16 / bfloat16 on CUDA), which spmm_csr_t requires.
    if need_scales:
        per_value = ops.sddmm_csr(crow, col, ctx.rows, ctx.cols, dyt, xt).to(scales.dtype) * values.to(scales.dtype)
        d_scales = scales.new_zeros(ctx.rows).index_add_(0, row_of, per_value)
    if need_x:
        dequant = (values.to(scales.dtype) * scales[row_of]).to(dyt.dtype)
        d_xt = ops.spmm_csr_t(crow, col, dequant, ctx.rows, ctx.cols, dyt)
    return d_scales, d_xt


def _qcsr_backward(ctx, grad):
    grad = grad.t().contiguous() if ctx.transposed else grad
    xt = ctx.saved_tensors[4]
    d_scales, d_xt = _qcsr_grads(ctx, grad, xt, ctx.needs_input_grad[3], ctx.needs_input_grad[6])
    return None, None, None, d_scales, None, None, d_xt, None


def _qbsr_setup(ctx, inputs, output):
    crow, col, values, scales, rows, cols, xt, *rest = inputs
    ctx.rows, ctx.cols, ctx.transposed = rows, cols, bool(rest and rest[0])
    ctx.save_for_backward(crow, col, values, scales, xt)


def _qbsr_backward(ctx, grad):
    # Codes are integers (no gradient). With Z = codes @ Xt (unscaled): d scale[r] = <dYt[r], Z[r]>, and
    # dXt = codes^T @ (scales * dYt), both by batched matmuls over the stored blocks only.
    grad = grad.t().contiguous() if ctx.transposed else grad
    crow, col, values, scales, xt = ctx.saved_tensors
    nb, r, c = values.shape
    n = grad.shape[1]
    brow = torch.repeat_interleave(
        torch.arange(ctx.rows // r, device=crow.device), torch.diff(crow.to(torch.int64)), output_size=nb
    )
    bcol = col.to(torch.int64)
    codes = values.to(grad.dtype)
    d_scales = d_xt = None
    if ctx.needs_input_grad[3]:
        z = torch.bmm(codes, xt.reshape(ctx.cols // c, c, n)[bcol])  # (nb, r, N)
        z = grad.new_zeros(ctx.rows // r, r, n).index_add_(0, brow, z).reshape(ctx.rows, n)
        d_scales = (grad.to(scales.dtype) * z.to(scales.dtype)).sum(1)
    if ctx.needs_input_grad[6]:
        scaled = (grad * scales.to(grad.dtype).unsqueeze(1)).reshape(ctx.rows // r, r, n)[brow]
        parts = torch.bmm(codes.transpose(1, 2), scaled)  # (nb, c, N)
        d_xt = grad.new_zeros(ctx.cols // c, c, n).index_add_(0, bcol, parts).reshape(ctx.cols, n)
    return None, None, None, d_scales, None, None, d_xt, None


def _qnm_setup(ctx, inputs, output):
    values, indices, scales, n, m, cols, xt, *rest = inputs
    ctx.n, ctx.m, ctx.cols, ctx.transposed = n, m, cols, bool(rest and rest[0])
    ctx.save_for_backward(values, indices, scales, xt)


def _qnm_backward(ctx, grad):
    # The n:m slots as CSR: d scale[r] = sum_slots code * <dYt[r], Xt[col]>, dXt = W^T @ dYt (dequantised).
    grad = grad.t().contiguous() if ctx.transposed else grad
    values, indices, scales, xt = ctx.saved_tensors
    rows, width = values.shape
    crow, col = nm_as_csr(indices, ctx.n, ctx.m)
    codes = values.to(grad.dtype)
    d_scales = d_xt = None
    if ctx.needs_input_grad[2]:
        per_slot = ops.sddmm_csr(crow, col, rows, ctx.cols, grad, xt).reshape(rows, width).to(scales.dtype)
        d_scales = (per_slot * values.to(scales.dtype)).sum(1)
    if ctx.needs_input_grad[6]:
        dequant = (codes * scales.to(grad.dtype).unsqueeze(1)).reshape(-1)
        d_xt = ops.spmm_csr_t(crow, col, dequant, rows, ctx.cols, grad)
    return None, None, d_scales, None, None, None, d_xt, None


def _linear_csr_setup(ctx, inputs, output):
    crow, col, values, rows, cols, x = inputs
    ctx.rows, ctx.cols = rows, cols
    ctx.save_for_backward(crow, col, values, x)


def _linear_csr_backward(ctx, grad):
    # Y = X @ W^T: dX = dY @ W (the transposed kernel on dY^T), dV at the stored positions (SDDMM).
    crow, col, values, x = ctx.saved_tensors
    dyt = _wide(grad.t().contiguous())
    d_values = d_x = None
    if ctx.needs_input_grad[2]:
        d_values = ops.sddmm_csr(crow, col, ctx.rows, ctx.cols, dyt, _wide(x).t().contiguous()).to(values.dtype)
    if ctx.needs_input_grad[5]:
        d_x = ops.spmm_csr_t(crow, col, _wide(values), ctx.rows, ctx.cols, dyt).t().to(x.dtype)
    return None, None, d_values, None, None, d_x


def _linear_qcsr_setup(ctx, inputs, output):
    crow, col, values, scales, rows, cols, x = inputs
    ctx.rows, ctx.cols = rows, cols
    ctx.save_for_backward(crow, col, values, scales, x)


def _linear_qcsr_backward(ctx, grad):
    # Y = X @ W^T is Yt = W @ Xt transposed: the same gradients, with dYt = dY^T and dX = dXt^T.
    x = ctx.saved_tensors[4]
    need_scales, need_x = ctx.needs_input_grad[3], ctx.needs_input_grad[6]
    xt = x.t().contiguous() if need_scales else x
    d_scales, d_xt = _qcsr_grads(ctx, grad.t().contiguous(), xt, need_scales, need_x)
    return None, None, None, d_scales, None, None, d_xt.t() if d_xt is not None else None


torch.library.register_autograd(f"{NAMESPACE}::spmm_csr", _csr_backward, setup_context=_csr_setup)
torch.library.register_autograd(f"{NAMESPACE}::spmm_csr_t", _csr_t_backward, setup_context=_csr_t_setup)
torch.library.register_autograd(f"{NAMESPACE}::spmm_bsr", _bsr_backward, setup_context=_csr_setup)
torch.library.register_autograd(f"{NAMESPACE}::spmm_nm", _nm_backward, setup_context=_nm_setup)
torch.library.register_autograd(f"{NAMESPACE}::spmm_qcsr", _qcsr_backward, setup_context=_qcsr_setup)
torch.library.register_autograd(f"{NAMESPACE}::spmm_qbsr", _qbsr_backward, setup_context=_qbsr_setup)
torch.library.register_autograd(f"{NAMESPACE}::spmm_qnm", _qnm_backward, setup_context=_qnm_setup)
torch.library.register_autograd(f"{NAMESPACE}::linear_csr", _linear_csr_backward, setup_context=_linear_csr_setup)
torch.library.register_autograd(f"{NAMESPACE}::linear_qcsr", _linear_qcsr_backward, setup_context=_linear_qcsr_setup)


# -- block-sparse attention ----------------------------------------------------------------------------------------
_KEY_BLOCK = 64


def attention_mask_from_layout(kv_ptr, kv_blocks, mask_index, bits, block_q, q_length, kv_length):
    """(Sq, Skv) bool: the (query, key) pairs a block layout allows."""
    nqb = kv_ptr.numel() - 1
    nkb = -(-kv_length // _KEY_BLOCK)
    qb = torch.repeat_interleave(torch.arange(nqb), torch.diff(kv_ptr.to(torch.int64)))
    tiles = torch.zeros(kv_blocks.numel(), block_q, _KEY_BLOCK, dtype=torch.bool)
    full = mask_index < 0
    tiles[full] = True
    if bits.numel():
        words = bits[mask_index[~full].to(torch.int64)]
        tiles[~full] = ((words.unsqueeze(-1) >> torch.arange(_KEY_BLOCK, dtype=torch.int64)) & 1).bool()
    out = torch.zeros(nqb, nkb, block_q, _KEY_BLOCK, dtype=torch.bool)
    out[qb, kv_blocks.to(torch.int64)] = tiles
    return out.permute(0, 2, 1, 3).reshape(nqb * block_q, nkb * _KEY_BLOCK)[:q_length, :kv_length]


def _attention_setup(ctx, inputs, output):
    q, k, v, kv_ptr, kv_blocks, mask_index, bits, key_bias, scale, block_q = inputs
    out, lse = output
    ctx.scale, ctx.block_q = scale, block_q
    ctx.save_for_backward(q, k, v, kv_ptr, kv_blocks, mask_index, bits, key_bias, out, lse)


def _attention_backward(ctx, grad_out, grad_lse):
    q, k, v, kv_ptr, kv_blocks, mask_index, bits, key_bias, out, lse = ctx.saved_tensors
    if grad_lse is None and grad_out is not None:  # the usual case: our C++ backward over the same tiles
        dq, dk, dv = ops.sparse_attention_backward(
            grad_out.contiguous(),
            q,
            k,
            v,
            out,
            lse,
            kv_ptr,
            kv_blocks,
            mask_index,
            bits,
            key_bias,
            ctx.scale,
            ctx.block_q,
        )
        return dq, dk, dv, None, None, None, None, None, None, None
    return _attention_backward_dense(ctx, grad_out, grad_lse)


def _attention_backward_dense(ctx, grad_out, grad_lse):
    # The flash-attention backward in dense form over the allowed pairs: P = exp(S - lse) (0 where masked),
    # dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)), dQ = scale dS K, dK = scale dS^T Q. Grouped
    # key/value heads sum the gradients of their query heads. (Memory is O(Sq * Skv) per head: fine for the
    # training lengths it serves; the forward pass is the long-sequence path.)
    q, k, v, kv_ptr, kv_blocks, mask_index, bits, key_bias, out, lse = ctx.saved_tensors
    B, H, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    group = H // Hkv
    allowed = attention_mask_from_layout(kv_ptr, kv_blocks, mask_index, bits, ctx.block_q, Sq, Skv).to(q.device)
    kx = k.repeat_interleave(group, dim=1) if group > 1 else k
    vx = v.repeat_interleave(group, dim=1) if group > 1 else v
    s = (q @ kx.transpose(-1, -2)) * ctx.scale
    if key_bias.numel():
        s = s + key_bias[:, None, None, :]
    finite = torch.isfinite(lse).unsqueeze(-1)
    p = torch.where(allowed & finite, torch.exp(s - lse.unsqueeze(-1).masked_fill(~finite, 0.0)), 0.0)
    grad_out = grad_out if grad_out is not None else torch.zeros_like(out)
    dv = p.transpose(-1, -2) @ grad_out
    dp = grad_out @ vx.transpose(-1, -2)
    ds = p * (dp - (grad_out * out).sum(-1, keepdim=True))
    if grad_lse is not None:  # d lse / d s = p
        ds = ds + p * grad_lse.unsqueeze(-1)
    dq = (ds @ kx) * ctx.scale
    dk = (ds.transpose(-1, -2) @ q) * ctx.scale
    if group > 1:
        dk = dk.reshape(B, Hkv, group, Skv, D).sum(2)
        dv = dv.reshape(B, Hkv, group, Skv, D).sum(2)
    return dq, dk, dv, None, None, None, None, None, None, None


torch.library.register_autograd(f"{NAMESPACE}::sparse_attention", _attention_backward, setup_context=_attention_setup)
