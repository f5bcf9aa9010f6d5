"""The one fine-tune / resume / save path of the jobs, and their shared helpers: ``transformers.Trainer`` set up
from a recipe's train section, Trainer checkpoints for ``--resume``, multi-process awareness, the latency harness."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from ..resilience import last_complete_checkpoint, remove_incomplete_checkpoints

__all__ = [
    "training_args",
    "finetune",
    "is_main_process",
    "barrier",
    "remove_checkpoints",
    "remove_empty_tree",
    "checkpoint_bytes",
    "dense_checkpoint_bytes",
    "latency",
    "latency_record",
    "dense_baselines",
]

logger = logging.getLogger("hf_sparse.compress")


def training_args(section, output_dir: Path, save_steps: int = 0):
    """``TrainingArguments`` of a recipe's train section (``TrainSection``), writing under ``output_dir``."""
    from transformers import TrainingArguments

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


def finetune(
    model,
    train_dataset,
    tokenizer,
    section,
    work_dir: Path,
    callbacks=(),
    init_callbacks=(),
    *,
    collator=None,
    save_steps: int = 0,
    resume: bool = False,
):
    """Fine-tune ``model`` with the stock Trainer; ``init_callbacks`` go to ``Trainer(callbacks=...)`` (they act
    before the optimizer exists), ``callbacks`` are attached ahead of the logging integrations.

    With ``save_steps`` a Trainer checkpoint is written under ``work_dir`` every that many steps (marked complete
    last, see :mod:`hf_sparse.resilience`). ``resume``: continue from the last complete checkpoint there, if any;
    otherwise checkpoints left there by an earlier job are deleted first. Returns the Trainer.
    """
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    from ..resilience import CheckpointMarkerCallback
    from ..trainer_callbacks import attach_callbacks

    work_dir = Path(work_dir)
    checkpoint = None
    if is_main_process():
        if resume:
            remove_incomplete_checkpoints(work_dir)
        else:
            remove_checkpoints(work_dir)
    barrier()
    if resume:
        checkpoint = last_complete_checkpoint(work_dir)
        if checkpoint is not None:
            logger.info("hf-sparse compress: resuming from %s", checkpoint)
    set_seed(section.seed)
    trainer = Trainer(
        model=model,
        args=training_args(section, work_dir, save_steps),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        data_collator=collator if collator is not None else DataCollatorWithPadding(tokenizer),
        callbacks=list(init_callbacks) or None,
    )
    attach_callbacks(trainer, *callbacks)
    trainer.add_callback(CheckpointMarkerCallback())  # last: marks a checkpoint complete after every other writer
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    return trainer


def is_main_process() -> bool:
    """Whether this process writes the job's files (rank 0 of a multi-process launch, or the only process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every process of a multi-process launch (no-op in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def remove_checkpoints(folder: Path) -> None:
    """Delete the Trainer checkpoints under ``folder`` (a run that is saved, or one started afresh)."""
    if folder.is_dir():
        for child in folder.glob("checkpoint-*"):
            shutil.rmtree(child, ignore_errors=True)


def remove_empty_tree(folder: Path) -> None:
    """Remove the empty folders under ``folder`` (and ``folder`` itself when it ends up empty)."""
    if not folder.is_dir():
        return
    for root, _dirs, files in os.walk(folder, topdown=False):
        if not files and not os.listdir(root):
            os.rmdir(root)


def checkpoint_bytes(folder: Path) -> int:
    """Bytes of the weight files of a saved model."""
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def dense_checkpoint_bytes(model) -> int:
    """Size of ``model``'s weights saved dense by ``save_pretrained`` (the baseline of the disk-size ratio)."""
    size = [0]
    if is_main_process():  # save_pretrained writes on the main process only
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            size[0] = checkpoint_bytes(Path(tmp))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(size, src=0)
    return size[0]


