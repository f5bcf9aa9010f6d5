"""Choosing the modules a transform replaces, by qualified name: the ``nn.Linear`` layers and ``nn.Embedding`` tables
that target and exclude patterns (module-name components or full-name regexes) select, and the task heads, poolers
and embeddings that are left alone by default."""

from __future__ import annotations

import re

from torch import nn

from ..errors import ConfigError, quote
from .roles import default_exclude

__all__ = ["DEFAULT_EXCLUDE", "effective_exclude", "match_linears", "match_embeddings"]

#: Module-name components that are never pruned by default: task heads, the pooler and embeddings. Matched against
#: each dot-separated component of a module's qualified name (``bert.pooler.dense`` has the component ``pooler``).
DEFAULT_EXCLUDE: tuple[str, ...] = (
    "classifier",
    "pre_classifier",
    "pooler",
    "lm_head",
    "score",
    "qa_outputs",
    "cls",
    "embeddings",
    "embed_tokens",
)


def effective_exclude(model: nn.Module, exclude_modules) -> tuple[str, ...]:
    """``exclude_modules``, plus the task heads and embeddings of ``model``'s family (the module-role table,
    :mod:`hf_sparse.nn.roles`) when it is the default :data:`DEFAULT_EXCLUDE`: ModernBERT's ``head.dense`` is a
    task head though no generic name says so."""
    exclude = tuple(exclude_modules)
    if exclude == DEFAULT_EXCLUDE:
        return tuple(dict.fromkeys(exclude + default_exclude(model)))
    return exclude


def _matches(name: str, pattern: str) -> bool:
    """``pattern`` fully matches ``name``, or equals one of its dot-separated components."""
    return pattern in name.split(".") or re.fullmatch(pattern, name) is not None


def match_linears(
    model: nn.Module, target_modules, exclude_modules, *, who: str = "PruningConfig"
) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules of ``model`` matching one of ``target_modules`` (or all, when it is empty) and none
    of ``exclude_modules``, by qualified name, in model order; exclusion takes precedence. The default exclusion
    also leaves the family's task heads and embeddings alone (:func:`effective_exclude`).

    Raises:
        ConfigError: when nothing is selected (the message, which starts with ``who``, lists the Linear layers).
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    exclude_modules = effective_exclude(model, exclude_modules)
    chosen = {
        n: m
        for n, m in linears.items()
        if (not target_modules or any(_matches(n, p) for p in target_modules))
        and not any(_matches(n, p) for p in exclude_modules)
    }
    if not chosen:
        sample = list(linears)[:8]
        raise ConfigError(
            f"{who} selects no nn.Linear module (target_modules={list(target_modules)}, "
            f"exclude_modules={list(exclude_modules)}). The model's Linear layers include: {sample}."
        )
    return chosen


def match_embeddings(model: nn.Module, patterns, *, who: str = "PruningConfig") -> dict[str, nn.Embedding]:
    """The ``nn.Embedding`` modules of ``model`` named by ``patterns`` (components or full-name regexes).

    Raises:
        ConfigError: a pattern matches no embedding (a typo must not silently prune less), or an embedding is tied
            to the model's output layer (pruning it would prune the LM head too, through the shared tensor).
    """
    embeddings = {n: m for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    chosen: dict[str, nn.Embedding] = {}
    for pattern in patterns:
        found = {n: m for n, m in embeddings.items() if _matches(n, pattern)}
        if not found:
            raise ConfigError(
                f"{who}.embeddings: {quote(pattern)} matches no nn.Embedding; the model's embeddings are "
                f"{list(embeddings)}."
            )
        chosen.update(found)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in chosen.items():
        if output is not None and getattr(output, "weight", None) is module.weight:
            raise ConfigError(
                f"{who}.embeddings: {quote(name)} shares its weight with the output layer (tied embeddings); prune "
                "untied models only, or leave it out."
            )
    return chosen
