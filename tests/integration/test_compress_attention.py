"""`hf-sparse compress` with an attention section on the real MiniLM and Rotten Tomatoes, a few steps each: a
dense-weight run fine-tuned with windowed attention and an 80% pruned one with it, both reloaded."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hf_sparse.attention import SparseAttentionConfig
from hf_sparse.cli import main

pytestmark = pytest.mark.real

RECIPE = """
name: ci-window
data: {train_limit: 64, validation_limit: 48, test_limit: 48, seed: 42}
dense: {max_steps: 2, batch_size: 32, learning_rate: 1e-4, logging_steps: 1}
pruned: {max_steps: 2, batch_size: 32, learning_rate: 1e-4, logging_steps: 1}
pruning: {criterion: magnitude, schedule: oneshot}
sparsities: [0.0, 0.8]
attention: {pattern: window, window: 8, global_positions: [0]}
checkpoint: {verify: true, latency_rounds: 0}
"""


def test_compress_fine_tunes_with_windowed_attention_and_reloads(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["compress", str(recipe), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    runs = {r["name"]: r for r in report["runs"]}
    assert set(runs) == {"dense-window8-global", "pruned-80-window8-global"}
    for run in runs.values():
        assert run["round_trip"]["identical_predictions"]
        assert run["round_trip"]["max_abs_logit_diff"] < 1e-4
        assert run["attention"]["config"]["window"] == 8
    folder = out / "dense-window8-global"
    saved = json.loads((folder / "config.json").read_text())
    assert SparseAttentionConfig.from_dict(saved["hf_sparse_attention"]).window == 8
    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="hf_sparse").eval()
    assert model.config._attn_implementation == "hf_sparse"
    with torch.no_grad():
        model(input_ids=torch.tensor([[101, 2307, 3185, 102]]))
