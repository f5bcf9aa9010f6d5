"""`hf-sparse compress` with a lowrank section on the real MiniLM and Rotten Tomatoes, a few steps: the encoder's
Linear layers and the word-embedding table factorised before fine-tuning, saved and reloaded."""

import json

import pytest
from transformers import AutoModelForSequenceClassification

from hf_sparse import SparseLinear
from hf_sparse.cli import main
from hf_sparse.errors import RecipeError
from hf_sparse.nn.lowrank_embedding import LowRankEmbedding
from hf_sparse.recipes import load_recipe

pytestmark = pytest.mark.real

RECIPE = """
name: ci-lowrank
data: {train_limit: 64, validation_limit: 48, test_limit: 48, seed: 42}
dense: {max_steps: 2, batch_size: 32, learning_rate: 1e-4, logging_steps: 1}
pruned: {max_steps: 2, batch_size: 32, learning_rate: 1e-4, logging_steps: 1}
sparsities: [0.0]
lowrank: {rank: 32, embeddings: [word_embeddings], embedding_rank: 32}
checkpoint: {verify: true, latency_rounds: 0}
"""


def test_compress_factorises_and_reloads(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["compress", str(recipe), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    (run,) = report["runs"]
    assert run["name"] == "dense-lowrank"
    assert run["round_trip"]["identical_predictions"] and run["round_trip"]["max_abs_logit_diff"] < 1e-4
    low = run["lowrank"]
    assert low["stored_params"] < 0.2 * low["dense_params"]
    model = AutoModelForSequenceClassification.from_pretrained(out / "dense-lowrank")
    assert isinstance(model.bert.embeddings.word_embeddings, LowRankEmbedding)
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    assert len(layers) == 36 and all(m.format == "lowrank" and m.format_params["rank"] == 32 for m in layers)
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.replace("sparsities: [0.0]", "sparsities: [0.5]"))
    with pytest.raises(RecipeError, match="lowrank.sparse_density"):
        load_recipe(bad)


GRADUAL = r"""
name: ci-lowrank-gradual
data: {train_limit: 64, validation_limit: 48, test_limit: 48, seed: 42}
dense: {max_steps: 2, batch_size: 32, learning_rate: 1e-4, logging_steps: 1}
pruned: {max_steps: 4, batch_size: 16, learning_rate: 1e-4, logging_steps: 1}
sparsities: [0.0]
sensitivity: {sparsities: [0.5, 0.9], validation_examples: 16}
lowrank:  # the first encoder layer's six Linear layers: the scan and the schedule's SVDs stay cheap
  target_modules: ['bert\.encoder\.layer\.0\..*']
  compression: 0.3
  mode: gradual
  update_every: 1
  schedule_end: 0.5
  nuclear_weight: 0.01
  prox_every: 2
checkpoint: {verify: true, latency_rounds: 0}
"""


def test_compress_gradual_ranks_from_a_sensitivity_scan(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(GRADUAL)
    out = tmp_path / "out"
    assert main(["compress", str(recipe), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    (run,) = report["runs"]
    assert run["name"] == "dense-lowrank-gradual"
    assert run["round_trip"]["identical_predictions"]
    scan = report["sensitivity"]
    assert scan["sparsities"] == [0.5, 0.9] and len(scan["layers"]) == 6
    low = run["lowrank"]
    ranks = low["module_ranks"]
    assert len(ranks) == 6 and len(set(ranks.values())) > 1  # allocated per layer, not one rank
    assert low["stored_params"] <= 0.3 * low["dense_params"]
    # The schedule projected every layer to its target before factorising: nothing left to lose at the end.
    assert all(e["relative_error"] < 1e-3 for e in low["layers"].values() if "format" in e)
    md = (out / "report.md").read_text()
    assert "## Low rank" in md and "sensitivity scan" in md
    model = AutoModelForSequenceClassification.from_pretrained(out / "dense-lowrank-gradual")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    assert {n: m.format_params["rank"] for n, m in layers.items()} == {
        n: r for n, r in ranks.items() if "format" in low["layers"][n]
    }


@pytest.mark.parametrize(
    "section, message",
    [
        ("{rank: 8, nuclear_weight: 0.1}", "mode: gradual"),
        ("{rank: 8, mode: gradual, schedule_end: 0}", "schedule_end"),
        ("{rank: 8, mode: gradual, embeddings: [word_embeddings], embedding_rank: 8}", "oneshot"),
        ("{rank: 8, mode: slowly}", "mode"),
    ],
)
def test_bad_lowrank_sections_are_refused(tmp_path, section, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        RECIPE.replace("lowrank: {rank: 32, embeddings: [word_embeddings], embedding_rank: 32}", f"lowrank: {section}")
    )
    with pytest.raises(RecipeError, match=message):
        load_recipe(bad)


def test_lowrank_sensitivity_needs_a_compression_target(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE + "sensitivity: {sparsities: [0.5]}\n")
    with pytest.raises(RecipeError, match="lowrank.compression"):
        load_recipe(bad)
