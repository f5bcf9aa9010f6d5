"""Plans: what a job runs. A run is a sequence of stages; a stage is a set of method sections (by method name) and
its training. A flat recipe becomes one single-stage run per combination of its settings (sparsities, and the
comparisons its methods ask for); a staged recipe becomes one run of its stages."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from ..method import METHOD_REGISTRY

__all__ = ["Stage", "RunPlan", "run_name", "method_sections", "expand_variants"]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: the methods it starts (sections by method name) and its training (``None``: none).

    Args:
        name: The stage's label (report row, Trainer folder).
        train: The stage's fine-tuning settings (a recipe ``TrainSection``), or ``None``.
        sections: The configs of the methods the stage applies, by registered method name.
    """

    name: str
    train: Any
    sections: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """One run of a job: its name (the folder it is saved in), its stages, and entries of its report that the plan
    itself decides (e.g. ``pruning_config``, or a method left out for a comparison).

    Args:
        staged: The report gets one row per stage (measured after each).
        start_from: ``"dense"``: a copy of the fine-tuned dense model; ``"pretrained"``: the pre-trained model with a
            fresh task head.
    """

    name: str
    stages: tuple[Stage, ...]
    record: dict = dataclasses.field(default_factory=dict)
    staged: bool = False
    start_from: str = "dense"


def method_sections(section: Any) -> dict[str, Any]:
    """The method sections set in ``section`` (a recipe or one of its stages), by method name: each attribute named
    like a registered method, plus the ``methods`` mapping of plugin methods."""
    out = {name: getattr(section, name) for name in METHOD_REGISTRY if getattr(section, name, None) is not None}
    out.update(getattr(section, "methods", None) or {})
    return out


def run_name(sections: dict[str, Any]) -> str:
    """A run's name from its methods' tags: the parts at positions 0 and 1 (structure, sparsity) or ``dense``, then
    the others by position (``structured-pruned-50-int8-qat-kd``, ``dense-window64``)."""
    parts = []
    for name, section in sections.items():
        tag = METHOD_REGISTRY.get(name).tag(section)
        if tag is not None and tag[1]:
            parts.append(tag)
    parts.sort(key=lambda p: p[0])
    base = [text for pos, text in parts if pos < 2] or ["dense"]
    return "-".join(base + [text for pos, text in parts if pos >= 2])


def expand_variants(sections: dict[str, Any]) -> list[tuple[dict[str, Any], dict]]:
    """Every combination of the variants the methods in ``sections`` ask for (their ``variants`` hook), in their
    callback order: ``[(sections, record), ...]``."""
    methods = sorted((METHOD_REGISTRY.get(n) for n in sections), key=lambda m: m.callback_key)
    choices = [m.variants(sections[m.name]) for m in methods]
    out = []
    for combo in itertools.product(*choices):
        chosen: dict[str, Any] = {}
        record: dict = {}
        for method, (section, extra) in zip(methods, combo):
            if section is not None:
                chosen[method.name] = section
            record.update(extra or {})
        out.append(({n: chosen[n] for n in sections if n in chosen}, record))
    return out
