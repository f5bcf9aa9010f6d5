"""Structured pruning that physically shrinks BERT-family encoders: attention heads, FFN neurons, whole layers.

transformers 5 removed ``PreTrainedModel.prune_heads``; this module does the same job (and more) without touching
transformers classes. The slicing itself, and why per-layer head counts work without patching, is in
:mod:`hf_sparse.nn.structure`; the scores that rank heads and neurons are in
:mod:`hf_sparse.pruning.structure_scores`.

Limits (documented choices):

* At least one head per layer must remain: a self-attention with no heads cannot reshape (``view(..., -1, d)`` of an
  empty tensor is ambiguous) and the layer would still need its output projection's bias and LayerNorm. Drop the
  layer instead (``layers_to_drop``). Removing *all* FFN neurons of a layer is supported: the FFN then adds only the
  bias of ``output.dense`` before its LayerNorm, exactly what the masked model computes.
* Head and neuron indices always refer to the module *as it is now* (after earlier pruning, index 0 is the first
  remaining head), not to the original model.
* The model's Linear layers must still be ``nn.Linear``: prune structure first, then prune weights and ``sparsify_``.

Checkpoints: after pruning, ``model.config.quantization_config`` holds an hf_sparse config whose ``structure`` key
records the per-layer sizes, so ``save_pretrained`` / ``from_pretrained`` (after ``import hf_sparse``, no remote
code) rebuild the smaller model; see :mod:`hf_sparse.nn.description` and :mod:`hf_sparse.integrations.quantizer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from ..config import BaseConfig, register_config
from ..errors import ConfigError, quote
from ..nn.replace import replace_module
from ..nn.structure import (
    EncoderLayerParts,
    describe_structure,
    find_encoder_layers,
    find_layer_list,
    qkv_linears,
    set_heads,
    set_neurons,
)
from .structure_scores import head_importance, head_magnitude_scores, neuron_magnitude_scores, taylor_scores

__all__ = [
    "EncoderLayerParts",
    "find_encoder_layers",
    "head_magnitude_scores",
    "neuron_magnitude_scores",
    "head_importance",
    "taylor_scores",
    "prune_heads_",
    "prune_neurons_",
    "drop_layers_",
    "describe_structure",
    "StructuredPruningConfig",
    "structured_prune_",
]


# -- removing heads, neurons and layers ---------------------------------------------------------------------------
def _check_indices(what: str, layer: int, given: Iterable[int], size: int, unit: str) -> list[int]:
    try:
        items = list(given)
    except TypeError:
        raise ConfigError(f"{what}[{layer}] must be a list of {unit} indices, got {quote(given)}.") from None
    bad = [i for i in items if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < size]
    if bad:
        raise ConfigError(f"{what}[{layer}]: {unit} indices {bad} are out of range; layer {layer} has {size} {unit}s.")
    return sorted(set(items))


def _check_layers(what: str, mapping: Mapping[int, Any], layers: list[EncoderLayerParts]) -> None:
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{what} must map layer index -> list of indices, got {type(mapping).__name__}.")
    bad = [k for k in mapping if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(layers)]
    if bad:
        raise ConfigError(f"{what}: layer indices {bad} are out of range; the model has {len(layers)} layers.")


def prune_heads_(model: nn.Module, heads: Mapping[int, Iterable[int]]) -> dict[int, int]:
    """Remove attention heads from ``model`` in place, physically (the projections get smaller).

    Args:
        model: a BERT-family encoder (BertModel, MiniLM, BertFor* heads) with plain ``nn.Linear`` layers.
        heads: ``{layer index: [head indices to remove]}``; indices refer to the heads the layer has now.

    Returns:
        ``{layer index: number of heads left}`` for the layers touched.

    Raises:
        ConfigError: unsupported model, an index out of range, or every head of a layer named (a layer keeps at
            least one head: drop the whole layer with :func:`drop_layers_` instead).
    """
    layers = find_encoder_layers(model)
    _check_layers("prune_heads_ heads", heads, layers)
    plans = {}
    for index, given in heads.items():
        parts = layers[index]
        remove = _check_indices("prune_heads_ heads", index, given, parts.num_heads, "head")
        keep = [h for h in range(parts.num_heads) if h not in remove]
        if not keep:
            raise ConfigError(
                f"prune_heads_: removing all {parts.num_heads} heads of layer {index} is not supported (the "
                "attention cannot reshape an empty projection). Keep at least one head, or drop the layer with "
                "drop_layers_ / StructuredPruningConfig.layers_to_drop."
            )
        plans[index] = keep
    for index, keep in plans.items():  # validate everything before changing anything
        if len(keep) < layers[index].num_heads:
            set_heads(model, layers[index], keep)
    _record_structure(model)
    return {index: len(keep) for index, keep in plans.items()}


def prune_neurons_(model: nn.Module, neurons: Mapping[int, Iterable[int]]) -> dict[int, int]:
    """Remove FFN neurons (rows of ``intermediate.dense``, columns of ``output.dense``) in place, physically.

    Removing every neuron of a layer is allowed: its FFN then adds only ``output.dense``'s bias.

    Args:
        neurons: ``{layer index: [neuron indices to remove]}``; indices refer to the layer's current neurons.

    Returns:
        ``{layer index: number of neurons left}`` for the layers touched.

    Raises:
        ConfigError: unsupported model or an index out of range.
    """
    layers = find_encoder_layers(model)
    _check_layers("prune_neurons_ neurons", neurons, layers)
    plans = {}
    for index, given in neurons.items():
        parts = layers[index]
        remove = _check_indices("prune_neurons_ neurons", index, given, parts.num_neurons, "neuron")
        plans[index] = [j for j in range(parts.num_neurons) if j not in remove]
    for index, keep in plans.items():
        if len(keep) < layers[index].num_neurons:
            set_neurons(model, layers[index], keep)
    _record_structure(model)
    return {index: len(keep) for index, keep in plans.items()}


def drop_layers_(model: nn.Module, layers_to_drop: Iterable[int]) -> list[int]:
    """Remove whole encoder layers in place: rebuilds the layer ``nn.ModuleList``, renumbers the remaining layers'
    ``layer_idx`` (used by caches) and sets ``config.num_hidden_layers`` to the new count, so that a checkpoint of
    the result is a standard model of that depth.

    Returns:
        The dropped (original) indices, sorted.

    Raises:
        ConfigError: unsupported model, an index out of range, or every layer named.
    """
    found = find_layer_list(model)
    if found is None:
        find_encoder_layers(model)  # raises the explanatory ConfigError
    list_name, module_list, _ = found  # type: ignore[misc]
    n = len(module_list)
    drop = _check_indices("drop_layers_ layers_to_drop", -1, layers_to_drop, n, "layer") if layers_to_drop else []
    if len(drop) == n:
        raise ConfigError(f"drop_layers_: cannot drop all {n} layers of the encoder; keep at least one.")
    if not drop:
        return []
    kept = [layer for i, layer in enumerate(module_list) if i not in drop]
    replace_module(model, list_name, nn.ModuleList(kept))
    for new_index, layer in enumerate(kept):
        for sub in layer.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = new_index
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(kept)
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, (list, tuple)) and len(layer_types) == n:
            config.layer_types = [t for i, t in enumerate(layer_types) if i not in drop]
    previous = _dropped_so_far(model)
    dropped = _compose_dropped(previous, drop)
    # Kept on the model instance too: a model with only dropped layers has no quantization_config to hold them, and
    # narrower layers pruned later should still record which original layers are gone.
    model._hf_sparse_dropped_layers = dropped
    _record_structure(model, dropped=dropped)
    return drop


def _dropped_so_far(model: nn.Module) -> list[int]:
    recorded = _structure_of_config(model).get("dropped_layers")
    if recorded is None:
        recorded = getattr(model, "_hf_sparse_dropped_layers", [])
    return list(recorded)


def _compose_dropped(previous: list[int], drop: list[int]) -> list[int]:
    """Original indices of all dropped layers, given those dropped before and new drops in current indices."""
    remaining = [i for i in range(max(drop) + len(previous) + 1) if i not in previous]
    return sorted({*previous, *(remaining[i] for i in drop)})


# -- recording the structure in model.config (what the checkpoint says) ------------------------------------------
def _structure_of_config(model: nn.Module) -> dict[str, Any]:
    qconfig = getattr(getattr(model, "config", None), "quantization_config", None)
    structure = getattr(qconfig, "structure", None)
    return dict(structure) if isinstance(structure, dict) else {}


def _record_structure(model: nn.Module, dropped: list[int] | None = None) -> None:
    """Refresh ``model.config.quantization_config`` so that ``save_pretrained`` records the new sizes.

    A model with only dropped layers (no narrower layer, no sparse module) is a standard model of smaller depth and
    gets no quantization_config: any transformers install loads it correctly.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return
    from ..nn.description import HfSparseConfig, sparse_config_for  # imported here: it imports transformers

    previous = getattr(config, "quantization_config", None)
    if previous is not None and not isinstance(previous, HfSparseConfig):
        raise ConfigError(
            f"structured pruning cannot record its sizes: the model already has a {type(previous).__name__} "
            "quantization_config. Prune structure before quantizing."
        )
    new = sparse_config_for(model, dropped_layers=dropped if dropped is not None else _dropped_so_far(model))
    if new.modules or new.structure and set(new.structure) != {"dropped_layers"}:
        config.quantization_config = new
    elif previous is not None:
        del config.quantization_config  # nothing left that needs hf_sparse to load


