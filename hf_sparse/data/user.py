"""The user's own data: files, saved data sets, cached Hub data sets and ``datasets`` objects, checked and normalised.

``load_user_data`` reads a source, finds the columns each task needs (by name, or as the ``columns`` mapping says),
checks every value the task will use, and returns a ``DatasetDict`` with the same normalised columns whatever the
source was. Every problem is a :class:`~hf_sparse.errors.DataError` naming the file, the column and the 1-based data
row, raised here, before any model is built: an hour of training must not end on row 90,000 holding a NaN.

The checks are vectorised (pandas / numpy over whole columns); Python loops run only to describe the first bad row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, List, Value

from ..errors import ConfigError, DataError, quote
from ._user_checks import (
    check_label_names,
    class_label_names,
    encode_labels,
    first,
    list_values,
    scalar_values,
    text_values,
    uniform_kind,
)
from ._user_sources import Part, read_source, split_name

__all__ = ["USER_TASKS", "UserData", "load_user_data"]

logger = logging.getLogger(__name__)

#: The tasks a user's data can be loaded for.
USER_TASKS = ("text-classification", "token-classification", "causal-lm", "masked-lm", "recsys")

#: Column roles and the conventional column names each is found under (compared case-insensitively).
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "text": ("text", "sentence", "sentence1", "question1", "review", "content"),
    "text_pair": ("text_pair", "sentence2", "question2"),
    "label": ("label", "labels", "class", "category"),
    "tokens": ("tokens", "words"),
    "tags": ("tags", "ner_tags", "labels"),
    "user": ("user", "user_id", "userid"),
    "item": ("item", "item_id", "itemid", "movie_id"),
    "timestamp": ("timestamp", "time", "ts"),
}

# (required roles, optional roles) of each task.
_TASK_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text-classification": (("text", "label"), ("text_pair",)),
    "token-classification": (("tokens", "tags"), ()),
    "causal-lm": (("text",), ()),
    "masked-lm": (("text",), ()),
    "recsys": (("user", "item"), ("timestamp",)),
}

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class UserData:
    """A user's data, checked and normalised for one task.

    Attributes:
        splits: ``train``, ``validation`` and ``test`` (``train`` only for ``recsys``). Columns by task:
            text-classification: ``text`` (str), optional ``text_pair`` (str), ``label`` (``ClassLabel``);
            token-classification: ``tokens`` (list of str), ``tags`` (list of ``ClassLabel``);
            causal-lm and masked-lm: ``text`` (str); recsys: ``user`` (str), ``item`` (str), ``timestamp`` (float).
        task: One of :data:`USER_TASKS`.
        label_names: Class (or tag) names in id order for the two classification tasks, else ``None``.
        source: A short printable description of where the data came from.
        columns: Role -> the column of the user's data it was read from.
    """

    splits: DatasetDict
    task: str
    label_names: tuple[str, ...] | None
    source: str
    columns: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# columns


def _match(columns: list[str], name: str) -> list[str]:
    exact = [c for c in columns if c == name]
    return exact or [c for c in columns if c.lower() == name.lower()]


def _resolve_columns(task: str, part: Part, mapping: Mapping[str, str]) -> dict[str, str]:
    """Role -> column of ``part``: the mapping's choices, then the conventional names (one match each)."""
    required, optional = _TASK_ROLES[task]
    available = part.columns
    shown = quote(available, 300)
    chosen: dict[str, str] = {}
    for role, name in mapping.items():
        found = _match(available, name)
        if len(found) != 1:
            problem = "no column" if not found else f"{len(found)} columns"
            raise DataError(
                f"{problem} named {quote(name)} (given as columns={{{role!r}: {quote(name)}}}); the columns are "
                f"{shown}.",
                source=part.where,
                column=name,
            )
        chosen[role] = found[0]
    for role in required + optional:
        if role in chosen:
            continue
        names = ROLE_NAMES[role]
        found = [c for c in available if c.lower() in names and c not in chosen.values()]
        if len(found) == 1:
            chosen[role] = found[0]
        elif len(found) > 1:
            raise DataError(
                f"more than one column could be the {role} ({quote(found)}); say which with "
                f"columns={{{role!r}: ...}} (recipe: data.columns.{role}). The columns are {shown}.",
                source=part.where,
            )
        elif role in required:
            raise DataError(
                f"no {role} column for task {task}: looked for {', '.join(names)} (any case); the columns are "
                f"{shown}. Name it with columns={{{role!r}: ...}} (recipe: data.columns.{role}).",
                source=part.where,
            )
    return chosen


