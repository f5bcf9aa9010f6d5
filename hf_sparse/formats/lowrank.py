"""Low-rank storage: ``W ≈ U V`` (``lowrank``), and low rank plus a sparse residual ``W ≈ U V + S``
(``lowrank_sparse``, S in CSR).

A (rows x cols) weight of rank r costs r (rows + cols) values instead of rows x cols; a layer multiplies by the two
thin factors in turn (two small GEMMs), so it is faster as well as smaller once r (rows + cols) < rows x cols.
Built by truncated SVD (the best rank-r approximation in the Frobenius norm), with the singular values split evenly
between the factors (U = U_r sqrt(s), V = sqrt(s) V_r^T) so both train at similar scales.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import FormatError
from .base import SparseFormat, check_shape, check_tensor, check_weight, register_format
from .csr import CSR

__all__ = ["LowRank", "LowRankSparse", "truncated_svd"]

_FLOAT = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def truncated_svd(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` factors of ``weight``: (U (rows, rank), V (rank, cols)) with U V closest to it in the
    Frobenius norm, the singular values split evenly between them.

    Shapes:
        weight: (rows, cols). Returns: (rows, rank), (rank, cols).
    """
    rows, cols = weight.shape
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= min(rows, cols):
        raise FormatError(
            f"lowrank: rank must be an integer in [1, {min(rows, cols)}] for a {tuple(weight.shape)} weight, "
            f"got {rank!r}."
        )
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(weight.dtype).contiguous(), (root.unsqueeze(1) * vh[:rank]).to(
        weight.dtype
    ).contiguous()


def _check_factors(fmt: str, u: Any, v: Any, shape: tuple[int, int], rank: Any) -> None:
    rows, cols = shape
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= min(rows, cols):
        raise FormatError(f"{fmt}: rank must be an integer in [1, {min(rows, cols)}] for shape {shape}, got {rank!r}.")
    check_tensor(fmt, "u", u, dtypes=_FLOAT, ndim=2)
    check_tensor(fmt, "v", v, dtypes=_FLOAT, ndim=2)
    if tuple(u.shape) != (rows, rank) or tuple(v.shape) != (rank, cols):
        raise FormatError(
            f"{fmt}: factors have shapes u {tuple(u.shape)}, v {tuple(v.shape)}; a rank-{rank} {shape} weight needs "
            f"u {(rows, rank)} and v {(rank, cols)}."
        )
    if u.dtype != v.dtype:
        raise FormatError(f"{fmt}: u and v must have the same dtype, got {u.dtype} and {v.dtype}.")
    for name, t in (("u", u), ("v", v)):
        if t.device.type != "meta" and t.numel() and not bool(torch.isfinite(t).all()):
            raise FormatError(f"{fmt}: {name} holds non-finite values (a corrupt checkpoint?).")


@register_format("lowrank")
class LowRank(SparseFormat):
    """``W = U V`` with U (rows, rank) and V (rank, cols).

    Shapes:
        u: (rows, rank). v: (rank, cols).
    """

    float_tensors: ClassVar[tuple[str, ...]] = ("u", "v")

    def __init__(self, u, v, shape, rank, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.u, self.v, self.rank = u, v, rank
        if validate:
            self.validate()

    @classmethod
    def from_dense(cls, weight, mask=None, *, rank: int, **params: Any):
        """The truncated SVD of ``weight`` (positions outside ``mask`` zeroed first)."""
        if params:
            raise FormatError(f"lowrank takes only `rank`, got {sorted(params)}.")
        keep = check_weight(weight, mask)
        u, v = truncated_svd(weight * keep, rank)
        return cls(u, v, tuple(weight.shape), rank, validate=False)

    @property
    def values(self) -> torch.Tensor:  # the tensor that carries dtype and device
        return self.u

    @property
    def dtype(self) -> torch.dtype:
        return self.u.dtype

    @property
    def nnz(self) -> int:
        return int(self.u.numel() + self.v.numel())

    def to_dense(self) -> torch.Tensor:
        return self.u @ self.v

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of ``U V`` (an embedding lookup: ``U[ids] @ V``)."""
        return self.u[ids] @ self.v

    def tensors(self):
        return {"u": self.u, "v": self.v}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "rank": self.rank}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        extra = sorted(set(params) - {"format", "shape", "rank"})
        if extra:
            raise FormatError(f"lowrank: unknown parameters {extra}.")
        return cls(tensors["u"], tensors["v"], params["shape"], params.get("rank"), validate=validate)

    def validate(self) -> None:
        _check_factors(self.name, self.u, self.v, self.shape, self.rank)


@register_format("lowrank_sparse")
class LowRankSparse(SparseFormat):
    """``W = U V + S``: a low-rank part and a sparse residual S in CSR (the largest entries of W - U V, or those
    of a given mask).

    Shapes:
        u: (rows, rank). v: (rank, cols). crow_indices, col_indices, values: S in CSR.
    """

    float_tensors: ClassVar[tuple[str, ...]] = ("u", "v", "values")

    def __init__(self, u, v, sparse: CSR, shape, rank, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.u, self.v, self.sparse, self.rank = u, v, sparse, rank
        if validate:
            self.validate()

    @classmethod
    def from_dense(cls, weight, mask=None, *, rank: int, density: float | None = None, **params: Any):
        """Truncated SVD of ``weight`` plus a sparse residual: the residual's entries at ``mask``, or its
        ``density`` fraction of largest magnitudes."""
        if params:
            raise FormatError(f"lowrank_sparse takes `rank` and `density`, got {sorted(params)}.")
        check_weight(weight, None)
        u, v = truncated_svd(weight, rank)
        residual = (weight - u @ v).detach()
        if mask is None:
            if density is None or not 0.0 <= density <= 1.0:
                raise FormatError(f"lowrank_sparse: give a mask or a density in [0, 1], got density={density!r}.")
            k = int(round(density * residual.numel()))
            keep = torch.zeros_like(residual, dtype=torch.bool)
            if k:
                keep.view(-1)[residual.abs().view(-1).topk(k).indices] = True
        else:
            keep = check_weight(weight, mask)
        return cls(u, v, CSR.from_dense(residual * keep, keep), tuple(weight.shape), rank, validate=False)

    @property
    def values(self) -> torch.Tensor:
        return self.u

    @property
    def dtype(self) -> torch.dtype:
        return self.u.dtype

    @property
    def nnz(self) -> int:
        return int(self.u.numel() + self.v.numel() + self.sparse.values.numel())

    def to_dense(self) -> torch.Tensor:
        return self.u @ self.v + self.sparse.to_dense().to(self.u.dtype)

    def tensors(self):
        return {"u": self.u, "v": self.v, **self.sparse.tensors()}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "rank": self.rank}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        extra = sorted(set(params) - {"format", "shape", "rank"})
        if extra:
            raise FormatError(f"lowrank_sparse: unknown parameters {extra}.")
        sparse = CSR(
            tensors["crow_indices"], tensors["col_indices"], tensors["values"], params["shape"], validate=validate
        )
        return cls(tensors["u"], tensors["v"], sparse, params["shape"], params.get("rank"), validate=validate)

    def validate(self) -> None:
        _check_factors(self.name, self.u, self.v, self.shape, self.rank)
        try:
            self.sparse.validate()
        except FormatError as exc:
            raise FormatError(f"lowrank_sparse: {str(exc).removeprefix('csr: ')}") from None
