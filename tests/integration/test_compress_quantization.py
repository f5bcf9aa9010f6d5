"""`hf-sparse compress` with a quantization section on the real MiniLM and Rotten Tomatoes, at a size that takes
well under a minute: QAT and PTQ of the dense model, and QAT together with 80% pruning (stored as int8 CSR)."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hf_sparse.cli import main
from hf_sparse.nn.quant import QuantLinear

pytestmark = pytest.mark.real

RECIPE = """
name: ci-quant
data: {train_limit: 64, validation_limit: 48, test_limit: 48, seed: 42}
dense: {max_steps: 2, batch_size: 32, learning_rate: 1e-4, logging_steps: 1}
pruned: {max_steps: 2, batch_size: 32, learning_rate: 1e-4, logging_steps: 1}
pruning: {criterion: magnitude, schedule: oneshot}
sparsities: [0.0, 0.8]
quantization:
  weight: {bits: 8}
  compare_ptq: true
  calibration_samples: 32
checkpoint: {verify: true, latency_rounds: 0}
"""


def test_compress_quantizes_with_qat_and_ptq_and_reloads(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["compress", str(recipe), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    runs = {r["name"]: r for r in report["runs"]}
    assert set(runs) == {"dense-int8-qat", "dense-int8-ptq", "pruned-80-int8-qat", "pruned-80-int8-ptq"}
    assert set(runs["dense-int8-qat"]["formats"].values()) == {"qdense"}
    assert set(runs["pruned-80-int8-qat"]["formats"].values()) == {"qcsr"}
    assert runs["dense-int8-ptq"]["quantization"]["float_accuracy"] is not None
    for run in runs.values():
        assert run["round_trip"]["identical_predictions"]
        assert run["round_trip"]["max_abs_logit_diff"] < 1e-4
        q = run["quantization"]
        # int8 codes + float scales: a quarter of float32, and less once 80% of the weights are gone
        assert q["weight_bytes"] < 0.26 * q["float_weight_bytes"]
    sparse = runs["pruned-80-int8-qat"]["quantization"]
    assert sparse["weight_bytes"] < 0.16 * sparse["float_weight_bytes"]
    md = (out / "report.md").read_text()
    assert "## Quantisation" in md and "| dense-int8-ptq | ptq |" in md
    model = AutoModelForSequenceClassification.from_pretrained(out / "pruned-80-int8-qat")
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 36 and all(m.format == "qcsr" for m in layers)
    card = (out / "pruned-80-int8-qat" / "README.md").read_text()
    assert "8-bit integer weights" in card
    with torch.no_grad():
        model(input_ids=torch.tensor([[101, 2307, 3185, 102]]))
