"""The arithmetic of uniform integer quantisation, as pure functions, and the scheme that parameterises it.

A value ``x`` maps to the integer code ``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` and back to
``(q - zero_point) * scale``. Symmetric schemes have ``zero_point = 0`` and a narrow range (``[-127, 127]`` at 8
bits, so ``-q`` is always representable and zero is exact); asymmetric schemes use the full range (``[-128, 127]``)
and an integer zero point, so zero is still exact: a pruned weight stays exactly zero after quantisation.

Granularity is the set of values that share one ``scale``: the whole tensor, one output channel (a row of a Linear
weight, an embedding row), or a group of ``group_size`` consecutive values inside a row. Every function works on
the *grouped view* ``(groups, members)`` that :func:`grouped` returns, so one code path serves all three.

Fake quantisation (:func:`fake_quantize`) returns the dequantised value with a straight-through estimator: the
gradient passes through ``round`` unchanged and is zero where the value was clipped. When ``scale`` requires grad,
the same expression gives the learned-step-size (LSQ, Esser et al. 2020) gradient for the scale.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch

from ..config import BaseConfig, register_config
from ..errors import ConfigError, FormatError

__all__ = [
    "QuantScheme",
    "qrange",
    "grouped",
    "ungrouped",
    "qparams_from_range",
    "fake_quantize",
    "quantize",
    "dequantize",
    "pack_codes",
    "unpack_codes",
    "lsq_grad_scale",
]

Granularity = Literal["tensor", "channel", "group"]
ObserverName = Literal["minmax", "moving_average", "percentile"]
_EPS = 1e-12


@register_config("quant_scheme")
@dataclasses.dataclass(frozen=True)
class QuantScheme(BaseConfig):
    """How one tensor (weights or activations) is quantised.

    Args:
        bits: 8, 4 or 2 (2 is meant for embedding tables).
        granularity: ``"tensor"`` (one scale), ``"channel"`` (one per output row), ``"group"`` (one per
            ``group_size`` consecutive values of a row). Activations use ``"tensor"`` (static) or ``"channel"``
            (dynamic: one scale per token).
        group_size: values per group when ``granularity="group"``; must divide the row length.
        symmetric: zero point 0 and range ``[-(2^(b-1)-1), 2^(b-1)-1]``; otherwise ``[-2^(b-1), 2^(b-1)-1]`` with an
            integer zero point.
        observer: how the range is measured: ``"minmax"`` (exact range; for activations the running min and max
            over all calibration batches), ``"moving_average"`` (exponential moving average of each batch's range),
            ``"percentile"`` (each batch's ``percentile`` / ``100 - percentile`` quantiles, averaged: clips
            outliers).
        percentile: the upper quantile for ``observer="percentile"``, in (50, 100].
        averaging_constant: weight of a new batch in the moving averages, in (0, 1].
        lsq: learn the scale by gradient descent (learned step size), initialised from the observer.
    """

    bits: int = 8
    granularity: Granularity = "channel"
    group_size: int = 64
    symmetric: bool = True
    observer: ObserverName = "minmax"
    percentile: float = 99.99
    averaging_constant: float = 0.01
    lsq: bool = False

    def validate(self) -> None:
        if self.bits not in (2, 4, 8):
            raise ConfigError(f"QuantScheme.bits must be one of [2, 4, 8], got {self.bits}.")
        if self.group_size < 1:
            raise ConfigError(f"QuantScheme.group_size must be a positive integer, got {self.group_size}.")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"QuantScheme.percentile must be in (50, 100], got {self.percentile}.")
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ConfigError(f"QuantScheme.averaging_constant must be in (0, 1], got {self.averaging_constant}.")

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.symmetric)[1]


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer codes a ``bits``-bit scheme uses: ``(-(2^(b-1)-1), 2^(b-1)-1)`` symmetric, else
    ``(-2^(b-1), 2^(b-1)-1)``."""
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ConfigError(f"bits must be an integer from 2 to 8, got {bits!r}.")
    half = 2 ** (bits - 1)
    return (-(half - 1), half - 1) if symmetric else (-half, half - 1)


def grouped(x: torch.Tensor, granularity: str, group_size: int = 64) -> torch.Tensor:
    """The view of ``x`` whose rows share a scale.

    Shapes:
        x: (rows, cols) for weights and tables, or (..., features) for activations (``"channel"`` then means one
        scale per token). Returns: (1, numel) for ``"tensor"``, (rows, cols) for ``"channel"``,
        (rows * cols / group_size, group_size) for ``"group"``.

    Raises:
        FormatError: ``group_size`` does not divide the last dimension.
    """
    if granularity == "tensor":
        return x.reshape(1, -1)
    if granularity == "channel":
        return x.reshape(-1, x.shape[-1]) if x.dim() != 1 else x.reshape(1, -1)
    if granularity == "group":
        if x.shape[-1] % group_size:
            raise FormatError(
                f"group_size {group_size} does not divide the last dimension {x.shape[-1]} of a {tuple(x.shape)} "
                "tensor; choose a divisor (e.g. 32, 64 or 128) or granularity 'channel'."
            )
        return x.reshape(-1, group_size)
    raise ConfigError(f"granularity must be one of ['tensor', 'channel', 'group'], got {granularity!r}.")


def ungrouped(xg: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Undo :func:`grouped`."""
    return xg.reshape(like.shape)


def qparams_from_range(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that cover ``[lo, hi]`` (widened to include 0, so zero is exact).

    Shapes:
        lo, hi: (groups,) or (groups, 1). Returns: scale and zero_point of the same shape; zero_point holds integer
        values (as floats, so it broadcasts in the float maths).
    """
    qmin, qmax = qrange(bits, symmetric)
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        return scale.clamp_min(_EPS), torch.zeros_like(scale)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(_EPS)
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zero_point


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def lsq_grad_scale(scale: torch.Tensor, numel_per_scale: int, qmax: int) -> torch.Tensor:
    """``scale`` with its gradient multiplied by ``1 / sqrt(numel_per_scale * qmax)`` (LSQ's step-size gradient
    scale; the value is unchanged)."""
    g = 1.0 / math.sqrt(max(numel_per_scale, 1) * max(qmax, 1))
    return scale * g + (scale - scale * g).detach()


def fake_quantize(
    xg: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """Quantise and dequantise the grouped ``xg`` with a straight-through estimator.

    Gradients: to ``xg`` unchanged inside the representable range and zero where clipped; to ``scale`` (when it
    requires grad) the LSQ gradient.

    Shapes:
        xg: (groups, members). scale, zero_point: (groups, 1) or (1, 1). Returns: like ``xg``.
    """
    q = torch.clamp(_round_ste(xg / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def quantize(xg: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Integer codes (int8) of the grouped ``xg``.

    Shapes:
        xg: (groups, members). scale, zero_point: (groups, 1). Returns: (groups, members) int8.
    """
    with torch.no_grad():
        return torch.clamp(torch.round(xg / scale) + zero_point, qmin, qmax).to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """``(q - zero_point) * scale`` in ``scale``'s dtype.

    Shapes:
        q: (groups, members) integer codes. scale, zero_point: (groups, 1). Returns: (groups, members).
    """
    out = q.to(scale.dtype)
    if zero_point is not None:
        out = out - zero_point.to(scale.dtype)
    return out * scale


def pack_codes(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack int8 codes of ``bits`` bits (4: two per byte, 2: four per byte; 8: unchanged) along the last dimension,
    low bits first.

    Shapes:
        q: (rows, cols) int8 codes in the signed ``bits``-bit range; cols divisible by 8 // bits.
        Returns: (rows, cols * bits / 8) uint8 (int8 unchanged for 8 bits).
    """
    if bits == 8:
        return q.to(torch.int8)
    per = 8 // bits
    if q.shape[-1] % per:
        raise FormatError(f"{bits}-bit packing needs a last dimension divisible by {per}, got {tuple(q.shape)}.")
    mask = (1 << bits) - 1
    u = (q.to(torch.int16) & mask).to(torch.uint8).reshape(*q.shape[:-1], -1, per)
    out = torch.zeros(u.shape[:-1], dtype=torch.uint8, device=q.device)
    for i in range(per):
        out |= u[..., i] << (bits * i)
    return out


def unpack_codes(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: signed int8 codes.

    Shapes:
        packed: (rows, cols * bits / 8). Returns: (rows, cols) int8.
    """
    if bits == 8:
        return packed
    per = 8 // bits
    mask = (1 << bits) - 1
    parts = [((packed >> (bits * i)) & mask).to(torch.int16) for i in range(per)]
    u = torch.stack(parts, dim=-1).reshape(*packed.shape[:-1], -1)[..., :cols]
    half = 1 << (bits - 1)
    return torch.where(u >= half, u - (1 << bits), u).to(torch.int8)
