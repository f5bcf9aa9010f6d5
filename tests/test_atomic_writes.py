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
