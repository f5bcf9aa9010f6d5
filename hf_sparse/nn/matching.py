"""Choosing the modules a transform replaces, by qualified name: the Linear-like layers (``nn.Linear`` and
transformers' ``Conv1D``, see :mod:`~hf_sparse.nn.linear_like`) and ``nn.Embedding`` tables that target and exclude
patterns (module-name components or full-name regexes) select, and the task heads, poolers and embeddings that are
left alone by default."""

from __future__ import annotations

import re

from torch import nn

from ..errors import ConfigError, quote
from .linear_like import is_linear_like
from .roles import COMMON_TASK_HEADS, default_exclude

__all__ = ["DEFAULT_EXCLUDE", "effective_exclude", "match_linears", "match_embeddings", "tied_weight_owners"]

#: Module-name components that are never pruned by default: task heads, the pooler and embeddings. Matched against
#: each dot-separated component of a module's qualified name (``bert.pooler.dense`` has the component ``pooler``).
DEFAULT_EXCLUDE: tuple[str, ...] = (*COMMON_TASK_HEADS, "embeddings", "embed_tokens")


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


def tied_weight_owners(model: nn.Module, modules: dict[str, nn.Module]) -> dict[str, list[str]]:
    """For each of ``modules`` whose ``weight`` parameter is also the weight of *another* module of ``model`` (tied
    embeddings: GPT-2's, T5's and BART's ``lm_head`` share the token embedding), the names of those other modules.

    One module registered under two names (T5's ``encoder.embed_tokens`` *is* ``shared``) is not a tie: changing
    it changes nothing else.
    """
    wanted = {
        id(m.weight): name for name, m in modules.items() if isinstance(getattr(m, "weight", None), nn.Parameter)
    }
    holders: dict[int, dict[int, str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = module._parameters.get("weight")
        if weight is not None and id(weight) in wanted:
            holders.setdefault(id(weight), {}).setdefault(id(module), name)
    out: dict[str, list[str]] = {}
    for key, owners in holders.items():
        if len(owners) > 1:
            name = wanted[key]
            mine = id(modules[name])
            out[name] = [n for module_id, n in owners.items() if module_id != mine]
    return out


def match_linears(
    model: nn.Module, target_modules, exclude_modules, *, who: str = "PruningConfig"
) -> dict[str, nn.Module]:
    """The Linear-like modules of ``model`` (``nn.Linear``, and transformers' ``Conv1D`` of GPT-2, whose weight is
    read through :func:`~hf_sparse.nn.linear_like.linear_weight`) matching one of ``target_modules`` (or all, when it
    is empty) and none of ``exclude_modules``, by qualified name, in model order; exclusion takes precedence. The
    default exclusion also leaves the family's task heads and embeddings alone (:func:`effective_exclude`).

    Raises:
        ConfigError: when nothing is selected (the message, which starts with ``who``, lists the Linear layers), or
            a selected layer's weight is tied to another module's (an output layer sharing the token embedding):
            changing it would change that module too, or break the tie.
    """
    linears = {n: m for n, m in model.named_modules() if is_linear_like(m)}
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
            f"{who} selects no nn.Linear module or transformers Conv1D (target_modules={list(target_modules)}, "
            f"exclude_modules={list(exclude_modules)}). The model's Linear layers include: {sample}."
        )
    tied = tied_weight_owners(model, chosen)
    if tied:
        name, others = next(iter(tied.items()))
        raise ConfigError(
            f"{who} selects {quote(name)}, whose weight is the same tensor as the weight of {others} (tied "
            "embeddings): pruning, quantising or factorising it would change those too, or break the tie. Leave it "
            "out (exclude_modules), or build the model with untied weights (config.tie_word_embeddings=False)."
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
