"""Row-wise quantised embedding tables (``qrow``): FBGEMM's row-wise layout, for lookups rather than matmuls.

Row ``r`` of a ``(rows, cols)`` table is stored as unsigned codes ``c`` in ``[0, 2^bits - 1]`` (``bits`` 8, 4 or 2;
4- and 2-bit codes packed into uint8, low bits first, as :func:`~hf_sparse.formats.schemes.pack_codes` does)
with one float16 ``scale`` and one float16 ``bias`` per row::

    W[r, j] = c[r, j] * scale[r] + bias[r]

The bias is the row's minimum and the scale spans the row's range, so every row uses all its codes whatever its
offset (a table whose rows sit far from zero loses nothing to a symmetric range).

Layout: one uint8 tensor ``values`` of shape ``(rows, cols * bits / 8 + 4)``. Each row holds its packed codes
(``cols * bits / 8`` bytes), then its float16 scale (2 bytes), then its float16 bias (2 bytes), both little-endian
(the IEEE binary16 bits, low byte first)::

    values[r] = [ codes (cols * bits / 8 bytes) | scale lo, scale hi | bias lo, bias hi ]

Why inline: a lookup into a table larger than the caches waits on DRAM, and what it waits for is the number of
random cache lines (and pages) it touches, not its bytes. With the scale and bias in their own arrays a lookup
touched three random lines on three pages; inline it touches one (two adjacent ones when the row straddles a line
boundary), on one page. At 4 bits a 64-wide row costs 32 bytes of codes plus 4 bytes of scale and bias (36 bytes,
7.1x less than float32). Rows are not padded: a power-of-two row (64 bytes at int4 x 64) would be only 4x smaller,
and measured slower, not faster (numbers in ``kernels/csrc/cpu/embedding.cpp``).

:meth:`QRow.lookup` dequantises only the rows it returns, in plain PyTorch. The lookups and bag reductions that run
our C++ kernels (``hf_sparse::qrow_lookup`` / ``qrow_embedding_bag``) where they are built are in
:mod:`hf_sparse.ops.embedding` (``hf_sparse.ops.qrow_lookup``, ``hf_sparse.ops.qrow_embedding_bag``); they compute
what :meth:`QRow.lookup` and :meth:`QRow.to_dense` do, rounded the same way. :meth:`QRow.scales` and
:meth:`QRow.biases` read the float16 numbers back out of the rows (copies, for tests and tooling).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import FormatError
from .base import SparseFormat, check_shape, check_tensor, check_weight, register_format
from .schemes import pack_codes

__all__ = ["QRow", "check_ids", "check_id_range"]

_BITS = (8, 4, 2)
_FP16_MAX = float(torch.finfo(torch.float16).max)
#: The smallest positive float16 (a subnormal): the scale of a constant row, whose codes are then all 0.
_FP16_TINY = 2.0**-24
#: Bytes after each row's codes: its float16 scale, then its float16 bias.
TAIL_BYTES = 4


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


def _fp16_to_bytes(x: torch.Tensor) -> torch.Tensor:
    """float16 (n,) -> its bits as uint8 (n, 2), low byte first. Arithmetic on the bits rather than a byte view, so
    the stored layout is little-endian whatever the host's byte order."""
    bits = x.view(torch.int16).to(torch.int32) & 0xFFFF
    return torch.stack([bits & 0xFF, bits >> 8], dim=-1).to(torch.uint8)


