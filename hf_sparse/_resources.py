"""Where the top-level ``recipes/``, ``model_cards/`` and ``kernels/`` folders are (installed or in a checkout)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import HfSparseError

__all__ = ["data_dir"]


def data_dir(kind: str) -> Path:
    """Folder of the packaged ``recipes``, ``model_cards`` or ``kernels`` (C++ sources).

    A wheel ships them as ``hf_sparse.recipes_data`` / ``hf_sparse.model_cards_data`` (see pyproject.toml); an
    editable install or a source checkout reads the repository's top-level folders.
    """
    try:
        path = Path(str(resources.files(f"hf_sparse.{kind}_data")))
        if path.is_dir():
            return path
    except ModuleNotFoundError:
        pass
    path = Path(__file__).resolve().parent.parent / kind
    if path.is_dir():
        return path
    raise HfSparseError(f"hf_sparse's {kind}/ folder is missing from this installation; reinstall hf_sparse.")
