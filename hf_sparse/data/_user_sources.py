"""Reading a user's data source into one pandas table per split, with where each came from.

Sources: local files (CSV, TSV, JSON, JSON lines, parquet, text; text formats optionally compressed), a folder written
by ``save_to_disk`` or holding split files, a Hub dataset id present in the local cache (the Hub forced offline), a
``datasets.Dataset`` / ``DatasetDict``, a mapping of split -> file. Tables keep the user's column names and values;
``hf_sparse.data.user`` checks and normalises them.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
import pyarrow as pa
from datasets import Dataset, DatasetDict, Features

from ..errors import ConfigError, DataError, quote

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {
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


@dataclass
class Part:
    """One split as read: its table, where it came from, and the ``datasets`` features when the source had them.

    The table is a pandas frame (text formats) or Arrow data (parquet, ``datasets`` objects); Arrow columns are
    converted to pandas one at a time, when a role needs them, so unused columns (images, long metadata) cost
    nothing.
    """

    frame: pd.DataFrame | None
    where: str
    features: Features | None = None
    # CSV/TSV cells are read as text; their label, id and time columns are typed here, not by pandas' guess
    text_cells: bool = False
    arrow: pa.Table | Dataset | None = None

    @property
    def columns(self) -> list[str]:
        names = self.frame.columns if self.frame is not None else self.arrow.column_names
        return [str(c) for c in names]

    def __len__(self) -> int:
        return len(self.frame) if self.frame is not None else len(self.arrow)

    def column(self, name: str) -> pd.Series:
        """The column's values, indexed by data row from 0."""
        if self.frame is not None:
            return self.frame[name].reset_index(drop=True)
        if isinstance(self.arrow, Dataset):
            return self.arrow.select_columns([name]).to_pandas()[name]
        return self.arrow.column(name).to_pandas()


# ----------------------------------------------------------------------------------------------------------------
# reading sources


def split_name(name: object, where: str) -> str:
    key = str(name).strip().lower()
    if key not in SPLIT_ALIASES:
        raise ConfigError(f"{where}: unknown split {quote(name)}; use train, validation (or dev/valid/val) and test.")
    return SPLIT_ALIASES[key]


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


def _read_file(path: Path) -> Part:
    where = str(path)
    if not path.is_file():
        raise DataError("no such file.", source=where)
    fmt, opener = _file_format(path)
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
        frame.columns = [str(c) for c in frame.columns]
        return Part(frame, where, text_cells=True)
    if fmt == "json":
        return Part(_read_json(path, opener), where)
    if fmt == "jsonl":
        return Part(_read_jsonl_text(_read_text_file(path, opener), where), where)
    if fmt == "text":
        lines = [line for line in _read_text_file(path, opener).splitlines() if line.strip()]
        return Part(pd.DataFrame({"text": pd.Series(lines, dtype=object)}), where)
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for a damaged or foreign file
        raise DataError(f"is not a readable parquet file: {exc}", source=where) from exc
    features = None
    if table.schema.metadata and b"huggingface" in table.schema.metadata:
        features = Features.from_arrow_schema(table.schema)  # written by datasets: keeps ClassLabel names
    return Part(None, where, features=features, arrow=table)


def _dataset_part(dataset: Dataset, where: str) -> Part:
    return Part(None, where, features=dataset.features, arrow=dataset)


def _from_dataset_dict(dd: DatasetDict, where: str) -> dict[str, Part]:
    parts: dict[str, Part] = {}
    for name, dataset in dd.items():
        key = SPLIT_ALIASES.get(str(name).lower())
        if key is None:
            logger.warning("%s: split %s is not train/validation/test and is not used.", where, quote(name))
            continue
        if key in parts:
            raise DataError(f"has two splits that both mean {key!r}; keep one.", source=where)
        parts[key] = _dataset_part(dataset, f"{where} (split {name!r})")
    if not parts:
        raise DataError(f"has no train, validation or test split (its splits: {quote(list(dd))}).", source=where)
    return parts


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Keep the Hub offline for one call: a dataset id is read from the local cache or not at all (no request, no
    retries), whatever HF_HUB_OFFLINE says."""
    import datasets.config
    import huggingface_hub.constants

    with (
        mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True),
        mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True),
    ):
        yield


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
                    "is not a file or folder here, and as a dataset id it is not in the local Hugging Face cache "
                    "(the Hub is never contacted). Download it first where there is a network "
                    f"(datasets.load_dataset({repo_id!r}) or `hf download {repo_id} --repo-type dataset`), or give "
                    "a file or a save_to_disk folder.",
                    source=repo_id,
                ) from exc
            raise DataError(
                f"is in the Hub cache ({snapshot}) but cannot be loaded as it is: {exc}. Load it yourself with "
                "datasets.load_dataset(...) (a config name, data_files ...) and pass the DatasetDict.",
                source=repo_id,
            ) from exc
    if isinstance(loaded, Dataset):
        loaded = DatasetDict(train=loaded)
    return loaded


def read_source(source: Any) -> tuple[dict[str, Part], str]:
    """The source's splits as read, and a short description of it."""
    if isinstance(source, Dataset):
        return {"train": _dataset_part(source, "the given Dataset")}, "a Dataset object"
    if isinstance(source, DatasetDict):
        return _from_dataset_dict(source, "the given DatasetDict"), "a DatasetDict object"
    if isinstance(source, Mapping):
        parts: dict[str, Part] = {}
        for name, file in source.items():
            key = split_name(name, "the split files")
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


def _read_folder(path: Path) -> dict[str, Part]:
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
        if file.is_file() and stem in SPLIT_ALIASES:
            key = SPLIT_ALIASES[stem]
            if key in files:
                raise DataError(f"holds two files for the {key} split ({files[key].name}, {file.name}).", source=where)
            files[key] = file
    if "train" in files:
        return {key: _read_file(file) for key, file in files.items()}
    # any other layout datasets reads from a folder (sharded files: data/train-00000-of-00002.parquet ...)
    try:
        with _hub_offline():
            loaded = datasets.load_dataset(str(path))
    except Exception as exc:  # EmptyDatasetError, DataFilesNotFoundError, a file it cannot parse ...
        raise DataError(
            "is neither a folder written by save_to_disk (no dataset_dict.json or state.json) nor a folder of "
            f"split files (train.csv, validation.csv, test.csv ...), and datasets cannot read it either: {exc}",
            source=where,
        ) from exc
    return _from_dataset_dict(DatasetDict(train=loaded) if isinstance(loaded, Dataset) else loaded, where)
