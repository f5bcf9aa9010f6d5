"""`hf-sparse compress` under `accelerate launch` with 2 CPU processes (gloo, DDP) on the real MiniLM and a small
seeded subset of Rotten Tomatoes: the same masks and weights on both ranks, one set of outputs written by rank 0,
distillation with a cached teacher, and a report that loads."""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.real

RECIPE = """
name: ddp-ci
model: {max_length: 32}
data: {train_limit: 64, validation_limit: 32, test_limit: 32, seed: 42}
dense: {max_steps: 2, batch_size: 8, learning_rate: 1e-4, logging_steps: 1}
pruned: {max_steps: 4, batch_size: 8, learning_rate: 1e-4, logging_steps: 1}
pruning: {criterion: movement, end_step: 3, update_every: 1}
sparsities: [0.6]
distillation: {alpha: 0.5, compare: false}
checkpoint: {format: csr, latency_rounds: 1, save_steps: 2}
"""


def test_compress_on_two_processes(two_process, tmp_path, monkeypatch):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(RECIPE)
    out, digests = tmp_path / "out", tmp_path / "digests"
    digests.mkdir()
    monkeypatch.setenv("DIGEST_DIR", str(digests))
    two_process("accelerate", "compress_worker.py", "compress", str(recipe), "--output", str(out), timeout=420)

    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2
    (run,) = report["runs"]
    assert run["name"] == "pruned-60-kd" and run["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert run["round_trip"]["identical_predictions"]
    for name in ("dense", "pruned-60-kd"):
        rank0 = json.loads((digests / f"{name}-rank0.json").read_text())
        rank1 = json.loads((digests / f"{name}-rank1.json").read_text())
        assert rank0 == rank1, f"{name}: the ranks ended with different masks or weights"
    # One set of outputs, with no temporary or per-rank leftovers; training checkpoints removed at the end.
    names = sorted(p.name for p in out.iterdir())
    assert {"report.json", "report.md", "recipe.yaml", "pruned-60-kd"} <= set(names)
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or "checkpoint-" in p.name]
    assert os.listdir(out / "teacher-cache")
