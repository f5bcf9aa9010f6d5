"""The ``hf-sparse compress`` job: fine-tune the dense baseline (or take the user's fine-tuned model as it is), then
take copies of it through the recipe's runs. The recipe's ``task`` (text classification, token classification,
masked LM; :mod:`hf_sparse.jobs.heads`) decides the model class, the data's shape and the metrics.

Each run is a plan of stages (a flat recipe: one stage per run) executed by the one stage loop,
:func:`~hf_sparse.jobs.runner.run_plan`, over the registered methods; everything trains through the stock
``transformers.Trainer``.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
import time
from pathlib import Path

import torch

from .data import LABEL_NAMES
from .errors import ConfigError, quote
from .jobs.cards import card_results
from .jobs.classification import PLAIN_FOLDER, ClassificationTask, PreparedData, predict_metrics, prepare_data
from .jobs.heads import collator, head_for, load_task_model
from .jobs.recipe_plan import preflight, recipe_plans
from .jobs.report import render_markdown, write_report
from .jobs.runner import RECIPE_FILE, RUN_FILE, run_plan
from .jobs.training import (
    barrier,
    dense_checkpoint_bytes,
    finetune,
    is_main_process,
    remove_checkpoints,
    remove_empty_tree,
)
from .machine import machine_info
from .recipes import JOB_OUTPUTS, Recipe, dump_recipe
from .resilience import atomic_folder, atomic_write_text, confined_path, remove_stale_partials

__all__ = ["run_compress", "preflight", "prepare_data", "fine_tuned_dense", "RUN_FILE", "RECIPE_FILE"]

logger = logging.getLogger(__name__)

#: The names ``hf-sparse compress`` gives its runs (``pruned-80``, ``structured-pruned-50-int8-qat-kd``,
#: ``dense-int8-ptq``, ``guarded-90``): what its stale-temporary cleanup may touch besides :data:`JOB_OUTPUTS`.
_RUN_NAMES = re.compile(r"(?:pruned|structured|dense|guarded)(?:-[A-Za-z0-9._-]+)?")

#: Marker of a fine-tuned dense baseline saved by ``hf-sparse compress`` / ``sweep`` (what it was trained from).
DENSE_INFO_FILE = "hf_sparse_dense.json"


def _remove_stale_partials(output_dir: Path, recipe: Recipe) -> None:
    """Delete the hidden temporaries a killed job left for this job's outputs (``.<run>.<pid>.*.partial`` folders,
    ``.report.json.<pid>.*.tmp`` ...), in the output folder and in its run folders; a SIGKILL mid-save runs no
    cleanup, and ``--resume`` would otherwise carry them forever."""
    from .integrations.hub import PLOT_FILE, RESULTS_FILE

    # candidates, and the folders of a candidate picked in a torch configuration (``<name>-<configuration>``)
    candidates = [f"{c.name}{rt}" for c in recipe.candidates for rt in ("", "-bf16", "-torch-dynamic-int8")]
    names = [*JOB_OUTPUTS, recipe.name, *candidates, _RUN_NAMES]
    remove_stale_partials(output_dir, names)
    remove_stale_partials(confined_path(output_dir, "plots"), [re.compile(r"[A-Za-z0-9._-]+\.png")])
    for child in output_dir.iterdir():
        if (
            child.is_dir()
            and not child.is_symlink()
            and (child.name == recipe.name or child.name in candidates or _RUN_NAMES.fullmatch(child.name))
        ):
            remove_stale_partials(child, [RUN_FILE, RECIPE_FILE, RESULTS_FILE, PLOT_FILE, "README.md"])


def _dense_key(recipe: Recipe) -> dict:
    """What the fine-tuned dense model depends on: the task, the model, data and dense sections."""
    key = {k: getattr(recipe, k).to_dict(header=False) for k in ("model", "data", "dense")}
    if recipe.task != "text-classification":  # the key of earlier text-classification jobs stays the same
        key["task"] = recipe.task
    return key


def fine_tuned_dense(
    recipe: Recipe,
    folder: Path,
    model_path,
    tokenizer,
    train_tok,
    test_tok,
    work: Path,
    *,
    save_steps: int = 0,
    resume: bool = False,
    data: PreparedData | None = None,
) -> tuple:
    """The dense baseline fine-tuned as ``recipe`` says: read from ``folder`` when a previous run saved it there
    from the same task, model, data and dense sections, else fine-tuned, evaluated and saved there.

    Args:
        data: What :func:`prepare_data` returned (the task and its labels); None: the packaged sentiment labels.

    Returns:
        (model, info): ``info`` holds the task's test metrics (``test_accuracy`` ...), ``train_s``, the parameter
        counts and the recipe key.
    """
    from .pruning.stats import model_parameter_counts

    head = data.head if data is not None else head_for(recipe.task)
    labels = data.label_names if data is not None else LABEL_NAMES
    for name in (DENSE_INFO_FILE, "hf_sparse_sweep_dense.json"):
        info_file = folder / name
        if info_file.is_file():
            info = json.loads(info_file.read_text())
            if info.get("recipe") == _dense_key(recipe):
                logger.info("hf-sparse: reusing the fine-tuned dense model in %s", folder)
                return head.model_class().from_pretrained(folder), info
    logger.info("hf-sparse: fine-tuning the dense baseline on %d examples", len(train_tok))
    new_head = data.new_head if data is not None else False
    model = load_task_model(head, model_path, recipe.dense.seed, labels, new_head=new_head)
    t0 = time.perf_counter()
    finetune(
        model,
        train_tok,
        tokenizer,
        recipe.dense,
        work,
        collator=collator(head, tokenizer, train=True),
        save_steps=save_steps,
        resume=resume,
    )
    train_s = time.perf_counter() - t0
    metrics, _ = predict_metrics(model, test_tok, tokenizer, recipe.dense, work, head, labels)
    info = {"recipe": _dense_key(recipe), **metrics, "train_s": train_s}
    info.update(model_parameter_counts(model))
    if is_main_process():
        with atomic_folder(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / DENSE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        remove_checkpoints(Path(work))
    barrier()
    return model, info


def _dense_baseline(recipe: Recipe, data: PreparedData, output_dir: Path, work: Path, resume: bool, timings: dict):
    """The dense baseline and its report entry: fine-tuned on the training split, or the model as given when it is
    already fine-tuned for the task and the data's labels (``model.fine_tuned``; then evaluated only)."""
    from .pruning.stats import model_parameter_counts

    head = data.head
    dense_work = confined_path(work, "dense")
    if data.dense_given:
        logger.info(
            "hf-sparse compress: %s is already fine-tuned for %s: it is the dense baseline",
            recipe.model.name,
            head.name,
        )
        dense_model = load_task_model(head, data.model_path, recipe.dense.seed, data.label_names)
        timings["dense_train_s"] = 0.0
        t0 = time.perf_counter()
        metrics, _ = predict_metrics(
            dense_model, data.test_tok, data.tokenizer, recipe.dense, dense_work, head, data.label_names
        )
        timings["dense_eval_s"] = time.perf_counter() - t0
    elif recipe.save_dense:
        # Saved with what it was trained from, so running the job again in the same folder reuses it.
        dense_model, info = fine_tuned_dense(
            recipe,
            confined_path(output_dir, "dense"),
            data.model_path,
            data.tokenizer,
            data.train_tok,
            data.test_tok,
            dense_work,
            save_steps=recipe.checkpoint.save_steps,
            resume=resume,
            data=data,
        )
        metrics = {k: info[k] for k in head.metrics if k in info}
        if head.metric not in metrics:  # saved by an older version without this metric: measured again
            metrics, _ = predict_metrics(
                dense_model, data.test_tok, data.tokenizer, recipe.dense, dense_work, head, data.label_names
            )
        timings["dense_train_s"] = info["train_s"]
    else:
        logger.info("hf-sparse compress: fine-tuning the dense baseline on %d examples", len(data.train_tok))
        t0 = time.perf_counter()
        dense_model = load_task_model(
            head, data.model_path, recipe.dense.seed, data.label_names, new_head=data.new_head
        )
        finetune(
            dense_model,
            data.train_tok,
            data.tokenizer,
            recipe.dense,
            dense_work,
            collator=collator(head, data.tokenizer, train=True),
            save_steps=recipe.checkpoint.save_steps,
            resume=resume,
        )
        timings["dense_train_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics, _ = predict_metrics(
            dense_model, data.test_tok, data.tokenizer, recipe.dense, dense_work, head, data.label_names
        )
        timings["dense_eval_s"] = time.perf_counter() - t0
    logger.info("hf-sparse compress: dense test %s %.4f", head.metric_name, metrics[head.metric])
    validation = None
    if len(data.val_tok):
        val_metrics, _ = predict_metrics(
            dense_model, data.val_tok, data.tokenizer, recipe.dense, dense_work, head, data.label_names
        )
        validation = {"validation_" + k.removeprefix("test_"): v for k, v in val_metrics.items()}
    dense = {
        **metrics,
        **({"validation": validation} if validation is not None else {}),
        "fine_tuned": not data.dense_given,
        **model_parameter_counts(dense_model),
        "checkpoint_bytes": dense_checkpoint_bytes(dense_model),
    }
    return dense_model, dense


