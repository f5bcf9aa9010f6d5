"""Empty sparse modules shaped from a checkpoint's description, for ``from_pretrained`` to load weights into."""

from __future__ import annotations

import json

import torch
from torch import nn

from ..errors import FormatError
from ..formats import float_tensor_names, from_tensors
from .compressed_embedding import _frozen_tensors
from .linear_like import is_linear_like, linear_weight
from .replace import replace_module
from .sparse_embedding import SparseEmbedding
from .sparse_linear import SparseLinear

__all__ = ["build_sparse_shells", "build_structure_shells"]

_FIX = "Restore the checkpoint's original config.json, or re-save the checkpoint from the source model."


def _json(x) -> str:
    return json.dumps(x, sort_keys=True, default=list)


def _dense_layer(model: nn.Module, name: str, params: dict, tied: set[str]) -> nn.Module:
    """The layer ``name`` of ``model`` that the description replaces (an ``nn.Linear``, a transformers ``Conv1D``
    as in GPT-2, or an ``nn.Embedding``), checked against it. A Linear-like layer's described shape is
    ``(out_features, in_features)``, also for a ``Conv1D``, whose own weight is stored transposed."""
    try:
        dense = model.get_submodule(name)
    except AttributeError:
        raise FormatError(f"checkpoint describes module {name!r}, which this model does not have. {_FIX}") from None
    if not (is_linear_like(dense) or isinstance(dense, nn.Embedding)):
        raise FormatError(
            f"checkpoint module {name!r} is a {type(dense).__name__}, expected nn.Linear (or a transformers Conv1D) "
            f"or nn.Embedding. {_FIX}"
        )
    shape = tuple(params.get("shape", ()))
    if shape != tuple(linear_weight(dense).shape):
        raise FormatError(
            f"checkpoint module {name!r} has shape {list(shape)} in config.json, but the model's layer is "
            f"{list(linear_weight(dense).shape)}. {_FIX}"
        )
    if isinstance(dense, nn.Embedding):
        from .compressed_embedding import EMBEDDING_FORMATS

        allowed = ("csr", "qdense", "lowrank", *EMBEDDING_FORMATS)
        if params.get("format") not in allowed:
            raise FormatError(
                f"checkpoint module {name!r} is an embedding table, stored as one of {list(allowed)} only, but "
                f"config.json says {params.get('format')!r}. {_FIX}"
            )
        if f"{name}.weight" in tied or dense.max_norm is not None or dense.sparse:
            raise FormatError(
                f"checkpoint module {name!r} is an embedding that this model ties to another weight or uses with "
                f"max_norm / sparse gradients: it is never stored sparse. {_FIX}"
            )
    return dense


def build_structure_shells(
    model: nn.Module, structure: dict | None, headers: dict | None = None, sparse_modules: dict | None = None
) -> None:
    """Shrink a freshly built model (typically on meta) to the per-layer sizes of a checkpoint's ``structure``
    (already checked by ``HfSparseConfig``: types and ranges), then check the resized dense layers' tensors in the
    checkpoint files, so that a size mismatch names the module instead of failing inside the loader.

    Args:
        structure: ``quantization_config.structure`` (``None``: nothing to do).
        headers: the checkpoint's safetensors headers (``None`` when not safetensors: transformers' own shape
            check applies then).
        sparse_modules: ``quantization_config.modules``; those layers are checked by :func:`build_sparse_shells`.

    Raises:
        FormatError: a named module is missing or not of the expected kind, a size exceeds what the model's config
            gives, or a resized layer's tensor in the files has another shape.
    """
    if not structure:
        return
    from .structure import shrink_to_structure

    changed = shrink_to_structure(model, structure, lambda message: FormatError(f"{message}. {_FIX}"))
    if headers is None:
        return
    for name in changed:
        if name in (sparse_modules or {}):
            continue
        module = model.get_submodule(name)
        for leaf in ("weight", "bias"):
            tensor = getattr(module, leaf, None)
            head = headers.get(f"{name}.{leaf}")
            if tensor is None or head is None:
                continue  # a missing tensor is reported by transformers / check_loaded_modules
            if tuple(head.shape) != tuple(tensor.shape):
                raise FormatError(
                    f"checkpoint tensor {name + '.' + leaf!r} in {head.file!r} has shape {list(head.shape)}, but "
                    f"config.json quantization_config.structure makes module {name!r} {list(tensor.shape)} (no entry "
                    f"for a layer means its original size). {_FIX}"
                )


