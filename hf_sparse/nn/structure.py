"""The structure of transformer layers, seen and changed physically: finding each layer's attention and FFN
projections from the module-role table (:mod:`hf_sparse.nn.roles`), slicing them to fewer heads or neurons, and
describing (or rebuilding) a model whose layers are narrower than its config says.

What one unit owns, per layout:

* **Attention head** (a key/value *group* under grouped-query attention: one key/value head and the
  ``num_heads / num_kv_heads`` query heads that read it, Llama / Mistral / Qwen / Gemma / Phi-3): its rows of the
  query / key / value projections, or the matching rows of each part of a fused projection (ModernBERT ``Wqkv``,
  GPT-2 ``c_attn``, Phi-3 ``qkv_proj``: query part, then key part, then value part), the matching input columns of
  the output projection, DeBERTa-v2's ``pos_key_proj`` / ``pos_query_proj`` rows, and T5's column of the
  ``relative_attention_bias`` table.
* **FFN neuron**: its row of the up projection (and of the gate: Llama-like ``gate_proj``, T5 ``wi_0``; of both
  halves of a fused gate-and-up projection: Phi-3 ``gate_up_proj``, ModernBERT ``Wi``) and its column of the down
  projection.

GPT-2's ``Conv1D`` stores its weight ``(in, out)``: a unit's rows are columns of that weight and the other way round.

Why per-layer head counts work without patching transformers (5.24): every supported attention reshapes its
projections with ``view(..., -1, head_dim)`` and ``reshape(..., -1)``, so the number of heads comes from the
projection's width; the head size, hence ``scaling``, is unchanged, and removing whole key/value groups keeps
``num_key_value_groups``. The instance attributes that describe the counts (``num_attention_heads``,
``all_head_size``, ``n_heads``, ``inner_dim``, GPT-2's ``split_size`` which its forward does read, ...) are updated
too. Phi-3's forward reads ``self.config.num_attention_heads``: a narrower layer gets its own view of the config with
its counts (:class:`LayerConfigView`). T5 computes the relative position bias once, in the first layer of a stack,
for every head, and adds it in every layer: a T5 stack keeps the same heads in all its layers (the bias table loses
the same columns), and other requests are refused.

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
from transformers.pytorch_utils import Conv1D

from ..errors import ConfigError, quote
from .replace import replace_module
from .roles import FamilyRoles, layer_lists, refuse, roles_for

__all__ = [
    "AttentionParts",
    "FFNParts",
    "LayerParts",
    "LayerConfigView",
    "find_layers",
    "stack_names",
    "num_neurons",
    "out_size",
    "in_size",
    "check_tied_heads",
    "head_slices",
    "neuron_slices",
    "weight_dim",
    "set_heads",
    "set_neurons",
    "check_plain",
    "describe_structure",
    "shrink_to_structure",
    "EncoderLayerParts",
    "find_encoder_layers",
    "find_layer_list",
]

FEATURE = "structured pruning"


# -- sizes of Linear / Conv1D / Embedding modules ------------------------------------------------------------------
def _is_conv1d(module: nn.Module) -> bool:
    return isinstance(module, Conv1D)


def out_size(module: nn.Module) -> int:
    """Output features of a Linear (or sparse replacement), Conv1D or Embedding (its width)."""
    if _is_conv1d(module):
        return int(module.weight.shape[1])
    if isinstance(module, nn.Embedding):
        return int(module.embedding_dim)
    out = getattr(module, "out_features", None)
    if out is None and not hasattr(module, "weight") and isinstance(getattr(module, "base_layer", None), nn.Module):
        return out_size(module.base_layer)  # a wrapper that keeps what it replaced (peft's pattern)
    return int(out) if out is not None else int(module.weight.shape[0])


def in_size(module: nn.Module) -> int:
    if _is_conv1d(module):
        return int(module.weight.shape[0])
    n = getattr(module, "in_features", None)
    if n is None and not hasattr(module, "weight") and isinstance(getattr(module, "base_layer", None), nn.Module):
        return in_size(module.base_layer)
    return int(n) if n is not None else int(module.weight.shape[1])


def weight_dim(module: nn.Module, axis: str) -> int:
    """The dimension of ``module.weight`` that holds ``axis`` (``"out"`` or ``"in"``): Conv1D and Embedding store
    outputs along dimension 1."""
    transposed = _is_conv1d(module) or isinstance(module, nn.Embedding)
    return (1 if axis == "out" else 0) if transposed else (0 if axis == "out" else 1)


# -- discovery -----------------------------------------------------------------------------------------------------
@dataclass
class AttentionParts:
    """The projections of one self-attention module, by qualified name."""

    name: str  # the attention module (parent of the query projection)
    module: nn.Module
    o: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # fused query/key/value projection
    extra_rows: tuple[str, ...] = ()  # projections with one block of head_dim rows per query head (DeBERTa-v2)
    head_bias: str | None = None  # a table with one column per query head (T5 relative_attention_bias)
    head_dim: int = 0
    group: int = 1  # query heads per key/value head

    @property
    def projections(self) -> tuple[str, ...]:
        names = (self.qkv,) if self.qkv else (self.q, self.k, self.v)
        return (*names, self.o, *self.extra_rows, *((self.head_bias,) if self.head_bias else ()))  # type: ignore

    def sizes(self, model: nn.Module) -> tuple[int, int]:
        """``(query heads, key/value heads)`` as the projections are now."""
        d, r = self.head_dim, self.group
        if self.qkv:
            kv = out_size(model.get_submodule(self.qkv)) // ((r + 2) * d)
            return kv * r, kv
        return out_size(model.get_submodule(self.q)) // d, out_size(model.get_submodule(self.k)) // d


@dataclass
class FFNParts:
    """The projections of one feed-forward block, by qualified name."""

    down: str
    up: str | None = None
    gate: str | None = None
    gate_up: str | None = None  # fused gate-and-up projection: neuron j is row j of both halves

    @property
    def key(self) -> str:
        """The name the checkpoint description uses for this FFN (its first projection)."""
        return self.gate_up or self.up  # type: ignore[return-value]

    @property
    def projections(self) -> tuple[str, ...]:
        return tuple(n for n in (self.gate_up, self.gate, self.up, self.down) if n)


@dataclass
class LayerParts:
    """One transformer layer: where it is and the parts structured pruning slices."""

    index: int  # position in its layer list
    stack: str  # "" for a model with one layer list, else "encoder" / "decoder" (or the list's name)
    list_name: str
    layer_name: str
    attention: AttentionParts | None
    ffn: FFNParts | None
    shared: bool = False  # one module runs as every layer (ALBERT)

    @property
    def key(self) -> int | str:
        """How callers name the layer: its index, or ``"decoder.1"`` in a model with several layer lists."""
        return f"{self.stack}.{self.index}" if self.stack else self.index


def stack_names(lists: list[tuple[str, nn.ModuleList]]) -> list[str]:
    """A short name per layer list: ``""`` for a single list, else ``"encoder"`` / ``"decoder"`` (the list's
    full name when neither word is in it)."""
    if len(lists) <= 1:
        return [""] * len(lists)
    out = []
    for name, _ in lists:
        parts = name.split(".")
        out.append(next((p for p in parts if p in ("encoder", "decoder")), name))
    return out


def _config_value(config: Any, attr: str, stack: str) -> Any:
    """``attr`` of ``config`` for one stack: a seq2seq decoder reads the ``decoder_`` twin of an ``encoder_``
    attribute (BART ``decoder_attention_heads``)."""
    if stack == "decoder" and attr.startswith("encoder_"):
        twin = "decoder_" + attr.removeprefix("encoder_")
        if hasattr(config, twin):
            return getattr(config, twin)
    return getattr(config, attr, None)


def _one(model: nn.Module, found: dict[str, list[str]], role: str, layer_name: str) -> str | None:
    names = found.get(role, [])
    if len(names) > 1:
        raise refuse(model, FEATURE, f"layer {layer_name} has several modules in role {role!r}: {names[:4]}.")
    return names[0] if names else None


def _head_dim(model: nn.Module, attention: nn.Module, entry: FamilyRoles, stack: str) -> int:
    for attr in ("head_dim", "attention_head_size", "key_value_proj_dim"):
        value = getattr(attention, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    config = model.config
    value = getattr(config, "head_dim", None)
    if isinstance(value, int) and value > 0:
        return value
    heads = _config_value(config, entry.heads_attr, stack)
    hidden = getattr(config, "hidden_size", None)
    if not (isinstance(heads, int) and heads > 0 and isinstance(hidden, int)):
        raise refuse(model, FEATURE, f"the head size of {type(attention).__name__} cannot be read from the model.")
    return hidden // heads


def _group(model: nn.Module, entry: FamilyRoles) -> int:
    if not entry.kv_heads_attr:
        return 1
    heads = getattr(model.config, entry.heads_attr, None)
    kv = getattr(model.config, entry.kv_heads_attr, None) or heads
    if not isinstance(heads, int) or not isinstance(kv, int) or kv <= 0 or heads % kv:
        raise refuse(
            model, FEATURE, f"config {entry.heads_attr}={heads} is not a multiple of {entry.kv_heads_attr}={kv}."
        )
    return int(heads // kv)


def find_layers(model: nn.Module, feature: str = FEATURE) -> list[LayerParts]:
    """Every transformer layer of ``model`` (all its layer lists, in model order) with the projections structured
    pruning slices, found through the module-role table.

    Raises:
        UnsupportedFamilyError: the family has no table entry, no layer list was found, or a layer's roles are
            ambiguous.
    """
    entry = roles_for(model, feature)
    lists = layer_lists(model, entry)
    if not lists or not any(len(m) for _, m in lists):
        raise refuse(model, feature, f"no layer list matching {list(entry.layers)} was found in the model.")
    out: list[LayerParts] = []
    group = _group(model, entry) if entry.roles else 1
    for stack, (list_name, modules) in zip(stack_names(lists), lists):
        for i, layer in enumerate(modules):
            prefix = f"{list_name}.{i}"
            found: dict[str, list[str]] = {}
            for rel, _ in layer.named_modules():
                role = entry.role_of(rel) if rel else "other"
                if role != "other":
                    found.setdefault(role, []).append(f"{prefix}.{rel}")
            att = None
            q, qkv, o = (_one(model, found, r, prefix) for r in ("attention.q", "attention.qkv", "attention.o"))
            if (q or qkv) and o:
                first = (q or qkv).rpartition(".")[0]  # type: ignore[union-attr]
                module = model.get_submodule(first)
                extra = tuple(
                    n for r in ("attention.pos_q", "attention.pos_k") for n in [_one(model, found, r, prefix)] if n
                )
                bias = None
                if entry.head_bias and isinstance(getattr(module, entry.head_bias, None), nn.Embedding):
                    bias = f"{first}.{entry.head_bias}"
                att = AttentionParts(
                    name=first,
                    module=module,
                    o=o,
                    q=q,
                    k=_one(model, found, "attention.k", prefix),
                    v=_one(model, found, "attention.v", prefix),
                    qkv=qkv,
                    extra_rows=extra,
                    head_bias=bias,
                    head_dim=_head_dim(model, module, entry, stack),
                    group=group,
                )
                if q and not (att.k and att.v):
                    raise refuse(model, feature, f"layer {prefix} has a query projection but no key/value pair.")
            ffn = None
            down = _one(model, found, "mlp.down", prefix)
            up, gate, gate_up = (_one(model, found, r, prefix) for r in ("mlp.up", "mlp.gate", "mlp.gate_up"))
            if down and (up or gate_up):
                ffn = FFNParts(down=down, up=up, gate=gate, gate_up=gate_up)
            out.append(LayerParts(i, stack, list_name, prefix, att, ffn, shared=entry.shared_layers))
    return out


def check_plain(model: nn.Module, names: tuple[str, ...], unit: str) -> None:
    """Raise a :class:`ConfigError` unless every module in ``names`` is a plain ``nn.Linear`` (a ``Conv1D`` or the
    T5 bias table where the layout has one): structured slicing works on dense weights only."""
    for name in names:
        module = model.get_submodule(name)
        if type(module) is nn.Linear or type(module) is nn.Embedding or _is_conv1d(module):
            continue
        raise ConfigError(
            f"structured pruning needs plain nn.Linear layers, but {name} is a {type(module).__name__}. Prune "
            f"{unit} before pruning weights and before sparsify_."
        )


# -- which weight slices a unit owns -------------------------------------------------------------------------------
def _rows(units: list[int], size: int, offset: int = 0) -> list[int]:
    return [offset + u * size + j for u in units for j in range(size)]


def head_slices(model: nn.Module, att: AttentionParts, groups: list[int]) -> dict[str, tuple[str, list[int]]]:
    """What key/value groups ``groups`` (current indices; a group is one head without grouped-query attention)
    own: ``{module name: (axis, indices)}`` with ``axis`` ``"out"`` (rows, and bias) or ``"in"`` (columns)."""
    d, r = att.head_dim, att.group
    hq, hkv = att.sizes(model)
    q_heads = [g * r + j for g in groups for j in range(r)]
    q_rows, kv_rows = _rows(q_heads, d), _rows(groups, d)
    out: dict[str, tuple[str, list[int]]] = {}
    if att.qkv:
        rows = q_rows + [hq * d + x for x in kv_rows] + [(hq + hkv) * d + x for x in kv_rows]
        out[att.qkv] = ("out", rows)
    else:
        out[att.q], out[att.k], out[att.v] = ("out", q_rows), ("out", kv_rows), ("out", kv_rows)  # type: ignore
    out[att.o] = ("in", q_rows)
    for name in att.extra_rows:
        out[name] = ("out", q_rows)
    if att.head_bias:
        out[att.head_bias] = ("out", q_heads)
    return out


def neuron_slices(model: nn.Module, ffn: FFNParts, neurons: list[int]) -> dict[str, tuple[str, list[int]]]:
    """What FFN neurons ``neurons`` own: ``{module name: (axis, indices)}`` (see :func:`head_slices`)."""
    out: dict[str, tuple[str, list[int]]] = {}
    if ffn.gate_up:
        n = out_size(model.get_submodule(ffn.gate_up)) // 2
        out[ffn.gate_up] = ("out", list(neurons) + [n + j for j in neurons])
    for name in (ffn.gate, ffn.up):
        if name:
            out[name] = ("out", list(neurons))
    out[ffn.down] = ("in", list(neurons))
    return out


def num_neurons(model: nn.Module, ffn: FFNParts) -> int:
    """The FFN's current width (the down projection's input features)."""
    return in_size(model.get_submodule(ffn.down))


# -- physical slicing ----------------------------------------------------------------------------------------------
def _sliced(module: nn.Module, axis: str, keep: torch.Tensor) -> nn.Module:
    """A copy of ``module`` (Linear, Conv1D or Embedding) that keeps only the ``keep`` outputs (``axis="out"``,
    with their bias) or inputs (``"in"``), on its device and dtype, with the same ``requires_grad``. Works on the
    meta device too."""
    weight, bias = module.weight, getattr(module, "bias", None)
    dim = weight_dim(module, axis)
    with torch.no_grad():
        w = weight.index_select(dim, keep.to(weight.device))
        b = bias if bias is None or axis == "in" else bias.index_select(0, keep.to(bias.device))
        with warnings.catch_warnings(), torch.device("meta"):  # an FFN that loses every neuron has zero elements
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            if isinstance(module, nn.Embedding):
                new = nn.Embedding(w.shape[0], w.shape[1], dtype=weight.dtype)
            elif _is_conv1d(module):
                new = type(module)(w.shape[1], w.shape[0])
            else:
                new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=weight.dtype)
        new.weight = nn.Parameter(w.clone(), requires_grad=weight.requires_grad)
        if b is not None:
            new.bias = nn.Parameter(b.clone(), requires_grad=bias.requires_grad)
    new.train(module.training)
    return new


def _apply_slices(model: nn.Module, plan: Mapping[str, tuple[str, list[int]]]) -> None:
    for name, (axis, keep) in plan.items():
        replace_module(model, name, _sliced(model.get_submodule(name), axis, torch.tensor(keep, dtype=torch.long)))


class LayerConfigView:
    """The model config as one attention layer sees it, with that layer's own head counts: for a family whose
    attention reads the counts from ``self.config`` at run time (Phi-3). Every other attribute is the model's
    config (reads and writes go through), so a later ``set_attn_implementation`` still reaches the layer."""

    def __init__(self, base: Any, **counts: int) -> None:
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_counts", dict(counts))

    def __getattr__(self, name: str) -> Any:
        counts = object.__getattribute__(self, "_counts")
        if name in counts:
            return counts[name]
        return getattr(object.__getattribute__(self, "_base"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_base"), name, value)

    def __repr__(self) -> str:
        return f"LayerConfigView({object.__getattribute__(self, '_counts')})"


_HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
_HEAD_WIDTH_ATTRS = ("all_head_size", "inner_dim", "split_size")


def set_heads(model: nn.Module, parts: LayerParts, keep_groups: list[int]) -> None:
    """Keep only key/value groups ``keep_groups`` (current indices; heads without grouped-query attention) of one
    layer's self-attention, in place."""
    att = parts.attention
    if att is None:
        raise refuse(model, FEATURE, f"layer {parts.layer_name} has no self-attention the role table knows.")
    hq, hkv = att.sizes(model)
    drop = [g for g in range(hkv) if g not in keep_groups]
    if not drop:
        return
    _apply_slices(model, head_slices(model, att, sorted(keep_groups)))
    new_q, new_kv = len(keep_groups) * att.group, len(keep_groups)
    module = att.module
    # Most forwards infer the head count from the projection's width (view(..., -1, head_dim)); these attributes
    # keep the module's description true, and GPT-2's split_size is read by its forward.
    for attr in _HEAD_COUNT_ATTRS:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, new_q)
    if isinstance(getattr(module, "num_key_value_heads", None), int):
        module.num_key_value_heads = new_kv
    for attr in _HEAD_WIDTH_ATTRS:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, new_q * att.head_dim)
    entry = roles_for(model, FEATURE)
    if entry.attention_reads_config:
        base = module.config
        base = object.__getattribute__(base, "_base") if isinstance(base, LayerConfigView) else base
        counts = {entry.heads_attr: new_q}
        if entry.kv_heads_attr:
            counts[entry.kv_heads_attr] = new_kv
        module.config = LayerConfigView(base, **counts)