def _evaluator(dataset, examples: int | None, task: ClassificationTask, recipe: Recipe, work: Path):
    """``evaluate(model) -> metric`` (the task's compared metric) on ``examples`` seeded examples of ``dataset``
    (all when None; stratified by label where the split has one)."""
    from .data import stratified_subset

    if examples is not None and examples < len(dataset):
        if "label" in dataset.column_names:
            dataset = stratified_subset(dataset, examples, seed=recipe.data.seed)
        else:
            dataset = dataset.shuffle(seed=recipe.data.seed).select(range(examples))
    return lambda model: task.predict_on(model, dataset, work)[0][task.metric]


def _check_teachers(recipe: Recipe, data: PreparedData) -> None:
    """Each named distillation teacher classifies into the data's number of labels (checked once the data's labels
    are known: before any training)."""
    from .data import resolve_model
    from .jobs.heads import read_model_config
    from .jobs.plan import method_sections

    if not data.head.labelled:
        return
    sections = [(f"stages[{i}].", method_sections(st)) for i, st in enumerate(recipe.stages)] or [
        ("", method_sections(recipe))
    ]
    for where, found in sections:
        name = getattr(found.get("distillation"), "teacher", None)
        if name is None:
            continue
        config = read_model_config(resolve_model(name), f"{where}distillation.teacher")
        if config.num_labels != len(data.label_names):
            raise ConfigError(
                f"{where}distillation.teacher {quote(name)} classifies into {config.num_labels} labels; the data has "
                f"{len(data.label_names)} ({list(data.label_names)})."
            )


