"""Modules that replace ``nn.Linear`` inside a model (SparseLinear), and the functions that swap them in."""

from .replace import replace_module
from .sparse_linear import SparseLinear
from .sparsify import LayerDecision, sparsify_

__all__ = ["SparseLinear", "sparsify_", "LayerDecision", "replace_module"]
