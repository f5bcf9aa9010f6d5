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

``hashed`` and ``qr`` are in :mod:`hf_sparse.formats.compositional`, ``tt`` in :mod:`hf_sparse.formats.tt`,
``rowmap`` and ``hot`` in :mod:`hf_sparse.formats.rowmap`; this module holds what they share.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FormatError
from .base import FORMATS, SparseFormat, check_tensor

__all__ = ["lookup_rows", "float_tensor_names", "check_float", "check_params", "dense_lookup", "is_int"]

_FLOAT = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def lookup_rows(fmt: SparseFormat, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (1-D, int64) of any format: its own :meth:`lookup` when it has one, else the dense rows."""
    lookup = getattr(fmt, "lookup", None)
    if lookup is not None:
        return lookup(ids)
    return fmt.to_dense()[ids]


def check_float(fmt: str, name: str, t: Any, ndim: int) -> None:
    """A floating-point tensor of ``ndim`` dimensions whose values are all finite, else a FormatError."""
    check_tensor(fmt, name, t, dtypes=_FLOAT, ndim=ndim)
    if t.device.type != "meta" and t.numel() and not bool(torch.isfinite(t).all()):
        raise FormatError(f"{fmt}: {name} holds non-finite values (a corrupt checkpoint?).")


def is_int(x: Any) -> bool:
    """An int that is not a bool (JSON's ``true`` is not a size)."""
    return isinstance(x, int) and not isinstance(x, bool)


def check_params(fmt: str, params: dict, allowed: set[str]) -> None:
    """A FormatError naming the parameters other than ``format``, ``shape`` and ``allowed``."""
    extra = sorted(set(params) - allowed - {"format", "shape"})
    if extra:
        raise FormatError(f"{fmt}: unknown parameters {extra}.")


def dense_lookup(fmt: SparseFormat) -> torch.Tensor:
    """Every row of ``fmt``, through its own lookup (what ``to_dense`` returns)."""
    rows = fmt.shape[0]
    return fmt.lookup(torch.arange(rows, device=fmt.values.device))


def float_tensor_names(params: dict) -> tuple[str, ...]:
    """The floating-point tensor names of the format ``params`` describe (nested and per-instance formats
    included)."""
    cls = FORMATS.get(params["format"])
    names = getattr(cls, "float_tensor_names", None)
    if names is not None:
        return tuple(names(params))
    return tuple(cls.float_tensors)
