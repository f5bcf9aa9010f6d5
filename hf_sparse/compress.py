"""The ``hf-sparse compress`` job: fine-tune the dense baseline, prune copies of it while fine-tuning, compare.

Everything runs through the stock ``transformers.Trainer``; pruning is the :class:`~hf_sparse.PruningCallback`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path
from string import Template

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from ._resources import data_dir
from .callbacks.pruning import PruningCallback, attach_callbacks
from .data import LABEL_NAMES, hub_id, load_rotten_tomatoes, resolve_model, stratified_subset
from .machine import machine_info
from .pruning.apply import model_parameter_counts
from .pruning.config import PruningConfig
from .recipes import Recipe, TrainSection, dump_recipe
from .report import pct as _pct
from .report import render_markdown

__all__ = ["run_compress"]

logger = logging.getLogger(__name__)


def _training_args(section: TrainSection, output_dir: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=section.learning_rate,
        num_train_epochs=section.epochs,
        max_steps=section.max_steps,
        per_device_train_batch_size=section.batch_size,
        per_device_eval_batch_size=max(64, section.batch_size),
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        weight_decay=section.weight_decay,
        warmup_steps=section.warmup_fraction,
        lr_scheduler_type="linear",
        logging_steps=section.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=section.seed,
        data_seed=section.seed,
        # Snippets vary from 5 to 70 tokens: batching similar lengths halves the padding, and the time.
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def _finetune(model, train_dataset, tokenizer, section: TrainSection, work_dir: Path, callbacks=()) -> Trainer:
    set_seed(section.seed)
    trainer = Trainer(
        model=model,
        args=_training_args(section, work_dir),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    attach_callbacks(trainer, *callbacks)
    trainer.train()
    return trainer


def _accuracy(trainer: Trainer, dataset) -> float:
    output = trainer.predict(dataset, metric_key_prefix="test")
    predictions = np.argmax(output.predictions, axis=-1)
    return float((predictions == np.asarray(output.label_ids)).mean())


def _schedule_desc(cfg: PruningConfig) -> str:
    if cfg.schedule == "oneshot":
        return f"one-shot at step {cfg.start_step}"
    return (
        f"cubic schedule from {_pct(cfg.initial_sparsity)} at step {cfg.start_step} to {_pct(cfg.sparsity)} at step "
        f"{cfg.end_step}, masks updated every {cfg.update_every} steps"
    )


def _write_model_card(folder: Path, run: dict, report: dict, recipe: Recipe) -> None:
    template = Template((data_dir("model_cards") / "pruned-classifier.md").read_text())
    cfg = PruningConfig.from_dict(run["pruning_config"])
    card = template.safe_substitute(
        base_model=hub_id(report["model"]),
        title=f"{recipe.model.name} pruned to {_pct(run['sparsity'])} on {recipe.data.dataset}",
        task=f"sentiment classification ({' / '.join(LABEL_NAMES)}) on {recipe.data.dataset}",
        sparsity_pct=_pct(run["sparsity"]),
        n_layers=len(run["layers"]),
        pruning_desc=f"unstructured {cfg.criterion} pruning, {cfg.scope} ranking",
        test_size=report["data"]["test_examples"],
        seed=recipe.data.seed,
        dense_nonzero=f"{report['dense']['nonzero_params']:,}",
        dense_accuracy=f"{report['dense']['test_accuracy']:.4f}",
        nonzero=f"{run['nonzero_params']:,}",
        accuracy=f"{run['test_accuracy']:.4f}",
        repo_or_path=str(folder),
        schedule_desc=_schedule_desc(cfg),
        machine=f"{report['machine']['cpu']}, {report['machine']['cores']} cores",
    )
    (folder / "README.md").write_text(card)


def run_compress(recipe: Recipe, output_dir: str | Path, *, recipe_source: str | None = None) -> dict:
    """Run the compression job a recipe describes and write its outputs to ``output_dir``.

    Writes ``report.json``, ``report.md``, ``recipe.yaml`` (the resolved recipe) and, per pruned run, a
    ``pruned-<pct>/`` folder saved with ``save_pretrained`` (weights, tokenizer, model card, recipe).

    Returns:
        The report as a dict (what ``report.json`` holds).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    work = output_dir / "trainer"
    started = time.perf_counter()
    timings: dict[str, float] = {}

    model_path = resolve_model(recipe.model.name)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    splits = load_rotten_tomatoes(
        seed=recipe.data.seed,
        validation_fraction=recipe.data.validation_fraction,
        test_fraction=recipe.data.test_fraction,
    )
    train = stratified_subset(splits["train"], recipe.data.train_limit, seed=recipe.data.seed)
    test = stratified_subset(splits["test"], recipe.data.test_limit, seed=recipe.data.seed)

    def tokenize(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=recipe.model.max_length)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return enc

    train_tok = train.map(tokenize, batched=True, remove_columns=["text"], desc="Tokenizing train")
    test_tok = test.map(tokenize, batched=True, remove_columns=["text"], desc="Tokenizing test")
    majority = max(np.bincount(np.asarray(test["label"]), minlength=len(LABEL_NAMES))) / len(test)

    # -- dense baseline ---------------------------------------------------------------------------------------------
    logger.info("hf-sparse compress: fine-tuning the dense baseline on %d examples", len(train_tok))
    set_seed(recipe.dense.seed)
    dense_model = AutoModelForSequenceClassification.from_pretrained(
        model_path,
        num_labels=len(LABEL_NAMES),
        id2label=dict(enumerate(LABEL_NAMES)),
        label2id={n: i for i, n in enumerate(LABEL_NAMES)},
    )
    t0 = time.perf_counter()
    trainer = _finetune(dense_model, train_tok, tokenizer, recipe.dense, work / "dense")
    timings["dense_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dense_accuracy = _accuracy(trainer, test_tok)
    timings["dense_eval_s"] = time.perf_counter() - t0
    logger.info("hf-sparse compress: dense test accuracy %.4f", dense_accuracy)
    dense = {"test_accuracy": dense_accuracy, **model_parameter_counts(dense_model)}
    if recipe.save_dense:
        dense_model.save_pretrained(output_dir / "dense")
        tokenizer.save_pretrained(output_dir / "dense")

    # -- pruned runs, each from the fine-tuned dense model (train -> prune -> fine-tune) ------------------------------
    runs = []
    for cfg in recipe.pruning_runs():
        tag = f"pruned-{round(100 * cfg.sparsity)}"
        logger.info("hf-sparse compress: %s (%s)", tag, _schedule_desc(cfg))
        model = copy.deepcopy(dense_model)
        callback = PruningCallback(cfg)
        t0 = time.perf_counter()
        trainer = _finetune(model, train_tok, tokenizer, recipe.pruned, work / tag, callbacks=[callback])
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        accuracy = _accuracy(trainer, test_tok)
        eval_s = time.perf_counter() - t0
        logger.info("hf-sparse compress: %s test accuracy %.4f (dense %.4f)", tag, accuracy, dense_accuracy)
        layer_report = callback.pruner.report()
        counts = model_parameter_counts(model)
        run = {
            "name": tag,
            "target_sparsity": cfg.sparsity,
            "sparsity": layer_report["sparsity"],
            "test_accuracy": accuracy,
            "delta_vs_dense": accuracy - dense_accuracy,
            "pruned_params": layer_report["pruned_params"],
            "prunable_params": layer_report["prunable_params"],
            **counts,
            "train_s": train_s,
            "eval_s": eval_s,
            "pruning_config": cfg.to_dict(),
            "layers": {n: round(v["sparsity"], 6) for n, v in layer_report["layers"].items()},
            "checkpoint": tag,
        }
        runs.append(run)
        folder = output_dir / tag
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "hf_sparse_recipe.yaml").write_text(dump_recipe(recipe))
        del model, trainer

    timings["total_s"] = time.perf_counter() - started
    report = {
        "recipe": recipe_source or recipe.name,
        "model": recipe.model.name,
        "model_path": model_path,
        "data": {
            "dataset": recipe.data.dataset,
            "seed": recipe.data.seed,
            "train_examples": len(train_tok),
            "test_examples": len(test_tok),
            "test_majority_accuracy": float(majority),
        },
        "dense": dense,
        "runs": runs,
        "timings": timings,
        "machine": machine_info(),
    }
    for run in runs:
        _write_model_card(output_dir / run["checkpoint"], run, report, recipe)
    (output_dir / "recipe.yaml").write_text(dump_recipe(recipe))
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / "report.md").write_text(render_markdown(report))
    # Trainer work folders only hold logs of runs that saved no checkpoints; keep the output folder tidy.
    _remove_empty_tree(work)
    return report


def _remove_empty_tree(folder: Path) -> None:
    if not folder.is_dir():
        return
    for root, _dirs, files in os.walk(folder, topdown=False):
        if not files and not os.listdir(root):
            os.rmdir(root)
