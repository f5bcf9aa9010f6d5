"""`hf-sparse compress` with a distillation section on the real MiniLM and Rotten Tomatoes, at a size that takes
well under a minute: a 3-layer student cut from the fine-tuned teacher, trained with and without distillation."""

import json

import pytest
from transformers import AutoModelForSequenceClassification

from hf_sparse.cli import main

pytestmark = pytest.mark.real

RECIPE = """
name: ci-distil
data: {train_limit: 96, validation_limit: 64, test_limit: 64, seed: 42}
dense: {max_steps: 3, batch_size: 32, learning_rate: 1e-4, logging_steps: 1}
pruned: {epochs: 2, batch_size: 32, learning_rate: 1e-4, logging_steps: 1}
save_dense: true
structured: {layers_to_drop: [0, 2, 4]}
sparsities: [0.0]
distillation: {alpha: 0.8, temperature: 2.0, hidden_weight: 1.0}
checkpoint: {verify: false, latency_rounds: 0}
"""


def test_compress_distils_a_layer_dropped_student_and_reuses_teacher_and_dense(tmp_path, caplog):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["compress", str(recipe), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    runs = {r["name"]: r for r in report["runs"]}
    assert set(runs) == {"structured", "structured-kd"}
    kd, plain = runs["structured-kd"], runs["structured"]
    assert kd["distillation"]["kd"] and not plain["distillation"]["kd"]
    # 96 examples, batch 32, two epochs: the teacher runs in the first epoch only, the second reads the cache.
    assert kd["distillation"]["teacher_calls"] == 3 and kd["distillation"]["cache_hits"] == 96
    assert kd["structure"]["dropped_layers"] == [0, 2, 4]
    md = (out / "report.md").read_text()
    assert "## Distillation" in md and "| structured |" in md
    student = AutoModelForSequenceClassification.from_pretrained(out / "structured-kd")
    assert student.config.num_hidden_layers == 3
    assert not any("distill" in n for n, _ in student.named_parameters())
    assert list((out / "teacher-cache").glob("teacher-*/shard-*.safetensors"))

    # Run again in the same folder: the saved dense model and the teacher cache are reused.
    caplog.set_level("INFO")
    assert main(["compress", str(recipe), "--output", str(out)]) == 0
    again = {r["name"]: r for r in json.loads((out / "report.json").read_text())["runs"]}
    assert again["structured-kd"]["distillation"]["teacher_calls"] == 0
    assert again["structured-kd"]["distillation"]["cache_hits"] == 192
    assert json.loads((out / "report.json").read_text())["dense"]["test_accuracy"] == report["dense"]["test_accuracy"]
    assert "reusing the fine-tuned dense model" in caplog.text
    assert "fine-tuning the dense baseline" not in caplog.text  # reused: not said to be trained again
