"""Rank selection from a weight's singular values (pure maths)."""

from __future__ import annotations

import torch

__all__ = ["rank_for_energy", "rank_for_compression", "round_rank", "factor_params"]


def factor_params(rows: int, cols: int, rank: int) -> int:
    """Values a rank-``rank`` factorisation of a (rows, cols) weight stores."""
    return rank * (rows + cols)


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest r whose first r singular values hold at least ``energy`` of the total squared (Frobenius)
    norm."""
    s2 = singular_values.double().square()
    total = float(s2.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(s2, 0) / total
    return int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype)).item()) + 1


def rank_for_compression(rows: int, cols: int, compression: float) -> int:
    """The largest r whose factors hold at most ``compression`` of the ``rows * cols`` dense values."""
    return max(1, int(compression * rows * cols // (rows + cols)))


def round_rank(rank: int, round_to: int, min_rank: int, max_rank: int) -> int:
    """``rank`` rounded down to a multiple of ``round_to``, clipped to ``[min_rank, max_rank]``."""
    r = (rank // round_to) * round_to if rank >= round_to else rank
    return max(min(max(r, min_rank), max_rank), 1)