# ----------------------------------------------------------------------------------------------------------------
# per task: checked values -> normalised Datasets (built from Arrow arrays: no per-row encoding)


def _dataset(columns: dict[str, pa.Array], features: Features) -> Dataset:
    table = pa.table(columns).cast(features.arrow_schema)
    return Dataset(table, info=DatasetInfo(features=features))


def _lists(values: pa.Array, lengths: np.ndarray) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets), values).cast(pa.list_(values.type))


def _text_classification(parts: dict[str, Part], cols: dict[str, str], label_names):
    label_col = cols["label"]
    texts, values = {}, {}
    for split, part in parts.items():
        texts[split] = {
            role: text_values(part.column(cols[role]), source=part.where, column=cols[role])
            for role in ("text", "text_pair")
            if role in cols
        }
        values[split] = scalar_values(
            part.column(label_col),
            source=part.where,
            column=label_col,
            what="the label",
            text_cells=part.text_cells,
            strict=True,
        )
    ids, names = encode_labels(
        values,
        {s: p.where for s, p in parts.items()},
        label_col,
        label_names=label_names,
        feature_names=class_label_names(parts["train"].features, label_col),
        rows=dict.fromkeys(parts),
    )
    features = Features({**{role: Value("string") for role in texts["train"]}, "label": ClassLabel(names=names)})
    out = {}
    for split in parts:
        arrays = {role: pa.array(v, pa.string()) for role, v in texts[split].items()}
        out[split] = _dataset({**arrays, "label": pa.array(ids[split], pa.int64())}, features)
    return out, names


def _token_classification(parts: dict[str, Part], cols: dict[str, str], label_names):
    tok_col, tag_col = cols["tokens"], cols["tags"]
    tokens, lengths, values, rows = {}, {}, {}, {}
    for split, part in parts.items():
        where = part.where
        elements, lengths[split], tok_rows = list_values(
            part.column(tok_col), source=where, column=tok_col, what="tokens"
        )
        kind = uniform_kind(elements, source=where, column=tok_col, what="the tokens", rows=tok_rows, nulls=False)
        if kind != "string":
            raise DataError(
                f"tokens must be strings, found {kind} values ({quote(elements.iloc[0], 60)}).",
                source=where,
                column=tok_col,
                row=int(tok_rows[0]) + 1,
            )
        tags, tag_lengths, rows[split] = list_values(part.column(tag_col), source=where, column=tag_col, what="tags")
        differ = lengths[split] != tag_lengths
        if differ.any():
            i = first(differ)
            raise DataError(
                f"{tag_lengths[i]} tags for {lengths[split][i]} tokens (column {quote(tok_col)}); each token needs "
                "one tag.",
                source=where,
                column=tag_col,
                row=i + 1,
            )
        tokens[split] = elements.to_numpy(object)
        values[split] = scalar_values(tags, source=where, column=tag_col, what="a tag", rows=rows[split])
    ids, names = encode_labels(
        values,
        {s: p.where for s, p in parts.items()},
        tag_col,
        label_names=label_names,
        feature_names=class_label_names(parts["train"].features, tag_col),
        rows=rows,
        o_first=True,
    )
    features = Features({"tokens": List(Value("string")), "tags": List(ClassLabel(names=names))})
    out = {}
    for split in parts:
        out[split] = _dataset(
            {
                "tokens": _lists(pa.array(tokens[split], pa.string()), lengths[split]),
                "tags": _lists(pa.array(ids[split], pa.int64()), lengths[split]),
            },
            features,
        )
    return out, names


