"""Counting the bytes a process hands to collectives, measured the same way for every communication hook.

:class:`CommCounter` temporarily wraps the Python collectives of ``torch.distributed`` (``all_reduce``,
``all_gather``, ``all_gather_into_tensor`` / ``all_gather_single``, ``reduce_scatter_tensor`` /
``reduce_scatter_single``, ``broadcast``) and adds up the size of the tensor each call sends from this rank. DDP
communication hooks written in Python reach the collectives through these module attributes: torch's
``allreduce_hook`` and PowerSGD (``powerSGD_hook`` calls ``dist.all_reduce`` for its P and Q matrices and for the
uncompressed tensors; ``default_hooks._allreduce_fut`` calls ``dist.all_reduce``), and our top-k hook
(``dist.all_gather``). So all three are measured by the same rule, not computed from formulas. DDP's built-in C++
all-reduce (no hook registered) does not pass through Python and is not counted: register
:func:`~hf_sparse.distributed.topk.allreduce_mean_hook` to measure plain all-reduce.

The rule: a collective's bytes are those of the tensor this rank contributes (``numel * element_size`` of the
input of an all-reduce, an all-gather or a reduce-scatter; of a broadcast, on its source rank only). Collectives
nested inside a counted one (a wrapper calling another) are counted once.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections import Counter

import torch
import torch.distributed as dist

__all__ = ["CommCounter", "COUNTED_COLLECTIVES"]

#: Collective name -> the argument that holds the tensor this rank sends.
COUNTED_COLLECTIVES = {
    "all_reduce": "tensor",
    "all_gather": "tensor",
    "all_gather_into_tensor": "input_tensor",
    "all_gather_single": "input_tensor",
    "reduce_scatter_tensor": "input",
    "reduce_scatter_single": "input",
    "broadcast": "tensor",
}

_lock = threading.Lock()
_active: list[CommCounter] = []
_originals: dict[str, object] = {}
_depth = threading.local()


def _sent_bytes(name: str, signature: inspect.Signature, args, kwargs) -> int:
    bound = signature.bind(*args, **kwargs)
    tensor = bound.arguments.get(COUNTED_COLLECTIVES[name])
    if not isinstance(tensor, torch.Tensor):
        return 0
    if name == "broadcast":
        group = bound.arguments.get("group")
        group_src = bound.arguments.get("group_src")
        if group_src is not None:
            if dist.get_rank(group) != group_src:
                return 0
        elif bound.arguments.get("src") != dist.get_rank():
            return 0
    return tensor.numel() * tensor.element_size()


def _wrap(name: str, original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def counted(*args, **kwargs):
        depth = getattr(_depth, "value", 0)
        if depth == 0:
            n = _sent_bytes(name, signature, args, kwargs)
            with _lock:
                for counter in _active:
                    counter._add(name, n)
        _depth.value = depth + 1
        try:
            return original(*args, **kwargs)
        finally:
            _depth.value = depth

    return counted


def _install() -> None:
    for name in COUNTED_COLLECTIVES:
        original = getattr(dist, name, None)
        if original is not None:
            _originals[name] = original
            setattr(dist, name, _wrap(name, original))


def _uninstall() -> None:
    for name, original in _originals.items():
        setattr(dist, name, original)
    _originals.clear()


class CommCounter:
    """Bytes and calls this process sends through ``torch.distributed`` collectives while it is active.

    Use as a context manager around the code to measure (``with CommCounter() as c: loss.backward()``), or
    :meth:`start` / :meth:`stop` around a window. Several counters may be active at once (each counts every call);
    the collectives are wrapped while at least one is active and restored afterwards. Calls from other threads
    (callbacks of asynchronous collectives run on the backend's threads) are counted too.

    Attributes:
        bytes: Total bytes sent by this rank.
        calls: Number of collective calls.
        by_op: Bytes per collective name.
    """

    def __init__(self):
        self.bytes = 0
        self.calls = 0
        self.by_op: Counter[str] = Counter()
        self._running = False

    def _add(self, name: str, n: int) -> None:
        self.bytes += n
        self.calls += 1
        self.by_op[name] += n

    def reset(self) -> None:
        """Forget what was counted so far."""
        with _lock:
            self.bytes, self.calls = 0, 0
            self.by_op = Counter()

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> CommCounter:
        """Start counting (no-op if already counting)."""
        with _lock:
            if self._running:
                return self
            if not _active:
                _install()
            _active.append(self)
            self._running = True
        return self

    def stop(self) -> int:
        """Stop counting; returns the bytes counted so far."""
        with _lock:
            if self._running:
                _active.remove(self)
                self._running = False
                if not _active:
                    _uninstall()
            return self.bytes

    def __enter__(self) -> CommCounter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
