"""``apply_(model, config)``: the one entry point that transforms a model in place by config type.

Importing this module registers the built-in methods (see :mod:`hf_sparse.method`); a plugin registers its own with
:func:`~hf_sparse.method.register_method` and ``apply_`` dispatches to it the same way.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .attention import method as _attention  # noqa: F401  (registers the built-in methods)
from .config import BaseConfig
from .distillation import method as _distillation  # noqa: F401
from .embeddings import method as _embeddings  # noqa: F401
from .errors import ConfigError
from .lowrank import method as _lowrank  # noqa: F401
from .method import METHOD_REGISTRY, method_for
from .pruning import method as _pruning  # noqa: F401
from .quantization import method as _quantization  # noqa: F401

__all__ = ["apply_", "METHODS"]

#: Every registered method, the built-in ones included (importing this module registers them).
METHODS = METHOD_REGISTRY


def apply_(model: nn.Module, config: BaseConfig, **kwargs: Any) -> Any:
    """Transform ``model`` in place as ``config`` describes; the method is chosen by the config's type (the most
    specific registered config class ``config`` is an instance of), and ``kwargs`` go to its transform.

    ============================== ============================================================================
    config                         what ``apply_`` does (and returns)
    ============================== ============================================================================
    ``PruningConfig``              prunes once to ``config.sparsity`` (:func:`~hf_sparse.prune_`; the sparsity
                                   report). To prune gradually while training use ``PruningCallback``.
    ``StructuredPruningConfig``    removes heads, FFN neurons and layers (``batches=`` for gradient scores).
    ``RegularizationConfig``       attaches penalties, DropConnect and L0 gates (the handle).
    ``QuantizationConfig``         post-training quantisation (``calibration=`` batches for static ranges; each
                                   converted layer's format). For QAT use ``prepare_qat_`` / ``QATCallback``.
    ``LowRankConfig``              truncated-SVD factorisation (per-layer ranks and errors).
    ``DistillationConfig``         attaches a ``Distiller`` (``teacher=``; default a frozen snapshot of the model).
    ``SparseAttentionConfig``      switches attention to the sparse pattern (the layers that use it).
    ``EmbeddingCompressionConfig`` compresses embedding tables (``frequencies=`` for hot rows; per table).
    ============================== ============================================================================

    Raises:
        ConfigError: ``config`` is not an hf_sparse config, ``model`` is not a module, or no method is registered for
            the config's type.
    """
    if not isinstance(config, BaseConfig):
        raise ConfigError(f"apply_ needs an hf_sparse config (e.g. PruningConfig), got {type(config).__name__}.")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"apply_ needs a torch.nn.Module, got {type(model).__name__}.")
    return method_for(config).apply(model, config, **kwargs)
