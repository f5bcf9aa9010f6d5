"""Low-rank factorisation: truncated SVD of Linear layers (``W ≈ U V``, optionally ``+ S`` sparse), ranks by
energy, compression or per layer."""

from .apply import factorize_
from .config import LowRankConfig
from .ranks import factor_params, rank_for_compression, rank_for_energy

__all__ = ["LowRankConfig", "factorize_", "factor_params", "rank_for_energy", "rank_for_compression"]
