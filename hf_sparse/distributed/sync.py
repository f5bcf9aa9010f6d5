"""Keeping what compression callbacks compute identical on every process of a data-parallel run.

DistributedDataParallel keeps the replicas' parameters identical only because every rank applies the same averaged
gradient. State that a callback computes from the *local* batch (gradient scores, RigL's dense gradient, activation
ranges) differs between ranks, and a mask or a range chosen from it would make the replicas drift apart. These
helpers average (or min/max) such state over the ranks, or copy rank 0's, right before it is used. Outside a
multi-process run every helper returns without doing anything.

Sums are divided by the world size after the reduction (gloo has no averaging reduction), and a collective's
result is bitwise the same on every rank, so anything computed from it afterwards is too.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

from ..errors import quote

__all__ = ["world_size", "process_rank", "is_distributed", "all_reduce_", "broadcast_", "sync_observers_"]


def world_size() -> int:
    """The number of processes of the default process group (1 outside a multi-process run)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def process_rank() -> int:
    """This process's rank in the default process group (0 outside a multi-process run)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def is_distributed() -> bool:
    """True inside a multi-process run (a default process group of more than one process)."""
    return world_size() > 1


@torch.no_grad()
def all_reduce_(tensors: Iterable[torch.Tensor], op: str = "mean") -> None:
    """Reduce each tensor over the ranks, in place: ``"mean"``, ``"sum"``, ``"min"`` or ``"max"``.

    Every rank must call it with tensors of the same shapes and dtypes, in the same order.
    """
    n = world_size()
    if n == 1:
        return
    reduce_op = {
        "mean": dist.ReduceOp.SUM,
        "sum": dist.ReduceOp.SUM,
        "min": dist.ReduceOp.MIN,
        "max": dist.ReduceOp.MAX,
    }
    if op not in reduce_op:
        raise ValueError(f"all_reduce_: op must be one of {sorted(reduce_op)}, got {quote(op)}.")
    for t in tensors:
        if t.numel() == 0:
            continue
        dist.all_reduce(t, op=reduce_op[op])
        if op == "mean":
            t.div_(n)


@torch.no_grad()
def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite each tensor with rank ``src``'s, in place (bool tensors travel as uint8: gloo has no bool)."""
    if world_size() == 1:
        return
    for t in tensors:
        if t.numel() == 0:
            continue
        if t.dtype == torch.bool:
            carrier = t.to(torch.uint8)
            dist.broadcast(carrier, src=src)
            t.copy_(carrier.bool())
        else:
            dist.broadcast(t, src=src)


@torch.no_grad()
def sync_observers_(model: torch.nn.Module) -> int:
    """Make every fake quantiser's observed range the same on all ranks; returns how many ranges were merged.

    Each rank's observers saw only its own batches. ``minmax`` ranges take the minimum of the lows and the maximum
    of the highs (the range of all ranks' data); moving-average and percentile ranges take the mean over ranks (an
    average of ranges that started from the same synchronised value, i.e. the moving average of the ranks' mean
    range). Frozen activation ranges (``observing=False``) and ranges not yet initialised are left alone; both
    are the same on every rank, so every rank selects the same observers.
    """
    if world_size() == 1:
        return 0
    from ..nn.qat import FakeQuantizer

    groups: dict[str, list[torch.Tensor]] = {"min": [], "max": [], "mean": []}
    merged = 0
    for module in model.modules():
        if not isinstance(module, FakeQuantizer) or module.dynamic or module.scale is not None:
            continue
        observer = module.observer
        if not observer.initialized or (module.role == "activation" and not module.observing):
            continue
        if observer.scheme.observer == "minmax":
            groups["min"].append(observer.low)
            groups["max"].append(observer.high)
        else:
            groups["mean"] += [observer.low, observer.high]
        merged += 1
    for op, tensors in groups.items():
        if tensors:
            # One collective per kind: the ranges are a few numbers each, the latency is what costs.
            flat = torch.cat([t.reshape(-1).float() for t in tensors])
            all_reduce_([flat], op)
            offset = 0
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
    return merged