def _language_model(parts: dict[str, Part], cols: dict[str, str]):
    features = Features({"text": Value("string")})
    column = cols["text"]
    return {
        split: _dataset(
            {"text": pa.array(text_values(part.column(column), source=part.where, column=column))}, features
        )
        for split, part in parts.items()
    }


def _recsys(parts: dict[str, Part], cols: dict[str, str]):
    """One table of interactions: every split given, in order (the recommender splits each history by time)."""
    arrays: dict[str, list[np.ndarray]] = {"user": [], "item": [], "timestamp": []}
    offset = 0
    for part in parts.values():
        for role in ("user", "item"):
            values, _ = scalar_values(
                part.column(cols[role]),
                source=part.where,
                column=cols[role],
                what=f"the {role} id",
                text_cells=part.text_cells,
            )
            arrays[role].append(values.astype(str).astype(object))
        n = len(part)
        if "timestamp" in cols:
            arrays["timestamp"].append(_timestamps(part, cols["timestamp"]))
        else:  # no time: the file's row order is the order of each user's history
            arrays["timestamp"].append(np.arange(offset, offset + n, dtype=np.float64))
        offset += n
    features = Features({"user": Value("string"), "item": Value("string"), "timestamp": Value("float64")})
    return {"train": _dataset({k: pa.array(np.concatenate(v)) for k, v in arrays.items()}, features)}


def _timestamps(part: Part, column: str) -> np.ndarray:
    """Seconds: numbers as they are, date-time strings (ISO 8601 and the like) parsed as UTC."""
    values = part.column(column)
    if part.text_cells:
        numeric = pd.to_numeric(values, errors="coerce")
        if not numeric.isna().any():
            values = numeric
    kind = uniform_kind(values, source=part.where, column=column, what="the timestamp")
    if kind in ("integer", "number"):
        seconds = values.to_numpy(np.float64)
        bad = ~np.isfinite(seconds)
        if bad.any():
            raise DataError("the timestamp is not finite.", source=part.where, column=column, row=first(bad) + 1)
        return seconds
    if kind != "string":
        raise DataError(
            f"timestamps must be numbers or date-time strings, not {kind} values.", source=part.where, column=column
        )
    parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")  # vectorised
    if parsed.isna().any():  # other layouts ("05/01/2024 12:00"): parsed one by one
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna().to_numpy(bool)
    if bad.any():
        i = first(bad)
        raise DataError(
            f"{quote(values.iloc[i], 80)} is not a date-time (use seconds since 1970 or ISO 8601: 2024-05-01 12:00).",
            source=part.where,
            column=column,
            row=i + 1,
        )
    return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(np.float64)


# ----------------------------------------------------------------------------------------------------------------
# splits and limits


def _labels(dataset: Dataset, task: str) -> np.ndarray | None:
    """The label ids to stratify by (text classification only), read column-wise."""
    if task != "text-classification":
        return None
    return dataset.select_columns(["label"]).to_pandas()["label"].to_numpy()


