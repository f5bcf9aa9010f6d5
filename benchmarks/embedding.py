"""Row-wise quantised embedding lookups (``hf-sparse bench embedding``): our ``qrow`` tables and fused C++ kernel
against float32 ``torch.nn.functional.embedding_bag`` and FBGEMM's row-wise quantised bags, in one process.

The table is 1,000,000 x 64 (256 MB in float32: far larger than the caches), built from seeded normal values. Each
call looks up 4,096 ids drawn uniformly (seeded), as 4,096 bags of one (a plain lookup) or 512 bags of eight,
summed. Ours: :meth:`hf_sparse.formats.QRow.embedding_bag` at 8, 4 and 2 bits (what a layer calls, Python wrapper
included). Baselines, interleaved call by call:

- ``torch_embedding_bag``: ``F.embedding_bag`` on the float32 table, mode sum, the same ids and offsets;
- ``torch_embedding`` (bags of one only): ``F.embedding``, the plain float32 lookup;
- ``hf_sparse_kernel``: our C++ kernel itself (``backend="cpu"``), where ``ours`` (the default dispatch of
  :func:`hf_sparse.ops.qrow_embedding_bag`) hands the call to FBGEMM's op (``path`` in each case's record);
- ``fbgemm_rowwise``: ``torch.ops.quantized.embedding_bag_{byte,4bit,2bit}_rowwise_offsets`` on the table packed by
  ``torch.ops.quantized.embedding_bag_*_prepack`` (FBGEMM's kernels; codes with the scale and bias fused at the end of
  each row), where this torch build has them.

``cold``: a 128 MB streaming read between calls (not timed) evicts the rows and ids from every cache level,
so each call waits on DRAM as a lookup into a large table does; ``hot``: the same ids again and again (their rows
stay cached). Correctness first: ours against the PyTorch reference and the float32 result (within the quantisation
step).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hf_sparse.benchmarking import best_dense, cold_bytes, dense_table, interleave, measure_limits, summarize

SUITE = "embedding"
ROWS, DIM, LOOKUPS = 1_000_000, 64, 4096
BITS = [8, 4, 2]
BAG_SIZES = [1, 8]
_PREPACK = {8: "byte", 4: "4bit", 2: "2bit"}


def _fbgemm(weight: torch.Tensor, bits: int):
    """(packed table, bag function) of FBGEMM's row-wise ops at ``bits``, or (None, reason)."""
    name = _PREPACK[bits]
    try:
        prepack = getattr(torch.ops.quantized, f"embedding_bag_{name}_prepack")
        bag = getattr(torch.ops.quantized, f"embedding_bag_{name}_rowwise_offsets")
        packed = prepack(weight)
    except (AttributeError, RuntimeError) as exc:
        return None, f"torch.ops.quantized.embedding_bag_{name}_* unavailable: {str(exc).splitlines()[0][:200]}"
    return (packed, bag), None


def _timed_cold(calls: dict[str, Callable[[int], object]], rounds: int, flush: Callable[[], object]) -> dict:
    """Like :func:`hf_sparse.benchmarking.interleave`, with ``flush()`` (untimed) before every call."""
    for fn in calls.values():
        fn(0)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(rounds):
        for name, fn in calls.items():
            flush()
            start = time.perf_counter()
            fn(r)
            times[name].append(time.perf_counter() - start)
    return times


