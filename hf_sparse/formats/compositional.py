"""Embedding tables whose rows are composed from smaller shared tables: the hashing trick (``hashed``) and
quotient-remainder compositional embeddings (``qr``). See :mod:`hf_sparse.formats.embedding` for the family."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ..errors import FormatError, quote
from .base import SparseFormat, check_shape, register_format
from .embedding import check_float, check_params, dense_lookup, is_int

__all__ = ["Hashed", "QR", "HASH_PRIME"]

#: The prime of the universal hash family (2^31 - 1): products a * id stay inside int64 for ids < 2^31.
HASH_PRIME = 2**31 - 1


# -- hashing trick ------------------------------------------------------------------------------------------------
@register_format("hashed")
class Hashed(SparseFormat):
    """Row ``i`` = ``sum_j table[h_j(i)]`` with ``h_j(i) = ((a_j i + b_j) mod p) mod buckets``, ``p = 2^31 - 1``.

    Args:
        values: the shared table, (buckets, cols).
        hash_a, hash_b: the ``k`` hash functions' coefficients (``1 <= a < p``, ``0 <= b < p``), in the params.

    Shapes:
        values: (buckets, cols).
    """

    float_tensors: ClassVar[tuple[str, ...]] = ("values",)

    def __init__(self, values, shape, hash_a, hash_b, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.values = values
        self.hash_a, self.hash_b = list(hash_a), list(hash_b)
        if validate:
            self.validate()

    @staticmethod
    def hash_coefficients(num_hashes: int, seed: int = 0) -> tuple[list[int], list[int]]:
        """``num_hashes`` seeded universal-hash coefficient pairs."""
        g = torch.Generator().manual_seed(seed)
        a = torch.randint(1, HASH_PRIME, (num_hashes,), generator=g).tolist()
        b = torch.randint(0, HASH_PRIME, (num_hashes,), generator=g).tolist()
        return a, b

    @classmethod
    def empty(cls, shape, buckets: int, num_hashes: int = 2, *, seed: int = 0, dtype=torch.float32, device=None):
        """A zero table of ``buckets`` rows with seeded hash functions (fill ``values`` before use)."""
        if not is_int(buckets) or buckets < 1 or not is_int(num_hashes) or num_hashes < 1:
            raise FormatError(
                f"hashed: buckets and num_hashes must be positive integers, got {buckets}, {num_hashes}."
            )
        a, b = cls.hash_coefficients(num_hashes, seed)
        values = torch.zeros(buckets, shape[1], dtype=dtype, device=device)
        return cls(values, tuple(shape), a, b)

    @classmethod
    def from_dense(cls, weight, mask=None, *, buckets: int, num_hashes: int = 2, seed: int = 0, **params: Any):
        """The least-squares shared table for ``weight``'s rows (each bucket: the mean of what its ids need)."""
        if params or mask is not None:
            raise FormatError(f"hashed takes buckets, num_hashes and seed (no mask), got {sorted(params)}.")
        fmt = cls.empty(tuple(weight.shape), buckets, num_hashes, seed=seed, dtype=weight.dtype, device=weight.device)
        # One pass of the normal equations' diagonal: each bucket gets the mean of (row / k) over the ids hashing to
        # it — exact when no two ids collide, and a good start for fitting otherwise.
        ids = torch.arange(weight.shape[0], device=weight.device)
        idx = fmt.bucket_ids(ids)  # (V, k)
        total = torch.zeros_like(fmt.values, dtype=torch.float64)
        count = torch.zeros(buckets, dtype=torch.float64, device=weight.device)
        for j in range(num_hashes):
            total.index_add_(0, idx[:, j], weight.detach().double() / num_hashes)
            count.index_add_(0, idx[:, j], torch.ones(weight.shape[0], dtype=torch.float64, device=weight.device))
        fmt.values = (total / count.clamp(min=1).unsqueeze(1)).to(weight.dtype)
        return fmt

    def bucket_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """The ``k`` bucket rows of each id: (n, k) int64."""
        a = torch.tensor(self.hash_a, dtype=torch.int64, device=ids.device)
        b = torch.tensor(self.hash_b, dtype=torch.int64, device=ids.device)
        return ((ids.to(torch.int64).unsqueeze(1) * a + b) % HASH_PRIME) % self.values.shape[0]

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.values[self.bucket_ids(ids)].sum(1)

    def to_dense(self) -> torch.Tensor:
        return dense_lookup(self)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def tensors(self):
        return {"values": self.values}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "hash_a": self.hash_a, "hash_b": self.hash_b}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        check_params(cls.name, params, {"hash_a", "hash_b"})
        a, b = params["hash_a"], params["hash_b"]
        if not isinstance(a, list) or not isinstance(b, list):
            raise FormatError(f"hashed: hash_a and hash_b must be lists of integers, got {quote(a)} and {quote(b)}.")
        return cls(tensors["values"], params["shape"], a, b, validate=validate)

    def validate(self) -> None:
        check_float(self.name, "values", self.values, 2)
        if self.values.shape[1] != self.shape[1] or self.values.shape[0] < 1:
            raise FormatError(
                f"hashed: values has shape {tuple(self.values.shape)}; expected (buckets, {self.shape[1]})."
            )
        ok = (
            len(self.hash_a) == len(self.hash_b) >= 1
            and all(is_int(a) and 1 <= a < HASH_PRIME for a in self.hash_a)
            and all(is_int(b) and 0 <= b < HASH_PRIME for b in self.hash_b)
        )
        if not ok:
            raise FormatError(
                f"hashed: hash_a and hash_b must be equally long lists of integers with 1 <= a < {HASH_PRIME} and "
                f"0 <= b < {HASH_PRIME}, got {quote(self.hash_a)} and {quote(self.hash_b)}."
            )


