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
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, quote
from ..nn.roles import refuse, roles_for
from ..nn.structure import check_plain, find_layers, head_slices, neuron_slices, num_neurons, weight_dim
from .structured import drop_layers_, prune_heads_, prune_neurons_

__all__ = ["Unit", "unit_modules", "unit_masks", "shrink_masked_units_", "drop_scored_layers_"]

Slice = tuple[str, int, tuple[int, ...]]  # module name, dimension of its weight, indices along it


@dataclass(frozen=True)
class Unit:
    """One head (key/value group under grouped-query attention), FFN neuron or whole layer: the slices of the
    weights it owns.

    ``slices`` are ``(module name, weight dimension, indices)``; ``out`` is the slice of the projection that reads
    the unit (the attention output's or the FFN down projection's input columns): all zero there, the unit adds
    nothing. A whole layer has ``out=None`` and slices with every index of its modules (``indices=()``).
    """

    layer: Any  # the layer's index, or "decoder.1" in a seq2seq model
    index: int
    slices: tuple[Slice, ...]
    out: Slice | None


def _as_slices(model: nn.Module, plan: Mapping[str, tuple[str, list[int]]]) -> tuple[Slice, ...]:
    return tuple(
        (name, weight_dim(model.get_submodule(name), axis), tuple(idx))
        for name, (axis, idx) in plan.items()
        if not isinstance(model.get_submodule(name), nn.Embedding)  # T5's bias table: refused below anyway
    )


