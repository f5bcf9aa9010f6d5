"""The user's own data: files, saved data sets, cached Hub data sets and ``datasets`` objects, checked and normalised.

``load_user_data`` reads a source, finds the columns each task needs (by name, or as the ``columns`` mapping says),
checks every value the task will use, and returns a ``DatasetDict`` with the same normalised columns whatever the
source was. Every problem is a :class:`~hf_sparse.errors.DataError` naming the file, the column and the 1-based data
row, raised here, before any model is built: an hour of training must not end on row 90,000 holding a NaN.

The checks are vectorised (pandas / numpy over whole columns); Python loops run only to describe the first bad row.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

from ..errors import ConfigError, DataError, quote
from .rotten_tomatoes import stratified_subset

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
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "eval": "validation",
    "test": "test",
    "testing": "test",
}

_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
}
_COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_INT_TEXT = re.compile(r"[+-]?\d+")


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


@dataclass
class _Part:
    """One split as read: the table, the ``datasets`` features when the source had them, and where it came from."""

    frame: pd.DataFrame
    where: str
    features: Features | None = None
    # CSV/TSV/text cells are read as text; their label, id and time columns are typed here, not by pandas' guess
    text_cells: bool = False


# ----------------------------------------------------------------------------------------------------------------
# reading sources


def _split_name(name: object, where: str) -> str:
    key = str(name).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ConfigError(f"{where}: unknown split {quote(name)}; use train, validation (or dev/valid/val) and test.")
    return _SPLIT_ALIASES[key]


def _file_format(path: Path) -> tuple[str, Any]:
    suffixes = [s.lower() for s in path.suffixes]
    opener = None
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        opener = _COMPRESSIONS[suffixes.pop()]
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None or (opener is not None and fmt == "parquet"):
        raise DataError(
            f"cannot read this file format; use one of {', '.join(sorted(_FORMATS))} (text formats may be "
            f"compressed with {', '.join(sorted(_COMPRESSIONS))}).",
            source=str(path),
        )
    return fmt, opener


def _read_text_file(path: Path, opener) -> str:
    try:
        if opener is None:
            return path.read_text(encoding="utf-8-sig")
        with opener(path, "rt", encoding="utf-8-sig") as handle:
            return handle.read()
    except UnicodeDecodeError as exc:
        raise DataError(
            f"is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8.", source=str(path)
        ) from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"cannot be read: {exc}", source=str(path)) from exc


def _records_frame(records: list, where: str, lines: list[int] | None = None) -> pd.DataFrame:
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            line = f" (line {lines[i]})" if lines is not None else ""
            raise DataError(
                f"holds {quote(record, 60)}{line}, not an object of column -> value; each row must be an object "
                'like {"text": ..., "label": ...}.',
                source=where,
                row=i + 1,
            )
    # object dtype everywhere: pandas must not turn ints into floats around a null, or guess dates
    frame = pd.DataFrame.from_records(records)
    return frame.astype(object) if len(frame.columns) else frame


def _read_json(path: Path, opener) -> pd.DataFrame:
    where = str(path)
    text = _read_text_file(path, opener)
    if not text.strip():
        raise DataError("is empty.", source=where)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":  # "Extra data" after the first value: JSON lines in a .json file
            raise DataError(
                f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.", source=where
            ) from None
        return _read_jsonl_text(text, where)
    if isinstance(document, list):
        return _records_frame(document, where)
    if isinstance(document, dict):
        lists = {k: v for k, v in document.items() if isinstance(v, list)}
        if lists and len(lists) == len(document) and len({len(v) for v in lists.values()}) == 1:
            return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in lists.items()})  # column -> values
        record_lists = [k for k, v in lists.items() if v and all(isinstance(r, dict) for r in v)]
        if len(record_lists) == 1:  # {"data": [{...}, ...], "version": ...}
            return _records_frame(document[record_lists[0]], where)
    raise DataError(
        "holds no table: give a list of row objects, an object of equally long column lists, or JSON lines.",
        source=where,
    )


def _read_jsonl_text(text: str, where: str) -> pd.DataFrame:
    records, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"line {number} is not valid JSON ({exc.msg} at column {exc.colno}): {quote(line, 80)}",
                source=where,
                row=len(records) + 1,
            ) from None
        lines.append(number)
    return _records_frame(records, where, lines)


def _read_file(path: Path) -> _Part:
    fmt, opener = _file_format(path)
    where = str(path)
    if not path.is_file():
        raise DataError("no such file.", source=where)
    if fmt in ("csv", "tsv"):
        try:
            # every cell as text, and only an empty cell is missing ("NA", "null" and "None" are someone's text)
            frame = pd.read_csv(
                path,
                sep="," if fmt == "csv" else "\t",
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                encoding="utf-8-sig",
            )
        except pd.errors.EmptyDataError:
            raise DataError("is empty (not even a header row).", source=where) from None
        except pd.errors.ParserError as exc:
            raise DataError(f"is not a well-formed {fmt.upper()} file: {str(exc).strip()}", source=where) from None
        except UnicodeDecodeError as exc:
            raise DataError(
                f"is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8.", source=where
            ) from None
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise DataError(f"cannot be read: {exc}", source=where) from exc
        unnamed = [c for c in frame.columns if str(c).startswith("Unnamed: ")]
        if unnamed and len(unnamed) == len(frame.columns):
            raise DataError("has a header row with no column names.", source=where)
        return _Part(frame, where, text_cells=True)
    if fmt == "json":
        return _Part(_read_json(path, opener), where)
    if fmt == "jsonl":
        return _Part(_read_jsonl_text(_read_text_file(path, opener), where), where)
    if fmt == "text":
        lines = [line for line in _read_text_file(path, opener).splitlines() if line.strip()]
        return _Part(pd.DataFrame({"text": pd.Series(lines, dtype=object)}), where)
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for a damaged or foreign file
        raise DataError(f"is not a readable parquet file: {exc}", source=where) from exc
    features = None
    if table.schema.metadata and b"huggingface" in table.schema.metadata:
        features = Features.from_arrow_schema(table.schema)  # written by datasets: keeps ClassLabel names
    return _Part(table.to_pandas(), where, features=features)


def _dataset_part(dataset: Dataset, where: str) -> _Part:
    return _Part(dataset.to_pandas(), where, features=dataset.features)


def _from_dataset_dict(dd: DatasetDict, where: str) -> dict[str, _Part]:
    parts: dict[str, _Part] = {}
    for name, dataset in dd.items():
        key = _SPLIT_ALIASES.get(str(name).lower())
        if key is None:
            logger.warning("%s: split %s is not train/validation/test and is not used.", where, quote(name))
            continue
        if key in parts:
            raise DataError(f"has two splits that both mean {key!r}; keep one.", source=where)
        parts[key] = _dataset_part(dataset, f"{where} (split {name!r})")
    if not parts:
        raise DataError(f"has no train, validation or test split (its splits: {quote(list(dd))}).", source=where)
    return parts


def _hub_offline():
    """Force the Hub offline for one call: a dataset id is read from the local cache or not at all (no retries)."""
    from contextlib import ExitStack
    from unittest import mock

    import datasets.config
    import huggingface_hub.constants

    stack = ExitStack()
    stack.enter_context(mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True))
    stack.enter_context(mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True))
    return stack


def _load_cached_hub(repo_id: str) -> DatasetDict:
    import datasets
    import huggingface_hub.constants
    from huggingface_hub import snapshot_download

    with _hub_offline():
        try:
            # a dataset repository downloaded into the Hub cache (snapshot_download, hf download ...)
            snapshot = snapshot_download(
                repo_id, repo_type="dataset", local_files_only=True, cache_dir=huggingface_hub.constants.HF_HUB_CACHE
            )
        except Exception:  # LocalEntryNotFoundError and friends: not in that cache
            snapshot = None
        try:
            if snapshot is not None:
                loaded = datasets.load_dataset(snapshot)
            else:
                # a dataset loaded once with datasets.load_dataset: its prepared Arrow files in the datasets cache
                loaded = datasets.load_dataset(repo_id)
        except Exception as exc:
            if snapshot is None:
                raise DataError(
                    "is neither a file or folder nor a dataset in the local Hugging Face cache (the Hub is never "
                    f"contacted). Download it first where there is a network (datasets.load_dataset({repo_id!r}) "
                    "or `hf download --repo-type dataset ...`), or give a file or a save_to_disk folder.",
                    source=repo_id,
                ) from exc
            raise DataError(f"is in the Hub cache ({snapshot}) but cannot be loaded: {exc}", source=repo_id) from exc
    if isinstance(loaded, Dataset):
        loaded = DatasetDict(train=loaded)
    return loaded


def _read_source(source: Any) -> tuple[dict[str, _Part], str]:
    """The source's splits as read, and a short description of it."""
    if isinstance(source, Dataset):
        return {"train": _dataset_part(source, "the given Dataset")}, "a Dataset object"
    if isinstance(source, DatasetDict):
        return _from_dataset_dict(source, "the given DatasetDict"), "a DatasetDict object"
    if isinstance(source, Mapping):
        parts: dict[str, _Part] = {}
        for name, file in source.items():
            key = _split_name(name, "the split files")
            if key in parts:
                raise ConfigError(f"the split files name {key!r} twice (as aliases); give one file for it.")
            if not isinstance(file, (str, Path)):
                raise ConfigError(f"the split files: {name!r} must be a file path, got {quote(file)}.")
            parts[key] = _read_file(Path(file).expanduser())
        if not parts:
            raise ConfigError("the split files mapping is empty; give at least {'train': FILE}.")
        return parts, ", ".join(f"{k}: {Path(p.where).name}" for k, p in parts.items())
    if not isinstance(source, (str, Path)):
        raise ConfigError(
            "data source must be a file or folder path, a dataset id in the local Hugging Face cache, a "
            f"datasets.Dataset or DatasetDict, or a mapping of split -> file; got {type(source).__name__}."
        )
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_folder(path), path.name or str(path)
    if (
        path.exists()
        or isinstance(source, Path)
        or path.suffix.lower() in _FORMATS
        or not _HUB_ID.fullmatch(str(source))
    ):
        return {"train": _read_file(path)}, path.name
    return _from_dataset_dict(_load_cached_hub(str(source)), str(source)), str(source)


