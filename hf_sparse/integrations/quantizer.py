"""The ``hf_sparse`` entry of ``config.json["quantization_config"]`` and the thin quantizer that loads it.

A sparsified model saves with ``model.save_pretrained(dir)``: the state dict holds only the compressed tensors of
every ``SparseLinear`` and ``SparseEmbedding`` (values, indices, pointers), and ``config.json`` carries one
composite, versioned description per module — format, its parameters, and each stored tensor's shape and dtype —
so that ``from_pretrained`` (after ``import hf_sparse``) can build the sparse modules, empty, before the weights are
loaded into them.

Loading checks a checkpoint in three places, so that a malformed one raises :class:`~hf_sparse.errors.FormatError`
(naming the file or tensor and the problem) instead of a loader error, a crash, or a silently wrong model:

1. ``HfSparseConfig.post_init``: the ``quantization_config`` of ``config.json`` itself (schema version, formats,
   parameters, declared shapes and dtypes).
2. ``HfSparseQuantizer._process_model_before_weight_loading``, before transformers opens the weights: the
   safetensors headers of the checkpoint files (:func:`read_safetensors_header`: header length, JSON, dtypes,
   shapes, data offsets, file length) against ``config.json`` and against the model with its sparse shells.
3. ``HfSparseQuantizer._process_model_after_weight_loading`` (:func:`check_loaded_modules` and
   :func:`~hf_sparse.integrations.checkpoint_checks.check_loaded_model`): every tensor of the model was loaded (none
   left to random initialisation), no checkpoint tensor of the model's structure was dropped, every format's
   contents validate (pointers, index ranges, ordering) and every floating-point value is finite.

Before those, ``update_attn_implementation`` (the earliest quantizer hook, before transformers reads a local
folder's ``model.safetensors.index.json`` or opens a weights file) confines every file the folder's index names to
the folder and checks its header (see :mod:`hf_sparse.integrations.checkpoint_checks`).

Structured pruning (:mod:`hf_sparse.pruning.structured`) adds an optional top-level ``structure`` key, the
per-layer sizes that differ from the model's own config::

    "structure": {
        "attention": {"bert.encoder.layer.0.attention.self": {"num_heads": 3}},
        "ffn": {"bert.encoder.layer.1.intermediate.dense": {"intermediate_size": 40}},
        "dropped_layers": [2]
    }

Before the weights load, the quantizer shrinks the freshly built model to these sizes (then builds the sparse
shells, so a structured model whose remaining layers are sparse round-trips too). ``dropped_layers`` is provenance
only (original indices): the model's ``num_hidden_layers`` already has the smaller depth.

Schema versions: 1 = ``modules`` only; 2 = ``modules`` and ``structure``. A checkpoint is written with the lowest
version that describes it, so plain sparse checkpoints stay readable by every hf_sparse release, while a structured
one says 2: an hf_sparse release that predates ``structure`` (it reads 1 only) refuses it with "upgrade hf_sparse"
instead of ignoring the key and building the full-size model.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import FormatError, quote
from .checkpoint_checks import (
    check_checkpoint_files,
    check_checkpoint_folder,
    check_loaded_model,
    check_tied_not_both_stored,
)

__all__ = [
    "HfSparseConfig",
    "HfSparseQuantizer",
    "sparse_config_for",
    "SCHEMA_VERSION",
    "TensorHeader",
    "read_safetensors_header",
    "check_loaded_modules",
]

#: The newest schema version this hf_sparse reads (1: ``modules``; 2: adds ``structure``). Later methods
#: (quantisation, low rank, ...) add keys and bump it. Writers use the lowest version that describes the checkpoint.
SCHEMA_VERSION = 2
_STRUCTURE_VERSION = 2

#: dtype names config.json may declare, and the safetensors dtype code each one is stored as.
_DTYPE_CODES = {
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
_DTYPES = set(_DTYPE_CODES)
#: safetensors dtype codes this loader reads, with their element sizes in bytes.
_CODE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_FLOAT_CODES = {"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"}
_TORCH_CODES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
_MAX_HEADER_ITEMS = 8_000_000  # commas: a million tensors' entries, far below what 100 MB could hold
_MAX_NAME_DIFF = 3  # characters; see _check_not_a_corrupted_name
_MAX_ELEMENTS = 2**48  # far above any real tensor; a larger declared shape is corruption, not a model
_MAX_DIMS = 64
_FIX = (
    "The checkpoint is corrupt or was not written by hf_sparse: restore its original files, or re-save it from "
    "the source model with `model.save_pretrained(dir)` after `import hf_sparse`."
)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _dims_ok(shape: Any, *, positive: bool = False) -> bool:
    """A list of at most 64 non-negative (or positive) ints with a plausible number of elements (each dimension is
    bounded first, so a hostile shape cannot make the product a huge number)."""
    low = 1 if positive else 0
    if not isinstance(shape, (list, tuple)) or len(shape) > _MAX_DIMS:
        return False
    if not all(_is_int(d) and low <= d <= _MAX_ELEMENTS for d in shape):
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
    from ..formats import FORMATS

    where = f"config.json quantization_config.modules[{quote(name)}]"
    if not isinstance(name, str) or not name:
        raise FormatError(f"{where}: module names must be non-empty strings. {_FIX}")
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("params"), dict)
        or not isinstance(spec.get("tensors"), dict)
    ):
        raise FormatError(f"{where} must be a dict with 'params' and 'tensors' dicts, got {quote(spec)}. {_FIX}")
    extra = sorted(map(str, set(spec) - {"params", "tensors"}))
    if extra:
        raise FormatError(
            f"{where} has keys {extra} that schema version {SCHEMA_VERSION} does not define (only 'params' and "
            f"'tensors'). {_FIX}"
        )
    params = spec["params"]
    fmt = params.get("format")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise FormatError(
            f"{where}: unknown format {quote(fmt)}; known formats: {sorted(FORMATS)}. A newer hf_sparse may know "
            f"it (upgrade), otherwise {_FIX}"
        )
    shape = params.get("shape")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 2 and _dims_ok(shape, positive=True)):
        raise FormatError(f"{where}.params['shape'] must be [rows, cols], two positive integers; got {quote(shape)}.")
    flag = _find_bool(params, f"{where}.params")
    if flag:
        raise FormatError(
            f"{flag} is a boolean (or nested over 32 levels deep); format parameters are integers, lists and "
            f"strings. {_FIX}"
        )
    if not spec["tensors"]:
        raise FormatError(f"{where}.tensors is empty; every format stores at least one tensor. {_FIX}")
    for tname, entry in spec["tensors"].items():
        ok = (
            isinstance(entry, (list, tuple))
            and len(entry) == 2
            and _dims_ok(entry[0])
            and isinstance(entry[1], str)
            and entry[1] in _DTYPES
        )
        if not ok:
            raise FormatError(
                f"{where}.tensors[{quote(tname)}] must be [shape (non-negative integers), dtype name (one of "
                f"{sorted(_DTYPES)})], got {quote(entry)}. {_FIX}"
            )


def _check_structure(structure: Any) -> None:
    """The ``structure`` key by itself (types and ranges); :func:`~hf_sparse.pruning.structured.shrink_to_structure`
    checks it against the model."""
    where = "config.json quantization_config.structure"
    if not isinstance(structure, dict):
        raise FormatError(f"{where} must be a dict, got {quote(structure)}. {_FIX}")
    extra = sorted(map(str, set(structure) - {"attention", "ffn", "dropped_layers"}))
    if extra:
        raise FormatError(
            f"{where} has keys {extra} that schema version {SCHEMA_VERSION} does not define (only 'attention', "
            f"'ffn' and 'dropped_layers'). {_FIX}"
        )
    for section, field, minimum in (("attention", "num_heads", 1), ("ffn", "intermediate_size", 0)):
        entries = structure.get(section, {})
        if not isinstance(entries, dict):
            raise FormatError(f"{where}[{section!r}] must map module names to dicts, got {quote(entries)}. {_FIX}")
        for name, spec in entries.items():
            at = f"{where}[{section!r}][{quote(name)}]"
            if not isinstance(name, str) or not name:
                raise FormatError(f"{at}: module names must be non-empty strings. {_FIX}")
            if not isinstance(spec, dict) or set(spec) != {field}:
                raise FormatError(f"{at} must be {{{field!r}: integer}}, got {quote(spec)}. {_FIX}")
            value = spec[field]
            if not _is_int(value) or value < minimum or value > _MAX_ELEMENTS:
                raise FormatError(f"{at}[{field!r}] must be an integer >= {minimum}, got {quote(value)}. {_FIX}")
    dropped = structure.get("dropped_layers", [])
    if (
        not isinstance(dropped, list)
        or not all(_is_int(i) and 0 <= i < 1_000_000 for i in dropped)
        or len(set(dropped)) != len(dropped)
    ):
        raise FormatError(
            f"{where}['dropped_layers'] must be a list of distinct non-negative layer indices, got "
            f"{quote(dropped)}. {_FIX}"
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
        if not _is_int(version) or not 1 <= version <= SCHEMA_VERSION:
            advice = (
                "Upgrade hf_sparse to load this checkpoint."
                if _is_int(version) and version > SCHEMA_VERSION
                else f"Versions 1 to {SCHEMA_VERSION} are the only ones that exist. {_FIX}"
            )
            raise FormatError(
                f"config.json quantization_config.schema_version is {quote(version)}; this hf_sparse reads version "
                f"{SCHEMA_VERSION}. {advice}"
            )
        if not isinstance(self.modules, dict):
            raise FormatError(
                f"config.json quantization_config.modules must be a dict of module descriptions, got "
                f"{type(self.modules).__name__}. {_FIX}"
            )
        for name, spec in self.modules.items():
            _check_module_spec(name, spec)
        if self.structure is not None:
            if version < _STRUCTURE_VERSION:
                raise FormatError(
                    f"config.json quantization_config has a 'structure' key, which schema version {version} does "
                    f"not define (it needs schema_version {_STRUCTURE_VERSION}). {_FIX}"
                )
            _check_structure(self.structure)


def sparse_config_for(model: torch.nn.Module, *, dropped_layers: list[int] | None = None) -> HfSparseConfig:
    """The ``HfSparseConfig`` describing every ``SparseLinear`` and ``SparseEmbedding`` of ``model`` as it is now,
    and (``structure``) every layer narrower than ``model.config`` says (see
    :func:`~hf_sparse.pruning.structured.describe_structure`).

    Args:
        dropped_layers: original indices of dropped encoder layers to record; default: those the model's current
            ``quantization_config`` records.
    """
    from ..nn.stored import StoredWeightMixin
    from ..pruning.structured import describe_structure

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


# -- safetensors headers -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorHeader:
    """One tensor's entry in a safetensors header: the file's name, the dtype code (``"F32"``, ``"I16"``, ...) and
    the shape."""

    file: str
    dtype: str
    shape: tuple[int, ...]


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {quote(key)}")
        out[key] = value
    return out


def _json_int(text: str) -> int:
    if text.startswith("-"):
        raise ValueError(f"negative number {text}")
    return int(text)


def _json_not_allowed(text: str) -> Any:
    raise ValueError(f"{text} is not an integer")


def _well_formed(x: Any, max_depth: int) -> bool:
    """False if the parsed header nests deeper than ``max_depth`` or a string holds a lone surrogate (invalid UTF-8
    that ``json`` lets through). Iterative: a hostile header cannot make it recurse."""
    stack = [(x, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            return False
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return True


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorHeader]:
    """The tensors of a safetensors file, from its header, checked at least as strictly as the safetensors library
    does when it opens the file: nothing that passes here fails there.

    Checks: the 8-byte header length, that the header fits in the file, is UTF-8 JSON without duplicate keys, and
    lists for each tensor a known dtype, a shape of non-negative integers and ``data_offsets`` that match the
    shape's byte size; that the tensors tile the data section exactly (no gap, no overlap) and that the file is
    exactly as long as the header says (a truncated file, or one with trailing bytes, fails).

    Raises:
        FormatError: naming the file, the tensor where one is at fault, and the problem.
    """
    path = Path(path)
    file = path.name

    def error(problem: str, tensor: str | None = None) -> FormatError:
        at = (
            f"tensor {quote(tensor)} in checkpoint file {quote(file)}"
            if tensor is not None
            else f"checkpoint file {quote(file)}"
        )
        return FormatError(f"{at}: {problem}. {_FIX}")

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise error(f"the file is {size} bytes, too short for the 8-byte header length (truncated)")
            n = int.from_bytes(prefix, "little")
            if n > _MAX_HEADER_BYTES:
                raise error(f"the header length field says {n} bytes, more than safetensors' limit of 100,000,000")
            if 8 + n > size:
                raise error(f"the header length field says {n} bytes but only {size - 8} follow it (truncated)")
            raw = fh.read(n)
    except OSError as exc:
        reason = quote(exc.strerror or str(exc))
        raise FormatError(f"checkpoint file {quote(str(path))} cannot be read: {reason}. {_FIX}") from None
    if raw.count(b",") > _MAX_HEADER_ITEMS:
        # Bounds what parsing can allocate: a 100 MB header of one long list would be 50 million Python objects.
        raise error(f"the header lists more than {_MAX_HEADER_ITEMS:,} items; no model's header does")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"the header is not valid UTF-8 (byte {exc.start} of {n})") from None
    if not text.startswith("{"):
        raise error("the header does not start with '{' (not a safetensors header)")
    try:
        header = json.loads(
            text,
            object_pairs_hook=_json_pairs,
            parse_int=_json_int,
            parse_float=_json_not_allowed,
            parse_constant=_json_not_allowed,
        )
    except (ValueError, RecursionError) as exc:
        what = "it nests too deeply" if isinstance(exc, RecursionError) else quote(str(exc), 200)
        raise error(f"the header is not valid JSON ({what})") from None
    if not isinstance(header, dict) or not _well_formed(header, 3):
        raise error("the header is not a JSON object of UTF-8 strings, nested at most 3 levels (__metadata__ is flat)")

    out: dict[str, TensorHeader] = {}
    spans: list[tuple[int, int, str]] = []
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise error(f"__metadata__ must map strings to strings, got {quote(info)}")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise error(f"the entry must have exactly 'dtype', 'shape' and 'data_offsets', got {quote(info)}", key)
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _CODE_BYTES:
            raise error(f"unsupported dtype {quote(dtype)} (known: {sorted(_CODE_BYTES)})", key)
        if not _dims_ok(shape):
            raise error(f"the shape must be a list of non-negative integers, got {quote(shape)}", key)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise error(f"data_offsets must be two non-negative integers, got {quote(offsets)}", key)
        begin, end = offsets
        nbytes = math.prod(shape) * _CODE_BYTES[dtype]
        if end < begin or end - begin != nbytes:
            raise error(
                f"data_offsets {quote(offsets)} span {quote(end - begin)} bytes but shape {quote(shape)} of {dtype} "
                f"needs {nbytes}",
                key,
            )
        out[key] = TensorHeader(file, dtype, tuple(shape))
        spans.append((begin, end, key))

    data_bytes = size - 8 - n
    expected = 0
    for begin, end, key in sorted(spans):
        if begin != expected:
            kind = "overlaps the previous tensor" if begin < expected else "leaves a gap after the previous tensor"
            raise error(
                f"its data starts at byte {quote(begin)} of the data section, expected {expected}: it {kind}", key
            )
        if end > data_bytes:
            raise error(
                f"its data ends at byte {quote(end)} of the data section, which holds only {data_bytes} bytes "
                "(the file is truncated)",
                key,
            )
        expected = end
    if expected != data_bytes:
        raise error(f"{data_bytes - expected} unexpected bytes follow the last tensor's data")
    return out


# -- checks around weight loading ----------------------------------------------------------------------------------
def _checkpoint_headers(files: Iterable[str | os.PathLike] | None) -> dict[str, TensorHeader] | None:
    """The merged headers of the checkpoint files (shards included), each read as safetensors whatever its name;
    ``None`` without files (a ``state_dict`` passed to ``from_pretrained``: checked after loading only)."""
    files = [Path(f) for f in files or ()]
    if not files:
        return None
    merged: dict[str, TensorHeader] = {}
    for f in files:
        for key, head in read_safetensors_header(f).items():
            if key in merged:
                raise FormatError(
                    f"tensor {quote(key)} is stored twice, in {quote(merged[key].file)} and {quote(f.name)}. {_FIX}"
                )
            merged[key] = head
    return merged


def _check_declared_tensors(headers: Mapping[str, TensorHeader], modules: Mapping[str, dict]) -> None:
    """Each tensor config.json declares is in the files, with the declared dtype and shape."""
    files = sorted({h.file for h in headers.values()}) or ["(no tensors)"]
    for name, spec in modules.items():
        for tname, (shape, dtype) in spec["tensors"].items():
            key = f"{name}.weight_{tname}"
            declared = f"config.json quantization_config.modules[{quote(name)}].tensors[{quote(tname)}]"
            head = headers.get(key)
            if head is None:
                raise FormatError(
                    f"checkpoint tensor {quote(key)} is missing from {', '.join(files)}, but {declared} "
                    f"declares it; a sparse module is never initialised at random. {_FIX}"
                )
            if head.dtype != _DTYPE_CODES[dtype]:
                raise FormatError(
                    f"checkpoint tensor {quote(key)} in {quote(head.file)} is stored as {head.dtype}, but "
                    f"{declared} declares {dtype} ({_DTYPE_CODES[dtype]}). {_FIX}"
                )
            if list(head.shape) != list(shape):
                raise FormatError(
                    f"checkpoint tensor {quote(key)} in {quote(head.file)} has shape {list(head.shape)}, "
                    f"but {declared} declares {list(shape)}. {_FIX}"
                )


def _check_not_a_corrupted_name(key: str, head: TensorHeader, missing_by_length: Mapping[int, list[str]]) -> None:
    """An unexpected tensor whose name is a few characters away from a tensor the model expects and the files lack
    is that tensor under a corrupted name: loading would initialise it at random."""
    for want in missing_by_length.get(len(key), ()):
        diff = sum(a != b for a, b in zip(want, key))
        if diff <= _MAX_NAME_DIFF:
            raise FormatError(
                f"tensor {quote(key)} in checkpoint file {quote(head.file)} matches no tensor of the model, "
                f"and the model's {quote(want)} ({diff} character(s) away) is missing from the checkpoint: the name "
                f"is corrupted, and loading would initialise {quote(want)} at random. {_FIX}"
            )


def _check_against_model(
    headers: Mapping[str, TensorHeader], model: torch.nn.Module, modules: Mapping[str, dict]
) -> None:
    """The files against the model with its sparse shells in place: no tensor the model cannot take, no sparse
    module left undescribed, floating-point tensors where the model has them."""
    named = dict(model.named_modules())
    expected = model.state_dict()
    missing_by_length: dict[int, list[str]] = {}
    for want in expected:
        if want not in headers:
            missing_by_length.setdefault(len(want), []).append(want)
    for name in modules:
        module = named[name]
        if getattr(module, "bias", None) is not None and f"{name}.bias" not in headers:
            raise FormatError(
                f"checkpoint tensor {quote(name + '.bias')} (the bias of sparse module {quote(name)}) is "
                f"missing from the checkpoint files; it would be left uninitialised. {_FIX}"
            )
    for key, head in headers.items():
        owner, _, leaf = key.rpartition(".")
        if owner in modules and key not in expected:
            raise FormatError(
                f"checkpoint tensor {quote(key)} in {quote(head.file)} is not a tensor of sparse module "
                f"{quote(owner)} (which stores "
                f"{sorted(k.rpartition('.')[2] for k in expected if k.startswith(owner + '.'))}). {_FIX}"
            )
        if owner not in modules and leaf.startswith("weight_") and owner in named and key not in expected:
            raise FormatError(
                f"checkpoint tensor {quote(key)} in {quote(head.file)} holds sparse data of module "
                f"{quote(owner)}, but config.json quantization_config.modules does not describe that module (is its "
                f"entry missing?). {_FIX}"
            )
        if key not in expected:
            _check_not_a_corrupted_name(key, head, missing_by_length)
            continue  # other unexpected keys: transformers reports them (and never loads them)
        want = expected[key]
        is_float = head.dtype in _FLOAT_CODES
        if is_float != want.is_floating_point() or (not is_float and head.dtype != _TORCH_CODES.get(want.dtype)):
            raise FormatError(
                f"checkpoint tensor {quote(key)} in {quote(head.file)} is stored as {head.dtype}, but the "
                f"model's tensor is {str(want.dtype).removeprefix('torch.')}. {_FIX}"
            )
        if owner in modules and tuple(head.shape) != tuple(want.shape):
            raise FormatError(
                f"checkpoint tensor {quote(key)} in {quote(head.file)} has shape {list(head.shape)}; sparse "
                f"module {quote(owner)} needs {list(want.shape)}. {_FIX}"
            )


def _subject(name: str, tensor_names: Iterable[str], message: str) -> str:
    """Who a format's error message is about: the full state-dict key of the first tensor it names, else the
    module."""
    found = []
    for tname in tensor_names:
        match = re.search(rf"(?<![\w.]){re.escape(tname)}\b", message)
        if match:
            found.append((match.start(), tname))
    if not found:
        return f"checkpoint module {quote(name)}"
    return f"checkpoint tensor {quote(name + '.weight_' + min(found)[1])} (module {quote(name)})"


def check_loaded_modules(model: torch.nn.Module, modules: Mapping[str, dict] | None = None) -> None:
    """After loading: every tensor of each described sparse module (and its bias) came from the checkpoint, has the
    declared shape (and dtype, for index tensors), and the format of every hf_sparse module validates.

    Raises:
        FormatError: naming the tensor's full key (or the module) and what is wrong with it.
    """
    modules = modules or {}
    for name, module in model.named_modules():
        if not (callable(getattr(module, "weight_format", None)) and hasattr(module, "_names")):
            continue  # not a hf_sparse module (SparseLinear and the like)
        spec = modules.get(name)
        if spec is not None:
            bias = getattr(module, "bias", None)
            names = [f"weight_{t}" for t in module._names] + (["bias"] if bias is not None else [])
            for attr in names:
                tensor = getattr(module, attr)
                if not getattr(tensor, "_is_hf_initialized", False):
                    raise FormatError(
                        f"checkpoint tensor {quote(name + '.' + attr)} was not loaded from the checkpoint (it "
                        f"is missing or was skipped), so it holds uninitialised memory. {_FIX}"
                    )
            for tname, (shape, dtype) in spec["tensors"].items():
                tensor = getattr(module, f"weight_{tname}")
                wrong_dtype = not tensor.is_floating_point() and str(tensor.dtype).removeprefix("torch.") != dtype
                if list(tensor.shape) != list(shape) or wrong_dtype:
                    raise FormatError(
                        f"checkpoint tensor {quote(name + '.weight_' + tname)} loaded as {tensor.dtype} "
                        f"{list(tensor.shape)}, but config.json declares {dtype} {list(shape)}. {_FIX}"
                    )
        try:
            module.weight_format(validate=True)
        except FormatError as exc:
            raise FormatError(f"{_subject(name, module._names, str(exc))}: {exc} {_FIX}") from None


@register_quantizer("hf_sparse")
class HfSparseQuantizer(HfQuantizer):
    """Loads hf_sparse checkpoints: checks the files' headers against config.json and builds empty ``SparseLinear``
    / ``SparseEmbedding`` modules before the weights load, checks and validates every loaded format afterwards.
    Only for checkpoints saved by hf_sparse (``sparsify_`` does the converting)."""

    requires_calibration = True  # nothing is computed at load time: the checkpoint must already be sparse

    def update_dtype(self, dtype):
        # Kept for the sparse shells: their floating-point values load in the dtype the user asked for.
        self._load_dtype = dtype
        return dtype

    def update_attn_implementation(self, config):
        # The earliest hook with the checkpoint's location: before transformers reads the folder's
        # model.safetensors.index.json or opens a weights file.
        check_checkpoint_folder(getattr(config, "name_or_path", None), read_safetensors_header)
        return super().update_attn_implementation(config)

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        from ..nn.shells import build_sparse_shells, build_structure_shells

        check_checkpoint_files(checkpoint_files, getattr(model.config, "name_or_path", None))
        headers = _checkpoint_headers(checkpoint_files)
        self._headers = headers
        if headers is not None:
            _check_declared_tensors(headers, self.quantization_config.modules)
            check_tied_not_both_stored(model, headers)
        # Shrink first: the sparse shells' declared shapes are those of the already narrower layers.
        structure = getattr(self.quantization_config, "structure", None)
        build_structure_shells(model, structure, headers, self.quantization_config.modules)
        build_sparse_shells(model, self.quantization_config.modules)
        if headers is not None:
            _check_against_model(headers, model, self.quantization_config.modules)

    def _process_model_after_weight_loading(self, model, **kwargs):
        check_loaded_modules(model, self.quantization_config.modules)
        check_loaded_model(model, getattr(self, "_headers", None))
        return model

    def is_serializable(self):
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        # The stored values train directly (gradients reach stored positions only, so the pattern holds): the
        # stock Trainer may fine-tune the loaded model itself, not only adapters on top of it.
        return True
