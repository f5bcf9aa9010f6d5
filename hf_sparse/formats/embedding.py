"""Compressed embedding tables: formats whose rows are computed from fewer stored values than ``rows x cols``.

- ``hashed``: the hashing trick with ``k`` hash functions; row ``i`` is the sum of ``k`` rows of a shared table of
  ``buckets`` rows, chosen by universal hashes ``((a_j i + b_j) mod p) mod buckets`` (Weinberger et al. 2009;
  with k >= 2, two ids rarely share all their rows, as in hash embeddings).
- ``qr``: quotient-remainder compositional embeddings (Shi et al., KDD 2020): row ``i`` combines row ``i // m`` of
  a quotient table and row ``i % m`` of a remainder table by ``add``, ``mult`` (element-wise) or ``concat``; no two
  ids get the same pair, so every row is distinct with ``ceil(V / m) + m`` stored rows.
- ``tt``: tensor-train embeddings (TT-Rec, Yin et al., MLSys 2021): the ``(V, d)`` table, padded to
  ``v1 v2 v3`` rows and with ``d = d1 d2 d3``, is a train of three cores ``G_k (r_{k-1}, v_k, d_k, r_k)``; a row is
  the contraction of one slice of each core. Built from a dense table by TT-SVD (the best approximation of the
  given ranks, up to the sequential truncation).
- ``rowmap``: row pruning with index remapping: the ``keep`` rows that matter most (most frequent ids, or largest
  norms) keep their own row, every other id shares one of ``shared`` rows (initialised to the mean of its members);
  a ``remap`` index gives each id its row.
- ``hot``: frequency-aware split: the ``H`` hottest ids' rows in one format (e.g. float16 or int8) and the other ids'
  rows, renumbered without gaps, in another (e.g. QR, hashed, 2-bit); no per-id index is stored (an id's cold row
  is ``id - #hot ids below it``).

Each has :meth:`lookup` (rows for a 1-D id tensor; differentiable in the float tensors, so the table trains) and
:meth:`to_dense` (all rows). Tensors and parameters round-trip through safetensors + JSON like every format, and
malformed ones raise :class:`~hf_sparse.errors.FormatError`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ..errors import FormatError, quote
from .base import FORMATS, SparseFormat, check_shape, check_tensor, index_dtype, register_format

__all__ = ["Hashed", "QR", "TT", "RowMap", "Hot", "HASH_PRIME", "tt_factors", "lookup_rows"]

_FLOAT = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
#: The prime of the universal hash family (2^31 - 1): products a * id stay inside int64 for ids < 2^31.
HASH_PRIME = 2**31 - 1


def lookup_rows(fmt: SparseFormat, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (1-D, int64) of any format: its own :meth:`lookup` when it has one, else the dense rows."""
    lookup = getattr(fmt, "lookup", None)
    if lookup is not None:
        return lookup(ids)
    return fmt.to_dense()[ids]


def _check_float(fmt: str, name: str, t: Any, ndim: int) -> None:
    check_tensor(fmt, name, t, dtypes=_FLOAT, ndim=ndim)
    if t.device.type != "meta" and t.numel() and not bool(torch.isfinite(t).all()):
        raise FormatError(f"{fmt}: {name} holds non-finite values (a corrupt checkpoint?).")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_params(fmt: str, params: dict, allowed: set[str]) -> None:
    extra = sorted(set(params) - allowed - {"format", "shape"})
    if extra:
        raise FormatError(f"{fmt}: unknown parameters {extra}.")


