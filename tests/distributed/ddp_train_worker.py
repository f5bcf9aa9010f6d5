"""One rank of a 2-process CPU fine-tune with the stock Trainer and hf_sparse's compression callbacks.

Launched by tests/distributed/test_ddp_training.py through ``accelerate launch``. Two fits of a tiny BERT
classifier, both under DDP (gloo):

- ``compress``: gradual movement pruning + QAT with static activation ranges + distillation from a tiny teacher
  with an on-disk teacher cache shared by the ranks, DDP's own all-reduce, a checkpoint at the last step;
- ``topk``: gradual taylor pruning with the top-k communication hook registered through ``register_comm_hook``;
- ``lowrank``: a nuclear-norm proximal step every step and an energy-chosen rank schedule, factorised at the end.

Each rank writes ``<out>/rank<r>.json``: hashes of masks, quantisation ranges and final weights, the measured
sparsity, the files it wrote in its own output folder (each rank gets one, so the test can tell who wrote what),
the teacher-cache shards, and the hook's traffic and losses.
"""

import gc
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from transformers import Trainer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_sparse import (  # noqa: E402
    DistillationCallback,
    LowRankCallback,
    LowRankConfig,
    PruningCallback,
    PruningConfig,
    QATCallback,
)
from hf_sparse.distillation import TeacherCache  # noqa: E402
from hf_sparse.distributed import register_comm_hook  # noqa: E402
from hf_sparse.quantization import QuantizationConfig, QuantScheme  # noqa: E402
from hf_sparse.quantization.apply import quantizers  # noqa: E402
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset  # noqa: E402


def digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def fit_compress(base: Path, rank: int) -> dict:
    student = tiny_bert_classifier(seed=0).train()
    teacher = tiny_bert_classifier(seed=1)
    out = base / f"compress-rank{rank}"
    args = cpu_training_args(
        out,
        per_device_train_batch_size=8,
        learning_rate=2e-3,
        max_steps=12,
        logging_steps=4,
        save_strategy="steps",
        save_steps=12,
    )
    distill = DistillationCallback(
        teacher, alpha=0.5, temperature=2.0, hidden_weight=1.0, cache_dir=str(base / "cache")
    )
    qat = QATCallback(
        QuantizationConfig(activation="static", activation_scheme=QuantScheme(granularity="tensor", symmetric=False))
    )
    prune = PruningCallback(
        PruningConfig(sparsity=0.5, criterion="movement", start_step=0, end_step=8, update_every=2)
    )
    trainer = Trainer(
        model=student,
        args=args,
        train_dataset=tiny_classification_dataset(n=128, seed=0),
        callbacks=[distill, qat, prune],
    )
    trainer.train()
    ranges = {}
    for name, q in quantizers(student, "activation").items():
        ranges[f"{name}.low"], ranges[f"{name}.high"] = q.observer.low, q.observer.high
    torch.distributed.barrier()  # every rank has flushed its cache shards
    shards = sorted(p.name for p in (base / "cache").rglob("shard-*"))
    return {
        "masks": digest(prune.pruner.masks),
        "mask_names": sorted(prune.pruner.masks),
        "ranges": digest(ranges),
        "range_count": len(ranges),
        "weights": digest(student.state_dict()),
        "sparsity": prune.pruner.sparsity(),
        "target_sparsity": prune.pruner.target_sparsity,
        "files": files_under(out),
        "cache_shards": shards,
        "cache_entries": len(TeacherCache(base / "cache", teacher, distill.distiller.teacher_hidden)),
        "world_size": trainer.args.world_size,
        "wrapped": type(trainer.model_wrapped).__name__,
    }


def fit_topk(base: Path, rank: int) -> dict:
    model = tiny_bert_classifier(seed=2).train()
    args = cpu_training_args(
        base / f"topk-rank{rank}", per_device_train_batch_size=8, learning_rate=2e-3, max_steps=10, logging_steps=2
    )
    prune = PruningCallback(PruningConfig(sparsity=0.4, criterion="taylor", start_step=0, end_step=6, update_every=2))
    trainer = Trainer(
        model=model, args=args, train_dataset=tiny_classification_dataset(n=160, seed=1), callbacks=[prune]
    )
    hook = register_comm_hook(trainer, "topk", ratio=0.25)
    trainer.train()
    logged = [e["comm_bytes_per_step"] for e in trainer.state.log_history if "comm_bytes_per_step" in e]
    return {
        "masks": digest(prune.pruner.masks),
        "weights": digest(model.state_dict()),
        "sparsity": prune.pruner.sparsity(),
        "bytes_per_step": hook.bytes_per_step,
        "logged_bytes": logged,
        "residual_buckets": sorted(hook.hook_state.residuals),
        "grad_entries": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def fit_lowrank(base: Path, rank: int) -> dict:
    model = tiny_bert_classifier(seed=3).train()
    args = cpu_training_args(
        base / f"lowrank-rank{rank}", per_device_train_batch_size=8, learning_rate=2e-3, max_steps=6
    )
    lowrank = LowRankCallback(
        LowRankConfig(energy=0.8, round_to=1, min_rank=1),
        start_step=0,
        end_step=4,
        update_every=2,
        nuclear_weight=0.5,
        prox_every=1,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=tiny_classification_dataset(n=96, seed=2), callbacks=[lowrank]
    )
    trainer.train()
    return {
        "targets": lowrank.targets,
        "full": lowrank.full,
        "factorised": sum("format" in e for e in lowrank.report.values()),
        "weights": digest(model.state_dict()),
    }


def main() -> None:
    hf_logging.set_verbosity_error()
    base = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    record = {
        "rank": rank,
        "compress": fit_compress(base, rank),
        "topk": fit_topk(base, rank),
        "lowrank": fit_lowrank(base, rank),
    }
    (base / f"rank{rank}.json").write_text(json.dumps(record, indent=1))
    # Both ranks finish, and the DDP wrappers (holding the group) are gone, before gloo is torn down.
    gc.collect()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
