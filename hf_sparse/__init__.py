"""hf_sparse: pruning and sparse compression for Hugging Face Transformers.

Public API::

    import hf_sparse
    report = hf_sparse.apply_(model, hf_sparse.PruningConfig(sparsity=0.5))          # one-shot
    trainer = Trainer(..., callbacks=[hf_sparse.PruningCallback(PruningConfig(...))])  # gradual, while training
    decisions = hf_sparse.sparsify_(model)  # pruned Linear layers -> SparseLinear where predicted faster
    trainer = Trainer(model=student, ..., callbacks=[hf_sparse.DistillationCallback(teacher, alpha=0.9)])
    trainer = Trainer(model=model, ..., callbacks=[hf_sparse.QATCallback(hf_sparse.QuantizationConfig())])
    hf_sparse.convert_(model)          # QAT layers -> int8 / int4 layers that save and load
"""

__version__ = "0.1.0"

from . import attention, data, distillation, formats, integrations, lowrank, nn, ops, quantization, recsys
from .apply import apply_
from .attention import SparseAttentionConfig, apply_sparse_attention_
from .callbacks import (
    DistillationCallback,
    LowRankCallback,
    PruningCallback,
    QATCallback,
    RegularizationCallback,
    attach_callbacks,
)
from .config import BaseConfig, register_config
from .distillation import DistillationConfig, Distiller, student_from_teacher, teacher_snapshot
from .errors import (
    CheckpointWriteError,
    ConfigError,
    FormatError,
    HfSparseError,
    MissingPackageError,
    PruningStateError,
    RecipeError,
)
from .lowrank import LowRankConfig, factorize_
from .nn import SparseLinear, sparsify_
from .nn.qat import QATEmbedding, QATLinear
from .nn.quant import QuantEmbedding, QuantLinear
from .pruning import (
    Pruner,
    PruningConfig,
    RegularizationConfig,
    StructuredPruningConfig,
    allocate_sparsity,
    attach_regularization,
    cubic_sparsity,
    guarded_prune_,
    prune_,
    select_modules,
    sensitivity_scan,
    sparsity_at,
)
from .quantization import QuantizationConfig, QuantScheme
from .quantization.apply import calibrate_, convert_, prepare_qat_, quantize_
from .quantization.sensitivity import choose_bits
from .recipes import Recipe, load_recipe
from .registry import CONFIGS, METHODS, Registry
from .resilience import CheckpointMarkerCallback

__all__ = [
    "__version__",
    "data",
    "attention",
    "SparseAttentionConfig",
    "apply_sparse_attention_",
    "lowrank",
    "recsys",
    "LowRankConfig",
    "factorize_",
    "LowRankCallback",
    "formats",
    "integrations",
    "nn",
    "ops",
    "SparseLinear",
    "sparsify_",
    "apply_",
    "BaseConfig",
    "register_config",
    "PruningConfig",
    "Pruner",
    "PruningCallback",
    "RegularizationCallback",
    "DistillationCallback",
    "DistillationConfig",
    "Distiller",
    "student_from_teacher",
    "teacher_snapshot",
    "distillation",
    "quantization",
    "QuantizationConfig",
    "QuantScheme",
    "QATCallback",
    "QATLinear",
    "QATEmbedding",
    "QuantLinear",
    "QuantEmbedding",
    "prepare_qat_",
    "convert_",
    "quantize_",
    "calibrate_",
    "choose_bits",
    "attach_callbacks",
    "StructuredPruningConfig",
    "RegularizationConfig",
    "attach_regularization",
    "prune_",
    "guarded_prune_",
    "sensitivity_scan",
    "allocate_sparsity",
    "select_modules",
    "cubic_sparsity",
    "sparsity_at",
    "Recipe",
    "load_recipe",
    "Registry",
    "CONFIGS",
    "METHODS",
    "HfSparseError",
    "ConfigError",
    "RecipeError",
    "MissingPackageError",
    "PruningStateError",
    "FormatError",
    "CheckpointWriteError",
    "CheckpointMarkerCallback",
]
