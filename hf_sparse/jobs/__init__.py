"""The jobs: one stage loop (:func:`~hf_sparse.jobs.runner.run_plan`) over the registered methods, run by each task
(classification, causal LM, recommender) with one fine-tune / resume / save path and one latency harness.

The names below load on first use, so that reading the task registry (``hf-sparse validate``, ``init``) does not
import the training stack (``transformers.Trainer`` imports peft and bitsandbytes: seconds)."""

from __future__ import annotations

from .._import_hooks import lazy_attributes

_LAZY = {
    "Stage": ".plan",
    "RunPlan": ".plan",
    "run_name": ".plan",
    "run_plan": ".runner",
    "RUN_FILE": ".runner",
    "RECIPE_FILE": ".runner",
}

__all__ = ["Stage", "RunPlan", "run_name", "run_plan", "RUN_FILE", "RECIPE_FILE"]


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
