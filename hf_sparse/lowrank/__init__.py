"""Low-rank factorisation: truncated SVD of Linear layers (``W ≈ U V``, optionally ``+ S`` sparse), ranks by
energy, compression, per layer, or from a measured sensitivity scan."""

from .apply import factorize_
from .config import LowRankConfig
from .ranks import factor_params, rank_for_compression, rank_for_energy
from .sensitivity import allocate_ranks, rank_sensitivity_scan

__all__ = [
    "LowRankConfig",
    "factorize_",
    "factor_params",
    "rank_for_energy",
    "rank_for_compression",
    "rank_sensitivity_scan",
    "allocate_ranks",
]
