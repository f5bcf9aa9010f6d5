"""Full storage (``full``): every entry stored, in the values' own dtype.

A layer that no sparse format makes faster can still be faster dense in another dtype than its model's (a bfloat16
layer in a float32 model, on a CPU with native bf16). ``full`` stores such a layer: ``SparseLinear`` casts its input
to the values' dtype, multiplies densely, and casts the result back.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FormatError, quote
from .base import SparseFormat, check_shape, check_values, check_weight, register_format

__all__ = ["Full"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_format("full")
class Full(SparseFormat):
    """A dense weight (zeros included) in the dtype ``dtype``.

    Args:
        values: (rows, cols) floating-point tensor.

    Shapes:
        values: (rows, cols).
    """

    def __init__(self, values, shape, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.values = values
        if validate:
            self.validate()

    @classmethod
    def from_dense(cls, weight, mask=None, *, dtype: str | None = None, **params: Any):
        """Store ``weight`` as it is, cast to ``dtype`` (``"float32"``, ``"bfloat16"``, ``"float16"``; default its
        own). A ``mask`` zeroes the positions it does not keep."""
        if params:
            raise FormatError(f"full takes only a dtype parameter, got {sorted(params)}.")
        keep = check_weight(weight, mask)
        if dtype is not None and dtype not in _DTYPES:
            raise FormatError(f"full: dtype must be one of {list(_DTYPES)}, got {quote(dtype)}.")
        values = weight if mask is None else torch.where(keep, weight, torch.zeros((), dtype=weight.dtype))
        values = values.to(_DTYPES[dtype]) if dtype is not None else values
        return cls(values.contiguous(), tuple(weight.shape), validate=False)

    def to_dense(self):
        return self.values

    def tensors(self):
        return {"values": self.values}

    def params(self):
        return {"format": self.name, "shape": list(self.shape)}

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        return cls(tensors["values"], params["shape"], validate=validate)

    def validate(self):
        check_values(self.name, self.values, length=self.shape[0], ndim=2)
        if tuple(self.values.shape) != self.shape:
            raise FormatError(f"full: values have shape {tuple(self.values.shape)}; expected {self.shape}.")
