"""Structured pruning that physically shrinks transformer models of every family the module-role table
(:mod:`hf_sparse.nn.roles`) knows: attention heads, FFN neurons, whole layers.

transformers 5 removed ``PreTrainedModel.prune_heads``; this module does the same job (and more) without touching
transformers classes. The slicing itself, what each family's units own, and why per-layer head counts work without
patching, are in :mod:`hf_sparse.nn.structure`; the scores that rank heads and neurons are in
:mod:`hf_sparse.pruning.structure_scores`.

Naming layers: in a model with one layer list a layer is its index (``{3: [0, 1]}``); in a seq2seq model (T5,
BART) it is ``"encoder.3"`` or ``"decoder.1"`` -- a bare index is ambiguous there and is refused.

Limits (documented choices):

* At least one head per layer must remain: a self-attention with no heads cannot reshape (``view(..., -1, d)`` of an
  empty tensor is ambiguous) and the layer would still need its output projection's bias and LayerNorm. Drop the
  layer instead (``layers_to_drop``). Removing *all* FFN neurons of a layer is supported: the FFN then adds only the
  bias of its down projection, exactly what the masked model computes.
* Grouped-query attention (Llama, Mistral, Qwen, Gemma, Phi-3): the unit removed is a key/value group -- its key and
  value head and the ``num_heads / num_kv_heads`` query heads that read it. A head set that splits a group is
  refused; the scores rank groups.
* T5 adds, in every layer, the relative position bias the first layer computes for all heads: the heads removed must
  be the same in every self-attention layer of a stack (the bias table loses the same columns). Dropping a stack's
  first block moves its bias table to the block that becomes first (same outputs). Decoder cross-attention heads
  are not pruned.
* ALBERT runs one shared layer as every layer: its layer list has one entry, layer 0, and removing heads or neurons
  of it changes every repetition. Dropping layers lowers the number of repetitions (any ``k`` of them: they are the
  same layer), with one layer group only.
* GPT-2 with ``scale_attn_by_inverse_layer_idx`` scales each layer by its index, fixed when the model is built:
  dropping a layer that renumbers later ones is refused.
* DeBERTa-v2's ``pos_key_proj`` / ``pos_query_proj`` lose the same head rows as the key / query projections.
* Head and neuron indices always refer to the module *as it is now* (after earlier pruning, index 0 is the first
  remaining head), not to the original model.
* The model's projections must still be ``nn.Linear`` (or GPT-2's ``Conv1D``): prune structure first, then prune
  weights and ``sparsify_``. Task heads (ModernBERT's ``head.dense``, classifiers) and embeddings are never pruned.

Checkpoints: after pruning, ``model.config.quantization_config`` holds an hf_sparse config whose ``structure`` key
records the per-layer sizes, so ``save_pretrained`` / ``from_pretrained`` (after ``import hf_sparse``, no remote
code) rebuild the smaller model; see :mod:`hf_sparse.nn.description` and :mod:`hf_sparse.integrations.quantizer`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from ..config import BaseConfig, register_config
from ..errors import ConfigError, quote
from ..nn.replace import replace_module
from ..nn.roles import layer_lists, refuse, roles_for
from ..nn.structure import (
    EncoderLayerParts,
    LayerParts,
    check_plain,
    check_tied_heads,
    describe_structure,
    find_encoder_layers,
    find_layers,
    num_neurons,
    set_heads,
    set_neurons,
    stack_names,
)
from .structure_scores import head_importance, head_magnitude_scores, neuron_magnitude_scores, taylor_scores

__all__ = [
    "EncoderLayerParts",
    "LayerParts",
    "find_encoder_layers",
    "find_layers",
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

LayerKey = int | str
HEADS_FEATURE = "structured pruning of attention heads"
LAYERS_FEATURE = "dropping layers"


# -- naming layers -------------------------------------------------------------------------------------------------
def _check_indices(what: str, layer: LayerKey, given: Iterable[int], size: int, unit: str) -> list[int]:
    try:
        items = list(given)
    except TypeError:
        raise ConfigError(f"{what}[{quote(layer)}] must be a list of {unit} indices, got {quote(given)}.") from None
    bad = [i for i in items if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < size]
    if bad:
        raise ConfigError(
            f"{what}[{quote(layer)}]: {unit} indices {bad} are out of range; layer {layer} has {size} {unit}s."
        )
    return sorted(set(items))


def _resolve(model: nn.Module, layers: list[LayerParts], keys: Iterable[Any], what: str) -> dict[Any, LayerParts]:
    """The layer each key names: an index in a model with one layer list, ``"encoder.3"`` / ``"decoder.1"`` in one
    with several (a bare index there is ambiguous: refused, naming the lists)."""
    by_key = {p.key: p for p in layers}
    stacks = list(dict.fromkeys(p.stack for p in layers))
    out = {}
    for key in keys:
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise ConfigError(f"{what}: layer keys are integers or 'encoder.3'-style names, got {quote(key)}.")
        if isinstance(key, int) and stacks != [""]:
            raise refuse(
                model,
                what,
                f"layer {key} is ambiguous: the model has the layer lists {stacks}; name one, e.g. "
                f"{quote(f'{stacks[-1]}.{key}')}.",
            )
        if key not in by_key:
            counts = {s or "layers": sum(p.stack == s for p in layers) for s in stacks}
            raise ConfigError(f"{what}: layer indices [{quote(key)}] are out of range; the model has {counts}.")
        out[key] = by_key[key]
    return out


def _check_mapping(what: str, mapping: Any) -> None:
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{what} must map layer -> list of indices, got {type(mapping).__name__}.")


# -- removing heads, neurons and layers ---------------------------------------------------------------------------
def prune_heads_(model: nn.Module, heads: Mapping[LayerKey, Iterable[int]]) -> dict[LayerKey, int]:
    """Remove self-attention heads from ``model`` in place, physically (the projections get smaller).

    Args:
        model: a model of a family in the module-role table, with plain ``nn.Linear`` (GPT-2: ``Conv1D``)
            projections.
        heads: ``{layer: [query head indices to remove]}``; indices refer to the heads the layer has now. Under
            grouped-query attention the set must consist of whole key/value groups (query heads ``g * r`` to
            ``g * r + r - 1`` for group ``g``, ``r = num_heads / num_kv_heads``).

    Returns:
        ``{layer: number of (query) heads left}`` for the layers touched.

    Raises:
        ConfigError: an index out of range, or every head of a layer named (a layer keeps at least one head: drop
            the whole layer with :func:`drop_layers_` instead).
        UnsupportedFamilyError: the family is not in the role table, a head set splits a key/value group, or T5
            layers of one stack would keep different heads.
    """
    _check_mapping("prune_heads_ heads", heads)
    layers = find_layers(model, HEADS_FEATURE)
    targets = _resolve(model, layers, heads, "prune_heads_ heads")
    plans: dict[LayerKey, tuple[LayerParts, list[int], list[int]]] = {}
    for key, given in heads.items():
        parts = targets[key]
        att = parts.attention
        if att is None:
            raise refuse(model, HEADS_FEATURE, f"layer {parts.layer_name} has no self-attention the role table knows.")
        hq, hkv = att.sizes(model)
        remove = _check_indices("prune_heads_ heads", key, given, hq, "head")
        r = att.group
        groups = sorted({h // r for h in remove})
        split = [g for g in groups if any(g * r + j not in remove for j in range(r))]
        if split:
            whole = sorted(g * r + j for g in split for j in range(r))
            raise refuse(
                model,
                HEADS_FEATURE,
                f"layer {key}: heads {remove} split key/value groups {split}; under grouped-query attention "
                f"{r} query heads share each key/value head and the unit removed is the whole group (here: heads "
                f"{whole}).",
            )
        keep = [g for g in range(hkv) if g not in groups]
        if not keep:
            raise ConfigError(
                f"prune_heads_: removing all {hq} heads of layer {key} is not supported (the attention cannot "
                "reshape an empty projection). Keep at least one head, or drop the layer with drop_layers_ / "
                "StructuredPruningConfig.layers_to_drop."
            )
        if len(keep) < hkv:
            check_plain(model, att.projections, "heads")
        plans[key] = (parts, keep, remove)
    if roles_for(model, HEADS_FEATURE).head_bias:
        _check_same_heads_per_stack(model, layers, {k: v[2] for k, v in plans.items()})
    for parts, keep, _ in plans.values():  # validate everything before changing anything
        set_heads(model, parts, keep)
    _record_structure(model)
    return {key: len(keep) * parts.attention.group for key, (parts, keep, _) in plans.items()}  # type: ignore


def _check_same_heads_per_stack(model: nn.Module, layers: list[LayerParts], remove: dict[LayerKey, list[int]]):
    """T5: every self-attention layer of a stack adds the position bias of the first layer's heads, by position, so
    the layers of a stack must lose the same heads (see :func:`~hf_sparse.nn.structure.check_tied_heads`)."""
    for stack in dict.fromkeys(p.stack for p in layers):
        keys = [p.key for p in layers if p.stack == stack and p.attention is not None]
        asked = {k: remove.get(k, []) for k in keys}
        if len({tuple(v) for v in asked.values()}) > 1:
            where = f"the {stack} stack" if stack else "the model"
            raise refuse(
                model,
                HEADS_FEATURE,
                f"every self-attention layer of {where} must lose the same heads, because the first layer computes "
                f"the relative position bias of all heads once and every layer adds it; asked: {asked}.",
            )
    counts = {p.key: p.attention.sizes(model)[0] - len(remove.get(p.key, [])) for p in layers if p.attention}
    check_tied_heads(model, layers, counts, lambda message: refuse(model, HEADS_FEATURE, message))


def prune_neurons_(model: nn.Module, neurons: Mapping[LayerKey, Iterable[int]]) -> dict[LayerKey, int]:
    """Remove FFN neurons in place, physically: the neuron's row of the up projection (and of the gate, or of both
    halves of a fused gate-and-up projection) and its column of the down projection.

    Removing every neuron of a layer is allowed: its FFN then adds only the down projection's bias.

    Args:
        neurons: ``{layer: [neuron indices to remove]}``; indices refer to the layer's current neurons.

    Returns:
        ``{layer: number of neurons left}`` for the layers touched.

    Raises:
        ConfigError: an index out of range. UnsupportedFamilyError: the family is not in the role table.
    """
    _check_mapping("prune_neurons_ neurons", neurons)
    layers = find_layers(model, "structured pruning of FFN neurons")
    targets = _resolve(model, layers, neurons, "prune_neurons_ neurons")
    plans = {}
    for key, given in neurons.items():
        parts = targets[key]
        if parts.ffn is None:
            raise refuse(
                model, "structured pruning of FFN neurons", f"layer {parts.layer_name} has no FFN the table knows."
            )
        n = num_neurons(model, parts.ffn)
        remove = _check_indices("prune_neurons_ neurons", key, given, n, "neuron")
        if remove:
            check_plain(model, parts.ffn.projections, "neurons")
        plans[key] = (parts, [j for j in range(n) if j not in remove])
    for parts, keep in plans.values():
        set_neurons(model, parts, keep)
    _record_structure(model)
    return {key: len(keep) for key, (_, keep) in plans.items()}


def drop_layers_(model: nn.Module, layers_to_drop: Iterable[LayerKey]) -> list[LayerKey]:
    """Remove whole layers in place: rebuilds the layer ``nn.ModuleList`` (s), renumbers the remaining layers'
    ``layer_idx`` (the key of their KV-cache entry) and sets the config's layer count (``num_hidden_layers``; a
    seq2seq decoder's ``num_decoder_layers`` / ``decoder_layers``) and ``layer_types``, so that a checkpoint of the
    result is a standard model of that depth and ``generate()`` with a cache still works.

    Returns:
        The dropped layers (indices as given, in the model's numbering before the call), sorted.

    Raises:
        ConfigError: an index out of range, or every layer of a list named.
        UnsupportedFamilyError: a bare index in a seq2seq model, an ALBERT model with several layer groups, or
            GPT-2 scaling attention by the layer index.
    """
    given = list(layers_to_drop) if layers_to_drop else []
    if not given:
        return []
    entry = roles_for(model, LAYERS_FEATURE)
    if entry.shared_layers:
        return _drop_shared_layers(model, given)
    layers = find_layers(model, LAYERS_FEATURE)
    lists = layer_lists(model, entry)
    stacks = stack_names(lists)
    if stacks == [""]:
        drop_by_stack = {"": _check_indices("drop_layers_ layers_to_drop", -1, given, len(layers), "layer")}
    else:
        targets = _resolve(model, layers, given, "drop_layers_ layers_to_drop")
        drop_by_stack = {}
        for parts in targets.values():
            drop_by_stack.setdefault(parts.stack, []).append(parts.index)
    plans = []
    for stack, (list_name, module_list) in zip(stacks, lists):
        drop = sorted(set(drop_by_stack.get(stack, [])))
        if not drop:
            continue
        n = len(module_list)
        if len(drop) == n:
            where = f"the {stack}" if stack else "the model"
            raise ConfigError(f"drop_layers_: cannot drop all {n} layers of {where}; keep at least one.")
        config = getattr(model, "config", None)
        kept = [i for i in range(n) if i not in drop]
        if getattr(config, "scale_attn_by_inverse_layer_idx", False) and any(i != j for j, i in enumerate(kept)):
            raise refuse(
                model,
                LAYERS_FEATURE,
                "config.scale_attn_by_inverse_layer_idx scales each layer's attention by 1 / (layer index + 1), fixed "
                "when the model is built, so renumbering the remaining layers would change them; only trailing "
                f"layers can be dropped (asked: {drop}).",
            )
        if 0 in drop:
            _check_first_layer(model, module_list[0], module_list[kept[0]], entry.head_bias)
        plans.append((stack, list_name, module_list, drop, kept))
    for stack, list_name, module_list, drop, kept in plans:
        if entry.head_bias and 0 in drop:
            _move_head_bias(module_list[0], module_list[kept[0]], entry.head_bias)
        new = nn.ModuleList([module_list[i] for i in kept])
        replace_module(model, list_name, new)
        for new_index, layer in enumerate(new):
            for sub in layer.modules():
                if hasattr(sub, "layer_idx"):
                    sub.layer_idx = new_index
        _set_depth(model, list_name, stack, len(module_list), drop)
    if stacks != [""]:
        _record_structure(model)
        return sorted(given)
    drop = drop_by_stack[""]
    dropped = _compose_dropped(_dropped_so_far(model), drop)
    # Kept on the model instance too: a model with only dropped layers has no quantization_config to hold them, and
    # narrower layers pruned later should still record which original layers are gone.
    model._hf_sparse_dropped_layers = dropped
    _record_structure(model, dropped=dropped)
    return drop


def _check_first_layer(model: nn.Module, first: nn.Module, new_first: nn.Module, head_bias: str | None) -> None:
    """Some families build their first layer unlike the others (ModernBERT's has no attention LayerNorm): a
    checkpoint whose first layer is another one would reload with the first-layer build and lose (or lack)
    weights, so such a drop is refused. T5's bias table moves with the drop (:func:`_move_head_bias`)."""

    def names(layer: nn.Module) -> set[str]:
        return {n for n, _ in layer.named_parameters() if not (head_bias and head_bias in n.split("."))}

    old, new = names(first), names(new_first)
    if old != new:
        raise refuse(
            model,
            LAYERS_FEATURE,
            f"its first layer is built differently from the others (only the first has {sorted(old - new)[:3]}, "
            f"only the others have {sorted(new - old)[:3]}), so a model whose first layer is dropped would not "
            "reload as it runs; keep layer 0.",
        )


def _move_head_bias(first: nn.Module, new_first: nn.Module, attr: str) -> None:
    """T5: the first block's self-attention owns the relative position bias table; the block that becomes first
    takes it over (the bias every layer adds is unchanged)."""
    for name, module in first.named_modules():
        table = getattr(module, attr, None)
        if isinstance(table, nn.Module) and getattr(module, "has_relative_attention_bias", False):
            target = new_first.get_submodule(name)
            setattr(target, attr, table)
            target.has_relative_attention_bias = True


def _set_depth(model: nn.Module, list_name: str, stack: str, before: int, drop: list[int]) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    after = before - len(drop)
    if stack == "decoder":
        attrs = [a for a in ("num_decoder_layers", "decoder_layers") if hasattr(config, a)]
    else:
        attrs = ["num_hidden_layers"] if hasattr(config, "num_hidden_layers") else []
    for attr in attrs:
        setattr(config, attr, after)
    layer_types = getattr(config, "layer_types", None)
    if not stack and isinstance(layer_types, (list, tuple)) and len(layer_types) == before:
        config.layer_types = [t for i, t in enumerate(layer_types) if i not in drop]
    # T5 builds each stack with its own copy of the config (num_layers): keep it true as well
    parent_name = list_name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    own = getattr(parent, "config", None)
    if own is not None and own is not config and getattr(own, "num_layers", None) == before:
        own.num_layers = after


def _drop_shared_layers(model: nn.Module, given: list) -> list[int]:
    """ALBERT: the layers are repetitions of one shared layer, so dropping any ``k`` of them is running it ``k``
    times fewer (``config.num_hidden_layers``)."""
    config = model.config
    if getattr(config, "num_hidden_groups", 1) != 1 or getattr(config, "inner_group_num", 1) != 1:
        raise refuse(
            model,
            LAYERS_FEATURE,
            "with several layer groups (num_hidden_groups / inner_group_num > 1) the repetitions are not all the "
            "same layer, and the group each repetition runs is computed from the layer count.",
        )
    n = int(config.num_hidden_layers)
    drop = _check_indices("drop_layers_ layers_to_drop", -1, given, n, "layer")
    if len(drop) == n:
        raise ConfigError(f"drop_layers_: cannot drop all {n} layers of the model; keep at least one.")
    config.num_hidden_layers = n - len(drop)
    dropped = _compose_dropped(_dropped_so_far(model), drop)
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
    """One-shot structured pruning that physically shrinks a model of any family in the module-role table.

    Args:
        heads_fraction: fraction of attention heads to remove, in [0, 1) (of key/value groups under grouped-query
            attention; T5 removes the same heads in every layer of a stack, ranked by their summed scores).
        neurons_fraction: fraction of FFN neurons to remove, in [0, 1].
        criterion: ``"magnitude"`` (L2 norm of the unit's weights, no data) or ``"taylor"`` (first-order Taylor,
            ``|sum w * dL/dw|``, needs ``batches`` with labels: call :func:`structured_prune_` directly). Prefer
            ``"taylor"`` on pretrained decoders: weight norms can mislead there (SmolLM2-135M relies on some of its
            smallest-norm FFN neurons; removing 2% of layer 0's by norm multiplies its perplexity by ~5).
        scope: ``"layer"`` removes the same fraction in every layer; ``"global"`` ranks units of all layers together
            after dividing each layer's scores by their L2 norm (scores of different layers have different scales).
        min_heads_per_layer: heads every layer keeps, at least 1 (a layer cannot lose all its heads; rounded up to
            whole key/value groups).
        layers_to_drop: layers to remove entirely (original indices), before heads and neurons are scored; a
            seq2seq model needs :func:`drop_layers_` with ``"encoder.i"`` / ``"decoder.i"`` names instead.

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


def _choose(scores: dict[Any, torch.Tensor], fraction: float, scope: str, min_keep: int) -> dict[Any, list[int]]:
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
    for order_key, (index, s) in enumerate(scores.items()):
        norm = float(s.norm()) or 1.0
        order = torch.argsort(s, stable=True).tolist()
        # the min_keep best units of each layer are never candidates
        for j in order[: max(s.numel() - min_keep, 0)]:
            candidates.append((float(s[j]) / norm, order_key, j, index))
    total = sum(s.numel() for s in scores.values())
    n = min(int(round(fraction * total)), len(candidates))
    candidates.sort(key=lambda c: c[:3])
    out: dict[Any, list[int]] = {index: [] for index in scores}
    for _, _, j, index in candidates[:n]:
        out[index].append(j)
    return {k: sorted(v) for k, v in out.items()}


def _choose_tied(
    layers: list[LayerParts], scores: dict[Any, torch.Tensor], fraction: float, min_keep: int
) -> dict[Any, list[int]]:
    """T5: one choice per stack, from the heads' scores summed over the stack's layers, applied to every layer."""
    out: dict[Any, list[int]] = {}
    for stack in dict.fromkeys(p.stack for p in layers):
        keys = [p.key for p in layers if p.stack == stack and p.key in scores]
        if not keys:
            continue
        summed = torch.stack([scores[k] for k in keys]).sum(0)
        chosen = _choose({stack: summed}, fraction, "layer", min_keep)[stack]
        out.update({k: list(chosen) for k in keys})
    return out


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
        model: a model of a family in the module-role table with plain ``nn.Linear`` (GPT-2: ``Conv1D``) layers.
        config: what to remove.
        batches: for ``criterion="taylor"``, mappings of forward keyword arguments including ``labels``.

    Returns:
        A report: ``params_before`` / ``params_after`` (parameter counts), ``dropped_layers`` (original indices), and
        ``layers``: per remaining layer ``{"layer", "heads_before", "heads_kept", "neurons_before",
        "neurons_kept", "params_before", "params_after"}`` where ``layer`` is the index (``"decoder.1"`` in a
        seq2seq model) and ``heads_kept`` / ``neurons_kept`` are the (query head, neuron) indices before this call,
        after dropping layers, that remain.

    Raises:
        ConfigError: taylor without batches, or a bad config. UnsupportedFamilyError: see :func:`prune_heads_` and
            :func:`drop_layers_`.
    """
    if not isinstance(config, StructuredPruningConfig):
        raise ConfigError(f"structured_prune_ needs a StructuredPruningConfig, got {type(config).__name__}.")
    layers = find_layers(model)
    if config.criterion == "taylor" and batches is None:
        raise ConfigError(
            "StructuredPruningConfig.criterion='taylor' needs data: call "
            "hf_sparse.pruning.structured.structured_prune_(model, config, batches) with batches that have labels "
            "(apply_ has no data to pass), or use criterion='magnitude'."
        )
    entry = roles_for(model, "structured pruning")
    if config.layers_to_drop:
        stacks = list(dict.fromkeys(p.stack for p in layers))
        if stacks != [""]:
            raise refuse(
                model,
                LAYERS_FEATURE,
                f"StructuredPruningConfig.layers_to_drop {list(config.layers_to_drop)} holds bare indices, which are "
                f"ambiguous with the layer lists {stacks}; call hf_sparse.pruning.drop_layers_(model, "
                f"[{quote(stacks[-1] + '.0')}, ...]) first.",
            )
        depth = int(model.config.num_hidden_layers) if entry.shared_layers else len(layers)
        too_far = [i for i in config.layers_to_drop if i >= depth]
        if too_far:
            raise ConfigError(
                f"StructuredPruningConfig.layers_to_drop: layers {too_far} do not exist; the model has {depth}."
            )
    params_before = _param_count(model)
    dropped = drop_layers_(model, config.layers_to_drop)
    layers = find_layers(model)
    before = {p.key: (_heads(model, p), _neurons(model, p), _layer_params(model, p)) for p in layers}
    remove_heads: dict[Any, list[int]] = {}
    remove_neurons: dict[Any, list[int]] = {}
    if config.heads_fraction > 0 or config.neurons_fraction > 0:
        if config.criterion == "taylor":
            head_scores, neuron_scores = taylor_scores(model, batches or ())
        else:
            head_scores, neuron_scores = head_magnitude_scores(model), neuron_magnitude_scores(model)
        group = {p.key: p.attention.group for p in layers if p.attention is not None}
        min_groups = {k: math.ceil(config.min_heads_per_layer / r) for k, r in group.items()}
        min_keep = max(min_groups.values(), default=1)
        if config.heads_fraction <= 0:
            groups = {}
        elif entry.head_bias:
            groups = _choose_tied(layers, head_scores, config.heads_fraction, min_keep)
        else:
            groups = _choose(head_scores, config.heads_fraction, config.scope, min_keep)
        remove_heads = {k: [g * group[k] + j for g in gs for j in range(group[k])] for k, gs in groups.items() if gs}
        remove_neurons = _choose(neuron_scores, config.neurons_fraction, config.scope, 0)
        prune_heads_(model, remove_heads)
        prune_neurons_(model, {k: v for k, v in remove_neurons.items() if v})
    report_layers = []
    for parts in find_layers(model):
        heads_before, neurons_before, p_before = before[parts.key]
        report_layers.append(
            {
                "layer": parts.key,
                "heads_before": heads_before,
                "heads_kept": [h for h in range(heads_before) if h not in remove_heads.get(parts.key, ())],
                "neurons_before": neurons_before,
                "neurons_kept": [j for j in range(neurons_before) if j not in remove_neurons.get(parts.key, ())],
                "params_before": p_before,
                "params_after": _layer_params(model, parts),
            }
        )
    return {
        "params_before": params_before,
        "params_after": _param_count(model),
        "dropped_layers": dropped,
        "layers": report_layers,
    }


def _heads(model: nn.Module, parts: LayerParts) -> int:
    return parts.attention.sizes(model)[0] if parts.attention is not None else 0


def _neurons(model: nn.Module, parts: LayerParts) -> int:
    return num_neurons(model, parts.ffn) if parts.ffn is not None else 0


def _layer_params(model: nn.Module, parts: LayerParts) -> int:
    names = [*(parts.attention.projections if parts.attention else ()), *(parts.ffn.projections if parts.ffn else ())]
    return sum(p.numel() for n in names for p in model.get_submodule(n).parameters())