def _pick(total: int, size: int, labels: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """``size`` distinct row indices out of ``total`` in a seeded random order; with ``labels``, each class gets its
    share of ``size`` (rounded down, the remainder to the classes with the largest fractional shares).

    ``Dataset.train_test_split(stratify_by_column=...)`` does the same but reads the labels row by row (about 15 s
    for 100k rows) and refuses classes of one member; this is a few numpy calls.
    """
    if labels is None:
        return rng.permutation(total)[:size]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * size / total
    take = np.floor(exact).astype(np.int64)
    rest = size - int(take.sum())
    if rest:
        take[np.lexsort((rng.random(len(counts)), take - exact))[:rest]] += 1
    order = rng.permutation(total)
    grouped = order[np.argsort(inverse[order], kind="stable")]  # each class's rows, shuffled, one class after another
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    picked = np.concatenate([grouped[start : start + n] for start, n in zip(starts, take)])
    return rng.permutation(picked)


def _carve(
    splits: dict[str, Dataset], task: str, seed: int, validation_fraction: float, test_fraction: float, where: str
) -> dict[str, Dataset]:
    """Make the missing validation / test splits from train (fractions of train as given; stratified by label for
    text classification, a seeded shuffle otherwise)."""
    missing = [s for s in ("test", "validation") if s not in splits]
    if not missing:
        return splits
    train = splits["train"]
    total = len(train)
    fractions = {"test": test_fraction, "validation": validation_fraction}
    sizes = {s: max(1, round(fractions[s] * total)) for s in missing}
    if sum(sizes.values()) >= total:
        raise DataError(
            f"train has {total} rows, too few to set aside {' and '.join(f'{sizes[s]} for {s}' for s in missing)}; "
            "give more rows or the validation and test splits themselves.",
            source=where,
        )
    rng = np.random.default_rng(seed)
    labels = _labels(train, task)
    free = np.arange(total)
    for split in missing:
        chosen = _pick(len(free), sizes[split], None if labels is None else labels[free], rng)
        splits[split] = train.select(np.sort(free[chosen]))
        free = np.delete(free, chosen)
    splits["train"] = train.select(free)
    return splits


def _check_limits(limits: Any, task: str) -> dict[str, int]:
    if limits is None:
        return {}
    if not isinstance(limits, Mapping):
        raise ConfigError(f"limits must be a mapping of split -> number of rows, got {quote(limits)}.")
    out: dict[str, int] = {}
    for name, value in limits.items():
        split = split_name(name, "limits")
        if task == "recsys" and split != "train":
            raise ConfigError(f"limits: task recsys has one split, train; got {quote(name)}.")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ConfigError(
                f"limits.{name} must be an integer of at least 2 (or null for all rows), got {quote(value)}."
            )
        out[split] = value
    return out


def _limit(dataset: Dataset, size: int, task: str, seed: int) -> Dataset:
    """A seeded subset of ``size`` rows (stratified by label for text classification), in the data's order."""
    if size >= len(dataset):
        return dataset
    chosen = _pick(len(dataset), size, _labels(dataset, task), np.random.default_rng(seed))
    return dataset.select(np.sort(chosen))


# ----------------------------------------------------------------------------------------------------------------


def load_user_data(
    source: Any,
    task: str = "text-classification",
    *,
    columns: Mapping[str, str] | None = None,
    label_names: list[str] | tuple[str, ...] | None = None,
    seed: int = 42,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    limits: Mapping[str, int | None] | None = None,
) -> UserData:
    """Read, check and normalise a user's data for one task.

    Args:
        source: A file (``.csv .tsv .json .jsonl .parquet .txt``; text formats may end in ``.gz``, ``.bz2``, ``.xz``),
            a folder written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``) or holding split files
            (``train.csv``, ``dev.csv``, ``test.csv``), a Hub dataset id present in the local Hugging Face cache (the
            Hub is never contacted), a ``datasets.Dataset`` / ``DatasetDict``, or a mapping of split -> file
            (``train``, ``validation`` (or ``dev``, ``valid``, ``val``), ``test``; any subset with ``train``).
        task: One of :data:`USER_TASKS`.
        columns: Role -> column name in the data (roles ``text``, ``text_pair``, ``label``, ``tokens``, ``tags``,
            ``user``, ``item``, ``timestamp``). Roles not given are found by their conventional names
            (:data:`ROLE_NAMES`, any case); none or several matches is an error naming the columns.
        label_names: Class (or tag) names in id order. String labels must be among them; integer labels are ids
            into them (booleans: 0 and 1), unless every name is an integer (``["1", "2", "3"]``): then integer
            labels are names too. Default: the ``ClassLabel`` feature's names, else the sorted distinct labels of
            train (numerically for integers; ``"O"`` first for tags), and a validation or test label never seen in
            train is an error.
        seed: Seed of the splits made and of the limited subsets.
        validation_fraction, test_fraction: Size of a split made from train when not given, as a fraction of train.
        limits: Split -> number of rows kept (a seeded subset, stratified by label for text classification).

    Returns:
        :class:`UserData` whose ``splits`` hold the normalised columns described there.

    Raises:
        DataError: a problem in the data, naming the file, the column and the 1-based data row.
        ConfigError: a bad argument (unknown task, role or split name, a limit below 2, bad fractions).

    Example:
        ```python
        data = load_user_data("reviews.csv", columns={"text": "review", "label": "stars"}, limits={"train": 2000})
        data.splits["train"].features["label"].names  # ["1", "2", "3", "4", "5"]
        ```
    """
    if task not in USER_TASKS:
        raise ConfigError(f"task must be one of {', '.join(USER_TASKS)}; got {quote(task)}.")
    if not (0 < validation_fraction < 1 and 0 < test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ConfigError(
            "validation_fraction and test_fraction must each be in (0, 1) with a sum below 1, got "
            f"{validation_fraction} and {test_fraction}."
        )
    mapping = dict(columns or {})
    required, optional = _TASK_ROLES[task]
    for role, name in mapping.items():
        if role not in required + optional:
            used = ", ".join(required + optional)
            raise ConfigError(f"columns: task {task} has no role {quote(role)}; its roles are {used}.")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"columns.{role} must be a column name, got {quote(name)}.")
    repeated = sorted({n for n in mapping.values() if list(mapping.values()).count(n) > 1})
    if repeated:
        raise ConfigError(f"columns: {quote(repeated[0])} is given for two roles; each role needs its own column.")
    names = check_label_names(label_names)
    if names is not None and task not in ("text-classification", "token-classification"):
        raise ConfigError(f"label_names is for the classification tasks, not {task}.")
    sizes = _check_limits(limits, task)

    parts, description = read_source(source)
    if "train" not in parts:
        raise DataError(f"has no train split (its splits: {', '.join(parts)}); give a train file.", source=description)
    for part in parts.values():
        if not len(part):
            raise DataError("has no data rows.", source=part.where)
    cols = _resolve_columns(task, parts["train"], mapping)
    for split, part in parts.items():
        missing = [c for c in cols.values() if c not in part.columns]
        if missing:
            raise DataError(
                f"no column {quote(missing[0])} in the {split} split (train has it); its columns are "
                f"{quote(part.columns, 300)}.",
                source=part.where,
                column=missing[0],
            )

    label_tuple = None
    if task == "text-classification":
        splits, label_list = _text_classification(parts, cols, names)
        label_tuple = tuple(label_list)
    elif task == "token-classification":
        splits, label_list = _token_classification(parts, cols, names)
        label_tuple = tuple(label_list)
    elif task == "recsys":
        splits = _recsys(parts, cols)
    else:
        splits = _language_model(parts, cols)

    if task != "recsys":
        splits = _carve(splits, task, seed, validation_fraction, test_fraction, parts["train"].where)
    for split, size in sizes.items():
        if split in splits:
            splits[split] = _limit(splits[split], size, task, seed)
    for split, dataset in splits.items():
        if not len(dataset):
            raise DataError(f"the {split} split is empty.", source=description)
    order = ("train",) if task == "recsys" else SPLITS
    result = DatasetDict({s: splits[s] for s in order})
    logger.info("Data %s for %s: %s.", description, task, ", ".join(f"{len(d)} {s}" for s, d in result.items()))
    return UserData(splits=result, task=task, label_names=label_tuple, source=description, columns=dict(cols))
