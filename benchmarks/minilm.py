"""End-to-end benchmark: the real all-MiniLM-L6-v2 encoder, pruned and sparsified, against the dense model
(``hf-sparse bench minilm``).

One forward pass at batch 1, sequence 128 (a real Rotten Tomatoes review, padded to 128 tokens), under
``torch.inference_mode``. Ours: the model pruned to 80% / 90% (global magnitude over the encoder's Linear layers)
in these ways (``MODES``): unstructured and converted by ``sparsify_`` (format per layer from the cost model,
batch_hint=128); and in 1x4 or 16x4 blocks stored as int8 codes with dynamic int8 inputs (``qbsr``, integer
kernels).
Baselines, same process, interleaved: every dense configuration of the model on this machine
(:func:`hf_sparse.benchmarking.dense_model_baselines`): ``fp32``; ``bf16`` (a bf16 copy, where the CPU has native
bf16); ``torch-dynamic-int8`` (``torch.ao``); ``onnxruntime-dynamic-int8`` (exported with
``torch.onnx.export(dynamo=False)`` and quantised by onnxruntime, where ``hf-sparse[bench]`` is installed), each
checked against fp32 first; each case records the best of them (``best_dense``, ``ratio_vs_best_dense``) next to
``ratio_vs_fp32``, with what was skipped and why. Correctness first: the sparse model's output must equal the pruned
dense model's within fp32 tolerance.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable

import torch

from hf_sparse.benchmarking import (
    DenseBaselines,
    add_dense_comparison,
    dense_model_baselines,
    dense_table,
    interleave,
    summarize,
)

SUITE = "minilm"
SPARSITIES = [0.8, 0.9]
SEQ = 128


def _inputs():
    from transformers import AutoTokenizer

    from hf_sparse.data import load_rotten_tomatoes, minilm_l6_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_l6_path())
    text = load_rotten_tomatoes(seed=42)["test"][0]["text"]
    return dict(tokenizer([text], padding="max_length", max_length=SEQ, truncation=True, return_tensors="pt"))


#: Ways of making "ours": ``auto`` prunes unstructured weights and lets ``sparsify_``'s cost model pick each layer's
#: format (fp32 values); ``int8-1x4`` / ``int8-16x4`` prune 1x4 / 16x4 blocks and store them as int8 codes with
#: dynamic int8 inputs (``qbsr``, ``activation="dynamic"``), which run on the integer (VNNI) kernels.
MODES = ("auto", "int8-1x4", "int8-16x4")
#: Relative error (||ours - pruned fp32|| / ||pruned fp32||) allowed by the int8 mode's 8-bit weights and inputs.
INT8_REL_ERR = 5e-2


def _ours(dense, batch, sparsity: float, mode: str):
    import hf_sparse

    pruned = copy.deepcopy(dense)
    if mode == "auto":
        hf_sparse.apply_(pruned, hf_sparse.PruningConfig(sparsity=sparsity))
        sparse = copy.deepcopy(pruned)
        decisions = hf_sparse.sparsify_(sparse, batch_hint=SEQ, progress=False)
    else:
        block = (1, 4) if mode == "int8-1x4" else (16, 4)
        hf_sparse.apply_(pruned, hf_sparse.PruningConfig(sparsity=sparsity, granularity="block", block=block))
        sparse = copy.deepcopy(pruned)
        decisions = hf_sparse.sparsify_(sparse, format="qbsr", block=block, activation="dynamic", progress=False)
    with torch.inference_mode():
        expected = pruned(**batch).last_hidden_state
        got = sparse(**batch).last_hidden_state
    if mode == "auto":
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        rel = 0.0
    else:
        rel = float((got - expected).norm() / expected.norm())
        assert rel <= INT8_REL_ERR, f"int8 model differs from the pruned fp32 model by {rel:.3g} (relative)"
    return sparse, decisions, rel


def run_case(
    dense, batch, sparsity: float, *, threads: int, rounds: int, baselines: DenseBaselines, mode: str = "auto"
) -> dict:
    torch.set_num_threads(threads)
    sparse, decisions, rel = _ours(dense, batch, sparsity, mode)

    calls: dict[str, Callable[[int], object]] = {"ours": lambda i: sparse(**batch), **baselines.timed(batch)}
    with torch.inference_mode():
        times = interleave(calls, rounds)
    ours_s, medians, speedup = summarize(times)
    formats = Counter(d.choice.format for d in decisions.values())
    record = {
        "name": f"minilm-l6 batch=1 seq={SEQ} {round(sparsity * 100)}% pruned {mode} t={threads}",
        "params": {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "batch": 1,
            "seq": SEQ,
            "sparsity": sparsity,
            "dtype": "float32",
            "threads": threads,
            "formats": dict(formats),
            "mode": mode,
            "rel_err_vs_pruned_fp32": rel,
        },
        "ours_s": ours_s,
        "baselines_s": medians,
        "speedup": speedup,
    }
    return add_dense_comparison(record, baselines)


def run(quick: bool = False, threads: int = 1, rounds: int | None = None, progress: Callable | None = None) -> dict:
    """Run the suite and return the JSON-ready record."""
    from transformers import AutoModel

    from hf_sparse.data import minilm_l6_path
    from hf_sparse.machine import machine_info
    from hf_sparse.ops import kernel_status, load_kernels

    load_kernels()
    torch.set_num_threads(threads)
    dense = AutoModel.from_pretrained(minilm_l6_path()).eval()
    batch = _inputs()
    baselines = dense_model_baselines(dense, batch)
    rounds = rounds or (15 if quick else 40)
    cases = []
    grid = [(mode, sparsity) for mode in MODES for sparsity in SPARSITIES]
    for i, (mode, sparsity) in enumerate(grid):
        case = run_case(dense, batch, sparsity, threads=threads, rounds=rounds, baselines=baselines, mode=mode)
        cases.append(case)
        if progress:
            progress(i + 1, len(grid), case)
    return {
        "suite": SUITE,
        "machine": machine_info(),
        "kernels": kernel_status(),
        "baselines_missing": [f"{k}: {v}" for k, v in baselines.skipped.items()],
        "cases": cases,
        "table_markdown": dense_table(cases),
    }
