"""Bitmask storage: one bit per position, values of the kept positions in row-major order."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FormatError
from .base import SparseFormat, check_shape, check_tensor, check_values, check_weight, register_format

__all__ = ["Bitmask"]

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def _pack(mask: torch.Tensor) -> torch.Tensor:
    rows, cols = mask.shape
    padded = torch.zeros(rows, (cols + 7) // 8 * 8, dtype=torch.uint8, device=mask.device)
    padded[:, :cols] = mask.to(torch.uint8)
    return (padded.reshape(rows, -1, 8) * _BITS.to(mask.device)).sum(-1).to(torch.uint8)


def _unpack(bits: torch.Tensor, cols: int) -> torch.Tensor:
    return ((bits.unsqueeze(-1) & _BITS.to(bits.device)) != 0).reshape(bits.shape[0], -1)[:, :cols]


@register_format("bitmask")
class Bitmask(SparseFormat):
    """Bit ``j % 8`` of ``bitmask[i, j // 8]`` is set when position ``(i, j)`` is stored (little-endian bits).

    Shapes:
        bitmask: (rows, ceil(cols / 8)) uint8. values: (nnz,).
    """

    def __init__(self, bitmask, values, shape, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.bitmask, self.values = bitmask, values
        if validate:
            self.validate()

    @classmethod
    def from_dense(cls, weight, mask=None, **params: Any):
        if params:
            raise FormatError(f"bitmask takes no parameters, got {sorted(params)}.")
        keep = check_weight(weight, mask)
        return cls(_pack(keep), weight[keep].contiguous(), tuple(weight.shape), validate=False)

    def to_dense(self):
        keep = _unpack(self.bitmask, self.shape[1])
        out = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        out[keep] = self.values
        return out

    def tensors(self):
        return {"bitmask": self.bitmask, "values": self.values}

    def params(self):
        return {"format": self.name, "shape": list(self.shape)}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        return cls(tensors["bitmask"], tensors["values"], params["shape"], validate=validate)

    def validate(self):
        rows, cols = self.shape
        check_values(self.name, self.values)
        check_tensor(self.name, "bitmask", self.bitmask, dtypes=(torch.uint8,), ndim=2, length=rows)
        if self.bitmask.shape[1] != (cols + 7) // 8:
            raise FormatError(
                f"bitmask: bitmask has {self.bitmask.shape[1]} bytes per row; expected {(cols + 7) // 8}."
            )
        full = _unpack(self.bitmask, self.bitmask.shape[1] * 8)
        if bool(full[:, cols:].any()):
            raise FormatError(f"bitmask: bits set past column {cols} (the padding bits must be zero).")
        count = int(full.sum())
        if count != self.values.numel():
            raise FormatError(f"bitmask: {count} bits are set but there are {self.values.numel()} values.")
