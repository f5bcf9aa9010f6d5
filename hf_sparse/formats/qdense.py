"""Dense quantised weights (``qdense``): every weight a ``bits``-bit code, with one scale per tensor, row or group of
columns (and zero points when asymmetric). See :mod:`hf_sparse.formats.quantized` for the family."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import FormatError, quote
from .base import SparseFormat, check_shape, check_tensor, check_weight, register_format
from .quantized import InputQuant, check_codes, check_scales
from .schemes import dequantize, grouped, pack_codes, qparams_from_range, qrange, quantize, unpack_codes

__all__ = ["QDense"]


@register_format("qdense")
class QDense(InputQuant, SparseFormat):
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
        check_scales(self.name, self.scales, self.scale_shape())
        if self.zero_points is not None:
            check_tensor(self.name, "zero_points", self.zero_points, dtypes=(torch.int8,), ndim=2)
            if tuple(self.zero_points.shape) != self.scale_shape():
                raise FormatError(
                    f"qdense: zero_points has shape {tuple(self.zero_points.shape)}; expected {self.scale_shape()}."
                )
            check_codes(self.name, "zero_points", self.zero_points, self.bits, symmetric=False)
        if self.bits == 8:
            check_codes(self.name, "values", self.values, 8, self.symmetric)
