"""Sparse training step benchmark: forward + backward of one sparse Linear layer against dense
(``hf-sparse bench train-step``).

Ours: ``SparseLinear`` (CSR) — forward SpMM, input gradient through the transposed kernel, value gradient by SDDMM
at stored positions only. Baselines, same process, interleaved: a dense ``nn.Linear`` (what a pruning callback
trains: full dense weight gradient), and a dense layer whose weight gradient is masked afterwards (the dense
equivalent of ours). Each step: forward, backward of a fixed upstream gradient, gradients reset. Correctness first:
our value and input gradients equal the masked dense ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hf_sparse.benchmarking import interleave, summarize

SUITE = "train-step"
SHAPES = [(3072, 768), (768, 3072), (1536, 384)]
NS = [16, 128]
SPARSITIES = [0.8, 0.9, 0.95]


def run_case(M: int, K: int, N: int, sparsity: float, *, threads: int, rounds: int) -> dict:
    from hf_sparse.nn import SparseLinear

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    dense = nn.Linear(K, M)
    with torch.no_grad():
        keep = torch.rand(M, K, generator=g) >= sparsity
        dense.weight.mul_(keep)
        keep = dense.weight != 0  # the stored positions: an initial weight can itself be exactly 0
    sparse = SparseLinear.from_linear(dense, "csr")
    x = torch.randn(N, K, generator=g, requires_grad=True)
    upstream = torch.randn(N, M, generator=g)

    def step(layer):
        out = layer(x)
        out.backward(upstream)

    def masked_dense_step():
        step(dense)
        dense.weight.grad.mul_(keep)

    # Correctness first: value and input gradients equal the masked dense gradients.
    step(sparse)
    sparse_grads = (sparse.weight_values.grad.clone(), x.grad.clone())
    x.grad = None
    masked_dense_step()
    torch.testing.assert_close(sparse_grads[0], dense.weight.grad[keep], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(sparse_grads[1], x.grad, rtol=1e-4, atol=1e-3)

    def reset(*layers):
        x.grad = None
        for layer in layers:
            layer.zero_grad(set_to_none=True)

    calls: dict[str, Callable[[int], object]] = {
        "ours": lambda i: (reset(sparse), step(sparse)),
        "torch_dense": lambda i: (reset(dense), step(dense)),
        "torch_dense_masked": lambda i: (reset(dense), masked_dense_step()),
    }
    times = interleave(calls, rounds)
    ours_s, baselines, speedup = summarize(times)
    return {
        "name": f"train-step csr {M}x{K} N={N} {round(sparsity * 100)}% t={threads}",
        "params": {
            "M": M,
            "K": K,
            "N": N,
            "sparsity": sparsity,
            "format": "csr",
            "dtype": "float32",
            "threads": threads,
        },
        "ours_s": ours_s,
        "baselines_s": baselines,
        "speedup": speedup,
    }


def run(quick: bool = False, threads: int = 1, rounds: int | None = None, progress: Callable | None = None) -> dict:
    """Run the suite and return the JSON-ready record."""
    from hf_sparse.machine import machine_info
    from hf_sparse.ops import kernel_status, load_kernels

    load_kernels()
    grid = (
        [(3072, 768, 128, 0.9), (3072, 768, 16, 0.9)]
        if quick
        else [(M, K, N, s) for (M, K) in SHAPES for N in NS for s in SPARSITIES]
    )
    rounds = rounds or (20 if quick else 30)
    cases = []
    for i, (M, K, N, s) in enumerate(grid):
        case = run_case(M, K, N, s, threads=threads, rounds=rounds)
        cases.append(case)
        if progress:
            progress(i + 1, len(grid), case)
    return {"suite": SUITE, "machine": machine_info(), "kernels": kernel_status(), "cases": cases}
