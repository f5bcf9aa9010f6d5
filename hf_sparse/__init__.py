"""hf_sparse: pruning and sparse compression for Hugging Face Transformers.

Public API::

    import hf_sparse
    report = hf_sparse.apply_(model, hf_sparse.PruningConfig(sparsity=0.5))          # one-shot, any method config
    trainer = Trainer(..., callbacks=[hf_sparse.PruningCallback(PruningConfig(...))])  # gradual, while training
    decisions = hf_sparse.sparsify_(model)  # pruned Linear layers -> SparseLinear where predicted faster
    trainer = Trainer(model=student, ..., callbacks=[hf_sparse.DistillationCallback(teacher, alpha=0.9)])
    trainer = Trainer(model=model, ..., callbacks=[hf_sparse.QATCallback(hf_sparse.QuantizationConfig())])
    hf_sparse.convert_(model)          # QAT layers -> int8 / int4 layers that save and load

Importing the package registers only what ``from_pretrained`` of a saved sparse checkpoint needs: the quantizer
(``quantization_config`` of type ``hf_sparse``) and the ``"hf_sparse"`` attention implementation. Everything else
(the Trainer callbacks, recipes, methods, peft, datasets, plotting) is imported when first used.
"""

from __future__ import annotations

import importlib
import logging
import sys

from ._import_hooks import lazy_attributes, when_imported
from ._version import __version__
from .config import BaseConfig, register_config
from .errors import (
    CheckpointWriteError,
    ConfigError,
    DataError,
    FormatError,
    HfSparseError,
    MissingPackageError,
    PruningStateError,
    RecipeError,
)
from .registry import CONFIGS, Registry


class _BitsandbytesKernelHubNotice(logging.Filter):
    """Drops bitsandbytes' warning that its optional fused CPU 4-bit kernel could not be fetched from the Hub.

    bitsandbytes logs it while it is imported on CPUs with AVX512-BF16, and it is imported by peft, which
    transformers imports with its Trainer utilities: every ``hf-sparse`` command printed it although nothing uses
    bitsandbytes' 4-bit layers there, and bitsandbytes falls back to its own kernel when one does. Only that one
    message is dropped; ``logging.getLogger("bitsandbytes.backends.cpu.ops").removeFilter(...)`` brings it back.
    """

    PREFIX = "Failed to load CPU gemm_4bit_forward from kernels-community"

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIX)


# The logger exists before bitsandbytes is imported, so the filter is in place whoever imports it later.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_BitsandbytesKernelHubNotice())


def _register_attention_and_quantizer(_module=None) -> None:
    """Register the ``hf_sparse`` quantizer and attention function with transformers' registries."""
    importlib.import_module(".integrations", __name__)


def _register_auto_config(_module=None) -> None:
    importlib.import_module(".recsys.auto", __name__).register_auto_config()


def _register_auto_model(_module=None) -> None:
    layers = sys.modules.get("transformers.modeling_layers")
    if layers is not None and not hasattr(layers, "GradientCheckpointingLayer"):
        # transformers.modeling_layers imports the auto models while it initialises (a T5 or Llama class imported
        # first); the recommender's layers subclass one of its classes, so register once it is complete.
        when_imported("transformers.modeling_layers", _register_auto_model)
        return
    importlib.import_module(".recsys.auto", __name__).register_auto_model()


# transformers loads models (and reads their quantization_config and attn_implementation) through modeling_utils,
# and resolves saved model types through its auto modules: each registration happens as soon as the module that
# needs it is imported, or now if it already is.
when_imported("transformers.modeling_utils", _register_attention_and_quantizer)
when_imported("transformers.models.auto.configuration_auto", _register_auto_config)
when_imported("transformers.models.auto.modeling_auto", _register_auto_model)
# Loading modeling_layers through the hook finder lets _register_auto_model defer itself until it is complete.
when_imported("transformers.modeling_layers", lambda _module: None)

#: Public names imported when first used, by the module that defines them.
_LAZY: dict[str, str] = {
    # subpackages
    **{name: f".{name}" for name in ("attention", "data", "distillation", "formats", "lowrank", "nn", "ops")},
    **{name: f".{name}" for name in ("quantization", "recsys", "method", "jobs", "pruning", "embeddings")},
    "integrations": ".integrations",
    # methods and their one entry point
    "apply_": ".apply",
    "load_user_data": ".data",
    "load_runtime": ".runtimes",
    "Method": ".method",
    "register_method": ".method",
    "METHODS": ".apply:METHODS",  # through apply: its import registers the built-in methods
    "SparseAttentionConfig": ".attention",
    "apply_sparse_attention_": ".attention",
    "LowRankConfig": ".lowrank",
    "factorize_": ".lowrank",
    "SparseLinear": ".nn",
    "sparsify_": ".nn",
    "DistillationConfig": ".distillation",
    "Distiller": ".distillation",
    "student_from_teacher": ".distillation",
    "teacher_snapshot": ".distillation",
    "QuantizationConfig": ".quantization",
    "QuantScheme": ".quantization",
    "QATLinear": ".nn.qat",
    "QATEmbedding": ".nn.qat",
    "QuantLinear": ".nn.quant",
    "QuantEmbedding": ".nn.quant",
    "prepare_qat_": ".quantization.apply",
    "convert_": ".quantization.apply",
    "quantize_": ".quantization.apply",
    "calibrate_": ".quantization.apply",
    "choose_bits": ".quantization.sensitivity",
    **{
        name: ".pruning"
        for name in (
            "Pruner",
            "PruningConfig",
            "RegularizationConfig",
            "StructuredPruningConfig",
            "allocate_sparsity",
            "attach_regularization",
            "cubic_sparsity",
            "guarded_prune_",
            "prune_",
            "select_modules",
            "sensitivity_scan",
            "sparsity_at",
        )
    },
    # Trainer callbacks (import transformers.Trainer)
    **{
        name: ".callbacks"
        for name in (
            "DistillationCallback",
            "LowRankCallback",
            "PruningCallback",
            "QATCallback",
            "RegularizationCallback",
            "attach_callbacks",
        )
    },
    "CheckpointMarkerCallback": ".resilience",
    # recipes
    "Recipe": ".recipes",
    "load_recipe": ".recipes",
}

__all__ = [
    "__version__",
    "BaseConfig",
    "register_config",
    "Registry",
    "CONFIGS",
    "HfSparseError",
    "ConfigError",
    "RecipeError",
    "MissingPackageError",
    "PruningStateError",
    "FormatError",
    "CheckpointWriteError",
    "DataError",
    *_LAZY,
]


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
