"""Fitting a compressed table to a trained one (pure optimisation, no model)."""

from __future__ import annotations

import torch

from ..formats import SparseFormat
from ..ops.embedding import lookup_rows

__all__ = ["fit_format_"]


def fit_format_(
    fmt: SparseFormat,
    target: torch.Tensor,
    *,
    steps: int = 200,
    lr: float = 0.01,
    row_weights: torch.Tensor | None = None,
    batch_rows: int = 65536,
) -> float:
    """Adam on ``fmt``'s floating-point tensors (in place) to minimise the row-weighted squared error
    ``sum_i w_i ||row_i - target_i||^2 / sum_i w_i`` over all rows; integer tensors (indices, codes) stay.

    Args:
        row_weights: per-row weights (e.g. id frequencies + 1: frequent ids matter more); default uniform.
        batch_rows: rows per step (all rows when the table is smaller): a large table is fitted on random row
            batches.

    Returns:
        The final relative error ``||rows - target|| / ||target||`` (unweighted).
    """
    tensors = {n: t for n, t in fmt.tensors().items() if t.is_floating_point()}
    leaves = {}
    for name, t in tensors.items():
        leaf = t.detach().float().clone().requires_grad_(True)
        leaves[name] = leaf
    rebuilt = type(fmt).from_tensors({**fmt.tensors(), **leaves}, fmt.params(), validate=False)
    rows = target.shape[0]
    target = target.detach().float()
    weights = torch.ones(rows) if row_weights is None else row_weights.detach().float().cpu()
    weights = weights / weights.mean()
    opt = torch.optim.Adam(list(leaves.values()), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.arange(rows) if rows <= batch_rows else torch.randint(0, rows, (batch_rows,), generator=g)
        ids = ids.to(target.device)
        err = lookup_rows(rebuilt, ids) - target[ids]
        loss = (err.square().sum(1) * weights.to(target.device)[ids]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for name, leaf in leaves.items():
            _assign(fmt, name, leaf.detach().to(tensors[name].dtype))
        return float((fmt.to_dense().float() - target).norm() / target.norm().clamp(min=1e-30))


def _assign(fmt: SparseFormat, name: str, value: torch.Tensor) -> None:
    """Write tensor ``name`` of ``fmt`` (nested formats' tensors carry their part's prefix)."""
    if fmt.name == "hot":
        part, _, inner = name.partition("_")
        _assign(getattr(fmt, part), inner, value)
        return
    if fmt.name == "tt":
        fmt.cores[int(name.removeprefix("core_"))] = value
        return
    setattr(fmt, name, value)
