"""The staged run of ``hf-sparse compress``: one model taken through a recipe's ``stages`` in order.

Each stage transforms the model as the previous stage left it (sparse attention, structured pruning, low rank,
compressed embeddings, fake quantisation), then fine-tunes it with its callbacks (pruning, distillation,
regularisation, and quantisation-aware training from the stage that started it). What a stage did stays done:
pruning masks are kept fixed afterwards (remapped onto the wrapped weights once quantisation-aware training wraps the
layers), fake quantisation continues to the end, where the layers are converted to integers (or stored sparse).
The test accuracy after each stage goes into the report.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding, Trainer

from .attention import apply_sparse_attention_
from .callbacks.distillation import DistillationCallback
from .callbacks.pruning import PruningCallback
from .callbacks.quantization import QATCallback
from .callbacks.regularization import RegularizationCallback
from .data import resolve_model
from .distillation.students import freeze_teacher, teacher_snapshot
from .embeddings import compress_embeddings_, finalize_embeddings_
from .lowrank import factorize_
from .nn.qat import QATLinear
from .pruning.apply import model_parameter_counts
from .pruning.structured import structured_prune_
from .quantization.apply import prepare_qat_, quantize_
from .recipes import Recipe, StageSection
from .resilience import atomic_write_text, confined_path

__all__ = ["run_stages", "stage_description"]

logger = logging.getLogger(__name__)


def stage_description(stage: StageSection) -> str:
    """What a stage does, in words (for logs and the report)."""
    parts = []
    if stage.attention is not None:
        from .compress import _attention_desc

        parts.append(_attention_desc(stage.attention))
    if stage.structured is not None:
        s = stage.structured
        what = []
        if s.layers_to_drop:
            what.append(f"layers {list(s.layers_to_drop)} dropped")
        if s.heads_fraction:
            what.append(f"{s.heads_fraction:.0%} of heads")
        if s.neurons_fraction:
            what.append(f"{s.neurons_fraction:.0%} of FFN neurons")
        parts.append("structured pruning (" + ", ".join(what or ["nothing"]) + ")")
    if stage.lowrank is not None:
        parts.append("low-rank factorised (truncated SVD)")
    if stage.embeddings is not None:
        from .compress import _embedding_tag

        parts.append("embeddings " + ", ".join(_embedding_tag(t) for t in stage.embeddings.tables.values()))
    if stage.quantization is not None:
        q = stage.quantization
        kind = "quantisation-aware training" if q.mode == "qat" else "post-training quantisation at the end"
        parts.append(f"{kind} ({q.weight.bits}-bit weights)")
    if stage.pruning is not None:
        p = stage.pruning
        parts.append(f"{p.criterion} pruning to {p.sparsity:.0%} ({p.granularity}, {p.schedule})")
    if stage.distillation is not None:
        parts.append("distilled" + (f" from {stage.distillation.teacher}" if stage.distillation.teacher else ""))
    if stage.regularization is not None:
        parts.append("regularised")
    if stage.train is None:
        parts.append("no training")
    elif not parts:
        parts.append("fine-tuning")
    return ", ".join(parts)


def _masks_on(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``masks`` keyed by the names of the weights they cover now: a Linear wrapped for quantisation-aware training
    keeps its weight at ``<name>.base_layer``."""
    out = {}
    for name, mask in masks.items():
        module = model.get_submodule(name)
        out[f"{name}.base_layer" if isinstance(module, QATLinear) else name] = mask
    return out


