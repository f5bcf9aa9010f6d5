"""`hf-sparse lm` on the real SmolLM2-135M and a real held-out speech, at tiny scale: the report's structure, the
full-window correctness anchor, the window changing perplexity, fine-tuning moving the weights, the saved model
reloading with identical logits, and the held-out speech never used for fine-tuning."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from hf_sparse.attention import SparseAttentionConfig
from hf_sparse.benchmarking import MODEL_TOLERANCES
from hf_sparse.cli import main
from hf_sparse.data import smollm2_path
from hf_sparse.errors import ConfigError
from hf_sparse.lm import select_documents

pytestmark = pytest.mark.real

# 256 evaluated tokens with a window of 64: the window binds for most of them.
RECIPE = """
task: lm
name: tiny-window
seed: 7
threads: 1
data: {eval_documents: 1, train_documents: 1, seed: 0}
attention: {pattern: window, window: 64, global_positions: [0, 1, 2, 3]}
finetune: {steps: 2, learning_rate: 1e-4, batch_size: 1, seq_len: 128}
eval: {lengths: [256], check_full_window: true}
checkpoint: {verify: true, latency_rounds: 1}
"""


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path())


def test_lm_job_measures_fine_tunes_saves_and_reloads(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    assert main(["lm", str(recipe), "-o", str(out)]) == 0
    assert torch.get_num_threads() == threads  # the job's `threads: 1` does not outlive it
    printed = capsys.readouterr().out
    assert "perplexity at 256 tokens (255 evaluated)" in printed and "full-window check: passed" in printed

    report = json.loads((out / "report.json").read_text())
    assert set(report["perplexity"]) == {"dense", "windowed_before", "windowed_after"}
    assert report["eval"] == {"lengths": [256], "tokens": {"256": 255}}
    ppl = {name: p["256"]["perplexity"] for name, p in report["perplexity"].items()}
    assert all(1.0 < v < 1000.0 for v in ppl.values())

    # Correctness anchor: a window covering all 256 tokens is full causal attention, through our kernel.
    anchor = report["correctness"]
    assert anchor["passed"] and anchor["max_abs_logit_diff"] < 1e-3 and anchor["window"] == 256
    assert anchor["perplexity_full_window"] == pytest.approx(ppl["dense"], rel=1e-5)
    # ... while a window of 64 tokens does change the model's predictions.
    assert abs(ppl["windowed_before"] / ppl["dense"] - 1) > 1e-4
    assert report["attention"]["config"]["window"] == 64 and len(report["attention"]["layers"]) == 30
    assert report["attention_path"]["kernel_loaded"] and report["attention_path"]["cpu_kernel_refuses"] == []

    ft = report["finetune"]
    assert ft["steps"] == 2 and len(ft["losses"]) == 2 and ft["tokens_seen"] == 256
    assert ft["weight_change"]["relative_l2"] > 0 and ft["weight_change"]["tensors_changed"] > 0
    assert ppl["windowed_after"] != ppl["windowed_before"]

    folder = out / "tiny-window"
    round_trip = report["checkpoint"]["round_trip"]
    assert round_trip["identical_logits"] and round_trip["max_abs_logit_diff"] == 0.0
    assert round_trip["attention_config_equal"] and round_trip["attn_implementation"] == "hf_sparse"
    saved = json.loads((folder / "config.json").read_text())
    assert SparseAttentionConfig.from_dict(saved["hf_sparse_attention"]).window == 64
    assert (folder / "tokenizer.json").is_file()
    # The saved weights are the fine-tuned ones, not the packaged model's.
    name = "model.layers.0.self_attn.q_proj.weight"
    with (
        safe_open(folder / "model.safetensors", "pt") as new,
        safe_open(smollm2_path() / "model.safetensors", "pt") as old,
    ):
        assert not torch.equal(new.get_tensor(name), old.get_tensor(name))

    lat = report["latency"]
    assert lat["length"] == 256 and lat["rounds"] == 1 and lat["ours_s"] > 0 and lat["sdpa_full_s"] > 0
    # Against every dense configuration of the machine (the same weights, sdpa full attention), fp32 among them.
    dense = lat["dense_baselines_s"]
    assert "fp32" in dense and lat["sdpa_full_s"] == dense["fp32"] and lat["best_dense_s"] == min(dense.values())
    assert set(dense) | set(lat["skipped_baselines"]) == set(MODEL_TOLERANCES)
    assert lat["ratio_vs_best_dense"] == pytest.approx(lat["best_dense_s"] / lat["ours_s"])
    assert lat["ratio_vs_fp32"] == pytest.approx(dense["fp32"] / lat["ours_s"])
    assert set(report["timings"]) >= {"eval_dense_s", "check_s", "finetune_s", "verify_s", "latency_s", "total_s"}
    assert report["machine"]["torch_threads"] == 1 and lat["threads"] == 1

    md = (out / "report.md").read_text()
    assert "| 256 | 255 |" in md and "Correctness anchor (passed)" in md and "identical logits" in md
    assert "No dense control was fine-tuned" in md
    assert f"sdpa full attention in {lat['best_dense']}: **" in md and "Dense configurations of this machine (" in md
    assert not (out / "trainer").exists()  # the Trainer's scratch folder is removed
    assert (out / "recipe.yaml").is_file()


def test_held_out_documents_are_seeded_and_never_fine_tuned_on(tokenizer):
    a = select_documents(tokenizer, 2, None, eval_length=2048, train_length=1024, seed=0)
    b = select_documents(tokenizer, 2, None, eval_length=2048, train_length=1024, seed=0)
    c = select_documents(tokenizer, 2, 5, eval_length=2048, train_length=1024, seed=1)
    assert [d["title"] for d in a.eval] == [d["title"] for d in b.eval]
    assert [d["title"] for d in a.eval] != [d["title"] for d in c.eval]
    for docs in (a, c):
        held_out = {d["title"] for d in docs.eval}
        assert not held_out & {d["title"] for d in docs.train}
        assert all(d["tokens"] >= 2048 and d["ids"].shape == (1, d["tokens"]) for d in docs.eval)
        assert all(d["tokens"] >= 1024 for d in docs.train)
    assert len(c.train) == 5 and len(a.train) > 5
    with pytest.raises(ConfigError, match="data.eval_documents"):
        select_documents(tokenizer, 500, None, eval_length=2048, train_length=1024, seed=0)
    with pytest.raises(ConfigError, match="data.train_documents"):
        select_documents(tokenizer, 1, 500, eval_length=2048, train_length=1024, seed=0)
