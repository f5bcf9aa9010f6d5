"""Quantised storage: integer codes with floating-point scales, dense (``qdense``) or inside the sparse formats
(``qcsr``, ``qbsr``, ``qnm``).

``qdense`` holds every weight as a code of ``bits`` bits (8: int8; 4 and 2: packed into uint8, low bits first) with
one scale per tensor, per row or per group of ``group_size`` columns, and for asymmetric schemes an int8 zero point
beside each scale. ``qcsr``, ``qbsr`` and ``qnm`` are CSR, BSR and N:M whose values are symmetric int8 codes with
one scale per row: a kept weight costs its index share and one byte, and our SpMM kernels multiply by the row's
scale once per output, not per value.

Both dequantise exactly to ``(code - zero_point) * scale`` (:meth:`to_dense`), which is what quantisation-aware
training computes, so a converted model predicts what the trained one did. Malformed scales (not finite, not
positive), zero points or codes outside the range of ``bits`` raise :class:`~hf_sparse.errors.FormatError`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import FormatError, quote
from .base import (
    SparseFormat,
    check_indices,
    check_pointers,
    check_shape,
    check_tensor,
    check_weight,
    index_dtype,
    register_format,
    segment_pointers,
)
from .bsr import BSR
from .nm import NM
from .schemes import dequantize, grouped, pack_codes, qparams_from_range, qrange, quantize, unpack_codes

__all__ = ["QDense", "QCSR", "QBSR", "QNM", "quantized_formats"]

_SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def quantized_formats() -> tuple[str, ...]:
    """Names of the registered formats whose values are integer codes."""
    return ("qdense", "qcsr", "qbsr", "qnm")


def _check_scales(fmt: str, scales: Any, shape: tuple[int, ...]) -> None:
    check_tensor(fmt, "scales", scales, dtypes=_SCALE_DTYPES, ndim=len(shape))
    if tuple(scales.shape) != tuple(shape):
        raise FormatError(f"{fmt}: scales has shape {tuple(scales.shape)}; expected {tuple(shape)}.")
    if scales.numel() and scales.device.type != "meta":
        bad = ~(torch.isfinite(scales) & (scales > 0))
        if bool(bad.any()):
            i = int(torch.nonzero(bad.reshape(-1))[0])
            raise FormatError(
                f"{fmt}: scales[{i}] (flat) is {float(scales.detach().reshape(-1)[i])}; every scale must be finite "
                "and > 0 (a corrupt checkpoint, or a quantiser that saw no data)."
            )


def _check_codes(fmt: str, name: str, codes: torch.Tensor, bits: int, symmetric: bool) -> None:
    if codes.device.type == "meta" or not codes.numel():
        return
    qmin, qmax = qrange(bits, symmetric)
    wide = codes.to(torch.int16)
    outside = (wide < qmin) | (wide > qmax)
    if bool(outside.any()):
        i = int(torch.nonzero(outside.reshape(-1))[0])
        raise FormatError(
            f"{fmt}: {name}[{i}] (flat) is {int(wide.reshape(-1)[i])}, outside the {bits}-bit "
            f"{'symmetric' if symmetric else 'asymmetric'} range [{qmin}, {qmax}]."
        )


class _InputQuant:
    """Input (activation) quantisation recorded with a weight: ``activation`` is ``None`` (weight-only),
    ``"dynamic"`` (each token's own 8-bit range at run time) or ``"static"`` (the ``input_scale`` and
    ``input_zero_point`` observed in training or calibration, each (1, 1))."""

    activation: str | None = None
    input_scale: torch.Tensor | None = None
    input_zero_point: torch.Tensor | None = None

    def _set_input(self, activation=None, input_scale=None, input_zero_point=None) -> None:
        self.activation, self.input_scale, self.input_zero_point = activation, input_scale, input_zero_point

    def _input_tensors(self) -> dict[str, torch.Tensor]:
        if self.activation != "static":
            return {}
        return {"input_scale": self.input_scale, "input_zero_point": self.input_zero_point}

    def _input_params(self) -> dict[str, Any]:
        return {"activation": self.activation} if self.activation else {}

    def _validate_input(self) -> None:
        if self.activation not in (None, "dynamic", "static"):
            raise FormatError(f"{self.name}: activation must be 'dynamic' or 'static', got {quote(self.activation)}.")
        if self.activation != "static":
            if self.input_scale is not None or self.input_zero_point is not None:
                raise FormatError(
                    f"{self.name}: input_scale / input_zero_point are only stored with static activations."
                )
            return
        if self.input_scale is None or self.input_zero_point is None:
            raise FormatError(f"{self.name}: static activations need input_scale and input_zero_point tensors.")
        _check_scales(self.name, self.input_scale, (1, 1))
        check_tensor(self.name, "input_zero_point", self.input_zero_point, dtypes=(torch.int8,), ndim=2)
        if tuple(self.input_zero_point.shape) != (1, 1):
            raise FormatError(
                f"{self.name}: input_zero_point must have shape (1, 1), got {tuple(self.input_zero_point.shape)}."
            )

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rounded to the recorded 8-bit input grid (unchanged without input quantisation).

        Shapes:
            x: (..., in_features). Returns: the same.
        """
        if self.activation is None:
            return x
        if self.activation == "dynamic":
            xg = x.reshape(-1, x.shape[-1]).float()
            scale, zero = qparams_from_range(xg.amin(1, keepdim=True), xg.amax(1, keepdim=True), 8, False)
        else:
            xg = x.reshape(1, -1).float()
            scale, zero = self.input_scale.float(), self.input_zero_point.float()
        q = torch.clamp(torch.round(xg / scale) + zero, -128, 127)
        return ((q - zero) * scale).reshape(x.shape).to(x.dtype)


