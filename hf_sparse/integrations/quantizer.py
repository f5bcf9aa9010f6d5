"""The ``hf_sparse`` entry of ``config.json["quantization_config"]`` and the thin quantizer that loads it.

A sparsified model saves with ``model.save_pretrained(dir)``: the state dict holds only the compressed tensors of
every ``SparseLinear`` (values, indices, pointers), and ``config.json`` carries one composite, versioned description
per module — format, its parameters, and each stored tensor's shape and dtype — so that ``from_pretrained`` (after
``import hf_sparse``) can build the sparse modules, empty, before the weights are loaded into them.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import FormatError

__all__ = ["HfSparseConfig", "HfSparseQuantizer", "sparse_config_for", "SCHEMA_VERSION"]

#: Version of the per-module schema below; later methods (quantisation, low rank, ...) add keys and bump it.
SCHEMA_VERSION = 1
_DTYPES = {"float32", "float16", "bfloat16", "float64", "int8", "int16", "int32", "uint8", "bool"}


def _check_module_spec(name: str, spec: Any) -> None:
    from ..formats import FORMATS

    where = f"quantization_config.modules[{name!r}]"
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("params"), dict)
        or not isinstance(spec.get("tensors"), dict)
    ):
        raise FormatError(f"{where} must be a dict with 'params' and 'tensors' dicts, got {spec!r}.")
    fmt = spec["params"].get("format")
    if fmt not in FORMATS:
        raise FormatError(f"{where}: unknown format {fmt!r}; known formats: {sorted(FORMATS)}.")
    for tname, entry in spec["tensors"].items():
        ok = (
            isinstance(entry, (list, tuple))
            and len(entry) == 2
            and isinstance(entry[0], (list, tuple))
            and all(isinstance(d, int) and d >= 0 for d in entry[0])
            and entry[1] in _DTYPES
        )
        if not ok:
            raise FormatError(f"{where}.tensors[{tname!r}] must be [shape, dtype name], got {entry!r}.")


@register_quantization_config("hf_sparse")
class HfSparseConfig(QuantizationConfigMixin):
    """What hf_sparse did to each module of a model (``quant_method: "hf_sparse"``).

    Args:
        modules: per module name, ``{"params": <format params, with "format" and "shape">, "tensors": {tensor name:
            [shape, dtype name]}}``.
        schema_version: the version of that schema; a newer one than this hf_sparse knows is an error.
    """

    def __init__(self, modules: dict[str, dict] | None = None, schema_version: int = SCHEMA_VERSION, **kwargs):
        self.quant_method = "hf_sparse"
        self.schema_version = schema_version
        self.modules = dict(modules or {})
        self.post_init()

    def post_init(self):
        if self.schema_version != SCHEMA_VERSION:
            raise FormatError(
                f"quantization_config.schema_version is {self.schema_version!r}; this hf_sparse reads version "
                f"{SCHEMA_VERSION}. Upgrade hf_sparse to load this checkpoint."
            )
        if not isinstance(self.modules, dict):
            raise FormatError(f"quantization_config.modules must be a dict, got {type(self.modules).__name__}.")
        for name, spec in self.modules.items():
            _check_module_spec(name, spec)


def sparse_config_for(model: torch.nn.Module) -> HfSparseConfig:
    """The ``HfSparseConfig`` describing every ``SparseLinear`` of ``model`` as it is now."""
    from ..nn import SparseLinear

    modules = {}
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            tensors = module.weight_format().tensors()
            modules[name] = {
                "params": dict(module.format_params),
                "tensors": {k: [list(t.shape), str(t.dtype).removeprefix("torch.")] for k, t in tensors.items()},
            }
    return HfSparseConfig(modules=modules)


@register_quantizer("hf_sparse")
class HfSparseQuantizer(HfQuantizer):
    """Loads hf_sparse checkpoints: builds empty ``SparseLinear`` modules before the weights load, validates every
    loaded format afterwards. Only for checkpoints saved by hf_sparse (``sparsify_`` does the converting)."""

    requires_calibration = True  # nothing is computed at load time: the checkpoint must already be sparse

    def _process_model_before_weight_loading(self, model, **kwargs):
        from ..nn.shells import build_sparse_shells

        build_sparse_shells(model, self.quantization_config.modules)

    def _process_model_after_weight_loading(self, model, **kwargs):
        from ..nn import SparseLinear

        for name, module in model.named_modules():
            if isinstance(module, SparseLinear):
                try:
                    module.weight_format(validate=True)
                except FormatError as exc:
                    raise FormatError(f"checkpoint module {name!r}: {exc}") from None
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
