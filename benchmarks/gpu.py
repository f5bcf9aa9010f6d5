"""GPU benchmark: our CUDA kernels (kernels/csrc/cuda via binding.cpp) against the best baselines on the same GPU
(``hf-sparse bench gpu``; on a machine without the package's dependencies, ``python benchmarks/gpu.py``).

SpMM cases: a 90%-unstructured-sparse weight (CSR, int16 columns) of 3072 x 768 (a BERT-base FFN up-projection) and
4096 x 4096, N = 16 and 64 tokens, float16 and bfloat16, in the Linear layout (``y = x @ W^T``, what a layer runs).
Baselines: ``cublas_dense`` (``F.linear`` with the dense weight: what the unpruned layer costs) and
``cusparse_csr`` (torch's CUDA CSR tensor, ``torch.sparse.mm``, which calls cuSPARSE), interleaved call by call.
Ours is timed with the structure check off (``HF_SPARSE_CUDA_CHECK_INDICES=0``: the kernels' cost; a layer whose
weight was validated when it was packed can run so) and, separately, with the default device-side check (one
host sync per call), reported as ``ours_checked_s``. ``hbm_fraction``: the bytes the product must move at least
(structure, values, x, y) over our median time, against the device-to-device copy bandwidth measured here.

Attention: S = 8192, sliding window ±256, bfloat16, batch 1, 12 heads, head_dim 64, bidirectional. Ours runs the
op with the block layout built once and kept (as a model's layers use it). Baselines: ``flex_compiled``
(``torch.compile(flex_attention)`` with a ``create_block_mask`` sliding window; compile time reported apart) and
``sdpa_full`` (``scaled_dot_product_attention`` over every key, flash backend: a model without a sparse path).

Timing: CUDA events around ``INNER`` back-to-back calls (launch overhead amortised as in a model), warm-up first,
medians over interleaved rounds; the ratio is baseline / ours (> 1: ours is faster).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

SUITE = "gpu"
SPMM_SHAPES = [(3072, 768), (4096, 4096)]
SPMM_NS = [16, 64]
SPMM_DTYPES = [torch.float16, torch.bfloat16]
DENSITY = 0.10
ATTN = {"S": 8192, "window": 256, "heads": 12, "d": 64, "block_q": 64}
INNER = 10  # calls per timed sample


def _import_package():
    """``hf_sparse``, or, where its dependencies (transformers, ...) are missing, a bare package whose ``ops``,
    ``formats`` and ``attention`` subpackages (torch-only) import without running ``hf_sparse/__init__.py``."""
    try:
        import hf_sparse  # noqa: F401

        return "full"
    except ImportError as exc:
        for name in [m for m in sys.modules if m == "hf_sparse" or m.startswith("hf_sparse.")]:
            del sys.modules[name]
        pkg = types.ModuleType("hf_sparse")
        pkg.__path__ = [str(Path(__file__).resolve().parents[1] / "hf_sparse")]
        pkg.__version__ = "bare"
        sys.modules["hf_sparse"] = pkg
        return f"bare ({type(exc).__name__}: {exc})"


def _machine() -> dict:
    try:
        from hf_sparse.machine import machine_info

        return machine_info()
    except ImportError:  # machine_info reads transformers' version
        return {"torch": torch.__version__, "python": sys.version.split()[0]}


def _gpu_info() -> dict:
    p = torch.cuda.get_device_properties(0)
    return {
        "name": p.name,
        "capability": f"{p.major}.{p.minor}",
        "memory_gib": round(p.total_memory / 2**30, 1),
        "sms": p.multi_processor_count,
        "cuda": torch.version.cuda,
    }


def _time_rounds(calls: dict[str, Callable[[], object]], rounds: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call: CUDA events around INNER calls, one sample per name per round, interleaved."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(INNER):
                fn()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) / 1e3 / INNER)
    return times


def _summarize(times: dict[str, list[float]]) -> tuple[float, dict[str, float], dict[str, dict]]:
    ours = statistics.median(times["ours"])
    baselines = {k: statistics.median(v) for k, v in times.items() if k != "ours"}
    speedup = {}
    for k in baselines:
        r = [b / o for b, o in zip(times[k], times["ours"])]
        speedup[k] = {"median": statistics.median(r), "min": min(r), "max": max(r)}
    return ours, baselines, speedup


def copy_bandwidth() -> float:
    """Device-to-device copy GB/s (bytes read + written), 1 GiB buffers, median of 10."""
    n = 2**30 // 4
    bufs = [torch.empty(n, device="cuda"), torch.empty(n, device="cuda")]
    times = _time_rounds({"ours": lambda: bufs[1].copy_(bufs[0])}, rounds=10)["ours"]
    bufs.clear()  # 2 GiB back to the caching allocator's pool, then to the device
    torch.cuda.empty_cache()
    return 2 * n * 4 / statistics.median(times) / 1e9


class _IndexCheck:
    """Sets HF_SPARSE_CUDA_CHECK_INDICES for a block (the binding reads it per call)."""

    def __init__(self, on: bool):
        self.on, self.old = on, None

    def __enter__(self):
        self.old = os.environ.get("HF_SPARSE_CUDA_CHECK_INDICES")
        os.environ["HF_SPARSE_CUDA_CHECK_INDICES"] = "1" if self.on else "0"

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("HF_SPARSE_CUDA_CHECK_INDICES", None)
        else:
            os.environ["HF_SPARSE_CUDA_CHECK_INDICES"] = self.old


def run_spmm_case(rows: int, cols: int, n: int, dtype: torch.dtype, *, rounds: int, copy_gbps: float) -> dict:
    from hf_sparse.formats import to_format

    ops = torch.ops.hf_sparse
    g = torch.Generator().manual_seed(rows + cols + n)
    w = torch.randn(rows, cols, generator=g) / cols**0.5
    mask = torch.rand(rows, cols, generator=g) < DENSITY
    fmt = to_format("csr", w.to(dtype), mask)
    crow, col, values = (t.cuda() for t in (fmt.crow_indices, fmt.col_indices, fmt.values))
    dense = (w * mask).to(dtype).cuda()
    x = torch.randn(n, cols, generator=g).to(dtype).cuda()
    ref = F.linear(x.float(), dense.float())
    ours_out = ops.linear_csr(crow, col, values, rows, cols, x)  # checked: the structure is validated once here
    torch.testing.assert_close(ours_out.float(), ref, rtol=2e-2, atol=2e-2)
    calls: dict[str, Callable[[], object]] = {
        "ours": lambda: ops.linear_csr(crow, col, values, rows, cols, x),
        "cublas_dense": lambda: F.linear(x, dense),
    }
    cusparse_missing = None
    try:
        w_csr = dense.to_sparse_csr()
        xt = x.t().contiguous()
        got = torch.sparse.mm(w_csr, xt).t()
        torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)
        calls["cusparse_csr"] = lambda: torch.sparse.mm(w_csr, x.t())
    except Exception as exc:  # e.g. a dtype cuSPARSE does not take in this torch build
        cusparse_missing = f"{type(exc).__name__}: {str(exc)[:300]}"
    with _IndexCheck(False):
        times = _time_rounds(calls, rounds)
    with _IndexCheck(True):
        checked = _time_rounds({"ours": calls["ours"]}, max(3, rounds // 2))["ours"]
    ours_s, baselines, speedup = _summarize(times)
    nnz = int(col.numel())
    esize = torch.finfo(dtype).bits // 8
    moved = 4 * (rows + 1) + col.element_size() * nnz + esize * nnz + esize * n * (cols + rows)
    return {
        "name": f"spmm linear_csr {rows}x{cols} density={DENSITY} N={n} {str(dtype).removeprefix('torch.')}",
        "params": {"rows": rows, "cols": cols, "N": n, "dtype": str(dtype), "density": DENSITY, "nnz": nnz},
        "ours_s": ours_s,
        "ours_checked_s": statistics.median(checked),
        "baselines_s": baselines,
        "speedup": speedup,
        "cusparse_missing": cusparse_missing,
        "bytes_moved": moved,
        "achieved_gbps": moved / ours_s / 1e9,
        "hbm_fraction": moved / ours_s / 1e9 / copy_gbps,
    }


def run_nm_case(rows: int, cols: int, n: int, dtype: torch.dtype, *, rounds: int) -> dict:
    """2:4: our kernel (spmm_nm: the CSR kernel over the implicit n:m structure) against torch's semi-structured
    sparse tensor cores (cuSPARSELt or CUTLASS; what hf_sparse's dispatch picks where it is available) and cuBLAS
    on the dense weight."""
    from hf_sparse.formats import to_format

    ops = torch.ops.hf_sparse
    g = torch.Generator().manual_seed(rows + cols + n + 1)
    w = torch.randn(rows, cols, generator=g) / cols**0.5
    keep = torch.zeros(rows, cols // 4, 4, dtype=torch.bool)
    keep.scatter_(-1, w.abs().reshape(rows, cols // 4, 4).topk(2, dim=-1).indices, True)
    fmt = to_format("nm", w.to(dtype), keep.reshape(rows, cols), n=2, m=4)
    values, indices = fmt.values.cuda(), fmt.indices.cuda()
    dense = fmt.to_dense().cuda()
    xt = torch.randn(cols, n, generator=g).to(dtype).cuda()
    ref = dense.float() @ xt.float()
    torch.testing.assert_close(ops.spmm_nm(values, indices, 2, 4, cols, xt).float(), ref, rtol=2e-2, atol=2e-2)
    calls: dict[str, Callable[[], object]] = {
        "ours": lambda: ops.spmm_nm(values, indices, 2, 4, cols, xt),
        "cublas_dense": lambda: dense @ xt,
    }
    semi_missing = None
    try:
        from torch.sparse import to_sparse_semi_structured

        packed = to_sparse_semi_structured(dense)
        torch.testing.assert_close(torch.mm(packed, xt).float(), ref, rtol=2e-2, atol=2e-2)
        calls["semi_structured"] = lambda: torch.mm(packed, xt)
    except Exception as exc:  # no cuSPARSELt / CUTLASS backend for this dtype, shape or GPU
        semi_missing = f"{type(exc).__name__}: {str(exc)[:300]}"
    with _IndexCheck(False):
        times = _time_rounds(calls, rounds)
    ours_s, baselines, speedup = _summarize(times)
    return {
        "name": f"spmm 2:4 {rows}x{cols} N={n} {str(dtype).removeprefix('torch.')}",
        "params": {"rows": rows, "cols": cols, "N": n, "dtype": str(dtype), "n": 2, "m": 4},
        "ours_s": ours_s,
        "baselines_s": baselines,
        "speedup": speedup,
        "semi_structured_missing": semi_missing,
    }


def _flex(S: int, window: int):
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def band(b, h, q_idx, kv_idx):
            d = q_idx - kv_idx
            return (d <= window) & (d >= -window)

        torch._dynamo.reset()
        block_mask = create_block_mask(band, B=None, H=None, Q_LEN=S, KV_LEN=S, device="cuda")
        return torch.compile(flex_attention, dynamic=False), block_mask, None
    except Exception as exc:
        return None, None, f"{type(exc).__name__}: {str(exc)[:300]}"


def run_attention_case(*, rounds: int) -> dict:
    from hf_sparse.attention import SlidingWindow, build_layout

    ops = torch.ops.hf_sparse
    S, window, H, D, block_q = ATTN["S"], ATTN["window"], ATTN["heads"], ATTN["d"], ATTN["block_q"]
    g = torch.Generator().manual_seed(S)
    q, k, v = (torch.randn(1, H, S, D, generator=g).to(torch.bfloat16).cuda() for _ in range(3))
    t0 = time.perf_counter()
    layout = build_layout(SlidingWindow(window), S, S, block_q=block_q)
    layout_s = time.perf_counter() - t0
    lay = (layout.kv_ptr, layout.kv_blocks, layout.mask_index, layout.bits)  # host tensors: no D2H copy to check
    empty = torch.empty(0)
    scale = D**-0.5

    def ours():
        return ops.sparse_attention(q, k, v, *lay, empty, scale, block_q)[0]

    i = torch.arange(S, device="cuda")
    band = (i[:, None] - i[None, :]).abs() <= window
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=band)
    torch.testing.assert_close(ours().float(), ref, rtol=3e-2, atol=3e-2)
    del band
    calls: dict[str, Callable[[], object]] = {
        "ours": ours,
        "sdpa_full": lambda: F.scaled_dot_product_attention(q, k, v),
    }
    flex, block_mask, why = _flex(S, window)
    compile_s = None
    if flex is not None:
        try:
            t0 = time.perf_counter()
            out = flex(q, k, v, block_mask=block_mask)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
            calls["flex_compiled"] = lambda: flex(q, k, v, block_mask=block_mask)
        except Exception as exc:
            why = f"{type(exc).__name__}: {str(exc)[:300]}"
    times = _time_rounds(calls, rounds)
    ours_s, baselines, speedup = _summarize(times)
    allowed = sum(min(S, j + window + 1) - max(0, j - window) for j in range(S))
    useful = 4 * allowed * D * H
    return {
        "name": f"attention S={S} window=±{window} heads={H} d={D} bf16 block_q={block_q}",
        "params": {**ATTN, "dtype": "torch.bfloat16", "causal": False},
        "ours_s": ours_s,
        "baselines_s": baselines,
        "speedup": speedup,
        "layout_build_s": layout_s,
        "layout_tiles": layout.tiles,
        "flex_compile_s": compile_s,
        "flex_missing": why,
        "tflops": useful / ours_s / 1e12,
    }


def run(quick: bool = False, threads: int = 1, rounds: int | None = None, progress: Callable | None = None) -> dict:
    """Run the suite and return the JSON-ready record (``threads`` is the CPU suites' option: unused here)."""
    mode = _import_package()
    from hf_sparse.ops import _loader

    record: dict = {"suite": SUITE, "import_mode": mode, "machine": _machine(), "cases": []}
    if not torch.cuda.is_available():
        record["skipped"] = "no CUDA device" + ("" if torch.version.cuda else " (torch is a CPU build)")
        return record
    _loader.load()
    record["gpu"] = _gpu_info()
    record["kernels"] = _loader.status()
    if not _loader.load_cuda():
        record["skipped"] = f"the CUDA ops are not available: {_loader.cuda_status()}"
        return record
    record["kernels"] = _loader.status()
    copy_gbps = copy_bandwidth()
    record["limits"] = {"d2d_copy_gbps": copy_gbps}
    shapes = SPMM_SHAPES[1:] if quick else SPMM_SHAPES
    dtypes = SPMM_DTYPES[:1] if quick else SPMM_DTYPES
    todo = [("spmm", (r, c, n, dt)) for r, c in shapes for n in SPMM_NS for dt in dtypes] + [("attention", ())]
    todo += [("nm", (4096, 4096, n, torch.bfloat16)) for n in SPMM_NS]
    for i, (kind, args) in enumerate(todo):
        r = rounds or (5 if quick else 15)
        if kind == "spmm":
            case = run_spmm_case(*args, rounds=r, copy_gbps=copy_gbps)
        elif kind == "nm":
            case = run_nm_case(*args, rounds=r)
        else:
            case = run_attention_case(rounds=r)
        record["cases"].append(case)
        if progress:
            progress(i + 1, len(todo), case)
    record["notes"] = (
        "ratios are baseline / ours per interleaved round (CUDA events around 10 calls); hbm_fraction is the "
        "product's compulsory bytes over our median time against the measured D2D copy bandwidth; ours_checked_s "
        "includes the default structure check (one host sync per call)"
    )
    return record


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--json", default=None, help="write the record here (default: print it)")
    args = p.parse_args(argv)

    def progress(i, total, case):
        ratios = ", ".join(f"{k} {v['median']:.2f}x" for k, v in case["speedup"].items())
        print(f"[{i}/{total}] {case['name']}: ours {1e3 * case['ours_s']:.4f} ms; vs {ratios}", flush=True)

    record = run(quick=args.quick, rounds=args.rounds, progress=progress)
    text = json.dumps(record, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text + "\n")
        print(f"gpu benchmark: written to {args.json}")
    else:
        print(text)
    return 0 if record["cases"] or not torch.cuda.is_available() else 1


# -- pytest plugin (benchmarks/gpu_check.sh: `pytest -p gpu` where hf_sparse's dependencies are missing) -------------
def pytest_configure(config):
    """Bare-package import before the test modules import hf_sparse; the ``cuda`` marker (tests/conftest.py
    declares it too, but gpu_check.sh skips that conftest when transformers is missing)."""
    _import_package()
    config.addinivalue_line("markers", "cuda: needs a CUDA device")


if __name__ == "__main__":
    sys.exit(main())