def _sensitivity(recipe: Recipe, task: ClassificationTask, work: Path, timings: dict):
    """The recipe's sensitivity scan of the dense model (per-layer sparsities, or ranks with low rank), or None."""
    if recipe.sensitivity is None:
        return None
    from .lowrank.sensitivity import rank_sensitivity_scan
    from .pruning.sensitivity import sensitivity_scan

    t0 = time.perf_counter()
    evaluate = _evaluator(
        task.val_tok, recipe.sensitivity.validation_examples, task, recipe, confined_path(work, "sensitivity")
    )
    model = copy.deepcopy(task.dense_model)
    if recipe.lowrank is not None:
        scan = rank_sensitivity_scan(model, recipe.lowrank.to_config(), evaluate, recipe.sensitivity.sparsities)
    else:
        scan = sensitivity_scan(model, recipe.pruning, evaluate, recipe.sensitivity.sparsities)
    timings["sensitivity_s"] = time.perf_counter() - t0
    return scan


def _allocate(scan, dense_model):
    """``adjust`` of :func:`~hf_sparse.jobs.recipe_plan.recipe_plans`: each run's per-layer sparsities (or ranks)
    from the sensitivity scan, at its target."""
    from .lowrank.sensitivity import allocate_ranks
    from .pruning.sensitivity import allocate_sparsity

    def adjust(sections: dict) -> dict:
        sections = dict(sections)
        if "pruning" in sections:
            cfg = sections["pruning"]
            sections["pruning"] = cfg.replace(layer_sparsity=allocate_sparsity(scan, cfg.sparsity))
        if "lowrank" in sections:
            low = sections["lowrank"]
            sections["lowrank"] = low.replace(compression=None, module_ranks=allocate_ranks(scan, dense_model, low))
        return sections

    return adjust


