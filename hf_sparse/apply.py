"""``apply_(model, config)``: the one entry point that transforms a model in place by config type."""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import BaseConfig
from .errors import ConfigError
from .registry import METHODS

__all__ = ["apply_"]


def apply_(model: nn.Module, config: BaseConfig) -> Any:
    """Transform ``model`` in place as ``config`` describes; the handler is chosen by the config's type.

    For a :class:`~hf_sparse.PruningConfig` this prunes once to ``config.sparsity`` and returns the sparsity report
    (per-layer sparsity, pruned and total parameter counts). To prune gradually while training, use
    :class:`~hf_sparse.PruningCallback` with the same config. For a :class:`~hf_sparse.QuantizationConfig` it
    quantises after training (:func:`~hf_sparse.quantize_` without calibration data: weight-only or dynamic
    inputs) and returns each converted layer's format; for QAT use :class:`~hf_sparse.QATCallback`.

    Raises:
        ConfigError: ``config`` is not an hf_sparse config, or no method is registered for its type.
    """
    if not isinstance(config, BaseConfig):
        raise ConfigError(f"apply_ needs an hf_sparse config (e.g. PruningConfig), got {type(config).__name__}.")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"apply_ needs a torch.nn.Module, got {type(model).__name__}.")
    return METHODS.get(config.config_type)(model, config)
