"""The jobs: one stage loop (:func:`~hf_sparse.jobs.runner.run_plan`) over the registered methods, run by each task
(classification, causal LM, recommender) with one fine-tune / resume / save path and one latency harness."""

from .plan import RunPlan, Stage, run_name
from .runner import RECIPE_FILE, RUN_FILE, run_plan

__all__ = ["Stage", "RunPlan", "run_name", "run_plan", "RUN_FILE", "RECIPE_FILE"]
