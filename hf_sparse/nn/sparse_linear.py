"""``SparseLinear``: an ``nn.Linear`` whose weight lives in a hf_sparse storage format and runs through ``spmm``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import FormatError
from ..formats import FORMATS, SparseFormat, to_format
from ..ops import sparse_linear
from .linear_like import is_linear_like, linear_weight
from .stored import StoredWeightMixin

__all__ = ["SparseLinear"]


class SparseLinear(StoredWeightMixin, nn.Module):
    """``y = x @ W^T + b`` with ``W`` stored sparsely (CSR, BSR, N:M, hybrid, ...).

    The format's floating-point tensors are parameters (they train: gradients reach only stored positions, so a
    pruned position stays pruned) and its index tensors are buffers; all appear in ``state_dict`` as
    ``weight_<name>`` (``weight_values``, ``weight_crow_indices``, ...), compressed, never densified. Loading a
    state dict re-validates them.

    Args:
        weight: The weight, already in a format (see :func:`hf_sparse.formats.to_format`).
        bias: Optional bias of shape (out_features,).
        trainable: Whether the stored values take gradients.

    Shapes:
        input: (..., in_features). output: (..., out_features).
    """

    def __init__(self, weight: SparseFormat, bias: torch.Tensor | None = None, *, trainable: bool = True):
        super().__init__()
        if not isinstance(weight, SparseFormat):
            raise FormatError(f"SparseLinear needs a hf_sparse format as its weight, got {type(weight).__name__}.")
        self.out_features, self.in_features = weight.shape
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise FormatError(f"SparseLinear: bias must have shape ({self.out_features},), got {tuple(bias.shape)}.")
        self._store_weight(weight, trainable=trainable)
        self.bias = nn.Parameter(bias.detach(), requires_grad=trainable) if bias is not None else None

    @classmethod
    def from_linear(
        cls,
        linear: nn.Module,
        format: str = "csr",
        mask: torch.Tensor | None = None,
        *,
        trainable: bool = True,
        **params: Any,
    ) -> SparseLinear:
        """Convert ``linear`` (an ``nn.Linear`` or a transformers ``Conv1D``; stored positions: ``mask``, or its
        non-zeros) to the format named ``format``. The result computes what ``linear`` computes; a ``Conv1D``'s
        weight is stored ``(out, in)`` like any other.

        Shapes:
            mask: ``(out_features, in_features)`` (a ``Conv1D``'s too: the transpose of its parameter).
        """
        if not is_linear_like(linear):
            raise FormatError(
                f"SparseLinear.from_linear needs an nn.Linear or a transformers Conv1D, got {type(linear).__name__}."
            )
        FORMATS.get(format)  # unknown names raise with the list of formats
        with torch.no_grad():
            weight = to_format(format, linear_weight(linear).detach().contiguous(), mask, **params)
        return cls(weight, linear.bias, trainable=trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_linear(self.weight_format(), x, self.bias)

    def extra_repr(self) -> str:
        weight = self.weight_format()
        density = weight.nnz / max(self.in_features * self.out_features, 1)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"format={self.format}, stored={density:.1%}"
        )
