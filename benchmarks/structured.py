"""End-to-end benchmark of structured pruning: the real all-MiniLM-L6-v2 encoder with half of every layer's attention
heads and half of its FFN neurons removed (50% of the encoder's Linear parameters), against the dense model
(``hf-sparse bench structured``).

Ours: the model pruned with ``PruningConfig(granularity="head" | "neuron", sparsity=0.5, scope="layer")``
(magnitude; which units go does not change the speed, only the sizes do, and these are the sizes of the
``minilm-structured`` recipe) and shrunk physically by ``shrink_masked_units_`` — a smaller dense model run by
stock PyTorch. Baselines, same process, interleaved: the dense fp32 model, and ``torch.ao`` dynamic int8 of the dense
model. Forward passes at batch 1 and batch 32, sequence 128 (real Rotten Tomatoes reviews padded to 128 tokens),
under ``torch.inference_mode``. Correctness first: the shrunk model's output must equal the masked full-size
model's within fp32 tolerance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from hf_sparse.benchmarking import dynamic_int8, interleave, summarize

SUITE = "structured"
SEQ = 128
BATCHES = [1, 32]


def _inputs(batch: int):
    from transformers import AutoTokenizer

    from hf_sparse.data import load_rotten_tomatoes, minilm_l6_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_l6_path())
    texts = load_rotten_tomatoes(seed=42)["test"]["text"][:batch]
    return tokenizer(texts, padding="max_length", max_length=SEQ, truncation=True, return_tensors="pt")


def shrunk_model(dense):
    """``dense`` with 50% of each layer's heads and FFN neurons removed physically, and its masked twin."""
    from hf_sparse.pruning import PruningConfig, prune_, shrink_masked_units_

    masked = copy.deepcopy(dense)
    for granularity in ("head", "neuron"):
        prune_(masked, PruningConfig(granularity=granularity, sparsity=0.5, scope="layer"), shrink=False)
    shrunk = copy.deepcopy(masked)
    shrink_masked_units_(shrunk)
    return shrunk, masked


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def run_case(dense, shrunk, int8, batch, *, threads: int, rounds: int) -> dict:
    torch.set_num_threads(threads)
    calls: dict[str, Callable[[int], object]] = {
        "ours": lambda i: shrunk(**batch),
        "torch_dense": lambda i: dense(**batch),
    }
    if int8 is not None:
        calls["torch_dynamic_int8"] = lambda i: int8(**batch)
    with torch.inference_mode():
        times = interleave(calls, rounds)
    ours_s, baselines, speedup = summarize(times)
    n = int(batch["input_ids"].shape[0])
    encoder = [p for name, p in dense.named_parameters() if ".layer." in name]
    shrunk_encoder = [p for name, p in shrunk.named_parameters() if ".layer." in name]
    return {
        "name": f"minilm-l6 batch={n} seq={SEQ} heads+neurons 50% removed t={threads}",
        "params": {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "batch": n,
            "seq": SEQ,
            "dtype": "float32",
            "threads": threads,
            "heads_per_layer": [int(m.num_attention_heads) for m in shrunk.modules() if hasattr(m, "query")],
            "ffn_per_layer": [m.out_features for n_, m in shrunk.named_modules() if n_.endswith("intermediate.dense")],
            "encoder_params_kept": sum(p.numel() for p in shrunk_encoder) / sum(p.numel() for p in encoder),
            "params_kept": _params(shrunk) / _params(dense),
        },
        "ours_s": ours_s,
        "baselines_s": baselines,
        "speedup": speedup,
    }


def run(quick: bool = False, threads: int = 1, rounds: int | None = None, progress: Callable | None = None) -> dict:
    """Run the suite and return the JSON-ready record."""
    from transformers import AutoModel

    from hf_sparse.data import minilm_l6_path
    from hf_sparse.machine import machine_info

    torch.set_num_threads(threads)
    dense = AutoModel.from_pretrained(minilm_l6_path()).eval()
    shrunk, masked = shrunk_model(dense)
    shrunk.eval(), masked.eval()
    int8 = dynamic_int8(dense)
    rounds = rounds or (10 if quick else 30)
    cases = []
    for i, b in enumerate(BATCHES):
        batch = _inputs(b)
        with torch.inference_mode():
            torch.testing.assert_close(
                shrunk(**batch).last_hidden_state, masked(**batch).last_hidden_state, rtol=1e-4, atol=1e-4
            )
        case = run_case(dense, shrunk, int8, batch, threads=threads, rounds=rounds)
        cases.append(case)
        if progress:
            progress(i + 1, len(BATCHES), case)
    return {
        "suite": SUITE,
        "machine": machine_info(),
        "baselines_missing": [] if int8 is not None else ["torch_dynamic_int8 (torch.ao quantize_dynamic failed)"],
        "cases": cases,
    }
