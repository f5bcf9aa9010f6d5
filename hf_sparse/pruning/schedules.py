"""Pruning schedules: the target sparsity (and RigL's regrow fraction) as a function of the optimizer step, the
ramp's end resolved from the run's length (``end_fraction``), and the learning-rate rewinding that follows the
schedule's mask updates.

Pure functions, no torch.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from ..errors import ConfigError
from ..registry import Registry
from .config import PruningConfig

__all__ = [
    "cubic_sparsity",
    "oneshot_sparsity",
    "iterative_sparsity",
    "iterative_stage_steps",
    "rigl_regrow_fraction",
    "is_rigl_update",
    "sparsity_at",
    "SCHEDULES",
    "resolve_end_step",
    "ramp_end_step",
    "mask_update_steps",
    "lr_rewind_steps",
    "rewound_lr_factor",
    "LR_REWIND_SHAPES",
]

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


def iterative_stage_steps(*, start_step: int, end_step: int, stages: int) -> list[int]:
    """Optimizer steps at which the ``stages`` prune / fine-tune cycles prune: evenly spaced (rounded down), the
    first at ``start_step`` and the last at ``end_step`` (one stage: ``start_step``)."""
    if stages < 1:
        raise ConfigError(f"stages must be >= 1, got {stages}.")
    if end_step < start_step:
        raise ConfigError(f"end_step ({end_step}) must be >= start_step ({start_step}).")
    if stages == 1:
        return [start_step]
    return [start_step + (j * (end_step - start_step)) // (stages - 1) for j in range(stages)]


def iterative_sparsity(
    step: int, *, initial: float, final: float, start_step: int, end_step: int, stages: int
) -> float:
    """Iterative pruning: after the ``j``-th of ``stages`` stage steps (:func:`iterative_stage_steps`) the sparsity is
    ``initial + (final - initial) * j / stages``; it holds while the model fine-tunes until the next stage. Zero
    before ``start_step``; ``final`` from ``end_step`` on.

    Args:
        step: Completed optimizer steps.
        initial: Sparsity that the first stage starts from (the first stage prunes to one increment above it).
        final: Sparsity reached at the last stage.
        start_step, end_step: Steps of the first and last stage.
        stages: Number of prune / fine-tune cycles.
    """
    steps = iterative_stage_steps(start_step=start_step, end_step=end_step, stages=stages)
    reached = sum(step >= t for t in steps)
    if reached == 0:
        return 0.0
    if reached == stages:
        return final
    return initial + (final - initial) * reached / stages


def rigl_regrow_fraction(step: int, *, fraction: float, start_step: int, end_step: int) -> float:
    """RigL's cosine-decayed update fraction (Evci et al. 2020): ``fraction / 2 * (1 + cos(pi * t / T))`` with
    ``t = step - start_step`` and ``T = end_step - start_step``; zero outside ``(start_step, end_step)``."""
    if step <= start_step or step >= end_step:
        return 0.0
    progress = (step - start_step) / (end_step - start_step)
    return fraction / 2.0 * (1.0 + math.cos(math.pi * progress))


def is_rigl_update(config: PruningConfig, step: int) -> bool:
    """Whether the RigL schedule of ``config`` drops and regrows weights after ``step`` optimizer steps: every
    ``update_every`` steps strictly between ``start_step`` and ``end_step``."""
    return (
        config.schedule == "rigl"
        and config.start_step < step < config.end_step
        and (step - config.start_step) % config.update_every == 0
    )


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


@SCHEDULES.register("iterative")
def _iterative(config: PruningConfig, step: int) -> float:
    return iterative_sparsity(
        step,
        initial=config.initial_sparsity,
        final=config.sparsity,
        start_step=config.start_step,
        end_step=config.end_step,
        stages=config.stages,
    )


@SCHEDULES.register("rigl")
def _rigl(config: PruningConfig, step: int) -> float:
    # The sparsity is constant from start_step on; the mask changes through regrowth (see is_rigl_update).
    return oneshot_sparsity(step, final=config.sparsity, start_step=config.start_step)


def sparsity_at(config: PruningConfig, step: int) -> float:
    """Target sparsity of ``config``'s schedule after ``step`` optimizer steps."""
    return SCHEDULES.get(config.schedule)(config, step)


def resolve_end_step(config: PruningConfig, max_steps: int) -> PruningConfig:
    """``config`` with ``end_fraction`` turned into ``end_step = max(round(end_fraction * max_steps), start_step)``
    for a run of ``max_steps`` optimizer steps (``end_fraction`` then None); ``config`` itself without one."""
    if config.end_fraction is None:
        return config
    end = max(int(round(config.end_fraction * max_steps)), config.start_step)
    return config.replace(end_step=end, end_fraction=None)


def ramp_end_step(config: PruningConfig) -> int:
    """The optimizer step after which the schedule changes the mask no more: ``start_step`` for one-shot,
    ``end_step`` otherwise (the last cubic update or iterative stage; the end of RigL's regrowth)."""
    return config.start_step if config.schedule == "oneshot" else config.end_step


def mask_update_steps(config: PruningConfig, max_steps: int) -> list[int]:
    """The steps ``t`` in ``[0, max_steps]`` after which the callback changes the mask: where the target sparsity rises
    (and is above zero), and RigL's drop-and-regrow steps."""
    steps, previous = [], 0.0
    for t in range(max_steps + 1):
        target = sparsity_at(config, t)
        if (target != previous and target > 0) or is_rigl_update(config, t):
            steps.append(t)
        if target > 0:
            previous = target
    return steps


#: Learning-rate schedules (``TrainingArguments.lr_scheduler_type``) that rewinding restarts: the factor of the peak
#: learning rate at fraction ``p`` of a segment.
LR_REWIND_SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
}


def lr_rewind_steps(config: PruningConfig, max_steps: int) -> list[int]:
    """The steps after which ``config.lr_rewind`` sends the learning rate back to its peak (those before
    ``max_steps``): none; the end of the ramp (:func:`ramp_end_step`); or every mask update
    (:func:`mask_update_steps`)."""
    if config.lr_rewind == "end":
        end = ramp_end_step(config)
        return [end] if end < max_steps else []
    if config.lr_rewind == "each_update":
        return [t for t in mask_update_steps(config, max_steps) if t < max_steps]
    return []


def rewound_lr_factor(step: int, rewinds: list[int], max_steps: int, shape: str = "linear") -> float | None:
    """The factor of the peak learning rate for the optimizer step after ``step`` under learning-rate rewinding, or
    None before the first rewind (the original schedule holds).

    After a rewind at step ``r`` the factor restarts at 1 and decays with ``shape`` (:data:`LR_REWIND_SHAPES`) to
    0 at the next rewind, or at ``max_steps`` after the last one.

    Args:
        step: Completed optimizer steps (a ``LambdaLR``'s ``last_epoch``).
        rewinds: Sorted steps of the rewinds (:func:`lr_rewind_steps`).
        max_steps: The run's optimizer steps.
        shape: ``"linear"`` or ``"cosine"``.
    """
    i = bisect.bisect_right(rewinds, step) - 1
    if i < 0:
        return None
    start = rewinds[i]
    end = rewinds[i + 1] if i + 1 < len(rewinds) else max_steps
    progress = min(max((step - start) / max(end - start, 1), 0.0), 1.0)
    return LR_REWIND_SHAPES[shape](progress)
