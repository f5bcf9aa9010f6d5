"""The thin quantizer that loads hf_sparse checkpoints (``quant_method: "hf_sparse"``; the description it reads is
:class:`~hf_sparse.nn.description.HfSparseConfig`).

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

Before the weights load, the quantizer shrinks the freshly built model to the sizes of the description's
``structure`` key, then builds the sparse shells (:mod:`hf_sparse.nn.shells`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from transformers.quantizers import HfQuantizer, register_quantizer

from ..errors import FormatError, quote
from ..nn.description import DTYPE_CODES, FIX, SCHEMA_VERSION, HfSparseConfig, sparse_config_for
from ..nn.shells import build_sparse_shells, build_structure_shells
from .checkpoint_checks import (
    check_checkpoint_files,
    check_checkpoint_folder,
    check_loaded_model,
    check_tied_not_both_stored,
)
from .safetensors_header import TensorHeader, read_safetensors_header

__all__ = [
    "HfSparseConfig",
    "HfSparseQuantizer",
    "sparse_config_for",
    "SCHEMA_VERSION",
    "TensorHeader",
    "read_safetensors_header",
    "check_loaded_modules",
]

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
_MAX_NAME_DIFF = 3  # characters; see _check_not_a_corrupted_name


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
                    f"tensor {quote(key)} is stored twice, in {quote(merged[key].file)} and {quote(f.name)}. {FIX}"
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
                    f"declares it; a sparse module is never initialised at random. {FIX}"
                )
            if head.dtype != DTYPE_CODES[dtype]:
                raise FormatError(
                    f"checkpoint tensor {quote(key)} in {quote(head.file)} is stored as {head.dtype}, but "
                    f"{declared} declares {dtype} ({DTYPE_CODES[dtype]}). {FIX}"
                )
            if list(head.shape) != list(shape):
                raise FormatError(
                    f"checkpoint tensor {quote(key)} in {quote(head.file)} has shape {list(head.shape)}, "
                    f"but {declared} declares {list(shape)}. {FIX}"
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
                f"is corrupted, and loading would initialise {quote(want)} at random. {FIX}"
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
                f"missing from the checkpoint files; it would be left uninitialised. {FIX}"
            )
    for key, head in headers.items():
        owner, _, leaf = key.rpartition(".")
        if owner in modules and key not in expected:
            raise FormatError(
                f"checkpoint tensor {quote(key)} in {quote(head.file)} is not a tensor of sparse module "
                f"{quote(owner)} (which stores "
                f"{sorted(k.rpartition('.')[2] for k in expected if k.startswith(owner + '.'))}). {FIX}"
            )
        if owner not in modules and leaf.startswith("weight_") and owner in named and key not in expected:
            raise FormatError(
                f"checkpoint tensor {quote(key)} in {quote(head.file)} holds sparse data of module "
                f"{quote(owner)}, but config.json quantization_config.modules does not describe that module (is its "
                f"entry missing?). {FIX}"
            )
        if key not in expected:
            _check_not_a_corrupted_name(key, head, missing_by_length)
            continue  # other unexpected keys: transformers reports them (and never loads them)
        want = expected[key]
        is_float = head.dtype in _FLOAT_CODES
        if is_float != want.is_floating_point() or (not is_float and head.dtype != _TORCH_CODES.get(want.dtype)):
            raise FormatError(
                f"checkpoint tensor {quote(key)} in {quote(head.file)} is stored as {head.dtype}, but the "
                f"model's tensor is {str(want.dtype).removeprefix('torch.')}. {FIX}"
            )
        if owner in modules and tuple(head.shape) != tuple(want.shape):
            raise FormatError(
                f"checkpoint tensor {quote(key)} in {quote(head.file)} has shape {list(head.shape)}; sparse "
                f"module {quote(owner)} needs {list(want.shape)}. {FIX}"
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
                        f"is missing or was skipped), so it holds uninitialised memory. {FIX}"
                    )
            for tname, (shape, dtype) in spec["tensors"].items():
                tensor = getattr(module, f"weight_{tname}")
                wrong_dtype = not tensor.is_floating_point() and str(tensor.dtype).removeprefix("torch.") != dtype
                if list(tensor.shape) != list(shape) or wrong_dtype:
                    raise FormatError(
                        f"checkpoint tensor {quote(name + '.weight_' + tname)} loaded as {tensor.dtype} "
                        f"{list(tensor.shape)}, but config.json declares {dtype} {list(shape)}. {FIX}"
                    )
        try:
            module.weight_format(validate=True)
        except FormatError as exc:
            raise FormatError(f"{_subject(name, module._names, str(exc))}: {exc} {FIX}") from None


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
