"""``SparseLinear``: an ``nn.Linear`` whose weight lives in a hf_sparse storage format and runs through ``spmm``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import FormatError
from ..formats import FORMATS, SparseFormat, from_tensors, to_format
from ..ops import sparse_linear

__all__ = ["SparseLinear"]

_PREFIX = "weight_"


class SparseLinear(nn.Module):
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
        self.format_params: dict[str, Any] = weight.params()
        self._names = list(weight.tensors())
        for name, tensor in weight.tensors().items():
            if tensor.is_floating_point():
                self.register_parameter(_PREFIX + name, nn.Parameter(tensor.detach(), requires_grad=trainable))
            else:
                self.register_buffer(_PREFIX + name, tensor)
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise FormatError(f"SparseLinear: bias must have shape ({self.out_features},), got {tuple(bias.shape)}.")
        self.bias = nn.Parameter(bias.detach(), requires_grad=trainable) if bias is not None else None
        # ``weight`` is a zero-length placeholder that carries the layer's dtype and device (code that inspects
        # ``module.weight.dtype`` keeps working; code that multiplies by it fails loudly). It is saved too, so a
        # loader that does not know hf_sparse tries to put it into ``nn.Linear.weight`` and fails with a size
        # mismatch instead of silently initialising the layer at random. ``dense_weight()`` gives the matrix.
        dtype = next(t.dtype for t in weight.tensors().values() if t.is_floating_point())
        self.register_buffer("weight", torch.empty(0, dtype=dtype, device=weight.values.device))
        self.register_load_state_dict_post_hook(_validate_after_load)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        format: str = "csr",
        mask: torch.Tensor | None = None,
        *,
        trainable: bool = True,
        **params: Any,
    ) -> SparseLinear:
        """Convert ``linear`` (stored positions: ``mask``, or its non-zeros) to the format named ``format``."""
        if not isinstance(linear, nn.Linear):
            raise FormatError(f"SparseLinear.from_linear needs an nn.Linear, got {type(linear).__name__}.")
        FORMATS.get(format)  # unknown names raise with the list of formats
        with torch.no_grad():
            weight = to_format(format, linear.weight.detach(), mask, **params)
        return cls(weight, linear.bias, trainable=trainable)

    @property
    def format(self) -> str:
        return self.format_params["format"]

    def weight_format(self, *, validate: bool = False) -> SparseFormat:
        """The weight as a format object over this module's own tensors (gradients flow through it)."""
        tensors = {name: getattr(self, _PREFIX + name) for name in self._names}
        return from_tensors(tensors, self.format_params, validate=validate)

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense (out_features, in_features) tensor, zeros included (a copy)."""
        return self.weight_format().to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_linear(self.weight_format(), x, self.bias)

    def extra_repr(self) -> str:
        weight = self.weight_format()
        density = weight.nnz / max(self.in_features * self.out_features, 1)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"format={self.format}, stored={density:.1%}"
        )


def _validate_after_load(module: SparseLinear, incompatible_keys) -> None:
    module.weight_format(validate=True)
