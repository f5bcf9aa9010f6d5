"""End-to-end latency of quantised MiniLM-L6 (``hf-sparse bench quant``): ours int8 and sparse + int8 against fp32,
torch dynamic int8 and onnxruntime dynamic int8, side by side in one process.

One forward pass of the real all-MiniLM-L6-v2 encoder at batch 1 and 32, sequence 128 (real Rotten Tomatoes
reviews padded to 128 tokens), under ``torch.inference_mode``. Ours: the encoder's Linear layers quantised by
``hf_sparse.quantize_`` to int8 weights with one scale per output channel, after global magnitude pruning to 80% /
90% (stored as ``qcsr``: int8 values in CSR, our SpMM kernel). Baselines, interleaved call by call:

- ``torch_dense``: the fp32 model;
- ``torch_dynamic_int8``: ``torch.ao`` dynamic int8 (fbgemm, int8 activations and weights);
- ``onnxruntime_dynamic_int8``: the fp32 model exported to ONNX and quantised by
  ``onnxruntime.quantization.quantize_dynamic`` (optional: ``pip install hf-sparse[bench]``; recorded as missing
  otherwise), with ``intra_op_num_threads`` = the benchmark's threads;
- ``hf_sparse_int8_dense``: ours without pruning (``qdense``: dequantised per call into the float GEMM).

Correctness first: each quantised model's output must be close to what its own dequantised weights give.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from hf_sparse.benchmarking import MODEL_BLOCK, dynamic_int8, interleave, summarize

SUITE = "quant"
SPARSITIES = [0.8, 0.9]
BATCHES = [1, 32]
SEQ = 128


def _inputs(batch: int) -> dict:
    from transformers import AutoTokenizer

    from hf_sparse.data import load_rotten_tomatoes, minilm_l6_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_l6_path())
    texts = load_rotten_tomatoes(seed=42)["test"][:batch]["text"]
    return dict(tokenizer(texts, padding="max_length", max_length=SEQ, truncation=True, return_tensors="pt"))


def _onnxruntime_int8(model, batch: dict, threads: int, folder: Path):
    """An onnxruntime session of ``model`` with dynamic int8 weights, or the reason it is unavailable."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return None, "onnxruntime is not installed (pip install 'hf-sparse[bench]')"
    fp32, int8 = folder / "model.onnx", folder / "model-int8.onnx"

    class Encoder(torch.nn.Module):  # positional inputs, one output: what the exporter traces cleanly
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    try:
        torch.onnx.export(
            Encoder(model),
            (batch["input_ids"], batch["attention_mask"]),
            str(fp32),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}},
            dynamo=False,
        )
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    except Exception as exc:  # an exporter that cannot trace this model: the baseline is reported missing
        return None, f"ONNX export or quantisation failed: {str(exc).splitlines()[0][:200]}"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    return session, None


def _calls(ours, dense, ours_dense, torch_int8, session, batch, feeds) -> dict[str, Callable[[int], object]]:
    calls: dict[str, Callable[[int], object]] = {
        "ours": lambda i: ours(**batch),
        "torch_dense": lambda i: dense(**batch),
        "hf_sparse_int8_dense": lambda i: ours_dense(**batch),
    }
    if torch_int8 is not None:
        calls["torch_dynamic_int8"] = lambda i: torch_int8(**batch)
    if session is not None:
        calls["onnxruntime_dynamic_int8"] = lambda i: session.run(None, feeds)
    return calls


def run(quick: bool = False, threads: int = 1, rounds: int | None = None, progress: Callable | None = None) -> dict:
    """Run the suite and return the JSON-ready record."""
    from transformers import AutoModel

    import hf_sparse
    from hf_sparse.data import minilm_l6_path
    from hf_sparse.machine import machine_info
    from hf_sparse.ops import kernel_status, load_kernels
    from hf_sparse.quantization import QuantizationConfig

    load_kernels()
    torch.set_num_threads(threads)
    dense = AutoModel.from_pretrained(minilm_l6_path()).eval()
    torch_int8 = dynamic_int8(dense)
    ours_dense = copy.deepcopy(dense)
    hf_sparse.quantize_(ours_dense, QuantizationConfig(convert_format="dense"), progress=False)
    sparse_models = {}
    for s in SPARSITIES:
        m = copy.deepcopy(dense)
        hf_sparse.apply_(m, hf_sparse.PruningConfig(sparsity=s))
        hf_sparse.quantize_(m, QuantizationConfig(convert_format="csr"), progress=False)
        sparse_models[s] = m
    rounds = rounds or (10 if quick else 30)
    batches = [1] if quick else BATCHES
    missing: list[str] = []
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for bi, b in enumerate(batches):
            batch = _inputs(b)
            session, why = _onnxruntime_int8(dense, batch, threads, Path(tmp))
            if why and why not in missing:
                missing.append(f"onnxruntime_dynamic_int8: {why}")
            feeds = {k: v.numpy() for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            for si, s in enumerate(SPARSITIES):
                model = sparse_models[s]
                calls = _calls(model, dense, ours_dense, torch_int8, session, batch, feeds)
                with torch.inference_mode():
                    times = interleave(calls, rounds, block=MODEL_BLOCK)
                ours_s, baselines, speedup = summarize(times)
                case = {
                    "name": f"minilm-l6 batch={b} seq={SEQ} {round(s * 100)}% pruned int8 t={threads}",
                    "params": {
                        "model": "sentence-transformers/all-MiniLM-L6-v2",
                        "batch": b,
                        "seq": SEQ,
                        "sparsity": s,
                        "dtype": "int8",
                        "threads": threads,
                        "block": MODEL_BLOCK,
                    },
                    "ours_s": ours_s,
                    "baselines_s": baselines,
                    "speedup": speedup,
                }
                cases.append(case)
                if progress:
                    progress(bi * len(SPARSITIES) + si + 1, len(batches) * len(SPARSITIES), case)
    if torch_int8 is None:
        missing.append("torch_dynamic_int8 (torch.ao quantize_dynamic failed)")
    return {
        "suite": SUITE,
        "machine": machine_info(),
        "kernels": kernel_status(),
        "baselines_missing": missing,
        "cases": cases,
    }
