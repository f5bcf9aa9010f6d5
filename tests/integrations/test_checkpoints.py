"""Sparse checkpoints: save_pretrained writes compressed tensors, from_pretrained (after import hf_sparse) rebuilds
the sparse modules and gives the same outputs, bad checkpoints raise typed errors, loaded models fine-tune."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, Trainer

import hf_sparse
from hf_sparse import PruningConfig, SparseLinear, sparsify_
from hf_sparse.errors import FormatError
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset

IDS = torch.arange(40).reshape(4, 10) % 128


def _saved(tmp_path, fmt="csr", **params):
    model = tiny_bert_classifier(seed=0)
    hf_sparse.apply_(model, PruningConfig(sparsity=0.85))
    dense_dir = tmp_path / "dense"
    model.save_pretrained(dense_dir)
    sparsify_(model, format=fmt, progress=False, **params)
    out = tmp_path / "sparse"
    model.save_pretrained(out)
    return model, out, dense_dir


@pytest.mark.parametrize("fmt, params", [("csr", {}), ("bsr", {"block": (16, 16)}), ("hybrid", {})])
def test_round_trip_in_process(tmp_path, fmt, params):
    model, out, dense_dir = _saved(tmp_path, fmt, **params)
    expected = model(IDS).logits
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "hf_sparse" and config["schema_version"] == 1
    assert len(config["modules"]) == 12
    saved = load_file(out / "model.safetensors")
    assert all(t.numel() == 0 for k, t in saved.items() if k.endswith(("query.weight", "intermediate.dense.weight")))
    loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert sum(isinstance(m, SparseLinear) for m in loaded.modules()) == 12
    torch.testing.assert_close(loaded(IDS).logits, expected, rtol=1e-5, atol=1e-5)


def test_round_trip_in_a_fresh_process_and_smaller_on_disk(tmp_path):
    model, out, dense_dir = _saved(tmp_path)
    save_file({"logits": model(IDS).logits.detach().contiguous()}, tmp_path / "expected.safetensors")
    script = (
        "import sys, torch, hf_sparse\n"
        "from safetensors.torch import load_file\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(out)!r}).eval()\n"
        "assert type(m.bert.encoder.layer[0].intermediate.dense).__name__ == 'SparseLinear'\n"
        f"exp = load_file({str(tmp_path / 'expected.safetensors')!r})['logits']\n"
        f"torch.testing.assert_close(m(torch.arange(40).reshape(4, 10) % 128).logits, exp, rtol=1e-5, atol=1e-5)\n"
        "print('fresh ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "fresh ok" in result.stdout, result.stderr[-2000:]
    # the tiny model is mostly embeddings (left dense), so compare the converted layers' bytes
    sparse_sd, dense_sd = load_file(out / "model.safetensors"), load_file(dense_dir / "model.safetensors")
    sparse_bytes = sum(t.numel() * t.element_size() for k, t in sparse_sd.items() if ".weight_" in k)
    dense_bytes = sum(
        t.numel() * t.element_size()
        for k, t in dense_sd.items()
        if k.endswith(".weight") and "encoder" in k and "LayerNorm" not in k
    )
    assert sparse_bytes < 0.35 * dense_bytes


def test_loading_without_import_hf_sparse_fails_loudly(tmp_path):
    _, out, _ = _saved(tmp_path)
    script = (
        "from transformers import AutoModelForSequenceClassification\n"
        f"AutoModelForSequenceClassification.from_pretrained({str(out)!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "ignore_mismatched_sizes" in result.stderr and "torch.Size([0])" in result.stderr


def _edit_config(out, fn):
    path = out / "config.json"
    config = json.loads(path.read_text())
    fn(config["quantization_config"])
    path.write_text(json.dumps(config))


def test_malformed_checkpoints_raise_typed_errors(tmp_path):
    _, out, _ = _saved(tmp_path)
    weights = load_file(out / "model.safetensors")
    key = "bert.encoder.layer.0.attention.self.query.weight_col_indices"
    bad = dict(weights)
    cols = bad[key].clone()
    cols[0] = 500
    bad[key] = cols
    save_file(bad, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FormatError, match=r"bert\.encoder\.layer\.0\.attention\.self\.query.*out of range"):
        AutoModelForSequenceClassification.from_pretrained(out)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})

    _edit_config(out, lambda q: q.update(schema_version=99))
    with pytest.raises(FormatError, match="schema_version is 99"):
        AutoModelForSequenceClassification.from_pretrained(out)
    _edit_config(out, lambda q: q.update(schema_version=1))

    name = "bert.encoder.layer.0.attention.self.query"
    _edit_config(out, lambda q: q["modules"][name]["params"].update(format="ell"))
    with pytest.raises(FormatError, match="unknown format 'ell'"):
        AutoModelForSequenceClassification.from_pretrained(out)
    _edit_config(out, lambda q: q["modules"][name]["params"].update(format="csr", shape=[16, 32]))
    with pytest.raises(FormatError, match=r"has shape \[16, 32\] in config.json"):
        AutoModelForSequenceClassification.from_pretrained(out)


def test_loaded_checkpoint_fine_tunes_with_the_stock_trainer_and_keeps_its_pattern(tmp_path):
    _, out, _ = _saved(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    layer = model.bert.encoder.layer[1].output.dense
    before = layer.dense_weight().clone()
    args = cpu_training_args(tmp_path / "run", max_steps=4, learning_rate=1e-2)
    Trainer(model=model, args=args, train_dataset=tiny_classification_dataset(n=32, seed=0)).train()
    after = layer.dense_weight()
    assert not torch.equal(before, after)
    assert torch.equal(after != 0, (before != 0) & (after != 0)) and int((after != 0).sum()) <= int(
        (before != 0).sum()
    )
    assert torch.equal(after[before == 0], torch.zeros_like(after[before == 0]))


@pytest.mark.real
def test_real_minilm_round_trip_predictions_identical(tmp_path):
    from transformers import AutoTokenizer

    from hf_sparse.data import load_rotten_tomatoes, minilm_l6_path, stratified_subset

    path = minilm_l6_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    hf_sparse.apply_(model, PruningConfig(sparsity=0.85))
    model.save_pretrained(tmp_path / "dense")
    decisions = sparsify_(model, format="csr", progress=False)
    assert sum(d.converted for d in decisions.values()) == 36
    model.save_pretrained(tmp_path / "sparse")
    test = stratified_subset(load_rotten_tomatoes(seed=42)["test"], 128, seed=0)
    batch = tokenizer(list(test["text"]), padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
        loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sparse").eval()
        got = loaded(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    sparse_sd = load_file(tmp_path / "sparse" / "model.safetensors")
    dense_sd = load_file(tmp_path / "dense" / "model.safetensors")
    linear_sparse = sum(t.numel() * t.element_size() for k, t in sparse_sd.items() if ".weight_" in k)
    converted = [f"{n}.weight" for n, d in decisions.items() if d.converted]
    linear_dense = sum(dense_sd[k].numel() * dense_sd[k].element_size() for k in converted)
    assert linear_sparse <= 0.35 * linear_dense
    file_ratio = (tmp_path / "sparse" / "model.safetensors").stat().st_size / (
        tmp_path / "dense" / "model.safetensors"
    ).stat().st_size
    print(f"converted layers: {linear_sparse / linear_dense:.3f} of dense bytes; whole file: {file_ratio:.3f}")


def test_inspect_reports_layers_and_totals(tmp_path, capsys):
    from hf_sparse.cli import main
    from hf_sparse.integrations.inspect import inspect_checkpoint

    _, out, dense_dir = _saved(tmp_path, "bsr", block=(16, 16))
    report = inspect_checkpoint(out)
    assert report["totals"]["sparse_layers"] == 12 and report["schema_version"] == 1
    layer = next(x for x in report["layers"] if x["name"] == "bert.encoder.layer.0.intermediate.dense")
    assert layer["format"] == "bsr" and layer["shape"] == [64, 32]
    weights = load_file(out / "model.safetensors")
    prefix = "bert.encoder.layer.0.intermediate.dense.weight_"
    expected = sum(t.numel() * t.element_size() for k, t in weights.items() if k.startswith(prefix))
    assert layer["bytes"] == expected
    assert layer["stored_fraction"] == weights[prefix + "values"].numel() / (64 * 32)
    assert main(["inspect", str(out)]) == 0
    assert "12 sparse layers" in capsys.readouterr().out
    assert main(["inspect", str(dense_dir)]) == 2  # not a sparse checkpoint: a clear error, exit 2
    assert "no hf_sparse quantization_config" in capsys.readouterr().err
    (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:100])
    with pytest.raises(FormatError, match="not a readable safetensors file"):
        inspect_checkpoint(out)
