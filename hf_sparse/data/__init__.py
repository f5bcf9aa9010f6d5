"""Loaders of the real packaged models and data sets (see the README's "Real models and data" section), and of a
user's own data (:func:`load_user_data`: files, saved or cached data sets, ``datasets`` objects, checked and
normalised per task)."""

from .long_text import load_long_documents
from .models import MODEL_ALIASES, hub_id, minilm_l6_path, resolve_model, smollm2_gguf_path, smollm2_path
from .movielens import load_movielens_100k
from .rotten_tomatoes import LABEL_NAMES, load_rotten_tomatoes, stratified_subset
from .user import USER_TASKS, UserData, load_user_data

__all__ = [
    "MODEL_ALIASES",
    "LABEL_NAMES",
    "minilm_l6_path",
    "smollm2_path",
    "smollm2_gguf_path",
    "resolve_model",
    "hub_id",
    "load_rotten_tomatoes",
    "stratified_subset",
    "load_movielens_100k",
    "load_long_documents",
    "USER_TASKS",
    "UserData",
    "load_user_data",
]
