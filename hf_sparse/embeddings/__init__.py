"""Compressed embedding tables for NLP vocabularies and recommender item tables: row-wise quantisation, the hashing
trick, quotient-remainder and tensor-train compositional embeddings, row pruning with remapping, low rank, and a
frequency-aware split (hot ids kept precise), chosen per table."""

from .apply import build_table, compress_embeddings_, finalize_embeddings_, size_for
from .config import EmbeddingCompressionConfig, TableCompression
from .fit import fit_format_

__all__ = [
    "EmbeddingCompressionConfig",
    "TableCompression",
    "compress_embeddings_",
    "finalize_embeddings_",
    "build_table",
    "size_for",
    "fit_format_",
]