@register_format("qdense")
class QDense(_InputQuant, SparseFormat):
    """A dense weight as ``bits``-bit codes with scales (and zero points when asymmetric).

    Args:
        values: codes: int8 (rows, cols) for 8 bits; uint8 (rows, cols * bits / 8), packed, for 4 and 2 bits.
        scales: (1, 1) for ``granularity="tensor"``, (rows, 1) for ``"channel"``, (rows, cols / group_size) for
            ``"group"``.
        zero_points: int8, shaped like ``scales``; ``None`` for symmetric codes.

    Shapes:
        values: see above. scales, zero_points: (1 or rows, groups per row).
    """

    float_tensors: ClassVar[tuple[str, ...]] = ("scales", "input_scale")

    def __init__(
        self,
        values,
        scales,
        zero_points,
        shape,
        *,
        bits: int,
        granularity: str,
        group_size: int = 0,
        activation: str | None = None,
        input_scale=None,
        input_zero_point=None,
        validate: bool = True,
    ):
        self.shape = check_shape(shape)
        self.values, self.scales, self.zero_points = values, scales, zero_points
        self.bits, self.granularity, self.group_size = bits, granularity, group_size
        self._set_input(activation, input_scale, input_zero_point)
        if validate:
            self.validate()

    # -- layout ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_layout(shape, bits, granularity, group_size) -> None:
        # bool is an int to Python; a checkpoint's `true` is no bit width or group size.
        if isinstance(bits, bool) or bits not in (2, 4, 8):
            raise FormatError(f"qdense: bits must be 2, 4 or 8, got {quote(bits)}.")
        if granularity not in ("tensor", "channel", "group"):
            raise FormatError(f"qdense: granularity must be 'tensor', 'channel' or 'group', got {quote(granularity)}.")
        rows, cols = shape
        if granularity == "group" and (
            not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1 or cols % group_size
        ):
            raise FormatError(
                f"qdense: group_size {quote(group_size)} must be a positive divisor of the {cols} columns (any width "
                "that divides the row, odd ones included)."
            )
        if bits < 8 and cols % (8 // bits):
            raise FormatError(f"qdense: {bits}-bit codes pack {8 // bits} per byte; {cols} columns do not divide.")

    def scale_shape(self) -> tuple[int, int]:
        rows, cols = self.shape
        if self.granularity == "tensor":
            return (1, 1)
        if self.granularity == "channel":
            return (rows, 1)
        return (rows, cols // self.group_size)

    def codes_shape(self) -> tuple[int, int]:
        rows, cols = self.shape
        return (rows, cols * self.bits // 8)

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_dense(
        cls,
        weight,
        mask=None,
        *,
        bits: int = 8,
        granularity: str = "channel",
        group_size: int = 64,
        symmetric: bool = True,
        scales: torch.Tensor | None = None,
        zero_points: torch.Tensor | None = None,
        **params: Any,
    ):
        """Quantise ``weight`` (positions outside ``mask`` are zeroed first). Without ``scales``, the range of each
        group is its min and max; pass ``scales`` (and ``zero_points``) to store what a quantiser learned."""
        if params:
            raise FormatError(
                f"qdense takes bits, granularity, group_size, symmetric, scales, zero_points; got {sorted(params)}."
            )
        keep = check_weight(weight, mask)
        rows, cols = weight.shape
        group_size = group_size if granularity == "group" else 0
        cls._check_layout((rows, cols), bits, granularity, group_size)
        w = (weight * keep).detach().float()
        wg = grouped(w, granularity, group_size or 1)
        if scales is None:
            s, z = qparams_from_range(wg.amin(1), wg.amax(1), bits, symmetric)
            s, z = s.unsqueeze(1), z.unsqueeze(1)
        else:
            s = scales.detach().float().reshape(-1, 1)
            z = zero_points.detach().float().reshape(-1, 1) if zero_points is not None else torch.zeros_like(s)
            if s.shape[0] != wg.shape[0]:
                raise FormatError(f"qdense: got {s.shape[0]} scales for {wg.shape[0]} {granularity} groups.")
        qmin, qmax = qrange(bits, symmetric)
        codes = quantize(wg, s, z, qmin, qmax).reshape(rows, cols)
        fmt = cls(
            None, None, None, (rows, cols), bits=bits, granularity=granularity, group_size=group_size, validate=False
        )
        fmt.values = pack_codes(codes, bits)
        fmt.scales = s.reshape(fmt.scale_shape()).to(weight.dtype if weight.is_floating_point() else torch.float32)
        fmt.zero_points = None if symmetric else z.reshape(fmt.scale_shape()).to(torch.int8)
        return fmt

    def codes(self) -> torch.Tensor:
        """The signed codes, unpacked: int8 (rows, cols)."""
        return unpack_codes(self.values, self.bits, self.shape[1])

    def to_dense(self) -> torch.Tensor:
        rows, cols = self.shape
        codes = self.codes()
        width = cols if self.granularity != "group" else self.group_size
        cg = codes.reshape(-1, width) if self.granularity != "tensor" else codes.reshape(1, -1)
        s = self.scales.reshape(-1, 1)
        z = self.zero_points.reshape(-1, 1) if self.zero_points is not None else None
        return dequantize(cg, s, z).reshape(rows, cols)

    # -- the SparseFormat interface ---------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    @property
    def nnz(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def symmetric(self) -> bool:
        return self.zero_points is None

    def tensors(self):
        out = {"values": self.values, "scales": self.scales}
        if self.zero_points is not None:
            out["zero_points"] = self.zero_points
        return {**out, **self._input_tensors()}

    def params(self):
        out = {"format": self.name, "shape": list(self.shape), "bits": self.bits, "granularity": self.granularity}
        if self.granularity == "group":
            out["group_size"] = self.group_size
        return {**out, **self._input_params()}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        extra = sorted(set(params) - {"format", "shape", "bits", "granularity", "group_size", "activation"})
        if extra:
            raise FormatError(f"qdense: unknown parameters {extra}.")
        return cls(
            tensors["values"],
            tensors["scales"],
            tensors.get("zero_points"),
            params["shape"],
            bits=params["bits"],
            granularity=params["granularity"],
            group_size=params.get("group_size", 0),
            activation=params.get("activation"),
            input_scale=tensors.get("input_scale"),
            input_zero_point=tensors.get("input_zero_point"),
            validate=validate,
        )

    def validate(self) -> None:
        self._validate_input()
        self._check_layout(self.shape, self.bits, self.granularity, self.group_size)
        want = torch.int8 if self.bits == 8 else torch.uint8
        check_tensor(self.name, "values", self.values, dtypes=(want,), ndim=2)
        if tuple(self.values.shape) != self.codes_shape():
            raise FormatError(
                f"qdense: values has shape {tuple(self.values.shape)}; {self.bits}-bit codes of a {self.shape} weight "
                f"need {self.codes_shape()}."
            )
        _check_scales(self.name, self.scales, self.scale_shape())
        if self.zero_points is not None:
            check_tensor(self.name, "zero_points", self.zero_points, dtypes=(torch.int8,), ndim=2)
            if tuple(self.zero_points.shape) != self.scale_shape():
                raise FormatError(
                    f"qdense: zero_points has shape {tuple(self.zero_points.shape)}; expected {self.scale_shape()}."
                )
            _check_codes(self.name, "zero_points", self.zero_points, self.bits, symmetric=False)
        if self.bits == 8:
            _check_codes(self.name, "values", self.values, 8, self.symmetric)


@register_format("qcsr")
class QCSR(_InputQuant, SparseFormat):
    """CSR with symmetric int8 codes and one scale per row: ``W[r, c] = values[p] * scales[r]``.

    Shapes:
        crow_indices: (rows + 1,) int32. col_indices: (nnz,) int16/int32. values: (nnz,) int8 in [-127, 127].
        scales: (rows,) float.
    """

    float_tensors: ClassVar[tuple[str, ...]] = ("scales", "input_scale")

    def __init__(
        self,
        crow_indices,
        col_indices,
        values,
        scales,
        shape,
        *,
        activation: str | None = None,
        input_scale=None,
        input_zero_point=None,
        validate: bool = True,
    ):
        self.shape = check_shape(shape)
        self.crow_indices, self.col_indices, self.values, self.scales = crow_indices, col_indices, values, scales
        self._set_input(activation, input_scale, input_zero_point)
        if validate:
            self.validate()

    @classmethod
    def from_dense(cls, weight, mask=None, *, scales: torch.Tensor | None = None, **params: Any):
        """Quantise the stored positions (``mask``, or the non-zeros) to int8 with one symmetric scale per row
        (``scales``, e.g. learned by QAT, or each row's largest magnitude / 127)."""
        if params:
            raise FormatError(f"qcsr takes only `scales`, got {sorted(params)}.")
        keep = check_weight(weight, mask)
        rows, cols = weight.shape
        w = (weight * keep).detach().float()
        if scales is None:
            s, _ = qparams_from_range(w.amin(1), w.amax(1), 8, True)
        else:
            s = scales.detach().float().reshape(-1)
            if s.numel() != rows:
                raise FormatError(f"qcsr: one scale per row: got {s.numel()} scales for {rows} rows.")
        r, c = torch.nonzero(keep, as_tuple=True)
        codes = quantize(w[r, c].unsqueeze(1), s[r].unsqueeze(1), torch.zeros(1, 1), -127, 127).reshape(-1)
        return cls(
            segment_pointers(keep.sum(1)),
            c.to(index_dtype(cols)),
            codes.contiguous(),
            s.to(weight.dtype).contiguous(),
            (rows, cols),
            validate=False,
        )

    def to_dense(self) -> torch.Tensor:
        counts = torch.diff(self.crow_indices.to(torch.int64))
        rows = torch.repeat_interleave(torch.arange(self.shape[0], device=counts.device), counts)
        out = torch.zeros(self.shape, dtype=self.scales.dtype, device=self.scales.device)
        out[rows, self.col_indices.to(torch.int64)] = self.values.to(self.scales.dtype) * self.scales[rows]
        return out

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def tensors(self):
        out = {
            "crow_indices": self.crow_indices,
            "col_indices": self.col_indices,
            "values": self.values,
            "scales": self.scales,
        }
        return {**out, **self._input_tensors()}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), **self._input_params()}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        extra = sorted(set(params) - {"format", "shape", "activation"})
        if extra:
            raise FormatError(f"qcsr: unknown parameters {extra}.")
        return cls(
            tensors["crow_indices"],
            tensors["col_indices"],
            tensors["values"],
            tensors["scales"],
            params["shape"],
            activation=params.get("activation"),
            input_scale=tensors.get("input_scale"),
            input_zero_point=tensors.get("input_zero_point"),
            validate=validate,
        )

    def validate(self) -> None:
        self._validate_input()
        rows, cols = self.shape
        check_tensor(self.name, "values", self.values, dtypes=(torch.int8,))
        nnz = self.values.numel()
        check_pointers(self.name, "crow_indices", self.crow_indices, rows, nnz)
        check_indices(self.name, "col_indices", self.col_indices, cols, self.crow_indices)
        if self.col_indices.numel() != nnz:
            raise FormatError(f"qcsr: col_indices has {self.col_indices.numel()} entries, values {nnz}.")
        _check_scales(self.name, self.scales, (rows,))
        _check_codes(self.name, "values", self.values, 8, symmetric=True)


def _row_codes(fmt: str, weight, mask, scales) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(keep-mask, float codes (rows, cols) in [-127, 127] with zeros outside the mask, per-row scales)."""
    keep = check_weight(weight, mask)
    rows = weight.shape[0]
    w = (weight * keep).detach().float()
    if scales is None:
        s, _ = qparams_from_range(w.amin(1), w.amax(1), 8, True)
    else:
        s = scales.detach().float().reshape(-1)
        if s.numel() != rows:
            raise FormatError(f"{fmt}: one scale per row: got {s.numel()} scales for {rows} rows.")
    codes = quantize(w, s.unsqueeze(1), torch.zeros(1, 1), -127, 127).float() * keep
    return keep, codes, s


def _float_twin(fmt: str, build):
    """Run ``build`` (which makes the float format with the same structure) and re-label its errors as ``fmt``'s."""
    try:
        return build()
    except FormatError as exc:
        msg, prefix = str(exc), f"{fmt[1:]}: "
        raise FormatError(f"{fmt}: {msg.removeprefix(prefix)}") from None


@register_format("qbsr")
class QBSR(_InputQuant, SparseFormat):
    """BSR with symmetric int8 codes and one scale per row: ``W[r, c] = code(r, c) * scales[r]``, stored in dense
    ``r x c`` blocks (zeros included) wherever a block keeps any position.

    Shapes:
        crow_indices: (rows / r + 1,) int32. col_indices: (blocks,) block columns. values: (blocks, r, c) int8 in
        [-127, 127]. scales: (rows,) float.
    """

    float_tensors: ClassVar[tuple[str, ...]] = ("scales", "input_scale")

    def __init__(
        self,
        crow_indices,
        col_indices,
        values,
        scales,
        shape,
        block,
        *,
        activation: str | None = None,
        input_scale=None,
        input_zero_point=None,
        validate: bool = True,
    ):
        self.shape = check_shape(shape)
        self.block = tuple(block) if isinstance(block, (list, tuple)) else block
        self.crow_indices, self.col_indices, self.values, self.scales = crow_indices, col_indices, values, scales
        self._set_input(activation, input_scale, input_zero_point)
        if validate:
            self.validate()

    @classmethod
    def from_dense(cls, weight, mask=None, *, block=(16, 16), scales: torch.Tensor | None = None, **params: Any):
        """Quantise the stored blocks to int8 with one symmetric scale per row (``scales``, e.g. learned by QAT, or
        each row's largest kept magnitude / 127)."""
        if params:
            raise FormatError(f"qbsr takes only `block` and `scales`, got {sorted(params)}.")
        keep, codes, s = _row_codes("qbsr", weight, mask, scales)
        twin = _float_twin("qbsr", lambda: BSR.from_dense(codes, keep, block=block))
        return cls(
            twin.crow_indices,
            twin.col_indices,
            twin.values.to(torch.int8),
            s.to(weight.dtype).contiguous(),
            twin.shape,
            twin.block,
            validate=False,
        )

    def _twin(self) -> BSR:
        values = self.values.to(self.scales.dtype)
        return BSR(self.crow_indices, self.col_indices, values, self.shape, self.block, validate=False)

    def to_dense(self) -> torch.Tensor:
        return self._twin().to_dense() * self.scales.unsqueeze(1)

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def tensors(self):
        out = {
            "crow_indices": self.crow_indices,
            "col_indices": self.col_indices,
            "values": self.values,
            "scales": self.scales,
        }
        return {**out, **self._input_tensors()}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "block": list(self.block), **self._input_params()}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        extra = sorted(set(params) - {"format", "shape", "block", "activation"})
        if extra:
            raise FormatError(f"qbsr: unknown parameters {extra}.")
        return cls(
            tensors["crow_indices"],
            tensors["col_indices"],
            tensors["values"],
            tensors["scales"],
            params["shape"],
            params["block"],
            activation=params.get("activation"),
            input_scale=tensors.get("input_scale"),
            input_zero_point=tensors.get("input_zero_point"),
            validate=validate,
        )

    def validate(self) -> None:
        self._validate_input()
        check_tensor(self.name, "values", self.values, dtypes=(torch.int8,), ndim=3)
        _check_scales(self.name, self.scales, (self.shape[0],))
        _float_twin("qbsr", lambda: self._twin().validate())
        _check_codes(self.name, "values", self.values, 8, symmetric=True)


@register_format("qnm")
class QNM(_InputQuant, SparseFormat):
    """N:M with symmetric int8 codes and one scale per row: per row and group of ``m`` columns, ``n`` slots hold a
    code and its int8 position in the group (sorted; spare slots hold zeros at unused positions).

    Shapes:
        values: (rows, cols / m * n) int8 in [-127, 127]. indices: (rows, cols / m * n) int8 in [0, m).
        scales: (rows,) float.
    """

    float_tensors: ClassVar[tuple[str, ...]] = ("scales", "input_scale")

    def __init__(
        self,
        values,
        indices,
        scales,
        shape,
        n,
        m,
        *,
        activation: str | None = None,
        input_scale=None,
        input_zero_point=None,
        validate: bool = True,
    ):
        self.shape = check_shape(shape)
        self.n, self.m = n, m
        self.values, self.indices, self.scales = values, indices, scales
        self._set_input(activation, input_scale, input_zero_point)
        if validate:
            self.validate()

    @classmethod
    def from_dense(cls, weight, mask=None, *, n: int = 2, m: int = 4, scales: torch.Tensor | None = None, **params):
        """Quantise the kept positions (at most ``n`` in every ``m`` consecutive columns) to int8 with one symmetric
        scale per row."""
        if params:
            raise FormatError(f"qnm takes only `n`, `m` and `scales`, got {sorted(params)}.")
        keep, codes, s = _row_codes("qnm", weight, mask, scales)
        twin = _float_twin("qnm", lambda: NM.from_dense(codes, keep, n=n, m=m))
        return cls(
            twin.values.to(torch.int8),
            twin.indices,
            s.to(weight.dtype).contiguous(),
            twin.shape,
            twin.n,
            twin.m,
            validate=False,
        )

    def _twin(self) -> NM:
        return NM(self.values.to(self.scales.dtype), self.indices, self.shape, self.n, self.m, validate=False)

    def to_dense(self) -> torch.Tensor:
        return self._twin().to_dense() * self.scales.unsqueeze(1)

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def tensors(self):
        return {"values": self.values, "indices": self.indices, "scales": self.scales, **self._input_tensors()}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "n": self.n, "m": self.m, **self._input_params()}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        extra = sorted(set(params) - {"format", "shape", "n", "m", "activation"})
        if extra:
            raise FormatError(f"qnm: unknown parameters {extra}.")
        return cls(
            tensors["values"],
            tensors["indices"],
            tensors["scales"],
            params["shape"],
            params["n"],
            params["m"],
            activation=params.get("activation"),
            input_scale=tensors.get("input_scale"),
            input_zero_point=tensors.get("input_zero_point"),
            validate=validate,
        )

    def validate(self) -> None:
        self._validate_input()
        check_tensor(self.name, "values", self.values, dtypes=(torch.int8,), ndim=2, length=self.shape[0])
        _check_scales(self.name, self.scales, (self.shape[0],))
        _float_twin("qnm", lambda: NM(self.values.to(self.scales.dtype), self.indices, self.shape, self.n, self.m))
        _check_codes(self.name, "values", self.values, 8, symmetric=True)