def run_case(
    table, weight, fbgemm, ids, bag_size: int, *, cold: bool, rounds: int, threads: int, flush, skipped=None
) -> dict:
    from hf_sparse.ops import qrow_embedding_bag, qrow_embedding_bag_reference
    from hf_sparse.ops.embedding import qrow_path

    bits = table.bits
    offsets = torch.arange(0, ids.numel(), bag_size)
    bags = offsets.numel()
    ids2d = ids.reshape(bags, bag_size)
    # Correctness first: the kernel against the reference, and against float32 within the quantisation step.
    ours = qrow_embedding_bag(table, ids, offsets, mode="sum")
    ref = qrow_embedding_bag_reference(table, ids, offsets, mode="sum")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    fp32 = F.embedding_bag(ids, weight, offsets, mode="sum")
    half_step = float(table.scales().float()[ids].max()) / 2
    err = float((ours - fp32).abs().max())
    if err > bag_size * half_step * 1.01 + 1e-4:
        raise AssertionError(f"qrow int{bits}: error {err} exceeds {bag_size} half steps ({half_step})")

    calls: dict[str, Callable[[int], object]] = {
        # fixed-size bags as 2-D ids, as a layer with fixed bags passes them (the default dispatch: FBGEMM's op
        # where it takes the call, see qrow_path)
        "ours": lambda i: qrow_embedding_bag(table, ids2d, mode="sum"),
        "hf_sparse_kernel": lambda i: qrow_embedding_bag(table, ids, offsets, mode="sum", backend="cpu"),
        "torch_embedding_bag": lambda i: F.embedding_bag(ids, weight, offsets, mode="sum"),
    }
    if bag_size == 1:
        calls["torch_embedding"] = lambda i: F.embedding(ids, weight)
    if fbgemm is not None:
        packed, bag = fbgemm
        calls["fbgemm_rowwise"] = lambda i: bag(packed, ids, offsets, mode=0)
    with torch.inference_mode():
        times = _timed_cold(calls, rounds, flush) if cold else interleave(calls, rounds)
    ours_s, baselines, speedup = summarize(times)
    needed = ids.numel() * (table.row_bytes + ids.element_size()) + bags * DIM * 4  # rows: codes, scale, bias
    fp32_bytes = ROWS * DIM * 4
    table_bytes = {"ours": table.nbytes, "fp32": fp32_bytes}
    best, best_s = best_dense(baselines)
    if fbgemm is not None:
        table_bytes["fbgemm_rowwise"] = fbgemm[0].numel() * fbgemm[0].element_size()
    return {
        "name": (
            f"qrow int{bits} {ROWS}x{DIM} {ids.numel()} lookups in {bags} bags of {bag_size} "
            f"{'cold' if cold else 'hot'} t={threads}"
        ),
        "params": {
            "rows": ROWS,
            "dim": DIM,
            "lookups": ids.numel(),
            "bits": bits,
            "cold": cold,
            "bag_size": bag_size,
            "bags": bags,
            "mode": "sum",
            "format": "qrow",
            "threads": threads,
        },
        "shape": [ROWS, DIM],
        "format": "qrow",
        "sparsity": 0.0,
        "threads": threads,
        "hot_or_cold": "cold" if cold else "hot",
        "ours_s": ours_s,
        "baselines_s": baselines,
        "speedup": speedup,
        "baseline": "torch_embedding_bag",
        "baseline_s": baselines["torch_embedding_bag"],
        "ratio": speedup["torch_embedding_bag"]["median"],
        "ratio_vs_fp32": baselines["torch_embedding_bag"] / ours_s,
        "best_dense": best,
        "best_dense_s": best_s,
        "ratio_vs_best_dense": best_s / ours_s,
        "skipped_baselines": dict(skipped or {}),
        "table_bytes": table_bytes,
        "bytes_ratio_vs_fp32": fp32_bytes / table.nbytes,
        "rounds": {k: len(v) for k, v in times.items()},
        "ours_spread_s": [min(times["ours"]), max(times["ours"])],
        "max_abs_error_vs_fp32": err,
        "path": qrow_path(table, ids),
        "kernel_vs_fbgemm": (
            baselines["fbgemm_rowwise"] / baselines["hf_sparse_kernel"] if "fbgemm_rowwise" in baselines else None
        ),
        "gbps": needed / ours_s / 1e9,
        "gflops": 2 * ids.numel() * DIM / ours_s / 1e9,
    }


def run(quick: bool = False, threads: int = 1, rounds: int | None = None, progress: Callable | None = None) -> dict:
    """Run the suite and return the JSON-ready record (quick: fewer rounds, the same 1M x 64 table and cases)."""
    from hf_sparse.formats import QRow
    from hf_sparse.machine import machine_info
    from hf_sparse.ops import kernel_status, load_kernels

    load_before = os.getloadavg()
    load_kernels()
    limits = measure_limits(threads)
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(ROWS, DIM, generator=g)
    ids = torch.randint(0, ROWS, (LOOKUPS,), generator=g)
    rounds = rounds or (10 if quick else 30)
    sink = torch.ones(cold_bytes() // 4)  # read between cold calls: twice the last-level cache, >= 64 MiB

    def flush():
        return sink.sum()

    missing: list[str] = []
    plan = [(bits, size, cold) for bits in BITS for size in BAG_SIZES for cold in (True, False)]
    cases = []
    for bits in BITS:
        table = QRow.from_dense(weight, bits=bits)
        fbgemm, why = _fbgemm(weight, bits)
        if why:
            missing.append(f"fbgemm_rowwise int{bits}: {why}")
        for size in BAG_SIZES:
            for cold in (True, False):
                case = run_case(
                    table,
                    weight,
                    fbgemm,
                    ids,
                    size,
                    cold=cold,
                    rounds=rounds,
                    threads=threads,
                    flush=flush,
                    skipped={"fbgemm_rowwise": why} if why else None,
                )
                case["pct_bw"] = 100 * case["gbps"] / limits["gbps"]
                case["pct_peak"] = 100 * case["gflops"] / limits["gflops"]
                cases.append(case)
                if progress:
                    progress(len(cases), len(plan), case)
        del table, fbgemm
    int4_cold = [c for c in cases if c["params"]["bits"] == 4 and c["params"]["cold"]]
    return {
        "suite": SUITE,
        "machine": machine_info(),
        "kernels": kernel_status(),
        "limits": limits,
        "cold_bytes": cold_bytes(),
        "load_average": {"start": list(load_before), "end": list(os.getloadavg())},
        "baselines_missing": missing,
        "goals": {
            "int4_bytes_ratio_vs_fp32": {"goal": 7.0, "measured": int4_cold[0]["bytes_ratio_vs_fp32"]},
            "int4_cold_speedup_vs_torch_embedding_bag": {
                "goal": 2.0,
                "measured_by_bag_size": {str(c["params"]["bag_size"]): c["ratio"] for c in int4_cold},
            },
        },
        "cases": cases,
        "median_ratio_all_cases": statistics.median(c["ratio"] for c in cases),
        "table_markdown": dense_table(cases),
    }
