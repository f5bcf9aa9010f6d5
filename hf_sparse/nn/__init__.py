"""Modules that replace ``nn.Linear`` / ``nn.Embedding`` inside a model (SparseLinear, SparseEmbedding), and the
functions that swap them in: choosing modules by name (:mod:`~hf_sparse.nn.matching`), the encoder structure
(:mod:`~hf_sparse.nn.structure`) and the checkpoint description they are saved with
(:mod:`~hf_sparse.nn.description`)."""

from .replace import replace_module
from .sparse_embedding import SparseEmbedding
from .sparse_linear import SparseLinear
from .sparsify import LayerDecision, SparsifyDecisions, sparsify_

__all__ = ["SparseLinear", "SparseEmbedding", "sparsify_", "LayerDecision", "SparsifyDecisions", "replace_module"]