def _read_folder(path: Path) -> dict[str, _Part]:
    import datasets

    where = str(path)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # a damaged or partly copied folder
            raise DataError(f"is a save_to_disk folder that cannot be loaded: {exc}", source=where) from exc
        if isinstance(loaded, Dataset):
            return {"train": _dataset_part(loaded, where)}
        return _from_dataset_dict(loaded, where)
    # a folder of split files: train.csv, dev.csv, test.csv ...
    files: dict[str, Path] = {}
    for file in sorted(path.iterdir()):
        stem = file.name.split(".")[0].lower()
        if file.is_file() and stem in _SPLIT_ALIASES:
            key = _SPLIT_ALIASES[stem]
            if key in files:
                raise DataError(f"holds two files for the {key} split ({files[key].name}, {file.name}).", source=where)
            files[key] = file
    if "train" not in files:
        raise DataError(
            "is neither a folder written by save_to_disk (no dataset_dict.json or state.json) nor a folder of "
            "split files (train.csv, validation.csv, test.csv ...).",
            source=where,
        )
    return {key: _read_file(file) for key, file in files.items()}


# ----------------------------------------------------------------------------------------------------------------
# columns


def _match(columns: list[str], name: str) -> list[str]:
    exact = [c for c in columns if c == name]
    return exact or [c for c in columns if c.lower() == name.lower()]


