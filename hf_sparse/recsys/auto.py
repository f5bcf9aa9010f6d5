"""The recommender's entries in transformers' auto classes (``AutoConfig``, ``AutoModel``), registered when those
are first imported (see :func:`hf_sparse._import_hooks.when_imported`), so that loading a saved recommender never
needs an explicit import of this package, and importing hf_sparse imports no transformers modelling code."""

from __future__ import annotations

import sys

__all__ = ["register_auto_config", "register_auto_model"]


def register_auto_config(_module=None) -> None:
    """``AutoConfig`` knows ``SASRecConfig`` (exist_ok: a second registration, e.g. after a reload, is fine)."""
    from transformers import AutoConfig

    from .config import SASRecConfig

    AutoConfig.register(SASRecConfig.model_type, SASRecConfig, exist_ok=True)


def register_auto_model(_module=None) -> None:
    """``AutoModel`` builds ``SASRecForNextItem`` for a ``SASRecConfig``."""
    modeling = sys.modules.get(f"{__package__}.modeling")
    if modeling is not None and getattr(modeling.__spec__, "_initializing", False):
        return  # reached from inside the model's own import, which registers it as its last step
    from . import modeling  # noqa: F401  (registers the model with AutoModel when imported)
