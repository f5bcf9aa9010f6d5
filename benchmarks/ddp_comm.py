"""Gradient communication of a 2-process data-parallel fine-tune: plain all-reduce, top-k with error feedback and
PowerSGD (``hf-sparse bench ddp-comm``).

Every case is the same job: all-MiniLM-L6-v2 (classifier head added, seeded) fine-tuned densely on a seeded,
stratified subset of the real Rotten Tomatoes training split by the stock ``transformers.Trainer`` under DDP on 2
CPU processes (gloo, ``accelerate launch``), the same steps, batches and seed, then evaluated on the test split.
Only the gradient exchange differs:

- ``ddp_default``: DDP without a hook (its C++ all-reduce, default 25 MB buckets) — the timing baseline users have;
  its traffic is not visible to Python and is reported as ``null`` (it is the same all-reduce as the next case).
- ``allreduce``: the same averaging all-reduce as a Python hook, so its bytes are counted the way the others' are.
- ``topk``: top-k sparsified gradients with error feedback (``hf_sparse.distributed.topk_hook``) at ratio 0.01 and
  0.001: (values, indices) all-gathered, 8 bytes per sent entry.
- ``powersgd``: torch's PowerSGD hook, rank 4, error feedback, warm start, 2 warm-up steps of all-reduce.

Reported per case: bytes sent per optimizer step by each rank (:class:`~hf_sparse.distributed.CommCounter`, the
steps after the hook's warm-up), the compression ratio against ``allreduce``, seconds per step (mean over the
steps after the first few; ``speedup`` = baseline s/step / this case's s/step, >1 is faster, against
``ddp_default`` and against ``allreduce`` with the same buckets), and test accuracy. The hooks run with all
gradients in one bucket (``ddp_bucket_cap_mb``): torch's PowerSGD hook deadlocks gloo with several buckets in
flight (see ``hf_sparse.distributed.callback``), and every hook gets the same buckets.
On one machine two processes talk through loopback TCP, so communication is cheap and the selection work of the
compressing hooks shows fully in the step time: bytes are the portable result, seconds are this machine's.

All cases run in one ``accelerate launch`` of this file (``--worker``), one after the other in the same two
processes, each from the same seeded start; with ``rounds`` > 1 they run in turn (A B C ... A B C ...) and the
seconds per step are medians over rounds (accuracy and bytes are those of the first round).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SUITE = "ddp-comm"
MODEL = "minilm-l6"
SEED = 42
BATCH_PER_RANK = 16
LEARNING_RATE = 1e-4
SETTINGS = {
    # optimizer steps, training examples (steps x 32: one pass), test examples (None: the whole test split, 1,281)
    "quick": dict(steps=16, train=512, test=256),
    "full": dict(steps=120, train=3840, test=None),
}
#: One bucket for every hook (MiniLM-L6's gradients: 86.6 MiB); ``ddp_default`` keeps DDP's own 25 MB buckets.
BUCKET_CAP_MB = 100
CASES = {
    "ddp_default": dict(hook=None),
    "allreduce": dict(hook="allreduce"),
    "topk-0.01": dict(hook="topk", ratio=0.01),
    "topk-0.001": dict(hook="topk", ratio=0.001),
    "powersgd-r4": dict(hook="powersgd", rank=4, warmup_steps=2),
}
QUICK_CASES = ("ddp_default", "allreduce", "topk-0.01", "powersgd-r4")
#: Steps left out of the seconds-per-step median (the first steps pay allocation and DDP's bucket rebuild).
SKIP_STEPS = 4


# -- the ranks (this file run by accelerate launch) -------------------------------------------------------------------
def _worker(spec: dict) -> None:
    """Every case and round in turn, in the same 2 processes; rank 0 writes the results."""
    import gc

    import torch

    torch.set_num_threads(spec["threads"])
    import torch.distributed as dist
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from hf_sparse.data import load_rotten_tomatoes, resolve_model, stratified_subset

    hf_logging.set_verbosity_error()
    model_path = resolve_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    splits = load_rotten_tomatoes(seed=SEED)
    train = stratified_subset(splits["train"], spec["train"], seed=SEED)
    test = stratified_subset(splits["test"], spec["test"], seed=SEED)

    def tokenize(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=128)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return enc

    train_tok = train.map(tokenize, batched=True, remove_columns=["text"])
    test_tok = test.map(tokenize, batched=True, remove_columns=["text"])
    results: dict[str, list[dict]] = {name: [] for name in spec["cases"]}
    for _ in range(spec["rounds"]):
        for name in spec["cases"]:
            mine = _fit(name, spec, model_path, tokenizer, train_tok, test_tok)
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, mine["rank"])
            results[name].append({**mine["shared"], "ranks": gathered})
            gc.collect()
    if dist.get_rank() == 0:
        Path(spec["result"]).write_text(json.dumps(results))


def _fit(name: str, spec: dict, model_path: str, tokenizer, train_tok, test_tok) -> dict:
    """One case: a seeded fine-tune from the same start, then the test accuracy."""
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from hf_sparse.distributed import register_comm_hook

    case = CASES[name]
    hook = case["hook"]
    set_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    args = TrainingArguments(
        output_dir=str(Path(spec["workdir"]) / name),
        max_steps=spec["steps"],
        per_device_train_batch_size=BATCH_PER_RANK,
        per_device_eval_batch_size=64,
        learning_rate=LEARNING_RATE,
        warmup_steps=0.1,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        logging_steps=10,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=SEED,
        data_seed=SEED,
        train_sampling_strategy="group_by_length",
        use_cpu=True,
        dataloader_pin_memory=False,
        ddp_find_unused_parameters=False,
        ddp_broadcast_buffers=False,  # BERT's buffers (position ids) never change: nothing to send
        ddp_bucket_cap_mb=None if hook is None else spec["bucket_cap_mb"],
    )

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.durations: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.durations.append(time.perf_counter() - self._start)

    timer = StepTimer()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_tok,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[timer],
    )
    comm = None
    if hook is not None:
        comm = register_comm_hook(trainer, hook, **{k: v for k, v in case.items() if k != "hook"})
    trainer.train()
    pred = trainer.predict(test_tok)
    accuracy = float((np.asarray(pred.predictions).argmax(-1) == np.asarray(pred.label_ids)).mean())
    return {
        "rank": {"bytes_per_step": comm.bytes_per_step if comm is not None else None, "durations": timer.durations},
        "shared": {
            "accuracy": accuracy,
            "test_examples": int(len(pred.label_ids)),
            "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
            "grad_entries": sum(p.numel() for p in model.parameters() if p.requires_grad),
        },
    }


# -- the suite (runs in the caller's process) -------------------------------------------------------------------------
def _launch(names: tuple[str, ...], spec: dict, threads: int, rounds: int) -> tuple[dict, float]:
    from hf_sparse.distributed.launch import cpu_launch_command

    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, "cases": list(names), "threads": threads, "rounds": rounds, "workdir": tmp}
        spec["result"] = str(Path(tmp) / "result.json")
        cmd = cpu_launch_command(Path(__file__).resolve(), "--worker", json.dumps(spec), threads=threads)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"ddp-comm workers failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
        return json.loads(Path(spec["result"]).read_text()), wall


def _steady_bytes(per_step: list[int], warmup: int) -> float:
    """Median bytes per step after the hook's warm-up steps."""
    return float(statistics.median(per_step[warmup:] or per_step))