def _fp16_from_bytes(b: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 2), low byte first -> float16 (...): the inverse of :func:`_fp16_to_bytes`."""
    bits = b[..., 0].to(torch.int32) | (b[..., 1].to(torch.int32) << 8)
    return (bits - ((bits >> 15) << 16)).to(torch.int16).view(torch.float16)  # 0..65535 -> the same int16 bits


def check_ids(ids: Any, op: str, name: str = "ids") -> None:
    """TypeError unless ``ids`` is an int32 or int64 tensor (``op`` names the caller in the message)."""
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int32, torch.int64):
        got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"{op}: {name} must be an int32 or int64 tensor, got {got}.")


def check_id_range(ids: torch.Tensor, rows: int, op: str) -> None:
    """IndexError for the first id outside [0, rows), with its position."""
    if not ids.numel() or ids.device.type == "meta":
        return
    bad = (ids < 0) | (ids >= rows)
    if bool(bad.any()):
        p = int(torch.nonzero(bad.reshape(-1))[0])
        raise IndexError(
            f"{op}: indices[{p}] = {int(ids.reshape(-1)[p])} is out of range [0, {rows}) for a table of {rows} rows."
        )


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


def dequantize_rows(rows: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """``codes * scale + bias`` of whole qrow rows (codes, scale and bias read out of each row), in float32, rounded
    exactly as the C++ kernels round (``c * scale`` is exact in float32, so one rounding, at the add).

    Shapes:
        rows: (n, cols * bits / 8 + 4) uint8, rows of a qrow ``values`` tensor. Returns: (n, cols) float32.
    """
    cb = cols * bits // 8
    codes = unpack_unsigned(rows[:, :cb], bits, cols).float()
    scale = _fp16_from_bytes(rows[:, cb : cb + 2]).float().unsqueeze(1)
    bias = _fp16_from_bytes(rows[:, cb + 2 : cb + 4]).float().unsqueeze(1)
    return codes * scale + bias


@register_format("qrow")
class QRow(SparseFormat):
    """An embedding table as ``bits``-bit unsigned codes with a float16 scale and bias per row, all three inside
    the row: ``W[r, j] = code(r, j) * scale(r) + bias(r)`` (see the module docstring for the byte layout).

    Args:
        values: uint8 (rows, cols * bits / 8 + 4): each row's codes (one per byte at 8 bits, two at 4 bits, four at
            2 bits, low bits first), then its float16 scale (finite, > 0) and float16 bias (finite), little-endian.
        shape: (rows, cols).
        bits: 8, 4 or 2.

    Shapes:
        values: (rows, cols * bits / 8 + 4) uint8.
    """

    # No floating-point storage: the scales and biases are bytes inside ``values`` (uint8), and they are not meant to
    # train anyway (the codes cannot follow a moved scale, and the lookups have no gradient formula). What lookups
    # return is float32 (:attr:`dtype`).
    float_tensors: ClassVar[tuple[str, ...]] = ()

    def __init__(self, values, shape, *, bits: int, validate: bool = True):
        self.shape = check_shape(shape)
        self.values, self.bits = values, bits
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
        return cls.from_parts(codes, scale, bias, (rows, cols), bits=bits, validate=False)

    @classmethod
    def from_parts(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        biases: torch.Tensor,
        shape,
        *,
        bits: int,
        validate: bool = True,
    ) -> QRow:
        """Assemble the rows from packed codes and separate float16 scales and biases (e.g. tables stored in the
        earlier layout, which kept them in tensors of their own, or tables quantised elsewhere).

        Shapes:
            codes: (rows, cols * bits / 8) uint8, packed low bits first. scales, biases: (rows,) float16.

        Raises:
            FormatError: a wrong dtype or shape (and, with ``validate``, a bad scale or bias).
        """
        _check_bits(bits)
        rows, cols = check_shape(shape)
        check_tensor(cls.name, "codes", codes, dtypes=(torch.uint8,), ndim=2)
        if tuple(codes.shape) != (rows, cols * bits // 8):
            raise FormatError(
                f"qrow: codes has shape {tuple(codes.shape)}; {bits}-bit codes of a {(rows, cols)} table need "
                f"{(rows, cols * bits // 8)}."
            )
        check_tensor(cls.name, "scales", scales, dtypes=(torch.float16,), length=rows)
        check_tensor(cls.name, "biases", biases, dtypes=(torch.float16,), length=rows)
        values = torch.cat([codes, _fp16_to_bytes(scales), _fp16_to_bytes(biases)], dim=1).contiguous()
        return cls(values, (rows, cols), bits=bits, validate=validate)

    # -- the row layout ---------------------------------------------------------------------------------------------
    @property
    def code_bytes(self) -> int:
        """Bytes of codes at the start of each row (``cols * bits / 8``); the scale and bias follow them."""
        return self.shape[1] * self.bits // 8

    @property
    def row_bytes(self) -> int:
        """Bytes per row: the codes, a float16 scale and a float16 bias."""
        return self.code_bytes + TAIL_BYTES

    def codes(self) -> torch.Tensor:
        """The unsigned codes, unpacked: uint8 (rows, cols)."""
        return unpack_unsigned(self.values[:, : self.code_bytes], self.bits, self.shape[1])

    def scales(self) -> torch.Tensor:
        """Each row's scale, read out of the row: float16 (rows,) (a copy)."""
        cb = self.code_bytes
        return _fp16_from_bytes(self.values[:, cb : cb + 2])

    def biases(self) -> torch.Tensor:
        """Each row's bias, read out of the row: float16 (rows,) (a copy)."""
        cb = self.code_bytes
        return _fp16_from_bytes(self.values[:, cb + 2 : cb + 4])

    def to_dense(self) -> torch.Tensor:
        """The float32 (rows, cols) table (``codes * scale + bias``, computed as the lookups compute it)."""
        return dequantize_rows(self.values, self.bits, self.shape[1])

    # -- lookups ----------------------------------------------------------------------------------------------------
    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows ``ids`` dequantised (``F.embedding`` on the float table, without building it), in plain PyTorch.
        :func:`hf_sparse.ops.qrow_lookup` computes the same values with our C++ kernel where it is built, and
        :func:`hf_sparse.ops.qrow_embedding_bag` sums or averages bags of rows.

        Shapes:
            ids: (...) int32 or int64 in [0, rows). Returns: (..., cols) float32.

        Raises:
            IndexError: an id is out of range. TypeError: ids are not int32/int64.
        """
        check_ids(ids, "qrow_lookup")
        check_id_range(ids, self.shape[0], "qrow_lookup")
        flat = ids.reshape(-1).to(torch.int64)
        return dequantize_rows(self.values[flat], self.bits, self.shape[1]).reshape(*ids.shape, self.shape[1])

    # -- the SparseFormat interface ---------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """What lookups return (float32), not the storage dtype of the rows (uint8)."""
        return torch.float32

    @property
    def nnz(self) -> int:
        return self.shape[0] * self.shape[1]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"values": self.values}

    def params(self) -> dict[str, Any]:
        return {"format": self.name, "shape": list(self.shape), "bits": self.bits}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        extra = sorted(set(params) - {"format", "shape", "bits"})
        if extra:
            raise FormatError(f"qrow: unknown parameters {extra}.")
        unknown = sorted(set(tensors) - {"values"})
        if unknown:
            hint = ""
            if {"scales", "biases"} & set(unknown):
                hint = (
                    " Each row now holds its float16 scale and bias after its codes, in `values`; convert a table "
                    "saved with separate scales and biases with QRow.from_parts(values, scales, biases, shape, "
                    "bits=bits)."
                )
            raise FormatError(f"qrow: unknown tensors {unknown}; qrow stores one tensor, `values`.{hint}")
        return cls(tensors["values"], params["shape"], bits=params["bits"], validate=validate)

    def validate(self) -> None:
        _check_bits(self.bits)
        rows, cols = self.shape
        per = 8 // self.bits
        if cols % per:
            raise FormatError(f"qrow: {self.bits}-bit codes pack {per} per byte; {cols} columns do not divide.")
        check_tensor(self.name, "values", self.values, dtypes=(torch.uint8,), ndim=2)
        need = (rows, self.row_bytes)
        if tuple(self.values.shape) != need:
            raise FormatError(
                f"qrow: values has shape {tuple(self.values.shape)}; {self.bits}-bit codes of a {self.shape} table "
                f"need {need} ({self.code_bytes} bytes of codes, a float16 scale and a float16 bias per row)."
            )
        if self.values.device.type == "meta" or not rows:
            return
        for one, t in (("scale", self.scales()), ("bias", self.biases())):
            tf = t.float()
            bad = ~torch.isfinite(tf) | (tf <= 0) if one == "scale" else ~torch.isfinite(tf)
            if bool(bad.any()):
                i = int(torch.nonzero(bad)[0])
                need_s = "finite and > 0" if one == "scale" else "finite"
                at = self.code_bytes + (0 if one == "scale" else 2)
                raise FormatError(
                    f"qrow: row {i} has {one} {float(tf[i])} (float16 at bytes {at}-{at + 1} of values[{i}]); every "
                    f"{one} must be {need_s} (a corrupt checkpoint?)."
                )
