"""Measuring pruning: the zeros of each pruned weight, and a model's total and non-zero parameter counts."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..nn.linear_like import linear_weight

__all__ = ["sparsity_report", "model_parameter_counts"]


def sparsity_report(modules: Mapping[str, nn.Module], target_sparsity: float | None = None) -> dict:
    """Zeros and non-zeros of the ``weight`` of each module in ``modules``, measured, plus totals."""
    layers = {}
    zeros = total = 0
    for name, m in modules.items():
        w = linear_weight(m).detach()  # (out, in) for a Conv1D too
        z = int((w == 0).sum())
        layers[name] = {
            "shape": list(w.shape),
            "numel": w.numel(),
            "nonzero": w.numel() - z,
            # A Linear emptied by structured pruning (all heads or neurons removed) has no weights to be sparse.
            "sparsity": z / w.numel() if w.numel() else 0.0,
        }
        zeros += z
        total += w.numel()
    return {
        "target_sparsity": target_sparsity,
        "sparsity": zeros / max(total, 1),
        "pruned_params": zeros,
        "prunable_params": total,
        "layers": layers,
    }


def model_parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and non-zero parameter counts of a model (shared tensors counted once)."""
    total = nonzero = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        nonzero += int((p.detach() != 0).sum())
    return {"total_params": total, "nonzero_params": nonzero}