def build_sparse_shells(model: nn.Module, modules: dict[str, dict]) -> None:
    """Replace each described ``nn.Linear`` (or transformers ``Conv1D``) of ``model`` by a ``SparseLinear`` (each
    described ``nn.Embedding`` by a ``SparseEmbedding``) with empty tensors of the described shapes and dtypes (on
    the layer's device, typically meta).

    ``modules`` is an already checked ``quantization_config.modules`` (see ``HfSparseConfig``).

    Raises:
        FormatError: a described module is missing, is not an ``nn.Linear`` / ``nn.Embedding``, disagrees with its
            shape, is a tied embedding, or its description does not fit its format (parameters, tensor names, value
            versus index dtypes).
    """
    tied_map = getattr(model, "all_tied_weights_keys", None) or {}
    tied = set(tied_map) | set(tied_map.values())
    for name, spec in modules.items():
        where = f"config.json quantization_config.modules[{name!r}]"
        params = spec["params"]
        dense = _dense_layer(model, name, params, tied)
        float_tensors = float_tensor_names(params)
        for tname, (_, dtype) in spec["tensors"].items():
            is_float = getattr(torch, dtype).is_floating_point
            if is_float != (tname in float_tensors):
                kind = "floating-point" if tname in float_tensors else "integer"
                raise FormatError(f"{where}.tensors[{tname!r}] is declared {dtype}; it must be {kind}. {_FIX}")
        device = dense.weight.device
        tensors = {
            k: torch.empty(tuple(s), dtype=getattr(torch, dt), device=device) for k, (s, dt) in spec["tensors"].items()
        }
        try:
            weight = from_tensors(tensors, params, validate=False)
        except FormatError as exc:
            raise FormatError(f"{where}: {exc} {_FIX}") from None
        # The dense layer was built in the dtype the user asked from_pretrained for (dtype=torch.bfloat16, ...):
        # the stored values load in it too (transformers converts each tensor to its shell's dtype), so the layer
        # computes in the model's dtype. Quantisation scales keep their saved dtype: they are few, and the integer
        # kernels read them in float32.
        # A float32 model is never narrowed to 16 bits by transformers itself, so 16-bit values in a float32 model
        # were chosen for that layer (sparsify_(numerics=...) on a CPU where bf16 is fastest): they keep their dtype.
        target = dense.weight.dtype if dense.weight.is_floating_point() else None
        chosen = target == torch.float32 and weight.dtype in (torch.bfloat16, torch.float16)
        convert = set(float_tensors) - _frozen_tensors(weight) if target is not None and not chosen else set()
        if any(tensors[k].dtype != target for k in convert if k in tensors):
            tensors = {k: t.to(target) if k in convert else t for k, t in tensors.items()}
            try:
                weight = from_tensors(tensors, params, validate=False)
            except FormatError as exc:
                raise FormatError(f"{where}: {exc} {_FIX}") from None
        names, declared = sorted(weight.tensors()), sorted(spec["tensors"])
        if names != declared:
            raise FormatError(
                f"{where}.tensors lists {declared}, but format {params['format']!r} stores {names}. {_FIX}"
            )
        if _json(weight.params()) != _json(params):
            raise FormatError(
                f"{where}.params is {_json(params)}; format {params['format']!r} with these tensors has parameters "
                f"{_json(weight.params())}. {_FIX}"
            )
        from ..formats.quantized import quantized_formats
        from .quant import QuantEmbedding, QuantLinear  # imported here: the quantised formats import this package

        try:
            if isinstance(dense, nn.Embedding):
                from .compressed_embedding import EMBEDDING_FORMATS, CompressedEmbedding
                from .lowrank_embedding import LowRankEmbedding

                cls = {"qdense": QuantEmbedding, "lowrank": LowRankEmbedding}.get(params["format"], SparseEmbedding)
                if params["format"] in EMBEDDING_FORMATS:
                    cls = CompressedEmbedding
                new = cls(weight, dense.padding_idx)
            elif params["format"] in quantized_formats():
                new = QuantLinear(weight, dense.bias)
            else:
                new = SparseLinear(weight, dense.bias)
        except FormatError as exc:
            raise FormatError(f"{where}: {exc} {_FIX}") from None
        if target is not None:
            # The placeholder carries the layer's output dtype (what embedding lookups return): the model's.
            new.weight = torch.empty(0, dtype=target, device=device)
        replace_module(model, name, new)
