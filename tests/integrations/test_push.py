"""Publishing: push a sparse checkpoint (with its card and plot) to a Hub-compatible server on loopback, download
it with snapshot_download, load it with from_pretrained; failed pushes are clear errors and can be retried."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import snapshot_download
from transformers import AutoModelForSequenceClassification

import hf_sparse
from hf_sparse import PruningConfig, SparseLinear, sparsify_
from hf_sparse.integrations.hub import HubError, push_to_hub
from hf_sparse.nn import SparseEmbedding
from hf_sparse.testing import tiny_bert_classifier

IDS = torch.arange(40).reshape(4, 10) % 128


def _sparse_model():
    model = tiny_bert_classifier(seed=0)
    config = PruningConfig(sparsity=0.8, embeddings=("word_embeddings",))
    hf_sparse.apply_(model, config)
    sparsify_(model, format="csr", embeddings=config.embeddings, progress=False)
    return model


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _load(repo_dir):
    return AutoModelForSequenceClassification.from_pretrained(repo_dir).eval()


def test_push_download_load_with_card_and_plot(hub_server, tmp_path):
    model = _sparse_model()
    model.save_pretrained(tmp_path / "ckpt")
    url = push_to_hub(tmp_path / "ckpt", "me/tiny-sparse", token="t")
    assert hub_server.head("me/tiny-sparse") in url
    files = hub_server.files("me/tiny-sparse")
    assert {"config.json", "model.safetensors", "README.md", "density.png"} <= set(files)
    assert files["density.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert 'from_pretrained("me/tiny-sparse")' in files["README.md"].decode()

    local = snapshot_download("me/tiny-sparse", cache_dir=tmp_path / "cache")
    loaded = _load(local)
    assert isinstance(loaded.bert.embeddings.word_embeddings, SparseEmbedding)
    assert sum(isinstance(m, SparseLinear) for m in loaded.modules()) == 12
    torch.testing.assert_close(loaded(IDS).logits, model.eval()(IDS).logits, rtol=1e-5, atol=1e-5)


def test_server_error_mid_push_is_clear_leaves_the_folder_intact_and_a_retry_succeeds(hub_server, tmp_path):
    folder = tmp_path / "ckpt"
    _sparse_model().save_pretrained(folder)
    push_to_hub(folder, "me/tiny-sparse")  # a first revision, which a failed push must not disturb
    first = hub_server.head("me/tiny-sparse")
    model = _sparse_model()
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    model.save_pretrained(folder)
    before = _digest(folder)

    fault = hub_server.fail_next(status=500, path_contains="/commit/")
    with pytest.raises(
        HubError,
        match=r"(?s)me/tiny-sparse.*500.*Nothing was uploaded.*Nothing in the local folder was changed"
        r".*hf-sparse push",
    ):
        push_to_hub(folder, "me/tiny-sparse", refresh_card=False)
    assert fault.hits == 1
    assert _digest(folder) == before and hub_server.head("me/tiny-sparse") == first

    push_to_hub(folder, "me/tiny-sparse", refresh_card=False)
    assert hub_server.head("me/tiny-sparse") != first
    loaded = _load(snapshot_download("me/tiny-sparse", cache_dir=tmp_path / "cache"))
    torch.testing.assert_close(loaded(IDS).logits, model.eval()(IDS).logits, rtol=1e-5, atol=1e-5)


def test_model_push_to_hub_round_trips_a_sparse_model(hub_server, tmp_path):
    model = _sparse_model()
    model.push_to_hub("me/from-model")
    loaded = _load(snapshot_download("me/from-model", cache_dir=tmp_path / "cache"))
    assert sum(isinstance(m, SparseLinear) for m in loaded.modules()) == 12
    torch.testing.assert_close(loaded(IDS).logits, model.eval()(IDS).logits, rtol=1e-5, atol=1e-5)


def test_cli_push_and_its_errors(hub_server, tmp_path):
    folder = tmp_path / "ckpt"
    _sparse_model().save_pretrained(folder)
    env = {**os.environ, "HF_ENDPOINT": hub_server.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    cmd = [sys.executable, "-m", "hf_sparse.cli", "push"]
    ok = subprocess.run([*cmd, str(folder), "me/cli"], env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "me/cli" in ok.stdout and set(json.loads(hub_server.files("me/cli")["config.json"])) >= {
        "quantization_config"
    }
    bad = subprocess.run([*cmd, str(tmp_path), "me/cli"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not a saved model folder" in bad.stderr


def test_compress_push_to_hub_publishes_each_saved_run(hub_server, tmp_path, monkeypatch, capsys):
    """`hf-sparse compress --push-to-hub REPO`: one run goes to REPO, several to REPO-<run>; the job itself is
    replaced by one that saves two small sparse models the way it does."""
    import hf_sparse.compress as compress
    from hf_sparse.cli import main

    def fake_run(recipe, output_dir, *, recipe_source=None, resume=False):
        runs = []
        for name in ("pruned-50", "pruned-80"):
            _sparse_model().save_pretrained(Path(output_dir) / name)
            runs.append({"name": name, "checkpoint": name, "sparsity": 0.8, "test_accuracy": 0.5, "delta_vs_dense": 0})
        return {"dense": {"test_accuracy": 0.5}, "runs": runs}

    monkeypatch.setattr(compress, "run_compress", fake_run)
    out = tmp_path / "out"
    assert main(["compress", "--output", str(out), "--push-to-hub", "me/minilm", "--hub-token", "t"]) == 0
    for name in ("pruned-50", "pruned-80"):
        files = hub_server.files(f"me/minilm-{name}")
        assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert "pushed to" in capsys.readouterr().out
