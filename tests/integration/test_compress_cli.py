"""`hf-sparse compress` end to end on the real model and data, at a size that takes about a minute."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hf_sparse import SparseLinear
from hf_sparse.benchmarking import MODEL_TOLERANCES
from hf_sparse.cli import main

pytestmark = pytest.mark.real

TINY_RECIPE = """
name: ci-small
data: {train_limit: 128, validation_limit: 96, test_limit: 96, seed: 42}
dense: {max_steps: 4, batch_size: 32, learning_rate: 1e-4, logging_steps: 2}
pruned: {max_steps: 4, batch_size: 32, learning_rate: 5e-5, logging_steps: 2}
pruning: {end_step: 2, update_every: 1, embeddings: [word_embeddings]}
sparsities: [0.5, 0.8]
"""


def test_compress_writes_report_and_loadable_pruned_models(tmp_path):
    recipe = tmp_path / "small.yaml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "out"
    assert main(["compress", str(recipe), "--output", str(out)]) == 0

    report = json.loads((out / "report.json").read_text())
    assert report["data"]["train_examples"] == 128 and report["data"]["test_examples"] == 96
    assert 0 <= report["dense"]["test_accuracy"] <= 1
    assert [r["name"] for r in report["runs"]] == ["pruned-50", "pruned-80"]
    for run, target in zip(report["runs"], (0.5, 0.8)):
        assert run["sparsity"] == pytest.approx(target, abs=1e-3)
        assert run["nonzero_params"] < report["dense"]["nonzero_params"]
        assert len(run["layers"]) == 37  # the encoder's 36 Linear layers and the word embeddings
    assert report["machine"]["cores"] >= 1 and report["timings"]["total_s"] > 0

    md = (out / "report.md").read_text()
    assert "| dense |" in md and "| pruned-80 |" in md and "Per-layer sparsity" in md

    folder = out / "pruned-80"
    run80 = report["runs"][1]
    card = (folder / "README.md").read_text()
    assert card.startswith("---") and "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert "library_name: transformers" in card and "density.png" in card and "import hf_sparse" in card
    assert f"{report['dense']['test_accuracy']:.4f}" in card and f"{run80['test_accuracy']:.4f}" in card
    assert (folder / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Saved checkpoints" in md

    # the pruned models are saved sparse, reload to the same predictions and run on the sparse layers
    assert run80["round_trip"]["identical_predictions"] and run80["round_trip"]["sparse_layers_loaded"] > 0
    assert run80["checkpoint_bytes"] < report["dense"]["checkpoint_bytes"]
    assert run80["latency"]["ours_s"] > 0 and run80["latency"]["dense_s"] > 0
    # ... against every dense configuration of the machine (the default: all it has), the fastest named
    lat = run80["latency"]
    dense = lat["dense_baselines_s"]
    assert lat["dense_s"] == dense["fp32"] and set(dense) | set(lat["skipped_baselines"]) == set(MODEL_TOLERANCES)
    assert lat["best_dense"] == min(dense, key=dense.get) and lat["best_dense_s"] == dense[lat["best_dense"]]
    assert lat["ratio_vs_best_dense"] == pytest.approx(lat["best_dense_s"] / lat["ours_s"])
    assert lat["ratio_vs_fp32"] == pytest.approx(dense["fp32"] / lat["ours_s"])
    assert all(err <= MODEL_TOLERANCES[k] for k, err in lat["baseline_errors"].items())
    assert "| vs dense fp32 | vs best dense" in md and "Dense configurations of this machine (" in md
    assert f"{lat['ratio_vs_best_dense']:.2f}x the best dense configuration of that machine" in card
    assert lat["machine"] in card
    assert sum(f != "dense" for f in run80["formats"].values()) == run80["round_trip"]["sparse_layers_loaded"]
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    stored = 0  # non-zero weights of the pruned layers, whichever way each is stored
    for name in run80["layers"]:
        m = model.get_submodule(name)
        stored += int(((m.dense_weight() if hasattr(m, "dense_weight") else m.weight) != 0).sum())
    assert stored == run80["prunable_params"] - run80["pruned_params"]

    # the reloaded sparse layers run on hf_sparse's kernels, not on dense matmuls
    from torch.profiler import profile

    sparse_layers = sum(isinstance(m, SparseLinear) for m in model.modules())
    dense_linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    with torch.no_grad(), profile() as prof:
        model(input_ids=torch.tensor([[101, 2023, 3185, 2001, 2307, 102]]))
    names = [e.name for e in prof.events()]
    spmm_calls = sum(n.startswith(("hf_sparse::spmm", "hf_sparse::linear_")) for n in names)
    assert spmm_calls == sparse_layers > 0
    assert sum(n == "aten::linear" for n in names) == dense_linears

    # a fresh process loads the checkpoint and predicts the test split exactly as the saved model did
    script = f"""
import json, torch, hf_sparse
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from hf_sparse.data import load_rotten_tomatoes, stratified_subset
model = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}).eval()
assert type(model.bert.embeddings.word_embeddings).__name__ == "SparseEmbedding"
tok = AutoTokenizer.from_pretrained({str(folder)!r})
test = stratified_subset(load_rotten_tomatoes(seed=42)["test"], 96, seed=42)
preds = []
with torch.no_grad():
    for i in range(0, len(test), 64):  # the batches Trainer.predict used (eval batch size 64, in order)
        batch = tok(test["text"][i:i + 64], truncation=True, max_length=128, padding=True, return_tensors="pt")
        preds += model(**batch).logits.argmax(-1).tolist()
print(json.dumps({{"accuracy": sum(p == y for p, y in zip(preds, test["label"])) / len(test)}}))
"""
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert json.loads(fresh.stdout.strip().splitlines()[-1])["accuracy"] == run80["test_accuracy"]
