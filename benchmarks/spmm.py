"""SpMM benchmark: hf_sparse's kernels against the best baselines in the same process (``hf-sparse bench spmm``).

Cases: BERT FFN (3072x768, 768x3072) and MiniLM FFN (1536x384, 384x1536) weights; N = 1, 16, 128 tokens; formats
CSR (uniform unstructured), hybrid (unstructured with a few dense rows), 16x16 and 32x32 BSR (block patterns), and
2:4 (always 50%). Baselines: dense ``F.linear`` (MKL) always; ``torch.sparse`` CSR for unstructured and 2:4;
``torch.sparse`` BSR for blocks. ``cold`` rotates enough copies of every weight (>= 8, >= 64 MB) that each call
reads it from DRAM; ``hot`` reuses one copy. Threads are fixed explicitly. Ours is timed as a layer calls it,
``sparse_linear(weight, x)``: (N, K) in, (N, M) out, input transpose included.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from hf_sparse.benchmarking import cold_bytes, interleave, measure_limits, summarize

SUITE = "spmm"
SHAPES = [(3072, 768), (768, 3072), (1536, 384), (384, 1536)]
NS = [1, 16, 128]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95]
FORMATS = ["csr", "hybrid", "bsr16x16", "bsr32x32", "2:4"]
#: Formats the issue lists whose kernels do not exist yet; reported, not silently dropped.
NOT_IMPLEMENTED: list[str] = []


def make_weight(fmt: str, M: int, K: int, sparsity: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random weight and keep-mask with the pattern ``fmt`` is meant for."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(M, K, generator=g)
    if fmt.startswith("bsr"):
        b = int(fmt[3:].split("x")[0])
        keep = (torch.rand(M // b, K // b, generator=g) >= sparsity).repeat_interleave(b, 0).repeat_interleave(b, 1)
    elif fmt == "2:4":
        order = torch.rand(M, K // 4, 4, generator=g).argsort(-1)[..., :2]
        keep = torch.zeros(M, K // 4, 4, dtype=torch.bool).scatter_(-1, order, True).reshape(M, K)
    elif fmt == "hybrid":
        # 5% of the rows 90% dense (e.g. rows that pruning left almost whole), the rest sparser to keep the total.
        dense_rows = max(1, M // 20)
        rest = max(0.0, ((1 - sparsity) * M - 0.9 * dense_rows) / (M - dense_rows))
        density = torch.full((M, 1), rest)
        density[torch.randperm(M, generator=g)[:dense_rows]] = 0.9
        keep = torch.rand(M, K, generator=g) < density
    else:
        keep = torch.rand(M, K, generator=g) >= sparsity
    return w * keep, keep


def _ours(fmt: str, w: torch.Tensor, keep: torch.Tensor):
    from hf_sparse.formats import to_format

    if fmt.startswith("bsr"):
        b = int(fmt[3:].split("x")[0])
        return to_format("bsr", w, keep, block=(b, b))
    if fmt == "2:4":
        return to_format("nm", w, keep, n=2, m=4)
    return to_format(fmt, w, keep)


def _copies(nbytes: int, cold: bool) -> int:
    """Copies of a weight a case rotates through: cold, enough to exceed twice this machine's last-level cache."""
    return max(8, math.ceil(cold_bytes() / max(nbytes, 1))) if cold else 1


