"""Sparse storage formats: CSR, CSC, COO, BSR, bitmask, N:M and hybrid (and low rank, quantised codes, and
``full``: a dense weight in a dtype of its own).

Each builds from a dense weight (and an optional keep-mask), converts back exactly, validates its tensors with typed
errors (:class:`~hf_sparse.errors.FormatError`), reports its exact ``nbytes`` and round-trips through a dict of plain
tensors plus JSON parameters (safetensors-ready). Indices are int16 when the dimension allows, else int32.
"""

from typing import Any

import torch

from .base import FORMATS, SparseFormat, index_dtype
from .bitmask import Bitmask
from .bsr import BSR
from .compositional import QR, Hashed
from .coo import COO
from .csr import CSC, CSR
from .embedding import float_tensor_names, lookup_rows
from .full import Full
from .hybrid import Hybrid
from .lowrank import LowRank, LowRankSparse
from .nm import NM
from .qdense import QDense
from .qrow import QRow
from .qsparse import QBSR, QCSR, QNM
from .rowmap import Hot, RowMap
from .tt import TT

__all__ = [
    "FORMATS",
    "SparseFormat",
    "index_dtype",
    "CSR",
    "CSC",
    "COO",
    "BSR",
    "Bitmask",
    "NM",
    "Hybrid",
    "Full",
    "QDense",
    "QCSR",
    "QBSR",
    "QNM",
    "QRow",
    "LowRank",
    "LowRankSparse",
    "Hashed",
    "QR",
    "TT",
    "RowMap",
    "Hot",
    "float_tensor_names",
    "lookup_rows",
    "to_format",
    "from_tensors",
]


def to_format(name: str, weight: torch.Tensor, mask: torch.Tensor | None = None, **params: Any) -> SparseFormat:
    """Store ``weight`` in the format registered as ``name`` (``"csr"``, ``"bsr"``, ``"nm"``, ...)."""
    return FORMATS.get(name).from_dense(weight, mask, **params)


def from_tensors(tensors: dict[str, torch.Tensor], params: dict[str, Any], *, validate: bool = True) -> SparseFormat:
    """Rebuild (and validate, unless ``validate=False``) a format from its tensors and parameters;
    ``params["format"]`` names it."""
    from ..errors import FormatError

    if not isinstance(params, dict) or "format" not in params:
        raise FormatError(f"Format parameters must be a dict with a 'format' key, got {params!r}.")
    return FORMATS.get(params["format"]).from_tensors(tensors, params, validate=validate)
