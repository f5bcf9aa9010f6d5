"""Learnable hard-concrete L0 gates (Louizos et al. 2018, "Learning Sparse Neural Networks through L0
Regularization"; used for heads and FFN neurons by CoFi, Xia et al. 2022) and DropConnect, the stochastic parts of
pruning-aware training (:mod:`hf_sparse.pruning.regularization` attaches them).

The hard-concrete maths is kept in pure functions (:func:`hard_concrete_sample`,
:func:`hard_concrete_deterministic`, :func:`hard_concrete_prob_nonzero`) so it can be tested on its own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError

__all__ = [
    "HardConcreteGate",
    "DropConnect",
    "hard_concrete_sample",
    "hard_concrete_deterministic",
    "hard_concrete_prob_nonzero",
    "hard_concrete_log_alpha",
]


# -- hard-concrete maths -------------------------------------------------------------------------------------------
def hard_concrete_sample(
    log_alpha: torch.Tensor,
    *,
    temperature: float = 2.0 / 3.0,
    limits: tuple[float, float] = (-0.1, 1.1),
    eps: float = 1e-6,
) -> torch.Tensor:
    """One reparameterised sample of hard-concrete gates: ``u ~ U(0, 1)``,
    ``s = sigmoid((log u - log(1 - u) + log_alpha) / temperature)``, ``z = clamp(s * (r - l) + l, 0, 1)``.

    Differentiable with respect to ``log_alpha`` (where ``z`` is not clipped). Exact 0 and 1 occur with positive
    probability.

    Shapes:
        log_alpha: any shape ``(*)``; returns ``(*)``.
    """
    lo, hi = limits
    u = torch.rand(log_alpha.shape, device=log_alpha.device, dtype=log_alpha.dtype).clamp(eps, 1.0 - eps)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / temperature)
    return (s * (hi - lo) + lo).clamp(0.0, 1.0)


def hard_concrete_deterministic(log_alpha: torch.Tensor, *, limits: tuple[float, float] = (-0.1, 1.1)) -> torch.Tensor:
    """The test-time gate of Louizos et al.: ``clamp(sigmoid(log_alpha) * (r - l) + l, 0, 1)``.

    Shapes:
        log_alpha: ``(*)``; returns ``(*)``.
    """
    lo, hi = limits
    return (torch.sigmoid(log_alpha) * (hi - lo) + lo).clamp(0.0, 1.0)


def hard_concrete_prob_nonzero(
    log_alpha: torch.Tensor, *, temperature: float = 2.0 / 3.0, limits: tuple[float, float] = (-0.1, 1.1)
) -> torch.Tensor:
    """``P(z != 0) = sigmoid(log_alpha - temperature * log(-l / r))``: each gate's contribution to the expected L0
    norm. Differentiable; this is what the gate penalty minimises.

    Shapes:
        log_alpha: ``(*)``; returns ``(*)``.
    """
    lo, hi = limits
    return torch.sigmoid(log_alpha - temperature * math.log(-lo / hi))


def hard_concrete_log_alpha(
    keep: float, *, temperature: float = 2.0 / 3.0, limits: tuple[float, float] = (-0.1, 1.1)
) -> float:
    """The ``log_alpha`` whose probability of a non-zero gate is ``keep`` (inverse of
    :func:`hard_concrete_prob_nonzero`)."""
    lo, hi = limits
    return math.log(keep) - math.log1p(-keep) + temperature * math.log(-lo / hi)


# -- modules -------------------------------------------------------------------------------------------------------
class HardConcreteGate(nn.Module):
    """``n`` learnable hard-concrete gates: stochastic samples in training mode, the deterministic gate in eval.

    The parameter is ``scaled_log_alpha = log_alpha / lr_multiplier``; :attr:`log_alpha` is ``lr_multiplier`` times
    it in value, with the gradient passed to the parameter unscaled, so the optimizer moves ``log_alpha``
    ``lr_multiplier`` times faster than it would move a plain parameter (see
    :attr:`RegularizationConfig.gate_lr_multiplier`).

    Args:
        n: Number of gates.
        init_keep: Initial probability of a non-zero gate.
        temperature: Hard-concrete temperature ``beta``.
        limits: Stretch interval ``(l, r)``.
        lr_multiplier: Learning-rate multiplier of ``log_alpha``.
        device: Where the parameter lives (the gated layer's device).
    """

    def __init__(
        self,
        n: int,
        *,
        init_keep: float = 0.99,
        temperature: float = 2.0 / 3.0,
        limits: tuple[float, float] = (-0.1, 1.1),
        lr_multiplier: float = 1.0,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.temperature = float(temperature)
        self.limits = (float(limits[0]), float(limits[1]))
        self.lr_multiplier = float(lr_multiplier)
        init = hard_concrete_log_alpha(init_keep, temperature=self.temperature, limits=self.limits)
        self.scaled_log_alpha = nn.Parameter(torch.full((n,), init / self.lr_multiplier, device=device))

    @property
    def log_alpha(self) -> torch.Tensor:
        p = self.scaled_log_alpha
        if self.lr_multiplier == 1.0:
            return p
        # Value m * p, gradient d/dp = 1: an SGD/Adam step of size lr on p moves log_alpha by m * lr.
        return p + (self.lr_multiplier - 1.0) * p.detach()

    @torch.no_grad()
    def set_log_alpha(self, values: torch.Tensor | float) -> None:
        """Set ``log_alpha`` (e.g. to resume from values learned elsewhere, or in tests)."""
        self.scaled_log_alpha.copy_(torch.as_tensor(values, dtype=torch.float32) / self.lr_multiplier)

    def sample(self) -> torch.Tensor:
        """A stochastic sample of the gates (differentiable)."""
        return hard_concrete_sample(self.log_alpha, temperature=self.temperature, limits=self.limits)

    def deterministic(self) -> torch.Tensor:
        """The deterministic (eval) gates."""
        return hard_concrete_deterministic(self.log_alpha, limits=self.limits)

    def prob_nonzero(self) -> torch.Tensor:
        """``P(z != 0)`` of every gate (differentiable)."""
        return hard_concrete_prob_nonzero(self.log_alpha, temperature=self.temperature, limits=self.limits)

    def forward(self) -> torch.Tensor:
        """Sampled gates in training mode, deterministic gates in eval mode.

        Shapes:
            returns ``(n,)``.
        """
        return self.sample() if self.training else self.deterministic()

    def extra_repr(self) -> str:
        return (
            f"n={self.scaled_log_alpha.numel()}, temperature={self.temperature:.4g}, limits={self.limits}, "
            f"lr_multiplier={self.lr_multiplier:g}"
        )


class DropConnect(nn.Module):
    """A parametrization that drops each weight with probability ``p`` in training mode (survivors are scaled by
    ``1 / (1 - p)`` so the expected weight is unchanged) and is the identity in eval mode.

    Registered with :func:`torch.nn.utils.parametrize.register_parametrization`, so the original weight stays the
    trained parameter (``module.parametrizations.weight.original``) and removing the parametrization with
    ``leave_parametrized=False`` gives it back unchanged.

    Shapes:
        weight: any shape; returns the same shape.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"DropConnect p must be in [0, 1), got {p}.")
        self.p = float(p)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return weight
        keep = torch.empty_like(weight).bernoulli_(1.0 - self.p)
        return weight * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
