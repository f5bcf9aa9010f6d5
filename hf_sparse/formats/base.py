"""The common interface of every sparse storage format, and the checks they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ..errors import FormatError, quote
from ..registry import Registry

__all__ = ["SparseFormat", "FORMATS", "index_dtype", "register_format"]

#: Storage formats by name (``"csr"``, ``"bsr"``, ...).
FORMATS: Registry[type[SparseFormat]] = Registry("sparse format")

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def index_dtype(dim: int) -> torch.dtype:
    """The narrowest index dtype for positions in ``[0, dim)``: int16 when ``dim <= 32768``, else int32.

    Kernels read indices as int16 or int32 only; dimensions of 2**31 or more are rejected.
    """
    if dim <= 2**15:
        return torch.int16
    if dim <= 2**31:
        return torch.int32
    raise FormatError(f"Dimension {dim} is too large for int32 indices.")


def register_format(name: str):
    def _wrap(cls):
        cls.name = name
        FORMATS.register(name, cls)
        return cls

    return _wrap


class SparseFormat(ABC):
    """A 2-D weight ``(rows, cols)`` stored sparsely.

    Every format builds from a dense weight (optionally with a keep-mask: positions where the mask is True are
    stored even when their value is zero), returns to dense exactly, validates its tensors with typed errors, reports
    its exact storage size, and converts to and from a dict of plain tensors plus JSON parameters (safetensors).
    """

    name: ClassVar[str] = ""
    #: Tensors that hold floating-point numbers (they train); every other tensor holds indices, pointers, bits or
    #: integer codes.
    float_tensors: ClassVar[tuple[str, ...]] = ("values", "dense_values")
    shape: tuple[int, int]

    # -- construction -----------------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None = None, **params: Any) -> SparseFormat:
        """Store ``weight`` (2-D); ``mask`` (bool, same shape) marks the stored positions (default: non-zeros)."""

    @abstractmethod
    def to_dense(self) -> torch.Tensor:
        """The dense ``(rows, cols)`` weight, zeros where nothing is stored."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """The plain tensors that hold the data (what is saved; what :attr:`nbytes` counts)."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-ready parameters besides the tensors: the format name, the shape, block sizes, N and M."""

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], params: dict[str, Any], *, validate: bool = True
    ) -> SparseFormat:
        """Rebuild from :meth:`tensors` and :meth:`params`, validating everything unless ``validate=False`` (for
        tensors that were validated when they were loaded)."""
        try:
            return cls._from_tensors(tensors, params, validate)
        except KeyError as exc:
            raise FormatError(f"{cls.name}: missing tensor or parameter {exc}.") from None

    @classmethod
    @abstractmethod
    def _from_tensors(cls, tensors: dict[str, torch.Tensor], params: dict[str, Any], validate: bool) -> SparseFormat:
        """Construct from the dicts; a missing key raises KeyError, which :meth:`from_tensors` reports."""

    @abstractmethod
    def validate(self) -> None:
        """Raise :class:`~hf_sparse.errors.FormatError` if any tensor is malformed."""

    # -- shared ---------------------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Exact bytes of the stored tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @property
    def nnz(self) -> int:
        """Stored values (including explicit zeros and padding a format needs)."""
        return int(self.tensors()["values"].numel())

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors()["values"].dtype

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.params().items() if k not in ("format", "shape"))
        return f"{type(self).__name__}(shape={self.shape}, nnz={self.nnz}, nbytes={self.nbytes}{extra})"


