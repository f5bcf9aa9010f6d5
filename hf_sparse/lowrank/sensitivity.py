"""Per-layer ranks from a measured sensitivity scan.

:func:`rank_sensitivity_scan` replaces one Linear layer at a time, alone, by its best approximations holding a few
fractions of its values, measures the metric each time and puts the layer back exactly. :func:`allocate_ranks`
turns the measured curves into per-layer ranks (``LowRankConfig.module_ranks``) whose factors hold a target
fraction of the layers' values, giving more rank to layers whose metric falls faster. Both reuse the pruning
package's scan record and equal-drop allocation: a layer's "sparsity" here is the fraction of its values the
factorisation removes, ``1 - r (rows + cols) / (rows cols)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.linear_like import linear_weight
from ..pruning.guard import as_metric
from ..pruning.sensitivity import SensitivityScan, _check_sparsities, allocate_sparsity, scan_layers
from .config import LowRankConfig
from .proximal import project_rank_
from .ranks import rank_for_compression, round_rank

__all__ = ["rank_sensitivity_scan", "allocate_ranks"]


def _layers(model: nn.Module, config: LowRankConfig) -> dict[str, nn.Module]:
    from ..nn.matching import match_linears

    return match_linears(model, config.target_modules, config.exclude_modules, who="LowRankConfig")


def rank_sensitivity_scan(
    model: nn.Module,
    config: LowRankConfig,
    evaluate: Callable[[nn.Module], float],
    removed: Sequence[float] = (0.5, 0.75, 0.875),
    *,
    higher_is_better: bool = True,
    progress: bool = True,
) -> SensitivityScan:
    """Measure how much the metric suffers when each selected Linear layer alone is replaced by a low-rank
    approximation.

    For every layer ``config`` selects and every level ``f`` of ``removed``: project the layer's weight onto its best
    approximation of the largest rank whose two factors hold at most ``1 - f`` of its values (truncated SVD), call
    ``evaluate(model)``, and copy the original weight back (bit-exact; also when ``evaluate`` raises). The model is
    unchanged on return. Costs ``1 + len(layers) * len(removed)`` evaluations: use a small, fixed evaluation set.

    Args:
        model: The model to scan (restored on return).
        config: Which layers (``target_modules`` / ``exclude_modules``); the rank rules are not used.
        evaluate: ``evaluate(model) -> float`` on held-out data, deterministic.
        removed: Fractions of each layer's values the factorisation removes, strictly increasing, in (0, 1).
        higher_is_better: False for metrics such as loss or perplexity.
        progress: Show a tqdm progress bar over the layers.

    Returns:
        A :class:`~hf_sparse.pruning.SensitivityScan` whose ``sparsities`` are the ``removed`` levels; pass it to
        :func:`allocate_ranks`.

    Raises:
        ConfigError: bad ``removed`` levels, no selected layer, or ``evaluate`` returning something other than a
            number.
    """
    try:
        levels = _check_sparsities(removed)
    except ConfigError as exc:
        raise ConfigError(f"rank_sensitivity_scan: bad removed levels ({exc})") from None
    layers = _layers(model, config)
    baseline = as_metric(evaluate(model), "baseline", "rank_sensitivity_scan")
    params = {name: m.weight.numel() for name, m in layers.items()}

    def project(name: str, weight: torch.Tensor, level: float) -> str:
        rows, cols = weight.shape
        rank = min(rank_for_compression(rows, cols, 1.0 - level), rows, cols)
        project_rank_(weight, rank)
        return f"rank {rank}"

    weights = {name: m.weight for name, m in layers.items()}
    metrics = scan_layers(model, weights, levels, project, evaluate, who="rank_sensitivity_scan", progress=progress)
    return SensitivityScan(
        baseline=baseline, sparsities=levels, metrics=metrics, params=params, higher_is_better=higher_is_better
    )


def allocate_ranks(scan: SensitivityScan, model: nn.Module, config: LowRankConfig) -> dict[str, int]:
    """Per-layer ranks whose factors hold about ``config.compression`` of the scanned layers' values, more rank for
    the layers the scan found sensitive: the input of ``LowRankConfig.module_ranks``.

    The scan's curves go through :func:`~hf_sparse.pruning.allocate_sparsity` at a target of
    ``1 - config.compression`` removed values; each layer's fraction kept then becomes the largest rank whose
    factors fit in it, rounded down to ``config.round_to`` and at least ``config.min_rank``. A layer allocated (almost)
    all of its values gets a rank whose factors are not smaller than it, so :func:`~hf_sparse.lowrank.factorize_`
    keeps it dense. Rounding down makes the total slightly smaller than the target, never larger (except where
    ``min_rank`` lifts a rank).

    Raises:
        ConfigError: ``config`` has no ``compression`` target, or a scanned layer is not in ``model``.
    """
    if config.compression is None:
        raise ConfigError(
            "allocate_ranks: set LowRankConfig.compression (the fraction of the layers' values the factors keep); "
            "the allocation spreads it over the layers by their measured sensitivity."
        )
    layers = _layers(model, config)
    missing = [n for n in scan.metrics if n not in layers]
    if missing:
        raise ConfigError(f"allocate_ranks: scanned layers {missing[:5]} are not Linear layers this config selects.")
    removed = allocate_sparsity(scan, 1.0 - config.compression, max_sparsity=0.995)
    ranks = {}
    for name, fraction in removed.items():
        rows, cols = linear_weight(layers[name]).shape
        full = min(rows, cols)
        rank = rank_for_compression(rows, cols, max(1.0 - fraction, 1e-9))
        ranks[name] = round_rank(rank, config.round_to, config.min_rank, full)
    return ranks