def _dense_lookup(fmt: SparseFormat) -> torch.Tensor:
    rows = fmt.shape[0]
    return fmt.lookup(torch.arange(rows, device=fmt.values.device))


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
        if not _is_int(buckets) or buckets < 1 or not _is_int(num_hashes) or num_hashes < 1:
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
        return _dense_lookup(self)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def tensors(self):
        return {"values": self.values}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "hash_a": self.hash_a, "hash_b": self.hash_b}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        _check_params(cls.name, params, {"hash_a", "hash_b"})
        a, b = params["hash_a"], params["hash_b"]
        if not isinstance(a, list) or not isinstance(b, list):
            raise FormatError(f"hashed: hash_a and hash_b must be lists of integers, got {quote(a)} and {quote(b)}.")
        return cls(tensors["values"], params["shape"], a, b, validate=validate)

    def validate(self) -> None:
        _check_float(self.name, "values", self.values, 2)
        if self.values.shape[1] != self.shape[1] or self.values.shape[0] < 1:
            raise FormatError(
                f"hashed: values has shape {tuple(self.values.shape)}; expected (buckets, {self.shape[1]})."
            )
        ok = (
            len(self.hash_a) == len(self.hash_b) >= 1
            and all(_is_int(a) and 1 <= a < HASH_PRIME for a in self.hash_a)
            and all(_is_int(b) and 0 <= b < HASH_PRIME for b in self.hash_b)
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
        if not _is_int(collisions) or not 1 <= collisions <= rows:
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
        return _dense_lookup(self)

    def tensors(self):
        return {"quotient": self.quotient, "remainder": self.remainder}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "op": self.op}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        _check_params(cls.name, params, {"op"})
        return cls(tensors["quotient"], tensors["remainder"], params["shape"], params.get("op"), validate=validate)

    def validate(self) -> None:
        _check_float(self.name, "quotient", self.quotient, 2)
        _check_float(self.name, "remainder", self.remainder, 2)
        (q_shape, r_shape) = self.table_shapes(self.shape, int(self.remainder.shape[0]), self.op)
        if tuple(self.quotient.shape) != q_shape or tuple(self.remainder.shape) != r_shape:
            raise FormatError(
                f"qr: tables have shapes quotient {tuple(self.quotient.shape)}, remainder "
                f"{tuple(self.remainder.shape)}; a {self.shape} table with {self.remainder.shape[0]} remainder rows "
                f"and op {self.op!r} needs {q_shape} and {r_shape}."
            )
        if self.quotient.dtype != self.remainder.dtype:
            raise FormatError("qr: quotient and remainder must have the same dtype.")


# -- tensor train ---------------------------------------------------------------------------------------------------
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
        ranks = [rank] * (n - 1) if _is_int(rank) else list(rank)
        if len(ranks) != n - 1 or not all(_is_int(r) and r >= 1 for r in ranks):
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
        return _dense_lookup(self)

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
        _check_params(cls.name, params, {"vocab_factors", "dim_factors", "ranks"})
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
            _check_float(self.name, f"core_{k}", c, 4)
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


