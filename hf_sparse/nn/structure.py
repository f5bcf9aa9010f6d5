"""The structure of BERT-family encoders, seen and changed physically: finding each layer's attention and FFN
projections, slicing them to fewer heads or neurons, and describing (or rebuilding) a model whose layers are narrower
than its config says.

Removing a head slices the rows of its ``query`` / ``key`` / ``value`` projections and the matching columns of
``attention.output.dense``; removing an FFN neuron slices a row of ``intermediate.dense`` and a column of
``output.dense``. Why per-layer head counts work without patching transformers: ``BertSelfAttention.forward``
(transformers 5.24) reshapes with ``view(*input_shape, -1, self.attention_head_size)`` and
``reshape(*input_shape, -1)``, so the number of heads comes from the projection's width. The head *size* is
unchanged, hence so is ``scaling``. We still update the instance attributes ``num_attention_heads`` and
``all_head_size`` so that they describe the module truthfully.

Structured pruning (:mod:`hf_sparse.pruning.structured`) decides what to remove; the checkpoint description
(:mod:`hf_sparse.nn.description`) records :func:`describe_structure`, and loading calls :func:`shrink_to_structure`
on the freshly built model before its weights load.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, quote
from .replace import replace_module

__all__ = [
    "EncoderLayerParts",
    "find_encoder_layers",
    "find_layer_list",
    "plain_linear",
    "qkv_linears",
    "set_heads",
    "set_neurons",
    "describe_structure",
    "shrink_to_structure",
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


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList, list[EncoderLayerParts]] | None:
    """The first ``nn.ModuleList`` of ``model`` whose layers all have the BERT structure: its name, the list and the
    parts of each layer; ``None`` when there is none."""
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
    found = find_layer_list(model)
    if found is None:
        raise ConfigError(
            f"structured pruning does not support {type(model).__name__}: it looked for {_LOOKED_FOR}, and found none."
        )
    return found[2]


def plain_linear(parts: EncoderLayerParts, attr: str) -> nn.Linear:
    module = getattr(parts, attr)
    if type(module) is not nn.Linear:
        name = getattr(parts, f"{attr}_name", parts.attention_name + "." + attr)
        raise ConfigError(
            f"structured pruning needs plain nn.Linear layers, but {name} is a {type(module).__name__}. Prune "
            "heads, neurons and layers before pruning weights and before sparsify_."
        )
    return module


def qkv_linears(parts: EncoderLayerParts) -> dict[str, nn.Linear]:
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


def set_heads(model: nn.Module, parts: EncoderLayerParts, keep: list[int]) -> None:
    """Keep only heads ``keep`` (current indices) of one layer, in place."""
    d = parts.head_size
    rows = torch.tensor([h * d + j for h in keep for j in range(d)], dtype=torch.long)
    for n, lin in qkv_linears(parts).items():
        replace_module(model, f"{parts.attention_name}.{n}", _sliced_linear(lin, rows=rows))
    new_out = _sliced_linear(plain_linear(parts, "attention_output"), cols=rows)
    replace_module(model, parts.attention_output_name, new_out)
    parts.attention_output = new_out
    # The reshape in BertSelfAttention.forward infers the head count (view(..., -1, head_size)); these instance
    # attributes only keep the module's description true for code that reads them.
    parts.attention.num_attention_heads = len(keep)
    parts.attention.all_head_size = len(keep) * d


def set_neurons(model: nn.Module, parts: EncoderLayerParts, keep: list[int]) -> None:
    """Keep only FFN neurons ``keep`` (current indices) of one layer, in place."""
    idx = torch.tensor(keep, dtype=torch.long)
    new_inter = _sliced_linear(plain_linear(parts, "intermediate"), rows=idx)
    new_out = _sliced_linear(plain_linear(parts, "ffn_output"), cols=idx)
    replace_module(model, parts.intermediate_name, new_inter)
    replace_module(model, parts.ffn_output_name, new_out)
    parts.intermediate, parts.ffn_output = new_inter, new_out


# -- the structure description (what the checkpoint records) --------------------------------------------------------
def describe_structure(model: nn.Module) -> dict[str, Any]:
    """Per-layer sizes that differ from ``model.config`` (``num_attention_heads``, ``intermediate_size``): the
    ``structure`` entry of the hf_sparse ``quantization_config``. Empty for an unpruned or unsupported model.

    Returns:
        ``{"attention": {name: {"num_heads": k}}, "ffn": {name: {"intermediate_size": n}}}`` with only the
        non-empty keys; ``dropped_layers`` is added by the caller from the config's provenance.
    """
    found = find_layer_list(model)
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


# -- loading (used by the quantizer on the meta-device model) ------------------------------------------------------
def shrink_to_structure(model: nn.Module, structure: Mapping[str, Any], fail) -> list[str]:
    """Resize a freshly built (typically meta-device) model to the sizes of a checked ``structure`` description.

    ``fail(message)`` builds the exception to raise (the quantizer passes a :class:`FormatError` factory). Heads
    and neurons kept are the first ones: the checkpoint's tensors are already sliced, only the shapes matter here.

    Returns:
        The names of every projection structured pruning sizes, in every layer (resized or not): the caller checks
        their shapes against the files, so a layer the description leaves out (or resizes wrongly) fails by name.
    """
    found = find_layer_list(model)
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
            set_heads(model, parts, list(range(k)))
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
            set_neurons(model, parts, list(range(n)))
    for parts in found[2]:
        a = parts.attention_name
        changed += [f"{a}.query", f"{a}.key", f"{a}.value", parts.attention_output_name]
        changed += [parts.intermediate_name, parts.ffn_output_name]
    return changed
