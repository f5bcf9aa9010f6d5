"""Recipe sections for structured pruning, regularisation, the accuracy guard, the sensitivity scan and the sweep;
the sweep's grid and its table."""

from __future__ import annotations

import pytest

from hf_sparse import Recipe, RecipeError, load_recipe
from hf_sparse.errors import ConfigError
from hf_sparse.recipes import DistillationSection, GuardSection, SensitivitySection, SweepSection
from hf_sparse.sweep import _cell_name, render_sweep_markdown, sweep_cells


def test_packaged_structured_and_sweep_recipes():
    structured = load_recipe("minilm-structured")
    assert structured.structured.heads_fraction == 0.5 and structured.structured.neurons_fraction == 0.5
    assert structured.pruning_runs()[0].sparsity == 0.0
    sweep = load_recipe("minilm-pruning-sweep")
    names = [_cell_name(c) for c in sweep_cells(sweep)]
    assert len(names) == len(set(names)) == 5 * 4 * 2 + 5  # 2:4 runs once, at 50%
    assert "sparsegpt-block4x4-90" in names and "wanda-2of4-50" in names and "movement-unstructured-70" in names


def test_one_shot_cells_prune_once_and_gradual_cells_follow_the_recipe_schedule():
    recipe = load_recipe("minilm-pruning-sweep")
    cells = {_cell_name(c): c for c in sweep_cells(recipe)}
    assert cells["wanda-unstructured-80"].schedule == "oneshot"
    assert cells["taylor-unstructured-80"].schedule == recipe.pruning.schedule == "cubic"
    assert cells["magnitude-2of4-50"].granularity == "nm" and cells["magnitude-2of4-50"].sparsity == 0.5
    no_finetune = recipe.replace(sweep=recipe.sweep.replace(finetune=False))
    assert {c.criterion for c in sweep_cells(no_finetune)} == {"wanda", "sparsegpt"}


@pytest.mark.parametrize(
    "section, fields, pattern",
    [
        (GuardSection, dict(stages=(0.7, 0.5)), "increasing"),
        (GuardSection, dict(max_drop=-0.1), "max_drop must be >= 0"),
        (SensitivitySection, dict(sparsities=(1.2,)), r"sensitivity.sparsities must be in \(0, 1\)"),
        (SweepSection, dict(criteria=("magnitud",)), "unknown criterion 'magnitud'"),
        (SweepSection, dict(granularities=("head",)), "'head' is not one of"),
        (DistillationSection, dict(student_from="teacher"), "student_from"),
        (DistillationSection, dict(attention_weight=1.0), "cache: false"),
        (DistillationSection, dict(alpha=2.0), "alpha must be in"),
    ],
)
def test_sections_validate(section, fields, pattern):
    with pytest.raises(ConfigError, match=pattern):
        section(**fields)


def test_zero_sparsity_needs_a_structured_or_quantization_section(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sparsities: [0.0, 0.5]\n")
    with pytest.raises(
        RecipeError, match="0 is allowed with a structured, quantization, attention, lowrank or embeddings"
    ):
        load_recipe(path)
    path.write_text("sparsities: [0.0]\nstructured: {heads_fraction: 0.25}\nguard: {stages: [0.5, 0.8]}\n")
    recipe = load_recipe(path)
    assert recipe.structured.heads_fraction == 0.25 and recipe.guard.stages == (0.5, 0.8)
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_sweep_table_shows_every_cell_beside_the_dense_baseline():
    recipe = load_recipe("minilm-pruning-sweep")
    cells = []
    for i, cfg in enumerate(sweep_cells(recipe)[:6]):
        cell = {"name": _cell_name(cfg), "config": cfg.to_dict(header=False), "test_accuracy": 0.8 - 0.01 * i}
        cell["delta_vs_dense"] = cell["test_accuracy"] - 0.84
        if cfg.criterion in ("wanda", "sparsegpt"):
            cell["oneshot_accuracy"] = 0.5 + 0.01 * i
        cells.append(cell)
    record = {
        "model": "minilm-l6",
        "data": {"dataset": "rotten_tomatoes", "seed": 42, "test_examples": 1281, "test_majority_accuracy": 0.5},
        "pruned_training": recipe.pruned.to_dict(header=False),
        "dense": {"test_accuracy": 0.84},
        "cells": cells,
        "machine": {"cpu": "cpu", "cores": 2, "torch": "2"},
    }
    text = render_sweep_markdown(record)
    assert "**0.8400**" in text and "## unstructured" in text
    assert (
        "| 50.0% | 0.8000 (-4.0) | 0.7900 (-5.0) | 0.7800 (-6.0) | 0.7700 (-7.0) [0.5300] | 0.7600 (-8.0) [0.5400] |"
        in text
    )
    assert "| 70.0% | 0.7500 (-9.0) | – | – | – | – |" in text
