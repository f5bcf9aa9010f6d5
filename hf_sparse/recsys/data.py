"""Leave-one-out splits of interaction logs (MovieLens 100K or the user's own file), next-item training sequences and
their ``Trainer`` collator."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from datasets import Dataset

from ..data import load_movielens_100k
from ..errors import ConfigError, DataError, FormatError, quote

__all__ = [
    "MOVIELENS_100K",
    "ITEM_IDS_FILE",
    "Interactions",
    "interactions_from_frame",
    "load_interactions",
    "load_item_ids",
    "LeaveOneOutSplits",
    "NextItemDataset",
    "NextItemCollator",
    "leave_one_out_split",
    "movielens_splits",
    "item_frequencies",
    "left_pad",
]

logger = logging.getLogger(__name__)

SPLITS = ("valid", "test")

#: The packaged data set's name in a recipe's ``data.dataset``.
MOVIELENS_100K = "movielens-100k"

#: The item id mapping saved beside every recommender checkpoint: the user's own item id of each model item id.
ITEM_IDS_FILE = "hf_sparse_item_ids.json"


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


@dataclasses.dataclass(frozen=True)
class Interactions:
    """An interaction log made ready for a next-item model: leave-one-out splits over contiguous ids, the way back
    to the data's own ids, and what was kept and dropped on the way.

    Args:
        splits: the leave-one-out splits; user ids ``1..users`` in order of first appearance in the data, item ids
            ``1..items`` (0 is padding).
        item_ids: the data's own id of each model item: ``item_ids[k - 1]`` is model item ``k``.
        user_ids: the data's own id of each user: ``user_ids[u - 1]`` is ``splits.user_ids`` entry ``u``.
        source: where the data came from (a file name, a dataset id, ``movielens-100k``).
        columns: role (``user``, ``item``, ``timestamp``) -> the data's column that was read; no ``timestamp``
            entry when the data had none (then its row order is the time order).
        counts: ``rows`` read, ``duplicates`` dropped (repeated (user, item, timestamp) rows), ``rare_items`` and
            ``rare_item_rows`` dropped by ``min_item_count``, ``short_users`` and ``short_user_rows`` dropped by
            ``min_interactions``, and what is left: ``users``, ``items``, ``interactions``.
        min_interactions, min_item_count: the thresholds that were applied.
    """

    splits: LeaveOneOutSplits
    item_ids: tuple[str, ...]
    user_ids: tuple[str, ...]
    source: str
    columns: dict[str, str]
    counts: dict[str, int]
    min_interactions: int = 3
    min_item_count: int = 1

    def item_id_record(self) -> dict[str, Any]:
        """What :data:`ITEM_IDS_FILE` holds: ``item_ids[k]`` is the data's id of model item ``k`` (entry 0, the
        padding id, is null), with the data's source and columns."""
        return {
            "format": "hf_sparse_item_ids",
            "version": 1,
            "source": self.source,
            "columns": dict(self.columns),
            "padding_id": 0,
            "num_items": len(self.item_ids),
            "item_ids": [None, *self.item_ids],
        }

    def describe(self) -> str:
        """One sentence on the data: source, counts and what was dropped."""
        c = self.counts
        time = (
            f"ordered by {quote(self.columns['timestamp'])}"
            if "timestamp" in self.columns
            else "ordered by file row (no timestamp column)"
        )
        dropped = []
        if c["duplicates"]:
            dropped.append(
                f"{c['duplicates']:,} repeated (user, item, timestamp) row{'s' if c['duplicates'] > 1 else ''}"
            )
        if c["rare_items"]:
            dropped.append(
                f"{c['rare_items']:,} item{'s' if c['rare_items'] > 1 else ''} seen fewer than "
                f"{self.min_item_count} times ({c['rare_item_rows']:,} rows)"
            )
        if c["short_users"]:
            dropped.append(
                f"{c['short_users']:,} user{'s' if c['short_users'] > 1 else ''} with fewer than "
                f"{self.min_interactions} interactions "
                f"({c['short_user_rows']:,} rows)"
            )
        return (
            f"{self.source}: {c['interactions']:,} interactions of {c['users']:,} users on {c['items']:,} items, "
            f"{time}; dropped {', '.join(dropped) if dropped else 'nothing'} (of {c['rows']:,} rows read)."
        )


def _item_sort_key(value: str) -> tuple:
    """Natural order: digit runs compare as numbers (``"sku-9"`` before ``"sku-10"``, ``"9"`` before ``"10"``), so the
    model's item ids follow the data's own ids, whatever the file's row order. ``re.split`` with a capturing group
    puts the digit runs at the odd positions, so two keys never compare a number with a string."""
    parts = re.split(r"(\d+)", value)
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), value)


