"""Coordinate (COO) storage."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FormatError
from .base import SparseFormat, check_indices, check_shape, check_values, check_weight, index_dtype, register_format

__all__ = ["COO"]


@register_format("coo")
class COO(SparseFormat):
    """Coordinates: ``row_indices``, ``col_indices`` (int16/int32 each, per its dimension) and ``values``, sorted
    row-major without duplicates.

    Shapes:
        row_indices, col_indices, values: (nnz,).
    """

    def __init__(self, row_indices, col_indices, values, shape, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.row_indices, self.col_indices, self.values = row_indices, col_indices, values
        if validate:
            self.validate()

    @classmethod
    def from_dense(cls, weight, mask=None, **params: Any):
        if params:
            raise FormatError(f"coo takes no parameters, got {sorted(params)}.")
        keep = check_weight(weight, mask)
        rows, cols = torch.nonzero(keep, as_tuple=True)
        return cls(
            rows.to(index_dtype(weight.shape[0])),
            cols.to(index_dtype(weight.shape[1])),
            weight[rows, cols].contiguous(),
            tuple(weight.shape),
            validate=False,
        )

    def to_dense(self):
        out = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        out[self.row_indices.to(torch.int64), self.col_indices.to(torch.int64)] = self.values
        return out

    def tensors(self):
        return {"row_indices": self.row_indices, "col_indices": self.col_indices, "values": self.values}

    def params(self):
        return {"format": self.name, "shape": list(self.shape)}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        return cls(
            tensors["row_indices"], tensors["col_indices"], tensors["values"], params["shape"], validate=validate
        )

    def validate(self):
        rows, cols = self.shape
        check_values(self.name, self.values)
        nnz = self.values.numel()
        for name, idx, dim in (("row_indices", self.row_indices, rows), ("col_indices", self.col_indices, cols)):
            check_indices(self.name, name, idx, dim)
            if idx.numel() != nnz:
                raise FormatError(f"coo: {name} has {idx.numel()} entries, values {nnz}.")
        if nnz > 1:
            key = self.row_indices.to(torch.int64) * cols + self.col_indices.to(torch.int64)
            ok = key[1:] > key[:-1]
            if not bool(ok.all()):
                bad = int(torch.nonzero(~ok)[0]) + 1
                raise FormatError(
                    f"coo: row_indices and col_indices are not sorted row-major without duplicates at position {bad} "
                    f"(({int(self.row_indices[bad - 1])}, {int(self.col_indices[bad - 1])}) then "
                    f"({int(self.row_indices[bad])}, {int(self.col_indices[bad])}))."
                )
