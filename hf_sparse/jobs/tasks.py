"""The task registry: what a recipe's ``task:`` names. Each task reads its recipe kind and runs its job; every job
takes its runs through the one stage loop (:func:`~hf_sparse.jobs.runner.run_plan`) with the task object that owns
its model and data (:class:`~hf_sparse.jobs.classification.ClassificationTask`,
:class:`~hf_sparse.recsys.compress.RecsysTask`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..registry import Registry

__all__ = ["JobTask", "TASKS", "register_task", "task_for"]


@dataclasses.dataclass(frozen=True)
class JobTask:
    """One kind of job.

    Args:
        name: The value of a recipe's ``task:`` key (``classification`` for recipes without one).
        load_recipe: ``load_recipe(path) -> recipe``: read and validate a recipe file of this kind.
        run: ``run(recipe, output_dir, recipe_source=..., resume=...) -> report``.
        preflight: ``preflight(recipe) -> recipe``: the checks against the model before any data is read.
        resumable: ``run`` takes ``resume=True`` (``hf-sparse compress --resume``).
    """

    name: str
    load_recipe: Callable[[Path], Any]
    run: Callable[..., dict]
    preflight: Callable[[Any], Any] = lambda recipe: recipe
    resumable: bool = False


#: The registered tasks by name.
TASKS: Registry[JobTask] = Registry("task")


def register_task(task: JobTask) -> JobTask:
    """Register a task under ``task.name`` (duplicate names are refused)."""
    return TASKS.register(task.name, task)


def task_for(name: str | None) -> JobTask:
    """The task a recipe's ``task:`` names (``None``: ``classification``)."""
    return TASKS.get(name or "classification")


def _load_classification(path):
    from ..recipes import load_recipe

    return load_recipe(path)


def _run_classification(recipe, output_dir, *, recipe_source=None, resume=False):
    from ..compress import run_compress

    return run_compress(recipe, output_dir, recipe_source=recipe_source, resume=resume)


def _preflight_classification(recipe):
    """The model checks of :func:`~hf_sparse.jobs.recipe_plan.preflight`, then the user's data read and checked
    (``hf-sparse validate`` reports a bad file, column or row without starting a job)."""
    from .classification import check_data
    from .recipe_plan import preflight

    recipe = preflight(recipe)
    check_data(recipe)
    return recipe


def _load_recsys(path):
    from ..recsys.compress import load_recsys_recipe

    return load_recsys_recipe(path)


def _run_recsys(recipe, output_dir, *, recipe_source=None, resume=False):
    from ..recsys.compress import run_recsys

    return run_recsys(recipe, output_dir, recipe_source=recipe_source)


def _load_lm(path):
    from ..lm import load_lm_recipe

    return load_lm_recipe(path)


def _run_lm(recipe, output_dir, *, recipe_source=None, resume=False):
    from ..lm import run_lm

    return run_lm(recipe, output_dir, recipe_source=recipe_source)


register_task(
    JobTask(
        "classification",
        _load_classification,
        _run_classification,
        preflight=_preflight_classification,
        resumable=True,
    )
)


def _load_causal_lm(path):
    from ..lm.oneshot import load_causal_lm_recipe

    return load_causal_lm_recipe(path)


def _run_causal_lm(recipe, output_dir, *, recipe_source=None, resume=False):
    from ..lm.oneshot import run_causal_lm

    return run_causal_lm(recipe, output_dir, recipe_source=recipe_source)


# The tasks a ``hf-sparse compress`` recipe names with ``task:`` (:mod:`hf_sparse.jobs.heads`): one job, the one
# recipe format; the task decides the model class, the data and the metrics.
for _name in ("text-classification", "token-classification", "masked-lm"):
    register_task(
        JobTask(
            _name,
            _load_classification,
            _run_classification,
            preflight=_preflight_classification,
            resumable=True,
        )
    )

register_task(JobTask("recsys", _load_recsys, _run_recsys))
register_task(JobTask("lm", _load_lm, _run_lm))
register_task(JobTask("causal-lm", _load_causal_lm, _run_causal_lm))