def interactions_from_frame(
    frame: pd.DataFrame,
    *,
    source: str,
    columns: Mapping[str, str] | None = None,
    min_interactions: int = 3,
    min_item_count: int = 1,
) -> Interactions:
    """Makes leave-one-out splits of an interaction log with ``user``, ``item`` and ``timestamp`` columns (what
    :func:`hf_sparse.data.load_user_data` gives for ``task="recsys"``).

    In order: rows repeating an earlier row's (user, item, timestamp) are dropped (a double-logged event; the same
    item at another time stays, a repeat purchase is a real next item); items with fewer than ``min_item_count``
    remaining rows are dropped; then users with fewer than ``min_interactions`` remaining rows. Each user's history
    is ordered by timestamp, ties by row order in the data (a stable sort). Users get ids in order of first
    appearance, items in the natural order of their own ids (digit runs compared as numbers).

    Args:
        frame: the log (``user`` and ``item`` as strings, ``timestamp`` as numbers; other columns are ignored).
        source: where it came from (named in errors and the report).
        columns: role -> the data's column name (named in errors; default: the role names).
        min_interactions: the fewest interactions a kept user has (at least 3: one to train on, one to validate,
            one to test).
        min_item_count: the fewest rows a kept item has (1: keep every item).

    Raises:
        ConfigError: a threshold out of range.
        DataError: no user has ``min_interactions`` interactions, only one item is left, or no user has two
            training items (nothing to learn from).
    """
    if isinstance(min_interactions, bool) or not isinstance(min_interactions, int) or min_interactions < 3:
        raise ConfigError(f"min_interactions must be an integer >= 3, got {quote(min_interactions)}.")
    if isinstance(min_item_count, bool) or not isinstance(min_item_count, int) or min_item_count < 1:
        raise ConfigError(f"min_item_count must be an integer >= 1, got {quote(min_item_count)}.")
    columns = {role: str(name) for role, name in (columns or {}).items()}
    user_col, item_col = columns.get("user", "user"), columns.get("item", "item")
    rows = len(frame)
    log = pd.DataFrame(
        {
            "user": frame["user"].astype(str).to_numpy(),
            "item": frame["item"].astype(str).to_numpy(),
            "timestamp": frame["timestamp"].astype("float64").to_numpy(),
            "row": np.arange(rows),
        }
    )
    duplicated = log.duplicated(["user", "item", "timestamp"], keep="first")
    log = log[~duplicated.to_numpy()]
    rare_items = rare_item_rows = 0
    if min_item_count > 1:
        per_item = log["item"].value_counts()
        rare = per_item.index[per_item < min_item_count]
        rare_items, rare_item_rows = len(rare), int(per_item[rare].sum())
        log = log[~log["item"].isin(rare).to_numpy()]
    per_user = log.groupby("user", sort=False).size()
    short = per_user[per_user < min_interactions]
    if len(short) == len(per_user):
        most = int(per_user.max()) if len(per_user) else 0
        after = f" after dropping items seen fewer than {min_item_count} times" if min_item_count > 1 else ""
        raise DataError(
            f"no user has at least {min_interactions} interactions (data.min_interactions; leave-one-out needs one "
            f"to train on, one to validate and one to test){after}: the most any of the {len(per_user):,} users has "
            f"is {most}. Give more history per user"
            + (" or lower data.min_item_count." if min_item_count > 1 else "."),
            source=source,
            column=user_col,
        )
    log = log[~log["user"].isin(short.index).to_numpy()]
    items = sorted(log["item"].unique(), key=_item_sort_key)
    if len(items) < 2:
        raise DataError(
            f"every kept interaction is with the one item {quote(items[0])}: a next-item model ranks items, it needs "
            "at least 2 distinct items. Check that the item column is the right one"
            + (" or lower data.min_item_count." if min_item_count > 1 else "."),
            source=source,
            column=item_col,
        )
    # Users in order of first appearance; each history by time, ties by the data's row order.
    first_seen = {u: k for k, u in enumerate(log["user"].unique())}
    log = log.assign(order=log["user"].map(first_seen).to_numpy())
    log = log.sort_values(["order", "timestamp", "row"], kind="stable")
    item_index = {item: k + 1 for k, item in enumerate(items)}
    codes = log["item"].map(item_index).to_numpy(dtype=np.int64)
    bounds = np.flatnonzero(np.diff(log["order"].to_numpy())) + 1
    sequences = [tuple(int(i) for i in seq) for seq in np.split(codes, bounds)]
    if max(len(seq) for seq in sequences) < 4:
        raise DataError(
            "no user has more than 3 interactions, so no user has two training items (the last two of each history "
            "are held out): there is nothing to learn the next item from. Give more history per user.",
            source=source,
            column=user_col,
        )
    splits = LeaveOneOutSplits(
        user_ids=tuple(range(1, len(sequences) + 1)),
        train=tuple(seq[:-2] for seq in sequences),
        valid_targets=tuple(seq[-2] for seq in sequences),
        test_targets=tuple(seq[-1] for seq in sequences),
        num_items=len(items),
    )
    counts = {
        "rows": rows,
        "duplicates": int(duplicated.sum()),
        "rare_items": rare_items,
        "rare_item_rows": rare_item_rows,
        "short_users": len(short),
        "short_user_rows": int(short.sum()),
        "users": len(sequences),
        "items": len(items),
        "interactions": int(len(codes)),
    }
    return Interactions(
        splits=splits,
        item_ids=tuple(items),
        user_ids=tuple(first_seen),
        source=source,
        columns=columns,
        counts=counts,
        min_interactions=min_interactions,
        min_item_count=min_item_count,
    )


