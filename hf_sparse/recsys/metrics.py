"""Full-ranking evaluation of next-item recommenders: HR@k and NDCG@k over the whole catalogue."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from .data import LeaveOneOutSplits, left_pad

__all__ = ["evaluate_ranking", "target_ranks", "hit_rate_and_ndcg"]


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each target among the items that are not excluded.

    The rank counts the other candidate items scoring at least as high as the target: ties count against the
    target, so a model that cannot tell items apart (equal scores, e.g. colliding rows of a hashed table) gets no
    credit for them. Excluded items (and the target's own entry in ``exclude``, which is ignored) never count.

    Args:
        scores: a score for every item id of each user.
        targets: the held-out item of each user.
        exclude: True where an item is not a candidate (already seen, padding).

    Returns:
        int64 ranks, 0 = the target scores highest.

    Shapes:
        scores, exclude: (users, items). targets: (users,). output: (users,).
    """
    scores = scores.float()
    target_scores = scores.gather(1, targets[:, None])
    better = scores >= target_scores
    better.scatter_(1, targets[:, None], False)
    if exclude is not None:
        better &= ~exclude
    return better.sum(1)


def hit_rate_and_ndcg(ranks: torch.Tensor, k: int) -> tuple[float, float]:
    """Mean HR@k (the target is in the top k) and NDCG@k (``1 / log2(rank + 2)`` inside the top k, else 0; with a
    single relevant item the ideal DCG is 1).

    Shapes:
        ranks: (users,) 0-based.
    """
    hit = ranks < k
    gain = torch.where(hit, 1.0 / torch.log2(ranks.double() + 2.0), torch.zeros((), dtype=torch.float64))
    return hit.double().mean().item(), gain.mean().item()


@torch.no_grad()
def evaluate_ranking(
    model: nn.Module,
    splits: LeaveOneOutSplits,
    *,
    split: str = "valid",
    k: int = 10,
    batch_size: int = 512,
    max_len: int | None = None,
) -> dict[str, float]:
    """HR@k and NDCG@k of the held-out item of every user, ranked against ALL items (full ranking, no sampled
    negatives, which overstate metrics and reorder models, Krichene & Rendle 2020).

    Each user's model input is the most recent ``max_len`` items of the history before the target: the training
    sequence for ``"valid"``, the training sequence plus the validation item for ``"test"``. Items of that whole
    history (not only the truncated part) are removed from the candidates, except the target itself: MovieLens
    users rate a movie once, so recommending a seen movie is never right, and masking them is the standard protocol
    of SASRec-style full-ranking evaluations. Ties count against the target (see :func:`target_ranks`).

    Args:
        model: a next-item model: ``model(input_ids=..., attention_mask=..., logits_to_keep=1).logits`` gives the
            scores of every item id at the last position (e.g. :class:`~hf_sparse.recsys.SASRecForNextItem`).
        splits: the leave-one-out splits.
        split: ``"valid"`` or ``"test"``.
        k: the cut-off.
        batch_size: users per forward pass.
        max_len: the longest input (default: the model's ``config.max_position_embeddings``).

    Returns:
        ``{"hr@k": ..., "ndcg@k": ..., "users": n}``. The model is left in the train/eval mode it was in.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if max_len is None:
        max_len = model.config.max_position_embeddings
    histories = splits.history(split)
    targets = torch.tensor(splits.targets(split), dtype=torch.long)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ranks = []
    try:
        for start in range(0, len(histories), batch_size):
            batch = histories[start : start + batch_size]
            input_ids = left_pad([h[-max_len:] for h in batch]).to(device)
            logits = model(input_ids=input_ids, attention_mask=(input_ids != 0).long(), logits_to_keep=1).logits
            scores = logits[:, -1].float().cpu()
            seen = left_pad(batch)  # the whole history, padded with id 0 (the padding column is excluded too)
            exclude = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, seen, True)
            exclude[:, 0] = True
            ranks.append(target_ranks(scores, targets[start : start + len(batch)], exclude))
    finally:
        model.train(was_training)
    all_ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    hr, ndcg = hit_rate_and_ndcg(all_ranks, k) if len(all_ranks) else (math.nan, math.nan)
    return {f"hr@{k}": hr, f"ndcg@{k}": ndcg, "users": len(all_ranks)}
