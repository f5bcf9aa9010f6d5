"""SpMM benchmark: hf_sparse's kernels against the best baselines in the same process (``hf-sparse bench spmm``).

Protocol (see the README's benchmarking section): correctness first; warm up; then interleave ours and each
baseline call by call for several rounds and report the median of the per-round ratios (baseline time / ours,
> 1 means ours is faster) with its spread. ``cold`` rotates enough weight copies (>= 8, >= 64 MB in all) that each
call reads its weights from DRAM; ``hot`` reuses one copy. Threads are fixed explicitly. Limits (sgemm GFLOP/s and
streaming-read GB/s) are measured in the same process.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable

import torch

SUITE = "spmm"
SHAPES = [(3072, 768), (768, 3072), (1536, 384), (384, 1536)]
NS = [1, 16, 128]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95]
#: Formats the issue lists whose kernels do not exist yet; reported, not silently dropped.
NOT_IMPLEMENTED = ["bsr16x16", "bsr32x32", "2:4", "hybrid"]


def measure_limits(threads: int) -> dict:
    """Peak-like sgemm GFLOP/s and streaming-read GB/s on this machine, with ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    t = _best(lambda: torch.mm(a, b), 5)
    gflops = 2 * 1024**3 / t / 1e9
    big = torch.ones(64 * 1024 * 1024)  # 256 MB, far beyond the caches
    big.sum()
    t = _best(lambda: big.sum(), 5)
    return {"gflops": gflops, "gbps": big.numel() * 4 / t / 1e9}


def _best(fn: Callable, repeat: int) -> float:
    out = math.inf
    for _ in range(repeat):
        s = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - s)
    return out


def _make_case(M: int, K: int, sparsity: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(M, K, generator=g)
    w[torch.rand(M, K, generator=g) < sparsity] = 0
    return w


def run_case(M: int, K: int, N: int, sparsity: float, *, threads: int, cold: bool, rounds: int) -> dict:
    from hf_sparse.formats import CSR
    from hf_sparse.ops import spmm_csr

    torch.set_num_threads(threads)
    w = _make_case(M, K, sparsity)
    csr = CSR.from_dense(w)
    x = torch.randn(N, K)
    # Correctness first: a fast wrong kernel is not a result.
    ref = torch.nn.functional.linear(x, w)
    torch.testing.assert_close(spmm_csr(csr, x.t().contiguous()).t(), ref, rtol=1e-4, atol=1e-4)

    dense_bytes = w.numel() * 4
    copies = max(8, math.ceil(64e6 / max(csr.nbytes, 1))) if cold else 1
    dense_copies = max(8, math.ceil(64e6 / dense_bytes)) if cold else 1
    ours_w = [CSR.from_dense(w) for _ in range(copies)]
    dense_w = [w.clone() for _ in range(dense_copies)]
    with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notice
        warnings.simplefilter("ignore", UserWarning)
        # torch's CSR stores int64 indices: about twice our bytes per copy.
        torch_copies = max(8, math.ceil(64e6 / max(csr.nbytes * 2, 1))) if cold else 1
        csr_w = [w.to_sparse_csr() for _ in range(torch_copies)]

    calls = {
        "ours": lambda i: spmm_csr(ours_w[i % len(ours_w)], x.t().contiguous()).t(),
        "torch_dense": lambda i: torch.nn.functional.linear(x, dense_w[i % len(dense_w)]),
        "torch_csr": lambda i: (csr_w[i % len(csr_w)] @ x.t()).t(),
    }
    for fn in calls.values():  # warm up
        for i in range(3):
            fn(i)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(rounds):
        for name, fn in calls.items():  # interleaved: ours, dense, csr, ours, dense, csr, ...
            s = time.perf_counter()
            fn(r)
            times[name].append(time.perf_counter() - s)
    ours = statistics.median(times["ours"])
    baselines = {k: statistics.median(v) for k, v in times.items() if k != "ours"}
    speedup = {}
    for k in baselines:
        ratios = [b / o for b, o in zip(times[k], times["ours"])]
        speedup[k] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    needed_bytes = csr.nbytes + x.numel() * 4 + M * N * 4
    useful_flops = 2 * csr.nnz * N
    return {
        "name": f"csr {M}x{K} N={N} {int(round(sparsity * 100))}% {'cold' if cold else 'hot'} t={threads}",
        "params": {
            "M": M,
            "K": K,
            "N": N,
            "sparsity": sparsity,
            "format": "csr",
            "dtype": "float32",
            "threads": threads,
            "cold": cold,
        },
        "ours_s": ours,
        "baselines_s": baselines,
        "speedup": speedup,
        "gbps": needed_bytes / ours / 1e9,
        "gflops": useful_flops / ours / 1e9,
    }


def run(quick: bool = False, threads: int = 1, rounds: int | None = None, progress: Callable | None = None) -> dict:
    """Run the suite and return the JSON-ready record."""
    from hf_sparse.machine import machine_info
    from hf_sparse.ops import kernel_status, load_kernels

    load_kernels()
    limits = measure_limits(threads)
    if quick:
        grid = [(3072, 768, 16, 0.9, True), (3072, 768, 16, 0.9, False), (3072, 768, 128, 0.9, True)]
        rounds = rounds or 20
    else:
        grid = [(M, K, N, s, cold) for (M, K) in SHAPES for N in NS for s in SPARSITIES for cold in (True, False)]
        rounds = rounds or 30
    cases = []
    for i, (M, K, N, s, cold) in enumerate(grid):
        case = run_case(M, K, N, s, threads=threads, cold=cold, rounds=rounds)
        case["pct_bw"] = 100 * case["gbps"] / limits["gbps"]
        case["pct_peak"] = 100 * case["gflops"] / limits["gflops"]
        cases.append(case)
        if progress:
            progress(i + 1, len(grid), case)
    return {
        "suite": SUITE,
        "machine": machine_info(),
        "kernels": kernel_status(),
        "limits": limits,
        "not_implemented": NOT_IMPLEMENTED,
        "cases": cases,
    }
