"""Compressed row (CSR) and compressed column (CSC) storage."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FormatError
from .base import (
    SparseFormat,
    check_indices,
    check_pointers,
    check_shape,
    check_values,
    check_weight,
    index_dtype,
    register_format,
    segment_pointers,
)

__all__ = ["CSR", "CSC"]


@register_format("csr")
class CSR(SparseFormat):
    """Row storage: ``crow_indices`` (int32, rows+1), ``col_indices`` (int16/int32, nnz, sorted per row),
    ``values`` (nnz).

    Shapes:
        crow_indices: (rows + 1,). col_indices: (nnz,). values: (nnz,).
    """

    _ptr, _idx = "crow_indices", "col_indices"

    def __init__(self, crow_indices, col_indices, values, shape, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.crow_indices, self.col_indices, self.values = crow_indices, col_indices, values
        if validate:
            self.validate()

    @classmethod
    def from_dense(cls, weight, mask=None, **params: Any):
        if params:
            raise FormatError(f"{cls.name} takes no parameters, got {sorted(params)}.")
        keep = check_weight(weight, mask)
        rows, cols = torch.nonzero(keep, as_tuple=True)  # row-major order: sorted by row, then column
        return cls(
            segment_pointers(keep.sum(1)),
            cols.to(index_dtype(weight.shape[1])),
            weight[rows, cols].contiguous(),
            tuple(weight.shape),
            validate=False,
        )

    def to_dense(self) -> torch.Tensor:
        rows = torch.repeat_interleave(torch.arange(self.shape[0]), torch.diff(self.crow_indices.to(torch.int64)))
        out = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        out[rows, self.col_indices.to(torch.int64)] = self.values
        return out

    def tensors(self):
        return {self._ptr: self.crow_indices, self._idx: self.col_indices, "values": self.values}

    def params(self):
        return {"format": self.name, "shape": list(self.shape)}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        return cls(tensors[cls._ptr], tensors[cls._idx], tensors["values"], params["shape"], validate=validate)

    def validate(self) -> None:
        rows, cols = self.shape
        check_values(self.name, self.values)
        nnz = self.values.numel()
        check_pointers(self.name, self._ptr, self.crow_indices, rows, nnz)
        check_indices(self.name, self._idx, self.col_indices, cols, self.crow_indices)
        if self.col_indices.numel() != nnz:
            raise FormatError(f"{self.name}: {self._idx} has {self.col_indices.numel()} entries, values {nnz}.")


@register_format("csc")
class CSC(SparseFormat):
    """Column storage: CSR of the transpose. ``ccol_indices`` (int32, cols+1), ``row_indices`` (sorted per
    column), ``values``.

    Shapes:
        ccol_indices: (cols + 1,). row_indices: (nnz,). values: (nnz,).
    """

    def __init__(self, ccol_indices, row_indices, values, shape, *, validate: bool = True):
        self.shape = check_shape(shape)
        self._t = CSR(ccol_indices, row_indices, values, (self.shape[1], self.shape[0]), validate=False)
        if validate:
            self.validate()

    @property
    def ccol_indices(self):
        return self._t.crow_indices

    @property
    def row_indices(self):
        return self._t.col_indices

    @property
    def values(self):
        return self._t.values

    @classmethod
    def from_dense(cls, weight, mask=None, **params: Any):
        keep = check_weight(weight, mask)
        t = CSR.from_dense(weight.t(), keep.t(), **params)
        return cls(t.crow_indices, t.col_indices, t.values, tuple(weight.shape), validate=False)

    def to_dense(self):
        return self._t.to_dense().t().contiguous()

    def tensors(self):
        return {"ccol_indices": self.ccol_indices, "row_indices": self.row_indices, "values": self.values}

    def params(self):
        return {"format": self.name, "shape": list(self.shape)}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        return cls(
            tensors["ccol_indices"], tensors["row_indices"], tensors["values"], params["shape"], validate=validate
        )

    def validate(self):
        rows, cols = self.shape
        check_values(self.name, self.values)
        nnz = self.values.numel()
        check_pointers(self.name, "ccol_indices", self.ccol_indices, cols, nnz)
        check_indices(self.name, "row_indices", self.row_indices, rows, self.ccol_indices)
        if self.row_indices.numel() != nnz:
            raise FormatError(f"{self.name}: row_indices has {self.row_indices.numel()} entries, values {nnz}.")
