"""`hf-sparse compress` end to end on the real model and data, at a size that takes about a minute."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hf_sparse.cli import main

pytestmark = pytest.mark.real

TINY_RECIPE = """
name: ci-small
data: {train_limit: 128, test_limit: 96, seed: 42}
dense: {max_steps: 4, batch_size: 32, learning_rate: 1e-4, logging_steps: 2}
pruned: {max_steps: 4, batch_size: 32, learning_rate: 5e-5, logging_steps: 2}
pruning: {end_step: 2, update_every: 1}
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
        assert len(run["layers"]) == 36
    assert report["machine"]["cores"] >= 1 and report["timings"]["total_s"] > 0

    md = (out / "report.md").read_text()
    assert "| dense |" in md and "| pruned-80 |" in md and "Per-layer sparsity" in md

    folder = out / "pruned-80"
    card = (folder / "README.md").read_text()
    assert card.startswith("---") and "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    w = model.bert.encoder.layer[0].intermediate.dense.weight
    assert (w == 0).float().mean() > 0.3  # zeros survive save_pretrained -> from_pretrained
    zeros = sum(
        int((m.weight == 0).sum())
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".encoder.layer." in name
    )
    assert zeros == report["runs"][1]["pruned_params"]
