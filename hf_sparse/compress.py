"""The ``hf-sparse compress`` job: fine-tune the dense baseline, prune copies of it while fine-tuning, compare.

Everything runs through the stock ``transformers.Trainer``; pruning is the :class:`~hf_sparse.PruningCallback`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from .attention import apply_sparse_attention_
from .callbacks.distillation import DistillationCallback
from .callbacks.lowrank import LowRankCallback
from .callbacks.pruning import PruningCallback, attach_callbacks
from .callbacks.quantization import QATCallback
from .callbacks.regularization import RegularizationCallback
from .config import anchor_message
from .data import LABEL_NAMES, hub_id, load_rotten_tomatoes, resolve_model, stratified_subset
from .distillation.students import freeze_teacher, teacher_snapshot
from .embeddings import compress_embeddings_, finalize_embeddings_
from .errors import ConfigError, RecipeError, quote
from .integrations.hub import RESULTS_FILE, write_model_card
from .lowrank import factorize_
from .lowrank.sensitivity import allocate_ranks, rank_sensitivity_scan
from .machine import machine_info
from .nn import sparsify_
from .pruning.apply import _matches, model_parameter_counts
from .pruning.config import PruningConfig
from .pruning.guard import guarded_prune_
from .pruning.sensitivity import allocate_sparsity, sensitivity_scan
from .pruning.structured import structured_prune_
from .quantization.apply import convert_, prepare_qat_, quantization_report, quantize_
from .recipes import JOB_OUTPUTS, Recipe, TrainSection, dump_recipe
from .report import pct as _pct
from .report import render_markdown
from .resilience import (
    CheckpointMarkerCallback,
    atomic_folder,
    atomic_write_text,
    confined_path,
    last_complete_checkpoint,
    remove_incomplete_checkpoints,
    remove_stale_partials,
)

__all__ = ["run_compress", "preflight"]

logger = logging.getLogger(__name__)


def _training_args(section: TrainSection, output_dir: Path, save_steps: int = 0) -> TrainingArguments:
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
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        # Two kept: the newest may be incomplete when a run is killed while writing it (see hf_sparse.resilience).
        save_total_limit=2,
        eval_strategy="no",
        report_to="none",
        seed=section.seed,
        data_seed=section.seed,
        # Snippets vary from 5 to 70 tokens: batching similar lengths halves the padding, and the time.
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # On a CPU-only machine every process of a multi-process launch is a CPU (gloo) rank.
        use_cpu=not torch.cuda.is_available(),
    )


def _finetune(
    model,
    train_dataset,
    tokenizer,
    section: TrainSection,
    work_dir: Path,
    callbacks=(),
    init_callbacks=(),
    *,
    save_steps: int = 0,
    resume: bool = False,
) -> Trainer:
    """Fine-tune ``model``; ``init_callbacks`` go to ``Trainer(callbacks=...)`` (they act before the optimizer
    exists), ``callbacks`` are attached ahead of the logging integrations.

    With ``save_steps`` a Trainer checkpoint is written under ``work_dir`` every that many steps (marked complete
    last, see :mod:`hf_sparse.resilience`). ``resume``: continue from the last complete checkpoint there, if any;
    otherwise checkpoints left there by an earlier job are deleted first.
    """
    work_dir = Path(work_dir)
    checkpoint = None
    if _is_main_process():
        if resume:
            remove_incomplete_checkpoints(work_dir)
        else:
            _remove_checkpoints(work_dir)
    _barrier()
    if resume:
        checkpoint = last_complete_checkpoint(work_dir)
        if checkpoint is not None:
            logger.info("hf-sparse compress: resuming from %s", checkpoint)
    set_seed(section.seed)
    trainer = Trainer(
        model=model,
        args=_training_args(section, work_dir, save_steps),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=list(init_callbacks) or None,
    )
    attach_callbacks(trainer, *callbacks)
    trainer.add_callback(CheckpointMarkerCallback())  # last: marks a checkpoint complete after every other writer
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    return trainer


def _is_main_process() -> bool:
    """Whether this process writes the job's files (rank 0 of a multi-process launch, or the only process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    """Wait for every process of a multi-process launch (no-op in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


#: The names ``hf-sparse compress`` gives its runs (``pruned-80``, ``structured-pruned-50-int8-qat-kd``,
#: ``dense-int8-ptq``, ``guarded-90``): what its stale-temporary cleanup may touch besides :data:`JOB_OUTPUTS`.
_RUN_NAMES = re.compile(r"(?:pruned|structured|dense|guarded)(?:-[A-Za-z0-9._-]+)?")


def _remove_stale_partials(output_dir: Path, recipe: Recipe) -> None:
    """Delete the hidden temporaries a killed job left for this job's outputs (``.<run>.<pid>.*.partial`` folders,
    ``.report.json.<pid>.*.tmp`` ...), in the output folder and in its run folders; a SIGKILL mid-save runs no
    cleanup, and ``--resume`` would otherwise carry them forever."""
    from .integrations.hub import PLOT_FILE, RESULTS_FILE

    names = [*JOB_OUTPUTS, recipe.name, _RUN_NAMES]
    remove_stale_partials(output_dir, names)
    remove_stale_partials(confined_path(output_dir, "plots"), [re.compile(r"[A-Za-z0-9._-]+\.png")])
    for child in output_dir.iterdir():
        if (
            child.is_dir()
            and not child.is_symlink()
            and (child.name == recipe.name or _RUN_NAMES.fullmatch(child.name))
        ):
            remove_stale_partials(child, [RUN_FILE, RECIPE_FILE, RESULTS_FILE, PLOT_FILE, "README.md"])


def _remove_checkpoints(folder: Path) -> None:
    """Delete the Trainer checkpoints under ``folder`` (a run that is saved, or one started afresh)."""
    if folder.is_dir():
        for child in folder.glob("checkpoint-*"):
            shutil.rmtree(child, ignore_errors=True)


#: Marker of a fine-tuned dense baseline saved by ``hf-sparse compress`` / ``sweep`` (what it was trained from).
DENSE_INFO_FILE = "hf_sparse_dense.json"