def _resolve_columns(task: str, part: _Part, mapping: Mapping[str, str]) -> dict[str, str]:
    """Role -> column of ``part``: the mapping's choices, then the conventional names (one match each)."""
    required, optional = _TASK_ROLES[task]
    available = [str(c) for c in part.frame.columns]
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
# value checks (whole columns at once; the first bad row only is described)


def _kind(value: Any) -> str:
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


def _is_null(series: pd.Series) -> np.ndarray:
    if pd.api.types.is_object_dtype(series.dtype):
        # lists and arrays are values, not nulls (pd.isna would look inside them)
        return series.map(lambda v: v is None or (isinstance(v, float) and math.isnan(v))).to_numpy(bool)
    return series.isna().to_numpy(bool)


def _kinds(series: pd.Series) -> np.ndarray:
    """The kind of every value (``string``, ``integer``, ``number``, ``boolean``, ``list`` ...), nulls included."""
    dtype = series.dtype
    if not pd.api.types.is_object_dtype(dtype):
        if pd.api.types.is_bool_dtype(dtype):
            kind = "boolean"
        elif pd.api.types.is_integer_dtype(dtype):
            kind = "integer"
        elif pd.api.types.is_float_dtype(dtype):
            kind = "number"
        elif pd.api.types.is_string_dtype(dtype):
            kind = "string"
        else:
            kind = str(dtype)
        return np.full(len(series), kind, dtype=object)
    return series.map(_kind).to_numpy(object)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _check_uniform(series: pd.Series, where: str, column: str, what: str) -> str:
    """The one kind of the column's non-null values; mixed kinds (numbers and strings...) are an error."""
    null = _is_null(series)
    if null.any():
        i = _first(null)
        raise DataError(
            f"{what} is missing (an empty cell, null or NaN); fill it in or drop the row.",
            source=where,
            column=column,
            row=i + 1,
        )
    kinds = _kinds(series)
    kinds = np.where(kinds == "number", "integer", kinds) if (kinds == "integer").any() else kinds
    values, counts = np.unique(kinds.astype(str), return_counts=True)
    if len(values) > 1:
        common = values[np.argmax(counts)]
        i = _first(kinds != common)
        raise DataError(
            f"mixed types: this row holds {quote(series.iloc[i], 80)} ({kinds[i]}) while the other rows hold "
            f"{common} values; make the column one type.",
            source=where,
            column=column,
            row=i + 1,
        )
    return str(values[0]) if len(values) else "string"