def run_stages(recipe: Recipe, ctx: dict, *, resume: bool) -> dict:
    """Take a copy of the fine-tuned dense model through ``recipe.stages``, save it as ``<output>/<recipe.name>``
    and return its report entry (the shape of the other runs', plus ``stages``).

    ``ctx`` holds what :func:`~hf_sparse.compress.run_compress` prepared: ``dense_model``, ``dense_accuracy``,
    ``tokenizer``, ``train_tok``, ``test_tok``, ``output_dir``, ``work``, ``latency_batch``, ``dense_bytes``.
    """
    from . import compress as c

    tag = recipe.name
    output_dir: Path = ctx["output_dir"]
    work: Path = ctx["work"]
    tokenizer, train_tok, test_tok = ctx["tokenizer"], ctx["train_tok"], ctx["test_tok"]
    dense_model = ctx["dense_model"]
    ckpt = recipe.checkpoint
    model = copy.deepcopy(dense_model)
    teachers: dict[str | None, torch.nn.Module] = {}
    masks: dict[str, torch.Tensor] | None = None
    pruning_cfg = None
    pruner_report = None
    qat_cfg = None
    quantized = None
    qsection = None
    embeddings_used = False
    stage_rows = []
    started = time.perf_counter()
    for i, stage in enumerate(recipe.stages):
        what = stage_description(stage)
        logger.info("hf-sparse compress: %s, stage %d/%d %s: %s", tag, i + 1, len(recipe.stages), stage.name, what)
        t0 = time.perf_counter()
        # -- transforms at the start of the stage --------------------------------------------------------------------
        if stage.attention is not None:
            apply_sparse_attention_(model, stage.attention)
        if stage.structured is not None:
            batches = c._labelled_batches(train_tok, tokenizer, 256, (stage.train or recipe.pruned).seed)
            structured_prune_(model, stage.structured, batches)
        if stage.lowrank is not None:
            factorize_(model, stage.lowrank, progress=False)
        if stage.embeddings is not None:
            compress_embeddings_(
                model, stage.embeddings, frequencies=c._token_frequencies(train_tok, model), progress=False
            )
            embeddings_used = True
        if stage.quantization is not None:
            qsection = stage.quantization
        if stage.quantization is not None and stage.quantization.mode == "qat":
            qat_cfg = stage.quantization.to_config()
            prepare_qat_(model, qat_cfg)
            if masks is not None:
                masks = _masks_on(model, masks)
        # -- training ------------------------------------------------------------------------------------------------
        pruning_cb = None
        if stage.pruning is not None:
            pruning_cfg = stage.pruning
            pruning_cb = PruningCallback(pruning_cfg, masks=masks)
        elif masks is not None:
            # Earlier stages' masks, kept as they are.
            fixed = pruning_cfg.replace(schedule="oneshot", start_step=0, initial_sparsity=0.0, layer_sparsity={})
            pruning_cb = PruningCallback(fixed, masks=masks)
        callbacks = [cb for cb in (pruning_cb, QATCallback(qat_cfg) if qat_cfg is not None else None) if cb]
        init_callbacks = []
        if stage.distillation is not None:
            key = stage.distillation.teacher
            if key not in teachers:
                teachers[key] = (
                    teacher_snapshot(dense_model)
                    if key is None
                    else freeze_teacher(c.load_classifier(resolve_model(key), recipe.dense.seed))
                )
            init_callbacks.append(DistillationCallback(teachers[key], stage.distillation.to_config(output_dir)))
        if stage.regularization is not None:
            init_callbacks.append(RegularizationCallback(stage.regularization, finalize_gates=True))
        if stage.train is not None:
            trainer = c._finetune(
                model,
                train_tok,
                tokenizer,
                stage.train,
                confined_path(work, f"{tag}-{i}-{stage.name}"),
                callbacks=callbacks,
                init_callbacks=init_callbacks,
                save_steps=ckpt.save_steps,
                resume=resume,
            )
        else:
            trainer = Trainer(
                model=model,
                args=c._training_args(recipe.pruned, confined_path(work, f"{tag}-{i}-{stage.name}")),
                processing_class=tokenizer,
                data_collator=DataCollatorWithPadding(tokenizer),
            )
        if pruning_cb is not None and pruning_cb.pruner is not None:
            masks = dict(pruning_cb.pruner.masks)
            pruner_report = pruning_cb.pruner.report()
        if stage.quantization is not None and stage.quantization.mode == "ptq":
            calibration = c._labelled_batches(
                train_tok, tokenizer, stage.quantization.calibration_samples, recipe.pruned.seed
            )
            quantize_(model, stage.quantization.to_config(post_training=True), calibration)
            quantized = "ptq"
        train_s = time.perf_counter() - t0
        accuracy, _ = c._predict(trainer, test_tok)
        row = {
            "name": stage.name,
            "description": what,
            "test_accuracy": accuracy,
            "sparsity": pruner_report["sparsity"] if pruner_report else 0.0,
            "steps": trainer.state.global_step if stage.train is not None else 0,
            "train_s": train_s,
            **model_parameter_counts(model),
        }
        stage_rows.append(row)
        logger.info("hf-sparse compress: %s after stage %s: test accuracy %.4f", tag, stage.name, accuracy)

    # -- storage -----------------------------------------------------------------------------------------------------
    layer_report = pruner_report or {"sparsity": 0.0, "pruned_params": 0, "prunable_params": 0, "layers": {}}
    counts = model_parameter_counts(model)
    layers = {n.removesuffix(".base_layer"): v for n, v in layer_report["layers"].items()}
    formats: dict[str, str] = dict.fromkeys(layers, "dense")
    if qat_cfg is not None:
        quantized = "qat"
    formats.update(c._store_(model, quantized, ckpt, pruning_cfg, masks))
    if embeddings_used and quantized is None:
        finalize_embeddings_(model)
    trainer = Trainer(
        model=model,
        args=c._training_args(recipe.pruned, confined_path(work, tag)),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    accuracy, logits = c._predict(trainer, test_tok)
    folder = confined_path(output_dir, tag)
    c._save_run(model, tokenizer, recipe, folder)
    run = {
        "name": tag,
        "target_sparsity": pruning_cfg.sparsity if pruning_cfg is not None else 0.0,
        "sparsity": layer_report["sparsity"],
        "test_accuracy": accuracy,
        "delta_vs_dense": accuracy - ctx["dense_accuracy"],
        "pruned_params": layer_report["pruned_params"],
        "prunable_params": layer_report["prunable_params"],
        **counts,
        "train_s": time.perf_counter() - started,
        "pruning_config": (pruning_cfg or recipe.pruning).to_dict(),
        "layers": {n: round(v["sparsity"], 6) for n, v in layers.items()},
        "formats": formats,
        "checkpoint": tag,
        "checkpoint_bytes": c._checkpoint_bytes(folder),
        "stages": stage_rows,
    }
    if quantized is not None:
        run["quantization"] = c._quantization_entry(model, quantized, qsection, None)
    distilled = [st for st in recipe.stages if st.distillation is not None]
    if distilled:
        run["distillation"] = {
            "kd": True,
            "config": distilled[0].distillation.to_dict(header=False),  # the first distilled stage's
            "stages": [st.name for st in distilled],
        }
    run["disk_ratio_vs_dense"] = run["checkpoint_bytes"] / ctx["dense_bytes"]
    if ckpt.verify:
        run["round_trip"] = c._verify_round_trip(
            folder, logits, test_tok, tokenizer, recipe.pruned, confined_path(work, tag)
        )
        logger.info("hf-sparse compress: %s reloaded: %s", tag, run["round_trip"])
    if ckpt.latency_rounds and c._is_main_process():
        run["latency"] = c._latency(model, dense_model, ctx["latency_batch"], ckpt.latency_rounds)
    if c._is_main_process():
        atomic_write_text(folder / c.RUN_FILE, json.dumps(run, indent=2) + "\n")
        for i, stage in enumerate(recipe.stages):
            c._remove_checkpoints(confined_path(work, f"{tag}-{i}-{stage.name}"))
    c._barrier()
    return run