def set_neurons(model: nn.Module, parts: LayerParts, keep: list[int]) -> None:
    """Keep only FFN neurons ``keep`` (current indices) of one layer, in place."""
    if parts.ffn is None:
        raise refuse(model, FEATURE, f"layer {parts.layer_name} has no feed-forward block the role table knows.")
    if len(keep) < num_neurons(model, parts.ffn):
        _apply_slices(model, neuron_slices(model, parts.ffn, sorted(keep)))


# -- the structure description (what the checkpoint records) --------------------------------------------------------
def _default_heads(model: nn.Module, entry: FamilyRoles, stack: str) -> int | None:
    value = _config_value(model.config, entry.heads_attr, stack)
    return int(value) if isinstance(value, int) else None


def _default_neurons(model: nn.Module, entry: FamilyRoles, stack: str) -> int | None:
    value = _config_value(model.config, entry.ffn_attr, stack)
    if value is None and entry.ffn_attr == "n_inner":  # GPT2MLP is 4 * n_embd wide when n_inner is None
        value = 4 * int(model.config.hidden_size)
    return int(value) if isinstance(value, int) else None


def describe_structure(model: nn.Module) -> dict[str, Any]:
    """Per-layer sizes that differ from ``model.config``: the ``structure`` entry of the hf_sparse
    ``quantization_config``. Empty for an unpruned model or a family without a role-table entry.

    Returns:
        ``{"attention": {attention module: {"num_heads": query heads}}, "ffn": {first FFN projection:
        {"intermediate_size": n}}}`` with only the non-empty keys; ``dropped_layers`` is added by the caller.
    """
    config = getattr(model, "config", None)
    if config is None:
        return {}
    try:
        layers = find_layers(model)
    except ConfigError:
        return {}
    entry = roles_for(model, FEATURE)
    attention, ffn = {}, {}
    for parts in layers:
        if parts.attention is not None:
            heads0 = _default_heads(model, entry, parts.stack)
            heads = parts.attention.sizes(model)[0]
            if heads0 is not None and heads != heads0:
                attention[parts.attention.name] = {"num_heads": heads}
        if parts.ffn is not None:
            inter0 = _default_neurons(model, entry, parts.stack)
            n = num_neurons(model, parts.ffn)
            if inter0 is not None and n != inter0:
                ffn[parts.ffn.key] = {"intermediate_size": n}
    out: dict[str, Any] = {}
    if attention:
        out["attention"] = attention
    if ffn:
        out["ffn"] = ffn
    return out


