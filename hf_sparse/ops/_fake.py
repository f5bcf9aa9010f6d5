"""Fake (meta) implementations of the hf_sparse:: ops, so ``torch.compile`` and meta tensors can trace them."""

from __future__ import annotations

import torch

from ._namespace import NAMESPACE


def _check_rhs(xt, rows):
    torch._check(xt.dim() == 2, lambda: "the dense operand must be 2-D")
    torch._check(xt.shape[0] == rows, lambda: f"the dense operand must have {rows} rows")


@torch.library.register_fake(f"{NAMESPACE}::spmm_csr")
def _spmm_csr_fake(crow, col, values, rows, cols, xt, transpose_out=False):
    _check_rhs(xt, cols)
    return xt.new_empty((xt.shape[1], rows) if transpose_out else (rows, xt.shape[1]))


@torch.library.register_fake(f"{NAMESPACE}::spmm_csr_t")
def _spmm_csr_t_fake(crow, col, values, rows, cols, yt):
    _check_rhs(yt, rows)
    return yt.new_empty((cols, yt.shape[1]))


@torch.library.register_fake(f"{NAMESPACE}::sddmm_csr")
def _sddmm_csr_fake(crow, col, rows, cols, yt, xt):
    _check_rhs(yt, rows)
    _check_rhs(xt, cols)
    return yt.new_empty((col.shape[0],))


@torch.library.register_fake(f"{NAMESPACE}::spmm_bsr")
def _spmm_bsr_fake(crow, col, values, rows, cols, xt, transpose_out=False):
    _check_rhs(xt, cols)
    return xt.new_empty((xt.shape[1], rows) if transpose_out else (rows, xt.shape[1]))


@torch.library.register_fake(f"{NAMESPACE}::spmm_nm")
def _spmm_nm_fake(values, indices, n, m, cols, xt, transpose_out=False):
    _check_rhs(xt, cols)
    rows = values.shape[0]
    return xt.new_empty((xt.shape[1], rows) if transpose_out else (rows, xt.shape[1]))


@torch.library.register_fake(f"{NAMESPACE}::spmm_qcsr")
def _spmm_qcsr_fake(crow, col, values, scales, rows, cols, xt, transpose_out=False):
    _check_rhs(xt, cols)
    return xt.new_empty((xt.shape[1], rows) if transpose_out else (rows, xt.shape[1]))


@torch.library.register_fake(f"{NAMESPACE}::spmm_qbsr")
def _spmm_qbsr_fake(crow, col, values, scales, rows, cols, xt, transpose_out=False):
    _check_rhs(xt, cols)
    return xt.new_empty((xt.shape[1], rows) if transpose_out else (rows, xt.shape[1]))


@torch.library.register_fake(f"{NAMESPACE}::spmm_qnm")
def _spmm_qnm_fake(values, indices, scales, n, m, cols, xt, transpose_out=False):
    _check_rhs(xt, cols)
    rows = values.shape[0]
    return xt.new_empty((xt.shape[1], rows) if transpose_out else (rows, xt.shape[1]))


@torch.library.register_fake(f"{NAMESPACE}::linear_csr")
def _linear_csr_fake(crow, col, values, rows, cols, x):
    torch._check(x.dim() == 2 and x.shape[1] == cols, lambda: f"x must be (N, {cols})")
    return x.new_empty((x.shape[0], rows))


@torch.library.register_fake(f"{NAMESPACE}::linear_qcsr")
def _linear_qcsr_fake(crow, col, values, scales, rows, cols, x):
    torch._check(x.dim() == 2 and x.shape[1] == cols, lambda: f"x must be (N, {cols})")
    return x.new_empty((x.shape[0], rows))


@torch.library.register_fake(f"{NAMESPACE}::dequantize")
def _dequantize_fake(values, scales, zero_points, bits, rows, cols):
    return scales.new_empty((rows, cols))


@torch.library.register_fake(f"{NAMESPACE}::sparse_attention")
def _sparse_attention_fake(q, k, v, kv_ptr, kv_blocks, mask_index, bits, key_bias, scale, block_q):
    torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, lambda: "q, k, v must be 4-D")
    # lse is float32 whatever q's dtype (the kernels' contract: an exact backward needs it).
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.register_fake(f"{NAMESPACE}::sparse_attention_backward")
def _sparse_attention_backward_fake(
    grad_out, q, k, v, out, lse, kv_ptr, kv_blocks, mask_index, bits, key_bias, scale, block_q
):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.register_fake(f"{NAMESPACE}::qrow_lookup")
def _qrow_lookup_fake(values, bits, cols, indices):
    torch._check(values.dim() == 2, lambda: "values must be 2-D (rows, cols * bits / 8 + 4)")
    torch._check(indices.dim() == 1, lambda: "indices must be 1-D")
    return values.new_empty((indices.shape[0], cols), dtype=torch.float32)


@torch.library.register_fake(f"{NAMESPACE}::qrow_embedding_bag")
def _qrow_embedding_bag_fake(
    values, bits, cols, indices, offsets, mode, per_sample_weights=None, include_last_offset=False
):
    torch._check(values.dim() == 2, lambda: "values must be 2-D (rows, cols * bits / 8 + 4)")
    torch._check(indices.dim() == 1 and offsets.dim() == 1, lambda: "indices and offsets must be 1-D")
    bags = offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]
    return values.new_empty((bags, cols), dtype=torch.float32)


@torch.library.register_fake(f"{NAMESPACE}::linear_qbsr_dyn")
def _linear_qbsr_dyn_fake(crow, col, values, scales, bias, rows, cols, x):
    torch._check(x.dim() == 2 and x.shape[1] == cols, lambda: f"x must be (N, {cols})")
    return x.new_empty((x.shape[0], rows))
