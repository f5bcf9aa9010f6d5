"""Structured pruning that physically shrinks BERT-family encoders: attention heads, FFN neurons, whole layers.

transformers 5 removed ``PreTrainedModel.prune_heads``; this module does the same job (and more) without touching
transformers classes. Removing a head slices the rows of its ``query`` / ``key`` / ``value`` projections and the
matching columns of ``attention.output.dense``; removing an FFN neuron slices a row of ``intermediate.dense`` and a
column of ``output.dense``; dropping a layer rebuilds the encoder's ``nn.ModuleList``.

Why per-layer head counts work without patching: ``BertSelfAttention.forward`` (transformers 5.24) reshapes with
``view(*input_shape, -1, self.attention_head_size)`` and ``reshape(*input_shape, -1)``, so the number of heads comes
from the projection's width. The head *size* is unchanged, hence so is ``scaling``. We still update the instance
attributes ``num_attention_heads`` and ``all_head_size`` so that they describe the module truthfully.

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
code) rebuild the smaller model; see :mod:`hf_sparse.integrations.quantizer`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..config import BaseConfig, register_config
from ..errors import ConfigError, quote
from ..registry import METHODS

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

_LOOKED_FOR = (
    "an nn.ModuleList of encoder layers, each with a self-attention module that has `query`, `key` and `value` "
    "Linear children and `num_attention_heads` / `attention_head_size` attributes, a sibling `output.dense` "
    "projection (BertSelfOutput), and an FFN pair `intermediate.dense` -> `output.dense` (BERT, MiniLM, BertFor*)"
)


# -- discovery -----------------------------------------------------------------------------------------------------
@dataclass
class EncoderLayerParts:
    """The modules of one encoder layer that structured pruning slices, with their qualified names."""

    index: int
    layer_name: str
    attention_name: str  # the module with query/key/value (BertSelfAttention)
    attention_output_name: str  # its output projection (BertSelfOutput.dense)
    intermediate_name: str  # the FFN's first Linear (BertIntermediate.dense)
    ffn_output_name: str  # the FFN's second Linear (BertOutput.dense)
    attention: nn.Module
    attention_output: nn.Module
    intermediate: nn.Module
    ffn_output: nn.Module

    @property
    def num_heads(self) -> int:
        return int(self.attention.num_attention_heads)

    @property
    def head_size(self) -> int:
        return int(self.attention.attention_head_size)

    @property
    def num_neurons(self) -> int:
        return int(_out_features(self.intermediate))


def _out_features(module: nn.Module) -> int:
    out = getattr(module, "out_features", None)
    return int(out) if out is not None else int(module.weight.shape[0])


def _is_attention(module: nn.Module) -> bool:
    return (
        all(isinstance(getattr(module, n, None), nn.Module) for n in ("query", "key", "value"))
        and hasattr(module, "num_attention_heads")
        and hasattr(module, "attention_head_size")
    )


def _layer_parts(index: int, layer_name: str, layer: nn.Module) -> EncoderLayerParts | None:
    """The parts of one layer, or None when the layer does not have the BERT structure."""
    attentions = [(n, m) for n, m in layer.named_modules() if n and _is_attention(m)]
    if len(attentions) != 1:  # none, or cross-attention too (decoders): not a plain encoder layer
        return None
    att_name, attention = attentions[0]
    parent_name = att_name.rpartition(".")[0]
    parent = layer.get_submodule(parent_name) if parent_name else layer
    att_out = getattr(getattr(parent, "output", None), "dense", None)
    inter = getattr(getattr(layer, "intermediate", None), "dense", None)
    ffn_out = getattr(getattr(layer, "output", None), "dense", None)
    if att_out is None or inter is None or ffn_out is None or att_out is ffn_out:
        return None
    prefix = f"{layer_name}." if layer_name else ""
    return EncoderLayerParts(
        index=index,
        layer_name=layer_name,
        attention_name=prefix + att_name,
        attention_output_name=prefix + (f"{parent_name}.output.dense" if parent_name else "output.dense"),
        intermediate_name=prefix + "intermediate.dense",
        ffn_output_name=prefix + "output.dense",
        attention=attention,
        attention_output=att_out,
        intermediate=inter,
        ffn_output=ffn_out,
    )


def _find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList, list[EncoderLayerParts]] | None:
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        parts = [_layer_parts(i, f"{name}.{i}" if name else str(i), layer) for i, layer in enumerate(module)]
        if all(p is not None for p in parts):
            return name, module, parts  # type: ignore[return-value]
    return None


def find_encoder_layers(model: nn.Module) -> list[EncoderLayerParts]:
    """The encoder layers of a BERT-family model with the modules structured pruning slices, in order.

    Raises:
        ConfigError: the model does not have that structure (the message says what was looked for).
    """
    found = _find_layer_list(model)
    if found is None:
        raise ConfigError(
            f"structured pruning does not support {type(model).__name__}: it looked for {_LOOKED_FOR}, and found none."
        )
    return found[2]


def _linear(parts: EncoderLayerParts, attr: str) -> nn.Linear:
    module = getattr(parts, attr)
    if type(module) is not nn.Linear:
        name = getattr(parts, f"{attr}_name", parts.attention_name + "." + attr)
        raise ConfigError(
            f"structured pruning needs plain nn.Linear layers, but {name} is a {type(module).__name__}. Prune "
            "heads, neurons and layers before pruning weights and before sparsify_."
        )
    return module


def _qkv(parts: EncoderLayerParts) -> dict[str, nn.Linear]:
    out = {}
    for n in ("query", "key", "value"):
        module = getattr(parts.attention, n)
        if type(module) is not nn.Linear:
            raise ConfigError(
                f"structured pruning needs plain nn.Linear layers, but {parts.attention_name}.{n} is a "
                f"{type(module).__name__}. Prune heads before pruning weights and before sparsify_."
            )
        out[n] = module
    return out


# -- scores --------------------------------------------------------------------------------------------------------
def _head_rows(parts: EncoderLayerParts, t: torch.Tensor) -> torch.Tensor:
    """``t`` (rows = heads * head_size, ...) grouped per head: shape (heads, head_size * rest)."""
    return t.reshape(parts.num_heads, -1)


def head_magnitude_scores(model: nn.Module) -> dict[int, torch.Tensor]:
    """Per layer, the L2 norm of each head's weights: its rows of ``query``/``key``/``value`` and its columns of
    the attention output projection.

    Shapes:
        returns ``{layer: (num_heads,)}``.
    """
    scores = {}
    for parts in find_encoder_layers(model):
        with torch.no_grad():
            total = torch.zeros(parts.num_heads)
            for lin in _qkv(parts).values():
                total += _head_rows(parts, lin.weight.float()).pow(2).sum(1).cpu()
            out_w = _linear(parts, "attention_output").weight.float()  # (hidden, heads * head_size)
            total += _head_rows(parts, out_w.t()).pow(2).sum(1).cpu()
        scores[parts.index] = total.sqrt()
    return scores


def neuron_magnitude_scores(model: nn.Module) -> dict[int, torch.Tensor]:
    """Per layer, the L2 norm of each FFN neuron's weights: its row of ``intermediate.dense`` and its column of
    ``output.dense``.

    Shapes:
        returns ``{layer: (intermediate_size,)}``.
    """
    scores = {}
    for parts in find_encoder_layers(model):
        with torch.no_grad():
            rows = _linear(parts, "intermediate").weight.float().pow(2).sum(1)
            cols = _linear(parts, "ffn_output").weight.float().pow(2).sum(0)
        scores[parts.index] = (rows + cols).sqrt().cpu()
    return scores


def taylor_scores(
    model: nn.Module, batches: Iterable[Mapping[str, Any]]
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """First-order Taylor importance of every head and FFN neuron: ``|sum of w * dL/dw|`` over the unit's weights
    (and biases of its rows), with the gradient of the model's loss summed over ``batches``.

    This is the derivative of the loss with respect to a scale on the unit's weights, so it estimates how much the
    loss changes when the unit is removed. Run in eval mode (no dropout); the model's ``.grad`` fields and training
    mode are restored afterwards.

    Args:
        model: a BERT-family model whose forward returns ``loss`` when the batches carry ``labels``.
        batches: mappings of forward keyword arguments (``input_ids``, ``attention_mask``, ``labels``, ...).

    Returns:
        ``(head_scores, neuron_scores)``: ``{layer: (num_heads,)}`` and ``{layer: (intermediate_size,)}``.

    Raises:
        ConfigError: no batches, or a batch gives no loss (no labels).
    """
    layers = find_encoder_layers(model)
    params = [p for p in model.parameters() if p.requires_grad]
    saved_grads = [p.grad for p in params]
    was_training = model.training
    tracked: list[nn.Parameter] = []
    for parts in layers:
        for lin in [*_qkv(parts).values(), _linear(parts, "attention_output")]:
            tracked += [p for p in (lin.weight, lin.bias) if p is not None]
        for lin in (_linear(parts, "intermediate"), _linear(parts, "ffn_output")):
            tracked += [p for p in (lin.weight, lin.bias) if p is not None]
    flags = [p.requires_grad for p in tracked]
    device = next(model.parameters()).device
    n = 0
    try:
        model.eval()
        for p in params:
            p.grad = None
        for p in tracked:
            p.requires_grad_(True)
        for batch in batches:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dict(batch).items()}
            loss = getattr(model(**batch), "loss", None)
            if loss is None:
                raise ConfigError(
                    f"taylor scores need a loss: batch {n} gave none. Pass batches with `labels` (keys given: "
                    f"{sorted(batch)})."
                )
            loss.backward()
            n += 1
        if n == 0:
            raise ConfigError("taylor scores need at least one batch; `batches` was empty.")
        heads, neurons = {}, {}
        with torch.no_grad():
            for parts in layers:
                total = torch.zeros(parts.num_heads, device=device)
                for lin in _qkv(parts).values():
                    total += _head_rows(parts, lin.weight * _grad(lin.weight)).sum(1)
                    if lin.bias is not None:
                        total += _head_rows(parts, lin.bias * _grad(lin.bias)).sum(1)
                out = _linear(parts, "attention_output").weight
                total += _head_rows(parts, (out * _grad(out)).t()).sum(1)
                heads[parts.index] = total.abs().cpu()
                inter, ffn_out = _linear(parts, "intermediate"), _linear(parts, "ffn_output")
                unit = (inter.weight * _grad(inter.weight)).sum(1) + (ffn_out.weight * _grad(ffn_out.weight)).sum(0)
                if inter.bias is not None:
                    unit += inter.bias * _grad(inter.bias)
                neurons[parts.index] = unit.abs().cpu()
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
        for p, flag in zip(tracked, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return heads, neurons


def _grad(p: torch.Tensor) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


def head_importance(model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> dict[int, torch.Tensor]:
    """First-order Taylor importance of every attention head (see :func:`taylor_scores`).

    Shapes:
        returns ``{layer: (num_heads,)}``.
    """
    return taylor_scores(model, batches)[0]


# -- physical slicing ----------------------------------------------------------------------------------------------
def _sliced_linear(linear: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None):
    """A new ``nn.Linear`` holding the given rows (output features) and/or columns (input features) of ``linear``,
    on its device and dtype, with the same ``requires_grad``. Works on the meta device too."""
    weight, bias = linear.weight, linear.bias
    with torch.no_grad():
        w = weight if rows is None else weight.index_select(0, rows.to(weight.device))
        w = w if cols is None else w.index_select(1, cols.to(weight.device))
        b = None if bias is None else (bias if rows is None else bias.index_select(0, rows.to(bias.device)))
        with warnings.catch_warnings():  # a layer that loses all its neurons is a zero-element Linear: expected
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta", dtype=weight.dtype)
        new.weight = nn.Parameter(w.clone(), requires_grad=weight.requires_grad)
        if b is not None:
            new.bias = nn.Parameter(b.clone(), requires_grad=bias.requires_grad)
    new.train(linear.training)
    return new


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


def _set_heads(model: nn.Module, parts: EncoderLayerParts, keep: list[int]) -> None:
    """Keep only heads ``keep`` (current indices) of one layer, in place."""
    from ..nn import replace_module

    d = parts.head_size
    rows = torch.tensor([h * d + j for h in keep for j in range(d)], dtype=torch.long)
    for n, lin in _qkv(parts).items():
        replace_module(model, f"{parts.attention_name}.{n}", _sliced_linear(lin, rows=rows))
    new_out = _sliced_linear(_linear(parts, "attention_output"), cols=rows)
    replace_module(model, parts.attention_output_name, new_out)
    parts.attention_output = new_out
    # The reshape in BertSelfAttention.forward infers the head count (view(..., -1, head_size)); these instance
    # attributes only keep the module's description true for code that reads them.
    parts.attention.num_attention_heads = len(keep)
    parts.attention.all_head_size = len(keep) * d


def _set_neurons(model: nn.Module, parts: EncoderLayerParts, keep: list[int]) -> None:
    from ..nn import replace_module

    idx = torch.tensor(keep, dtype=torch.long)
    new_inter = _sliced_linear(_linear(parts, "intermediate"), rows=idx)
    new_out = _sliced_linear(_linear(parts, "ffn_output"), cols=idx)
    replace_module(model, parts.intermediate_name, new_inter)
    replace_module(model, parts.ffn_output_name, new_out)
    parts.intermediate, parts.ffn_output = new_inter, new_out


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
            _set_heads(model, layers[index], keep)
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
            _set_neurons(model, layers[index], keep)
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
    found = _find_layer_list(model)
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
    from ..nn import replace_module

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


# -- the structure description (what the checkpoint records) --------------------------------------------------------
def describe_structure(model: nn.Module) -> dict[str, Any]:
    """Per-layer sizes that differ from ``model.config`` (``num_attention_heads``, ``intermediate_size``): the
    ``structure`` entry of the hf_sparse ``quantization_config``. Empty for an unpruned or unsupported model.

    Returns:
        ``{"attention": {name: {"num_heads": k}}, "ffn": {name: {"intermediate_size": n}}}`` with only the
        non-empty keys; ``dropped_layers`` is added by the caller from the config's provenance.
    """
    found = _find_layer_list(model)
    config = getattr(model, "config", None)
    if found is None or config is None:
        return {}
    heads0 = getattr(config, "num_attention_heads", None)
    inter0 = getattr(config, "intermediate_size", None)
    attention, ffn = {}, {}
    for parts in found[2]:
        if heads0 is not None and parts.num_heads != heads0:
            attention[parts.attention_name] = {"num_heads": parts.num_heads}
        if inter0 is not None and parts.num_neurons != inter0:
            ffn[parts.intermediate_name] = {"intermediate_size": parts.num_neurons}
    out: dict[str, Any] = {}
    if attention:
        out["attention"] = attention
    if ffn:
        out["ffn"] = ffn
    return out


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
    from ..integrations.quantizer import HfSparseConfig, sparse_config_for

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
    layer_modules = [*_qkv(parts).values(), parts.attention_output, parts.intermediate, parts.ffn_output]
    return sum(p.numel() for m in layer_modules for p in m.parameters())


METHODS.register(StructuredPruningConfig.config_type, structured_prune_)


# -- loading (used by the quantizer on the meta-device model) ------------------------------------------------------
def shrink_to_structure(model: nn.Module, structure: Mapping[str, Any], fail) -> list[str]:
    """Resize a freshly built (typically meta-device) model to the sizes of a checked ``structure`` description.

    ``fail(message)`` builds the exception to raise (the quantizer passes a :class:`FormatError` factory). Heads
    and neurons kept are the first ones: the checkpoint's tensors are already sliced, only the shapes matter here.

    Returns:
        The names of every projection structured pruning sizes, in every layer (resized or not): the caller checks
        their shapes against the files, so a layer the description leaves out (or resizes wrongly) fails by name.
    """
    found = _find_layer_list(model)
    wanted = {**structure.get("attention", {}), **structure.get("ffn", {})}
    if found is None:
        if wanted:
            raise fail(
                f"config.json quantization_config.structure resizes modules of a {type(model).__name__}, but "
                f"hf_sparse does not find {_LOOKED_FOR} in it"
            )
        return []
    parts_by_attention = {p.attention_name: p for p in found[2]}
    parts_by_ffn = {p.intermediate_name: p for p in found[2]}
    changed: list[str] = []
    for name, spec in structure.get("attention", {}).items():
        parts = parts_by_attention.get(name)
        where = f"config.json quantization_config.structure['attention'][{quote(name)}]"
        if parts is None:
            raise fail(
                f"{where}: the model has no self-attention module {quote(name)} (its attention modules: "
                f"{sorted(parts_by_attention)[:4]}...)"
            )
        k = spec["num_heads"]
        if k > parts.num_heads:
            raise fail(f"{where}: num_heads {k} is more than the {parts.num_heads} heads the model's config gives")
        if k < parts.num_heads:
            _set_heads(model, parts, list(range(k)))
    for name, spec in structure.get("ffn", {}).items():
        parts = parts_by_ffn.get(name)
        where = f"config.json quantization_config.structure['ffn'][{quote(name)}]"
        if parts is None:
            raise fail(
                f"{where}: the model has no FFN input projection {quote(name)} (its FFN projections: "
                f"{sorted(parts_by_ffn)[:4]}...)"
            )
        n = spec["intermediate_size"]
        if n > parts.num_neurons:
            raise fail(f"{where}: intermediate_size {n} is more than the {parts.num_neurons} the model's config gives")
        if n < parts.num_neurons:
            _set_neurons(model, parts, list(range(n)))
    for parts in found[2]:
        a = parts.attention_name
        changed += [f"{a}.query", f"{a}.key", f"{a}.value", parts.attention_output_name]
        changed += [parts.intermediate_name, parts.ffn_output_name]
    return changed
