"""Leave-one-out splits of interaction logs, next-item training sequences and their ``Trainer`` collator."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd
import torch
from datasets import Dataset

from ..data import load_movielens_100k
from ..errors import ConfigError

__all__ = [
    "LeaveOneOutSplits",
    "NextItemDataset",
    "NextItemCollator",
    "leave_one_out_split",
    "movielens_splits",
    "item_frequencies",
    "left_pad",
]

SPLITS = ("valid", "test")


@dataclasses.dataclass(frozen=True)
class LeaveOneOutSplits:
    """Per-user leave-one-out split by time (the SASRec protocol): the last interaction is the test target, the one
    before it the validation target, the rest the training sequence.

    Args:
        user_ids: the users, in the order of the other fields.
        train: each user's training sequence of item ids, oldest first.
        valid_targets: each user's second-to-last item.
        test_targets: each user's last item.
        num_items: the largest item id (ids are ``1..num_items``; 0 is padding).
    """

    user_ids: tuple[int, ...]
    train: tuple[tuple[int, ...], ...]
    valid_targets: tuple[int, ...]
    test_targets: tuple[int, ...]
    num_items: int

    def __post_init__(self):
        n = len(self.user_ids)
        for name in ("train", "valid_targets", "test_targets"):
            if len(getattr(self, name)) != n:
                raise ConfigError(
                    f"LeaveOneOutSplits.{name} has {len(getattr(self, name))} entries for {n} users; every field "
                    "needs one entry per user."
                )

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def history(self, split: str) -> list[tuple[int, ...]]:
        """The items a user has seen before the ``split`` target: the training sequence for ``"valid"``, the training
        sequence followed by the validation item for ``"test"``."""
        _check_split(split)
        if split == "valid":
            return list(self.train)
        return [seq + (v,) for seq, v in zip(self.train, self.valid_targets)]

    def targets(self, split: str) -> tuple[int, ...]:
        """The held-out item of each user for ``split`` (``"valid"`` or ``"test"``)."""
        _check_split(split)
        return self.valid_targets if split == "valid" else self.test_targets

    def subset(self, users: Sequence[int] | int) -> LeaveOneOutSplits:
        """The splits of some users: a list of user ids, or an int ``n`` for the first ``n`` users. ``num_items``
        is kept, so a model for the full catalogue still fits."""
        if isinstance(users, int):
            rows = list(range(min(users, self.num_users)))
        else:
            where = {u: i for i, u in enumerate(self.user_ids)}
            missing = [u for u in users if u not in where]
            if missing:
                raise ConfigError(f"LeaveOneOutSplits.subset: unknown user ids {missing[:10]}.")
            rows = [where[u] for u in users]
        return LeaveOneOutSplits(
            user_ids=tuple(self.user_ids[i] for i in rows),
            train=tuple(self.train[i] for i in rows),
            valid_targets=tuple(self.valid_targets[i] for i in rows),
            test_targets=tuple(self.test_targets[i] for i in rows),
            num_items=self.num_items,
        )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}.")


def leave_one_out_split(
    ratings: Dataset | pd.DataFrame | dict[str, Sequence[int]],
    *,
    user_column: str = "user_id",
    item_column: str = "item_id",
    min_interactions: int = 3,
) -> LeaveOneOutSplits:
    """Splits an interaction log per user into training sequence, validation item and test item.

    The log must already be in time order within each user (``load_movielens_100k`` sorts by user, timestamp and,
    among equal timestamps, movie id: MovieLens 100K has many same-second ratings, and that tie-break decides which
    one is "last"). Users with fewer than ``min_interactions`` interactions are dropped.

    Args:
        ratings: a ``datasets.Dataset``, a ``pandas.DataFrame`` or a dict of column lists.
        user_column, item_column: the columns holding user and item ids (items are 1-based ints).
        min_interactions: the fewest interactions a kept user has (at least 3: one to train on, one to validate,
            one to test).

    Returns:
        :class:`LeaveOneOutSplits`, users in order of first appearance.

    Raises:
        ConfigError: ``min_interactions < 3``, or an item id below 1.
    """
    if isinstance(min_interactions, bool) or not isinstance(min_interactions, int) or min_interactions < 3:
        raise ConfigError(f"min_interactions must be an integer >= 3, got {min_interactions!r}.")
    if isinstance(ratings, Dataset):
        # one columnar conversion: iterating a Dataset's column row by row is ~100x slower
        ratings = ratings.select_columns([user_column, item_column]).to_pandas()
    users, items = list(ratings[user_column]), list(ratings[item_column])
    per_user: dict[int, list[int]] = {}
    for u, i in zip(users, items):
        per_user.setdefault(int(u), []).append(int(i))
    if not per_user:
        raise ConfigError("leave_one_out_split: the ratings are empty.")
    smallest = min(min(seq) for seq in per_user.values())
    if smallest < 1:
        raise ConfigError(f"Item ids must be >= 1 (0 is the padding id), found {smallest}.")
    kept = {u: seq for u, seq in per_user.items() if len(seq) >= min_interactions}
    return LeaveOneOutSplits(
        user_ids=tuple(kept),
        train=tuple(tuple(seq[:-2]) for seq in kept.values()),
        valid_targets=tuple(seq[-2] for seq in kept.values()),
        test_targets=tuple(seq[-1] for seq in kept.values()),
        num_items=max(max(seq) for seq in per_user.values()),
    )


def movielens_splits(*, min_interactions: int = 3) -> LeaveOneOutSplits:
    """Leave-one-out splits of MovieLens 100K (943 users, item ids = the 1,682 movie ids).

    Raises:
        MissingPackageError: the package carrying the data is not installed.
    """
    return leave_one_out_split(load_movielens_100k(), item_column="movie_id", min_interactions=min_interactions)


def item_frequencies(splits: LeaveOneOutSplits) -> torch.Tensor:
    """How often each item id occurs in the training sequences (validation and test targets are not counted), e.g.
    to pick the "hot" rows of a compressed item table.

    Returns:
        int64 tensor of shape ``(num_items + 1,)``; entry 0 (padding) is 0.
    """
    counts = torch.zeros(splits.num_items + 1, dtype=torch.long)
    flat = [i for seq in splits.train for i in seq]
    if flat:
        counts.index_add_(0, torch.tensor(flat), torch.ones(len(flat), dtype=torch.long))
    return counts


def left_pad(sequences: Sequence[Sequence[int]], value: int = 0, length: int | None = None) -> torch.Tensor:
    """Left-pads (most recent item last) integer sequences into a tensor.

    Shapes:
        output: (len(sequences), length or the longest sequence).
    """
    width = max((len(s) for s in sequences), default=0) if length is None else length
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq) > width:
            raise ValueError(f"left_pad: sequence {row} has {len(seq)} items, more than length={width}.")
        if len(seq):
            out[row, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
    return out


class NextItemDataset(torch.utils.data.Dataset):
    """Next-item training examples: ``input_ids = window[:-1]``, ``labels = window[1:]`` over windows of at most
    ``max_len + 1`` consecutive training items, so causal attention learns the next item at every position at once.

    Windows end at a user's last training item, then ``stride``, ``2 * stride``, ... items earlier, until the whole
    history is covered. Each window supervises only its last ``stride`` labels (the earliest window all of its
    labels), so every training item is a target exactly once, with at least ``max_len - stride + 1`` items of context
    (all earlier ones near a history's start). The default ``stride = max_len`` gives non-overlapping windows.
    With ``recent_only``, each user gives only the most recent window (the classic SASRec input): cheaper, but
    histories longer than ``max_len + 1`` lose their older items (on MovieLens 100K, with ``max_len=50``, more than
    half of the training interactions). Users with a single training item give no example.

    Args:
        splits: the leave-one-out splits (only their ``train`` sequences are used).
        max_len: the longest input (at most the model's ``max_position_embeddings``).
        stride: the step between windows, ``1 <= stride <= max_len`` (default ``max_len``).
        recent_only: only the most recent window of each user.
    """

    def __init__(
        self, splits: LeaveOneOutSplits, max_len: int, *, stride: int | None = None, recent_only: bool = False
    ):
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ConfigError(f"max_len must be a positive integer, got {max_len!r}.")
        if stride is None:
            stride = max_len
        if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= max_len:
            raise ConfigError(f"stride must be None or an integer in [1, max_len={max_len}], got {stride!r}.")
        self.max_len = max_len
        self.stride = stride
        self.recent_only = recent_only
        self.examples: list[tuple[tuple[int, ...], int]] = []  # (window, number of supervised trailing labels)
        for seq in splits.train:
            if len(seq) < 2:
                continue
            end = len(seq)
            while True:
                window = seq[max(0, end - max_len - 1) : end]
                if recent_only or end <= max_len + 1:  # the last window to make: all its labels are supervised
                    self.examples.append((window, len(window) - 1))
                    break
                self.examples.append((window, stride))
                end -= stride

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        window, supervised = self.examples[index]
        labels = list(window[1:])
        labels[: len(labels) - supervised] = [-100] * (len(labels) - supervised)
        return {"input_ids": list(window[:-1]), "labels": labels}


@dataclasses.dataclass(frozen=True)
class NextItemCollator:
    """Left-pads a list of ``{"input_ids", "labels"}`` examples for the stock ``transformers.Trainer``: inputs with
    the padding id 0, labels with -100, plus the ``attention_mask``.

    Args:
        pad_to_multiple_of: round the padded length up to a multiple of this (None: the batch's longest).

    Shapes:
        output: ``input_ids``, ``attention_mask``, ``labels`` of shape (batch, length), int64.
    """

    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = left_pad([e["input_ids"] for e in examples], 0, width)
        labels = left_pad([e["labels"] for e in examples], -100, width)
        return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(), "labels": labels}
