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
data: {train_limit: 64, test_limit: 48, seed: 42}
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
