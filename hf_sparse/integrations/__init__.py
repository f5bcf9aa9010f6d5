"""transformers integrations, reached only through transformers' public registries (importing registers them)."""

from . import attention  # noqa: F401  (registers attn_implementation="hf_sparse")
from .quantizer import SCHEMA_VERSION, HfSparseConfig, HfSparseQuantizer, sparse_config_for

__all__ = ["HfSparseConfig", "HfSparseQuantizer", "sparse_config_for", "SCHEMA_VERSION"]
