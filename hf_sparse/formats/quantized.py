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

``qdense`` is in :mod:`hf_sparse.formats.qdense`, ``qcsr``, ``qbsr`` and ``qnm`` in :mod:`hf_sparse.formats.qsparse`;
this module holds what they share: the checks of scales and codes, and the input (activation) quantisation a weight
records.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FormatError, quote
from .base import check_tensor
from .schemes import qparams_from_range, qrange

__all__ = ["quantized_formats", "check_scales", "check_codes", "InputQuant"]

_SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def quantized_formats() -> tuple[str, ...]:
    """Names of the registered formats whose values are integer codes."""
    return ("qdense", "qcsr", "qbsr", "qnm")


def check_scales(fmt: str, scales: Any, shape: tuple[int, ...]) -> None:
    """Floating-point scales of exactly ``shape``, every one finite and > 0, else a FormatError naming the first."""
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


def check_codes(fmt: str, name: str, codes: torch.Tensor, bits: int, symmetric: bool) -> None:
    """Integer codes inside the range of a ``bits``-bit scheme, else a FormatError naming the first outside it."""
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


class InputQuant:
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
        check_scales(self.name, self.input_scale, (1, 1))
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
