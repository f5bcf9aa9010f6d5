"""The ``hf-sparse sweep`` job: test accuracy of every criterion x granularity x sparsity of a recipe's ``sweep``
section, each pruned from the same fine-tuned dense model, beside the dense baseline.

The dense baseline is fine-tuned once and kept in ``<output>/dense`` (reused when the job is run again with the same
recipe, so an interrupted sweep continues); finished cells are kept in ``<output>/sweep.json`` and skipped on a
re-run.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import torch

from .compress import fine_tuned_dense
from .errors import ConfigError
from .jobs.classification import predict, prepare_data
from .jobs.report import pct
from .jobs.training import finetune
from .machine import machine_info
from .pruning.apply import Pruner
from .pruning.callback import PruningCallback
from .pruning.config import PruningConfig
from .pruning.criteria import CRITERIA
from .recipes import JOB_OUTPUTS, Recipe, dump_recipe
from .resilience import atomic_write_text, confined_path, remove_stale_partials

__all__ = ["run_sweep", "sweep_cells", "sweep_plan", "render_sweep_markdown", "CONFIRM_ABOVE_CELLS"]

logger = logging.getLogger(__name__)


def sweep_cells(recipe: Recipe) -> list[PruningConfig]:
    """The PruningConfig of every cell of ``recipe.sweep``, in table order."""
    base, sweep = recipe.pruning, recipe.sweep
    cells = []
    for granularity in sweep.granularities:
        sparsities = [1.0 - base.n / base.m] if granularity == "nm" else list(sweep.sparsities)
        for sparsity in sparsities:
            for criterion in sweep.criteria:
                one_shot = getattr(CRITERIA.get(criterion), "needs_calibration", False)
                if not sweep.finetune and not one_shot:
                    continue
                extra = dict(schedule="oneshot", start_step=0, embeddings=()) if one_shot else {}
                cells.append(
                    base.replace(
                        criterion=criterion,
                        granularity=granularity,
                        sparsity=sparsity,
                        initial_sparsity=min(base.initial_sparsity, sparsity),
                        **extra,
                    )
                )
    return cells


#: ``hf-sparse sweep`` starts a grid of more cells than this only when asked to: ``--yes``, a ``sweep:`` section the
#: user wrote in their own recipe file, or a "y" typed at the prompt.
CONFIRM_ABOVE_CELLS = 12


def _training_amount(section) -> tuple[int | None, str]:
    """The optimizer steps of a train section (None when it trains for epochs) and the amount in words."""
    if section.max_steps > 0:
        return section.max_steps, f"{section.max_steps:,} steps"
    return None, f"{section.epochs:g} epoch{'s' if section.epochs != 1 else ''}"


def sweep_plan(recipe: Recipe) -> dict:
    """What ``hf-sparse sweep`` of ``recipe`` will run, before it starts: the cells, the training each does and the
    total, and the lines that say so.

    Returns:
        ``cells`` (their names, in order), ``steps_per_cell`` (None when the ``pruned`` section trains for epochs),
        ``total_steps`` (cells x steps; None likewise) and ``lines`` (the plan in words).
    """
    cells = [_cell_name(cfg) for cfg in sweep_cells(recipe)]
    steps, amount = _training_amount(recipe.pruned)
    sweep = recipe.sweep
    lines = [
        f"{len(cells)} cells: {len(sweep.criteria)} criteria ({', '.join(sweep.criteria)}) x "
        f"{len(sweep.granularities)} granularities ({', '.join(sweep.granularities)}) x {len(sweep.sparsities)} "
        f"sparsities ({', '.join(pct(s) for s in sweep.sparsities)}"
        + ("; nm at its own 1 - n/m" if "nm" in sweep.granularities else "")
        + ")"
        + ("" if sweep.finetune else "; one-shot criteria only (sweep.finetune: false)"),
    ]
    if sweep.finetune:
        total = f" = {len(cells) * steps:,} training steps" if steps is not None else ""
        lines.append(
            f"each cell fine-tuned for {amount} while pruned (pruned section): {len(cells)} x {amount}{total}"
        )
    else:
        lines.append("each cell pruned one-shot and evaluated, no fine-tuning")
    _, dense_amount = _training_amount(recipe.dense)
    lines.append(
        f"plus the dense baseline, fine-tuned once for {dense_amount} unless the model is already fine-tuned or an "
        "earlier run of this sweep saved it in the output folder"
    )
    return {
        "cells": cells,
        "steps_per_cell": steps if sweep.finetune else 0,
        "total_steps": (len(cells) * steps if steps is not None else None) if sweep.finetune else 0,
        "lines": lines,
    }


def _cell_name(cfg: PruningConfig) -> str:
    grain = {"block": f"block{cfg.block[0]}x{cfg.block[1]}", "nm": f"{cfg.n}of{cfg.m}"}.get(
        cfg.granularity, cfg.granularity
    )
    return f"{cfg.criterion}-{grain}-{round(100 * cfg.sparsity)}"


def _calibration(train_tok, tokenizer, samples: int, seed: int) -> list[dict]:
    """``samples`` seeded training examples as padded model-input batches of 32 (labels left out)."""
    subset = train_tok.shuffle(seed=seed).select(range(min(samples, len(train_tok))))
    subset = subset.remove_columns([c for c in subset.column_names if c in ("label", "labels", "length")])
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    return [collate([subset[j] for j in range(i, min(i + 32, len(subset)))]) for i in range(0, len(subset), 32)]


def run_sweep(recipe: Recipe, output_dir: str | Path, *, recipe_source: str | None = None) -> dict:
    """Run ``recipe.sweep`` and write ``sweep.json`` and ``sweep.md`` to ``output_dir``.

    Returns:
        The record written to ``sweep.json``: dense baseline, one entry per cell (accuracy after pruning, before
        fine-tuning for one-shot criteria, and after fine-tuning), machine.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Saves a killed job left half-written (hidden temporaries of this job's own outputs) go first.
    remove_stale_partials(output_dir, JOB_OUTPUTS)
    record_file = confined_path(output_dir, "sweep.json")
    if recipe.task != "text-classification":
        raise ConfigError(
            "task: hf-sparse sweep compares pruning criteria by test accuracy on text classification; a "
            f"{recipe.task} recipe runs with hf-sparse compress (give it sparsities: [...] for one run per sparsity)."
        )
    data = prepare_data(recipe)
    tokenizer, train_tok, test_tok, majority = data.tokenizer, data.train_tok, data.test_tok, data.majority
    if data.dense_given:
        from .jobs.heads import load_task_model
        from .pruning.stats import model_parameter_counts

        dense_model = load_task_model(data.head, data.model_path, recipe.dense.seed, data.label_names)
        accuracy, _ = predict(dense_model, test_tok, tokenizer, recipe.dense, confined_path(output_dir, "trainer"))
        dense = {"test_accuracy": accuracy, "fine_tuned": False, **model_parameter_counts(dense_model)}
    else:
        dense_model, dense = fine_tuned_dense(
            recipe,
            confined_path(output_dir, "dense"),
            data.model_path,
            tokenizer,
            train_tok,
            test_tok,
            confined_path(output_dir, "trainer", "dense"),
            data=data,
        )
    logger.info("hf-sparse sweep: dense test accuracy %.4f", dense["test_accuracy"])
    done: dict[str, dict] = {}
    previous = _read_record(record_file)
    if previous is not None:
        if previous.get("dense", {}).get("test_accuracy") == dense["test_accuracy"]:
            done = {c["name"]: c for c in previous.get("cells", []) if isinstance(c, dict) and "name" in c}
    record = {
        "recipe": recipe_source or recipe.name,
        "model": recipe.model.name,
        "data": {
            "dataset": recipe.data.dataset if recipe.data.packaged else data.source,
            "seed": recipe.data.seed,
            "train_examples": len(train_tok),
            "test_examples": len(test_tok),
            "test_majority_accuracy": majority,
        },
        "pruned_training": recipe.pruned.to_dict(header=False),
        "pruning_base": recipe.pruning.to_dict(header=False),
        "dense": dense,
        "cells": [],
        "machine": machine_info(),
    }
    cells = sweep_cells(recipe)
    eval_work = confined_path(output_dir, "trainer", "eval")
    for i, cfg in enumerate(cells, 1):
        name = _cell_name(cfg)
        if name in done:
            record["cells"].append(done[name])
            continue
        logger.info("hf-sparse sweep: [%d/%d] %s", i, len(cells), name)
        model = copy.deepcopy(dense_model)
        cell: dict = {"name": name, "config": cfg.to_dict(header=False)}
        t0 = time.perf_counter()
        masks = None
        if getattr(CRITERIA.get(cfg.criterion), "needs_calibration", False):
            pruner = Pruner(model, cfg)
            pruner.calibration = _calibration(train_tok, tokenizer, cfg.calibration_samples, recipe.pruned.seed)
            pruner.prune_to(cfg.sparsity)
            masks = pruner.masks
            cell["oneshot_accuracy"], _ = predict(model, test_tok, tokenizer, recipe.pruned, eval_work)
            cell["oneshot_s"] = time.perf_counter() - t0
        if recipe.sweep.finetune:
            callback = PruningCallback(cfg, masks=masks)
            work = confined_path(output_dir, "trainer", name)
            finetune(model, train_tok, tokenizer, recipe.pruned, work, [callback])
            cell["test_accuracy"], _ = predict(model, test_tok, tokenizer, recipe.pruned, work)
            cell["sparsity"] = callback.pruner.report()["sparsity"]
        else:
            cell["test_accuracy"] = cell["oneshot_accuracy"]
            cell["sparsity"] = Pruner(model, cfg.replace(criterion="magnitude", schedule="cubic")).sparsity()
        cell["delta_vs_dense"] = cell["test_accuracy"] - dense["test_accuracy"]
        cell["seconds"] = time.perf_counter() - t0
        logger.info(
            "hf-sparse sweep: %s test accuracy %.4f (dense %.4f)", name, cell["test_accuracy"], dense["test_accuracy"]
        )
        record["cells"].append(cell)
        atomic_write_text(record_file, json.dumps(record, indent=2) + "\n")
        del model
        torch.manual_seed(0)
    atomic_write_text(record_file, json.dumps(record, indent=2) + "\n")
    atomic_write_text(confined_path(output_dir, "sweep.md"), render_sweep_markdown(record))
    atomic_write_text(confined_path(output_dir, "recipe.yaml"), dump_recipe(recipe))
    return record


def _read_record(path: Path) -> dict | None:
    """The cells an earlier run of the sweep recorded in ``path``, or None (no file, or not a record: the sweep then
    starts over rather than trusting it)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("cells", []), list) else None


def render_sweep_markdown(record: dict) -> str:
    """``sweep.md``: accuracy per granularity, sparsity and criterion, beside the dense baseline."""
    dense = record["dense"]["test_accuracy"]
    cells = record["cells"]
    criteria = list(dict.fromkeys(c["config"]["criterion"] for c in cells))
    grains = list(dict.fromkeys(_cell_name(PruningConfig.from_dict(c["config"])).split("-")[1] for c in cells))
    data = record["data"]
    train = record["pruned_training"]
    lines = [
        f"# hf-sparse sweep: {record['model']} on {data['dataset']}",
        "",
        f"Test accuracy of the dense baseline: **{dense:.4f}** ({data['test_examples']:,} test examples, seed "
        f"{data['seed']}; majority class {data['test_majority_accuracy']:.4f}). Every cell starts from that "
        f"fine-tuned model and is fine-tuned for {train['max_steps']} steps (lr {train['learning_rate']}, batch "
        f"{train['batch_size']}) while pruned; one-shot criteria (wanda, sparsegpt) prune at step 0 from "
        "calibration data and keep their mask; the number in brackets is their accuracy before any fine-tuning.",
        "",
    ]
    for grain in grains:
        rows = [c for c in cells if _cell_name(PruningConfig.from_dict(c["config"])).split("-")[1] == grain]
        lines += [f"## {grain}", "", "| sparsity | " + " | ".join(criteria) + " |", "|---|" + "---|" * len(criteria)]
        for sparsity in sorted({c["config"]["sparsity"] for c in rows}):
            entries = []
            for crit in criteria:
                found = [c for c in rows if c["config"]["criterion"] == crit and c["config"]["sparsity"] == sparsity]
                if not found:
                    entries.append("–")
                    continue
                c = found[0]
                text = f"{c['test_accuracy']:.4f} ({100 * c['delta_vs_dense']:+.1f})"
                if "oneshot_accuracy" in c:
                    text += f" [{c['oneshot_accuracy']:.4f}]"
                entries.append(text)
            lines.append(f"| {pct(sparsity)} | " + " | ".join(entries) + " |")
        lines.append("")
    m = record["machine"]
    lines += [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}.", ""]
    return "\n".join(lines)
