"""Pruning schedules: the target sparsity as a function of the optimizer step. Pure functions, no torch."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from ..registry import Registry
from .config import PruningConfig

__all__ = ["cubic_sparsity", "oneshot_sparsity", "sparsity_at", "SCHEDULES"]

SCHEDULES: Registry[Callable[[PruningConfig, int], float]] = Registry("pruning schedule")


def cubic_sparsity(
    step: int, *, initial: float, final: float, start_step: int, end_step: int, update_every: int = 1
) -> float:
    """Gradual pruning schedule of Zhu & Gupta (2017), "To prune, or not to prune".

    ``s(t) = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0)) ** 3`` for ``t_0 <= t < t_end``, evaluated only at
    update points ``t = t_0 + k * update_every`` (the value holds between them). Before ``t_0`` nothing is pruned;
    from ``t_end`` on the sparsity is ``s_f``. ``start_step == end_step`` is one-shot pruning at that step.

    Args:
        step: Completed optimizer steps.
        initial: Sparsity at ``start_step``.
        final: Sparsity from ``end_step`` on.
        start_step, end_step: First and last step of the ramp.
        update_every: Steps between mask updates.
    """
    if update_every < 1:
        raise ConfigError(f"update_every must be >= 1, got {update_every}.")
    if end_step < start_step:
        raise ConfigError(f"end_step ({end_step}) must be >= start_step ({start_step}).")
    if step < start_step:
        return 0.0
    if step >= end_step:
        return final
    last_update = start_step + ((step - start_step) // update_every) * update_every
    progress = (last_update - start_step) / (end_step - start_step)
    return final + (initial - final) * (1.0 - progress) ** 3


def oneshot_sparsity(step: int, *, final: float, start_step: int) -> float:
    """Zero before ``start_step``, ``final`` from then on."""
    return final if step >= start_step else 0.0


@SCHEDULES.register("cubic")
def _cubic(config: PruningConfig, step: int) -> float:
    return cubic_sparsity(
        step,
        initial=config.initial_sparsity,
        final=config.sparsity,
        start_step=config.start_step,
        end_step=config.end_step,
        update_every=config.update_every,
    )


@SCHEDULES.register("oneshot")
def _oneshot(config: PruningConfig, step: int) -> float:
    return oneshot_sparsity(step, final=config.sparsity, start_step=config.start_step)


def sparsity_at(config: PruningConfig, step: int) -> float:
    """Target sparsity of ``config``'s schedule after ``step`` optimizer steps."""
    return SCHEDULES.get(config.schedule)(config, step)
