"""Checks of a user's column values, whole columns at a time, and label encoding.

Each check runs vectorised over the column (pandas / numpy); only when it fails does Python look at single values,
to describe the first bad row. Rows in messages are 1-based data rows of the table as read (a CSV header is not a
row). Element checks of list columns (tokens, tags) take ``rows``: the table row of each element.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from datasets import ClassLabel, Features

from ..errors import ConfigError, DataError, quote

# pandas.api.types.infer_dtype's answer -> the kind used in messages, for columns of one kind
_INFERRED = {
    "string": "string",
    "integer": "integer",
    "floating": "number",
    "mixed-integer-float": "number",
    "decimal": "number",
    "boolean": "boolean",
}
_INT_TEXT = re.compile(r"[+-]?\d+")


def first(mask: np.ndarray) -> int:
    """Index of the first true entry of ``mask``."""
    return int(np.flatnonzero(mask)[0])


def _row(i: int, rows: np.ndarray | None) -> int:
    return int(rows[i] if rows is not None else i) + 1


def kind_of(value: Any) -> str:
    """The kind of one value as a user would call it."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, (int, np.integer)):
        return "integer"
    if isinstance(value, (float, np.floating)):
        return "number"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def uniform_kind(
    values: pd.Series, *, source: str, column: str, what: str, rows: np.ndarray | None = None, nulls: bool = True
) -> str:
    """The one kind of a column's values (integers and floats are both numbers); a missing value (with ``nulls``)
    or values of two kinds (numbers and strings ...) is a :class:`DataError` at the first row that differs."""
    if nulls:
        # isna on an object column tests each value and never looks inside a list
        null = values.isna().to_numpy(bool)
        if null.any():
            raise DataError(
                f"{what} is missing (an empty cell, null or NaN); fill it in or drop the row.",
                source=source,
                column=column,
                row=_row(first(null), rows),
            )
    if not len(values):
        return "string"
    kind = _INFERRED.get(pd.api.types.infer_dtype(values, skipna=True))
    if kind is not None:
        return kind
    kinds = values.map(kind_of).to_numpy(object)
    if (kinds == "integer").any():
        kinds = np.where(kinds == "number", "integer", kinds)
    distinct, counts = np.unique(kinds.astype(str), return_counts=True)
    if len(distinct) == 1:
        return str(distinct[0])
    common = distinct[np.argmax(counts)]
    i = first(kinds != common)
    raise DataError(
        f"mixed types: {quote(values.iloc[i], 80)} ({kinds[i]}) among {common} values; make {what} one type.",
        source=source,
        column=column,
        row=_row(i, rows),
    )


def text_values(values: pd.Series, *, source: str, column: str) -> np.ndarray:
    """The column as an array of non-empty strings."""
    kind = uniform_kind(values, source=source, column=column, what="the text")
    if kind != "string":
        raise DataError(
            f"holds {kind} values ({quote(values.iloc[0], 60)} here), not text; name the text column with "
            "columns={'text': ...}.",
            source=source,
            column=column,
            row=1,
        )
    empty = (values.str.strip() == "").to_numpy(bool)
    if empty.any():
        raise DataError(
            "the text is empty; fill it in or drop the row.", source=source, column=column, row=first(empty) + 1
        )
    return values.to_numpy(object)


