"""End-to-end benchmark: the real all-MiniLM-L6-v2 encoder, pruned and sparsified, against the dense model
(``hf-sparse bench minilm``).

One forward pass at batch 1, sequence 128 (a real Rotten Tomatoes review, padded to 128 tokens), under
``torch.inference_mode``. Ours: the model pruned to 80% / 90% (global magnitude over the encoder's Linear layers)
in these ways (``MODES``): unstructured and converted by ``sparsify_`` (format per layer from the cost model,
batch_hint=128); and in 1x4 or 16x4 blocks stored as int8 codes with dynamic int8 inputs (``qbsr``, integer
kernels); and ``fastest``: unstructured, converted by ``sparsify_(numerics="fastest")`` (each layer the fastest
option of this machine, dense or sparse, in fp32, bf16 or dynamic int8). ``batches`` (``hf-sparse bench minilm
--batch 1 32``) repeats every case at other batch sizes; ``checkpoints`` (``--checkpoint PATH``) adds saved
compressed models (e.g. a distilled student), their encoder timed against the same dense baselines.
Baselines, same process, interleaved: every dense configuration of the model on this machine
(:func:`hf_sparse.benchmarking.dense_model_baselines`): ``fp32``; ``bf16`` (a bf16 copy, where the CPU has native
bf16); ``torch-dynamic-int8`` (``torch.ao``); ``onnxruntime-dynamic-int8`` (exported with
``torch.onnx.export(dynamo=False)`` and quantised by onnxruntime, where ``hf-sparse[bench]`` is installed);
``openvino`` and ``openvino-int8-weights`` (``openvino.convert_model``, the CPU plugin's default precision), each
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
    MODEL_BLOCK,
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


def _inputs(batch: int = 1):
    from transformers import AutoTokenizer

    from hf_sparse.data import load_rotten_tomatoes, minilm_l6_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_l6_path())
    texts = load_rotten_tomatoes(seed=42)["test"][:batch]["text"]
    return dict(tokenizer(texts, padding="max_length", max_length=SEQ, truncation=True, return_tensors="pt"))


#: Ways of making "ours": ``auto`` prunes unstructured weights and lets ``sparsify_``'s cost model pick each layer's
#: format (fp32 values); ``int8-1x4`` / ``int8-16x4`` prune 1x4 / 16x4 blocks and store them as int8 codes with
#: dynamic int8 inputs (``qbsr``, ``activation="dynamic"``), which run on the integer (VNNI) kernels.
MODES = ("auto", "int8-1x4", "int8-16x4", "fastest")
#: Relative error (||ours - pruned fp32|| / ||pruned fp32||) allowed by the int8 mode's 8-bit weights and inputs.
INT8_REL_ERR = 5e-2


def _ours(dense, batch, sparsity: float, mode: str):
    import hf_sparse

    pruned = copy.deepcopy(dense)
    tokens = SEQ * batch["input_ids"].shape[0]
    if mode in ("auto", "fastest"):
        hf_sparse.apply_(pruned, hf_sparse.PruningConfig(sparsity=sparsity))
        sparse = copy.deepcopy(pruned)
        numerics = "fastest" if mode == "fastest" else "keep"
        decisions = hf_sparse.sparsify_(sparse, batch_hint=tokens, numerics=numerics, progress=False)
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
    elif mode == "fastest":  # bf16 or int8 layers: the tolerance of the looser of the two
        rel = float((got - expected).norm() / expected.norm())
        assert rel <= INT8_REL_ERR, f"the fastest-numerics model differs from the pruned fp32 model by {rel:.3g}"
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
        times = interleave(calls, rounds, block=MODEL_BLOCK)
    ours_s, medians, speedup = summarize(times)
    formats = Counter(d.choice.chosen if mode == "fastest" else d.choice.format for d in decisions.values())
    n = batch["input_ids"].shape[0]
    record = {
        "name": f"minilm-l6 batch={n} seq={SEQ} {round(sparsity * 100)}% pruned {mode} t={threads}",
        "params": {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "batch": n,
            "seq": SEQ,
            "sparsity": sparsity,
            "dtype": "float32",
            "threads": threads,
            "formats": dict(formats),
            "mode": mode,
            "block": MODEL_BLOCK,
            "rel_err_vs_pruned_fp32": rel,
        },
        "ours_s": ours_s,
        "baselines_s": medians,
        "speedup": speedup,
    }
    return add_dense_comparison(record, baselines)


def checkpoint_case(path: str, batch, *, threads: int, rounds: int, baselines: DenseBaselines) -> dict:
    """A saved compressed model (a folder written by ``save_pretrained`` / ``hf-sparse compress``, e.g. a distilled
    student stored with ``checkpoint.numerics``), its encoder timed against the dense baselines on ``batch``."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    import hf_sparse  # noqa: F401  (registers the checkpoint format)

    torch.set_num_threads(threads)
    config = AutoConfig.from_pretrained(path)
    loader = (
        AutoModelForSequenceClassification
        if config.architectures and any(a.endswith("ForSequenceClassification") for a in config.architectures)
        else AutoModel
    )
    model = loader.from_pretrained(path).eval()
    encoder = getattr(model, model.base_model_prefix, model)  # the encoder, as the dense baselines time it
    calls: dict[str, Callable[[int], object]] = {"ours": lambda i: encoder(**batch), **baselines.timed(batch)}
    with torch.inference_mode():
        times = interleave(calls, rounds, block=MODEL_BLOCK)
    ours_s, medians, speedup = summarize(times)
    formats = Counter(
        getattr(m, "format", "dense")
        for m in encoder.modules()
        if isinstance(m, torch.nn.Linear) or hasattr(m, "format")
    )
    n = batch["input_ids"].shape[0]
    record = {
        "name": f"checkpoint {path} batch={n} seq={SEQ} t={threads}",
        "params": {
            "checkpoint": str(path),
            "batch": n,
            "seq": SEQ,
            "layers": config.num_hidden_layers,
            "threads": threads,
            "formats": dict(formats),
            "mode": "checkpoint",
            "block": MODEL_BLOCK,
        },
        "ours_s": ours_s,
        "baselines_s": medians,
        "speedup": speedup,
    }
    return add_dense_comparison(record, baselines)


