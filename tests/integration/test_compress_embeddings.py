"""`hf-sparse compress` with an embeddings section on the real MiniLM and Rotten Tomatoes, a few steps: the word
table compressed (frequency-aware, token counts from the training set) before fine-tuning, saved and reloaded."""

import json

import pytest
from transformers import AutoModelForSequenceClassification

from hf_sparse.cli import main
from hf_sparse.errors import RecipeError
from hf_sparse.nn.compressed_embedding import CompressedEmbedding
from hf_sparse.recipes import load_recipe

pytestmark = pytest.mark.real

RECIPE = """
name: ci-embeddings
data: {train_limit: 64, validation_limit: 48, test_limit: 48, seed: 42}
dense: {max_steps: 2, batch_size: 32, learning_rate: 1e-4, logging_steps: 1}
pruned: {max_steps: 2, batch_size: 32, learning_rate: 1e-4, logging_steps: 1}
sparsities: [0.0]
embeddings:
  tables:
    word_embeddings: {method: qr, op: mult, compression: 0.125, hot_rows: 500, fit_steps: 5}
checkpoint: {verify: true, latency_rounds: 0}
"""


def test_compress_with_a_qr_word_table_reloads(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["compress", str(recipe), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    (run,) = report["runs"]
    assert run["name"] == "dense-emb-qr-mult-hot500"
    assert run["round_trip"]["identical_predictions"]
    entry = run["embeddings"]["tables"]["bert.embeddings.word_embeddings"]
    assert entry["format"] == "hot" and entry["memory_ratio"] <= 0.125
    assert "## Compressed embeddings" in (out / "report.md").read_text()
    model = AutoModelForSequenceClassification.from_pretrained(out / run["name"])
    table = model.bert.embeddings.word_embeddings
    assert isinstance(table, CompressedEmbedding) and table.format == "hot"
    # The hot ids are the most frequent training tokens: [CLS] and [SEP] (ids 101, 102) are in every example.
    hot = set(table.weight_hot_ids.tolist())
    assert {101, 102} <= hot and len(hot) == 500


@pytest.mark.parametrize(
    "tables, message",
    [
        ("{nope: {method: qr, compression: 0.1}}", "embeddings.tables.embeddings: .nope. matches no nn.Embedding"),
        ("{word_embeddings: {method: qr}}", "needs collisions or compression"),
        ("{word_embeddings: {method: zip}}", "method"),
        ("{word_embeddings: {method: qr, compression: 0.1, colisions: 3}}", "colisions"),
    ],
)
def test_bad_embedding_sections(tmp_path, tables, message):
    bad = tmp_path / "bad.yaml"
    text = RECIPE.replace(
        "  tables:\n    word_embeddings: {method: qr, op: mult, compression: 0.125, hot_rows: 500, fit_steps: 5}",
        f"  tables: {tables}",
    )
    bad.write_text(text)
    if "matches no" in message:  # known only against the model: refused before any training
        from hf_sparse.compress import run_compress
        from hf_sparse.errors import ConfigError

        with pytest.raises(ConfigError, match=message):
            run_compress(load_recipe(bad), tmp_path / "o")
        assert not (tmp_path / "o" / "dense").exists() and not (tmp_path / "o" / "trainer").exists()
    else:
        with pytest.raises(RecipeError, match=message):
            load_recipe(bad)
