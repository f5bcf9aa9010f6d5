"""Windowed attention benchmark: our block-sparse kernel against the best baselines in the same process
(``hf-sparse bench attention``).

Cases: S = 512 ... 8192 tokens, sliding window of ±128 / ±256 positions, 12 heads, head_dim 64, batch 1, float32,
bidirectional (and causal for the key case). Baselines, interleaved call by call after a correctness check:
``sdpa_full`` (``scaled_dot_product_attention`` over every key: what a model without a sparse path runs),
``sdpa_band`` (SDPA with the band as a dense boolean mask), ``sdpa_chunked`` (Longformer-style: query chunks of one
window, each against the keys its band can reach, with the band mask inside the chunk) and ``flex_compiled``
(``torch.compile(flex_attention)`` with a ``create_block_mask`` sliding window; its compile time is reported
separately, not in the ratio). Ours is timed with its block layout cached, as a model's layers use it (the layout's
build time is reported per case).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hf_sparse.benchmarking import interleave, measure_limits, summarize

SUITE = "attention"
LENGTHS = [512, 1024, 2048, 4096, 8192]
WINDOWS = [128, 256]
HEADS, HEAD_DIM = 12, 64
QUICK = [(4096, 128, False), (1024, 128, False), (4096, 128, True)]
#: Baselines whose cost grows with S^2: skipped above this length (minutes per call; reported as skipped).
FULL_MAX_S = 8192


def _band(S: int, window: int, causal: bool) -> torch.Tensor:
    i = torch.arange(S)
    d = i.unsqueeze(1) - i.unsqueeze(0)
    m = d.abs() <= window
    return m & (d >= 0) if causal else m


def _chunked(q, k, v, window: int, causal: bool):
    """Longformer-style chunks: queries in chunks of `window`, each against keys [start - window, end + window)."""
    S = q.shape[2]
    out = torch.empty_like(q)
    for s0 in range(0, S, window):
        s1 = min(S, s0 + window)
        k0, k1 = max(0, s0 - window), min(S, s1 + (0 if causal else window))
        qi = torch.arange(s0, s1).unsqueeze(1)
        ki = torch.arange(k0, k1).unsqueeze(0)
        m = (qi - ki).abs() <= window
        if causal:
            m = m & (ki <= qi)
        out[:, :, s0:s1] = F.scaled_dot_product_attention(q[:, :, s0:s1], k[:, :, k0:k1], v[:, :, k0:k1], attn_mask=m)
    return out


def _flex(S: int, window: int, causal: bool):
    """(compiled flex_attention callable, its block mask, compile seconds) or (None, None, reason)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def band(b, h, q_idx, kv_idx):
            d = q_idx - kv_idx
            ok = (d <= window) & (d >= -window)
            return ok & (d >= 0) if causal else ok

        # A fresh compile per case: one shape per case, and dynamo stops compiling after its recompile limit
        # (the unfused eager fallback it then runs is not the baseline users get).
        torch._dynamo.reset()
        block_mask = create_block_mask(band, B=None, H=None, Q_LEN=S, KV_LEN=S, device="cpu")
        fn = torch.compile(flex_attention, dynamic=False)
        return fn, block_mask, None
    except Exception as exc:  # flex attention needs a working inductor/C++ toolchain
        return None, None, f"{type(exc).__name__}: {exc}"


def run_case(S: int, window: int, causal: bool, *, threads: int, rounds: int) -> dict:
    from hf_sparse.attention import SlidingWindow, build_layout, sparse_attention

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(S + window)
    q, k, v = (torch.randn(1, HEADS, S, HEAD_DIM, generator=g) for _ in range(3))
    pattern = SlidingWindow(window)
    t0 = time.perf_counter()
    layout = build_layout(pattern, S, S, causal=causal)
    layout_s = time.perf_counter() - t0
    band = _band(S, window, causal)
    # Correctness first: ours against SDPA with the band mask.
    ours_out = sparse_attention(q, k, v, pattern, causal=causal, backend="cpu")
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
    torch.testing.assert_close(ours_out, ref, rtol=1e-4, atol=1e-4)
    calls: dict[str, Callable[[int], object]] = {
        "ours": lambda i: sparse_attention(q, k, v, pattern, causal=causal, backend="cpu"),
        "sdpa_band": lambda i: F.scaled_dot_product_attention(q, k, v, attn_mask=band),
        "sdpa_chunked": lambda i: _chunked(q, k, v, window, causal),
    }
    if S <= FULL_MAX_S:
        calls["sdpa_full"] = lambda i: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(_chunked(q, k, v, window, causal), ref, rtol=1e-4, atol=1e-4)
    flex, block_mask, why = _flex(S, window, causal)
    compile_s = None
    if flex is not None:
        t0 = time.perf_counter()
        try:
            flex_out = flex(q, k, v, block_mask=block_mask)
            compile_s = time.perf_counter() - t0
            torch.testing.assert_close(flex_out, ref, rtol=1e-4, atol=1e-4)
            calls["flex_compiled"] = lambda i: flex(q, k, v, block_mask=block_mask)
        except Exception as exc:
            why = f"{type(exc).__name__}: {str(exc)[:300]}"
    warmup = 1 if S >= 4096 else 3
    times = interleave(calls, rounds, warmup=warmup)
    ours_s, baselines, speedup = summarize(times)
    allowed = int(band.sum())
    useful = 4 * allowed * HEAD_DIM * HEADS  # QK^T and PV multiply-adds over the allowed pairs, x2 flops each
    return {
        "name": f"S={S} window=±{window}{' causal' if causal else ''} heads={HEADS} d={HEAD_DIM} t={threads}",
        "params": {"S": S, "window": window, "heads": HEADS, "d": HEAD_DIM, "threads": threads, "causal": causal},
        "ours_s": ours_s,
        "baselines_s": baselines,
        "speedup": speedup,
        "layout_build_s": layout_s,
        "layout_tiles": layout.tiles,
        "layout_density": layout.density(),
        "computed_fraction_useful": allowed / (layout.tiles * layout.block_q * 64),
        "flex_compile_s": compile_s,
        "flex_missing": why,
        "gflops": useful / ours_s / 1e9,
    }


def grid() -> list[tuple[int, int, bool]]:
    return [(S, w, False) for S in LENGTHS for w in WINDOWS] + [(4096, 128, True)]


def run(quick: bool = False, threads: int = 1, rounds: int | None = None, progress: Callable | None = None) -> dict:
    """Run the suite and return the JSON-ready record."""
    from hf_sparse.machine import machine_info
    from hf_sparse.ops import kernel_status, load_kernels

    load_kernels()
    limits = measure_limits(threads)
    cases_in = QUICK if quick else grid()
    cases = []
    for i, (S, w, causal) in enumerate(cases_in):
        r = rounds or (5 if S >= 4096 else 10)
        case = run_case(S, w, causal, threads=threads, rounds=r)
        case["pct_peak"] = 100 * case["gflops"] / limits["gflops"]
        cases.append(case)
        if progress:
            progress(i + 1, len(cases_in), case)
    return {
        "suite": SUITE,
        "machine": machine_info(),
        "kernels": kernel_status(),
        "limits": limits,
        "not_implemented": [],
        "cases": cases,
        "notes": "useful GFLOP/s counts 4 * allowed pairs * d * heads; pct_peak is against the sgemm measured here",
    }