def _s_per_step(result: dict) -> float:
    """Mean seconds per step after the first few (they pay allocations and DDP's bucket rebuild). A mean, not a
    median: grouping by length makes step times cycle with the batches' lengths, the same batches in every case.
    The slower rank sets the pace of a synchronous step."""
    steps = [max(pair) for pair in zip(*(r["durations"][SKIP_STEPS:] for r in result["ranks"]))]
    return statistics.fmean(steps)


def run(quick: bool = False, threads: int = 1, rounds: int | None = None, progress: Callable | None = None) -> dict:
    """Run the suite and return the JSON-ready record (``threads``: torch threads per process)."""
    import torch

    from hf_sparse.machine import machine_info

    torch.set_num_threads(threads)  # as in each worker, so machine_info reports the threads the ranks used
    setting = SETTINGS["quick" if quick else "full"]
    names = QUICK_CASES if quick else tuple(CASES)
    rounds = rounds or 1
    spec = dict(setting, bucket_cap_mb=BUCKET_CAP_MB)
    results, wall = _launch(names, spec, threads, rounds)
    per_round = {n: [_s_per_step(r) for r in results[n]] for n in names}
    allreduce_bytes = _steady_bytes(results["allreduce"][0]["ranks"][0]["bytes_per_step"], 0)
    cases = []
    for i, name in enumerate(names):
        first = results[name][0]
        case_cfg = CASES[name]
        warmup = case_cfg.get("warmup_steps", 0)
        per_rank = None
        if case_cfg["hook"] is not None:
            per_rank = [_steady_bytes(r["bytes_per_step"], warmup) for r in first["ranks"]]
        speedup = {}
        for base in ("ddp_default", "allreduce"):
            ratios = [b / o for b, o in zip(per_round[base], per_round[name])]
            speedup[base] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        case = {
            "name": f"{name}: MiniLM-L6 on Rotten Tomatoes, 2 processes x batch {BATCH_PER_RANK}, "
            f"{setting['steps']} steps, t={threads}",
            "params": {
                "hook": case_cfg["hook"] or "none (DDP's C++ all-reduce, default buckets)",
                "options": {k: v for k, v in case_cfg.items() if k != "hook"},
                "processes": 2,
                "backend": "gloo",
                "steps": setting["steps"],
                "batch_per_process": BATCH_PER_RANK,
                "learning_rate": LEARNING_RATE,
                "train_examples": setting["train"],
                "test_examples": first["test_examples"],
                "bucket_cap_mb": None if case_cfg["hook"] is None else BUCKET_CAP_MB,
                "threads_per_process": threads,
                "grad_entries": first["grad_entries"],
            },
            "bytes_per_step_per_rank": per_rank,
            "bytes_per_entry": None if per_rank is None else per_rank[0] / first["grad_entries"],
            "compression_vs_allreduce": None if per_rank is None else allreduce_bytes / per_rank[0],
            "test_accuracy": first["accuracy"],
            "logged_losses": first["losses"],
            "ours_s": statistics.median(per_round[name]),
            "baseline": "ddp_default",
            "baselines_s": {base: statistics.median(per_round[base]) for base in ("ddp_default", "allreduce")},
            "speedup": speedup,
            "rounds_s_per_step": per_round[name],
        }
        cases.append(case)
        if progress:
            progress(i + 1, len(names), case)
    return {
        "suite": SUITE,
        "machine": machine_info(),
        "baselines_missing": [],
        "wall_s": wall,
        "cases": cases,
    }


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    _worker(json.loads(sys.argv[2]))
