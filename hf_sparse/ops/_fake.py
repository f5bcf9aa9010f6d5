"""Fake (meta) implementations of the hf_sparse:: ops, so ``torch.compile`` and meta tensors can trace them."""

from __future__ import annotations

import torch


@torch.library.register_fake("hf_sparse::spmm_csr")
def _spmm_csr_fake(crow, col, values, rows, cols, xt):
    torch._check(xt.dim() == 2 and xt.shape[0] == cols, lambda: "xt must be (cols, N)")
    return xt.new_empty((rows, xt.shape[1]))