def _check_text(series: pd.Series, where: str, column: str) -> list[str]:
    kind = _check_uniform(series, where, column, "the text")
    if kind != "string":
        raise DataError(
            f"holds {kind} values ({quote(series.iloc[0], 60)} in row 1), not text.", source=where, column=column
        )
    empty = (series.astype(str).str.strip() == "").to_numpy(bool)
    if empty.any():
        raise DataError(
            "the text is empty; fill it in or drop the row.", source=where, column=column, row=_first(empty) + 1
        )
    return series.astype(str).tolist()


def _scalar_values(series: pd.Series, part: _Part, column: str, what: str) -> tuple[np.ndarray, str]:
    """A label / id column's values and their kind (string, integer or boolean); integral floats become ints."""
    if part.text_cells:  # CSV cells: integers and true/false read as such when the whole column is
        text = series
        null = _is_null(series)
        if not null.any():
            stripped = series.astype(str).str.strip()
            if stripped.str.fullmatch(_INT_TEXT.pattern).all():
                series = stripped.astype("int64")
            elif stripped.str.lower().isin(["true", "false"]).all():
                series = stripped.str.lower() == "true"
            else:
                series = text
    kind = _check_uniform(series, part.where, column, what)
    if kind == "number":
        values = series.to_numpy(float)
        bad = values != np.round(values)
        if bad.any():
            i = _first(bad)
            raise DataError(
                f"{what} {quote(series.iloc[i])} is not whole; labels must be strings, integers or booleans "
                "(regression targets are not supported).",
                source=part.where,
                column=column,
                row=i + 1,
            )
        return values.astype(np.int64), "integer"
    if kind not in ("string", "integer", "boolean"):
        raise DataError(
            f"{what} must be strings, integers or booleans; row 1 holds {quote(series.iloc[0], 80)} ({kind}).",
            source=part.where,
            column=column,
            row=1,
        )
    dtype = {"string": object, "integer": np.int64, "boolean": bool}[kind]
    return series.to_numpy(dtype), kind


def _class_label_names(features: Features | None, column: str) -> list[str] | None:
    if features is None or column not in features:
        return None
    feature = features[column]
    feature = getattr(feature, "feature", feature)  # List(ClassLabel) / Sequence(ClassLabel)
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def _sorted_names(values: np.ndarray, kind: str, o_first: bool = False) -> list[str]:
    distinct = sorted(set(values.tolist()))
    names = [str(v) for v in distinct]
    if o_first and "O" in names:
        names.remove("O")
        names.insert(0, "O")
    return names