def check_tied_heads(model: nn.Module, layers: list[LayerParts], heads: Mapping[Any, int], fail) -> None:
    """For a family whose first layer computes a per-head bias every layer adds (T5), refuse head counts that
    differ between the layers of one stack. ``heads`` maps layer key -> query heads it will have."""
    entry = roles_for(model, FEATURE)
    if not entry.head_bias:
        return
    for stack in dict.fromkeys(p.stack for p in layers if p.attention is not None):
        counts = {p.key: heads.get(p.key, p.attention.sizes(model)[0]) for p in layers if p.stack == stack}
        if len(set(counts.values())) > 1:
            where = f"the {stack} stack" if stack else "the model"
            raise fail(
                f"every self-attention layer of {where} must keep the same heads, because the first layer computes "
                f"the relative position bias of all heads once and every layer adds it; the heads per layer would "
                f"be {counts}. Remove the same heads from every layer of {where}"
            )


# -- loading (used by the quantizer on the meta-device model) ------------------------------------------------------
def shrink_to_structure(model: nn.Module, structure: Mapping[str, Any], fail) -> list[str]:
    """Resize a freshly built (typically meta-device) model to the sizes of a checked ``structure`` description.

    ``fail(message)`` builds the exception to raise (the quantizer passes a :class:`FormatError` factory). Heads
    and neurons kept are the first ones: the checkpoint's tensors are already sliced, only the shapes matter here.

    Returns:
        The names of every projection structured pruning sizes, in every layer (resized or not): the caller checks
        their shapes against the files, so a layer the description leaves out (or resizes wrongly) fails by name.
    """
    wanted = {**structure.get("attention", {}), **structure.get("ffn", {})}
    try:
        layers = find_layers(model)
    except ConfigError as exc:
        if wanted:
            raise fail(f"config.json quantization_config.structure resizes modules, but {exc}") from None
        return []
    by_attention = {p.attention.name: p for p in layers if p.attention is not None}
    by_ffn = {p.ffn.key: p for p in layers if p.ffn is not None}
    heads_after: dict[Any, int] = {}
    plans: list[tuple[LayerParts, int]] = []
    for name, spec in structure.get("attention", {}).items():
        parts = by_attention.get(name)
        where = f"config.json quantization_config.structure['attention'][{quote(name)}]"
        if parts is None:
            raise fail(
                f"{where}: the model has no self-attention module {quote(name)} (its attention modules: "
                f"{sorted(by_attention)[:4]}...)"
            )
        k = spec["num_heads"]
        hq, _ = parts.attention.sizes(model)  # type: ignore[union-attr]
        group = parts.attention.group  # type: ignore[union-attr]
        if k > hq:
            raise fail(f"{where}: num_heads {k} is more than the {hq} heads the model's config gives")
        if k % group:
            raise fail(f"{where}: num_heads {k} is not a whole number of key/value groups of {group} query heads")
        heads_after[parts.key] = k
        plans.append((parts, k // group))
    check_tied_heads(model, layers, heads_after, lambda message: fail(f"config.json quantization_config: {message}"))
    for parts, groups in plans:
        set_heads(model, parts, list(range(groups)))
    for name, spec in structure.get("ffn", {}).items():
        parts = by_ffn.get(name)
        where = f"config.json quantization_config.structure['ffn'][{quote(name)}]"
        if parts is None:
            raise fail(
                f"{where}: the model has no FFN input projection {quote(name)} (its FFN projections: "
                f"{sorted(by_ffn)[:4]}...)"
            )
        n = spec["intermediate_size"]
        have = num_neurons(model, parts.ffn)  # type: ignore[arg-type]
        if n > have:
            raise fail(f"{where}: intermediate_size {n} is more than the {have} the model's config gives")
        set_neurons(model, parts, list(range(n)))
    changed: list[str] = []
    for parts in find_layers(model):
        if parts.attention is not None:
            changed += list(parts.attention.projections)
        if parts.ffn is not None:
            changed += list(parts.ffn.projections)
    return changed


# -- the BERT layout by its module names (kept for callers that read BERT's attributes) ---------------------------
_LOOKED_FOR = (
    "an nn.ModuleList of encoder layers, each with a self-attention module that has `query`, `key` and `value` "
    "Linear children and `num_attention_heads` / `attention_head_size` attributes, a sibling `output.dense` "
    "projection (BertSelfOutput), and an FFN pair `intermediate.dense` -> `output.dense` (BERT, MiniLM, BertFor*)"
)


@dataclass
class EncoderLayerParts:
    """The modules of one BERT-layout encoder layer, with their qualified names (the layout of
    :mod:`hf_sparse.pruning.regularization`'s gates; every other family goes through :func:`find_layers`)."""

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
        return out_size(self.intermediate)


def _is_attention(module: nn.Module) -> bool:
    return (
        all(isinstance(getattr(module, n, None), nn.Module) for n in ("query", "key", "value"))
        and hasattr(module, "num_attention_heads")
        and hasattr(module, "attention_head_size")
    )


def _layer_parts(index: int, layer_name: str, layer: nn.Module) -> EncoderLayerParts | None:
    attentions = [(n, m) for n, m in layer.named_modules() if n and _is_attention(m)]
    if len(attentions) != 1:
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
    """The first ``nn.ModuleList`` of ``model`` whose layers all have the BERT layout, or ``None``."""
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        parts = [_layer_parts(i, f"{name}.{i}" if name else str(i), layer) for i, layer in enumerate(module)]
        if all(p is not None for p in parts):
            return name, module, parts  # type: ignore[return-value]
    return None


def find_encoder_layers(model: nn.Module) -> list[EncoderLayerParts]:
    """The encoder layers of a BERT-layout model (BERT, RoBERTa, XLM-R, ELECTRA), in order.

    Raises:
        UnsupportedFamilyError: the model does not have that layout (the message says what was looked for).
    """
    found = find_layer_list(model)
    if found is None:
        raise refuse(model, "BERT-layout structured pruning", f"it looked for {_LOOKED_FOR}, and found none.")
    return found[2]
