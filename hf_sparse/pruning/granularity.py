"""Mask granularities: which groups of weights are kept or dropped together. Pure tensor maths, no modules.

Every function here turns importance scores (higher = more important, one score per weight) into boolean
keep-masks of the weights' shape (True = keep):

- ``"unstructured"``: single weights (:func:`~hf_sparse.pruning.criteria.masks_from_scores`).
- ``"block"``: ``r x c`` tiles; a tile's score is the sum (or L2 norm) of its weights' scores and a tile is kept or
  dropped whole. Block-sparse kernels (BSR) can skip dropped tiles.
- ``"nm"``: N:M semi-structured sparsity along the input dimension: in every row, each run of ``m`` consecutive
  weights keeps its ``n`` highest-scoring ones (2:4 is what sparse tensor cores accelerate).
- ``"embedding_row"``: whole rows of an embedding table (an item or token dropped from a recommender's table).

Masks are monotone while the sparsity grows: groups dropped in ``previous`` rank below every other group, so they
stay dropped, exactly as :func:`~hf_sparse.pruning.criteria.masks_from_scores` does for single weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import ConfigError, quote
from .criteria import masks_from_scores

__all__ = [
    "GRANULARITIES",
    "STRUCTURED_GRANULARITIES",
    "block_scores",
    "expand_blocks",
    "block_masks",
    "nm_masks",
    "embedding_row_masks",
    "granular_masks",
]

#: Granularities of weight masks handled by :func:`granular_masks` (and by ``PruningConfig.granularity``).
GRANULARITIES: tuple[str, ...] = ("unstructured", "block", "nm", "embedding_row")
#: Granularities that remove whole heads, neurons or layers and shrink the model; they are not weight masks.
STRUCTURED_GRANULARITIES: tuple[str, ...] = ("head", "neuron", "layer")


def _check_2d(name: str, score: torch.Tensor, what: str) -> None:
    if score.dim() != 2:
        raise ConfigError(f"{what} pruning needs 2-D weights; {quote(name)} has shape {tuple(score.shape)}.")


def block_scores(score: torch.Tensor, block: tuple[int, int], reduce: str = "sum", *, name: str = "") -> torch.Tensor:
    """Score of each ``r x c`` block of a 2-D weight: the sum (``reduce="sum"``) or L2 norm (``"l2"``) of its
    weights' scores.

    Raises:
        ConfigError: the weight is not 2-D or its shape is not divisible by the block (the message names ``name``).

    Shapes:
        score: ``(R, C)``. Returns: ``(R // r, C // c)``, float32.
    """
    r, c = block
    _check_2d(name, score, "Block")
    rows, cols = score.shape
    if rows % r or cols % c:
        raise ConfigError(
            f"Block pruning: layer {quote(name)} has weight shape {(rows, cols)}, not divisible by the block "
            f"{(r, c)}. "
            "Choose a block that divides every selected layer, or exclude this layer (exclude_modules)."
        )
    tiles = score.detach().float().reshape(rows // r, r, cols // c, c)
    if reduce == "sum":
        return tiles.sum(dim=(1, 3))
    if reduce == "l2":
        return tiles.pow(2).sum(dim=(1, 3)).sqrt()
    raise ConfigError(f"block reduce must be 'sum' or 'l2', got {quote(reduce)}.")


def expand_blocks(block_mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Spread a per-block mask back over the weights.

    Shapes:
        block_mask: ``(R // r, C // c)``. Returns: ``(R, C)``.
    """
    r, c = block
    return block_mask.repeat_interleave(r, dim=0).repeat_interleave(c, dim=1)


def _previous_blocks(previous: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """A block counts as previously kept unless every weight in it was dropped (block masks are all-or-nothing;
    a mask read off a checkpoint's zeros may not be, and must not make whole blocks disappear)."""
    r, c = block
    rows, cols = previous.shape
    return previous.reshape(rows // r, r, cols // c, c).any(dim=3).any(dim=1)


def block_masks(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    block: tuple[int, int],
    scope: str = "global",
    previous: Mapping[str, torch.Tensor] | None = None,
    reduce: str = "sum",
) -> dict[str, torch.Tensor]:
    """Keep-masks that drop the lowest-scoring ``sparsity`` fraction of ``r x c`` blocks, whole.

    Exactly ``round(sparsity * n_blocks)`` blocks are dropped, per layer (``scope="layer"``) or over all layers
    together (``"global"``, block scores compared as they are, without normalisation). All blocks have the same
    size, so the fraction of dropped weights is the fraction of dropped blocks.

    Raises:
        ConfigError: a weight is not 2-D or not divisible by the block (naming the layer).

    Shapes:
        scores: name -> ``(R, C)``. previous: name -> bool ``(R, C)``. Returns: name -> bool ``(R, C)``.
    """
    grouped = {name: block_scores(s, block, reduce, name=name) for name, s in scores.items()}
    prev = None
    if previous is not None:
        prev = {name: _previous_blocks(previous[name], block) for name in grouped if name in previous}
    keep = masks_from_scores(grouped, sparsity, scope, previous=prev)
    return {name: expand_blocks(m, block) for name, m in keep.items()}


def nm_masks(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    n: int,
    m: int,
    previous: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """N:M keep-masks along the input dimension (the last one): each group of ``m`` consecutive weights of a row
    drops its ``round(sparsity * m)`` lowest-scoring weights.

    At ``sparsity = 1 - n / m`` every group keeps exactly ``n`` of ``m``. A gradual schedule passes lower
    sparsities on the way there (for 2:4: 4:4, then 3:4, then 2:4), each also an exact per-group pattern.
    Scope does not apply: every group is pruned on its own.

    Raises:
        ConfigError: a weight is not 2-D, its number of columns is not a multiple of ``m``, or ``sparsity`` asks
            for more than ``m - n`` zeros per group.

    Shapes:
        scores: name -> ``(R, C)`` with ``C % m == 0``. Returns: name -> bool ``(R, C)``.
    """
    if not 1 <= n <= m:
        raise ConfigError(f"N:M pruning needs 1 <= n <= m, got n={n}, m={m}.")
    drop = round(sparsity * m)
    if drop > m - n:
        raise ConfigError(
            f"N:M pruning with n={n}, m={m} drops at most {m - n} of every {m} weights (sparsity {1 - n / m:g}); "
            f"sparsity {sparsity:g} asks for {drop}."
        )
    out = {}
    for name, score in scores.items():
        _check_2d(name, score, "N:M")
        rows, cols = score.shape
        if cols % m:
            raise ConfigError(
                f"N:M pruning: layer {quote(name)} has {cols} input columns (weight shape {(rows, cols)}), not a "
                "multiple "
                f"of m={m}. Exclude this layer (exclude_modules) or choose another m."
            )
        groups = score.detach().float().reshape(rows, cols // m, m)
        if previous is not None and name in previous:
            groups = groups.masked_fill(~previous[name].reshape(rows, cols // m, m), float("-inf"))
        keep = torch.ones_like(groups, dtype=torch.bool)
        if drop > 0:
            lowest = torch.topk(groups, drop, dim=-1, largest=False, sorted=False).indices
            keep.scatter_(-1, lowest, False)
        out[name] = keep.reshape(rows, cols)
    return out


def embedding_row_masks(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    scope: str = "global",
    previous: Mapping[str, torch.Tensor] | None = None,
    reduce: str = "sum",
) -> dict[str, torch.Tensor]:
    """Keep-masks that drop whole rows (embedding vectors) of ``(num_embeddings, dim)`` tables.

    A row's score is the sum (or L2 norm) of its weights' scores. ``round(sparsity * rows)`` rows are dropped per
    table (``scope="layer"``) or over the rows of all tables together (``"global"``); with tables of different
    widths the fraction of dropped *weights* then differs slightly from ``sparsity`` (it is exact in rows).

    Shapes:
        scores: name -> ``(V, D)``. Returns: name -> bool ``(V, D)``, each row all True or all False.
    """
    for name, s in scores.items():
        _check_2d(name, s, "Embedding-row")
    # A row is a (1, D) block; tables may differ in D, so each gets its own block shape.
    grouped = {name: block_scores(s, (1, s.shape[1]), reduce, name=name) for name, s in scores.items()}
    prev = None
    if previous is not None:
        prev = {name: previous[name].any(dim=1, keepdim=True) for name in grouped if name in previous}
    keep = masks_from_scores(grouped, sparsity, scope, previous=prev)
    return {name: k.expand_as(scores[name]).clone() for name, k in keep.items()}


def granular_masks(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    granularity: str = "unstructured",
    scope: str = "global",
    previous: Mapping[str, torch.Tensor] | None = None,
    block: tuple[int, int] = (4, 4),
    n: int = 2,
    m: int = 4,
    reduce: str = "sum",
) -> dict[str, torch.Tensor]:
    """Keep-masks at ``granularity`` (see the module docstring); the one entry point the Pruner calls.

    Args:
        scores: Module name -> importance scores of its weight (higher = keep).
        sparsity: Fraction of the weights to drop, in [0, 1).
        granularity: One of :data:`GRANULARITIES`.
        scope: ``"global"`` or ``"layer"`` (ignored by ``"nm"``).
        previous: Masks of the previous update; what they dropped stays dropped.
        block: ``(r, c)`` for ``"block"``.
        n, m: For ``"nm"``.
        reduce: ``"sum"`` or ``"l2"``: how a group's score is made from its weights' scores.

    Raises:
        ConfigError: unknown granularity, or a layer whose shape does not fit it (the message names the layer).

    Shapes:
        scores: name -> weight shape. Returns: name -> bool tensor of the same shape.
    """
    if granularity == "unstructured":
        return masks_from_scores(scores, sparsity, scope, previous=previous)
    if granularity == "block":
        return block_masks(scores, sparsity, block=tuple(block), scope=scope, previous=previous, reduce=reduce)
    if granularity == "nm":
        return nm_masks(scores, sparsity, n=n, m=m, previous=previous)
    if granularity == "embedding_row":
        return embedding_row_masks(scores, sparsity, scope=scope, previous=previous, reduce=reduce)
    if granularity in STRUCTURED_GRANULARITIES:
        raise ConfigError(
            f"granularity {quote(granularity)} removes whole structures and is handled by StructuredPruningConfig "
            "(hf_sparse.pruning.structured), not by weight masks."
        )
    raise ConfigError(f"granularity must be one of {list(GRANULARITIES)}, got {quote(granularity)}.")