def run(
    quick: bool = False,
    threads: int = 1,
    rounds: int | None = None,
    progress: Callable | None = None,
    batches: tuple[int, ...] = (1,),
    checkpoints: tuple[str, ...] = (),
) -> dict:
    """Run the suite and return the JSON-ready record: every mode and sparsity at each batch size of ``batches``
    (reviews of the test split, padded to 128 tokens), and each saved model of ``checkpoints``."""
    from transformers import AutoModel

    from hf_sparse.data import minilm_l6_path
    from hf_sparse.machine import machine_info
    from hf_sparse.ops import kernel_status, load_kernels

    load_kernels()
    torch.set_num_threads(threads)
    dense = AutoModel.from_pretrained(minilm_l6_path()).eval()
    cases, skipped = [], {}
    grid = [(b, mode, sparsity) for b in batches for mode in MODES for sparsity in SPARSITIES]
    grid += [(b, "checkpoint", path) for b in batches for path in checkpoints]
    by_batch = {}
    for i, (b, mode, what) in enumerate(grid):
        if b not in by_batch:
            batch = _inputs(b)
            by_batch[b] = (batch, dense_model_baselines(dense, batch))
            skipped.update({f"{k} (batch {b})": v for k, v in by_batch[b][1].skipped.items()})
        batch, baselines = by_batch[b]
        # a batch of 32 takes about 32x as long per call: fewer rounds keep the suite's time in bounds
        n_rounds = rounds or max(5, (15 if quick else 40) // max(1, b // 4))
        if mode == "checkpoint":
            case = checkpoint_case(what, batch, threads=threads, rounds=n_rounds, baselines=baselines)
        else:
            case = run_case(dense, batch, what, threads=threads, rounds=n_rounds, baselines=baselines, mode=mode)
        cases.append(case)
        if progress:
            progress(i + 1, len(grid), case)
    return {
        "suite": SUITE,
        "machine": machine_info(),
        "kernels": kernel_status(),
        "baselines_missing": [f"{k}: {v}" for k, v in skipped.items()],
        "cases": cases,
        "table_markdown": dense_table(cases),
    }
