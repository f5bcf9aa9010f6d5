"""The one fine-tune / resume / save path of the jobs, and their shared helpers: ``transformers.Trainer`` set up
from a recipe's train section, Trainer checkpoints for ``--resume``, multi-process awareness, the latency harness."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..resilience import CheckpointMarkerCallback, last_complete_checkpoint, remove_incomplete_checkpoints

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


def latency(model, dense_model, batch, rounds: int) -> dict:
    """Median forward time of ``model`` and of the dense baseline on ``batch`` (a dict of input tensors),
    interleaved call by call in this process."""
    from ..benchmarking import interleave, summarize

    calls = {"ours": lambda i: model(**batch), "torch_dense": lambda i: dense_model(**batch)}
    model.eval(), dense_model.eval()
    with torch.inference_mode():
        times = interleave(calls, rounds)
    ours_s, baselines, speedup = summarize(times)
    first = next(iter(batch.values()))
    return {
        "batch": int(first.shape[0]),
        "seq": int(first.shape[1]) if first.dim() > 1 else 1,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "ours_s": ours_s,
        "dense_s": baselines["torch_dense"],
        "speedup": speedup["torch_dense"]["median"],
        "speedup_min": speedup["torch_dense"]["min"],
        "speedup_max": speedup["torch_dense"]["max"],
    }
