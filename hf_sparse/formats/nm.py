"""N:M semi-structured storage: at most N stored values in every group of M consecutive columns."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FormatError
from .base import SparseFormat, check_shape, check_tensor, check_values, check_weight, register_format

__all__ = ["NM"]


def _check_nm(n: Any, m: Any, cols: int) -> tuple[int, int]:
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m <= 127):
        raise FormatError(f"nm: need integers 0 < n <= m <= 127, got n={n!r}, m={m!r}.")
    if cols % m:
        raise FormatError(f"nm: {cols} columns are not divisible by m={m}; pad the weight or choose another m.")
    return n, m


@register_format("nm")
class NM(SparseFormat):
    """Per row and group of ``m`` columns, ``n`` slots: a value and its int8 position in the group (sorted).
    Groups with fewer than ``n`` stored positions fill the spare slots with zeros at unused positions.

    Shapes:
        values: (rows, cols / m * n). indices: (rows, cols / m * n) int8 in [0, m).
    """

    def __init__(self, values, indices, shape, n, m, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.n, self.m = _check_nm(n, m, self.shape[1])
        self.values, self.indices = values, indices
        if validate:
            self.validate()

    @classmethod
    def from_dense(cls, weight, mask=None, *, n: int = 2, m: int = 4, **params: Any):
        if params:
            raise FormatError(f"nm takes only `n` and `m`, got {sorted(params)}.")
        keep = check_weight(weight, mask)
        rows, cols = weight.shape
        n, m = _check_nm(n, m, cols)
        groups = keep.reshape(rows, cols // m, m)
        counts = groups.sum(-1)
        if bool((counts > n).any()):
            r, g = (int(x) for x in torch.nonzero(counts > n)[0])
            raise FormatError(
                f"nm: row {r}, columns {g * m}..{g * m + m - 1} keep {int(counts[r, g])} values, more "
                f"than n={n}. Prune to {n}:{m} first (e.g. keep the {n} largest per group)."
            )
        # Kept positions first (in column order), then unused positions: the first n of each group are the slots.
        pos = torch.arange(m, device=weight.device).expand_as(groups)
        order = torch.argsort(torch.where(groups, pos, pos + m), dim=-1)[..., :n]
        order = torch.sort(order, dim=-1).values
        vals = torch.gather((weight * keep).reshape(rows, cols // m, m), -1, order)
        return cls(
            vals.reshape(rows, -1).contiguous(),
            order.reshape(rows, -1).to(torch.int8).contiguous(),
            (rows, cols),
            n,
            m,
            validate=False,
        )

    def to_dense(self):
        rows, cols = self.shape
        g = cols // self.m
        out = torch.zeros(rows, g, self.m, dtype=self.values.dtype, device=self.values.device)
        out.scatter_(-1, self.indices.reshape(rows, g, self.n).to(torch.int64), self.values.reshape(rows, g, self.n))
        return out.reshape(rows, cols)

    def tensors(self):
        return {"values": self.values, "indices": self.indices}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "n": self.n, "m": self.m}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        return cls(tensors["values"], tensors["indices"], params["shape"], params["n"], params["m"], validate=validate)

    def validate(self):
        rows, cols = self.shape
        width = cols // self.m * self.n
        check_values(self.name, self.values, ndim=2, length=rows)
        check_tensor(self.name, "indices", self.indices, dtypes=(torch.int8,), ndim=2, length=rows)
        for name, t in (("values", self.values), ("indices", self.indices)):
            if t.shape[1] != width:
                raise FormatError(f"nm: {name} has {t.shape[1]} columns; expected {width} (cols / m * n).")
        idx = self.indices.to(torch.int64)
        outside = (idx < 0) | (idx >= self.m)
        if bool(outside.any()):
            r, j = (int(x) for x in torch.nonzero(outside)[0])
            raise FormatError(
                f"nm: indices[{r}, {j}]={int(idx[r, j])} is outside its group of m={self.m} columns; indices must be "
                f"in [0, {self.m})."
            )
        grouped = idx.reshape(rows, -1, self.n)
        unsorted = grouped[..., 1:] <= grouped[..., :-1]
        if self.n > 1 and bool(unsorted.any()):
            r, g, _ = (int(x) for x in torch.nonzero(unsorted)[0])
            raise FormatError(
                f"nm: indices must be sorted and unique within each group: row {r}, group {g} (indices[{r}, "
                f"{g * self.n}:{(g + 1) * self.n}]) holds {grouped[r, g].tolist()}."
            )