# -- checks shared by the formats ---------------------------------------------------------------------------------
def check_weight(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Validate a dense weight and its optional mask; return the keep-mask."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise FormatError(f"Expected a 2-D weight tensor, got {getattr(weight, 'shape', type(weight).__name__)}.")
    if weight.dtype not in _FLOAT_DTYPES:
        raise FormatError(f"Weight dtype must be one of {list(_FLOAT_DTYPES)}, got {weight.dtype}.")
    if mask is None:
        return weight != 0
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(weight.shape):
        raise FormatError(
            f"Mask must be a bool tensor of shape {tuple(weight.shape)}, got {mask.dtype} {tuple(mask.shape)}."
        )
    return mask.to(weight.device)


def check_shape(shape: Any) -> tuple[int, int]:
    # bool is an int to Python, but `true` in a checkpoint's shape is corruption, not the dimension 1.
    if not (
        isinstance(shape, (list, tuple))
        and len(shape) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise FormatError(f"shape must be two positive integers, got {quote(shape)}.")
    return (int(shape[0]), int(shape[1]))


def check_tensor(fmt: str, name: str, t: Any, *, dtypes, length: int | None = None, ndim: int = 1) -> None:
    if not isinstance(t, torch.Tensor):
        raise FormatError(f"{fmt}: {name} must be a tensor, got {type(t).__name__}.")
    if t.dtype not in dtypes:
        raise FormatError(f"{fmt}: {name} has dtype {t.dtype}; expected {' or '.join(map(str, dtypes))}.")
    if t.dim() != ndim:
        raise FormatError(f"{fmt}: {name} must have {ndim} dimension(s), got shape {tuple(t.shape)}.")
    if length is not None and t.shape[0] != length:
        raise FormatError(f"{fmt}: {name} has length {t.shape[0]}; expected {length}.")


def check_pointers(fmt: str, name: str, ptr: torch.Tensor, n: int, nnz: int) -> None:
    """Row (or column / block-row) pointers: int32, length n+1, start 0, end nnz, non-decreasing."""
    check_tensor(fmt, name, ptr, dtypes=(torch.int32,), length=n + 1)
    if int(ptr[0]) != 0 or int(ptr[-1]) != nnz:
        raise FormatError(
            f"{fmt}: {name} must start at 0 and end at {nnz} (the number of stored entries), got "
            f"{int(ptr[0])} and {int(ptr[-1])}."
        )
    if n and bool((ptr[1:] < ptr[:-1]).any()):
        bad = int(torch.nonzero(ptr[1:] < ptr[:-1])[0])
        raise FormatError(
            f"{fmt}: {name} is not monotone: {name}[{bad + 1}]={int(ptr[bad + 1])} < {name}[{bad}]={int(ptr[bad])}."
        )


def check_indices(fmt: str, name: str, idx: torch.Tensor, dim: int, ptr: torch.Tensor | None = None) -> None:
    """Indices in ``[0, dim)``, of the dtype :func:`index_dtype` gives, strictly increasing within each segment."""
    expected = index_dtype(dim)
    check_tensor(fmt, name, idx, dtypes=(expected,))
    if idx.numel() == 0:
        return
    wide = idx.to(torch.int64)
    if bool((wide < 0).any()) or bool((wide >= dim).any()):
        bad = int(torch.nonzero((wide < 0) | (wide >= dim))[0])
        raise FormatError(f"{fmt}: {name}[{bad}]={int(wide[bad])} is out of range [0, {dim}).")
    if ptr is not None:
        # Strictly increasing inside a segment: each step either increases or starts a new segment.
        starts = torch.zeros(idx.numel(), dtype=torch.bool)
        seg_starts = ptr[:-1].to(torch.int64)
        seg_starts = seg_starts[seg_starts < idx.numel()]
        starts[seg_starts] = True
        ok = (wide[1:] > wide[:-1]) | starts[1:]
        if not bool(ok.all()):
            bad = int(torch.nonzero(~ok)[0]) + 1
            raise FormatError(
                f"{fmt}: {name} are not sorted and unique within a row at position {bad} "
                f"({int(wide[bad - 1])} then {int(wide[bad])})."
            )


def check_values(fmt: str, values: Any, length: int | None = None, ndim: int = 1) -> None:
    check_tensor(fmt, "values", values, dtypes=_FLOAT_DTYPES, length=length, ndim=ndim)


def segment_pointers(counts: torch.Tensor) -> torch.Tensor:
    """int32 pointers from per-segment counts (``[0, c0, c0+c1, ...]``)."""
    total = int(counts.sum())
    if total >= 2**31:
        raise FormatError(f"{total} stored entries exceed the int32 pointer range.")
    out = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    out[1:] = torch.cumsum(counts.to(torch.int64), 0)
    return out.to(torch.int32)
