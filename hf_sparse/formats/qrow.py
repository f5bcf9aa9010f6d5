"""Row-wise quantised embedding tables (``qrow``): FBGEMM's row-wise layout, for lookups rather than matmuls.

Row ``r`` of a ``(rows, cols)`` table is stored as unsigned codes ``c`` in ``[0, 2^bits - 1]`` (``bits`` 8, 4 or 2;
4- and 2-bit codes packed into uint8, low bits first, as :func:`~hf_sparse.quantization.schemes.pack_codes` does)
with one float16 ``scale`` and one float16 ``bias`` per row::

    W[r, j] = c[r, j] * scales[r] + biases[r]

The bias is the row's minimum and the scale spans the row's range, so every row uses all its codes whatever its
offset (a table whose rows sit far from zero loses nothing to a symmetric range). At 4 bits a 64-wide row costs 32
bytes of codes plus 4 bytes of scale and bias, 7.1x less than float32.

:meth:`QRow.lookup` and :meth:`QRow.embedding_bag` dequantise only the rows they return, in one pass, with our C++
kernels (``hf_sparse::qrow_lookup`` / ``qrow_embedding_bag``) where they are built, and the pure-PyTorch reference
otherwise (see :mod:`hf_sparse.ops.embedding`).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch

from ..errors import FormatError
from ..quantization.schemes import pack_codes
from .base import SparseFormat, check_shape, check_tensor, check_weight, register_format

__all__ = ["QRow"]

_BITS = (8, 4, 2)
_FP16_MAX = float(torch.finfo(torch.float16).max)
#: The smallest positive float16 (a subnormal): the scale of a constant row, whose codes are then all 0.
_FP16_TINY = 2.0**-24


def _check_bits(bits: Any) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in _BITS:
        raise FormatError(f"qrow: bits must be 8, 4 or 2, got {bits!r}.")


def _fp16_down(x: torch.Tensor) -> torch.Tensor:
    """The largest float16 <= ``x`` (float32 in, float16 out): a bias rounded down keeps the row's minimum in
    range."""
    h = x.to(torch.float16)
    return torch.where(h.float() > x, torch.nextafter(h, torch.full_like(h, -float("inf"))), h)


def _fp16_up(x: torch.Tensor) -> torch.Tensor:
    """The smallest float16 >= ``x``: a scale rounded up keeps the row's maximum in range."""
    h = x.to(torch.float16)
    return torch.where(h.float() < x, torch.nextafter(h, torch.full_like(h, float("inf"))), h)


@functools.cache
def _embedding_ops():
    """:mod:`hf_sparse.ops.embedding`, imported on first use (it imports the formats) and then held: a lookup of a
    few rows takes microseconds, an import statement per call about two more."""
    from ..ops import embedding

    return embedding


