"""The one stage loop of every job: a run (a :class:`~hf_sparse.jobs.plan.RunPlan`) takes its model through its
stages — each stage's methods transform the model, the stage trains with their callbacks, their finalize steps run —
then every method that acted converts the model for storage; the model is evaluated, saved, reloaded and timed, and
the run's report entry is assembled from the methods' records. Nothing here knows a method by name: the methods are
the registered :class:`~hf_sparse.method.Method` objects and the task is the object that owns model and data."""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..method import METHOD_REGISTRY, Method, RunContext
from ..resilience import atomic_write_text, confined_path
from .plan import RunPlan
from .training import barrier, checkpoint_bytes, is_main_process, remove_checkpoints

__all__ = ["run_plan", "completed_run", "validation_metrics", "RUN_FILE", "RECIPE_FILE", "stage_description"]

logger = logging.getLogger("hf_sparse.compress")

#: Written into each run's folder once the run is complete (its report entry); ``--resume`` reuses such runs.
RUN_FILE = "hf_sparse_run.json"
#: The resolved recipe saved with each checkpoint.
RECIPE_FILE = "hf_sparse_recipe.yaml"


def convert_numerics(model, checkpoint) -> dict[str, str]:
    """Store the model's layers in the fastest arithmetic ``checkpoint.numerics`` allows (nothing for ``keep``),
    where no method stored them already: e.g. a distilled or structurally pruned student."""
    if checkpoint.format != "auto" or checkpoint.numerics == "keep":
        return {}
    from ..nn import sparsify_

    decisions = sparsify_(
        model,
        batch_hint=checkpoint.batch_hint,
        min_sparsity=checkpoint.min_sparsity,
        numerics=checkpoint.numerics,
    )
    return {n: d.choice.chosen for n, d in decisions.items()}


def validation_metrics(task, model, work: Path) -> dict[str, float] | None:
    """The task's metrics of ``model`` on the validation split (``validation_accuracy`` ...), or None for a task
    without one: what the report's model selection decides on, so that it does not read the test split."""
    val = getattr(task, "val_tok", None)
    if val is None or not hasattr(task, "predict_on") or len(val) == 0:
        return None
    metrics, _ = task.predict_on(model, val, work)
    return {"validation_" + k.removeprefix("test_"): v for k, v in metrics.items()}


def completed_run(folder: Path, recipe_text: str) -> dict | None:
    """The report entry of a run an earlier (interrupted) job completed in ``folder`` with the same resolved recipe,
    or None."""
    try:
        if (folder / RECIPE_FILE).read_text() != recipe_text:
            return None
        return json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def stage_description(sections: dict[str, Any], train: Any = True) -> str:
    """What a stage does, in words (its methods' descriptions, in the order they run)."""
    methods = sorted((METHOD_REGISTRY.get(n) for n in sections), key=lambda m: m.sort_key)
    parts = [m.describe(sections[m.name]) for m in methods]
    parts = [p for p in parts if p]
    if train is None:
        parts.append("no training")
    elif not parts:
        parts.append("fine-tuning")
    return ", ".join(parts)


def _acting(active: dict[str, Any], sections: dict[str, Any]) -> list[tuple[Method, Any]]:
    """The methods acting in a stage: its own, and those of earlier stages that carry on (with ``None``)."""
    names = set(sections) | {n for n in active if METHOD_REGISTRY.get(n).carry}
    methods = sorted((METHOD_REGISTRY.get(n) for n in names), key=lambda m: m.sort_key)
    return [(m, sections.get(m.name)) for m in methods]


def _records(ctx: RunContext, active: dict[str, Any]) -> dict:
    out: dict = {}
    for method in sorted((METHOD_REGISTRY.get(n) for n in active), key=lambda m: m.sort_key):
        out.update(method.record(active[method.name], ctx) or {})
    return out


def _run_stage(task, plan: RunPlan, i: int, ctx: RunContext, active: dict, work: Path, resume: bool) -> dict:
    """Stage ``i`` of ``plan``: transforms, training with the methods' callbacks, finalize steps."""
    stage = plan.stages[i]
    ctx.stage = stage.name
    ctx.seed = getattr(stage.train or task.default_train, "seed", getattr(task, "seed", 42))
    model = ctx.model
    for method, section in _acting(active, stage.sections):
        if section is not None:
            active[method.name] = section
            method.run_start(model, section, ctx)
    acting = _acting(active, stage.sections)
    callbacks = {m.name: list(m.callbacks(section, ctx)) for m, section in acting}
    by_callback = sorted((m for m, _ in acting), key=lambda m: m.callback_key)
    init = [cb for m in by_callback if m.init_callbacks for cb in callbacks[m.name]]
    attached = [cb for m in by_callback if not m.init_callbacks for cb in callbacks[m.name]]
    steps = 0
    if stage.train is not None:
        folder = f"{plan.name}-{i}-{stage.name}" if plan.staged else plan.name
        steps = task.finetune(model, stage.train, confined_path(work, folder), attached, init, resume=resume)
    for method, section in acting:
        method.finalize(model, section, callbacks[method.name], ctx)
    return {"steps": steps}