def run_case(
    fmt: str,
    M: int,
    K: int,
    N: int,
    sparsity: float,
    *,
    threads: int,
    cold: bool,
    rounds: int,
    dtype: str = "float32",
) -> dict:
    """One case. ``dtype="int8"`` (csr, bsr and 2:4): ours stores int8 values with per-row scales (``qcsr``,
    ``qbsr``, ``qnm``) and is also compared with our own kernel for the same format in float32 (baseline
    ``hf_sparse_<format>_float32``)."""
    from hf_sparse.formats import QBSR, QCSR, QNM
    from hf_sparse.ops import sparse_linear

    torch.set_num_threads(threads)
    w, keep = make_weight(fmt, M, K, sparsity)
    if dtype == "int8":
        if fmt not in DTYPES or "int8" not in DTYPES[fmt]:
            raise ValueError(f"int8 cases exist for {sorted(DTYPES)}, got {fmt}")

        def build():
            if fmt.startswith("bsr"):
                b = int(fmt[3:].split("x")[0])
                return QBSR.from_dense(w, keep, block=(b, b))
            return QNM.from_dense(w, keep, n=2, m=4) if fmt == "2:4" else QCSR.from_dense(w, keep)

    else:

        def build():
            return _ours(fmt, w, keep)

    stored = build()
    x = torch.randn(N, K)
    # Correctness first: a fast wrong kernel is not a result (int8: against the dequantised weight).
    ref = torch.nn.functional.linear(x, stored.to_dense() if dtype == "int8" else w)
    torch.testing.assert_close(sparse_linear(stored, x), ref, rtol=1e-4, atol=1e-3)

    ours_w = [build() for _ in range(_copies(stored.nbytes, cold))]
    dense_w = [w.clone() for _ in range(_copies(w.numel() * 4, cold))]
    calls: dict[str, Callable[[int], object]] = {
        "ours": lambda i: sparse_linear(ours_w[i % len(ours_w)], x),
        "torch_dense": lambda i: torch.nn.functional.linear(x, dense_w[i % len(dense_w)]),
    }
    if dtype == "int8":
        f32 = _ours(fmt, w, keep)
        f32_w = [_ours(fmt, w, keep) for _ in range(_copies(f32.nbytes, cold))]
        key = "hf_sparse_" + ("nm" if fmt == "2:4" else "bsr" if fmt.startswith("bsr") else "csr") + "_float32"
        calls[key] = lambda i: sparse_linear(f32_w[i % len(f32_w)], x)
    with warnings.catch_warnings():  # torch's "sparse support is in beta" notices
        warnings.simplefilter("ignore", UserWarning)
        if fmt.startswith("bsr"):
            b = int(fmt[3:].split("x")[0])
            t_bsr = w.to_sparse_bsr((b, b))
            n_bytes = t_bsr.values().numel() * 4 + t_bsr.col_indices().numel() * 8
            bsr_w = [w.to_sparse_bsr((b, b)) for _ in range(_copies(n_bytes, cold))]
            calls["torch_bsr"] = lambda i: (bsr_w[i % len(bsr_w)] @ x.t()).t()
        else:
            n_bytes = int(keep.sum()) * 12  # torch CSR: fp32 values + int64 column indices
            csr_w = [w.to_sparse_csr() for _ in range(_copies(n_bytes, cold))]
            calls["torch_csr"] = lambda i: (csr_w[i % len(csr_w)] @ x.t()).t()
        times = interleave(calls, rounds)
    ours_s, baselines, speedup = summarize(times)
    nnz = int(keep.sum())
    return {
        "name": (
            f"{fmt}{'-int8' if dtype == 'int8' else ''} {M}x{K} N={N} {round(100 * nnz / (M * K))}% dense "
            f"{'cold' if cold else 'hot'} t={threads}"
        ),
        "params": {
            "M": M,
            "K": K,
            "N": N,
            "sparsity": sparsity,
            "format": fmt,
            "dtype": dtype,
            "threads": threads,
            "cold": cold,
        },
        "ours_s": ours_s,
        "baselines_s": baselines,
        "speedup": speedup,
        "stored_bytes": stored.nbytes,
        "gbps": (stored.nbytes + x.numel() * 4 + M * N * 4) / ours_s / 1e9,
        "gflops": 2 * nnz * N / ours_s / 1e9,
    }


QUICK = [
    ("csr", 3072, 768, 16, 0.9, True, "float32"),
    ("csr", 3072, 768, 16, 0.9, False, "float32"),
    ("csr", 3072, 768, 128, 0.9, True, "float32"),
    ("bsr16x16", 3072, 768, 128, 0.9, True, "float32"),
    ("2:4", 3072, 768, 128, 0.5, True, "float32"),
    ("csr", 3072, 768, 16, 0.9, True, "int8"),
    ("csr", 3072, 768, 1, 0.9, True, "int8"),
    ("csr", 3072, 768, 128, 0.9, True, "int8"),
    ("bsr16x16", 3072, 768, 16, 0.9, True, "int8"),
    ("bsr16x16", 3072, 768, 128, 0.9, True, "int8"),
    ("2:4", 3072, 768, 16, 0.5, True, "int8"),
    ("2:4", 3072, 768, 128, 0.5, True, "int8"),
]
#: Value dtypes per format: int8 values (with per-row scales) exist for CSR, BSR and 2:4.
DTYPES = {
    "csr": ("float32", "int8"),
    "bsr16x16": ("float32", "int8"),
    "bsr32x32": ("float32", "int8"),
    "2:4": ("float32", "int8"),
}


def grid() -> list[tuple]:
    out = []
    for M, K in SHAPES:
        for N in NS:
            for fmt in FORMATS:
                for s in [0.5] if fmt == "2:4" else SPARSITIES:
                    for dtype in DTYPES.get(fmt, ("float32",)):
                        for cold in (True, False):
                            out.append((fmt, M, K, N, s, cold, dtype))
    return out


def run(quick: bool = False, threads: int = 1, rounds: int | None = None, progress: Callable | None = None) -> dict:
    """Run the suite and return the JSON-ready record."""
    from hf_sparse.machine import machine_info
    from hf_sparse.ops import kernel_status, load_kernels

    load_kernels()
    limits = measure_limits(threads)
    cases_in = QUICK if quick else grid()
    rounds = rounds or (20 if quick else 30)
    cases = []
    for i, (fmt, M, K, N, s, cold, dtype) in enumerate(cases_in):
        case = run_case(fmt, M, K, N, s, threads=threads, cold=cold, rounds=rounds, dtype=dtype)
        case["pct_bw"] = 100 * case["gbps"] / limits["gbps"]
        case["pct_peak"] = 100 * case["gflops"] / limits["gflops"]
        cases.append(case)
        if progress:
            progress(i + 1, len(cases_in), case)
    return {
        "suite": SUITE,
        "machine": machine_info(),
        "kernels": kernel_status(),
        "limits": limits,
        "cold_bytes": cold_bytes(),
        "not_implemented": NOT_IMPLEMENTED,
        "cases": cases,
    }
