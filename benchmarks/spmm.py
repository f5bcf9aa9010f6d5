"""SpMM benchmark: hf_sparse's kernels against the best baselines in the same process (``hf-sparse bench spmm``).

Cases: BERT FFN (3072x768, 768x3072) and MiniLM FFN (1536x384, 384x1536) weights; N = 1, 16, 128 tokens; formats
CSR (uniform unstructured), hybrid (unstructured with a few dense rows), 16x16 and 32x32 BSR (block patterns), and
2:4 (always 50%); int8 values with per-row scales (``qcsr``, ``qbsr``, ``qnm``); and int8 weights with dynamic int8
activations (``int8-dynamic``, ``qbsr`` with ``activation="dynamic"`` on the integer kernels, run as a layer runs
it, ``QuantLinear(weight)(x)``): ``bsr1x4`` / ``bsr16x4`` are patterns pruned in 1x4 / 16x4 blocks (what
``PruningConfig(granularity="block", block=(1, 4))`` makes; 16x4 blocks hold one row per vector lane),
``unstructured-1x4`` the unstructured pattern stored
in 1x4 blocks (each block holds the zeros it covers).

Baselines, interleaved call by call: every dense configuration of this machine
(:func:`hf_sparse.benchmarking.dense_linear_baselines`: ``fp32`` ``F.linear`` (MKL); ``bf16`` where the CPU has
native bf16, timed on a bf16 input; ``torch-dynamic-int8``; ``onnxruntime-dynamic-int8``; ``openvino`` and
``openvino-int8-weights``; ``bitsandbytes-int8`` and ``bitsandbytes-nf4`` where they run and beat fp32), each
checked against fp32 first, and each case records the best of them (``best_dense``, ``ratio_vs_best_dense``) next
to ``ratio_vs_fp32``, with what was skipped and why;
``torch.sparse`` CSR for unstructured and 2:4; ``torch.sparse`` BSR for blocks. ``cold`` rotates enough copies of
every weight (>= 8, twice the last-level cache, >= 64 MiB) that each call reads it from DRAM; ``hot`` reuses one
copy. Threads are fixed explicitly. Ours is timed as a layer calls it, ``sparse_linear(weight, x)``: (N, K) in,
(N, M) out, input transpose included.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from hf_sparse.benchmarking import (
    MODEL_BLOCK,
    add_dense_comparison,
    cold_bytes,
    dense_linear_baselines,
    dense_table,
    interleave,
    measure_limits,
    summarize,
)

SUITE = "spmm"
SHAPES = [(3072, 768), (768, 3072), (1536, 384), (384, 1536)]
NS = [1, 16, 128]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95]
FORMATS = ["csr", "hybrid", "bsr16x16", "bsr32x32", "2:4", "bsr1x4", "bsr16x4", "unstructured-1x4"]
#: Formats the issue lists whose kernels do not exist yet; reported, not silently dropped.
NOT_IMPLEMENTED: list[str] = []
#: Formats stored in blocks whose pattern is nevertheless unstructured (the blocks hold the zeros they cover).
UNSTRUCTURED_BLOCKS = ("unstructured-1x4",)


def make_weight(fmt: str, M: int, K: int, sparsity: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random weight and keep-mask with the pattern ``fmt`` is meant for."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(M, K, generator=g)
    if fmt.startswith("bsr"):
        r, c = _block(fmt)
        keep = (torch.rand(M // r, K // c, generator=g) >= sparsity).repeat_interleave(r, 0).repeat_interleave(c, 1)
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


def _block(fmt: str) -> tuple[int, int]:
    """``"bsr16x16"`` -> (16, 16), ``"bsr1x4"`` and ``"unstructured-1x4"`` -> (1, 4)."""
    r, c = fmt.removeprefix("unstructured-").removeprefix("bsr").split("x")
    return int(r), int(c)


def _ours(fmt: str, w: torch.Tensor, keep: torch.Tensor):
    from hf_sparse.formats import to_format

    if fmt.startswith("bsr"):
        return to_format("bsr", w, keep, block=_block(fmt))
    if fmt == "2:4":
        return to_format("nm", w, keep, n=2, m=4)
    return to_format(fmt, w, keep)


def _qbsr_dynamic(w: torch.Tensor, keep: torch.Tensor, block: tuple[int, int]):
    """int8 weights in ``block`` blocks with dynamic int8 activations (each token's own 8-bit range per call)."""
    from hf_sparse.formats import QBSR

    q = QBSR.from_dense(w, keep, block=block)
    return QBSR(q.crow_indices, q.col_indices, q.values, q.scales, q.shape, q.block, activation="dynamic")


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
    ``hf_sparse_<format>_float32``). ``dtype="int8-dynamic"`` (1x4 formats): int8 weights stored in 1x4 blocks
    and int8 activations quantised per call, run through ``QuantLinear``; also compared with our weight-only int8
    CSR of the same pattern (``hf_sparse_qcsr_int8``)."""
    from hf_sparse.formats import QBSR, QCSR, QNM
    from hf_sparse.nn.quant import QuantLinear
    from hf_sparse.ops import sparse_linear

    if dtype not in DTYPES.get(fmt, ("float32",)):
        raise ValueError(f"{fmt} cases exist for dtypes {DTYPES.get(fmt, ('float32',))}, got {dtype}")
    torch.set_num_threads(threads)
    w, keep = make_weight(fmt, M, K, sparsity)
    x = torch.randn(N, K)
    if dtype == "int8-dynamic":

        def build():
            return QuantLinear(_qbsr_dynamic(w, keep, _block(fmt)))

        def call(layer):
            return layer(x)

        layer = build()
        stored = layer.weight_format()
        # The layer's own arithmetic: the input rounded to each token's 8-bit grid, times the dequantised weight.
        ref = torch.nn.functional.linear(stored.quantize_input(x), stored.to_dense())
        got = call(layer)
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
    else:
        if dtype == "int8":

            def build():
                if fmt.startswith("bsr"):
                    return QBSR.from_dense(w, keep, block=_block(fmt))
                return QNM.from_dense(w, keep, n=2, m=4) if fmt == "2:4" else QCSR.from_dense(w, keep)

        else:

            def build():
                return _ours(fmt, w, keep)

        def call(weight):
            return sparse_linear(weight, x)

        stored = build()
        # Correctness first: a fast wrong kernel is not a result (int8: against the dequantised weight).
        ref = torch.nn.functional.linear(x, stored.to_dense() if dtype == "int8" else w)
        torch.testing.assert_close(sparse_linear(stored, x), ref, rtol=1e-4, atol=1e-3)

    ours_w = [build() for _ in range(_copies(stored.nbytes, cold))]
    calls: dict[str, Callable[[int], object]] = {"ours": lambda i: call(ours_w[i % len(ours_w)])}
    # Every dense configuration of this machine, each checked against fp32 on this case's input first.
    dense = dense_linear_baselines(w, example=x, copies=lambda nbytes: _copies(nbytes, cold))
    calls.update(dense.timed(x))
    if dtype == "int8":
        f32_w = [_ours(fmt, w, keep) for _ in range(_copies(_ours(fmt, w, keep).nbytes, cold))]
        key = "hf_sparse_" + ("nm" if fmt == "2:4" else "bsr" if fmt.startswith("bsr") else "csr") + "_float32"
        calls[key] = lambda i: sparse_linear(f32_w[i % len(f32_w)], x)
    elif dtype == "int8-dynamic":
        q_w = [QCSR.from_dense(w, keep) for _ in range(_copies(QCSR.from_dense(w, keep).nbytes, cold))]
        calls["hf_sparse_qcsr_int8"] = lambda i: sparse_linear(q_w[i % len(q_w)], x)
    with warnings.catch_warnings():  # torch's "sparse support is in beta" notices
        warnings.simplefilter("ignore", UserWarning)
        if fmt.startswith("bsr") and _block(fmt)[0] == _block(fmt)[1]:  # torch's BSR matmul takes square blocks
            b = _block(fmt)
            t_bsr = w.to_sparse_bsr(b)
            n_bytes = t_bsr.values().numel() * 4 + t_bsr.col_indices().numel() * 8
            bsr_w = [w.to_sparse_bsr(b) for _ in range(_copies(n_bytes, cold))]
            calls["torch_bsr"] = lambda i: (bsr_w[i % len(bsr_w)] @ x.t()).t()
        else:
            n_bytes = int(keep.sum()) * 12  # torch CSR: fp32 values + int64 column indices
            csr_w = [w.to_sparse_csr() for _ in range(_copies(n_bytes, cold))]
            calls["torch_csr"] = lambda i: (csr_w[i % len(csr_w)] @ x.t()).t()
        with torch.inference_mode():
            times = interleave(calls, rounds, block=MODEL_BLOCK)
    ours_s, baselines, speedup = summarize(times)
    nnz = int(keep.sum())
    suffix = {"float32": "", "int8": "-int8", "int8-dynamic": "-int8-dynamic"}[dtype]
    record = {
        "name": (
            f"{fmt}{suffix} {M}x{K} N={N} {round(100 * nnz / (M * K))}% dense {'cold' if cold else 'hot'} t={threads}"
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
            "block": MODEL_BLOCK,
        },
        "ours_s": ours_s,
        "baselines_s": baselines,
        "speedup": speedup,
        "stored_bytes": stored.nbytes,
        "gbps": (stored.nbytes + x.numel() * 4 + M * N * 4) / ours_s / 1e9,
        "gflops": 2 * nnz * N / ours_s / 1e9,
    }
    if fmt in UNSTRUCTURED_BLOCKS:
        record["params"]["pattern"] = "unstructured"
    return add_dense_comparison(record, dense)


#: The quick subset: 3072x768 at 90% for N = 1, 16, 128 in csr, qcsr (int8) and qbsr 1x4 with dynamic int8
#: activations, plus one case of each other format.
QUICK = [
    ("csr", 3072, 768, 16, 0.9, True, "float32"),
    ("csr", 3072, 768, 1, 0.9, True, "float32"),
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
    ("unstructured-1x4", 3072, 768, 1, 0.9, True, "int8-dynamic"),
    ("unstructured-1x4", 3072, 768, 16, 0.9, True, "int8-dynamic"),
    ("unstructured-1x4", 3072, 768, 128, 0.9, True, "int8-dynamic"),
    ("bsr1x4", 3072, 768, 1, 0.9, True, "int8-dynamic"),
    ("bsr1x4", 3072, 768, 16, 0.9, True, "int8-dynamic"),
    ("bsr1x4", 3072, 768, 16, 0.9, False, "int8-dynamic"),
    ("bsr1x4", 3072, 768, 128, 0.9, True, "int8-dynamic"),
    ("bsr16x4", 3072, 768, 1, 0.9, True, "int8-dynamic"),
    ("bsr16x4", 3072, 768, 16, 0.9, True, "int8-dynamic"),
    ("bsr16x4", 3072, 768, 128, 0.9, True, "int8-dynamic"),
]
#: Value dtypes per format: int8 values (with per-row scales) exist for CSR, BSR and 2:4; 1x4 blocks of int8 values
#: with dynamic int8 activations for the unstructured pattern.
DTYPES = {
    "bsr1x4": ("int8-dynamic",),
    "bsr16x4": ("int8-dynamic",),
    "unstructured-1x4": ("int8-dynamic",),
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
        "table_markdown": dense_table(cases),
    }
