"""The timing protocol every ``hf-sparse bench`` suite shares (see the README's benchmarking section).

Correctness is checked by each suite before timing. Then: warm up; interleave ours and every baseline call by call
for several rounds; report medians and the median, min and max of the per-round ratios (baseline / ours, > 1 means
ours is faster). Limits (sgemm GFLOP/s and streaming-read GB/s) are measured in the same process.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["measure_limits", "best_time", "interleave", "summarize", "dynamic_int8", "cold_bytes"]


def dynamic_int8(model):
    """``torch.ao`` dynamic int8 quantisation of a copy of ``model``'s Linear layers (a baseline users have), or None
    where this torch build has no quantized engine (the suite then records the baseline as missing)."""
    import copy
    import warnings

    try:
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    except Exception:  # not every torch build ships the quantized engines
        return None


def best_time(fn: Callable[[], object], repeat: int) -> float:
    out = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - start)
    return out


def measure_limits(threads: int) -> dict:
    """Peak-like sgemm GFLOP/s and streaming-read GB/s on this machine, with ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    t = best_time(lambda: torch.mm(a, b), 5)
    gflops = 2 * 1024**3 / t / 1e9
    big = torch.ones(64 * 1024 * 1024)  # 256 MB, far beyond the caches
    big.sum()
    t = best_time(lambda: big.sum(), 5)
    return {"gflops": gflops, "gbps": big.numel() * 4 / t / 1e9}


def interleave(calls: dict[str, Callable[[int], object]], rounds: int, warmup: int = 3) -> dict[str, list[float]]:
    """Time each call once per round, in turn (A B C A B C ...); ``calls`` take the round index (to rotate copies)."""
    for fn in calls.values():
        for i in range(warmup):
            fn(i)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn(r)
            times[name].append(time.perf_counter() - start)
    return times


def summarize(times: dict[str, list[float]], ours: str = "ours") -> tuple[float, dict[str, float], dict[str, dict]]:
    """(our median, baselines' medians, speedups {baseline: {median, min, max}} of per-round ratios)."""
    ours_s = statistics.median(times[ours])
    baselines = {k: statistics.median(v) for k, v in times.items() if k != ours}
    speedup = {}
    for k in baselines:
        ratios = [b / o for b, o in zip(times[k], times[ours])]
        speedup[k] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return ours_s, baselines, speedup


#: The protocol's floor for what "cold" rotates through, whatever the machine reports.
MIN_COLD_BYTES = 64 * 2**20


def cold_bytes(llc: int | None = None) -> int:
    """Bytes a "cold" case cycles through between two calls of the same weights: twice the last-level cache this
    machine reports (:func:`hf_sparse.machine.llc_bytes`), and at least :data:`MIN_COLD_BYTES`, so no call finds
    its weights in the cache."""
    if llc is None:
        from .machine import llc_bytes

        llc = llc_bytes()
    return max(MIN_COLD_BYTES, 2 * (llc or 0))
