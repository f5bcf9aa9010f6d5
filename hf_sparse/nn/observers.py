"""Observers: what range of values a quantiser has to cover.

An observer sees grouped tensors (``(groups, members)``, see :func:`~hf_sparse.formats.schemes.grouped`) and
keeps a low and a high value per group as buffers (so they are saved with the model and survive a resumed run).

- ``minmax``: the exact range; across calls, the running minimum and maximum (for static activation ranges
  calibrated on several batches). For weights :class:`~hf_sparse.nn.qat.FakeQuantizer` resets it every step: a
  weight's range is that of its current values.
- ``moving_average``: an exponential moving average of each call's range (``averaging_constant`` weights the new
  call); smooths activation ranges while training.
- ``percentile``: each call's ``percentile`` and ``100 - percentile`` quantiles, then averaged like
  ``moving_average``; clips rare outliers, which at 4 bits costs less than stretching the scale over them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..formats.schemes import QuantScheme, qparams_from_range

__all__ = ["Observer", "batch_range"]

#: Above this many members per group, percentiles are taken on an evenly strided sample (kthvalue is O(n) memory).
_PERCENTILE_SAMPLE = 1 << 20


def batch_range(xg: torch.Tensor, observer: str, percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """This call's (low, high) per group.

    Shapes:
        xg: (groups, members). Returns: two (groups,) tensors.
    """
    xg = xg.detach().float()
    if observer != "percentile" or percentile >= 100.0:
        return xg.amin(dim=1), xg.amax(dim=1)
    if xg.shape[1] > _PERCENTILE_SAMPLE:
        step = -(-xg.shape[1] // _PERCENTILE_SAMPLE)
        xg = xg[:, ::step]
    n = xg.shape[1]
    k_hi = max(1, min(n, round(n * percentile / 100.0)))
    k_lo = max(1, min(n, n + 1 - k_hi))
    return xg.kthvalue(k_lo, dim=1).values, xg.kthvalue(k_hi, dim=1).values


class Observer(nn.Module):
    """Tracks a (low, high) range per group.

    Args:
        scheme: the quantisation scheme (its ``observer``, ``percentile`` and ``averaging_constant``).

    Buffers ``low`` and ``high`` are empty until the first call, then (groups,).
    """

    def __init__(self, scheme: QuantScheme):
        super().__init__()
        self.scheme = scheme
        self.register_buffer("low", torch.empty(0))
        self.register_buffer("high", torch.empty(0))

    @property
    def initialized(self) -> bool:
        return self.low.numel() > 0

    def reset(self) -> None:
        self.low = torch.empty(0, device=self.low.device)
        self.high = torch.empty(0, device=self.high.device)

    @torch.no_grad()
    def update(self, xg: torch.Tensor) -> None:
        """Fold the grouped tensor ``xg`` (groups, members) into the range."""
        lo, hi = batch_range(xg, self.scheme.observer, self.scheme.percentile)
        if not self.initialized:
            self.low, self.high = lo, hi
            return
        if self.low.shape != lo.shape:
            raise ConfigError(
                f"Observer saw {lo.numel()} groups after {self.low.numel()}: a static range needs inputs of one "
                "shape per group (use granularity 'tensor' for activations of varying length)."
            )
        if self.scheme.observer == "minmax":
            torch.minimum(self.low, lo, out=self.low)
            torch.maximum(self.high, hi, out=self.high)
        else:
            c = self.scheme.averaging_constant
            self.low.lerp_(lo, c)
            self.high.lerp_(hi, c)

    def qparams(self, bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point), each (groups, 1), for the observed range at ``bits`` (default: the scheme's)."""
        if not self.initialized:
            raise ConfigError(
                "The observer has seen no data: run calibration batches (or a training step) before asking for "
                "quantisation parameters."
            )
        scale, zero_point = qparams_from_range(self.low, self.high, bits or self.scheme.bits, self.scheme.symmetric)
        return scale.unsqueeze(1), zero_point.unsqueeze(1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The ranges start empty and take their per-group size on first use: size them from the saved state first.
        for name in ("low", "high"):
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor):
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"observer={self.scheme.observer}, groups={self.low.numel()}"