def _guarded_run(recipe: Recipe, task: ClassificationTask, work: Path) -> dict:
    """The accuracy-guarded progressive run of ``recipe.guard`` (see :class:`~hf_sparse.recipes.GuardSection`)."""
    from .pruning.callback import PruningCallback
    from .pruning.guard import guarded_prune_

    section = recipe.guard
    model = copy.deepcopy(task.dense_model)
    cfg = recipe.pruning.replace(sparsity=section.stages[-1], schedule="oneshot", initial_sparsity=0.0)
    evaluate = _evaluator(task.val_tok, section.validation_examples, task, recipe, work)
    stage_training = recipe.pruned.replace(max_steps=max(section.steps_per_stage, 1))

    def finetune_stage(model, pruner, sparsity: float) -> None:
        if section.steps_per_stage == 0:
            return
        callback = PruningCallback(cfg.replace(sparsity=sparsity), masks=pruner.masks)
        task.finetune(model, stage_training, confined_path(work, f"stage-{round(100 * sparsity)}"), [callback])

    result = guarded_prune_(model, cfg, section.stages, evaluate, section.max_drop, finetune=finetune_stage)
    accepted = result.accepted_sparsity or 0.0
    return {
        **{k: v for k, v in result.to_dict().items() if k != "masks"},
        "metric": f"validation {task.head.metric_name}",
        **task.predict_on(model, task.test_tok, work)[0],
        "checkpoint": f"guarded-{round(100 * accepted)}",
        "markdown": result.to_markdown(metric_name=f"validation {task.head.metric_name}"),
        "model": model,
    }


