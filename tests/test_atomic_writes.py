"""Atomic files and folders: a crash or a full disk mid-write never leaves a partial result under the final name."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hf_sparse.errors import CheckpointWriteError
from hf_sparse.resilience import (
    CHECKPOINT_MARKER,
    atomic_folder,
    atomic_write_text,
    last_complete_checkpoint,
    remove_incomplete_checkpoints,
    remove_stale_partials,
)
from hf_sparse.testing import tiny_bert_classifier


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_atomic_write_replaces_only_when_complete(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    atomic_write_text(target, '{"v": 1}\n')
    assert json.loads(target.read_text()) == {"v": 1}

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointWriteError, match="No space left on device.*left as it was"):
        atomic_write_text(target, '{"v": 2}\n')
    assert json.loads(target.read_text()) == {"v": 1}
    assert _leftovers(tmp_path) == []


def test_atomic_folder_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "pruned-50"
    first = tiny_bert_classifier(seed=0)
    with atomic_folder(target) as tmp:
        first.save_pretrained(tmp)
    expected = first.state_dict()

    second = tiny_bert_classifier(seed=1)
    import transformers.modeling_utils as modeling_utils

    def crash_after_half(tensors, filename, metadata=None):
        with open(filename, "wb") as f:  # a partial file, then the process "dies"
            f.write(b"\0" * 100)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(modeling_utils, "safe_save_file", crash_after_half)
        with pytest.raises(KeyboardInterrupt), atomic_folder(target) as tmp:
            second.save_pretrained(tmp)
    loaded = AutoModelForSequenceClassification.from_pretrained(target)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())
    assert _leftovers(tmp_path) == []


def test_atomic_folder_full_disk_is_a_typed_error_and_nothing_is_left(tmp_path, monkeypatch):
    target = tmp_path / "new"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointWriteError, match="nothing was written under that name"), atomic_folder(target) as t:
        (t / "config.json").write_text("{}")
        monkeypatch.setattr(os, "fsync", full_disk)
    assert not target.exists() and _leftovers(tmp_path) == []


def test_atomic_folder_replaces_an_existing_folder_on_success(tmp_path):
    target = tmp_path / "run"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert _leftovers(tmp_path) == []


def test_only_marked_checkpoints_count(tmp_path):
    for step, marked in ((3, True), (6, True), (9, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if marked:
            (folder / CHECKPOINT_MARKER).write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-6"
    assert [p.name for p in remove_incomplete_checkpoints(tmp_path)] == ["checkpoint-9"]
    assert last_complete_checkpoint(tmp_path / "missing") is None


KILLED_SAVE = """
import os, signal, sys
from pathlib import Path
from hf_sparse.resilience import atomic_folder, atomic_write_text

out = Path(sys.argv[1])
if sys.argv[2] == "folder":
    with atomic_folder(out / "pruned-50") as tmp:
        (tmp / "model.safetensors").write_bytes(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)  # no finally runs: the temporary folder stays
else:
    os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
    atomic_write_text(out / "report.json", "{}")
"""


def _killed_save(out, what):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(out), what], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_a_killed_save_are_removed_and_nothing_else(tmp_path, caplog):
    import re

    out = tmp_path / "out"
    out.mkdir()
    _killed_save(out, "folder")
    _killed_save(out, "file")
    stale = sorted(p.name for p in out.iterdir())
    assert len(stale) == 2 and any(re.fullmatch(r"\.pruned-50\.\d+\.\w{8}\.partial", n) for n in stale), stale
    assert any(re.fullmatch(r"\.report\.json\.\d+\.\w{8}\.tmp", n) for n in stale), stale
    (out / ".pruned-80.abcd1234.partial").mkdir()  # written before the pid was part of the name
    (out / f".pruned-80.{os.getpid()}.old").mkdir()
    kept = [
        f".pruned-50.{os.getppid()}.abcd1234.partial",  # a process that is alive: another job still writing
        ".other-run.1.abcd1234.partial",  # not a name this job writes
        ".pruned-50.notes",  # not a temporary's name
        "pruned-50",  # a real output
    ]
    for name in kept:
        (out / name).mkdir()
    with caplog.at_level("INFO", logger="hf_sparse.resilience"):
        removed = remove_stale_partials(out, ["report.json", re.compile(r"pruned-\d+")])
    assert sorted(p.name for p in removed) == sorted(
        [*stale, ".pruned-80.abcd1234.partial", f".pruned-80.{os.getpid()}.old"]
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(kept)
    assert sum("left by an interrupted save" in r.getMessage() for r in caplog.records) == 4


def test_a_resumed_compress_job_removes_the_stale_temporaries_of_its_runs(tmp_path, monkeypatch, caplog):
    from hf_sparse import compress as compress_module
    from hf_sparse.cli import main
    from hf_sparse.errors import HfSparseError

    out = tmp_path / "out"
    out.mkdir()
    _killed_save(out, "folder")  # a run's checkpoint folder killed mid-save
    (out / "pruned-50").mkdir()  # a run saved before: its card was being rewritten when the job was killed
    dead = _dead_pid()
    (out / "pruned-50" / f".README.md.{dead}.abcd1234.tmp").write_text("half")
    (out / ".unrelated.1.abcd1234.partial").mkdir()

    def stop(*args, **kwargs):
        raise HfSparseError("stopped before any data is read")

    monkeypatch.setattr(compress_module, "prepare_data", stop)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: ci-stale\nsparsities: [0.5]\n")
    with caplog.at_level("INFO", logger="hf_sparse.resilience"):
        assert main(["compress", str(recipe), "--output", str(out), "--resume"]) == 2
    assert sorted(p.name for p in out.iterdir()) == [".unrelated.1.abcd1234.partial", "pruned-50"]
    assert list((out / "pruned-50").iterdir()) == []
    assert sum("left by an interrupted save" in r.getMessage() for r in caplog.records) == 2