def _encode(
    values: np.ndarray,
    kind: str,
    names: list[str],
    *,
    where: str,
    column: str,
    rows: np.ndarray | None,
    split: str,
    from_train: bool,
) -> np.ndarray:
    """Ids of ``values`` in ``names``: strings by name, integers and booleans as ids (ints) or by their text."""
    if kind == "integer" and not from_train:
        ids = values.astype(np.int64)
        bad = (ids < 0) | (ids >= len(names))
        if bad.any():
            i = _first(bad)
            hint = " (-1 is a ClassLabel's 'no label': this split carries no labels)" if ids[i] == -1 else ""
            raise DataError(
                f"label id {ids[i]} is outside the {len(names)} label names (ids 0..{len(names) - 1}: "
                f"{quote(names, 200)}){hint}.",
                source=where,
                column=column,
                row=int(rows[i] if rows is not None else i) + 1,
            )
        return ids
    lookup = {name: i for i, name in enumerate(names)}
    text = pd.Series(values, dtype=object).map(str) if kind != "string" else pd.Series(values, dtype=object)
    ids = text.map(lookup)
    unknown = ids.isna().to_numpy(bool)
    if unknown.any():
        i = _first(unknown)
        if from_train:
            problem = f"label {quote(values[i])} in the {split} split never appears in train"
            known = f"the labels seen in train are {quote(names, 200)}"
        else:
            problem = f"label {quote(values[i])} is not one of the label names"
            known = f"they are {quote(names, 200)}"
        raise DataError(
            f"{problem}; {known}.", source=where, column=column, row=int(rows[i] if rows is not None else i) + 1
        )
    return ids.to_numpy(np.int64)


def _check_names(label_names: Any) -> list[str] | None:
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