def load_interactions(
    source: Any = MOVIELENS_100K,
    *,
    columns: Mapping[str, str] | None = None,
    min_interactions: int = 3,
    min_item_count: int = 1,
) -> Interactions:
    """Reads an interaction log and makes it ready for a next-item model (:func:`interactions_from_frame`).

    Args:
        source: ``"movielens-100k"`` (the packaged MovieLens 100K ratings; item ids are its movie ids), or anything
            :func:`hf_sparse.data.load_user_data` reads with ``task="recsys"``: a CSV / TSV / JSON / JSONL /
            parquet file, a folder written by ``save_to_disk``, a Hub dataset id in the local cache, a
            ``datasets.Dataset``, or ``{"train": file}``.
        columns: role (``user``, ``item``, ``timestamp``) -> the data's column name, for columns without a
            conventional name (``user_id``, ``item_id``, ``timestamp`` ...).
        min_interactions, min_item_count: see :func:`interactions_from_frame`.

    Raises:
        DataError: the data cannot be read, a column is missing, or too little is left (see
            :func:`interactions_from_frame`); the message names the file and column.
        MissingPackageError: ``movielens-100k`` without the package that carries it.
    """
    if isinstance(source, str) and source == MOVIELENS_100K:
        if columns:
            raise ConfigError(
                f"columns {quote(dict(columns))} apply to your own data; {MOVIELENS_100K} has fixed columns (user_id, "
                "movie_id, timestamp)."
            )
        ratings = load_movielens_100k().select_columns(["user_id", "movie_id", "timestamp"]).to_pandas()
        used = {"user": "user_id", "item": "movie_id", "timestamp": "timestamp"}
        frame = pd.DataFrame({role: ratings[name] for role, name in used.items()})
        return interactions_from_frame(
            frame,
            source=MOVIELENS_100K,
            columns=used,
            min_interactions=min_interactions,
            min_item_count=min_item_count,
        )
    from ..data import load_user_data

    data = load_user_data(source, task="recsys", columns=dict(columns) if columns else None)
    table = data.splits["train"]
    logger.info("hf_sparse.recsys: read %d interactions from %s", len(table), data.source)
    frame = table.select_columns(["user", "item", "timestamp"]).to_pandas()
    return interactions_from_frame(
        frame,
        source=data.source,
        columns=dict(data.columns),
        min_interactions=min_interactions,
        min_item_count=min_item_count,
    )


def load_item_ids(folder: str | Path) -> list[str | None]:
    """The data's own item id of each model item id of a saved recommender (its :data:`ITEM_IDS_FILE`): entry ``k``
    is model item ``k``, entry 0 (padding) is None. So ``ids[model(...).logits[:, -1].argmax(-1)]`` is the user's
    own item id of the top recommendation.

    Raises:
        FormatError: the folder has no readable id mapping.
    """
    path = Path(folder) / ITEM_IDS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(
            f"{path} does not exist: the folder is not a recommender saved by hf-sparse recsys (which writes the "
            "item id mapping beside the weights)."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path} is not a readable JSON file: {exc}.") from None
    ids = record.get("item_ids") if isinstance(record, dict) else None
    if (
        not isinstance(ids, list)
        or not ids
        or ids[0] is not None
        or not all(isinstance(i, str) for i in ids[1:])
        or record.get("num_items") != len(ids) - 1
    ):
        raise FormatError(
            f"{path}: item_ids must be a list of num_items + 1 entries, null (padding) then one string per item."
        )
    return ids


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
