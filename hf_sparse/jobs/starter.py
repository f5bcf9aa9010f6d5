"""Starter recipes: the commented recipe ``hf-sparse init`` writes for a task, and the recipe ``hf-sparse compress
--model M --data D --task T`` composes when no recipe file is given.

A starter is a packaged YAML template (``recipes/templates/<task>.yaml``) whose ``model`` and ``data`` values are
placeholders (``@MODEL@``, ``@DATA@``); filling them writes each value as a quoted YAML string, so any path or Hub id
(spaces, ``#``, ``:``) stays one scalar and the comments of the template stay with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._resources import data_dir
from ..errors import ConfigError, quote

__all__ = [
    "STARTER_TASKS",
    "TASK_ALIASES",
    "canonical_task",
    "starter_recipe_text",
    "compose_recipe",
    "parse_columns",
]

#: The tasks with a starter recipe, in the order ``hf-sparse init --help`` lists them.
STARTER_TASKS = ("text-classification", "token-classification", "masked-lm", "causal-lm", "recsys")

#: Other names users write for a task (a recipe without ``task:`` is a text-classification recipe).
TASK_ALIASES = {
    "classification": "text-classification",
    "sequence-classification": "text-classification",
    "ner": "token-classification",
    "fill-mask": "masked-lm",
    "mlm": "masked-lm",
    "text-generation": "causal-lm",
    "clm": "causal-lm",
    "recommender": "recsys",
}

#: What a starter uses when the user names no model or data: the packaged model and data of the task, where there
#: is one (a starter of another task names a file to replace).
_DEFAULTS = {
    "text-classification": ("minilm-l6", "rotten_tomatoes"),
    "token-classification": ("path/to/your-token-classifier-or-encoder", "path/to/your-tagged-data.jsonl"),
    "masked-lm": ("minilm-l6", "path/to/your-text.txt"),
    "causal-lm": ("smollm2-135m", "convention-speeches"),
    "recsys": (None, "movielens-100k"),
}

_ROLES = ("text", "text_pair", "label", "tokens", "tags", "user", "item", "timestamp")


def canonical_task(name: str | None) -> str:
    """The task ``name`` means (``None`` and the aliases of :data:`TASK_ALIASES` included).

    Raises:
        ConfigError: an unknown task, naming the known ones.
    """
    if name is None:
        return "text-classification"
    task = TASK_ALIASES.get(name, name)
    if task not in STARTER_TASKS and task != "lm":
        raise ConfigError(
            f"Unknown task {quote(name)}; known tasks: {', '.join(STARTER_TASKS)} (also accepted: "
            f"{', '.join(sorted(TASK_ALIASES))})."
        )
    return task


def _template(task: str) -> str:
    path = data_dir("recipes") / "templates" / f"{task}.yaml"
    return path.read_text(encoding="utf-8")


def _absolute_if_local(value: str) -> str:
    """A model or data name as a recipe written elsewhere must read it: an existing local path becomes absolute (a
    recipe saved into the output folder then works from any folder); aliases and Hub ids stay as they are."""
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def starter_recipe_text(task: str | None = None, *, model: str | None = None, data: str | None = None) -> str:
    """The commented starter recipe of ``task`` (YAML text), with ``model`` and ``data`` filled in (the task's
    packaged defaults, or a placeholder path to replace, when not given). Local paths are written absolute.

    Raises:
        ConfigError: an unknown task, or a model given to the recommender (it trains its own model).
    """
    task = canonical_task(task)
    if task == "lm":
        raise ConfigError(
            "The windowed-attention job (task lm) has no starter recipe: copy the packaged one with `hf-sparse "
            "validate smollm2-windowed`; to prune a causal LM on your own text use --task causal-lm."
        )
    default_model, default_data = _DEFAULTS[task]
    if task == "recsys" and model is not None:
        raise ConfigError(
            "The recommender (task recsys) trains its own SASRec model from the interactions; it takes no --model "
            "(set its size in the recipe's model section)."
        )
    text = _template(task)
    values = {"@MODEL@": model or default_model, "@DATA@": data or default_data}
    for placeholder, value in values.items():
        if value is None:
            continue
        if value in (model, data):
            value = _absolute_if_local(value)
        text = text.replace(placeholder, json.dumps(value))
    return text


def parse_columns(items: Sequence[str] | None) -> dict[str, str]:
    """``["text=review", "label=stars"]`` (``--column`` options) as ``{"text": "review", "label": "stars"}``.

    Raises:
        ConfigError: an item without ``=``, an unknown role or a role given twice.
    """
    out: dict[str, str] = {}
    for item in items or ():
        role, sep, column = item.partition("=")
        role, column = role.strip(), column.strip()
        if not sep or not role or not column:
            raise ConfigError(f"--column takes ROLE=COLUMN (e.g. text=review), got {quote(item)}.")
        if role not in _ROLES:
            raise ConfigError(f"--column: unknown role {quote(role)}; roles: {', '.join(_ROLES)}.")
        if role in out:
            raise ConfigError(f"--column: the role {quote(role)} is given twice.")
        out[role] = column
    return out


def compose_recipe(
    document: Mapping[str, Any] | None,
    *,
    task: str | None = None,
    model: str | None = None,
    data: str | None = None,
    columns: Mapping[str, str] | None = None,
    label_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A recipe document (a plain mapping, as read from YAML) with the user's model, data, columns and label names.

    Args:
        document: A recipe read from a file; None starts from the starter recipe of ``task``.
        task: The task; with a ``document`` it must be the document's own task (a recipe is not converted).
        model, data: Replace ``model.name`` and the data source (``data.dataset``; a recipe's ``data.files`` is
            dropped). Local paths are written absolute.
        columns, label_names: Set ``data.columns`` / ``data.label_names``.

    Raises:
        ConfigError: the task differs from the document's, or the document's task takes no model.
    """
    from ..recipe_yaml import parse_recipe_text

    if document is None:
        doc = parse_recipe_text(starter_recipe_text(task, model=model, data=data))
    else:
        doc = json.loads(json.dumps(dict(document)))  # a deep copy of plain data
        own = canonical_task(doc.get("task") if isinstance(doc.get("task"), str) else None)
        if task is not None and canonical_task(task) != own:
            raise ConfigError(
                f"--task {quote(task)} differs from the recipe's task {quote(own)}; leave --task out to run the "
                "recipe as it is, or give no recipe to start from the starter recipe of that task."
            )
        task = own
        if model is not None:
            if task == "recsys":
                raise ConfigError("The recommender (task recsys) trains its own model; it takes no --model.")
            if task == "lm":
                raise ConfigError("A `task: lm` recipe reads the packaged speeches; use --task causal-lm.")
            section = doc.get("model") if isinstance(doc.get("model"), dict) else {}
            doc["model"] = {**section, "name": _absolute_if_local(model)}
        if data is not None:
            if task == "lm":
                raise ConfigError("A `task: lm` recipe reads the packaged speeches; use --task causal-lm.")
            section = doc.get("data") if isinstance(doc.get("data"), dict) else {}
            section = {k: v for k, v in section.items() if k != "files"}
            doc["data"] = {**section, "dataset": _absolute_if_local(data)}
    if columns or label_names:
        section = dict(doc.get("data") or {})
        if columns:
            section["columns"] = {**(section.get("columns") or {}), **dict(columns)}
        if label_names:
            section["label_names"] = list(label_names)
        doc["data"] = section
    return doc
