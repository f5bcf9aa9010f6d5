"""Sparse and windowed attention: patterns, block layouts, our kernels, and the ``hf_sparse`` attention
implementation registered with transformers."""

from .apply import apply_sparse_attention_, check_sparse_attention, remove_sparse_attention_
from .config import SparseAttentionConfig
from .functional import explain, lowrank_attention, sparse_attention, sparse_attention_reference
from .layout import BlockLayout, build_layout
from .patterns import BlockSparse, DilatedWindow, Full, GlobalTokens, Pattern, SlidingWindow, dense_mask

__all__ = [
    "SparseAttentionConfig",
    "apply_sparse_attention_",
    "check_sparse_attention",
    "remove_sparse_attention_",
    "Pattern",
    "Full",
    "SlidingWindow",
    "DilatedWindow",
    "GlobalTokens",
    "BlockSparse",
    "dense_mask",
    "BlockLayout",
    "build_layout",
    "sparse_attention",
    "sparse_attention_reference",
    "lowrank_attention",
    "explain",
]