# -- row pruning with remapping -------------------------------------------------------------------------------------
@register_format("rowmap")
class RowMap(SparseFormat):
    """Row ``i`` = ``values[remap[i]]``: kept ids have their own row, the others share rows.

    Shapes:
        remap: (rows,) int16 or int32 (the narrowest for ``values.shape[0]``). values: (stored rows, cols).
    """

    float_tensors: ClassVar[tuple[str, ...]] = ("values",)

    def __init__(self, remap, values, shape, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.remap, self.values = remap, values
        if validate:
            self.validate()

    @classmethod
    def from_dense(
        cls, weight, mask=None, *, keep: int, shared: int = 1, importance: torch.Tensor | None = None, **params: Any
    ):
        """Keep the ``keep`` rows of highest ``importance`` (default: row norm; pass id frequencies to keep the
        frequent ids), and map the others round-robin (in importance order) onto ``shared`` rows, each the mean of
        its members."""
        if params or mask is not None:
            raise FormatError(f"rowmap takes keep, shared and importance (no mask), got {sorted(params)}.")
        rows, cols = weight.shape
        if not _is_int(keep) or not 0 <= keep <= rows or not _is_int(shared) or shared < 0:
            raise FormatError(f"rowmap: need 0 <= keep <= {rows} and shared >= 0, got keep={keep}, shared={shared}.")
        if keep < rows and shared < 1:
            raise FormatError("rowmap: with keep < rows, at least one shared row is needed for the other ids.")
        score = weight.detach().norm(dim=1) if importance is None else importance.detach().to(weight.device).double()
        if score.shape != (rows,):
            raise FormatError(f"rowmap: importance must have one value per row ({rows}), got {tuple(score.shape)}.")
        order = torch.argsort(score, descending=True, stable=True)
        shared = shared if keep < rows else 0
        remap = torch.empty(rows, dtype=torch.int64, device=weight.device)
        remap[order[:keep]] = torch.arange(keep, device=weight.device)
        rest = order[keep:]
        remap[rest] = keep + torch.arange(rest.numel(), device=weight.device) % max(shared, 1)
        total = torch.zeros(keep + shared, cols, dtype=torch.float64, device=weight.device)
        total.index_add_(0, remap, weight.detach().double())
        count = torch.zeros(keep + shared, dtype=torch.float64, device=weight.device)
        count.index_add_(0, remap, torch.ones(rows, dtype=torch.float64, device=weight.device))
        values = (total / count.clamp(min=1).unsqueeze(1)).to(weight.dtype)
        return cls(remap.to(index_dtype(keep + shared)), values, (rows, cols), validate=False)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.values[self.remap[ids.to(torch.int64)].to(torch.int64)]

    def to_dense(self) -> torch.Tensor:
        return self.values[self.remap.to(torch.int64)]

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def tensors(self):
        return {"remap": self.remap, "values": self.values}

    def params(self):
        return {"format": self.name, "shape": list(self.shape)}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        _check_params(cls.name, params, set())
        return cls(tensors["remap"], tensors["values"], params["shape"], validate=validate)

    def validate(self) -> None:
        rows, cols = self.shape
        _check_float(self.name, "values", self.values, 2)
        if self.values.shape[1] != cols or self.values.shape[0] < 1:
            raise FormatError(f"rowmap: values has shape {tuple(self.values.shape)}; expected (stored rows, {cols}).")
        stored = int(self.values.shape[0])
        check_tensor(self.name, "remap", self.remap, dtypes=(index_dtype(stored),), length=rows)
        if self.remap.device.type != "meta" and rows:
            wide = self.remap.to(torch.int64)
            bad = (wide < 0) | (wide >= stored)
            if bool(bad.any()):
                i = int(torch.nonzero(bad)[0])
                raise FormatError(f"rowmap: remap[{i}]={int(wide[i])} is out of range [0, {stored}).")


# -- frequency-aware split ------------------------------------------------------------------------------------------
def _nested(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


@register_format("hot")
class Hot(SparseFormat):
    """The ``H`` ids in ``hot_ids`` (sorted) read their rows from the ``hot`` format (``H`` rows, in that order);
    every other id ``i`` reads row ``i - (number of hot ids below i)`` of the ``cold`` format (``rows - H`` rows).

    Tensors are the nested formats' with ``hot_`` and ``cold_`` prefixes, plus ``hot_ids`` (int32); params carry the
    nested formats' params under ``hot`` and ``cold``.
    """

    def __init__(self, hot_ids, hot: SparseFormat, cold: SparseFormat, shape, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.hot_ids, self.hot, self.cold = hot_ids, hot, cold
        if validate:
            self.validate()

    @property
    def float_tensors(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.float_tensor_names(self.params())

    @classmethod
    def float_tensor_names(cls, params: dict) -> tuple[str, ...]:
        names = []
        for part in ("hot", "cold"):
            inner = params.get(part)
            if isinstance(inner, dict) and inner.get("format") in FORMATS:
                names += [f"{part}_{n}" for n in float_tensor_names(inner)]
        return tuple(names)

    @classmethod
    def split(
        cls,
        weight: torch.Tensor,
        hot_ids: torch.Tensor,
        hot_format: str,
        cold_format: str,
        hot_params=None,
        cold_params=None,
    ) -> Hot:
        """Store the rows of ``hot_ids`` in ``hot_format`` and the others in ``cold_format`` (``*_params``: their
        ``from_dense`` arguments)."""
        rows = weight.shape[0]
        hot_ids = torch.unique(hot_ids.to(torch.int64))
        if hot_ids.numel() and (int(hot_ids[0]) < 0 or int(hot_ids[-1]) >= rows):
            raise FormatError(f"hot: hot ids must be in [0, {rows}).")
        if not 0 < hot_ids.numel() < rows:
            raise FormatError(f"hot: need between 1 and {rows - 1} hot ids, got {hot_ids.numel()}.")
        is_hot = torch.zeros(rows, dtype=torch.bool, device=weight.device)
        is_hot[hot_ids.to(weight.device)] = True
        hot = FORMATS.get(hot_format).from_dense(weight[is_hot], **(hot_params or {}))
        cold = FORMATS.get(cold_format).from_dense(weight[~is_hot], **(cold_params or {}))
        return cls(hot_ids.to(torch.int32).to(weight.device), hot, cold, tuple(weight.shape))

    @classmethod
    def from_dense(cls, weight, mask=None, **params: Any):
        raise FormatError("hot: build it with Hot.split(weight, hot_ids, hot_format, cold_format, ...).")

    @property
    def values(self) -> torch.Tensor:
        return self.hot.values

    @property
    def dtype(self) -> torch.dtype:
        return self.cold.dtype

    @property
    def nnz(self) -> int:
        return int(self.hot.nnz + self.cold.nnz)

    def lookup(self, ids: torch.Tensor, *, rows_of=None) -> torch.Tensor:
        """Rows ``ids``: each id's row of the hot or the cold part, read with ``rows_of(part, part_ids)`` (default
        :func:`lookup_rows`; :func:`hf_sparse.ops.lookup_rows` passes itself, so quantised parts run our kernels)."""
        rows_of = rows_of or lookup_rows
        ids = ids.to(torch.int64)
        hot_ids = self.hot_ids.to(torch.int64)
        pos = torch.searchsorted(hot_ids, ids)
        is_hot = hot_ids[pos.clamp(max=hot_ids.numel() - 1)] == ids
        out_hot = rows_of(self.hot, pos[is_hot])
        out_cold = rows_of(self.cold, (ids - pos)[~is_hot])
        dtype = torch.promote_types(out_hot.dtype, out_cold.dtype)
        out = torch.empty(ids.numel(), self.shape[1], dtype=dtype, device=ids.device)
        out = out.index_put((torch.nonzero(is_hot).squeeze(1),), out_hot.to(dtype))
        return out.index_put((torch.nonzero(~is_hot).squeeze(1),), out_cold.to(dtype))

    def to_dense(self) -> torch.Tensor:
        return self.lookup(torch.arange(self.shape[0], device=self.hot_ids.device))

    def tensors(self):
        return {
            "hot_ids": self.hot_ids,
            **{f"hot_{k}": v for k, v in self.hot.tensors().items()},
            **{f"cold_{k}": v for k, v in self.cold.tensors().items()},
        }

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "hot": self.hot.params(), "cold": self.cold.params()}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        _check_params(cls.name, params, {"hot", "cold"})
        parts = {}
        for part in ("hot", "cold"):
            inner = params[part]
            if not isinstance(inner, dict) or inner.get("format") in (None, "hot") or inner["format"] not in FORMATS:
                raise FormatError(f"hot: params[{part!r}] must describe a (non-hot) registered format, got {inner!r}.")
            try:
                own = {k: v for k, v in tensors.items() if k != "hot_ids"}  # "hot_ids" is not the hot part's
                parts[part] = FORMATS.get(inner["format"]).from_tensors(
                    _nested(f"{part}_", own), inner, validate=validate
                )
            except FormatError as exc:
                raise FormatError(f"hot: the {part} rows: {exc}") from None
        unknown = sorted(set(tensors) - {"hot_ids"} - {k for k in tensors if k.startswith(("hot_", "cold_"))})
        if unknown:
            raise FormatError(f"hot: unknown tensors {unknown}.")
        return cls(tensors["hot_ids"], parts["hot"], parts["cold"], params["shape"], validate=validate)

    def validate(self) -> None:
        rows, cols = self.shape
        check_tensor(self.name, "hot_ids", self.hot_ids, dtypes=(torch.int32,))
        h = int(self.hot_ids.numel())
        if tuple(self.hot.shape) != (h, cols) or tuple(self.cold.shape) != (rows - h, cols):
            raise FormatError(
                f"hot: {h} hot ids need a hot part of shape {(h, cols)} and a cold part of {(rows - h, cols)}, got "
                f"{tuple(self.hot.shape)} and {tuple(self.cold.shape)}."
            )
        if self.hot_ids.device.type != "meta" and h:
            wide = self.hot_ids.to(torch.int64)
            if int(wide[0]) < 0 or int(wide[-1]) >= rows or (h > 1 and bool((wide[1:] <= wide[:-1]).any())):
                raise FormatError(f"hot: hot_ids must be strictly increasing ids in [0, {rows}).")
        self.hot.validate()
        self.cold.validate()


def float_tensor_names(params: dict) -> tuple[str, ...]:
    """The floating-point tensor names of the format ``params`` describe (nested and per-instance formats
    included)."""
    cls = FORMATS.get(params["format"])
    names = getattr(cls, "float_tensor_names", None)
    if names is not None:
        return tuple(names(params))
    return tuple(cls.float_tensors)
