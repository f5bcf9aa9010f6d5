"""Long-context quality and speed of windowed attention on a real decoder (``hf-sparse bench long-context``).

Model: SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query / 3 key-value heads of 64, float32; the
packaged 4-bit GGUF converted once by :func:`hf_sparse.data.smollm2_path`). Documents: whole real convention
speeches from :func:`hf_sparse.data.load_long_documents` (2-4k tokens each, one speaker each, no concatenation);
``--quick`` uses the first one truncated to 2048 tokens, the full suite the first four whole.

For each document, batch 1, no padding, no BOS (SmolLM2's tokenizer adds none), under ``torch.inference_mode``:

- **Perplexity**, token level: the whole document in one forward pass (no sliding evaluation), the mean negative
  log-likelihood of tokens 2..S given everything before them, exponentiated. With full attention (``sdpa``) and
  with ``attn_implementation="hf_sparse"`` at window 256 and 512 (causal: each query sees itself and the previous
  ``window`` positions), each with and without 4 global tokens at positions 0-3 ("attention sinks": every query
  also sees them).
- **Speed**, end to end: the same forward pass (all logits), ours (window + sinks) against ``sdpa`` full attention
  (torch's causal flash kernel on CPU, the best full-attention baseline), in one process, interleaved call by call
  (``sdpa``, window 256, window 512, then again) for several rounds; speedup = sdpa time / ours time per round,
  median and min-max reported. Switching the model's attention implementation between calls (well under a
  millisecond) is inside the timed region of both. The perplexity passes just before serve as warm-up: every timed
  forward has already run once at the same length.

Correctness first: with a window at least as long as the document (the pattern then allows everything the causal
mask allows), ours must give the logits ``sdpa`` gives within 1e-3 absolute. The record also says whether our C++
kernel ran (a profiler count of ``hf_sparse::sparse_attention`` calls in one short forward pass, and
:func:`hf_sparse.attention.explain` for the model's query/key/value shapes): a fallback to the PyTorch reference
would make the timings meaningless.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from hf_sparse.benchmarking import interleave, summarize

SUITE = "long-context"
WINDOWS = (256, 512)
SINKS = (0, 1, 2, 3)
QUICK_TOKENS = 2048
FULL_DOCUMENTS = 4
LOGIT_ATOL = 1e-3


def _perplexity(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """exp(mean NLL) of ids[1:] under logits[:-1] (one sequence)."""
    nll = torch.nn.functional.cross_entropy(logits[0, :-1].double(), ids[0, 1:], reduction="mean")
    return math.exp(float(nll))


def _kernel_calls(model, ids: torch.Tensor) -> int:
    """How many times our C++ attention op runs in one forward pass of ``model`` on ``ids``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(ids)
    return sum(e.count for e in prof.key_averages() if e.key == "hf_sparse::sparse_attention")


