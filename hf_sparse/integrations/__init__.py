"""transformers integrations, reached only through transformers' public registries (importing registers them)."""

from .quantizer import SCHEMA_VERSION, HfSparseConfig, HfSparseQuantizer, sparse_config_for

__all__ = ["HfSparseConfig", "HfSparseQuantizer", "sparse_config_for", "SCHEMA_VERSION"]
