"""Saved -> ``from_pretrained`` in a fresh process gives the same predictions, for every pruning granularity."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import save_file

from hf_sparse import PruningConfig, prune_, sparsify_
from hf_sparse.testing import tiny_bert_classifier

IDS = torch.arange(60).reshape(6, 10) % 128
MASK = torch.ones(6, 10, dtype=torch.long)
MASK[2, 6:] = 0

# granularity -> (PruningConfig fields, sparse storage format or None for a plain (smaller) dense model)
CASES = {
    "unstructured": (dict(sparsity=0.7), "csr"),
    "block": (dict(granularity="block", block=(4, 4), sparsity=0.75), "bsr"),
    "nm": (dict(granularity="nm", n=2, m=4, sparsity=0.5), "nm"),
    "embedding_row": (
        dict(granularity="embedding_row", embeddings=("word_embeddings",), sparsity=0.5, scope="layer"),
        "embedding",
    ),
    "head": (dict(granularity="head", sparsity=0.5, scope="layer"), None),
    "neuron": (dict(granularity="neuron", sparsity=0.5), None),
    "layer": (dict(granularity="layer", sparsity=0.5), None),
}


def _format_params(fmt: str) -> dict:
    return {"block": (4, 4)} if fmt == "bsr" else {"n": 2, "m": 4} if fmt == "nm" else {}


def test_every_granularity_reloads_with_identical_predictions_in_a_fresh_process(tmp_path):
    expected = {}
    shapes = {}
    for i, (name, (fields, fmt)) in enumerate(CASES.items()):
        model = tiny_bert_classifier(seed=10 + i, num_hidden_layers=2)
        cfg = PruningConfig(**fields)
        prune_(model, cfg)
        if fmt == "embedding":
            sparsify_(model, format="csr", embeddings=cfg.embeddings, progress=False)  # Linears: unpruned, dense
        elif fmt is not None:
            sparsify_(model, format=fmt, progress=False, **_format_params(fmt))
        with torch.no_grad():
            expected[name] = model.eval()(input_ids=IDS, attention_mask=MASK).logits.contiguous()
        model.save_pretrained(tmp_path / name)
        shapes[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "sparse": sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Sparse")}),
        }
    save_file(expected, tmp_path / "expected.safetensors")
    (tmp_path / "shapes.json").write_text(json.dumps(shapes))
    script = f"""
import json, torch, hf_sparse
from pathlib import Path
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification
root = Path({str(tmp_path)!r})
expected = load_file(root / "expected.safetensors")
shapes = json.loads((root / "shapes.json").read_text())
ids = torch.arange(60).reshape(6, 10) % 128
mask = torch.ones(6, 10, dtype=torch.long); mask[2, 6:] = 0
for name, logits in expected.items():
    m = AutoModelForSequenceClassification.from_pretrained(root / name).eval()
    assert sum(p.numel() for p in m.parameters()) == shapes[name]["params"], name
    sparse = sorted({{type(x).__name__ for x in m.modules() if type(x).__name__.startswith("Sparse")}})
    assert sparse == shapes[name]["sparse"], (name, sparse)
    with torch.no_grad():
        got = m(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got.argmax(-1), logits.argmax(-1)), name
    torch.testing.assert_close(got, logits, rtol=0, atol=0, msg=name)
    print("ok", name)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(line.split()[1] for line in result.stdout.splitlines() if line.startswith("ok")) == sorted(CASES)
    # the structured cases really are smaller, the weight-sparse ones really are stored sparse
    full = sum(p.numel() for p in tiny_bert_classifier(num_hidden_layers=2).parameters())
    assert all(shapes[name]["params"] < full for name in ("head", "neuron", "layer"))
    assert all(shapes[name]["sparse"] == [] for name in ("head", "neuron", "layer"))
    assert shapes["block"]["sparse"] == ["SparseLinear"] and shapes["embedding_row"]["sparse"] == ["SparseEmbedding"]
