"""The model card of a sparse checkpoint: ModelCard metadata, per-layer table, plot, measured numbers only."""

import json

import pytest
from huggingface_hub import ModelCard

import hf_sparse
from hf_sparse import PruningConfig, sparsify_
from hf_sparse.errors import FormatError
from hf_sparse.integrations.hub import PLOT_FILE, RESULTS_FILE, write_model_card
from hf_sparse.testing import tiny_bert_classifier

RESULTS = {
    "base_model": "sentence-transformers/all-MiniLM-L6-v2",
    "title": "tiny pruned",
    "dataset": "rotten_tomatoes",
    "pipeline_tag": "text-classification",
    "accuracy": {"metric": "accuracy", "split": "test", "examples": 96, "seed": 42, "dense": 0.8, "compressed": 0.75},
    "nonzero_params": 1000,
    "dense_nonzero_params": 5000,
    "dense_checkpoint_bytes": 400_000,
    "latency": {
        "batch": 1,
        "seq": 128,
        "threads": 2,
        "rounds": 5,
        "ours_s": 0.01,
        "dense_s": 0.02,
        "speedup": 1.93,
        "machine": "AMD EPYC (Zen 2), 2 cores",
        "torch": "2.13.0",
    },
}


def _sparse_folder(tmp_path):
    model = tiny_bert_classifier(seed=0)
    config = PruningConfig(sparsity=0.8, embeddings=("word_embeddings",))
    hf_sparse.apply_(model, config)
    sparsify_(model, format="csr", embeddings=config.embeddings, progress=False)
    model.save_pretrained(tmp_path)
    return tmp_path


def test_card_from_results_file_has_metadata_table_numbers_and_plot(tmp_path):
    folder = _sparse_folder(tmp_path)
    (folder / RESULTS_FILE).write_text(json.dumps(RESULTS))
    write_model_card(folder, repo_id="me/tiny-sparse")
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == RESULTS["base_model"] and data["library_name"] == "transformers"
    assert "hf_sparse" in data["tags"] and "sparse-checkpoint" in data["tags"]
    assert data["pipeline_tag"] == "text-classification" and data["datasets"] == ["rotten_tomatoes"]
    text = card.text
    assert "| `bert.encoder.layer.0.attention.self.query` | csr | 32×32 |" in text
    assert "`bert.embeddings.word_embeddings` | csr | 128×32 |" in text
    assert "0.8000" in text and "0.7500" in text and "10.0 ms vs 20.0 ms dense fp32, 1.93×" in text
    assert "best dense configuration" not in text  # only fp32 was timed
    assert "AMD EPYC (Zen 2), 2 cores" in text and 'from_pretrained("me/tiny-sparse")' in text
    assert "import hf_sparse" in text and "![Stored fraction per layer](density.png)" in text
    assert (folder / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_card_names_the_best_dense_configuration_when_every_one_was_timed(tmp_path):
    folder = _sparse_folder(tmp_path)
    latency = {
        **RESULTS["latency"],
        "best_dense": "torch-dynamic-int8",
        "best_dense_s": 0.012,
        "ratio_vs_best_dense": 1.18,
        "dense_baselines_s": {"fp32": 0.02, "bf16": 0.015, "torch-dynamic-int8": 0.012},
    }
    (folder / RESULTS_FILE).write_text(json.dumps({**RESULTS, "latency": latency}))
    text = write_model_card(folder).text
    assert "best dense configuration of that machine (torch-dynamic-int8 of the dense model," in text
    assert "12.0 ms): **1.18×** (also timed: bf16, fp32)" in text


def test_card_without_measurements_says_so_instead_of_inventing_numbers(tmp_path):
    folder = _sparse_folder(tmp_path)
    card = write_model_card(folder)
    assert "No accuracy was recorded" in card.text and "No latency was measured" in card.text
    assert "not measured" in card.text


def test_card_of_a_folder_that_is_not_a_checkpoint_is_a_typed_error(tmp_path):
    with pytest.raises(FormatError, match="no config.json"):
        write_model_card(tmp_path)