def _dense_key(recipe: Recipe) -> dict:
    """What the fine-tuned dense model depends on: the model, data and dense sections."""
    return {k: getattr(recipe, k).to_dict(header=False) for k in ("model", "data", "dense")}


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
) -> tuple:
    """The dense baseline fine-tuned as ``recipe`` says: read from ``folder`` when a previous run saved it there
    from the same model, data and dense sections, else fine-tuned, evaluated and saved there.

    Returns:
        (model, info): ``info`` holds ``test_accuracy``, ``train_s``, the parameter counts and the recipe key.
    """
    for name in (DENSE_INFO_FILE, "hf_sparse_sweep_dense.json"):
        info_file = folder / name
        if info_file.is_file():
            info = json.loads(info_file.read_text())
            if info.get("recipe") == _dense_key(recipe):
                logger.info("hf-sparse: reusing the fine-tuned dense model in %s", folder)
                return AutoModelForSequenceClassification.from_pretrained(folder), info
    model = load_classifier(model_path, recipe.dense.seed)
    t0 = time.perf_counter()
    trainer = _finetune(model, train_tok, tokenizer, recipe.dense, work, save_steps=save_steps, resume=resume)
    train_s = time.perf_counter() - t0
    accuracy, _ = _predict(trainer, test_tok)
    info = {"recipe": _dense_key(recipe), "test_accuracy": accuracy, "train_s": train_s}
    info.update(model_parameter_counts(model))
    if _is_main_process():
        with atomic_folder(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / DENSE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _remove_checkpoints(Path(work))
    _barrier()
    return model, info


def _labelled_batches(train_tok, tokenizer, samples: int, seed: int) -> list[dict]:
    """``samples`` seeded training examples as padded batches of 32 with labels (Taylor scores need the loss)."""
    subset = train_tok.shuffle(seed=seed).select(range(min(samples, len(train_tok))))
    subset = subset.remove_columns([c for c in subset.column_names if c == "length"])
    collate = DataCollatorWithPadding(tokenizer)
    return [collate([subset[j] for j in range(i, min(i + 32, len(subset)))]) for i in range(0, len(subset), 32)]


def _predict(trainer: Trainer, dataset) -> tuple[float, np.ndarray]:
    """(accuracy, logits) of the trainer's model on ``dataset``."""
    output = trainer.predict(dataset, metric_key_prefix="test")
    logits = np.asarray(output.predictions)
    return float((logits.argmax(-1) == np.asarray(output.label_ids)).mean()), logits


def _accuracy(trainer: Trainer, dataset) -> float:
    return _predict(trainer, dataset)[0]


def _schedule_desc(cfg: PruningConfig) -> str:
    if cfg.schedule == "oneshot":
        return f"one-shot at step {cfg.start_step}"
    if cfg.schedule == "iterative":
        return (
            f"{cfg.stages} equal prune-then-fine-tune stages from step {cfg.start_step} to {_pct(cfg.sparsity)} at "
            f"step {cfg.end_step}"
        )
    if cfg.schedule == "rigl":
        return (
            f"{_pct(cfg.sparsity)} from step {cfg.start_step}, then every {cfg.update_every} steps up to "
            f"{_pct(cfg.regrow_fraction)} of the kept weights dropped and regrown (RigL, cosine-decayed) until step "
            f"{cfg.end_step}"
        )
    return (
        f"cubic schedule from {_pct(cfg.initial_sparsity)} at step {cfg.start_step} to {_pct(cfg.sparsity)} at step "
        f"{cfg.end_step}, masks updated every {cfg.update_every} steps"
    )


def _pruning_desc(cfg: PruningConfig, n_layers: int) -> tuple[str, str]:
    """What was pruned and how, in words: ("37 layers (1 of them an embedding table)", "unstructured magnitude
    pruning, global ranking")."""
    if cfg.embeddings:
        tables = "an embedding table" if len(cfg.embeddings) == 1 else f"{len(cfg.embeddings)} embedding tables"
        what = f"{n_layers} pruned layers ({tables} among them)"
    else:
        what = f"{n_layers} pruned `nn.Linear` layers"
    grain = {
        "block": f"{cfg.block[0]}x{cfg.block[1]}-block",
        "nm": f"{cfg.n}:{cfg.m}",
        "embedding_row": "embedding-row",
    }.get(cfg.granularity, cfg.granularity)
    return what, f"{grain} {cfg.criterion} pruning, {cfg.scope} ranking"


def _checkpoint_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _dense_checkpoint_bytes(model) -> int:
    """Size of ``model``'s weights saved dense by ``save_pretrained`` (the baseline of the disk-size ratio)."""
    import tempfile

    size = [0]
    if _is_main_process():  # save_pretrained writes on the main process only
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            size[0] = _checkpoint_bytes(Path(tmp))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(size, src=0)
    return size[0]


def _latency(sparse_model, dense_model, batch, rounds: int) -> dict:
    """Median forward time of the saved model and of the dense baseline, interleaved call by call."""
    from .benchmarking import interleave, summarize

    calls = {"ours": lambda i: sparse_model(**batch), "torch_dense": lambda i: dense_model(**batch)}
    sparse_model.eval(), dense_model.eval()
    with torch.inference_mode():
        times = interleave(calls, rounds)
    ours_s, baselines, speedup = summarize(times)
    return {
        "batch": int(batch["input_ids"].shape[0]),
        "seq": int(batch["input_ids"].shape[1]),
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "ours_s": ours_s,
        "dense_s": baselines["torch_dense"],
        "speedup": speedup["torch_dense"]["median"],
        "speedup_min": speedup["torch_dense"]["min"],
        "speedup_max": speedup["torch_dense"]["max"],
    }


def _verify_round_trip(folder: Path, logits: np.ndarray, test_tok, tokenizer, section: TrainSection, work: Path):
    """Reload ``folder`` with ``from_pretrained`` and compare its test-split logits with the saved model's."""
    from .nn import SparseEmbedding, SparseLinear
    from .nn.quant import QuantEmbedding

    saved = json.loads((folder / "config.json").read_text())
    # A sparse-attention model names its implementation when it loads (the pattern itself is in config.json).
    extra = {"attn_implementation": "hf_sparse"} if "hf_sparse_attention" in saved else {}
    loaded = AutoModelForSequenceClassification.from_pretrained(folder, **extra)
    trainer = Trainer(
        model=loaded,
        args=_training_args(section, work),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    _, reloaded = _predict(trainer, test_tok)
    return {
        "identical_predictions": bool((reloaded.argmax(-1) == logits.argmax(-1)).all()),
        "max_abs_logit_diff": float(np.abs(reloaded - logits).max()),
        "sparse_layers_loaded": sum(
            isinstance(m, (SparseLinear, SparseEmbedding, QuantEmbedding)) for m in loaded.modules()
        ),
    }


def _card_results(run: dict, report: dict, recipe: Recipe) -> dict:
    """What the model card of one pruned run shows (``hf_sparse_results.json``)."""
    cfg = PruningConfig.from_dict(run["pruning_config"])
    m = report["machine"]
    latency = run.get("latency")
    if latency:
        latency = {**latency, "machine": f"{m['cpu']}, {m['cores']} cores", "torch": m["torch"]}
    task = (
        f"`{hub_id(report['model'])}` fine-tuned for sentiment classification ({' / '.join(LABEL_NAMES)}) on "
        f"{recipe.data.dataset}"
    )
    title = f"{recipe.model.name} pruned to {_pct(run['sparsity'])} on {recipe.data.dataset}"
    summary = f"{task} and pruned with hf_sparse: {_pct(run['sparsity'])} of the weights of its " + (
        "{} are zero ({}).".format(*_pruning_desc(cfg, len(run["layers"])))
    )
    method = (
        "Fine-tuning and pruning ran through the stock `transformers.Trainer` with `hf_sparse.PruningCallback` "
        f"({_schedule_desc(cfg)}); `hf_sparse.sparsify_` then stored each pruned layer in the format predicted "
        f"fastest for {recipe.checkpoint.batch_hint} tokens per call on the machine below, or kept it dense."
    )
    structure = run.get("structure")
    if structure:
        sc = structure["config"]
        kept = structure["params_after"] / structure["params_before"]
        title = f"{recipe.model.name} with {_pct(1 - kept)} of its parameters removed on {recipe.data.dataset}"
        summary = (
            f"{task}, then made smaller with hf_sparse structured pruning: {_pct(sc['heads_fraction'])} of the "
            f"attention heads and {_pct(sc['neurons_fraction'])} of the FFN neurons removed ({sc['criterion']} "
            f"scores, {sc['scope']} ranking), {structure['params_after']:,} of {structure['params_before']:,} "
            "parameters left. The result is a smaller dense model; its per-layer sizes are in the checkpoint's "
            "config so `from_pretrained` rebuilds it (after `import hf_sparse`)."
        )
        also = f"; `hf_sparse.PruningCallback` also pruned weights ({_schedule_desc(cfg)})."
        method = (
            "Heads and neurons were scored and removed once with `hf_sparse.pruning.structured_prune_`, then the "
            "smaller model was fine-tuned with the stock `transformers.Trainer`" + (also if run["sparsity"] else ".")
        )
    quant = run.get("quantization")
    if quant:
        bits = quant["config"]["weight"]["bits"]
        how = (
            "trained with fake quantisation (`hf_sparse.QATCallback`), then converted"
            if quant["mode"] == "qat"
            else "quantised after training (`hf_sparse.quantize_`, calibrated on real training examples)"
        )
        base = title if run["sparsity"] else recipe.model.name
        title = f"{base} with {bits}-bit weights"
        summary += (
            f" Its {quant['layers']} encoder Linear layers hold {bits}-bit integer weights with float scales ({how}); "
            f"they take {quant['weight_bytes']:,} bytes instead of {quant['float_weight_bytes']:,} in float32."
        )
    return {
        "base_model": hub_id(report["model"]),
        "title": title,
        "summary": summary,
        "method": method,
        "dataset": recipe.data.dataset,
        "pipeline_tag": "text-classification",
        "recipe_file": "hf_sparse_recipe.yaml",
        "accuracy": {
            "metric": "accuracy",
            "split": "test",
            "examples": report["data"]["test_examples"],
            "seed": recipe.data.seed,
            "dense": report["dense"]["test_accuracy"],
            "compressed": run["test_accuracy"],
        },
        "nonzero_params": run["nonzero_params"],
        "dense_nonzero_params": report["dense"]["nonzero_params"],
        "dense_checkpoint_bytes": report["dense"]["checkpoint_bytes"],
        "latency": latency,
        "layers": run["layers"],
    }


def prepare_data(recipe: Recipe):
    """The recipe's model path, tokenizer, test split (text), tokenized train and test splits, the test split's
    majority-class accuracy, and the tokenized validation split."""
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
    val_tok = splits["validation"].map(tokenize, batched=True, remove_columns=["text"], desc="Tokenizing validation")
    majority = max(np.bincount(np.asarray(test["label"]), minlength=len(LABEL_NAMES))) / len(test)
    return model_path, tokenizer, test, train_tok, test_tok, float(majority), val_tok


def _meta_classifier(model_path: str, who: str, *, num_labels: int | None = len(LABEL_NAMES)):
    """The task's classifier on ``model_path`` built on the meta device (no weights read: shapes and names only);
    ``num_labels=None`` keeps the labels of the saved config (a teacher's)."""
    try:
        extra = {} if num_labels is None else {"num_labels": num_labels}
        config = AutoConfig.from_pretrained(model_path, **extra)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{who}: cannot read a model config from {quote(model_path)} (a packaged alias, a local folder or a Hub "
            f"id already in the cache; there is no download here): {str(exc).splitlines()[0]}"
        ) from None
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def preflight(recipe: Recipe) -> Recipe:
    """Every check of ``recipe`` that needs the model, run before any data is read or any training starts: the model
    and the teacher load, and every module name, layer index and layer map the recipe gives (in its sections, its
    stages and its ``overrides``) exists in them — a typo must not surface after the dense baseline's fine-tuning.

    Returns:
        The recipe with its ``overrides`` resolved into the sections they change (exact module names in
        ``layer_sparsity``, ``module_bits``, ``module_ranks`` and ``exclude_modules``): what the job runs and what
        is saved with each checkpoint.

    Raises:
        RecipeError: the message names the recipe key and what the model has instead.
    """
    try:
        model = _meta_classifier(resolve_model(recipe.model.name), "model.name")
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions is not None and recipe.model.max_length > positions:
            raise ConfigError(
                f"model.max_length {recipe.model.max_length} is beyond the model's {positions} positions "
                "(max_position_embeddings); use at most that."
            )
        if recipe.stages:
            # Each stage's overrides are resolved against the model as the stages before it leave it.
            cut = False
            stages = []
            for i, stage in enumerate(recipe.stages):
                stage = _resolve_overrides(recipe, model, stage)
                cut = _check_sections(recipe, model, stage, f"stages[{i}].", cut=cut)
                stages.append(stage)
            recipe = recipe.replace(stages=tuple(stages))
        else:
            recipe = _resolve_overrides(recipe, model, recipe)
            _check_sections(recipe, model, recipe, "")
        return recipe
    except RecipeError:
        raise
    except ConfigError as exc:
        message = anchor_message(recipe, str(exc))
        raise RecipeError(
            f"recipe {quote(recipe.name)} does not fit its model ({recipe.model.name}): {message}"
        ) from None


def _resolve_overrides(recipe: Recipe, model, section):
    """``section`` (the recipe itself, or one of its stages) with each entry of ``recipe.overrides`` turned into the
    exact module names of ``model`` in the pruning, quantization and lowrank settings it changes."""
    names = [n for n, _ in model.named_modules() if n]
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    sections = recipe.stages or (recipe,)
    for i, entry in enumerate(recipe.overrides):
        matched = [n for n in names if any(_matches(n, p) for p in entry.modules)]
        if not matched:
            raise ConfigError(
                f"overrides[{i}].modules: {list(entry.modules)} match no module of the model; its modules include "
                f"{names[:8]}."
            )
        layers = [n for n in matched if n in linears]
        for method, value in (("pruning", entry.sparsity), ("quantization", entry.bits), ("lowrank", entry.rank)):
            if value is None and method not in entry.skip:
                continue
            if method == "pruning" and not recipe.stages:
                present = any(cfg.sparsity > 0 for cfg in recipe.pruning_runs())
            else:
                present = any(getattr(sec, method) is not None for sec in sections)
            if not present:
                raise ConfigError(
                    f"overrides[{i}] sets {method} for {list(entry.modules)}, but the recipe has no {method}."
                )
        if (entry.sparsity is not None or entry.bits is not None or entry.rank is not None) and not layers:
            raise ConfigError(f"overrides[{i}].modules: {list(entry.modules)} match no Linear layer: {matched[:6]}.")
        section = _override_section(section, entry, layers, matched)
    return section


def _override_section(sec, entry, layers: list[str], matched: list[str]):
    """A recipe or stage with one ``overrides`` entry applied to its pruning, quantization and lowrank sections."""
    changes = {}
    if sec.pruning is not None and entry.sparsity is not None:
        changes["pruning"] = {
            "layer_sparsity": {**sec.pruning.layer_sparsity, **dict.fromkeys(layers, entry.sparsity)}
        }
    if sec.quantization is not None and entry.bits is not None:
        changes["quantization"] = {
            "module_bits": {**sec.quantization.module_bits, **dict.fromkeys(layers, entry.bits)}
        }
    if sec.lowrank is not None and entry.rank is not None:
        changes["lowrank"] = {"module_ranks": {**sec.lowrank.module_ranks, **dict.fromkeys(layers, entry.rank)}}
    for method in entry.skip:
        if getattr(sec, method) is not None:
            excluded = (*getattr(sec, method).exclude_modules, *matched)
            changes.setdefault(method, {})["exclude_modules"] = excluded
    return sec.replace(**{key: getattr(sec, key).replace(**fields) for key, fields in changes.items()})


def _check_sections(recipe: Recipe, model, sec, where: str, *, cut: bool = False) -> bool:
    """Check one set of method sections (the recipe's, or a stage's) against ``model``, transforming the meta model
    as they would (layers dropped), so later stages are checked against what earlier ones leave."""
    from .pruning.apply import match_embeddings, match_linears, select_modules
    from .pruning.structured import drop_layers_

    pruning = sec.pruning
    if pruning is not None and (where or any(cfg.sparsity > 0 for cfg in recipe.pruning_runs())):
        chosen = select_modules(model, pruning)
        if pruning.granularity == "block":
            rows, cols = pruning.block
            for name, module in chosen.items():
                out_f, in_f = module.weight.shape
                if out_f % rows or in_f % cols:
                    raise ConfigError(
                        f"{where}pruning.block {list(pruning.block)} does not divide {name}'s weight "
                        f"({out_f} x {in_f}); use a block whose sides divide every pruned layer's."
                    )
        unknown = [n for n in pruning.layer_sparsity if n not in chosen]
        if unknown:
            raise ConfigError(
                f"{where}pruning.layer_sparsity: {quote(unknown[0])} is not a pruned module (exact names); pruned "
                f"modules include {list(chosen)[:6]}."
            )
    if sec.embeddings is not None:
        for key in sec.embeddings.tables:
            match_embeddings(model, [key], who=f"{where}embeddings.tables")
    low = sec.lowrank
    if low is not None:
        if low.rank is not None or low.energy is not None or low.compression is not None or low.module_ranks:
            layers = match_linears(model, low.target_modules, low.exclude_modules, who=f"{where}lowrank")
            for name in low.module_ranks:
                if not any(_matches(n, name) for n in layers):
                    raise ConfigError(
                        f"{where}lowrank.module_ranks: {quote(name)} names no factorised Linear layer; they include "
                        f"{list(layers)[:6]}."
                    )
        match_embeddings(model, low.embeddings, who=f"{where}lowrank")
    quant = sec.quantization
    if quant is not None:
        match_linears(model, quant.target_modules, quant.exclude_modules, who=f"{where}quantization")
        if quant.embedding is not None:
            match_embeddings(model, quant.embedding_modules, who=f"{where}quantization")
    reg = sec.regularization
    if reg is not None and reg.uses_linears:
        match_linears(model, reg.target_modules, reg.exclude_modules, who=f"{where}regularization")
    if sec.attention is not None:
        layers = getattr(model.config, "num_hidden_layers", None)
        beyond = [i for i in sec.attention.layers if layers is not None and i >= layers]
        if beyond:
            raise ConfigError(
                f"{where}attention.layers {beyond} are beyond the model's {layers} layers (0-based indices)."
            )
        apply_sparse_attention_(model, sec.attention)
    if sec.structured is not None and sec.structured.layers_to_drop:
        try:
            drop_layers_(model, sec.structured.layers_to_drop)
        except ConfigError as exc:
            raise ConfigError(
                f"{where}structured.layers_to_drop {list(sec.structured.layers_to_drop)}: {exc}"
            ) from None
        cut = True
    teacher = None if cut else model  # the dense baseline: the uncut model
    distil = sec.distillation
    if distil is None:
        return cut
    if distil.teacher is not None:
        teacher = _meta_classifier(resolve_model(distil.teacher), f"{where}distillation.teacher", num_labels=None)
        if teacher.config.num_labels != len(LABEL_NAMES):
            raise ConfigError(
                f"{where}distillation.teacher {quote(distil.teacher)} classifies into {teacher.config.num_labels} "
                f"labels; the task has {len(LABEL_NAMES)} ({LABEL_NAMES})."
            )
        sv, tv = model.config.vocab_size, getattr(teacher.config, "vocab_size", None)
        if sv != tv:
            raise ConfigError(
                f"{where}distillation.teacher {quote(distil.teacher)} has a vocabulary of {tv} tokens, the student "
                f"{sv}: both read the same token ids, so they must share a tokenizer."
            )
    if distil.needs_hidden or distil.needs_attentions:
        from .distillation.students import layer_map_for

        if teacher is None:
            teacher = _meta_classifier(resolve_model(recipe.model.name), "model.name")
        layer_map_for(model, teacher, distil.layer_map)
    return cut


def load_classifier(model_path: str, seed: int):
    """The sequence classifier of the task's labels on ``model_path`` (new head initialised with ``seed``)."""
    set_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(
        model_path,
        num_labels=len(LABEL_NAMES),
        id2label=dict(enumerate(LABEL_NAMES)),
        label2id={n: i for i, n in enumerate(LABEL_NAMES)},
    )


def _evaluator(dataset, examples: int | None, tokenizer, recipe: Recipe, work: Path):
    """``evaluate(model) -> accuracy`` on ``examples`` seeded examples of ``dataset`` (all when None)."""
    from .data import stratified_subset

    subset = stratified_subset(dataset, examples, seed=recipe.data.seed)

    def evaluate(model) -> float:
        trainer = Trainer(
            model=model,
            args=_training_args(recipe.pruned, work),
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        return _accuracy(trainer, subset)

    return evaluate


def _guarded_run(recipe: Recipe, dense_model, train_tok, val_tok, test_tok, tokenizer, work: Path) -> dict:
    """The accuracy-guarded progressive run of ``recipe.guard`` (see :class:`~hf_sparse.recipes.GuardSection`)."""
    section = recipe.guard
    model = copy.deepcopy(dense_model)
    cfg = recipe.pruning.replace(sparsity=section.stages[-1], schedule="oneshot", initial_sparsity=0.0)
    evaluate = _evaluator(val_tok, section.validation_examples, tokenizer, recipe, work)
    stage_training = recipe.pruned.replace(max_steps=max(section.steps_per_stage, 1))

    def finetune(model, pruner, sparsity: float) -> None:
        if section.steps_per_stage == 0:
            return
        callback = PruningCallback(cfg.replace(sparsity=sparsity), masks=pruner.masks)
        _finetune(
            model,
            train_tok,
            tokenizer,
            stage_training,
            confined_path(work, f"stage-{round(100 * sparsity)}"),
            [callback],
        )

    result = guarded_prune_(model, cfg, section.stages, evaluate, section.max_drop, finetune=finetune)
    trainer = Trainer(
        model=model,
        args=_training_args(recipe.pruned, work),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    accepted = result.accepted_sparsity or 0.0
    out = {
        **{k: v for k, v in result.to_dict().items() if k != "masks"},
        "metric": "validation accuracy",
        "test_accuracy": _accuracy(trainer, test_tok),
        "checkpoint": f"guarded-{round(100 * accepted)}",
        "markdown": result.to_markdown(metric_name="validation accuracy"),
        "model": model,
    }
    return out


def run_compress(
    recipe: Recipe, output_dir: str | Path, *, recipe_source: str | None = None, resume: bool = False
) -> dict:
    """Run the compression job a recipe describes and write its outputs to ``output_dir``.

    Writes ``report.json``, ``report.md``, ``recipe.yaml`` (the resolved recipe) and, per pruned run, a
    ``pruned-<pct>/`` folder saved with ``save_pretrained`` (weights, tokenizer, model card, recipe). Every folder
    and file is written atomically (complete under its name, or not there). Under ``accelerate launch`` with several
    processes, every process trains (DDP) and only the first writes.

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
    if _is_main_process():
        _remove_stale_partials(output_dir, recipe)
    model_path, tokenizer, test, train_tok, test_tok, majority, val_tok = prepare_data(recipe)

    # -- dense baseline ---------------------------------------------------------------------------------------------
    logger.info("hf-sparse compress: fine-tuning the dense baseline on %d examples", len(train_tok))
    t0 = time.perf_counter()
    if recipe.save_dense:
        # Saved with what it was trained from, so running the job again in the same folder reuses it.
        dense_model, info = fine_tuned_dense(
            recipe,
            confined_path(output_dir, "dense"),
            model_path,
            tokenizer,
            train_tok,
            test_tok,
            confined_path(work, "dense"),
            save_steps=recipe.checkpoint.save_steps,
            resume=resume,
        )
        dense_accuracy = info["test_accuracy"]
        timings["dense_train_s"] = info["train_s"]
    else:
        dense_model = load_classifier(model_path, recipe.dense.seed)
        trainer = _finetune(
            dense_model,
            train_tok,
            tokenizer,
            recipe.dense,
            confined_path(work, "dense"),
            save_steps=recipe.checkpoint.save_steps,
            resume=resume,
        )
        timings["dense_train_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dense_accuracy = _accuracy(trainer, test_tok)
        timings["dense_eval_s"] = time.perf_counter() - t0
    logger.info("hf-sparse compress: dense test accuracy %.4f", dense_accuracy)
    dense = {
        "test_accuracy": dense_accuracy,
        **model_parameter_counts(dense_model),
        "checkpoint_bytes": _dense_checkpoint_bytes(dense_model),
    }
    ckpt = recipe.checkpoint
    # One real test review padded to max_length, batch 1: the latency case of every saved model.
    latency_batch = tokenizer(
        [test[0]["text"]],
        padding="max_length",
        max_length=recipe.model.max_length,
        truncation=True,
        return_tensors="pt",
    )

    scan = None
    if recipe.sensitivity is not None and recipe.lowrank is not None:
        t0 = time.perf_counter()
        scan = rank_sensitivity_scan(
            copy.deepcopy(dense_model),
            recipe.lowrank.to_config(),
            _evaluator(
                val_tok, recipe.sensitivity.validation_examples, tokenizer, recipe, confined_path(work, "sensitivity")
            ),
            recipe.sensitivity.sparsities,
        )
        timings["sensitivity_s"] = time.perf_counter() - t0
    elif recipe.sensitivity is not None:
        t0 = time.perf_counter()
        scan = sensitivity_scan(
            copy.deepcopy(dense_model),
            recipe.pruning,
            _evaluator(
                val_tok, recipe.sensitivity.validation_examples, tokenizer, recipe, confined_path(work, "sensitivity")
            ),
            recipe.sensitivity.sparsities,
        )
        timings["sensitivity_s"] = time.perf_counter() - t0

    # -- pruned runs, each from the fine-tuned dense model (train -> prune -> fine-tune -> store -> save) ------------
    runs = []
    distil = recipe.distillation
    teacher = None
    if distil is not None and distil.teacher is not None:
        teacher = freeze_teacher(load_classifier(resolve_model(distil.teacher), recipe.dense.seed))
    elif distil is not None:
        teacher = teacher_snapshot(dense_model)
    # With distillation each run is trained with it and, to measure its gain, also without (``compare``).
    quant = recipe.quantization
    quant_modes: tuple = (None,)
    if quant is not None:
        quant_modes = ("qat", "ptq") if quant.mode == "qat" and quant.compare_ptq else (quant.mode,)
    plan = [
        (cfg, kd, qmode)
        for cfg in recipe.pruning_runs()
        for kd in ((True, False) if distil is not None and distil.compare else (distil is not None,))
        for qmode in quant_modes
    ]
    if recipe.stages:
        plan = []  # one run through the stages instead (below)
    for cfg, kd, qmode in plan:
        if scan is not None and cfg.sparsity > 0:
            cfg = cfg.replace(layer_sparsity=allocate_sparsity(scan, cfg.sparsity))
        low = recipe.lowrank.to_config() if recipe.lowrank is not None else None
        if scan is not None and low is not None:
            low = low.replace(compression=None, module_ranks=allocate_ranks(scan, dense_model, low))
        tag = f"pruned-{round(100 * cfg.sparsity)}"
        if recipe.structured is not None:
            tag = "structured" if cfg.sparsity == 0 else f"structured-{tag}"
        if qmode is not None:
            bits = quant.weight.bits
            tag = f"{tag}-int{bits}" if cfg.sparsity > 0 or recipe.structured is not None else f"dense-int{bits}"
            tag += f"-{qmode}"
        if kd:
            tag += "-kd"
        attn = recipe.attention
        if attn is not None:
            tag = tag.replace("pruned-0", "dense") + f"-{_attention_tag(attn)}"
        gradual = low is not None and recipe.lowrank.mode == "gradual"
        emb = recipe.embeddings
        if emb is not None:
            tag = tag.replace("pruned-0", "dense") + "-emb-" + "-".join(_embedding_tag(s) for s in emb.tables.values())
        if low is not None:
            tag = tag.replace("pruned-0", "dense") + ("-lowrank-gradual" if gradual else "-lowrank")
        what = _schedule_desc(cfg) if cfg.sparsity > 0 else "structured pruning, then fine-tuning"
        if cfg.sparsity == 0 and recipe.structured is None:
            what = "fine-tuning"
        if kd:
            what += ", distilled from the dense model"
        if qmode == "qat":
            what += f", quantisation-aware ({quant.weight.bits}-bit weights)"
        elif qmode == "ptq":
            what += f", then post-training quantisation ({quant.weight.bits}-bit weights)"
        if attn is not None:
            what += f", {_attention_desc(attn)}"
        if emb is not None:
            what += ", embedding tables compressed (" + "; ".join(_embedding_tag(s) for s in emb.tables.values()) + ")"
        if low is not None:
            ranks_from = ", ranks from a sensitivity scan" if scan is not None else ""
            if gradual:
                what += (
                    f", ranks lowered during fine-tuning (cubic schedule to {recipe.lowrank.schedule_end:.0%} of the "
                    f"steps, projections every {recipe.lowrank.update_every} steps"
                    + (f", nuclear norm {recipe.lowrank.nuclear_weight:g}" if recipe.lowrank.nuclear_weight else "")
                    + f"{ranks_from}), then factorised"
                )
            else:
                what += f", low-rank factorised (truncated SVD{ranks_from}) before fine-tuning"
        logger.info("hf-sparse compress: %s (%s)", tag, what)
        done = _completed_run(confined_path(output_dir, tag), recipe) if resume else None
        if done is not None:
            logger.info("hf-sparse compress: %s was saved by the interrupted job; reused", tag)
            runs.append(done)
            continue
        if distil is not None and distil.student_from == "pretrained":
            model = load_classifier(model_path, recipe.pruned.seed)
        else:
            model = copy.deepcopy(dense_model)
        if attn is not None:
            apply_sparse_attention_(model, attn)
        embedding_report = None
        if emb is not None:
            embedding_report = compress_embeddings_(
                model, emb, frequencies=_token_frequencies(train_tok, model), progress=False
            )
        lowrank_report = None
        lowrank_cb = None
        if gradual:
            lowrank_cb = LowRankCallback(
                low,
                nuclear_weight=recipe.lowrank.nuclear_weight,
                prox_every=recipe.lowrank.prox_every,
                update_every=recipe.lowrank.update_every,
                end_fraction=recipe.lowrank.schedule_end,
            )
        elif low is not None:
            lowrank_report = factorize_(model, low, progress=False)
        t0 = time.perf_counter()
        structure = None
        if recipe.structured is not None:
            batches = _labelled_batches(train_tok, tokenizer, 256, recipe.pruned.seed)
            structure = structured_prune_(model, recipe.structured, batches)
            logger.info(
                "hf-sparse compress: %s: structured pruning kept %d of %d parameters",
                tag,
                structure["params_after"],
                structure["params_before"],
            )
        callback = PruningCallback(cfg) if cfg.sparsity > 0 else None
        init_callbacks = []
        qat_callback = None
        if qmode == "qat":
            # Prepared before the Trainer exists, so learned step sizes are in its optimizer; the pruning callback
            # then prunes the wrapped layers' own weights.
            prepare_qat_(model, quant.to_config())
            qat_callback = QATCallback(quant.to_config())
        if recipe.regularization is not None:
            init_callbacks.append(RegularizationCallback(recipe.regularization, finalize_gates=True))
        distiller_cb = DistillationCallback(teacher, distil.to_config(output_dir)) if kd else None
        if distiller_cb is not None:
            init_callbacks.insert(0, distiller_cb)
        trainer = _finetune(
            model,
            train_tok,
            tokenizer,
            recipe.pruned,
            confined_path(work, tag),
            callbacks=([callback] if callback else [])
            + ([qat_callback] if qat_callback else [])
            + ([lowrank_cb] if lowrank_cb else []),
            init_callbacks=init_callbacks,
            save_steps=ckpt.save_steps,
            resume=resume,
        )
        train_s = time.perf_counter() - t0
        if lowrank_cb is not None:
            lowrank_report = lowrank_cb.report
        if emb is not None and qmode is None:
            finalize_embeddings_(model)  # embedding QAT: the trained float table becomes integer codes
        float_accuracy = None
        float_counts = None
        if qmode == "ptq":
            float_counts = model_parameter_counts(model)  # counted in float: integer codes are not parameters
            float_accuracy = _accuracy(trainer, test_tok)
            t0 = time.perf_counter()
            calibration = _labelled_batches(train_tok, tokenizer, quant.calibration_samples, recipe.pruned.seed)
            quantize_(model, quant.to_config(post_training=True), calibration)
            train_s += time.perf_counter() - t0
        if callback is not None:
            layer_report = callback.pruner.report()
        else:
            layer_report = {"sparsity": 0.0, "pruned_params": 0, "prunable_params": 0, "layers": {}}
        counts = float_counts or model_parameter_counts(model)
        formats: dict[str, str] = {n.removesuffix(".base_layer"): "dense" for n in layer_report["layers"]}
        layer_report["layers"] = {n.removesuffix(".base_layer"): v for n, v in layer_report["layers"].items()}
        formats.update(_store_(model, qmode, ckpt, cfg, callback.pruner.masks if callback is not None else None))
        # Accuracy of the model as it is saved (sparse layers and kernels included).
        t0 = time.perf_counter()
        accuracy, logits = _predict(trainer, test_tok)
        eval_s = time.perf_counter() - t0
        logger.info("hf-sparse compress: %s test accuracy %.4f (dense %.4f)", tag, accuracy, dense_accuracy)
        folder = confined_path(output_dir, tag)
        _save_run(model, tokenizer, recipe, folder)
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
            "formats": formats,
            "checkpoint": tag,
            "checkpoint_bytes": _checkpoint_bytes(folder),
        }
        if qmode is not None:
            run["quantization"] = _quantization_entry(model, qmode, quant, float_accuracy)
        if distil is not None:
            run["distillation"] = {"kd": kd, "config": distil.to_dict(header=False) if kd else None}
            if distiller_cb is not None:
                d = distiller_cb.distiller
                run["distillation"]["teacher_calls"] = d.teacher_calls
                run["distillation"]["cache_hits"] = d.cache.hits if d.cache is not None else 0
        if attn is not None:
            run["attention"] = {"config": attn.to_dict(header=False), "description": _attention_desc(attn)}
        if lowrank_report is not None:
            factored = {n: e for n, e in lowrank_report.items() if "format" in e}
            run["lowrank"] = {
                "config": recipe.lowrank.to_dict(header=False),
                "module_ranks": dict(low.module_ranks),
                "layers": lowrank_report,
                "dense_params": sum(e["params"] for e in factored.values()),
                "stored_params": sum(e["stored"] for e in factored.values()),
            }
        if embedding_report is not None:
            run["embeddings"] = {"config": emb.to_dict(header=False), "tables": embedding_report}
        if structure is not None:
            run["structure"] = {
                "config": recipe.structured.to_dict(header=False),
                "params_before": structure["params_before"],
                "params_after": structure["params_after"],
                "dropped_layers": structure["dropped_layers"],
                "layers": [
                    {"layer": r["layer"], "heads": len(r["heads_kept"]), "neurons": len(r["neurons_kept"])}
                    for r in structure["layers"]
                ],
            }
        run["disk_ratio_vs_dense"] = run["checkpoint_bytes"] / dense["checkpoint_bytes"]
        if ckpt.verify:
            run["round_trip"] = _verify_round_trip(
                folder, logits, test_tok, tokenizer, recipe.pruned, confined_path(work, tag)
            )
            logger.info("hf-sparse compress: %s reloaded: %s", tag, run["round_trip"])
        if ckpt.latency_rounds and _is_main_process():
            run["latency"] = _latency(model, dense_model, latency_batch, ckpt.latency_rounds)
        runs.append(run)
        if _is_main_process():
            # The run is complete: a resumed job reuses it, and its training checkpoints are no longer needed.
            atomic_write_text(folder / RUN_FILE, json.dumps(run, indent=2) + "\n")
            _remove_checkpoints(confined_path(work, tag))
        _barrier()
        del model, trainer

    if recipe.stages:
        from .staged import run_stages

        done = _completed_run(confined_path(output_dir, recipe.name), recipe) if resume else None
        if done is not None:
            logger.info("hf-sparse compress: %s was saved by the interrupted job; reused", recipe.name)
            runs.append(done)
        else:
            context = {
                "dense_model": dense_model,
                "dense_accuracy": dense_accuracy,
                "dense_bytes": dense["checkpoint_bytes"],
                "tokenizer": tokenizer,
                "train_tok": train_tok,
                "test_tok": test_tok,
                "output_dir": output_dir,
                "work": work,
                "latency_batch": latency_batch,
            }
            runs.append(run_stages(recipe, context, resume=resume))

    guard = None
    if recipe.guard is not None:
        t0 = time.perf_counter()
        guard = _guarded_run(
            recipe, dense_model, train_tok, val_tok, test_tok, tokenizer, confined_path(work, "guarded")
        )
        timings["guard_s"] = time.perf_counter() - t0
        folder = confined_path(output_dir, guard["checkpoint"])
        if _is_main_process():
            with atomic_folder(folder) as tmp:
                guard["model"].save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        _barrier()
        del guard["model"]

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
        "guard": guard,
        "sensitivity": scan.to_dict() if scan is not None else None,
        "timings": timings,
        "machine": machine_info(),
        "processes": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
    }
    if _is_main_process():
        for run in runs:
            folder = confined_path(output_dir, run["checkpoint"])
            results = _card_results(run, report, recipe)
            atomic_write_text(folder / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
            write_model_card(folder, results=results)
        from .integrations.plot import write_report_plots

        plots = write_report_plots(report, confined_path(output_dir, "plots"))
        report["plots"] = {name: f"plots/{file}" for name, file in plots.items()}
        atomic_write_text(confined_path(output_dir, "recipe.yaml"), dump_recipe(recipe))
        atomic_write_text(confined_path(output_dir, "report.json"), json.dumps(report, indent=2) + "\n")
        atomic_write_text(confined_path(output_dir, "report.md"), render_markdown(report))
        # The job is complete: training checkpoints (kept for --resume) and empty log folders go.
        for folder in work.iterdir() if work.is_dir() else ():
            _remove_checkpoints(folder)
        _remove_empty_tree(work)
    _barrier()
    return report


#: Written into each run's folder once the run is complete (its report entry); ``--resume`` reuses such runs.
RUN_FILE = "hf_sparse_run.json"
#: The resolved recipe saved with each checkpoint.
RECIPE_FILE = "hf_sparse_recipe.yaml"


def _store_(model, qmode: str | None, ckpt, pruning: PruningConfig, masks) -> dict[str, str]:
    """Turn ``model``'s layers into what is saved, in place: QAT layers converted to integer layers, pruned layers
    stored in ``ckpt.format`` (sparse formats, from ``masks``); post-training quantised layers are already integer.
    Returns the format of each layer stored."""
    if qmode == "qat":
        return convert_(model)
    if qmode == "ptq":
        return {n: r["format"] for n, r in quantization_report(model).items()}
    if ckpt.format == "dense" or masks is None:
        return {}
    decisions = sparsify_(
        model,
        format=ckpt.format,
        batch_hint=ckpt.batch_hint,
        min_sparsity=ckpt.min_sparsity,
        target_modules=pruning.target_modules,
        exclude_modules=pruning.exclude_modules,
        embeddings=pruning.embeddings,
        masks=masks,
    )
    return {n: d.choice.format for n, d in decisions.items()}


def _quantization_entry(model, mode: str, section, float_accuracy: float | None) -> dict:
    """A run's ``quantization`` report entry: mode, config, and the quantised layers' bytes against float32."""
    qreport = quantization_report(model)
    return {
        "mode": mode,
        "config": section.to_config(post_training=mode == "ptq").to_dict(header=False),
        "float_accuracy": float_accuracy,
        "layers": len(qreport),
        "weight_bytes": sum(r["nbytes"] for r in qreport.values()),
        "float_weight_bytes": sum(r["float_bytes"] for r in qreport.values()),
    }


def _save_run(model, tokenizer, recipe: Recipe, folder: Path) -> None:
    """Save a run's model, tokenizer and resolved recipe into ``folder`` atomically (the main process only; every
    process waits until it is there)."""
    if _is_main_process():
        with atomic_folder(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / RECIPE_FILE).write_text(dump_recipe(recipe))
    _barrier()


def _completed_run(folder: Path, recipe: Recipe) -> dict | None:
    """The report entry of a run an earlier (interrupted) job completed in ``folder`` with the same resolved recipe,
    or None."""
    try:
        if (folder / RECIPE_FILE).read_text() != dump_recipe(recipe):
            return None
        return json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def _embedding_tag(spec) -> str:
    """A short name of a table's compression for run names: ``qrow4``, ``qr-mult``, ``tt``, ... (+ ``-hotN``)."""
    name = {"qrow": f"int{spec.bits}", "qr": f"qr-{spec.op}"}.get(spec.method, spec.method)
    return name + (f"-hot{spec.hot_rows}" if spec.hot_rows else "")


def _token_frequencies(train_tok, model) -> dict[str, torch.Tensor]:
    """How often each token id occurs in the tokenised training set, for the model's input (word) embedding table,
    by its module name (its hot rows; other tables get no frequencies)."""
    table = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is table)
    counts = torch.zeros(table.weight.shape[0], dtype=torch.float64)
    for row in train_tok["input_ids"]:
        counts += torch.bincount(torch.as_tensor(row), minlength=counts.numel()).double()
    return {name: counts}


def _attention_tag(cfg) -> str:
    if cfg.pattern == "window":
        base = f"window{cfg.window}"
    elif cfg.pattern == "dilated":
        base = f"dilated{cfg.window}x{cfg.dilation}"
    else:
        base = cfg.pattern
    return base + ("-global" if cfg.global_positions or cfg.global_token_ids else "")


def _attention_desc(cfg) -> str:
    if cfg.pattern == "window":
        what = f"sliding-window attention (±{cfg.window} tokens)"
    elif cfg.pattern == "dilated":
        what = f"dilated-window attention (every {cfg.dilation}th token within ±{cfg.window * cfg.dilation})"
    elif cfg.pattern == "bigbird":
        what = f"BigBird block-sparse attention ({cfg.block}-token blocks)"
    else:
        what = "full attention"
    if cfg.global_positions:
        what += f" with global positions {list(cfg.global_positions)}"
    if cfg.global_token_ids:
        what += f" and global token ids {list(cfg.global_token_ids)}"
    return what


def _remove_empty_tree(folder: Path) -> None:
    if not folder.is_dir():
        return
    for root, _dirs, files in os.walk(folder, topdown=False):
        if not files and not os.listdir(root):
            os.rmdir(root)