def run_compress(
    recipe: Recipe, output_dir: str | Path, *, recipe_source: str | None = None, resume: bool = False
) -> dict:
    """Run the compression job a recipe describes and write its outputs to ``output_dir``.

    Writes ``report.json``, ``report.md``, ``recipe.yaml`` (the resolved recipe) and, per run, a folder saved with
    ``save_pretrained`` (weights, tokenizer, model card, recipe). Every folder and file is written atomically
    (complete under its name, or not there). Under ``accelerate launch`` with several processes, every process
    trains (DDP) and only the first writes.

    Args:
        resume: Continue a job that was interrupted in ``output_dir``: runs already saved there with the same
            resolved recipe are reused, an unfinished fine-tuning continues from its last complete checkpoint
            (``checkpoint.save_steps``), and the rest runs as usual. The result is the same as an uninterrupted job.

    Returns:
        The report as a dict (what ``report.json`` holds).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    work = confined_path(output_dir, "trainer")
    started = time.perf_counter()
    timings: dict[str, float] = {}

    recipe = preflight(recipe)
    if recipe.stages:
        confined_path(output_dir, recipe.name)  # an escaping name fails here, before any training
    for candidate in recipe.candidates:
        confined_path(output_dir, candidate.name)
    if is_main_process():
        _remove_stale_partials(output_dir, recipe)
    data = prepare_data(recipe)
    _check_teachers(recipe, data)
    dense_model, dense = _dense_baseline(recipe, data, output_dir, work, resume, timings)
    task = ClassificationTask(recipe, data, dense_model, work, save_steps=recipe.checkpoint.save_steps)
    scan = _sensitivity(recipe, task, work, timings)
    plans = recipe_plans(recipe, adjust=_allocate(scan, dense_model) if scan is not None else None)
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise ConfigError(f"The recipe's runs would share folder names: {names}; make its settings differ.")
    recipe_text = dump_recipe(recipe)
    runs = [
        run_plan(
            task,
            plan,
            output_dir=output_dir,
            work=work,
            checkpoint=recipe.checkpoint,
            recipe_text=recipe_text,
            dense=dense,
            resume=resume,
        )
        for plan in plans
    ]

    guard = None
    if recipe.guard is not None:
        t0 = time.perf_counter()
        guard = _guarded_run(recipe, task, confined_path(work, "guarded"))
        timings["guard_s"] = time.perf_counter() - t0
        folder = confined_path(output_dir, guard["checkpoint"])
        if is_main_process():
            with atomic_folder(folder) as tmp:
                guard["model"].save_pretrained(tmp)
                task.tokenizer.save_pretrained(tmp)
        barrier()
        del guard["model"]

    timings["total_s"] = time.perf_counter() - started
    head = data.head
    report = {
        "recipe": recipe_source or recipe.name,
        "task": head.name,
        "model": recipe.model.name,
        "model_path": task.model_path,
        "metric": {
            "key": head.metric,
            "name": head.metric_name,
            "higher_is_better": head.higher_is_better,
            "all": dict(head.metrics),
        },
        "data": {
            "dataset": data.source if not recipe.data.packaged else recipe.data.dataset,
            "seed": recipe.data.seed,
            "train_examples": len(task.train_tok),
            "validation_examples": len(task.val_tok),
            "test_examples": len(task.test_tok),
            "test_majority_accuracy": data.majority,
            "labels": list(data.label_names) if data.label_names is not None else None,
        },
        "dense": dense,
        "runs": runs,
        "guard": guard,
        "sensitivity": scan.to_dict() if scan is not None else None,
        "timings": timings,
        "machine": machine_info(),
        "processes": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
    }
    if runs:
        from .jobs.selection import select_model

        report["selection"] = select_model(report, recipe.selection)
        _save_runtime_pick(report["selection"], task, output_dir)
    if is_main_process():
        _write_outputs(report, recipe, output_dir, work)
    barrier()
    return report


def _save_runtime_pick(selection: dict, task: ClassificationTask, output_dir: Path) -> None:
    """When the recommended model is a run in a torch configuration (``checkpoint.runtimes``), save its float32
    weights (they load without hf_sparse) as ``<output>/<run>-<configuration>/`` with how to run them."""
    from .jobs.selection import AUTO_CLASS, RUNTIME_HOWTO
    from .runtimes import RUNTIME_FILE

    pick = next((m for m in selection["models"] if m["name"] == selection["pick"]), None)
    if pick is None or not pick.get("runtime"):
        return
    kept = task.plain_folder(pick["run"])
    if not (kept / "config.json").is_file():  # a run reused by --resume from a job that did not keep it
        selection["pick_saved"] = False
        logger.warning("hf-sparse compress: the float32 weights of %s were not kept; they are not saved", pick["run"])
        return
    folder = confined_path(output_dir, pick["checkpoint"])
    how = RUNTIME_HOWTO.get(pick["runtime"], "in {runtime}").format(
        auto=AUTO_CLASS.get(task.head.name, "AutoModel"), runtime=pick["runtime"]
    )
    if is_main_process():
        with atomic_folder(folder) as tmp:
            shutil.copytree(kept, tmp, dirs_exist_ok=True)
            task.tokenizer.save_pretrained(tmp)
            meta = {"run": pick["run"], "runtime": pick["runtime"], "task": task.head.name, "how": how}
            (tmp / RUNTIME_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    barrier()
    selection["pick_saved"] = True


def _write_outputs(report: dict, recipe: Recipe, output_dir: Path, work: Path) -> None:
    """Model cards, plots, the resolved recipe and the report; then the job's training leftovers go."""
    from .integrations.hub import RESULTS_FILE, write_model_card
    from .integrations.report_plots import write_report_plots

    for run in report["runs"]:
        folder = confined_path(output_dir, run["checkpoint"])
        results = card_results(run, report, recipe)
        atomic_write_text(folder / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
        write_model_card(folder, results=results)
    plots = write_report_plots(report, confined_path(output_dir, "plots"))
    report["plots"] = {name: f"plots/{file}" for name, file in plots.items()}
    write_report(output_dir, report, render_markdown(report), dump_recipe(recipe))
    # The job is complete: training checkpoints and the runs' float32 models (kept for --resume) and empty log
    # folders go.
    shutil.rmtree(confined_path(work, PLAIN_FOLDER), ignore_errors=True)
    for folder in work.iterdir() if work.is_dir() else ():
        remove_checkpoints(folder)
    remove_empty_tree(work)
