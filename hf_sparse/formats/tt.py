"""Tensor-train embedding tables (``tt``, TT-Rec): a row is the contraction of one slice of each of three cores,
built from a dense table by TT-SVD. See :mod:`hf_sparse.formats.embedding` for the family."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import FormatError
from .base import SparseFormat, check_shape, register_format
from .embedding import check_float, check_params, dense_lookup, is_int

__all__ = ["TT", "tt_factors"]


def _balanced_factors(n: int, parts: int) -> list[int]:
    """``parts`` integers whose product is exactly ``n``, as equal as the divisors allow (largest first)."""
    factors = [1] * parts
    remaining = n
    primes = []
    p = 2
    while p * p <= remaining:
        while remaining % p == 0:
            primes.append(p)
            remaining //= p
        p += 1
    if remaining > 1:
        primes.append(remaining)
    for prime in sorted(primes, reverse=True):
        factors[factors.index(min(factors))] *= prime
    return sorted(factors, reverse=True)


def tt_factors(rows: int, cols: int, cores: int = 3) -> tuple[list[int], list[int]]:
    """Default TT shapes for a (rows, cols) table: vocabulary factors ``v_k`` about ``rows^(1/cores)`` whose
    product is at least ``rows`` (the table is padded), and column factors whose product is exactly ``cols``."""
    v = math.ceil(rows ** (1.0 / cores))
    vocab = [v] * (cores - 1)
    vocab.append(math.ceil(rows / math.prod(vocab)))
    return vocab, _balanced_factors(cols, cores)


@register_format("tt")
class TT(SparseFormat):
    """A table as a tensor train: row ``i = (i_1, ..., i_n)`` in the mixed radix of ``vocab_factors`` is
    ``G_1[:, i_1] G_2[:, i_2] ... G_n[:, i_n]`` contracted over the ranks and flattened over ``dim_factors``.

    Shapes:
        core_k: (r_{k-1}, v_k, d_k, r_k) with r_0 = r_n = 1.
    """

    def __init__(self, cores: list[torch.Tensor], shape, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.cores = list(cores)
        if validate:
            self.validate()

    @property
    def float_tensors(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(f"core_{k}" for k in range(len(self.cores)))

    @classmethod
    def float_tensor_names(cls, params: dict) -> tuple[str, ...]:
        return tuple(f"core_{k}" for k in range(len(params.get("vocab_factors", []))))

    @property
    def vocab_factors(self) -> list[int]:
        return [int(c.shape[1]) for c in self.cores]

    @property
    def dim_factors(self) -> list[int]:
        return [int(c.shape[2]) for c in self.cores]

    @property
    def ranks(self) -> list[int]:
        return [int(c.shape[3]) for c in self.cores[:-1]]

    @classmethod
    def from_dense(
        cls,
        weight,
        mask=None,
        *,
        rank: int | list[int],
        vocab_factors: list[int] | None = None,
        dim_factors: list[int] | None = None,
        **params: Any,
    ):
        """TT-SVD of ``weight`` (padded with zero rows to ``prod(vocab_factors)``), each unfolding truncated to
        its rank (``rank``: one for every bond, or a list of ``cores - 1``)."""
        if params or mask is not None:
            raise FormatError(f"tt takes rank, vocab_factors and dim_factors (no mask), got {sorted(params)}.")
        rows, cols = weight.shape
        if vocab_factors is None or dim_factors is None:
            dv, dd = tt_factors(rows, cols)
            vocab_factors, dim_factors = vocab_factors or dv, dim_factors or dd
        n = len(vocab_factors)
        if len(dim_factors) != n or n < 2:
            raise FormatError(
                f"tt: vocab_factors {vocab_factors} and dim_factors {dim_factors} need the same length >= 2."
            )
        if math.prod(vocab_factors) < rows or math.prod(dim_factors) != cols:
            raise FormatError(
                f"tt: vocab_factors {vocab_factors} must multiply to >= {rows} rows and dim_factors {dim_factors} to "
                f"exactly {cols} columns."
            )
        ranks = [rank] * (n - 1) if is_int(rank) else list(rank)
        if len(ranks) != n - 1 or not all(is_int(r) and r >= 1 for r in ranks):
            raise FormatError(f"tt: rank must be a positive integer or a list of {n - 1}, got {rank!r}.")
        w = torch.zeros(math.prod(vocab_factors), cols, dtype=torch.float64, device=weight.device)
        w[:rows] = weight.detach().double()
        # (v_1..v_n, d_1..d_n) -> (v_1 d_1, v_2 d_2, ..., v_n d_n): core k indexes (v_k, d_k).
        t = w.reshape(*vocab_factors, *dim_factors)
        t = t.permute(*[p for k in range(n) for p in (k, n + k)]).contiguous()
        cores, left = [], 1
        rest = t.reshape(vocab_factors[0] * dim_factors[0], -1)
        for k in range(n - 1):
            rest = rest.reshape(left * vocab_factors[k] * dim_factors[k], -1)
            u, s, vh = torch.linalg.svd(rest, full_matrices=False)
            r = min(ranks[k], s.numel())
            cores.append(u[:, :r].reshape(left, vocab_factors[k], dim_factors[k], r))
            rest = s[:r].unsqueeze(1) * vh[:r]
            left = r
        cores.append(rest.reshape(left, vocab_factors[-1], dim_factors[-1], 1))
        return cls([c.to(weight.dtype).contiguous() for c in cores], (rows, cols), validate=False)

    @property
    def values(self) -> torch.Tensor:
        return self.cores[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.cores[0].dtype

    @property
    def nnz(self) -> int:
        return int(sum(c.numel() for c in self.cores))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(torch.int64)
        radix = self.vocab_factors
        digits = []
        rem = ids
        for k in range(len(radix) - 1, -1, -1):
            digits.append(rem % radix[k])
            rem = rem // radix[k]
        digits.reverse()
        # acc: (n, d_1 ... d_k, r_k) flattened to (n, D_k, r_k).
        acc = self.cores[0][0, digits[0]]  # (n, d_1, r_1)
        for k in range(1, len(self.cores)):
            core = self.cores[k][:, digits[k]].permute(1, 0, 2, 3)  # (n, r_{k-1}, d_k, r_k)
            acc = torch.einsum("nar,nrbs->nabs", acc, core).reshape(ids.numel(), -1, core.shape[-1])
        return acc.reshape(ids.numel(), self.shape[1])

    def to_dense(self) -> torch.Tensor:
        return dense_lookup(self)

    def tensors(self):
        return {f"core_{k}": c for k, c in enumerate(self.cores)}

    def params(self):
        return {
            "format": self.name,
            "shape": list(self.shape),
            "vocab_factors": self.vocab_factors,
            "dim_factors": self.dim_factors,
            "ranks": self.ranks,
        }

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        check_params(cls.name, params, {"vocab_factors", "dim_factors", "ranks"})
        factors = params["vocab_factors"]
        if not isinstance(factors, list) or len(factors) < 2:
            raise FormatError(f"tt: vocab_factors must be a list of at least two integers, got {factors!r}.")
        extra = sorted(set(tensors) - {f"core_{k}" for k in range(len(factors))})
        if extra:
            raise FormatError(f"tt: unknown tensors {extra}.")
        fmt = cls([tensors[f"core_{k}"] for k in range(len(factors))], params["shape"], validate=validate)
        if validate:
            for key in ("vocab_factors", "dim_factors", "ranks"):
                if params[key] != getattr(fmt, key):
                    raise FormatError(
                        f"tt: params {key}={params[key]!r} disagree with the cores ({getattr(fmt, key)})."
                    )
        return fmt

    def validate(self) -> None:
        rows, cols = self.shape
        if len(self.cores) < 2:
            raise FormatError(f"tt: needs at least two cores, got {len(self.cores)}.")
        left = 1
        for k, c in enumerate(self.cores):
            check_float(self.name, f"core_{k}", c, 4)
            if c.shape[0] != left:
                raise FormatError(
                    f"tt: core_{k} has left rank {c.shape[0]}; the previous core's right rank is {left}."
                )
            left = int(c.shape[3])
        if left != 1:
            raise FormatError(f"tt: the last core's right rank must be 1, got {left}.")
        if math.prod(self.vocab_factors) < rows or math.prod(self.dim_factors) != cols:
            raise FormatError(
                f"tt: cores cover {math.prod(self.vocab_factors)} rows x {math.prod(self.dim_factors)} columns; the "
                f"table is {rows} x {cols}."
            )
        if len({c.dtype for c in self.cores}) != 1:
            raise FormatError("tt: all cores must have the same dtype.")
