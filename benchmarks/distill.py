"""One distillation epoch with the teacher's outputs read from hf_sparse's disk cache, against the same epoch with
the teacher run live (``hf-sparse bench distill``).

Both sides are the stock ``transformers.Trainer`` with :class:`~hf_sparse.DistillationCallback`, the recipes'
distillation settings (logits KD at temperature 2, alpha 0.7, hidden-state MSE on the mapped layers), real Rotten
Tomatoes training reviews (dynamic padding, batch 32) and all-MiniLM-L6-v2 (classifier head added) as the teacher.
Students: the 3-layer student cut from the teacher (layers 1, 3, 5) and a same-depth 6-layer student (what a pruned
student costs). Each timed epoch starts from the same student weights. The cache is filled once before timing
(its one-time cost, a teacher pass over the data, is reported as ``fill_s``). Correctness first: the first batch's
distillation loss from the cache must equal the live one (fp16 hidden states in the cache: relative 1e-3).
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable

import torch

from hf_sparse.benchmarking import interleave, summarize

SUITE = "distill"
CONFIG = dict(alpha=0.7, temperature=2.0, hidden_weight=1.0)


def _data(n: int):
    from transformers import AutoTokenizer

    from hf_sparse.data import load_rotten_tomatoes, minilm_l6_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_l6_path())
    train = load_rotten_tomatoes(seed=42)["train"].select(range(n))
    tok = train.map(lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True)
    tok = tok.remove_columns([c for c in tok.column_names if c not in ("input_ids", "attention_mask", "label")])
    return tokenizer, tok


def _epoch(student0, teacher, dataset, tokenizer, config, workdir, threads: int):
    """A timed call: one epoch of distillation of a fresh copy of ``student0``."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from hf_sparse import DistillationCallback

    def run(_round: int):
        torch.set_num_threads(threads)
        student = copy.deepcopy(student0)
        args = TrainingArguments(
            output_dir=workdir,
            num_train_epochs=1,
            per_device_train_batch_size=32,
            learning_rate=1e-4,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            logging_strategy="no",
            seed=0,
            data_seed=0,
            use_cpu=True,
            dataloader_pin_memory=False,
        )
        cb = DistillationCallback(teacher, config)
        trainer = Trainer(
            model=student,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[cb],
        )
        trainer.train()
        return cb.distiller

    return run


def _check_same_loss(student0, teacher, dataset, tokenizer, live_cfg, cached_cfg) -> float:
    """Relative difference of the first batch's distillation loss, cached vs live (the student in train mode with
    dropout off, so both forwards are identical)."""
    from transformers import DataCollatorWithPadding

    from hf_sparse.distillation import Distiller

    batch = DataCollatorWithPadding(tokenizer)([dataset[i] for i in range(32)])
    losses = []
    for cfg in (live_cfg, cached_cfg):
        student = copy.deepcopy(student0).train()
        for m in student.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        d = Distiller(student, teacher, cfg).attach()
        with torch.no_grad():
            losses.append(float(student(**batch).loss))
        d.detach()
    return abs(losses[1] - losses[0]) / abs(losses[0])


def run_case(name, student0, teacher, dataset, tokenizer, *, threads: int, rounds: int) -> dict:
    from hf_sparse import DistillationConfig
    from hf_sparse.distillation import Distiller

    with tempfile.TemporaryDirectory() as tmp:
        live_cfg = DistillationConfig(**CONFIG)
        cached_cfg = DistillationConfig(**CONFIG, cache_dir=f"{tmp}/cache")
        from transformers import DataCollatorWithPadding

        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        filled = Distiller(copy.deepcopy(student0), teacher, cached_cfg).fill_cache(
            dataset, DataCollatorWithPadding(tokenizer), batch_size=64, progress=False
        )
        fill_s = time.perf_counter() - t0
        rel = _check_same_loss(student0, teacher, dataset, tokenizer, live_cfg, cached_cfg)
        if rel > 1e-3:
            raise AssertionError(f"cached and live distillation losses differ by {rel:.2e} (relative)")
        calls: dict[str, Callable[[int], object]] = {
            "ours": _epoch(student0, teacher, dataset, tokenizer, cached_cfg, f"{tmp}/a", threads),
            "teacher_live": _epoch(student0, teacher, dataset, tokenizer, live_cfg, f"{tmp}/b", threads),
        }
        times = interleave(calls, rounds, warmup=0)
    ours_s, baselines, speedup = summarize(times)
    layers = student0.config.num_hidden_layers
    return {
        "name": f"{name}: one epoch of {len(dataset)} reviews, batch 32, t={threads}",
        "params": {
            "teacher": "sentence-transformers/all-MiniLM-L6-v2 (6 layers)",
            "student_layers": layers,
            "examples": len(dataset),
            "batch": 32,
            "distillation": CONFIG,
            "threads": threads,
            "cache_examples": filled["examples"],
            "fill_s": fill_s,
            "first_batch_loss_rel_diff": rel,
        },
        "ours_s": ours_s,
        "baselines_s": baselines,
        "speedup": speedup,
        "rounds": times,
    }


def run(quick: bool = False, threads: int = 1, rounds: int | None = None, progress: Callable | None = None) -> dict:
    """Run the suite and return the JSON-ready record."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from hf_sparse import student_from_teacher, teacher_snapshot
    from hf_sparse.data import minilm_l6_path
    from hf_sparse.machine import machine_info

    hf_logging.set_verbosity_error()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(minilm_l6_path(), num_labels=2)
    tokenizer, dataset = _data(256 if quick else 1024)
    students = [("3-layer student", student_from_teacher(teacher, keep_every=2))]
    if not quick:
        same = teacher_snapshot(teacher)
        for p in same.parameters():
            p.requires_grad_(True)
        students.append(("6-layer student", same))
    rounds = rounds or (2 if quick else 3)
    cases = []
    for i, (name, student0) in enumerate(students):
        case = run_case(name, student0, teacher, dataset, tokenizer, threads=threads, rounds=rounds)
        cases.append(case)
        if progress:
            progress(i + 1, len(students), case)
    return {"suite": SUITE, "machine": machine_info(), "baselines_missing": [], "cases": cases}