def run_plan(
    task,
    plan: RunPlan,
    *,
    output_dir: Path,
    work: Path,
    checkpoint,
    recipe_text: str,
    dense: dict,
    resume: bool = False,
) -> dict:
    """Run ``plan`` with ``task`` and save it as ``<output_dir>/<plan.name>``; return its report entry.

    Args:
        task: The task (see :class:`~hf_sparse.method.RunContext` for what the methods use of it). The loop uses
            ``start_model(start_from)``, ``finetune(model, section, work_dir, callbacks, init_callbacks, resume=)``
            (returns the optimizer steps), ``predict(model) -> (metrics, outputs)``, ``metric`` (the key of the
            metric the report compares with the dense model's), ``parameter_counts(model)``,
            ``save(model, folder, recipe_text)``, ``verify(model, folder, outputs, work)``,
            ``latency(model, rounds)``, ``default_train`` and, if it has one, ``entry(run, ctx)`` (the run's report
            entry in the task's own shape).
        checkpoint: The recipe's checkpoint section (storage format, verification, latency rounds, save steps).
        recipe_text: The resolved recipe, saved with the run (a resumed job reuses a run saved with the same text).
        dense: The dense baseline's report entry (its ``task.metric`` and ``checkpoint_bytes``).
    """
    folder = confined_path(output_dir, plan.name)
    done = completed_run(folder, recipe_text) if resume else None
    if done is not None:
        logger.info("hf-sparse compress: %s was saved by the interrupted job; reused", plan.name)
        return done
    started = time.perf_counter()
    model = task.start_model(plan.start_from)
    ctx = RunContext(
        model=model,
        task=task,
        output_dir=Path(output_dir),
        checkpoint=checkpoint,
        stages=tuple(s.name for s in plan.stages),
    )
    active: dict[str, Any] = {}
    rows = []
    for i, stage in enumerate(plan.stages):
        what = stage_description(stage.sections, stage.train)
        logger.info("hf-sparse compress: %s, stage %d/%d %s: %s", plan.name, i + 1, len(plan.stages), stage.name, what)
        t0 = time.perf_counter()
        info = _run_stage(task, plan, i, ctx, active, work, resume)
        if plan.staged:
            metrics, _ = task.predict(model)
            rows.append(
                {
                    "name": stage.name,
                    "description": what,
                    **metrics,
                    "sparsity": _records(ctx, active).get("sparsity", 0.0),
                    "steps": info["steps"],
                    "train_s": time.perf_counter() - t0,
                    **task.parameter_counts(model),
                }
            )
            logger.info("hf-sparse: %s after stage %s: %s", plan.name, stage.name, metrics)
    train_s = time.perf_counter() - started
    counts = task.parameter_counts(model)
    # The trained model before its storage conversion: what a torch runtime configuration (bf16, dynamic int8)
    # would run instead (quantised models are already in their integer form).
    plain = None
    if (
        checkpoint.latency_rounds
        and getattr(checkpoint, "runtimes", False)
        and hasattr(task, "runtime_row")
        and "quantization" not in ctx.state
        and not (torch.distributed.is_available() and torch.distributed.is_initialized())
    ):
        plain = copy.deepcopy(model)
    converted: dict[str, str] = {}
    for method in sorted((METHOD_REGISTRY.get(n) for n in active), key=lambda m: m.sort_key):
        converted.update(method.convert(model, active[method.name], ctx) or {})
    if not converted and "quantization" not in ctx.state:
        converted.update(convert_numerics(model, checkpoint))
    records = _records(ctx, active)
    formats = {**dict.fromkeys(records.get("layers", {}), "dense"), **converted}
    t0 = time.perf_counter()
    metrics, outputs = task.predict(model)
    validation = validation_metrics(task, model, confined_path(work, "eval"))
    eval_s = time.perf_counter() - t0
    key = task.metric
    logger.info("hf-sparse: %s %s %.4f (dense %.4f)", plan.name, key, metrics[key], dense[key])
    task.save(model, folder, recipe_text)
    run = {
        "name": plan.name,
        **metrics,
        "delta_vs_dense": metrics[key] - dense[key],
        **counts,
        "train_s": train_s,
        "eval_s": eval_s,
        **plan.record,
        **records,
        "formats": formats,
        "checkpoint": plan.name,
        "checkpoint_bytes": checkpoint_bytes(folder),
    }
    if validation is not None:
        run["validation"] = validation
    if rows:
        run["stages"] = rows
    run["disk_ratio_vs_dense"] = run["checkpoint_bytes"] / dense["checkpoint_bytes"]
    if checkpoint.verify:
        run["round_trip"] = task.verify(model, folder, outputs, confined_path(work, plan.name))
        logger.info("hf-sparse compress: %s reloaded: %s", plan.name, run["round_trip"])
    if checkpoint.latency_rounds and is_main_process():
        run["latency"] = task.latency(model, checkpoint.latency_rounds)
    if plain is not None:
        row = task.runtime_row(plain, checkpoint.latency_rounds)
        if row is not None:
            run["runtime"] = row
            if hasattr(task, "keep_plain"):
                task.keep_plain(plan.name, plain)
            logger.info(
                "hf-sparse compress: %s in %s: %s %.4f, %.2fx the best dense configuration",
                plan.name,
                row["runtime"],
                key,
                row[key],
                row["latency"]["ratio_vs_best_dense"],
            )
        del plain
    run = task.entry(run, ctx) if hasattr(task, "entry") else run
    if is_main_process():
        # The run is complete: a resumed job reuses it, and its training checkpoints are no longer needed.
        atomic_write_text(folder / RUN_FILE, json.dumps(run, indent=2) + "\n")
        for i, stage in enumerate(plan.stages):
            remove_checkpoints(confined_path(work, f"{plan.name}-{i}-{stage.name}" if plan.staged else plan.name))
    barrier()
    return run
