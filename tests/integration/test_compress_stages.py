"""A staged recipe on the real MiniLM and Rotten Tomatoes (small seeded subsets): a 3-layer student distilled, then
pruned, then quantisation-aware trained, with per-module overrides; masks survive the later stages, the resolved
recipe is saved with the checkpoint, the report has a row per stage and its plots."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification

from hf_sparse.cli import main
from hf_sparse.errors import RecipeError
from hf_sparse.recipes import load_recipe

pytestmark = pytest.mark.real

RECIPE = r"""
name: staged-ci
model: {max_length: 32}
data: {train_limit: 64, validation_limit: 32, test_limit: 32, seed: 42}
dense: {max_steps: 2, batch_size: 16, learning_rate: 1e-4, logging_steps: 1}
checkpoint:  # fixed formats: auto times every layer
  {save_steps: 0, latency_rounds: 1, format: csr, latency_baselines: [fp32, torch-dynamic-int8]}
stages:
  - name: cut
    structured: {layers_to_drop: [0, 2, 4]}
    train: {max_steps: 2, batch_size: 16, learning_rate: 1e-4, logging_steps: 1}
    distillation: {alpha: 0.7, hidden_weight: 1.0}
  - name: prune
    train: {max_steps: 4, batch_size: 16, learning_rate: 1e-4, logging_steps: 1}
    pruning: {sparsity: 0.8, end_step: 2, update_every: 1}
  - name: int8
    train: {max_steps: 2, batch_size: 16, learning_rate: 5e-5, logging_steps: 1}
    quantization: {mode: qat, weight: {bits: 8, granularity: channel, symmetric: true}, convert_format: csr}
    distillation: {alpha: 0.5}
overrides:
  - modules: [classifier]
    skip: [quantization]
  - modules: ['bert\.encoder\.layer\.0\.attention\.self\.query']
    sparsity: 0.5
"""


def test_staged_recipe_runs_stage_by_stage_and_keeps_what_each_did(tmp_path):
    recipe = tmp_path / "staged.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["compress", str(recipe), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    (run,) = report["runs"]
    assert run["name"] == "staged-ci" and [s["name"] for s in run["stages"]] == ["cut", "prune", "int8"]
    cut, prune, int8 = run["stages"]
    assert cut["total_params"] < report["dense"]["total_params"]  # three layers fewer
    assert cut["sparsity"] == 0.0 and prune["sparsity"] == pytest.approx(0.8, abs=0.01)
    # The int8 stage trains with the prune stage's masks fixed: the same sparsity, layer by layer.
    assert int8["sparsity"] == prune["sparsity"] == run["sparsity"]
    assert len(run["layers"]) == 18 and all(not n.endswith("base_layer") for n in run["layers"])
    # The override: the (renumbered) first layer's query at exactly 50%.
    assert run["layers"]["bert.encoder.layer.0.attention.self.query"] == pytest.approx(0.5, abs=1e-3)
    assert set(run["formats"].values()) <= {"qcsr", "qdense", "qbsr", "qnm", "dense"}
    assert run["round_trip"]["identical_predictions"] and run["latency"]["ours_s"] > 0
    # checkpoint.latency_baselines: only those were built and timed; the others say why not
    lat = run["latency"]
    assert set(lat["dense_baselines_s"]) <= {"fp32", "torch-dynamic-int8"} and "fp32" in lat["dense_baselines_s"]
    assert "not among the baselines asked for" in lat["skipped_baselines"]["onnxruntime-dynamic-int8"]
    assert lat["best_dense"] in lat["dense_baselines_s"] and lat["ratio_vs_best_dense"] > 0

    model = AutoModelForSequenceClassification.from_pretrained(out / "staged-ci")
    assert model.config.num_hidden_layers == 3
    assert type(model.classifier) is torch.nn.Linear  # skipped by quantisation (the override)
    saved = yaml.safe_load((out / "staged-ci" / "hf_sparse_recipe.yaml").read_text())
    assert [s["name"] for s in saved["stages"]] == ["cut", "prune", "int8"]
    assert saved["stages"][1]["pruning"]["layer_sparsity"] == {"bert.encoder.layer.0.attention.self.query": 0.5}
    assert "classifier" in saved["stages"][2]["quantization"]["exclude_modules"]

    md = (out / "report.md").read_text()
    assert "## Stages of staged-ci" in md and "| prune | magnitude pruning to 80%" in md
    assert report["plots"]["accuracy_vs_sparsity"] == "plots/accuracy_vs_sparsity.png"
    for path in report["plots"].values():
        assert (out / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({path})" in md


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("sparsities: [0.5]\n", "sparsities: a recipe with stages runs its methods inside the stages"),
        ("pruning: {sparsity: 0.7}\n", "move pruning into a stage"),
    ],
)
def test_top_level_methods_with_stages_are_refused(tmp_path, extra, message):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE + extra)
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_stage_order_problems_are_refused_before_training(tmp_path):
    bad = RECIPE.replace(
        "  - name: int8\n",
        "  - name: late-cut\n    structured: {layers_to_drop: [0]}\n    train: {max_steps: 1}\n  - name: int8\n",
    )
    path = tmp_path / "r.yaml"
    path.write_text(bad)
    with pytest.raises(RecipeError, match=r"stages\[2\] \(late-cut\)\.structured: changes the shapes .* 'prune'"):
        load_recipe(path)
    path.write_text(RECIPE.replace("layer\\.0\\.attention", "layer\\.9\\.attention"))
    with pytest.raises(RecipeError, match=r"overrides\[1\]\.modules: .* match no module"):
        main_args = ["validate", str(path)]
        from hf_sparse.compress import preflight

        preflight(load_recipe(path))
    assert main(main_args) == 2
