"""Sparse checkpoints: save_pretrained writes compressed tensors, from_pretrained (after import hf_sparse) rebuilds
the sparse modules and gives the same outputs, bad checkpoints raise typed errors, loaded models fine-tune."""

import json
import os
import re
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
    # Reduced precision: the stored values load converted, the predictions stay those of the float32 model.
    with torch.no_grad():
        half = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sparse", dtype=torch.bfloat16).eval()
        got16 = half(**batch).logits
    assert got16.dtype == torch.bfloat16
    torch.testing.assert_close(got16.float(), expected, rtol=0.05, atol=0.05)
    assert (got16.float().argmax(-1) == expected.argmax(-1)).float().mean() >= 0.97


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
    with pytest.raises(FormatError, match="model.safetensors.*truncated"):
        inspect_checkpoint(out)


# -- an hf_sparse checkpoint loads exactly what it saved -------------------------------------------------------------
def _edit_tensors(out, fn):
    tensors = load_file(out / "model.safetensors")
    fn(tensors)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})


def _load_raises(out, *patterns, cls=AutoModelForSequenceClassification):
    with pytest.raises(FormatError) as info:
        cls.from_pretrained(out)
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), f"{pattern!r} not in {info.value}"


DENSE_KEYS = [
    "classifier.weight",
    "classifier.bias",
    "bert.embeddings.position_embeddings.weight",
    "bert.embeddings.token_type_embeddings.weight",
    "bert.embeddings.LayerNorm.weight",
    "bert.encoder.layer.1.output.LayerNorm.bias",
    "bert.pooler.dense.bias",
]


@pytest.mark.parametrize("key", DENSE_KEYS)
def test_missing_dense_tensor_raises_instead_of_a_random_initialisation(tmp_path, key):
    _, out, _ = _saved(tmp_path)
    _edit_tensors(out, lambda t: t.pop(key))
    _load_raises(out, re.escape(repr(key)), "missing", "initialise it at random")


@pytest.mark.parametrize("key", ["classifier.weight", "bert.pooler.dense.bias"])
def test_renamed_dense_tensor_raises(tmp_path, key):
    _, out, _ = _saved(tmp_path)
    _edit_tensors(out, lambda t: t.update({"head." + key: t.pop(key)}))
    _load_raises(out, re.escape(repr(key)) + "|" + re.escape(repr("head." + key)))


def test_extra_tensor_in_a_module_raises(tmp_path):
    _, out, _ = _saved(tmp_path)
    _edit_tensors(out, lambda t: t.update({"bert.pooler.dense.scale": torch.ones(3)}))
    _load_raises(out, re.escape("'bert.pooler.dense.scale'"), "not a tensor of the model", "drop it silently")


