"""Hybrid storage: rows dense enough to be cheaper dense are stored dense, the others in CSR."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FormatError
from .base import SparseFormat, check_indices, check_shape, check_values, check_weight, index_dtype, register_format
from .csr import CSR

__all__ = ["Hybrid"]


@register_format("hybrid")
class Hybrid(SparseFormat):
    """Dense rows in ``dense_values`` (listed in ``dense_rows``); the remaining rows (``sparse_rows``) as a CSR of
    their own. A row is stored dense when its density reaches ``threshold``; by default, when dense storage is
    not larger than CSR storage for it (density >= value bytes / (value bytes + index bytes)).

    Shapes:
        dense_rows: (d,). dense_values: (d, cols). sparse_rows: (rows - d,). crow_indices: (rows - d + 1,).
        col_indices, values: (nnz of the sparse rows,).
    """

    def __init__(self, dense_rows, dense_values, sparse_rows, sparse: CSR, shape, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.dense_rows, self.dense_values, self.sparse_rows, self.sparse = (
            dense_rows,
            dense_values,
            sparse_rows,
            sparse,
        )
        if validate:
            self.validate()

    @classmethod
    def from_dense(cls, weight, mask=None, *, threshold: float | None = None, **params: Any):
        if params:
            raise FormatError(f"hybrid takes only `threshold`, got {sorted(params)}.")
        keep = check_weight(weight, mask)
        rows, cols = weight.shape
        if threshold is None:
            vb, ib = weight.element_size(), torch.empty(0, dtype=index_dtype(cols)).element_size()
            threshold = vb / (vb + ib)
        if not 0.0 <= threshold <= 1.0:
            raise FormatError(f"hybrid: threshold must be in [0, 1], got {threshold}.")
        dense_mask = keep.float().mean(1) >= threshold
        dense_rows = torch.nonzero(dense_mask).flatten()
        sparse_rows = torch.nonzero(~dense_mask).flatten()
        idt = index_dtype(rows)
        sparse = (
            CSR.from_dense(weight[sparse_rows], keep[sparse_rows])
            if sparse_rows.numel()
            else CSR(
                torch.zeros(2, dtype=torch.int32),
                torch.zeros(0, dtype=index_dtype(cols)),
                torch.zeros(0, dtype=weight.dtype),
                (1, cols),
                validate=False,
            )
        )
        return cls(
            dense_rows.to(idt),
            (weight * keep)[dense_rows].contiguous(),
            sparse_rows.to(idt),
            sparse,
            (rows, cols),
            validate=False,
        )

    @property
    def values(self):
        return self.sparse.values

    def to_dense(self):
        out = torch.zeros(self.shape, dtype=self.dense_values.dtype, device=self.dense_values.device)
        out[self.dense_rows.to(torch.int64)] = self.dense_values
        if self.sparse_rows.numel():
            out[self.sparse_rows.to(torch.int64)] = self.sparse.to_dense()
        return out

    def tensors(self):
        return {
            "dense_rows": self.dense_rows,
            "dense_values": self.dense_values,
            "sparse_rows": self.sparse_rows,
            "crow_indices": self.sparse.crow_indices,
            "col_indices": self.sparse.col_indices,
            "values": self.sparse.values,
        }

    @property
    def nnz(self) -> int:
        return int(self.dense_values.numel() + self.sparse.values.numel())

    def params(self):
        return {"format": self.name, "shape": list(self.shape)}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        shape = check_shape(params["shape"])
        n_sparse = tensors["sparse_rows"].numel()
        sparse = CSR(
            tensors["crow_indices"],
            tensors["col_indices"],
            tensors["values"],
            (max(n_sparse, 1), shape[1]),
            validate=False,
        )
        return cls(
            tensors["dense_rows"], tensors["dense_values"], tensors["sparse_rows"], sparse, shape, validate=validate
        )

    def validate(self):
        rows, cols = self.shape
        check_indices(self.name, "dense_rows", self.dense_rows, rows)
        check_indices(self.name, "sparse_rows", self.sparse_rows, rows)
        check_values(self.name, self.dense_values, ndim=2, length=self.dense_rows.numel())
        if self.dense_values.shape[1] != cols:
            raise FormatError(f"hybrid: dense_values has {self.dense_values.shape[1]} columns; expected {cols}.")
        listed = torch.cat([self.dense_rows.to(torch.int64), self.sparse_rows.to(torch.int64)])
        times = torch.bincount(listed, minlength=rows)
        if listed.numel() != rows or bool((times != 1).any()):
            row = int(torch.nonzero(times != 1)[0])
            raise FormatError(
                f"hybrid: dense_rows and sparse_rows must list every one of the {rows} rows once; row {row} is "
                f"listed {int(times[row])} times (dense_rows has {self.dense_rows.numel()} entries, sparse_rows "
                f"{self.sparse_rows.numel()})."
            )
        n_sparse = self.sparse_rows.numel()
        if self.sparse.shape != (max(n_sparse, 1), cols):
            raise FormatError(f"hybrid: the CSR part must have shape {(n_sparse, cols)}.")
        self.sparse.validate()
        if self.sparse.values.dtype != self.dense_values.dtype:
            raise FormatError(
                f"hybrid: values ({self.sparse.values.dtype}) and dense_values "
                f"({self.dense_values.dtype}) must have the same dtype."
            )
        if n_sparse == 0 and self.sparse.values.numel():
            raise FormatError("hybrid: values stored for sparse rows, but sparse_rows is empty.")
