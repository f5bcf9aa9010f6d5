"""Proximal steps on a weight's spectrum (pure maths): singular-value thresholding and rank projection."""

from __future__ import annotations

import torch

__all__ = ["singular_value_threshold_", "project_rank_"]


@torch.no_grad()
def singular_value_threshold_(weight: torch.Tensor, tau: float) -> int:
    """``W <- U max(S - tau, 0) V^T`` in place: the proximal step of ``tau * ||W||_*`` (the nuclear norm).

    Returns:
        The rank left (singular values above ``tau``).
    """
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    shrunk = (s - tau).clamp(min=0.0)
    weight.copy_(((u * shrunk) @ vh).to(weight.dtype))
    return int((shrunk > 0).sum())


@torch.no_grad()
def project_rank_(weight: torch.Tensor, rank: int) -> float:
    """``W <-`` its best rank-``rank`` approximation, in place.

    Returns:
        The fraction of ``||W||_F^2`` kept.
    """
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    weight.copy_(((u[:, :rank] * s[:rank]) @ vh[:rank]).to(weight.dtype))
    total = float(s.square().sum())
    return float(s[:rank].square().sum()) / total if total else 1.0