# -- one-shot config and apply_ handler -----------------------------------------------------------------------------
@register_config("structured_pruning")
@dataclasses.dataclass(frozen=True)
class StructuredPruningConfig(BaseConfig):
    """One-shot structured pruning of a BERT-family encoder that physically shrinks it.

    Args:
        heads_fraction: fraction of attention heads to remove, in [0, 1).
        neurons_fraction: fraction of FFN neurons to remove, in [0, 1].
        criterion: ``"magnitude"`` (L2 norm of the unit's weights, no data) or ``"taylor"`` (first-order Taylor,
            ``|sum w * dL/dw|``, needs ``batches`` with labels: call :func:`structured_prune_` directly).
        scope: ``"layer"`` removes the same fraction in every layer; ``"global"`` ranks units of all layers together
            after dividing each layer's scores by their L2 norm (scores of different layers have different scales).
        min_heads_per_layer: heads every layer keeps, at least 1 (a layer cannot lose all its heads).
        layers_to_drop: encoder layers to remove entirely (original indices), before heads and neurons are scored.

    Raises:
        ConfigError: a value outside its range, naming the field.
    """

    heads_fraction: float = 0.0
    neurons_fraction: float = 0.0
    criterion: Literal["magnitude", "taylor"] = "magnitude"
    scope: Literal["global", "layer"] = "layer"
    min_heads_per_layer: int = 1
    layers_to_drop: tuple[int, ...] = ()

    def validate(self) -> None:
        if not 0.0 <= self.heads_fraction < 1.0:
            raise ConfigError(
                f"StructuredPruningConfig.heads_fraction must be in [0, 1), got {self.heads_fraction} (every layer "
                "keeps at least one head; use layers_to_drop to remove layers)."
            )
        if not 0.0 <= self.neurons_fraction <= 1.0:
            raise ConfigError(
                f"StructuredPruningConfig.neurons_fraction must be in [0, 1], got {self.neurons_fraction}."
            )
        if self.min_heads_per_layer < 1:
            raise ConfigError(
                f"StructuredPruningConfig.min_heads_per_layer must be >= 1, got {self.min_heads_per_layer}."
            )
        if any(i < 0 for i in self.layers_to_drop) or len(set(self.layers_to_drop)) != len(self.layers_to_drop):
            raise ConfigError(
                f"StructuredPruningConfig.layers_to_drop must be distinct non-negative layer indices, got "
                f"{list(self.layers_to_drop)}."
            )