# -- quotient-remainder ---------------------------------------------------------------------------------------------
@register_format("qr")
class QR(SparseFormat):
    """Row ``i`` = ``quotient[i // m] (op) remainder[i % m]`` with ``m = collisions`` remainder rows and ``op`` one
    of ``add``, ``mult`` (element-wise) or ``concat`` (each table holds half the columns).

    Shapes:
        quotient: (ceil(rows / m), c). remainder: (m, c'), with c = c' = cols for add / mult, and
        c = cols // 2, c' = cols - c for concat.
    """

    float_tensors: ClassVar[tuple[str, ...]] = ("quotient", "remainder")
    OPS = ("add", "mult", "concat")

    def __init__(self, quotient, remainder, shape, op: str, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.quotient, self.remainder, self.op = quotient, remainder, op
        if validate:
            self.validate()

    @classmethod
    def table_shapes(cls, shape, collisions: int, op: str) -> tuple[tuple[int, int], tuple[int, int]]:
        rows, cols = shape
        if op not in cls.OPS:
            raise FormatError(f"qr: op must be one of {list(cls.OPS)}, got {op!r}.")
        if not is_int(collisions) or not 1 <= collisions <= rows:
            raise FormatError(
                f"qr: collisions (remainder rows) must be an integer in [1, {rows}], got {collisions!r}."
            )
        if op == "concat" and cols < 2:
            raise FormatError("qr: concat needs at least two columns.")
        cq = cols // 2 if op == "concat" else cols
        return (math.ceil(rows / collisions), cq), (collisions, cols - cq if op == "concat" else cols)

    @classmethod
    def from_dense(cls, weight, mask=None, *, collisions: int, op: str = "mult", **params: Any):
        """A starting point for ``weight`` in closed form: for ``add`` and ``concat`` the least-squares quotient
        rows given remainder rows of the per-remainder mean (``add``: residual means); for ``mult`` the remainder
        rows are ones and the quotient rows the mean of their block. Fit further with
        :func:`~hf_sparse.embeddings.fit_format_`."""
        if params or mask is not None:
            raise FormatError(f"qr takes collisions and op (no mask), got {sorted(params)}.")
        rows, cols = weight.shape
        (nq, cq), (m, cr) = cls.table_shapes((rows, cols), collisions, op)
        w = weight.detach().double()
        ids = torch.arange(rows, device=weight.device)
        q, r = ids // m, ids % m

        def mean_by(index, values, n):
            total = torch.zeros(n, values.shape[1], dtype=torch.float64, device=weight.device).index_add_(
                0, index, values
            )
            count = torch.zeros(n, dtype=torch.float64, device=weight.device).index_add_(
                0, index, torch.ones_like(index, dtype=torch.float64)
            )
            return total / count.clamp(min=1).unsqueeze(1)

        if op == "concat":
            quotient, remainder = mean_by(q, w[:, :cq], nq), mean_by(r, w[:, cq:], m)
        elif op == "add":
            remainder = mean_by(r, w, m) - w.mean(0)
            quotient = mean_by(q, w - remainder[r], nq)
        else:
            remainder = torch.ones(m, cols, dtype=torch.float64, device=weight.device)
            quotient = mean_by(q, w, nq)
        return cls(quotient.to(weight.dtype), remainder.to(weight.dtype), (rows, cols), op, validate=False)

    @property
    def values(self) -> torch.Tensor:
        return self.quotient

    @property
    def dtype(self) -> torch.dtype:
        return self.quotient.dtype

    @property
    def collisions(self) -> int:
        return int(self.remainder.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.quotient.numel() + self.remainder.numel())

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(torch.int64)
        m = self.collisions
        a, b = self.quotient[ids // m], self.remainder[ids % m]
        if self.op == "add":
            return a + b
        if self.op == "mult":
            return a * b
        return torch.cat([a, b], dim=1)

    def to_dense(self) -> torch.Tensor:
        return dense_lookup(self)

    def tensors(self):
        return {"quotient": self.quotient, "remainder": self.remainder}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "op": self.op}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        check_params(cls.name, params, {"op"})
        return cls(tensors["quotient"], tensors["remainder"], params["shape"], params.get("op"), validate=validate)

    def validate(self) -> None:
        check_float(self.name, "quotient", self.quotient, 2)
        check_float(self.name, "remainder", self.remainder, 2)
        (q_shape, r_shape) = self.table_shapes(self.shape, int(self.remainder.shape[0]), self.op)
        if tuple(self.quotient.shape) != q_shape or tuple(self.remainder.shape) != r_shape:
            raise FormatError(
                f"qr: tables have shapes quotient {tuple(self.quotient.shape)}, remainder "
                f"{tuple(self.remainder.shape)}; a {self.shape} table with {self.remainder.shape[0]} remainder rows "
                f"and op {self.op!r} needs {q_shape} and {r_shape}."
            )
        if self.quotient.dtype != self.remainder.dtype:
            raise FormatError("qr: quotient and remainder must have the same dtype.")