def run(quick: bool = False, threads: int = 1, rounds: int | None = None, progress: Callable | None = None) -> dict:
    """Run the suite and return the JSON-ready record."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_sparse.attention import SparseAttentionConfig, apply_sparse_attention_, explain
    from hf_sparse.data import load_long_documents, smollm2_path
    from hf_sparse.machine import machine_info
    from hf_sparse.ops import kernel_status, load_kernels

    load_kernels()
    torch.set_num_threads(threads)
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cfg = model.config
    docs = load_long_documents(tokenizer)
    docs = docs[:1] if quick else docs[:FULL_DOCUMENTS]
    rounds = rounds or 3

    configs = {"full": None}
    for w in WINDOWS:
        configs[f"window{w}+sinks"] = SparseAttentionConfig(window=w, global_positions=SINKS)
        configs[f"window{w}"] = SparseAttentionConfig(window=w)

    def use(name: str) -> None:
        if configs[name] is None:
            model.set_attn_implementation("sdpa")
        else:
            apply_sparse_attention_(model, configs[name])

    # Which backend runs: explain() on the model's shapes, and the kernel op counted in a short forward pass.
    heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = torch.zeros(1, heads, 64, head_dim)
    kv = torch.zeros(1, kv_heads, 64, head_dim)
    first_ids = tokenizer(docs[0]["text"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        use(f"window{WINDOWS[0]}+sinks")
        calls_per_forward = _kernel_calls(model, first_ids[:, :256])
    path_info = {
        "explain": explain(q, kv, kv),
        "kernel_calls_per_forward": calls_per_forward,
        "attention_layers": cfg.num_hidden_layers,
    }

    documents, cases, correctness = [], [], None
    total = len(docs) * len(WINDOWS)
    for di, doc in enumerate(docs):
        ids = tokenizer(doc["text"], add_special_tokens=False, return_tensors="pt")["input_ids"]
        if quick:
            ids = ids[:, :QUICK_TOKENS]
        S = ids.shape[1]
        ppl = {}
        with torch.inference_mode():
            for name in configs:
                use(name)
                logits = model(ids).logits
                ppl[name] = _perplexity(logits, ids)
                if name == "full" and correctness is None:
                    # Correctness first: a window covering the whole document must reproduce sdpa's logits.
                    apply_sparse_attention_(model, SparseAttentionConfig(window=S))
                    ours_logits = model(ids).logits
                    diff = float((ours_logits - logits).abs().max())
                    torch.testing.assert_close(ours_logits, logits, rtol=0, atol=LOGIT_ATOL)
                    correctness = {
                        "document": doc["title"],
                        "S": S,
                        "window": S,
                        "max_abs_logit_diff": diff,
                        "atol": LOGIT_ATOL,
                        "max_abs_logit": float(logits.abs().max()),
                    }
                    del ours_logits
                del logits
        documents.append(
            {"title": doc["title"], "speaker": doc["speaker"], "tokens": doc["tokens"], "S": S, "perplexity": ppl}
        )

        def timed(name: str, ids: torch.Tensor = ids) -> Callable[[int], object]:
            def call(i: int) -> None:
                use(name)
                model(ids)

            return call

        calls = {"sdpa_full": timed("full")}
        calls.update({f"ours_w{w}": timed(f"window{w}+sinks") for w in WINDOWS})
        with torch.inference_mode():
            times = interleave(calls, rounds, warmup=0)  # the perplexity passes above were the warm-up
        for wi, w in enumerate(WINDOWS):
            ours_s, baselines, speedup = summarize({"ours": times[f"ours_w{w}"], "sdpa_full": times["sdpa_full"]})
            case = {
                "name": f"smollm2-135m S={S} window={w} sinks={len(SINKS)} t={threads} ({doc['speaker']})",
                "params": {
                    "model": "HuggingFaceTB/SmolLM2-135M-Instruct (float32 from the packaged Q4_1 GGUF)",
                    "S": S,
                    "window": w,
                    "globals": list(SINKS),
                    "document": doc["title"],
                    "batch": 1,
                    "dtype": "float32",
                    "threads": threads,
                    "hot_or_cold": "cold",  # 540 MB of weights per forward pass: far beyond the caches
                    "rounds": rounds,
                },
                "ours_s": ours_s,
                "baselines_s": baselines,
                "speedup": speedup,
                "rounds_s": {"ours": times[f"ours_w{w}"], "sdpa_full": times["sdpa_full"]},
                "perplexity": {
                    "full": ppl["full"],
                    "ours": ppl[f"window{w}+sinks"],
                    "ours_without_globals": ppl[f"window{w}"],
                },
            }
            cases.append(case)
            if progress:
                progress(di * len(WINDOWS) + wi + 1, total, case)
    model.set_attn_implementation("sdpa")
    return {
        "suite": SUITE,
        "machine": machine_info(),
        "kernels": kernel_status(),
        "attention_path": path_info,
        "correctness": correctness,
        "documents": documents,
        "baselines_missing": [],
        "cases": cases,
    }
