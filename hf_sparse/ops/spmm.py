"""Typed wrappers of the SpMM ops: kernel when built and applicable, pure-PyTorch reference otherwise."""

from __future__ import annotations

import torch

from ..errors import FormatError
from ..formats import CSR
from . import _loader

__all__ = ["spmm_csr", "spmm_csr_reference"]


def spmm_csr_reference(weight: CSR, xt: torch.Tensor) -> torch.Tensor:
    """``weight @ xt`` in plain PyTorch (the fallback and the test oracle).

    Shapes:
        weight: (rows, cols) CSR. xt: (cols, N). Returns: (rows, N).
    """
    rows, _ = weight.shape
    row_of = torch.repeat_interleave(
        torch.arange(rows, device=xt.device), torch.diff(weight.crow_indices.to(torch.int64))
    )
    out = torch.zeros(rows, xt.shape[1], dtype=xt.dtype, device=xt.device)
    contrib = weight.values.to(xt.dtype).unsqueeze(1) * xt[weight.col_indices.to(torch.int64)]
    return out.index_add_(0, row_of, contrib)


def spmm_csr(weight: CSR, xt: torch.Tensor) -> torch.Tensor:
    """``weight @ xt`` for a CSR weight; runs ``hf_sparse::spmm_csr`` when built, for fp32 CPU tensors.

    Shapes:
        weight: (rows, cols) CSR. xt: (cols, N). Returns: (rows, N).

    Raises:
        FormatError: ``xt`` is not 2-D with ``cols`` rows.
    """
    if not isinstance(weight, CSR):
        raise FormatError(f"spmm_csr needs a CSR weight, got {type(weight).__name__}.")
    if xt.dim() != 2 or xt.shape[0] != weight.shape[1]:
        raise FormatError(f"spmm_csr: xt must have shape ({weight.shape[1]}, N), got {tuple(xt.shape)}.")
    if (
        xt.device.type == "cpu"
        and xt.dtype == torch.float32
        and weight.values.dtype == torch.float32
        and _loader.load()
    ):
        return torch.ops.hf_sparse.spmm_csr(
            weight.crow_indices, weight.col_indices, weight.values, weight.shape[0], weight.shape[1], xt
        )
    return spmm_csr_reference(weight, xt)
