"""Structured units as keep-masks: attention heads and FFN neurons pruned through ``PruningConfig`` while training.

``PruningConfig(granularity="head" | "neuron")`` ranks whole units by the criterion's per-weight scores summed over
the unit's weights and zeroes those weights with ordinary keep-masks, so the stock Trainer, the
:class:`~hf_sparse.PruningCallback`'s gradient masking and its checkpointed masks all work unchanged. A masked unit
contributes exactly nothing (its columns of the output projection are zero), so :func:`shrink_masked_units_` can
then remove it physically (:func:`~hf_sparse.pruning.structured.prune_heads_` /
:func:`~hf_sparse.pruning.structured.prune_neurons_`) without changing any output.

``granularity="layer"`` drops whole encoder layers; that changes the module list, so it is one-shot only
(:func:`~hf_sparse.pruning.prune_` before the Trainer is created).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, quote
from ..nn.structure import find_encoder_layers
from .structured import drop_layers_, prune_heads_, prune_neurons_

__all__ = ["Unit", "unit_modules", "unit_masks", "shrink_masked_units_", "drop_scored_layers_"]


@dataclass(frozen=True)
class Unit:
    """One head or neuron: which slices of which weights it owns.

    ``rows`` name modules whose output rows ``[start, stop)`` belong to the unit (query/key/value for a head, the
    FFN's first Linear for a neuron); ``cols`` name the output projection whose input columns ``[start, stop)`` do.
    """

    layer: int
    index: int
    rows: tuple[str, ...]
    cols: str
    start: int
    stop: int


def unit_modules(model: nn.Module, granularity: str) -> tuple[dict[str, nn.Linear], list[Unit]]:
    """The Linear layers that ``granularity`` (``"head"``, ``"neuron"`` or ``"layer"``) masks, and its units.

    For ``"layer"`` every Linear of each encoder layer is returned and the units are the layers (``index`` = layer
    index, no slices).

    Raises:
        ConfigError: the model is not a BERT-family encoder (see
            :func:`~hf_sparse.nn.structure.find_encoder_layers`).
    """
    layers = find_encoder_layers(model)
    modules: dict[str, nn.Linear] = {}
    units: list[Unit] = []
    for parts in layers:
        if granularity == "head":
            qkv = tuple(f"{parts.attention_name}.{n}" for n in ("query", "key", "value"))
            for n in qkv:
                modules[n] = model.get_submodule(n)
            modules[parts.attention_output_name] = parts.attention_output
            d = parts.head_size
            units += [
                Unit(parts.index, h, qkv, parts.attention_output_name, h * d, (h + 1) * d)
                for h in range(parts.num_heads)
            ]
        elif granularity == "neuron":
            modules[parts.intermediate_name] = parts.intermediate
            modules[parts.ffn_output_name] = parts.ffn_output
            units += [
                Unit(parts.index, j, (parts.intermediate_name,), parts.ffn_output_name, j, j + 1)
                for j in range(parts.num_neurons)
            ]
        elif granularity == "layer":
            prefix = parts.layer_name + "."
            layer_linears = {
                n: m for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)
            }
            modules.update(layer_linears)
            units.append(Unit(parts.index, parts.index, tuple(layer_linears), "", 0, 0))
        else:
            raise ConfigError(
                f"unit_modules: granularity must be 'head', 'neuron' or 'layer', got {quote(granularity)}."
            )
    return modules, units


def _unit_score(unit: Unit, scores: Mapping[str, torch.Tensor]) -> float:
    if not unit.cols:  # a whole layer: the mean, so layers of different widths compare
        total = sum(float(scores[n].float().sum()) for n in unit.rows)
        count = sum(scores[n].numel() for n in unit.rows)
        return total / max(count, 1)
    s = sum(float(scores[n][unit.start : unit.stop].float().sum()) for n in unit.rows)
    return s + float(scores[unit.cols][:, unit.start : unit.stop].float().sum())


def _is_masked(unit: Unit, masks: Mapping[str, torch.Tensor]) -> bool:
    mask = masks.get(unit.cols)
    return mask is not None and not bool(mask[:, unit.start : unit.stop].any())


@torch.no_grad()
def unit_masks(
    scores: Mapping[str, torch.Tensor],
    units: list[Unit],
    sparsity: float,
    *,
    scope: str = "global",
    previous: Mapping[str, torch.Tensor] | None = None,
    min_keep: int = 1,
) -> dict[str, torch.Tensor]:
    """Keep-masks that drop ``round(sparsity * units)`` whole units with the lowest summed scores.

    Args:
        scores: Per-weight importance of every module the units slice (higher = keep).
        units: From :func:`unit_modules` (heads or neurons).
        sparsity: Fraction of units to drop (of all units with ``scope="global"``, of each layer's with
            ``"layer"``).
        scope: ``"global"`` ranks all units together; ``"layer"`` drops the same fraction in every layer.
        previous: Earlier masks: units dropped before stay dropped (masks are monotone as sparsity grows).
        min_keep: Units every layer keeps whatever the scores (an attention layer needs at least one head).

    Returns:
        ``{module name: bool mask of its weight's shape}`` (True = keep).
    """
    ranked: dict[int, list[tuple[float, Unit]]] = {}
    for u in units:
        dropped_before = previous is not None and _is_masked(u, previous)
        score = -math.inf if dropped_before else _unit_score(u, scores)
        ranked.setdefault(u.layer, []).append((score, u))
    drop: list[Unit] = []
    if scope == "layer":
        for entries in ranked.values():
            k = min(round(sparsity * len(entries)), len(entries) - min_keep)
            drop += [u for _, u in sorted(entries, key=lambda e: e[0])[: max(k, 0)]]
    else:
        k = round(sparsity * len(units))
        budget = {layer: len(entries) - min_keep for layer, entries in ranked.items()}
        for _, u in sorted((e for entries in ranked.values() for e in entries), key=lambda e: e[0]):
            if len(drop) >= k:
                break
            if budget[u.layer] > 0:
                drop.append(u)
                budget[u.layer] -= 1
    masks = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    for u in drop:
        for n in u.rows:
            masks[n][u.start : u.stop] = False
        masks[u.cols][:, u.start : u.stop] = False
    return masks


@torch.no_grad()
def shrink_masked_units_(model: nn.Module, *, min_heads: int = 1) -> dict[str, dict[int, int]]:
    """Remove, physically, every head and FFN neuron whose columns of the output projection are all zero.

    Such a unit adds nothing to the layer's output, so removing it (and its query/key/value or intermediate rows)
    leaves every output unchanged, while the model gets smaller and faster. A layer keeps at least ``min_heads``
    heads (the least-zero ones, whose contribution is zero anyway). The new sizes are recorded in the model config
    (see :mod:`~hf_sparse.pruning.structured`), so ``save_pretrained`` / ``from_pretrained`` rebuild the shape.

    Returns:
        ``{"heads": {layer: heads left}, "neurons": {layer: neurons left}}`` for the layers that changed.
    """
    layers = find_encoder_layers(model)
    heads: dict[int, list[int]] = {}
    neurons: dict[int, list[int]] = {}
    for parts in layers:
        w = parts.attention_output.weight.detach()
        d = parts.head_size
        dead = [h for h in range(parts.num_heads) if not bool(w[:, h * d : (h + 1) * d].any())]
        dead = dead[: max(parts.num_heads - min_heads, 0)]
        if dead:
            heads[parts.index] = dead
        w = parts.ffn_output.weight.detach()
        dead_neurons = (~w.any(dim=0)).nonzero().flatten().tolist()
        if dead_neurons:
            neurons[parts.index] = dead_neurons
    out = {"heads": {}, "neurons": {}}
    if heads:
        out["heads"] = prune_heads_(model, heads)
    if neurons:
        out["neurons"] = prune_neurons_(model, neurons)
    return out


@torch.no_grad()
def drop_scored_layers_(
    model: nn.Module, scores: Mapping[str, torch.Tensor], units: list[Unit], sparsity: float
) -> list[int]:
    """Drop the ``round(sparsity * layers)`` encoder layers with the lowest mean weight score (at least one layer
    stays). Returns the indices dropped (in the model's numbering before the call)."""
    k = min(round(sparsity * len(units)), len(units) - 1)
    ranked = sorted(units, key=lambda u: _unit_score(u, scores))
    drop = sorted(u.index for u in ranked[:k])
    if drop:
        drop_layers_(model, drop)
    return drop
