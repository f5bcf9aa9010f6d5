"""Per-layer sensitivity scan and the per-layer sparsity allocation derived from it.

:func:`sensitivity_scan` prunes one layer at a time, alone, to a few sparsities, measures the metric each time and
puts the layer back exactly. :func:`allocate_sparsity` turns the measured curves into per-layer sparsities whose
parameter-weighted mean is a target, giving less sparsity to layers whose metric falls faster; the result is meant
for ``PruningConfig.layer_sparsity``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, quote
from ..nn.linear_like import linear_weight
from .apply import Pruner
from .config import PruningConfig
from .criteria import CRITERIA
from .granularity import STRUCTURED_GRANULARITIES, granular_masks
from .guard import as_metric

__all__ = ["SensitivityScan", "sensitivity_scan", "allocate_sparsity", "scan_layers"]


@dataclasses.dataclass
class SensitivityScan:
    """The metric of a model with one layer pruned at a time.

    Args:
        baseline: The metric of the unpruned model.
        sparsities: The scanned sparsities, increasing.
        metrics: Layer name -> the metric with only that layer pruned, one value per entry of ``sparsities``.
        params: Layer name -> number of weights in the layer (what :func:`allocate_sparsity` weighs by).
        higher_is_better: Whether a larger metric is better (accuracy) or worse (loss, perplexity).
    """

    baseline: float
    sparsities: tuple[float, ...]
    metrics: dict[str, list[float]]
    params: dict[str, int]
    higher_is_better: bool = True

    def drops(self, name: str) -> list[float]:
        """How much worse than the baseline the metric is with layer ``name`` pruned, per scanned sparsity
        (positive = worse, whichever way the metric points)."""
        sign = 1.0 if self.higher_is_better else -1.0
        return [sign * (self.baseline - m) for m in self.metrics[name]]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data that :meth:`from_dict` reads back (a scan is worth keeping: it is the slow part)."""
        return {
            "baseline": self.baseline,
            "higher_is_better": self.higher_is_better,
            "sparsities": list(self.sparsities),
            "layers": {n: {"params": self.params[n], "metrics": list(self.metrics[n])} for n in self.metrics},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityScan:
        """Read :meth:`to_dict` output back.

        Raises:
            ConfigError: a key is missing, or a layer's metrics do not match the scanned sparsities.
        """
        try:
            sparsities = _check_sparsities(data["sparsities"])
            layers = data["layers"]
            metrics = {n: [float(v) for v in layer["metrics"]] for n, layer in layers.items()}
            params = {n: int(layer["params"]) for n, layer in layers.items()}
            scan = cls(
                baseline=float(data["baseline"]),
                sparsities=sparsities,
                metrics=metrics,
                params=params,
                higher_is_better=bool(data.get("higher_is_better", True)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"SensitivityScan.from_dict: not a scan written by SensitivityScan.to_dict ({type(exc).__name__}: "
                f"{exc}). Expected keys 'baseline', 'sparsities' and 'layers' -> {{name: {{params, metrics}}}}."
            ) from None
        for name, values in scan.metrics.items():
            if len(values) != len(sparsities):
                raise ConfigError(
                    f"SensitivityScan.from_dict: layer {quote(name)} has {len(values)} metrics for {len(sparsities)} "
                    "sparsities."
                )
        return scan

    def to_markdown(self, allocation: Mapping[str, float] | None = None, metric_name: str = "metric") -> str:
        """A section for a ``report.md``: per layer, its size and the metric at each scanned sparsity (with the drop
        from the baseline), and the allocated sparsity when ``allocation`` is given."""
        head = ["layer", "params", *(f"{metric_name} @ {100 * s:.0f}%" for s in self.sparsities)]
        if allocation is not None:
            head.append("allocated sparsity")
        direction = "higher is better" if self.higher_is_better else "lower is better"
        lines = [
            "## Layer sensitivity",
            "",
            f"Each layer pruned alone; baseline {metric_name} {self.baseline:.4f} ({direction}). Cells: the metric "
            "(drop from the baseline, positive = worse).",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for name in self.metrics:
            cells = [f"`{name}`", f"{self.params[name]:,}"]
            cells += [f"{m:.4f} ({d:+.4f})" for m, d in zip(self.metrics[name], self.drops(name))]
            if allocation is not None:
                cells.append(f"{100 * allocation[name]:.1f}%" if name in allocation else "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        return "\n".join(lines)


def _check_sparsities(sparsities: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(s) for s in sparsities)
    if not values:
        raise ConfigError("sensitivity_scan: sparsities is empty; pass a few levels, e.g. (0.5, 0.7, 0.9).")
    if any(not 0.0 < s < 1.0 for s in values):
        raise ConfigError(f"sensitivity_scan: every sparsity must be in (0, 1), got {list(values)}.")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(f"sensitivity_scan: sparsities must be strictly increasing, got {list(values)}.")
    return values


def _check_scores(scores: Mapping[str, torch.Tensor], modules: Mapping[str, nn.Module]) -> None:
    missing = [n for n in modules if n not in scores]
    if missing:
        raise ConfigError(
            f"sensitivity_scan: scores has no entry for the selected layers {missing[:5]}; pass one tensor (the "
            "weight's shape) per layer the config selects."
        )
    for name, module in modules.items():
        shape = tuple(linear_weight(module).shape)  # (out, in), also for a Conv1D that stores (in, out)
        if tuple(scores[name].shape) != shape:
            raise ConfigError(
                f"sensitivity_scan: scores[{quote(name)}] has shape {tuple(scores[name].shape)}, expected the "
                f"weight's {shape} (out, in)."
            )


def sensitivity_scan(
    model: nn.Module,
    config: PruningConfig,
    evaluate: Callable[[nn.Module], float],
    sparsities: Sequence[float] = (0.5, 0.7, 0.9),
    *,
    scores: Mapping[str, torch.Tensor] | None = None,
    higher_is_better: bool = True,
    progress: bool = True,
) -> SensitivityScan:
    """Measure how much the metric suffers when each selected layer alone is pruned.

    For every layer :func:`~hf_sparse.pruning.select_modules` picks for ``config``, and every sparsity: prune only
    that layer to the sparsity (one shot, with the config's criterion and granularity, scored on the unpruned
    weights; the layer ranked on its own, i.e. ``scope="layer"``), call ``evaluate(model)``, and copy the layer's
    original weight back (bit-exact; also when ``evaluate`` raises). The model is unchanged on return.

    Costs ``1 + len(layers) * len(sparsities)`` evaluations: use a small, fixed evaluation set.

    Args:
        model: The model to scan (restored on return).
        config: Which layers and how to prune them; ``sparsity``, ``scope``, ``layer_sparsity`` and the schedule
            fields are not used.
        evaluate: ``evaluate(model) -> float`` on held-out data, deterministic (put the model in eval mode).
        sparsities: Levels to scan, strictly increasing, each in (0, 1).
        scores: Importance scores per module name (higher = keep) instead of the config's criterion, as in
            :func:`~hf_sparse.pruning.prune_`; needed for criteria that rank from gradients or calibration data.
        higher_is_better: False for metrics such as loss or perplexity.
        progress: Show a tqdm progress bar over the layers.

    Returns:
        A :class:`SensitivityScan`; pass it to :func:`allocate_sparsity`.

    Raises:
        ConfigError: bad ``sparsities``; ``granularity="nm"`` (N:M fixes every layer's sparsity at ``1 - n/m``) or a
            structured granularity; a criterion that needs gradients or calibration data without ``scores``;
            ``evaluate`` returning something other than a number; or a layer whose shape does not fit the
            granularity.
    """
    levels = _check_sparsities(sparsities)
    if config.granularity == "nm" or config.granularity in STRUCTURED_GRANULARITIES:
        raise ConfigError(
            f"sensitivity_scan: PruningConfig.granularity={quote(config.granularity)} does not take a per-layer "
            "sparsity "
            "(N:M fixes it at 1 - n/m; structured pruning removes units); scan with granularity 'unstructured' or "
            "'block'."
        )
    if scores is None and getattr(CRITERIA.get(config.criterion), "needs_calibration", False):
        raise ConfigError(
            f"sensitivity_scan: PruningConfig.criterion={quote(config.criterion)} ranks weights from calibration "
            "inputs; "
            "pass scores={name: tensor} computed from them, or scan with criterion='magnitude'."
        )
    pruner = Pruner(model, config)
    if scores is None:
        scores = pruner.compute_scores()  # raises a ConfigError for gradient criteria, naming the fix
    else:
        _check_scores(scores, pruner.modules)
    baseline = as_metric(evaluate(model), "baseline", "sensitivity_scan")
    params = {name: module.weight.numel() for name, module in pruner.modules.items()}

    def prune(name: str, weight: torch.Tensor, sparsity: float) -> str:
        (mask,) = granular_masks(
            {name: scores[name]},
            sparsity,
            granularity=config.granularity,
            scope="layer",
            block=tuple(config.block),
            n=config.n,
            m=config.m,
            reduce=config.group_reduce,
        ).values()
        weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))
        return f"sparsity {sparsity}"

    weights = {name: pruner.weight(name) for name in pruner.modules}  # (out, in) views: masks' orientation
    metrics = scan_layers(model, weights, levels, prune, evaluate, who="sensitivity_scan", progress=progress)
    return SensitivityScan(
        baseline=baseline, sparsities=levels, metrics=metrics, params=params, higher_is_better=higher_is_better
    )


def scan_layers(
    model: nn.Module,
    weights: Mapping[str, torch.Tensor],
    levels: Sequence[float],
    degrade: Callable[[str, torch.Tensor, float], str],
    evaluate: Callable[[nn.Module], float],
    *,
    who: str,
    progress: bool = True,
) -> dict[str, list[float]]:
    """The metric with each weight alone degraded at each level: ``degrade(name, weight, level)`` changes the
    weight in place (under ``no_grad``) and returns a description for errors; ``evaluate(model)`` is measured; the
    weight is copied back bit-exactly after each level (also when ``evaluate`` raises). The shared loop of the
    pruning and low-rank sensitivity scans."""
    metrics: dict[str, list[float]] = {}
    for name in tqdm(list(weights), desc=f"{who.replace('_', ' ')}", disable=not progress):
        weight = weights[name]
        # One layer's copy at a time, on its own device: cheap, and copy_ back is bit-exact.
        original = weight.detach().clone()
        metrics[name] = []
        try:
            for level in levels:
                with torch.no_grad():
                    what = degrade(name, weight.data, level)
                metrics[name].append(as_metric(evaluate(model), f"layer {quote(name)} at {what}", who))
                with torch.no_grad():
                    weight.copy_(original)
        finally:
            with torch.no_grad():
                weight.copy_(original)
    return metrics


def _drop_curve(
    sparsities: Sequence[float], drops: Sequence[float], eps: float, beyond: float
) -> tuple[np.ndarray, np.ndarray]:
    """Knots ``(s, d)`` of a layer's drop as a strictly increasing piecewise-linear function of its sparsity on
    [0, 1]: through (0, 0) and the measured points, made monotone (running maximum: a measurement that improves on
    a smaller sparsity's is noise, not a reason to prune more), tilted by ``eps * s`` so flat stretches still rank
    (more sparsity is never free), and past the last scanned sparsity rising by ``beyond`` up to s = 1."""
    xs = np.array([0.0, *sparsities, 1.0], dtype=np.float64)
    ys = np.maximum.accumulate(np.array([0.0, *drops], dtype=np.float64))
    ys = np.append(ys, ys[-1] + beyond) + eps * xs
    return xs, ys


def allocate_sparsity(
    scan: SensitivityScan,
    target: float,
    *,
    min_sparsity: float = 0.0,
    max_sparsity: float = 0.98,
) -> dict[str, float]:
    """Per-layer sparsities whose parameter-weighted mean is ``target``, less for the layers the scan found
    sensitive: the input of ``PruningConfig.layer_sparsity``.

    Method (equal-drop allocation): each layer's drop curve ``d_l(s)`` is the scan's measured drops, linearly
    interpolated between (0, 0) and the scanned sparsities, made non-decreasing (running maximum) and tilted by a
    tiny ``eps * s`` so that it is strictly increasing. For a common tolerated drop ``t`` every layer gets the
    largest sparsity with ``d_l(s) <= t``, clipped to ``[min_sparsity, max_sparsity]``. The weighted mean of those
    sparsities is continuous, non-decreasing and piecewise linear in ``t``, so the ``t`` that makes it ``target``
    is solved for exactly (between the two breakpoints that bracket it) rather than bisected. Layers that lose
    nothing over the scanned range end at the same sparsity; a layer whose metric falls early stays denser. It
    treats the layers' drops as independent (each was measured with the others dense), the usual approximation of
    a one-layer-at-a-time scan; check the pruned model's metric afterwards (e.g. with
    :func:`~hf_sparse.pruning.guarded_prune_`).

    Nothing is known past the largest scanned sparsity, and a layer that loses nothing at 90% may lose everything at
    98% (its last large weights go). So the curves are extended there by a rise far above every measured drop: no
    layer goes past the scanned range while another can still take sparsity inside it, and only a target above that
    range is spread past it (about evenly, least sensitive layers first). Scan up to the sparsities you intend to
    use.

    Args:
        scan: The output of :func:`sensitivity_scan`.
        target: The parameter-weighted mean sparsity over the scanned layers, in ``[min_sparsity, max_sparsity]``.
        min_sparsity: No layer gets less.
        max_sparsity: No layer gets more (< 1).

    Returns:
        Layer name -> sparsity, in the scan's layer order; ``sum(s * params) / sum(params)`` is ``target`` within
        1e-6.

    Raises:
        ConfigError: bounds outside ``0 <= min_sparsity <= max_sparsity < 1``, a target outside them, or a scan
            with no layers.
    """
    if not 0.0 <= min_sparsity <= max_sparsity < 1.0:
        raise ConfigError(
            f"allocate_sparsity: need 0 <= min_sparsity <= max_sparsity < 1, got min_sparsity={min_sparsity}, "
            f"max_sparsity={max_sparsity}."
        )
    if not min_sparsity <= target <= max_sparsity:
        raise ConfigError(
            f"allocate_sparsity: target={target} is outside [min_sparsity={min_sparsity}, "
            f"max_sparsity={max_sparsity}]; no per-layer sparsities within those bounds average to it."
        )
    names = [n for n in scan.metrics if scan.params.get(n, 0) > 0]
    if not names:
        raise ConfigError("allocate_sparsity: the scan has no layer with weights; run sensitivity_scan first.")
    drops = {n: scan.drops(n) for n in names}
    # The metric's units are the caller's (accuracy in [0, 1], perplexity in the tens): size the constants on them.
    scale = max([abs(d) for ds in drops.values() for d in ds if math.isfinite(d)], default=0.0) or 1.0
    # The tilt must not reorder real differences: a millionth of the largest measured drop.
    eps = 1e-6 * scale
    curves = {}
    for n in names:
        # A metric that became NaN/inf is as bad as it gets: a drop far above every measured one.
        ds = [d if math.isfinite(d) else 1e3 * scale for d in drops[n]]
        curves[n] = _drop_curve(scan.sparsities, ds, eps, beyond=1e6 * scale)
    weights = np.array([scan.params[n] for n in names], dtype=np.float64)
    weights /= weights.sum()

    def sparsities_at(t: np.ndarray) -> np.ndarray:  # (layers, len(t))
        return np.clip(np.stack([np.interp(t, ys, xs) for xs, ys in curves.values()]), min_sparsity, max_sparsity)

    # The weighted mean is piecewise linear in t, with breaks where some layer's curve has a knot or hits a bound:
    # solve exactly between the two breakpoints that bracket the target (bisection would need ~1e-12 resolution on
    # t where a flat curve's tilt makes the mean climb steeply).
    breaks = [ys for _, ys in curves.values()]
    breaks += [np.interp([min_sparsity, max_sparsity], xs, ys) for xs, ys in curves.values()]
    ts = np.unique(np.concatenate(breaks))
    means = weights @ sparsities_at(ts)
    i = int(np.clip(np.searchsorted(means, target, side="left"), 1, len(ts) - 1))
    lo, hi = means[i - 1], means[i]
    t = ts[i - 1] + (ts[i] - ts[i - 1]) * ((target - lo) / (hi - lo) if hi > lo else 0.0)
    alloc = sparsities_at(np.array([t]))[:, 0]
    return {n: float(s) for n, s in zip(names, alloc)}
