"""Pruning criteria (importance scores) and mask selection. Pure tensor maths, no modules."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["CRITERIA", "magnitude_scores", "masks_from_scores"]

#: criterion name -> fn(weight) -> scores of the same shape (higher = more important).
CRITERIA: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("pruning criterion")


@CRITERIA.register("magnitude")
def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """``|w|`` in fp32.

    Shapes:
        weight: any shape. Returns: the same shape, float32.
    """
    return weight.detach().abs().float()


def _lowest_k_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask over ``flat`` that drops exactly its ``k`` lowest entries."""
    n = flat.numel()
    if k <= n // 2:
        keep = torch.ones_like(flat, dtype=torch.bool)
        if k > 0:
            keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
        return keep
    # Selecting the smaller side is cheaper: at 80-90% sparsity, find the kept entries instead.
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if n - k > 0:
        keep[torch.topk(flat, n - k, largest=True, sorted=False).indices] = True
    return keep


def masks_from_scores(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    scope: str = "global",
    previous: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks that zero the lowest-scoring ``sparsity`` fraction of the weights.

    Exactly ``round(sparsity * n)`` entries are dropped (per layer for ``scope="layer"``, over all layers together
    for ``"global"``), ties broken arbitrarily. Entries already dropped in ``previous`` rank below everything else,
    so masks only grow while the sparsity does not decrease.

    Shapes:
        scores: name -> tensor of any shape. previous: name -> bool tensor of the same shape.
        Returns: name -> bool tensor of the same shape (True = keep).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}.")
    if scope not in ("global", "layer"):
        raise ConfigError(f"scope must be 'global' or 'layer', got {scope!r}.")
    ranked: dict[str, torch.Tensor] = {}
    for name, s in scores.items():
        s = s.detach().float().reshape(-1)
        if previous is not None and name in previous:
            s = s.masked_fill(~previous[name].reshape(-1), float("-inf"))
        ranked[name] = s
    if scope == "layer":
        return {
            name: _lowest_k_mask(s, round(sparsity * s.numel())).reshape(scores[name].shape)
            for name, s in ranked.items()
        }
    if not ranked:
        return {}
    flat = torch.cat(list(ranked.values()))
    keep = _lowest_k_mask(flat, round(sparsity * flat.numel()))
    out, offset = {}, 0
    for name, s in ranked.items():
        out[name] = keep[offset : offset + s.numel()].reshape(scores[name].shape)
        offset += s.numel()
    return out