def _choose(scores: dict[int, torch.Tensor], fraction: float, scope: str, min_keep: int) -> dict[int, list[int]]:
    """Indices to remove per layer: the lowest-scoring ``fraction`` of units, each layer keeping ``min_keep``."""
    if fraction <= 0.0:
        return {}
    if scope == "layer":
        out = {}
        for index, s in scores.items():
            n = min(int(round(fraction * s.numel())), max(s.numel() - min_keep, 0))
            out[index] = sorted(torch.argsort(s, stable=True)[:n].tolist())
        return out
    candidates = []
    for index, s in scores.items():
        norm = float(s.norm()) or 1.0
        order = torch.argsort(s, stable=True).tolist()
        # the min_keep best units of each layer are never candidates
        for j in order[: max(s.numel() - min_keep, 0)]:
            candidates.append((float(s[j]) / norm, index, j))
    total = sum(s.numel() for s in scores.values())
    n = min(int(round(fraction * total)), len(candidates))
    candidates.sort()
    out: dict[int, list[int]] = {index: [] for index in scores}
    for _, index, j in candidates[:n]:
        out[index].append(j)
    return {k: sorted(v) for k, v in out.items()}


def _param_count(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def structured_prune_(
    model: nn.Module, config: StructuredPruningConfig, batches: Iterable[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """Shrink ``model`` in place as ``config`` says: drop layers, then score and remove heads and FFN neurons.

    Also the ``apply_`` handler for :class:`StructuredPruningConfig` (``hf_sparse.apply_(model, config)``; with the
    ``"taylor"`` criterion call this function with ``batches``).

    Args:
        model: a BERT-family encoder with plain ``nn.Linear`` layers.
        config: what to remove.
        batches: for ``criterion="taylor"``, mappings of forward keyword arguments including ``labels``.

    Returns:
        A report: ``params_before`` / ``params_after`` (parameter counts), ``dropped_layers`` (original indices), and
        ``layers``: per remaining layer ``{"layer", "heads_before", "heads_kept", "neurons_before",
        "neurons_kept", "params_before", "params_after"}`` where ``heads_kept`` / ``neurons_kept`` are the indices
        (before this call, after dropping layers) that remain.

    Raises:
        ConfigError: unsupported model, taylor without batches, or a bad config.
    """
    if not isinstance(config, StructuredPruningConfig):
        raise ConfigError(f"structured_prune_ needs a StructuredPruningConfig, got {type(config).__name__}.")
    layers = find_encoder_layers(model)
    if config.criterion == "taylor" and batches is None:
        raise ConfigError(
            "StructuredPruningConfig.criterion='taylor' needs data: call "
            "hf_sparse.pruning.structured.structured_prune_(model, config, batches) with batches that have labels "
            "(apply_ has no data to pass), or use criterion='magnitude'."
        )
    too_far = [i for i in config.layers_to_drop if i >= len(layers)]
    if too_far:
        raise ConfigError(
            f"StructuredPruningConfig.layers_to_drop: layers {too_far} do not exist; the model has {len(layers)}."
        )
    params_before = _param_count(model)
    dropped = drop_layers_(model, config.layers_to_drop)
    layers = find_encoder_layers(model)
    before = {p.index: (p.num_heads, p.num_neurons, _layer_params(p)) for p in layers}
    remove_heads: dict[int, list[int]] = {}
    remove_neurons: dict[int, list[int]] = {}
    if config.heads_fraction > 0 or config.neurons_fraction > 0:
        if config.criterion == "taylor":
            head_scores, neuron_scores = taylor_scores(model, batches or ())
        else:
            head_scores, neuron_scores = head_magnitude_scores(model), neuron_magnitude_scores(model)
        remove_heads = _choose(head_scores, config.heads_fraction, config.scope, config.min_heads_per_layer)
        remove_neurons = _choose(neuron_scores, config.neurons_fraction, config.scope, 0)
        prune_heads_(model, remove_heads)
        prune_neurons_(model, remove_neurons)
    report_layers = []
    for parts in find_encoder_layers(model):
        heads_before, neurons_before, p_before = before[parts.index]
        report_layers.append(
            {
                "layer": parts.index,
                "heads_before": heads_before,
                "heads_kept": [h for h in range(heads_before) if h not in remove_heads.get(parts.index, ())],
                "neurons_before": neurons_before,
                "neurons_kept": [j for j in range(neurons_before) if j not in remove_neurons.get(parts.index, ())],
                "params_before": p_before,
                "params_after": _layer_params(parts),
            }
        )
    return {
        "params_before": params_before,
        "params_after": _param_count(model),
        "dropped_layers": dropped,
        "layers": report_layers,
    }


def _layer_params(parts: EncoderLayerParts) -> int:
    layer_modules = [*qkv_linears(parts).values(), parts.attention_output, parts.intermediate, parts.ffn_output]
    return sum(p.numel() for m in layer_modules for p in m.parameters())