def _label_ids(
    values: dict[str, tuple[np.ndarray, str]],
    parts: dict[str, _Part],
    column: str,
    label_names: list[str] | None,
    feature_names: list[str] | None,
    rows: dict[str, np.ndarray | None],
    o_first: bool = False,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Ids of every split's labels and the names they index, by the contract's rules."""
    train_values, train_kind = values["train"]
    names = label_names or feature_names
    from_train = names is None
    if from_train:
        names = _sorted_names(train_values, train_kind, o_first)
    ids: dict[str, np.ndarray] = {}
    for split, (vals, kind) in values.items():
        if from_train and kind != train_kind and len(vals):
            raise DataError(
                f"labels are {kind} values here but {train_kind} values in train; make them one type.",
                source=parts[split].where,
                column=column,
                row=1 if rows[split] is None else int(rows[split][0]) + 1,
            )
        ids[split] = _encode(
            vals,
            kind,
            names,
            where=parts[split].where,
            column=column,
            rows=rows[split],
            split=split,
            from_train=from_train,
        )
    present = np.unique(ids["train"])
    if len(present) < 2:
        only = names[int(present[0])] if len(present) else "none"
        raise DataError(
            f"every train label is {quote(only)}: a label column needs at least two classes to learn from.",
            source=parts["train"].where,
            column=column,
        )
    return ids, names


def _list_column(series: pd.Series, where: str, column: str, what: str) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """A column of lists (or whitespace-separated strings, as CSV holds them) exploded to one row per element, and
    the length of each row's list."""
    null = _is_null(series)
    if null.any():
        raise DataError(f"the {what} are missing (null or NaN).", source=where, column=column, row=_first(null) + 1)
    kinds = _kinds(series)
    if (kinds == "string").all():
        series = series.astype(str).str.split()
        kinds = np.full(len(series), "list", dtype=object)
    bad = kinds != "list"
    if bad.any():
        i = _first(bad)
        raise DataError(
            f"the {what} must be a list (or a whitespace-separated string); this row holds "
            f"{quote(series.iloc[i], 80)} ({kinds[i]}).",
            source=where,
            column=column,
            row=i + 1,
        )
    lengths = series.map(len).to_numpy(np.int64)
    empty = lengths == 0
    if empty.any():
        raise DataError(f"the {what} list is empty.", source=where, column=column, row=_first(empty) + 1)
    exploded = series.explode()
    # each element's row, to name the row of a bad element
    rows = exploded.index.to_numpy(np.int64)
    return exploded.reset_index(drop=True), lengths, rows


def _check_elements(values: pd.Series, rows: np.ndarray, column: str, where: str, what: str) -> tuple[np.ndarray, str]:
    null = _is_null(values)
    if null.any():
        i = _first(null)
        raise DataError(f"an element of the {what} is null.", source=where, column=column, row=int(rows[i]) + 1)
    kinds = _kinds(values)
    kinds = np.where(kinds == "number", "integer", kinds) if (kinds == "integer").any() else kinds
    distinct, counts = np.unique(kinds.astype(str), return_counts=True)
    if len(distinct) > 1:
        common = distinct[np.argmax(counts)]
        i = _first(kinds != common)
        raise DataError(
            f"mixed types in the {what}: {quote(values.iloc[i], 80)} ({kinds[i]}) among {common} values.",
            source=where,
            column=column,
            row=int(rows[i]) + 1,
        )
    return values.to_numpy(object), str(distinct[0])


# ----------------------------------------------------------------------------------------------------------------
# per task


def _text_classification(parts, cols, label_names):
    label_col = cols["label"]
    texts, pairs, values = {}, {}, {}
    for split, part in parts.items():
        texts[split] = _check_text(part.frame[cols["text"]], part.where, cols["text"])
        if "text_pair" in cols:
            pairs[split] = _check_text(part.frame[cols["text_pair"]], part.where, cols["text_pair"])
        values[split] = _scalar_values(part.frame[label_col], part, label_col, "the label")
    feature_names = _class_label_names(parts["train"].features, label_col)
    ids, names = _label_ids(values, parts, label_col, label_names, feature_names, dict.fromkeys(parts))
    features = {"text": Value("string")}
    if pairs:
        features["text_pair"] = Value("string")
    features["label"] = ClassLabel(names=names)
    out = {}
    for split in parts:
        data = {"text": texts[split]}
        if pairs:
            data["text_pair"] = pairs[split]
        data["label"] = ids[split].tolist()
        out[split] = Dataset.from_dict(data, features=Features(features))
    return out, names


def _token_classification(parts, cols, label_names):
    tok_col, tag_col = cols["tokens"], cols["tags"]
    tokens, lengths, values, rows = {}, {}, {}, {}
    for split, part in parts.items():
        exploded, tok_len, tok_rows = _list_column(part.frame[tok_col], part.where, tok_col, "tokens")
        elements, kind = _check_elements(exploded, tok_rows, tok_col, part.where, "tokens")
        if kind != "string":
            raise DataError(f"tokens must be strings, found {kind} values.", source=part.where, column=tok_col, row=1)
        exploded_tags, tag_len, tag_rows = _list_column(part.frame[tag_col], part.where, tag_col, "tags")
        differ = tok_len != tag_len
        if differ.any():
            i = _first(differ)
            raise DataError(
                f"{tag_len[i]} tags for {tok_len[i]} tokens (column {quote(tok_col)}); each token needs one tag.",
                source=part.where,
                column=tag_col,
                row=i + 1,
            )
        tag_values, tag_kind = _check_elements(exploded_tags, tag_rows, tag_col, part.where, "tags")
        if tag_kind == "number":
            tag_values = np.asarray(tag_values, dtype=float)
            if (tag_values != np.round(tag_values)).any():
                i = _first(tag_values != np.round(tag_values))
                raise DataError(
                    f"tag {tag_values[i]} is not whole; tags are names or integer ids.",
                    source=part.where,
                    column=tag_col,
                    row=int(tag_rows[i]) + 1,
                )
            tag_values, tag_kind = tag_values.astype(np.int64), "integer"
        elif tag_kind not in ("string", "integer"):
            raise DataError(
                f"tags must be names (strings) or integer ids, found {tag_kind} values.",
                source=part.where,
                column=tag_col,
                row=1,
            )
        tokens[split] = elements
        lengths[split] = tok_len
        values[split] = (tag_values if tag_kind != "integer" else np.asarray(tag_values, np.int64), tag_kind)
        rows[split] = tag_rows
    feature_names = _class_label_names(parts["train"].features, tag_col)
    ids, names = _label_ids(values, parts, tag_col, label_names, feature_names, rows, o_first=True)
    features = Features({"tokens": List(Value("string")), "tags": List(ClassLabel(names=names))})
    out = {}
    for split in parts:
        bounds = np.cumsum(lengths[split])[:-1]
        out[split] = Dataset.from_dict(
            {
                "tokens": [list(t) for t in np.split(tokens[split], bounds)],
                "tags": [t.tolist() for t in np.split(ids[split], bounds)],
            },
            features=features,
        )
    return out, names


def _language_model(parts, cols):
    features = Features({"text": Value("string")})
    return {
        split: Dataset.from_dict(
            {"text": _check_text(part.frame[cols["text"]], part.where, cols["text"])}, features=features
        )
        for split, part in parts.items()
    }


def _recsys(parts, cols):
    users, items, times = [], [], []
    offset = 0
    for part in parts.values():
        for role, out in (("user", users), ("item", items)):
            values, kind = _scalar_values(part.frame[cols[role]], part, cols[role], f"the {role} id")
            out.extend(values.astype(str).tolist() if kind != "string" else [str(v) for v in values])
        n = len(part.frame)
        if "timestamp" in cols:
            times.append(_timestamps(part.frame[cols["timestamp"]], part, cols["timestamp"]))
        else:  # no time: the file's row order is the order of each user's history
            times.append(np.arange(offset, offset + n, dtype=np.float64))
        offset += n
    features = Features({"user": Value("string"), "item": Value("string"), "timestamp": Value("float64")})
    data = {"user": users, "item": items, "timestamp": np.concatenate(times).tolist()}
    return {"train": Dataset.from_dict(data, features=features)}


def _timestamps(series: pd.Series, part: _Part, column: str) -> np.ndarray:
    if part.text_cells:
        numeric = pd.to_numeric(series, errors="coerce")
        if not numeric.isna().any():
            series = numeric
    kind = _check_uniform(series, part.where, column, "the timestamp")
    if kind in ("integer", "number"):
        values = series.to_numpy(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError("the timestamp is not finite.", source=part.where, column=column, row=_first(bad) + 1)
        return values
    if kind != "string":
        raise DataError(
            f"timestamps must be numbers or date-time strings, found {kind} values.", source=part.where, column=column
        )
    parsed = pd.to_datetime(series, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna().to_numpy(bool)
    if bad.any():
        i = _first(bad)
        raise DataError(
            f"{quote(series.iloc[i], 80)} is not a date-time (use seconds since 1970 or ISO 8601, 2024-05-01 12:00).",
            source=part.where,
            column=column,
            row=i + 1,
        )
    return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(np.float64)


# ----------------------------------------------------------------------------------------------------------------
# splits and limits


def _carve(
    splits: dict[str, Dataset], task: str, seed: int, validation_fraction: float, test_fraction: float, where: str
) -> dict[str, Dataset]:
    """Make the missing validation / test splits from train (fractions of train as given; stratified by label for
    text classification when every class has enough members, else a seeded shuffle)."""
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
    for split in missing:
        stratify = "label" if task == "text-classification" else None
        try:
            parts = train.train_test_split(test_size=sizes[split], stratify_by_column=stratify, seed=seed)
        except ValueError:  # a class too rare to be in both parts: a plain seeded split instead
            logger.info("%s split of %s is not stratified: some class has too few rows.", split, where)
            parts = train.train_test_split(test_size=sizes[split], seed=seed)
        train, splits[split] = parts["train"], parts["test"]
    splits["train"] = train
    return splits


def _check_limits(limits: Any, task: str) -> dict[str, int]:
    if limits is None:
        return {}
    if not isinstance(limits, Mapping):
        raise ConfigError(f"limits must be a mapping of split -> number of rows, got {quote(limits)}.")
    out: dict[str, int] = {}
    for name, value in limits.items():
        split = _split_name(name, "limits")
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
    if size >= len(dataset):
        return dataset
    if task == "text-classification":
        try:
            return stratified_subset(dataset, size, seed=seed)
        except ValueError:  # too few rows of some class for a stratified subset
            pass
    order = np.random.default_rng(seed).permutation(len(dataset))[:size]
    if task == "recsys":  # keep the interactions in their order
        order = np.sort(order)
    return dataset.select(order.tolist())


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
            into them. Default: the ``ClassLabel`` feature's names, else the sorted distinct labels of train
            (numerically for integers; ``"O"`` first for tags).
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
    names = _check_names(label_names)
    if names is not None and task not in ("text-classification", "token-classification"):
        raise ConfigError(f"label_names is for the classification tasks, not {task}.")
    sizes = _check_limits(limits, task)

    parts, description = _read_source(source)
    if "train" not in parts:
        raise DataError(f"has no train split (its splits: {', '.join(parts)}); give a train file.", source=description)
    for part in parts.values():
        part.frame = part.frame.reset_index(drop=True)
        part.frame.columns = [str(c) for c in part.frame.columns]
        if not len(part.frame):
            raise DataError("has no data rows.", source=part.where)
    cols = _resolve_columns(task, parts["train"], mapping)
    for split, part in parts.items():
        missing = [c for c in cols.values() if c not in part.frame.columns]
        if missing:
            raise DataError(
                f"no column {quote(missing[0])} in the {split} split (train has it); its columns are "
                f"{quote(list(part.frame.columns), 300)}.",
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