def dense_baselines(dense_model, batch, include=None):
    """The dense configurations of this machine for ``dense_model`` on ``batch`` (a dict of input tensors), each
    checked against the fp32 model first (:func:`hf_sparse.benchmarking.dense_model_baselines`: fp32; bf16 where
    the CPU has native bf16; torch dynamic int8; onnxruntime dynamic int8, OpenVINO and OpenVINO with int8 weights
    where installed). ``include``: only these (fp32 always); ``None``: all. Build them once per job and pass them
    to every :func:`latency` call: the onnxruntime and OpenVINO ones export or convert the model (seconds)."""
    from ..benchmarking import dense_model_baselines

    dense_model.eval()  # dropout would make every check fail
    with _stdout_silenced():
        return dense_model_baselines(dense_model, dict(batch), include=include)


@contextlib.contextmanager
def _stdout_silenced():
    """File descriptor 1 sent to the null device: when ``torch.onnx.export`` fails (a model it cannot convert, the
    baseline is then skipped with the reason), its C++ side prints the whole traced graph there, thousands of lines
    for a real model, which Python-level redirection does not catch."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def latency_record(times: dict[str, list[float]], baselines, **fields) -> dict:
    """The latency entry of a report from :func:`hf_sparse.benchmarking.interleave` times of ``"ours"`` and of
    every dense baseline in ``baselines`` (a :class:`~hf_sparse.benchmarking.DenseBaselines`); ``fields`` first.
    See :func:`latency` for the keys."""
    from ..benchmarking import add_dense_comparison, summarize
    from ..machine import machine_info
    from .report import machine_label

    ours_s, medians, ratios = summarize(times)
    record = {**fields, "rounds": len(times["ours"]), "ours_s": ours_s, "baselines_s": medians}
    add_dense_comparison(record, baselines)
    fp32 = ratios["fp32"]
    record.update(
        dense_s=record["dense_baselines_s"]["fp32"],
        speedup=fp32["median"],
        speedup_min=fp32["min"],
        speedup_max=fp32["max"],
        ratios=ratios,
        machine=machine_label(machine_info()),
    )
    return record


def latency(model, dense_model, batch, rounds: int, *, baselines=None) -> dict:
    """Median forward time of ``model`` and of every dense configuration of this machine on ``batch`` (a dict of
    input tensors), interleaved in this process (ours, fp32, bf16, ... in turn, each round, each called
    :data:`~hf_sparse.benchmarking.MODEL_BLOCK` times with the last timed).

    Args:
        dense_model: The fp32 dense model (used to build ``baselines`` when none are given).
        baselines: What :func:`dense_baselines` built for ``dense_model`` on ``batch`` (a job builds them once).

    Returns:
        ``block`` (calls per configuration per round, the last timed: :data:`~hf_sparse.benchmarking.MODEL_BLOCK`),
        ``batch``, ``seq``, ``threads``, ``rounds``, ``ours_s`` (seconds, median); the comparison with the best dense
        configuration (:func:`hf_sparse.benchmarking.add_dense_comparison`): ``dense_baselines_s`` (name -> median
        seconds), ``best_dense`` (the fastest one's name), ``best_dense_s``, ``ratio_vs_best_dense`` and
        ``ratio_vs_fp32`` (dense median / ours, > 1: ours faster), ``skipped_baselines`` (name -> why),
        ``baseline_errors`` (relative output error vs fp32), ``baseline_notes``, ``baselines_s``; ``ratios``
        (baseline -> median, min and max of the per-round ratios); ``machine`` (in words). ``dense_s``,
        ``speedup``, ``speedup_min`` and ``speedup_max`` are against **fp32** only (the fields of earlier reports,
        kept with that meaning).
    """
    from ..benchmarking import MODEL_BLOCK, interleave

    batch = dict(batch)
    if baselines is None:
        baselines = dense_baselines(dense_model, batch)
    model.eval()
    calls = {"ours": lambda i: model(**batch), **baselines.timed(batch)}
    with torch.inference_mode():
        times = interleave(calls, rounds, block=MODEL_BLOCK)
    first = next(iter(batch.values()))
    return latency_record(
        times,
        baselines,
        block=MODEL_BLOCK,
        batch=int(first.shape[0]),
        seq=int(first.shape[1]) if first.dim() > 1 else 1,
        threads=torch.get_num_threads(),
    )
