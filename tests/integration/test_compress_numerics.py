"""checkpoint.numerics on the real MiniLM (small seeded subsets): a student with nothing pruned is still stored in
the arithmetic predicted fastest on this machine, layer by layer, and reloads with the same predictions."""

from __future__ import annotations

import json

import pytest

from hf_sparse.cli import main
from hf_sparse.errors import ConfigError, RecipeError
from hf_sparse.recipes import load_recipe

pytestmark = pytest.mark.real

RECIPE = r"""
name: numerics-ci
model: {max_length: 32}
data: {train_limit: 32, validation_limit: 16, test_limit: 16, seed: 42}
dense: {max_steps: 1, batch_size: 16, learning_rate: 1e-4, logging_steps: 1}
checkpoint: {save_steps: 0, latency_rounds: 1, numerics: fastest, latency_baselines: [fp32]}
stages:
  - name: cut
    structured: {layers_to_drop: [0, 2, 4]}
    train: {max_steps: 1, batch_size: 16, learning_rate: 1e-4, logging_steps: 1}
"""


def test_a_student_is_stored_in_the_fastest_arithmetic_and_reloads(tmp_path):
    recipe = tmp_path / "numerics.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["compress", str(recipe), "--output", str(out)]) == 0
    (run,) = json.loads((out / "report.json").read_text())["runs"]
    encoder = {n: f for n, f in run["formats"].items() if ".encoder." in n}
    assert len(encoder) == 18  # three layers x six Linear layers, each with the choice it got
    labels = {f.split(":")[0] for f in encoder.values()}
    assert labels <= {"float32", "bfloat16", "int8"}, encoder
    assert "classifier" not in run["formats"]  # task heads keep their float32 arithmetic
    assert run["round_trip"]["identical_predictions"]


def test_numerics_are_validated(tmp_path):
    for bad, match in (("numerics: fp8", "numerics must be"), ("numerics: fastest, format: csr", "format auto")):
        path = tmp_path / "bad.yaml"
        path.write_text(RECIPE.replace("numerics: fastest", bad))
        with pytest.raises((RecipeError, ConfigError), match=match):
            load_recipe(path)
