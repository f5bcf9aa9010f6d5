"""Modules that replace ``nn.Linear`` (and, later, ``nn.Embedding``) inside a model, and the functions that swap them."""

from .replace import replace_module
from .sparse_linear import SparseLinear
from .sparsify import LayerDecision, sparsify_

__all__ = ["SparseLinear", "sparsify_", "LayerDecision", "replace_module"]