def unit_modules(model: nn.Module, granularity: str) -> tuple[dict[str, nn.Module], list[Unit]]:
    """The projections that ``granularity`` (``"head"``, ``"neuron"`` or ``"layer"``) masks, and its units.

    For ``"layer"`` every Linear (GPT-2: Conv1D) of each layer is returned and the units are the layers (``index`` =
    position in the layer list).

    Raises:
        ConfigError: an unknown granularity. UnsupportedFamilyError: the family is not in the role table, or T5
            heads (a T5 stack keeps the same heads in every layer; use
            :class:`~hf_sparse.pruning.structured.StructuredPruningConfig`).
    """
    if granularity not in ("head", "neuron", "layer"):
        raise ConfigError(f"unit_modules: granularity must be 'head', 'neuron' or 'layer', got {quote(granularity)}.")
    feature = f"PruningConfig(granularity={granularity!r})"
    layers = find_layers(model)
    if granularity == "head" and roles_for(model, feature).head_bias:
        raise refuse(
            model,
            feature,
            "every self-attention layer of a T5 stack adds the position bias the first layer computes for all "
            "heads, so a stack must keep the same heads in every layer, which per-layer head masks do not; use "
            "StructuredPruningConfig(heads_fraction=...), which removes the same heads from every layer.",
        )
    modules: dict[str, nn.Module] = {}
    units: list[Unit] = []
    for parts in layers:
        if granularity == "head" and parts.attention is not None:
            att = parts.attention
            check_plain(model, att.projections, "heads")
            _, groups = att.sizes(model)
            for g in range(groups):
                slices = _as_slices(model, head_slices(model, att, [g]))
                out = next(s for s in slices if s[0] == att.o)
                units.append(Unit(parts.key, g, slices, out))
            modules.update({n: model.get_submodule(n) for n in att.projections if n != att.head_bias})
        elif granularity == "neuron" and parts.ffn is not None:
            ffn = parts.ffn
            check_plain(model, ffn.projections, "neurons")
            for j in range(num_neurons(model, ffn)):
                slices = _as_slices(model, neuron_slices(model, ffn, [j]))
                units.append(Unit(parts.key, j, slices, next(s for s in slices if s[0] == ffn.down)))
            modules.update({n: model.get_submodule(n) for n in ffn.projections})
        elif granularity == "layer":
            prefix = parts.layer_name + "."
            layer_linears = {
                n: m
                for n, m in model.named_modules()
                if n.startswith(prefix) and (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
            }
            modules.update(layer_linears)
            units.append(Unit(parts.key, parts.index, tuple((n, 0, ()) for n in layer_linears), None))
    return modules, units


def _take(t: torch.Tensor, s: Slice) -> torch.Tensor:
    return t.index_select(s[1], torch.tensor(s[2], dtype=torch.long, device=t.device))


def _unit_score(unit: Unit, scores: Mapping[str, torch.Tensor]) -> float:
    if unit.out is None:  # a whole layer: the mean, so layers of different widths compare
        total = sum(float(scores[n].float().sum()) for n, _, _ in unit.slices)
        count = sum(scores[n].numel() for n, _, _ in unit.slices)
        return total / max(count, 1)
    return sum(float(_take(scores[s[0]], s).float().sum()) for s in unit.slices)


def _is_masked(unit: Unit, masks: Mapping[str, torch.Tensor]) -> bool:
    mask = masks.get(unit.out[0]) if unit.out else None
    return mask is not None and not bool(_take(mask, unit.out).any())  # type: ignore[arg-type]


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
        for name, dim, idx in u.slices:
            mask = masks[name]
            mask.index_fill_(dim, torch.tensor(idx, dtype=torch.long, device=mask.device), False)
    return masks


@torch.no_grad()
def shrink_masked_units_(model: nn.Module, *, min_heads: int = 1) -> dict[str, dict[Any, int]]:
    """Remove, physically, every head (key/value group) and FFN neuron whose input columns of the output projection
    are all zero.

    Such a unit adds nothing to the layer's output, so removing it (and its query/key/value or up/gate rows)
    leaves every output unchanged, while the model gets smaller and faster. A layer keeps at least ``min_heads``
    heads (the least-zero ones, whose contribution is zero anyway). The new sizes are recorded in the model config
    (see :mod:`~hf_sparse.pruning.structured`), so ``save_pretrained`` / ``from_pretrained`` rebuild the shape.

    Returns:
        ``{"heads": {layer: heads left}, "neurons": {layer: neurons left}}`` for the layers that changed.
    """
    heads: dict[Any, list[int]] = {}
    neurons: dict[Any, list[int]] = {}
    for parts in find_layers(model):
        att = parts.attention
        if att is not None:
            o = model.get_submodule(att.o)
            cols = o.weight.detach()
            cols = cols if weight_dim(o, "in") == 1 else cols.t()  # (out, in)
            hq, groups = att.sizes(model)
            width = att.head_dim * att.group
            dead = [g for g in range(groups) if not bool(cols[:, g * width : (g + 1) * width].any())]
            dead = dead[: max(groups - math.ceil(min_heads / att.group), 0)]
            if dead:
                heads[parts.key] = [g * att.group + j for g in dead for j in range(att.group)]
        if parts.ffn is not None:
            down = model.get_submodule(parts.ffn.down)
            w = down.weight.detach()
            w = w if weight_dim(down, "in") == 1 else w.t()
            dead_neurons = (~w.any(dim=0)).nonzero().flatten().tolist()
            if dead_neurons:
                neurons[parts.key] = dead_neurons
    if heads and roles_for(model, "structured pruning").head_bias:
        # T5: a stack keeps the same heads in every layer, so only heads dead in all its layers can go
        by_stack: dict[str, list] = {}
        for parts in find_layers(model):
            by_stack.setdefault(parts.stack, []).append(parts.key)
        for keys in by_stack.values():
            common = set.intersection(*(set(heads.get(k, [])) for k in keys))
            for k in keys:
                heads.pop(k, None)
                if common:
                    heads[k] = sorted(common)
    out: dict[str, dict[Any, int]] = {"heads": {}, "neurons": {}}
    if heads:
        out["heads"] = prune_heads_(model, heads)
    if neurons:
        out["neurons"] = prune_neurons_(model, neurons)
    return out


@torch.no_grad()
def drop_scored_layers_(
    model: nn.Module, scores: Mapping[str, torch.Tensor], units: list[Unit], sparsity: float
) -> list:
    """Drop the ``round(sparsity * layers)`` layers with the lowest mean weight score (at least one layer stays).
    Returns the layers dropped (in the model's numbering before the call)."""
    k = min(round(sparsity * len(units)), len(units) - 1)
    ranked = sorted(units, key=lambda u: _unit_score(u, scores))
    drop = sorted(u.layer for u in ranked[:k])
    if drop:
        drop_layers_(model, drop)
    return drop
