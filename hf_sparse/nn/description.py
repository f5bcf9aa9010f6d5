"""The ``hf_sparse`` entry of ``config.json["quantization_config"]``: what a checkpoint says about its sparse modules
and its structure, written by every transform that changes them and read back by the quantizer that loads it
(:mod:`hf_sparse.integrations.quantizer`).

A sparsified model saves with ``model.save_pretrained(dir)``: the state dict holds only the compressed tensors of
every ``SparseLinear`` and ``SparseEmbedding`` (values, indices, pointers), and ``config.json`` carries one
composite, versioned description per module — format, its parameters, and each stored tensor's shape and dtype —
so that ``from_pretrained`` (after ``import hf_sparse``) can build the sparse modules, empty, before the weights are
loaded into them. :class:`HfSparseConfig` checks that description when it is built (schema version, formats,
parameters, declared shapes and dtypes), so a malformed ``config.json`` raises :class:`~hf_sparse.errors.FormatError`.

Structured pruning (:mod:`hf_sparse.pruning.structured`) adds an optional top-level ``structure`` key, the
per-layer sizes that differ from the model's own config (see :mod:`hf_sparse.nn.structure`), for every family of the
module-role table::

    "structure": {
        "attention": {"bert.encoder.layer.0.attention.self": {"num_heads": 3}},
        "ffn": {"bert.encoder.layer.1.intermediate.dense": {"intermediate_size": 40}},
        "dropped_layers": [2]
    }

An ``attention`` entry names the self-attention module (``model.layers.3.self_attn``, ``encoder.block.0.layer.0.
SelfAttention``) and gives its number of *query* heads; under grouped-query attention the key/value heads follow
(whole groups are removed, so ``num_heads / (num_attention_heads / num_key_value_heads)``). An ``ffn`` entry names
the FFN's first projection (``intermediate.dense``, ``mlp.up_proj``, the fused ``mlp.gate_up_proj``); a gate
projection has the same width.

Before the weights load, the quantizer shrinks the freshly built model to these sizes (then builds the sparse
shells, so a structured model whose remaining layers are sparse round-trips too). ``dropped_layers`` is provenance
only (original indices): the model's ``num_hidden_layers`` already has the smaller depth.

Schema versions: 1 = ``modules`` only; 2 = ``modules`` and ``structure``. A checkpoint is written with the lowest
version that describes it, so plain sparse checkpoints stay readable by every hf_sparse release, while a structured
one says 2: an hf_sparse release that predates ``structure`` (it reads 1 only) refuses it with "upgrade hf_sparse"
instead of ignoring the key and building the full-size model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from transformers.quantizers import register_quantization_config
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import FormatError, quote
from ..formats import FORMATS
from .stored import StoredWeightMixin
from .structure import describe_structure

__all__ = ["HfSparseConfig", "sparse_config_for", "SCHEMA_VERSION"]

#: The newest schema version this hf_sparse reads (1: ``modules``; 2: adds ``structure``). Later methods
#: (quantisation, low rank, ...) add keys and bump it. Writers use the lowest version that describes the checkpoint.
SCHEMA_VERSION = 2
_STRUCTURE_VERSION = 2

#: dtype names config.json may declare, and the safetensors dtype code each one is stored as.
DTYPE_CODES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "uint8": "U8",
    "bool": "BOOL",
}
_DTYPES = set(DTYPE_CODES)
_MAX_ELEMENTS = 2**48  # far above any real tensor; a larger declared shape is corruption, not a model
_MAX_DIMS = 64
FIX = (
    "The checkpoint is corrupt or was not written by hf_sparse: restore its original files, or re-save it from "
    "the source model with `model.save_pretrained(dir)` after `import hf_sparse`."
)


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def dims_ok(shape: Any, *, positive: bool = False) -> bool:
    """A list of at most 64 non-negative (or positive) ints with a plausible number of elements (each dimension is
    bounded first, so a hostile shape cannot make the product a huge number)."""
    low = 1 if positive else 0
    if not isinstance(shape, (list, tuple)) or len(shape) > _MAX_DIMS:
        return False
    if not all(is_int(d) and low <= d <= _MAX_ELEMENTS for d in shape):
        return False
    return math.prod(shape) <= _MAX_ELEMENTS


def _find_bool(x: Any, path: str) -> str | None:
    """The path of the first bool inside a JSON value (no format parameter is a bool: ``true`` is a corrupt 1).
    Iterative, and bounded in depth: config.json is user input."""
    stack = [(x, path, 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, bool):
            return where
        if depth > 32:
            return where  # no format parameter nests this deep: report it as the corrupt entry
        if isinstance(value, dict):
            items: Iterable = value.items()
        elif isinstance(value, (list, tuple)):
            items = enumerate(value)
        else:
            continue
        stack.extend((v, f"{where}[{quote(k, 60)}]", depth + 1) for k, v in reversed(list(items)))
    return None


def _check_module_spec(name: Any, spec: Any) -> None:
    where = f"config.json quantization_config.modules[{quote(name)}]"
    if not isinstance(name, str) or not name:
        raise FormatError(f"{where}: module names must be non-empty strings. {FIX}")
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("params"), dict)
        or not isinstance(spec.get("tensors"), dict)
    ):
        raise FormatError(f"{where} must be a dict with 'params' and 'tensors' dicts, got {quote(spec)}. {FIX}")
    extra = sorted(map(str, set(spec) - {"params", "tensors"}))
    if extra:
        raise FormatError(
            f"{where} has keys {extra} that schema version {SCHEMA_VERSION} does not define (only 'params' and "
            f"'tensors'). {FIX}"
        )
    params = spec["params"]
    fmt = params.get("format")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise FormatError(
            f"{where}: unknown format {quote(fmt)}; known formats: {sorted(FORMATS)}. A newer hf_sparse may know "
            f"it (upgrade), otherwise {FIX}"
        )
    shape = params.get("shape")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 2 and dims_ok(shape, positive=True)):
        raise FormatError(f"{where}.params['shape'] must be [rows, cols], two positive integers; got {quote(shape)}.")
    flag = _find_bool(params, f"{where}.params")
    if flag:
        raise FormatError(
            f"{flag} is a boolean (or nested over 32 levels deep); format parameters are integers, lists and "
            f"strings. {FIX}"
        )
    if not spec["tensors"]:
        raise FormatError(f"{where}.tensors is empty; every format stores at least one tensor. {FIX}")
    for tname, entry in spec["tensors"].items():
        ok = (
            isinstance(entry, (list, tuple))
            and len(entry) == 2
            and dims_ok(entry[0])
            and isinstance(entry[1], str)
            and entry[1] in _DTYPES
        )
        if not ok:
            raise FormatError(
                f"{where}.tensors[{quote(tname)}] must be [shape (non-negative integers), dtype name (one of "
                f"{sorted(_DTYPES)})], got {quote(entry)}. {FIX}"
            )


def _check_structure(structure: Any) -> None:
    """The ``structure`` key by itself (types and ranges); :func:`~hf_sparse.nn.structure.shrink_to_structure`
    checks it against the model."""
    where = "config.json quantization_config.structure"
    if not isinstance(structure, dict):
        raise FormatError(f"{where} must be a dict, got {quote(structure)}. {FIX}")
    extra = sorted(map(str, set(structure) - {"attention", "ffn", "dropped_layers"}))
    if extra:
        raise FormatError(
            f"{where} has keys {extra} that schema version {SCHEMA_VERSION} does not define (only 'attention', "
            f"'ffn' and 'dropped_layers'). {FIX}"
        )
    for section, field, minimum in (("attention", "num_heads", 1), ("ffn", "intermediate_size", 0)):
        entries = structure.get(section, {})
        if not isinstance(entries, dict):
            raise FormatError(f"{where}[{section!r}] must map module names to dicts, got {quote(entries)}. {FIX}")
        for name, spec in entries.items():
            at = f"{where}[{section!r}][{quote(name)}]"
            if not isinstance(name, str) or not name:
                raise FormatError(f"{at}: module names must be non-empty strings. {FIX}")
            if not isinstance(spec, dict) or set(spec) != {field}:
                raise FormatError(f"{at} must be {{{field!r}: integer}}, got {quote(spec)}. {FIX}")
            value = spec[field]
            if not is_int(value) or value < minimum or value > _MAX_ELEMENTS:
                raise FormatError(f"{at}[{field!r}] must be an integer >= {minimum}, got {quote(value)}. {FIX}")
    dropped = structure.get("dropped_layers", [])
    if (
        not isinstance(dropped, list)
        or not all(is_int(i) and 0 <= i < 1_000_000 for i in dropped)
        or len(set(dropped)) != len(dropped)
    ):
        raise FormatError(
            f"{where}['dropped_layers'] must be a list of distinct non-negative layer indices, got "
            f"{quote(dropped)}. {FIX}"
        )


@register_quantization_config("hf_sparse")
class HfSparseConfig(QuantizationConfigMixin):
    """What hf_sparse did to each module of a model (``quant_method: "hf_sparse"``).

    Args:
        modules: per module name, ``{"params": <format params, with "format" and "shape">, "tensors": {tensor name:
            [shape, dtype name]}}``.
        schema_version: the version of that schema; a newer one than this hf_sparse knows is an error. Default: the
            lowest version that describes the checkpoint (1 without ``structure``, 2 with it).
        structure: optional per-layer sizes of a structurally pruned model (schema version 2; see the module
            docstring): ``{"attention": {name: {"num_heads": k}}, "ffn": {name: {"intermediate_size": n}},
            "dropped_layers": [original indices]}``.

    Raises:
        FormatError: the description is malformed (names the module and key) or of an unknown schema version.
    """

    def __init__(
        self,
        modules: dict[str, dict] | None = None,
        schema_version: int | None = None,
        structure: dict[str, Any] | None = None,
        **kwargs,
    ):
        self.quant_method = "hf_sparse"
        if schema_version is None:
            schema_version = _STRUCTURE_VERSION if structure is not None else 1
        self.schema_version = schema_version
        self.modules = dict(modules) if isinstance(modules, dict) else ({} if modules is None else modules)
        self.structure = structure
        self.post_init()

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out.get("structure") is None:
            out.pop("structure", None)  # version-1 checkpoints keep exactly their version-1 keys
        return out

    def post_init(self):
        version = self.schema_version
        if not is_int(version) or not 1 <= version <= SCHEMA_VERSION:
            advice = (
                "Upgrade hf_sparse to load this checkpoint."
                if is_int(version) and version > SCHEMA_VERSION
                else f"Versions 1 to {SCHEMA_VERSION} are the only ones that exist. {FIX}"
            )
            raise FormatError(
                f"config.json quantization_config.schema_version is {quote(version)}; this hf_sparse reads version "
                f"{SCHEMA_VERSION}. {advice}"
            )
        if not isinstance(self.modules, dict):
            raise FormatError(
                f"config.json quantization_config.modules must be a dict of module descriptions, got "
                f"{type(self.modules).__name__}. {FIX}"
            )
        for name, spec in self.modules.items():
            _check_module_spec(name, spec)
        if self.structure is not None:
            if version < _STRUCTURE_VERSION:
                raise FormatError(
                    f"config.json quantization_config has a 'structure' key, which schema version {version} does "
                    f"not define (it needs schema_version {_STRUCTURE_VERSION}). {FIX}"
                )
            _check_structure(self.structure)


def sparse_config_for(model: torch.nn.Module, *, dropped_layers: list[int] | None = None) -> HfSparseConfig:
    """The ``HfSparseConfig`` describing every ``SparseLinear`` and ``SparseEmbedding`` of ``model`` as it is now,
    and (``structure``) every layer narrower than ``model.config`` says (see
    :func:`~hf_sparse.nn.structure.describe_structure`).

    Args:
        dropped_layers: original indices of dropped layers to record (models with one layer list); default: those
            the model's current ``quantization_config`` records.
    """
    modules = {}
    for name, module in model.named_modules():
        if isinstance(module, StoredWeightMixin):
            tensors = module.weight_format().tensors()
            modules[name] = {
                "params": dict(module.format_params),
                "tensors": {k: [list(t.shape), str(t.dtype).removeprefix("torch.")] for k, t in tensors.items()},
            }
    structure = describe_structure(model)
    if dropped_layers is None:
        previous = getattr(getattr(getattr(model, "config", None), "quantization_config", None), "structure", None)
        dropped_layers = list((previous or {}).get("dropped_layers", []))
    if dropped_layers:
        structure["dropped_layers"] = sorted(dropped_layers)
    return HfSparseConfig(modules=modules, structure=structure or None)