def unpack_unsigned(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Unsigned codes from ``bits``-bit fields packed low bits first.

    Shapes:
        packed: (..., cols * bits / 8) uint8. Returns: (..., cols) uint8.
    """
    if bits == 8:
        return packed
    per = 8 // bits
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    fields = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return fields.reshape(*packed.shape[:-1], packed.shape[-1] * per)[..., :cols]


@register_format("qrow")
class QRow(SparseFormat):
    """An embedding table as ``bits``-bit unsigned codes with a float16 scale and bias per row:
    ``W[r, j] = values[r, j] * scales[r] + biases[r]`` (codes unpacked).

    Args:
        values: uint8 codes (rows, cols * bits / 8): one code per byte at 8 bits, two (4 bits) or four (2 bits) per
            byte, low bits first.
        scales: float16 (rows,), finite and > 0.
        biases: float16 (rows,), finite.
        shape: (rows, cols).
        bits: 8, 4 or 2.

    Shapes:
        values: (rows, cols * bits / 8) uint8. scales, biases: (rows,) float16.
    """

    # Floating-point storage (what checkpoint loading checks the dtypes against). They are not meant to train: the
    # codes cannot follow a moved scale, and the lookups have no gradient formula.
    float_tensors: ClassVar[tuple[str, ...]] = ("scales", "biases")

    def __init__(self, values, scales, biases, shape, *, bits: int, validate: bool = True):
        self.shape = check_shape(shape)
        self.values, self.scales, self.biases, self.bits = values, scales, biases, bits
        if validate:
            self.validate()

    # -- construction -----------------------------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, weight, mask=None, *, bits: int = 8, **params: Any) -> QRow:
        """Quantise each row of ``weight`` over its own range (positions outside ``mask`` are zeroed first).

        The bias is the row's minimum rounded down to float16 and the scale its range over ``2^bits - 1`` rounded up
        to float16, so every value rounds to a code within ``scale / 2``; a constant row gets the smallest positive
        scale and all-zero codes, which is exact when the constant is a float16 number (0 for padding rows).

        Raises:
            FormatError: ``bits`` not 8, 4 or 2; ``cols`` not a multiple of the codes per byte; a value that is not
                finite or lies beyond the float16 range (+-65504) that biases are stored in.
        """
        if params:
            raise FormatError(f"qrow takes only `bits`, got {sorted(params)}.")
        _check_bits(bits)
        keep = check_weight(weight, mask)
        rows, cols = weight.shape
        if cols % (8 // bits):
            raise FormatError(f"qrow: {bits}-bit codes pack {8 // bits} per byte; {cols} columns do not divide.")
        w = (weight * keep).detach().float()
        if w.device.type != "meta":
            bad = ~torch.isfinite(w) | (w.abs() > _FP16_MAX)
            if bool(bad.any()):
                r, c = (int(i) for i in torch.nonzero(bad)[0])
                raise FormatError(
                    f"qrow: weight[{r}, {c}] = {float(w[r, c])} cannot be stored: values must be finite and within "
                    f"the float16 range (+-{_FP16_MAX:g}) of the per-row biases."
                )
        qmax = (1 << bits) - 1
        bias = _fp16_down(w.amin(1))
        scale = _fp16_up((w.amax(1) - bias.float()) / qmax).clamp_min(_FP16_TINY)
        codes = torch.round((w - bias.float().unsqueeze(1)) / scale.float().unsqueeze(1)).clamp_(0, qmax)
        codes = codes.to(torch.uint8) if bits == 8 else pack_codes(codes.to(torch.int8), bits)
        return cls(codes.contiguous(), scale.contiguous(), bias.contiguous(), (rows, cols), bits=bits, validate=False)

    def codes(self) -> torch.Tensor:
        """The unsigned codes, unpacked: uint8 (rows, cols)."""
        return unpack_unsigned(self.values, self.bits, self.shape[1])

    def to_dense(self) -> torch.Tensor:
        """The float32 (rows, cols) table (``codes * scale + bias``, computed as the lookups compute it)."""
        return self.codes().float() * self.scales.float().unsqueeze(1) + self.biases.float().unsqueeze(1)

    # -- lookups ----------------------------------------------------------------------------------------------------
    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows ``ids`` dequantised (``F.embedding``): our C++ kernel when built, else the PyTorch reference.

        Shapes:
            ids: (...) int32 or int64 in [0, rows). Returns: (..., cols) float32.

        Raises:
            IndexError: an id is out of range.
        """
        return _embedding_ops().qrow_lookup(self, ids)

    def embedding_bag(
        self,
        ids: torch.Tensor,
        offsets: torch.Tensor | None = None,
        mode: str = "sum",
        per_sample_weights: torch.Tensor | None = None,
        *,
        include_last_offset: bool = False,
    ) -> torch.Tensor:
        """Sum or mean of bags of rows, as ``torch.nn.functional.embedding_bag`` (see
        :func:`hf_sparse.ops.qrow_embedding_bag`).

        Shapes:
            ids: (n,) with ``offsets`` (bags,) — each bag's start — or (bags + 1,) with ``include_last_offset``;
            or (bags, bag_size) without offsets. per_sample_weights: like ``ids`` (mode ``"sum"`` only).
            Returns: (bags, cols) float32.
        """
        return _embedding_ops().qrow_embedding_bag(
            self,
            ids,
            offsets,
            mode=mode,
            per_sample_weights=per_sample_weights,
            include_last_offset=include_last_offset,
        )

    # -- the SparseFormat interface ---------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """What lookups return (float32), not the storage dtype of the codes."""
        return torch.float32

    @property
    def nnz(self) -> int:
        return self.shape[0] * self.shape[1]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"values": self.values, "scales": self.scales, "biases": self.biases}

    def params(self) -> dict[str, Any]:
        return {"format": self.name, "shape": list(self.shape), "bits": self.bits}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        extra = sorted(set(params) - {"format", "shape", "bits"})
        if extra:
            raise FormatError(f"qrow: unknown parameters {extra}.")
        return cls(
            tensors["values"],
            tensors["scales"],
            tensors["biases"],
            params["shape"],
            bits=params["bits"],
            validate=validate,
        )

    def validate(self) -> None:
        _check_bits(self.bits)
        rows, cols = self.shape
        per = 8 // self.bits
        if cols % per:
            raise FormatError(f"qrow: {self.bits}-bit codes pack {per} per byte; {cols} columns do not divide.")
        check_tensor(self.name, "values", self.values, dtypes=(torch.uint8,), ndim=2)
        if tuple(self.values.shape) != (rows, cols // per):
            raise FormatError(
                f"qrow: values has shape {tuple(self.values.shape)}; {self.bits}-bit codes of a {self.shape} table "
                f"need {(rows, cols // per)}."
            )
        for name, one in (("scales", "scale"), ("biases", "bias")):
            t = getattr(self, name)
            check_tensor(self.name, name, t, dtypes=(torch.float16,), length=rows)
            if t.device.type == "meta" or not t.numel():
                continue
            tf = t.float()
            bad = ~torch.isfinite(tf) | (tf <= 0) if name == "scales" else ~torch.isfinite(tf)
            if bool(bad.any()):
                i = int(torch.nonzero(bad)[0])
                need = "finite and > 0" if name == "scales" else "finite"
                raise FormatError(
                    f"qrow: {name}[{i}] is {float(tf[i])}; every {one} must be {need} (a corrupt checkpoint?)."
                )
