"""`hf-sparse recsys` on the real MovieLens 100K at small scale: dense and compressed item tables side by side,
saved, reloaded in a fresh process with identical rankings; malformed tables refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from hf_sparse.benchmarking import MODEL_TOLERANCES
from hf_sparse.cli import main
from hf_sparse.errors import RecipeError
from hf_sparse.recsys.compress import LATENCY_USERS, load_recsys_recipe

pytestmark = pytest.mark.real

RECIPE = """
task: recsys
name: ci-recsys
users: 60
model: {max_len: 20, hidden_size: 16, intermediate_size: 32}
dense: {epochs: 3}
finetune: {epochs: 1}
latency_rounds: 2
runs:
  int4: {method: qrow, bits: 4}
  qr-hot: {method: qr, compression: 0.125, hot_rows: 40, fit_steps: 20}
  hashed-scratch: {method: hashed, compression: 0.125, init: random}
"""

TOP10 = """
import sys, torch
import hf_sparse
from transformers import AutoModel
from hf_sparse.recsys import movielens_splits
from hf_sparse.recsys.compress import _top10
model = AutoModel.from_pretrained(sys.argv[1])
print(_top10(model, movielens_splits().subset(60), 20).tolist())
"""


def test_recsys_runs_compare_and_reload_in_a_fresh_process(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    # `hf-sparse compress` runs a `task: recsys` recipe as `hf-sparse recsys` does.
    assert main(["compress", str(recipe), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in report["runs"]]
    assert names == ["dense", "dense-continued", "int4", "qr-hot", "hashed-scratch"]
    by = {r["name"]: r for r in report["runs"]}
    assert by["qr-hot"]["memory_ratio"] <= 0.125 and by["hashed-scratch"]["memory_ratio"] <= 0.125
    assert by["int4"]["table"]["format"] == "qrow" and by["qr-hot"]["table"]["format"] == "hot"
    assert all(r["round_trip"]["identical_top10"] for r in report["runs"][1:])
    assert all(0.0 <= r["test_hr@10"] <= 1.0 and r["test_ndcg@10"] <= r["test_hr@10"] for r in report["runs"])
    md = (out / "report.md").read_text()
    assert "| qr-hot | qr (" in md and "from scratch" in md
    # Every run's model timed against every dense configuration of the trained dense model on this machine.
    assert "latency" not in by["dense"]
    for run in report["runs"][1:]:
        lat = run["latency"]
        assert (
            lat["users"] == min(LATENCY_USERS, report["data"]["users"])
            and lat["items"] == report["data"]["items"]
            and lat["rounds"] == 2
        )
        dense = lat["dense_baselines_s"]
        assert "fp32" in dense and set(dense) | set(lat["skipped_baselines"]) == set(MODEL_TOLERANCES)
        assert lat["best_dense_s"] == min(dense.values()) and lat["dense_s"] == dense["fp32"]
        assert lat["ratio_vs_best_dense"] == pytest.approx(lat["best_dense_s"] / lat["ours_s"])
        assert f"| {run['name']} | {1e3 * lat['ours_s']:.2f} | {lat['ratio_vs_fp32']:.2f}x | " in md
    assert "## Latency" in md and "Dense configurations of this machine (" in md
    # A fresh process ranks the test users' items exactly as the saved model did.
    from transformers import AutoModel

    from hf_sparse.recsys import movielens_splits
    from hf_sparse.recsys.compress import _top10

    expected = _top10(AutoModel.from_pretrained(out / "qr-hot"), movielens_splits().subset(60), 20)
    run = subprocess.run(
        [sys.executable, "-c", TOP10, str(out / "qr-hot")], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert torch.equal(torch.tensor(eval(run.stdout.strip().splitlines()[-1])), expected)


def test_malformed_saved_table_is_a_typed_error(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    from hf_sparse.embeddings import EmbeddingCompressionConfig, TableCompression, compress_embeddings_
    from hf_sparse.errors import FormatError
    from hf_sparse.recsys import sasrec_for_movielens

    model = sasrec_for_movielens(seed=0, max_position_embeddings=20, hidden_size=16, intermediate_size=32)
    compress_embeddings_(
        model,
        EmbeddingCompressionConfig(tables={"item_embeddings": TableCompression(method="rowmap", keep_rows=100)}),
        progress=False,
    )
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    tensors["item_embeddings.weight_remap"] = torch.full_like(tensors["item_embeddings.weight_remap"], 5000)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(FormatError, match="remap"):
        AutoModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("runs: {a: {method: qr}}", "needs collisions or compression"),
        ("runs: {dense: {method: qrow}}", "not a usable name"),
        ("users: 1", "users must be"),
        ("model: {hidden_size: 10, num_attention_heads: 3}", "divisible"),
        ("runs: {a: {method: qrow, init: random}}", "float method"),
        ("dense: {epochs: 0}", "epochs"),
        ("colour: red", "colour"),
        ("latency_rounds: -1", "latency_rounds must be >= 0"),
        ("latency_baselines: [bf16]", "must include 'fp32'"),
    ],
)
def test_bad_recsys_recipes(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "\n")
    with pytest.raises(RecipeError, match=message):
        load_recsys_recipe(bad)