def scalar_values(
    values: pd.Series,
    *,
    source: str,
    column: str,
    what: str,
    text_cells: bool = False,
    rows: np.ndarray | None = None,
    strict: bool = False,
) -> tuple[np.ndarray, str]:
    """A label or id column as an array and its kind (``string``, ``integer`` or ``boolean``).

    Whole floats (an integer column that went through a float type) become integers; other floats are an error.
    With ``text_cells`` (CSV cells, all read as text), a column whose every cell is an integer or true/false is read
    as integers or booleans; with ``strict`` too (labels, not ids: an item id may be "B00005N5PF" or "0439785960"),
    integer cells beside other text are mixed types (``5, 4, five``).
    """
    if text_cells and not values.isna().any():
        stripped = values.astype(str).str.strip()
        integers = stripped.str.fullmatch(_INT_TEXT.pattern).to_numpy(bool)
        if strict and integers.any() and not integers.all():
            mostly_integers = integers.sum() * 2 >= len(integers)
            i = first(~integers if mostly_integers else integers)  # the first row of the rarer kind
            common = "integer" if mostly_integers else "text"
            raise DataError(
                f"mixed types: {quote(values.iloc[i], 80)} among {common} values; make {what} one type.",
                source=source,
                column=column,
                row=_row(i, rows),
            )
        if integers.all():
            values = stripped.astype("int64")
        elif stripped.str.lower().isin(["true", "false"]).all():
            values = stripped.str.lower() == "true"
    kind = uniform_kind(values, source=source, column=column, what=what, rows=rows)
    if kind == "number":
        numbers = values.to_numpy(float)
        bad = numbers != np.round(numbers)
        if bad.any():
            i = first(bad)
            raise DataError(
                f"{what} {quote(values.iloc[i])} is not whole; it must be a string, an integer or a boolean"
                + (" (regression targets are not supported)." if what == "the label" else "."),
                source=source,
                column=column,
                row=_row(i, rows),
            )
        return numbers.astype(np.int64), "integer"
    if kind not in ("string", "integer", "boolean"):
        raise DataError(
            f"{what} must be a string, an integer or a boolean, not a {kind} ({quote(values.iloc[0], 80)}).",
            source=source,
            column=column,
            row=_row(0, rows),
        )
    if kind == "string":
        empty = (values.str.strip() == "").to_numpy(bool)
        if empty.any():
            raise DataError(
                f"{what} is empty; fill it in or drop the row.",
                source=source,
                column=column,
                row=_row(first(empty), rows),
            )
    if kind == "integer":
        try:
            return values.to_numpy(np.int64), kind
        except (OverflowError, ValueError):  # Python ints beyond 64 bits (from JSON)
            big = values.map(lambda v: not -(2**63) <= v < 2**63).to_numpy(bool)
            raise DataError(
                f"{what} {quote(values.iloc[first(big)])} is too large for a 64-bit integer.",
                source=source,
                column=column,
                row=_row(first(big), rows),
            ) from None
    return values.to_numpy({"string": object, "boolean": bool}[kind]), kind


def list_values(values: pd.Series, *, source: str, column: str, what: str) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """A column of lists (or of whitespace-separated strings, as a CSV file holds them) as one series of all the
    elements, the length of each row's list, and the row of each element."""
    null = values.isna().to_numpy(bool)
    if null.any():
        raise DataError(f"the {what} are missing (null or NaN).", source=source, column=column, row=first(null) + 1)
    if pd.api.types.infer_dtype(values, skipna=False) == "string":
        values = values.str.split()
    else:
        is_list = values.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).to_numpy(bool)
        if not is_list.all():
            i = first(~is_list)
            raise DataError(
                f"the {what} must be a list (or a whitespace-separated string), not {quote(values.iloc[i], 80)} "
                f"({kind_of(values.iloc[i])}).",
                source=source,
                column=column,
                row=i + 1,
            )
    lengths = values.map(len).to_numpy(np.int64)
    empty = lengths == 0
    if empty.any():
        raise DataError(f"the {what} list is empty.", source=source, column=column, row=first(empty) + 1)
    elements = values.explode()
    rows = elements.index.to_numpy(np.int64)
    elements = elements.reset_index(drop=True)
    null = elements.isna().to_numpy(bool)
    if null.any():
        raise DataError(
            f"an element of the {what} list is null.", source=source, column=column, row=int(rows[first(null)]) + 1
        )
    return elements, lengths, rows


def check_label_names(label_names: Any) -> list[str] | None:
    """``label_names`` as a list of distinct non-empty strings (at least two), or ``None``."""
    if label_names is None:
        return None
    if isinstance(label_names, (str, bytes)) or not all(isinstance(n, str) and n for n in label_names):
        raise ConfigError(f"label_names must be a list of non-empty strings, got {quote(label_names)}.")
    names = list(label_names)
    if len(set(names)) != len(names):
        raise ConfigError(f"label_names repeats a name: {quote(names)}.")
    if len(names) < 2:
        raise ConfigError(f"label_names needs at least two classes, got {quote(names)}.")
    return names


