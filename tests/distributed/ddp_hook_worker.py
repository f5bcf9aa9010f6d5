"""One rank of the 2-process checks of the communication hooks (launched by tests/distributed/test_comm_hooks.py
with ``python -m torch.distributed.run``; gloo on CPU).

A small MLP wrapped in DistributedDataParallel, each rank with its own batch. Writes ``<out>/rank<r>.json`` with
what the test asserts: top-k at ratio 1 against all-reduce, the error-feedback books of top-k at ratio 0.1 over
several steps, replica hashes and losses of a top-k training run, and bytes per step of all-reduce, top-k and
PowerSGD measured by CommCounter.
"""

import gc
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

torch.set_num_threads(1)

from hf_sparse.distributed import CommCounter, CommHookConfig, register_hook  # noqa: E402


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))


def local_batch(rank: int, step: int = 0):
    """A learnable task (the label is the sign of the first feature), different examples on every rank."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(32, 32, generator=g)
    return x, (x[:, 0] > 0).long()


def loss_of(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def params_hash(model) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def wrap(config: dict, bucket_cap_mb: float):
    ddp = DDP(mlp(), bucket_cap_mb=bucket_cap_mb)
    return ddp, register_hook(ddp, CommHookConfig.from_dict(config))


def ratio_one_matches_allreduce(rank: int) -> dict:
    finals, grads = [], []
    for config in ({"hook": "allreduce"}, {"hook": "topk", "ratio": 1.0}):
        ddp, _ = wrap(config, 0.02)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for step in range(3):
            loss_of(ddp, *local_batch(rank, step)).backward()
            if step == 0:
                grads.append([p.grad.clone() for p in ddp.parameters()])
            opt.step()
            opt.zero_grad()
        finals.append([p.detach().clone() for p in ddp.parameters()])
    return {
        "grad_max_diff": max(float((a - b).abs().max()) for a, b in zip(*grads)),
        "param_max_diff": max(float((a - b).abs().max()) for a, b in zip(*finals)),
    }


def error_feedback_books(rank: int, steps: int = 4) -> dict:
    """Over ``steps`` steps: sum of applied (averaged) gradients == mean over ranks of (sum of local gradients -
    final residual), i.e. everything a rank did not send is in its residual; and the entries sent per step."""
    ddp, state = wrap({"hook": "topk", "ratio": 0.1}, 0.02)
    twin = mlp()
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    params = list(ddp.parameters())
    applied = [torch.zeros_like(p) for p in params]
    local = [torch.zeros_like(p) for p in params]
    layouts = []
    for step in range(steps):
        batch = local_batch(rank, step)
        twin.load_state_dict(ddp.module.state_dict())
        twin.zero_grad()
        loss_of(twin, *batch).backward()  # this rank's own gradient, before any exchange
        for acc, p in zip(local, twin.parameters()):
            acc += p.grad
        loss_of(ddp, *batch).backward()
        for acc, p in zip(applied, params):
            acc += p.grad
        layouts.append(sorted(state.sent_entries.items()))
        opt.step()
        opt.zero_grad()
    residual = [state.residual_of(p).view_as(p) for p in params]
    kept = [g - r for g, r in zip(local, residual)]
    for t in kept:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return {
        "books_max_diff": max(float((a - k).abs().max()) for a, k in zip(applied, kept)),
        "applied_norm": float(sum(a.norm() ** 2 for a in applied) ** 0.5),
        "residual_norm": float(sum(r.norm() ** 2 for r in residual) ** 0.5),
        "residual_nonzero_fraction": float(sum((r != 0).sum() for r in residual) / sum(r.numel() for r in residual)),
        "sent_entries": layouts,
        "bucket_sizes": {str(i): int(r.numel()) for i, r in state.residuals.items()},
        "numel": sum(p.numel() for p in params),
    }


def topk_training(rank: int, steps: int = 40) -> dict:
    ddp, _ = wrap({"hook": "topk", "ratio": 0.1}, 0.02)
    opt = torch.optim.Adam(ddp.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        loss = loss_of(ddp, *local_batch(rank, step))
        loss.backward()
        opt.step()
        opt.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / dist.get_world_size())
    return {"losses": losses, "hash": params_hash(ddp.module)}


def bytes_per_step(rank: int, config: dict, bucket_cap_mb: float, steps: int = 5) -> dict:
    ddp, state = wrap(config, bucket_cap_mb)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    counted = []
    for step in range(steps):
        with CommCounter() as counter:
            loss_of(ddp, *local_batch(rank, step)).backward()
        counted.append(counter.bytes)
        opt.step()
        opt.zero_grad()
    out = {"bytes": counted, "numel": sum(p.numel() for p in ddp.parameters()), "hash": params_hash(ddp.module)}
    if config["hook"] == "topk":
        out["sent_entries"] = sorted(state.sent_entries.items())
    if config["hook"] == "powersgd":
        out["powersgd_numel_after_total"] = int(state.total_numel_after_compression)
    return out


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    record = {
        "rank": rank,
        "ratio_one": ratio_one_matches_allreduce(rank),
        "books": error_feedback_books(rank),
        "training": topk_training(rank),
        "allreduce": bytes_per_step(rank, {"hook": "allreduce"}, 0.02),
        "topk": bytes_per_step(rank, {"hook": "topk", "ratio": 0.1}, 0.02),
        # One bucket: torch's PowerSGD hook deadlocks gloo with several (see hf_sparse.distributed.callback).
        "powersgd": bytes_per_step(rank, {"hook": "powersgd", "rank": 2, "warmup_steps": 2}, 1.0),
    }
    Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(record, indent=1))
    # Release the DDP models (their reducers hold the group) and let both ranks finish before tearing gloo down:
    # destroying the group while the other rank or a lingering reducer still uses it aborts the process.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
