"""Accuracy guard for progressive pruning: raise the sparsity stage by stage, stop when the metric drops too far.

:func:`guarded_prune_` prunes a model through increasing sparsities with one :class:`~hf_sparse.Pruner` (masks are
monotone), optionally lets the caller fine-tune after each stage, evaluates, and compares with the dense baseline.
The first stage whose drop exceeds ``max_drop`` is rejected: the model's weights and the masks go back, bit for bit,
to the last accepted stage, and pruning stops. The result records every stage for a report.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, quote
from .apply import Pruner
from .config import PruningConfig
from .criteria import CRITERIA

__all__ = ["GuardResult", "guarded_prune_"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class GuardResult:
    """What :func:`guarded_prune_` did, stage by stage.

    Args:
        baseline: The metric before any stage of this run (measured, or the ``baseline`` passed in).
        max_drop: The largest accepted drop of the metric below the baseline (in the metric's units).
        higher_is_better: Whether a larger metric is better (accuracy) or worse (loss, perplexity).
        history: One dict per evaluated stage, in order: ``stage`` (1-based), ``sparsity`` (the stage's target),
            ``measured_sparsity`` (fraction of exact zeros over the pruned layers after the stage), ``metric``,
            ``drop`` (``baseline - metric``, or ``metric - baseline`` when lower is better; positive = worse),
            ``accepted`` and ``seconds`` (pruning, fine-tuning and evaluation of the stage). Stages after a
            rejected one are not run and not listed.
        accepted_sparsity: Target sparsity of the last accepted stage (0.0 when none was accepted).
        stopped: True when a stage was rejected (and rolled back).
        stopped_at: The rejected stage's sparsity, or None when every stage was accepted.
        masks: Keep-masks of the last accepted stage, CPU bool tensors keyed by module name (empty when no stage
            was accepted); what :meth:`Pruner.state_dict` returns, ready for safetensors.
    """

    baseline: float
    max_drop: float
    higher_is_better: bool
    history: list[dict[str, Any]]
    accepted_sparsity: float
    stopped: bool
    stopped_at: float | None
    masks: dict[str, torch.Tensor]

    @property
    def accepted_metric(self) -> float:
        """The metric of the last accepted stage (the baseline when none was accepted)."""
        accepted = [h for h in self.history if h["accepted"]]
        return accepted[-1]["metric"] if accepted else self.baseline

    def to_dict(self) -> dict[str, Any]:
        """Everything but the mask tensors, as plain JSON-ready data (the masks' module names are listed)."""
        return {
            "baseline": self.baseline,
            "max_drop": self.max_drop,
            "higher_is_better": self.higher_is_better,
            "accepted_sparsity": self.accepted_sparsity,
            "accepted_metric": self.accepted_metric,
            "stopped": self.stopped,
            "stopped_at": self.stopped_at,
            "history": [dict(h) for h in self.history],
            "masked_modules": list(self.masks),
        }

    def to_markdown(self, metric_name: str = "metric") -> str:
        """A section for a ``report.md``: one table row per stage and a sentence saying where and why it stopped.

        Args:
            metric_name: What the metric is called in the table header (``"accuracy"``, ``"perplexity"``...).
        """
        direction = "higher is better" if self.higher_is_better else "lower is better"
        lines = [
            "## Accuracy guard",
            "",
            f"Baseline {metric_name}: {self.baseline:.4f} ({direction}); largest accepted drop: {self.max_drop:g}.",
            "",
            f"| stage | target sparsity | measured sparsity | {metric_name} | drop | accepted | time |",
            "|---|---|---|---|---|---|---|",
        ]
        for h in self.history:
            lines.append(
                f"| {h['stage']} | {100 * h['sparsity']:.1f}% | {100 * h['measured_sparsity']:.1f}% | "
                f"{h['metric']:.4f} | {h['drop']:+.4f} | {'yes' if h['accepted'] else '**no**'} | "
                f"{h['seconds']:.1f} s |"
            )
        lines.append("")
        if self.stopped:
            lines.append(
                f"Stopped at {100 * self.stopped_at:.1f}% sparsity (drop above {self.max_drop:g}); the model was "
                f"rolled back to {100 * self.accepted_sparsity:.1f}%."
            )
        else:
            lines.append(f"Every stage was accepted; final sparsity {100 * self.accepted_sparsity:.1f}%.")
        lines.append("")
        return "\n".join(lines)


def _check_stages(sparsities: Sequence[float], max_drop: float) -> list[float]:
    stages = [float(s) for s in sparsities]
    if not stages:
        raise ConfigError("guarded_prune_: sparsities is empty; pass the increasing stages, e.g. [0.5, 0.7, 0.9].")
    for s in stages:
        if not 0.0 <= s < 1.0:
            raise ConfigError(f"guarded_prune_: every sparsity must be in [0, 1), got {s} in {stages}.")
    for a, b in zip(stages, stages[1:]):
        if not b > a:
            raise ConfigError(
                f"guarded_prune_: sparsities must be strictly increasing (masks only grow), got {a} then {b} in "
                f"{stages}."
            )
    if not (isinstance(max_drop, (int, float)) and not isinstance(max_drop, bool) and max_drop >= 0):
        # ``not >=`` also rejects NaN.
        raise ConfigError(f"guarded_prune_: max_drop must be a number >= 0, got {quote(max_drop)}.")
    return stages


def as_metric(value: Any, where: str, who: str = "guarded_prune_") -> float:
    """``evaluate(model)``'s result as a float (a number or a one-element tensor), or a ConfigError naming ``who``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{who}: evaluate(model) must return a number ({where}), got {type(value).__name__}: {quote(value)}."
        )
    return float(value)


def _snapshot(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # On CPU: a model that barely fits its accelerator must not need a second copy there.
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


@torch.no_grad()
def _restore(live: Mapping[str, torch.Tensor], saved: Mapping[str, torch.Tensor]) -> None:
    # copy_ into the live tensors (not load_state_dict with new ones): optimizers and hooks hold these objects.
    for key, tensor in live.items():
        tensor.copy_(saved[key])


def _check_guardable(config: PruningConfig) -> None:
    """ConfigError for pruning the guard cannot roll back or run in stages."""
    if config.granularity == "layer":
        raise ConfigError(
            "guarded_prune_: PruningConfig.granularity='layer' removes encoder layers from the model, which cannot be "
            "rolled back by restoring weights; guard 'head' or 'neuron' pruning (masked, not yet removed) or a "
            "weight granularity instead."
        )
    if getattr(CRITERIA.get(config.criterion), "needs_calibration", False):
        raise ConfigError(
            f"guarded_prune_: PruningConfig.criterion={quote(config.criterion)} prunes from calibration inputs, "
            "which the "
            "guard does not collect; guard criterion='magnitude' (or 'random') stages, or prune one-shot with "
            "hf_sparse.prune_(model, config, calibration=batches) and evaluate once."
        )


def _baseline(model: nn.Module, evaluate: Callable[[nn.Module], float], baseline: float | None) -> float:
    """The dense metric: ``baseline`` if given, else measured; ConfigError unless it is a finite number."""
    if baseline is None:
        baseline = as_metric(evaluate(model), "baseline")
    else:
        baseline = as_metric(baseline, "baseline argument")
    if not math.isfinite(baseline):
        raise ConfigError(f"guarded_prune_: the baseline metric is {baseline}; it must be finite to measure drops.")
    return baseline


def _live_state(model: nn.Module, pruner: Pruner, finetuned: bool) -> dict[str, torch.Tensor]:
    """What a rejected stage must restore: the pruned modules (pruning changes only their weights) or, when the
    caller fine-tunes, the whole model. Keys are module-qualified, shared tensors appear once per owner (harmless)."""
    if not finetuned:
        return {f"{n}.{k}": v for n, m in pruner.modules.items() for k, v in m.state_dict(keep_vars=True).items()}
    return dict(model.state_dict(keep_vars=True))


def _run_stage(
    model: nn.Module,
    pruner: Pruner,
    sparsity: float,
    index: int,
    evaluate: Callable[[nn.Module], float],
    finetune: Callable[[nn.Module, Pruner, float], None] | None,
    rollback: Callable[[], None],
) -> float:
    """Prune to ``sparsity``, fine-tune if asked, and return the metric; on any exception, ``rollback()`` first."""
    try:
        pruner.prune_to(sparsity)
        if finetune is not None:
            finetune(model, pruner, sparsity)
        return as_metric(evaluate(model), f"stage {index}, sparsity {sparsity}")
    except BaseException:
        # Never leave the caller with a half-done stage (e.g. an interrupted fine-tuning).
        rollback()
        raise


def guarded_prune_(
    model: nn.Module,
    config: PruningConfig,
    sparsities: Sequence[float],
    evaluate: Callable[[nn.Module], float],
    max_drop: float,
    *,
    baseline: float | None = None,
    finetune: Callable[[nn.Module, Pruner, float], None] | None = None,
    higher_is_better: bool = True,
    progress: bool = True,
) -> GuardResult:
    """Prune ``model`` in place through increasing ``sparsities`` while the metric stays within ``max_drop`` of the
    baseline; the first stage that drops further is rolled back and pruning stops.

    For each stage: prune to its sparsity (one :class:`~hf_sparse.Pruner` for the whole run, so weights pruned in
    an earlier stage stay pruned), call ``finetune(model, pruner, sparsity)`` if given, then ``evaluate(model)``.
    The drop is ``baseline - metric`` (``metric - baseline`` with ``higher_is_better=False``); a drop above
    ``max_drop``, or a metric that is not finite, rejects the stage. Before each stage the state it starts from is
    copied to CPU, and a rejected stage restores it exactly: the parameters and buffers of the pruned modules, or
    of the whole model when ``finetune`` is given (fine-tuning may change any of them, e.g. the task head), and the
    masks of the last accepted stage. The caller's optimizer state is not rolled back.

    The stages are the schedule: the schedule fields of ``config`` are not used, and which layers, the criterion,
    granularity and scope come from it. ``config.sparsity`` matters only with ``config.layer_sparsity``, which the
    :class:`~hf_sparse.Pruner` follows in proportion: a stage at ``s`` puts a named layer with final sparsity ``t``
    at ``s * t / config.sparsity`` (so end the stages at ``config.sparsity``). With ``granularity="head"`` or
    ``"neuron"`` the units are masked, not removed, so they roll back like weights.

    Args:
        model: The model to prune, in place.
        config: What to prune and how.
        sparsities: Stage targets, strictly increasing, each in [0, 1).
        evaluate: ``evaluate(model) -> float`` on held-out data. It should put the model in eval mode itself
            (``finetune`` may leave it in train mode) and must not change the weights.
        max_drop: Largest accepted drop below the baseline, in the metric's units (``0.01`` = one accuracy point
            for an accuracy in [0, 1]), >= 0.
        baseline: The dense metric, if already known (saves one evaluation); measured with ``evaluate`` otherwise.
        finetune: ``finetune(model, pruner, sparsity)`` called after each stage's pruning and before its
            evaluation, to recover accuracy. It must keep the masks enforced (call ``pruner.apply_masks()`` after
            optimizer steps, or ``pruner.mask_gradients()`` before them).
        higher_is_better: False for metrics such as loss or perplexity.
        progress: Show a tqdm progress bar over the stages.

    Returns:
        A :class:`GuardResult` with the per-stage history and the masks of the last accepted stage.

    Raises:
        ConfigError: ``sparsities`` empty, not strictly increasing or outside [0, 1); ``max_drop`` negative;
            ``evaluate`` returns something that is not a number; ``granularity="layer"`` (removed layers cannot be
            rolled back) or a criterion that needs calibration data; or anything :class:`~hf_sparse.Pruner`
            rejects.

    If ``finetune`` or ``evaluate`` raises, the model is rolled back to the last accepted stage before the
    exception propagates, so it is never left half-way through a stage.
    """
    stages = _check_stages(sparsities, max_drop)
    _check_guardable(config)
    pruner = Pruner(model, config)
    baseline = _baseline(model, evaluate, baseline)
    sign = 1.0 if higher_is_better else -1.0
    live = _live_state(model, pruner, finetune is not None)

    history: list[dict[str, Any]] = []
    accepted_sparsity = 0.0
    accepted_masks = pruner.state_dict()
    stopped_at: float | None = None
    bar = tqdm(stages, desc="guarded pruning", disable=not progress)
    for index, sparsity in enumerate(bar, start=1):
        saved = _snapshot(live)
        start = time.perf_counter()

        def rollback(saved=saved, masks=accepted_masks, accepted=accepted_sparsity) -> None:
            _restore(live, saved)
            pruner.load_state_dict(masks, target_sparsity=accepted)

        metric = _run_stage(model, pruner, sparsity, index, evaluate, finetune, rollback)
        drop = sign * (baseline - metric)
        accepted = math.isfinite(metric) and drop <= max_drop
        history.append(
            {
                "stage": index,
                "sparsity": sparsity,
                "measured_sparsity": pruner.sparsity(),
                "metric": metric,
                "drop": drop,
                "accepted": accepted,
                "seconds": time.perf_counter() - start,
            }
        )
        bar.set_postfix(metric=f"{metric:.4f}", drop=f"{drop:+.4f}")
        if not accepted:
            rollback()
            stopped_at = sparsity
            logger.info(
                "Guarded pruning stopped at sparsity %.4f: metric %.4f, drop %.4f > %.4f; rolled back to %.4f.",
                sparsity,
                metric,
                drop,
                max_drop,
                accepted_sparsity,
            )
            break
        accepted_sparsity = sparsity
        accepted_masks = pruner.state_dict()
    bar.close()
    return GuardResult(
        baseline=baseline,
        max_drop=float(max_drop),
        higher_is_better=higher_is_better,
        history=history,
        accepted_sparsity=accepted_sparsity,
        stopped=stopped_at is not None,
        stopped_at=stopped_at,
        masks=accepted_masks,
    )
