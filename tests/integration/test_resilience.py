"""Interrupted `hf-sparse compress` jobs: killed (SIGKILL) or stopped (Ctrl-C / SIGTERM) mid-training, then resumed
with --resume, end with bit-identical weights and masks to an uninterrupted job; nothing half-written is ever left
under a final name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_sparse.cli import main
from hf_sparse.resilience import CHECKPOINT_MARKER, last_complete_checkpoint

pytestmark = pytest.mark.real

# Movement pruning keeps score state across steps and the schedule spans the kill: resuming must restore the
# optimizer, schedule, RNG, data order, masks and scores exactly.
RECIPE = """
name: ci-resume
model: {max_length: 32}
data: {train_limit: 96, validation_limit: 32, test_limit: 32, seed: 42}
dense: {max_steps: 4, batch_size: 16, learning_rate: 1e-4, logging_steps: 2}
pruned: {max_steps: 12, batch_size: 8, learning_rate: 1e-4, logging_steps: 2, warmup_fraction: 0.2}
pruning: {criterion: movement, end_step: 10, update_every: 2}
sparsities: [0.6]
checkpoint: {save_steps: 3, latency_rounds: 0, verify: false, format: csr}  # a fixed format: auto times layers
"""

# Runs `hf-sparse compress` with a callback that sends a signal to the process at a given step of a given run.
DRIVER = """
import os, signal, sys
from pathlib import Path
import torch
from transformers import TrainerCallback
import hf_sparse.jobs.classification as classification

torch.set_num_threads(int(os.environ["TORCH_THREADS"]))  # the parent's: float sums depend on the thread count

run, step, sig = os.environ["STOP_AT"].split(":")

class Stop(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(step):
            os.kill(os.getpid(), getattr(signal, sig))

original = classification.finetune  # what every run's fine-tuning calls

def finetune(model, train, tokenizer, section, work_dir, callbacks=(), init_callbacks=(), **kwargs):
    if Path(work_dir).name == run:
        callbacks = [*callbacks, Stop()]
    return original(model, train, tokenizer, section, work_dir, callbacks, init_callbacks, **kwargs)

classification.finetune = finetune
from hf_sparse.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _tensors(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    assert out, f"no weights in {folder}"
    return out


def _assert_identical(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if ta[k].dtype != tb[k].dtype or not (ta[k] == tb[k]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _no_partial_outputs(out: Path) -> None:
    leftovers = [p for p in out.rglob("*") if p.name.endswith((".partial", ".tmp")) or ".old" in p.name]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    recipe = base / "r.yaml"
    recipe.write_text(RECIPE)
    out = base / "straight"
    assert main(["compress", str(recipe), "--output", str(out)]) == 0
    return recipe, out


def test_sigkill_mid_training_then_resume_is_bit_identical(uninterrupted, tmp_path):
    recipe, straight = uninterrupted
    out = tmp_path / "killed"
    env = {**os.environ, "STOP_AT": "pruned-60:8:SIGKILL", "TORCH_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-c", DRIVER, "compress", str(recipe), "--output", str(out)]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # Killed at step 8: checkpoint-6 is the last complete one, and no final model folder exists yet.
    last = last_complete_checkpoint(out / "trainer" / "pruned-60")
    assert last is not None and last.name == "checkpoint-6"
    assert (last / "hf_sparse_pruning_masks.safetensors").is_file() and (last / CHECKPOINT_MARKER).is_file()
    assert not (out / "pruned-60").exists() and not (out / "report.json").exists()

    assert main(["compress", str(recipe), "--output", str(out), "--resume"]) == 0
    _assert_identical(straight / "pruned-60", out / "pruned-60")
    report = json.loads((out / "report.json").read_text())
    expected = json.loads((straight / "report.json").read_text())
    assert report["dense"]["test_accuracy"] == expected["dense"]["test_accuracy"]
    assert report["runs"][0]["layers"] == expected["runs"][0]["layers"]  # the same masks, layer by layer
    assert report["runs"][0]["test_accuracy"] == expected["runs"][0]["test_accuracy"]
    # The finished job keeps no training checkpoints and no temporary files.
    assert not list((out / "trainer").rglob("checkpoint-*"))
    _no_partial_outputs(out)


def test_ctrl_c_stops_cleanly_names_the_checkpoint_and_resumes_identically(uninterrupted, tmp_path, capsys):
    recipe, straight = uninterrupted
    out = tmp_path / "stopped"
    env = {**os.environ, "STOP_AT": "pruned-60:7:SIGINT", "TORCH_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-c", DRIVER, "compress", str(recipe), "--output", str(out)]
    stopped = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    last = out / "trainer" / "pruned-60" / "checkpoint-6"
    assert f"last good checkpoint: {last}" in stopped.stderr
    assert f"--output {out} --resume" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert not (out / "pruned-60").exists()
    _no_partial_outputs(out)

    assert main(["compress", str(recipe), "--output", str(out), "--resume"]) == 0
    _assert_identical(straight / "pruned-60", out / "pruned-60")


def test_resume_reuses_saved_runs_and_ignores_an_incomplete_checkpoint(uninterrupted, tmp_path, caplog):
    recipe, straight = uninterrupted
    out = tmp_path / "again"
    # A job that finished, then a half-written checkpoint (no marker) as a crash mid-save would leave it.
    import shutil

    shutil.copytree(straight, out)
    run_file = out / "pruned-60" / "hf_sparse_run.json"
    assert run_file.is_file()
    half = out / "trainer" / "pruned-60" / "checkpoint-9"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"\0" * 10)
    assert last_complete_checkpoint(half.parent) is None
    caplog.set_level("INFO")
    assert main(["compress", str(recipe), "--output", str(out), "--resume"]) == 0
    assert "pruned-60 was saved by the interrupted job; reused" in caplog.text
    assert not half.exists()
    _assert_identical(straight / "pruned-60", out / "pruned-60")
    # A recipe that differs is not resumed into an old run: it is trained again.
    changed = tmp_path / "changed.yaml"
    changed.write_text(
        RECIPE.replace(
            "learning_rate: 1e-4, logging_steps: 2, warmup", "learning_rate: 2e-4, logging_steps: 2, warmup"
        )
    )
    caplog.clear()
    assert main(["compress", str(changed), "--output", str(out), "--resume"]) == 0
    assert "reused" not in caplog.text