def class_label_names(features: Features | None, column: str) -> list[str] | None:
    """The names of ``column``'s ``ClassLabel`` (or of its list's elements), if it has one."""
    if features is None or column not in features:
        return None
    feature = features[column]
    feature = getattr(feature, "feature", feature)  # List(ClassLabel) / Sequence(ClassLabel)
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def _encode(values, kind, keys, names, *, source, column, rows, split, from_train, by_id) -> np.ndarray:
    """Ids of ``values``: the values themselves (``by_id``), or their place in ``keys`` (the raw values, or the
    names, in id order)."""
    if by_id:
        ids = values.astype(np.int64)
        bad = (ids < 0) | (ids >= len(names))
        if bad.any():
            i = first(bad)
            hint = " (-1 is a ClassLabel's 'no label': this split carries no labels)" if ids[i] == -1 else ""
            raise DataError(
                f"label id {ids[i]} is outside the {len(names)} label names (ids 0..{len(names) - 1}: "
                f"{quote(names, 200)}){hint}.",
                source=source,
                column=column,
                row=_row(i, rows),
            )
        return ids
    if kind != "string" and not from_train:  # integers looked up among names that are all integers
        values = values.astype(str).astype(object)
    ids = pd.Index(keys, dtype=object).get_indexer(pd.Index(values, dtype=object))  # hashed, -1 when absent
    unknown = ids < 0
    if unknown.any():
        i = first(unknown)
        if from_train:
            problem = f"label {quote(values[i])} in the {split} split never appears in train"
            known = f"the labels seen in train are {quote(names, 200)}"
        else:
            problem = f"label {quote(values[i])} is not one of the label names"
            known = f"they are {quote(names, 200)}"
        raise DataError(f"{problem}; {known}.", source=source, column=column, row=_row(i, rows))
    return ids.astype(np.int64)


def encode_labels(
    values: dict[str, tuple[np.ndarray, str]],
    sources: dict[str, str],
    column: str,
    *,
    label_names: list[str] | None,
    feature_names: list[str] | None,
    rows: dict[str, np.ndarray | None],
    o_first: bool = False,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every split's label ids and the names they index.

    Names: ``label_names`` if given, else the ``ClassLabel``'s, else train's sorted distinct values (``"O"`` first
    with ``o_first``). With names given (or a ``ClassLabel``), strings must be names and integers (booleans: 0 and
    1) are ids, except when every given name is an integer ("1" .. "5"): then integers are names too. With names
    from train, a validation/test label not in train is an error. In every case train must hold at least two
    classes.
    """
    train_values, train_kind = values["train"]
    names = label_names or feature_names
    from_train = names is None
    if from_train:
        keys = sorted(pd.unique(train_values).tolist())
        if o_first and "O" in keys:
            keys.remove("O")
            keys.insert(0, "O")
        names = [str(k) for k in keys]
    else:
        keys = names
    ids: dict[str, np.ndarray] = {}
    for split, (split_values, kind) in values.items():
        if from_train and kind != train_kind:
            raise DataError(
                f"labels are {kind} values in the {split} split but {train_kind} values in train; make them one type.",
                source=sources[split],
                column=column,
                row=_row(0, rows[split]),
            )
        ids[split] = _encode(
            split_values,
            kind,
            keys,
            names,
            source=sources[split],
            column=column,
            rows=rows[split],
            split=split,
            from_train=from_train,
            # integers (and booleans) index the names, unless the names given are themselves integers ("1".."5")
            by_id=not from_train
            and kind in ("integer", "boolean")
            and not (label_names and all(_INT_TEXT.fullmatch(n) for n in label_names)),
        )
    present = np.unique(ids["train"])
    if len(present) < 2:
        raise DataError(
            f"every train label is {quote(names[int(present[0])])}: a label column needs at least two classes to "
            "learn from.",
            source=sources["train"],
            column=column,
        )
    return ids, names