@pytest.mark.parametrize(
    "layers, pattern",
    [
        (3, r"'bert\.encoder\.layer\.2\..*' is missing"),
        (1, r"'bert\.encoder\.layer\.1\..*'.*(not a tensor of the model|which this model does not have)"),
    ],
)
def test_changed_layer_count_in_config_raises(tmp_path, layers, pattern):
    _, out, _ = _saved(tmp_path)
    config = json.loads((out / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (out / "config.json").write_text(json.dumps(config))
    _load_raises(out, pattern)


@pytest.mark.parametrize(
    "key",
    [
        "bert.encoder.layer.0.attention.self.query.weight_values",
        "bert.encoder.layer.0.attention.self.query.bias",
        "bert.embeddings.LayerNorm.weight",
        "bert.embeddings.word_embeddings.weight",
        "classifier.weight",
    ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_value_in_any_tensor_raises(tmp_path, key, value):
    _, out, _ = _saved(tmp_path)

    def poison(tensors):
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[1] = value

    _edit_tensors(out, poison)
    _load_raises(out, re.escape(repr(key)), "NaN or infinite")


def test_values_beyond_float16_range_raise_when_loading_in_float16(tmp_path):
    _, out, _ = _saved(tmp_path)
    key = "bert.encoder.layer.0.attention.self.query.weight_values"
    _edit_tensors(out, lambda t: t[key].__setitem__(0, 1e6))
    AutoModelForSequenceClassification.from_pretrained(out)  # finite in float32
    with pytest.raises(FormatError, match=re.escape(repr(key)) + ".*NaN or infinite.*float16"):
        AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float16)


def test_new_task_head_from_another_class_still_loads(tmp_path):
    """Fine-tuning a sparse masked-LM checkpoint as a classifier: the new head (outside the base model) is
    initialised, the other class's head is dropped — transformers' documented behaviour, kept; the base model must
    be complete."""
    from transformers import BertForMaskedLM

    from hf_sparse.testing import tiny_bert_config

    torch.manual_seed(0)
    mlm = BertForMaskedLM(tiny_bert_config()).eval()
    hf_sparse.apply_(mlm, PruningConfig(sparsity=0.85))
    sparsify_(mlm, format="csr", progress=False)
    mlm.save_pretrained(tmp_path / "mlm")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "mlm")
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == 12
    _edit_tensors(tmp_path / "mlm", lambda t: t.pop("bert.embeddings.LayerNorm.bias"))
    _load_raises(tmp_path / "mlm", re.escape("'bert.embeddings.LayerNorm.bias'"), "missing")


def test_ignore_mismatched_sizes_on_purpose_still_loads(tmp_path):
    _, out, _ = _saved(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(out, num_labels=5, ignore_mismatched_sizes=True)
    assert model.classifier.weight.shape == (5, 32)


@pytest.mark.parametrize("tied", [False, True])
def test_decoder_round_trips_and_refuses_a_missing_norm_or_a_flipped_tie(tmp_path, tied):
    from transformers import AutoModelForCausalLM

    from hf_sparse.testing import tiny_causal_lm

    model = tiny_causal_lm(seed=0, tie_word_embeddings=tied)
    hf_sparse.apply_(model, PruningConfig(sparsity=0.8))
    sparsify_(model, format="csr", progress=False)
    model.save_pretrained(tmp_path / "lm")
    ids = torch.arange(24).reshape(2, 12) % 128
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    config["tie_word_embeddings"] = not tied
    (tmp_path / "lm" / "config.json").write_text(json.dumps(config))
    pattern = "'lm_head.weight' is missing" if tied else "are both stored, but config.json ties"
    _load_raises(tmp_path / "lm", pattern, cls=AutoModelForCausalLM)
    config["tie_word_embeddings"] = tied
    (tmp_path / "lm" / "config.json").write_text(json.dumps(config))
    _edit_tensors(tmp_path / "lm", lambda t: t.pop("model.norm.weight"))
    _load_raises(tmp_path / "lm", "'model.norm.weight' is missing", cls=AutoModelForCausalLM)


def test_gpt2_with_a_tied_head_round_trips(tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from hf_sparse.integrations import sparse_config_for
    from hf_sparse.nn import SparseEmbedding, replace_module

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    wpe = model.transformer.wpe
    replace_module(model, "transformer.wpe", SparseEmbedding.from_embedding(wpe, torch.rand(wpe.weight.shape) < 0.3))
    model.config.quantization_config = sparse_config_for(model)
    model.save_pretrained(tmp_path / "gpt2")
    ids = torch.arange(24).reshape(2, 12) % 128
    with torch.no_grad():
        torch.testing.assert_close(
            AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2")(input_ids=ids).logits,
            model(input_ids=ids).logits,
        )
    _edit_tensors(tmp_path / "gpt2", lambda t: t.pop("transformer.ln_f.bias"))
    _load_raises(tmp_path / "gpt2", "'transformer.ln_f.bias' is missing", cls=AutoModelForCausalLM)


# -- hostile files --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [50, 900, 100_000])
def test_deeply_nested_header_metadata_is_a_format_error(tmp_path, depth):
    _, out, _ = _saved(tmp_path)
    path = out / "model.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + n].replace(b"{", b'{"__metadata__":{"a":' + b"[" * depth + b"1" + b"]" * depth + b"},", 1)
    header = header.replace(b'"__metadata__":{"format":"pt"},', b"", 1)
    path.write_bytes(len(header).to_bytes(8, "little") + header + data[8 + n :])
    _load_raises(out, "checkpoint file 'model.safetensors'", "header")


def _sharded(tmp_path):
    _, out, _ = _saved(tmp_path)
    AutoModelForSequenceClassification.from_pretrained(out).save_pretrained(
        tmp_path / "sharded", max_shard_size="40KB"
    )
    folder = tmp_path / "sharded"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return folder, index, sorted(set(index["weight_map"].values()))


@pytest.mark.parametrize("where", ["dotdot", "absolute", "dev_zero", "link_out", "link_dev_zero", "fifo", "bin"])
def test_shard_paths_are_confined_to_the_checkpoint_folder(tmp_path, where):
    folder, index, shards = _sharded(tmp_path)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((folder / shards[0]).read_bytes())
    target = {"dotdot": "../outside.safetensors", "absolute": str(outside), "dev_zero": "/dev/zero"}.get(where)
    if where == "link_out":
        os.symlink(outside, folder / "link.safetensors")
        target = "link.safetensors"
    elif where == "link_dev_zero":
        os.symlink("/dev/zero", folder / "zero.safetensors")
        target = "zero.safetensors"
    elif where == "fifo":
        os.mkfifo(folder / "pipe.safetensors")
        target = "pipe.safetensors"
    elif where == "bin":
        os.rename(folder / shards[0], folder / "shard.bin")
        target = "shard.bin"
    index["weight_map"] = {k: (target if v == shards[0] else v) for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    problem = {"fifo": "not a regular file", "bin": "not a .safetensors file", "link_out": "is a link to"}
    _load_raises(folder, "checkpoint file '[^']*" + re.escape(target.lstrip(".")), problem.get(where, "outside"))
