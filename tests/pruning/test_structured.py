"""Structured pruning that shrinks a BERT encoder: heads, FFN neurons and layers are removed physically, the result
computes exactly what the masked full model computes, and its checkpoint reloads (no remote code) at its new size."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModelForSequenceClassification, Trainer

import hf_sparse
from hf_sparse import PruningConfig, SparseLinear, sparsify_
from hf_sparse.config import BaseConfig
from hf_sparse.errors import ConfigError, FormatError
from hf_sparse.nn.roles import UnsupportedFamilyError
from hf_sparse.pruning.structured import (
    StructuredPruningConfig,
    drop_layers_,
    find_encoder_layers,
    head_importance,
    head_magnitude_scores,
    neuron_magnitude_scores,
    prune_heads_,
    prune_neurons_,
    structured_prune_,
    taylor_scores,
)
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset

IDS = torch.arange(40).reshape(4, 10) % 128
MASK = torch.ones(4, 10, dtype=torch.long)
MASK[1, 7:] = 0  # padding, so the attention mask matters
HIDDEN, HEADS, HEAD_SIZE, INTER = 32, 4, 8, 64
ATT = "bert.encoder.layer.{}.attention.self"
FFN = "bert.encoder.layer.{}.intermediate.dense"


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


def _masked_reference(model, heads, neurons, dropped=()):
    """Logits of the unpruned ``model`` with the named heads' contexts and neurons' activations zeroed (pre-hooks
    on the projections that read them) and the dropped layers made identities (forward hooks)."""
    handles = []
    layers = model.bert.encoder.layer

    def zero(cols):
        def hook(module, args):
            x = args[0].clone()
            x[..., cols] = 0.0
            return (x,)

        return hook

    for index, hs in heads.items():
        cols = [h * HEAD_SIZE + j for h in hs for j in range(HEAD_SIZE)]
        handles.append(layers[index].attention.output.dense.register_forward_pre_hook(zero(cols)))
    for index, ns in neurons.items():
        handles.append(layers[index].output.dense.register_forward_pre_hook(zero(list(ns))))
    for index in dropped:
        handles.append(layers[index].register_forward_hook(lambda module, args, out: args[0]))
    try:
        return _logits(model)
    finally:
        for h in handles:
            h.remove()


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


# -- shrinking equals masking --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "heads, neurons",
    [
        ({0: [1, 3]}, {}),
        ({0: [0], 1: [1, 2, 3]}, {0: [5, 6, 63]}),
        ({}, {1: list(range(0, 64, 3))}),
        ({1: [2]}, {0: list(range(64))}),  # every neuron of layer 0: the FFN adds only its output bias
    ],
)
def test_pruned_model_equals_the_masked_reference(heads, neurons):
    model = tiny_bert_classifier(seed=1)
    reference = _masked_reference(model, heads, neurons)
    before = _n_params(model)
    kept_heads = prune_heads_(model, heads)
    kept_neurons = prune_neurons_(model, neurons)
    torch.testing.assert_close(_logits(model), reference, rtol=1e-5, atol=1e-6)
    n_heads = sum(map(len, heads.values()))
    n_neurons = sum(map(len, neurons.values()))
    # per head: q/k/v rows (weight + bias) and the output projection's columns; per neuron: a row, a bias, a column
    removed = n_heads * (3 * HEAD_SIZE * (HIDDEN + 1) + HEAD_SIZE * HIDDEN) + n_neurons * (2 * HIDDEN + 1)
    assert _n_params(model) == before - removed
    assert kept_heads == {i: HEADS - len(h) for i, h in heads.items()}
    assert kept_neurons == {i: INTER - len(n) for i, n in neurons.items()}
    for index, hs in heads.items():
        attention = model.bert.encoder.layer[index].attention.self
        assert attention.num_attention_heads == HEADS - len(hs)
        assert attention.all_head_size == attention.query.out_features == (HEADS - len(hs)) * HEAD_SIZE


def test_pruning_twice_uses_current_indices_and_still_equals_masking():
    model = tiny_bert_classifier(seed=2)
    reference = _masked_reference(model, {0: [0, 2]}, {1: [0, 1, 10]})
    prune_heads_(model, {0: [0]})
    prune_heads_(model, {0: [1]})  # original head 2 is now head 1
    prune_neurons_(model, {1: [0, 1]})
    prune_neurons_(model, {1: [8]})  # original neuron 10
    torch.testing.assert_close(_logits(model), reference, rtol=1e-5, atol=1e-6)


def test_pruned_model_trains_and_gradients_reach_the_sliced_layers():
    model = tiny_bert_classifier(seed=0).train()
    prune_heads_(model, {0: [0, 1]})
    prune_neurons_(model, {1: list(range(32))})
    out = model(input_ids=IDS, attention_mask=MASK, labels=torch.tensor([0, 1, 0, 1]))
    out.loss.backward()
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad.shape == (16, HIDDEN)
    assert model.bert.encoder.layer[1].output.dense.weight.grad.shape == (HIDDEN, 32)


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda m: prune_heads_(m, {0: [0, 1, 2, 3]}), "removing all 4 heads of layer 0 is not supported"),
        (lambda m: prune_heads_(m, {0: [4]}), r"head indices \[4\] are out of range"),
        (lambda m: prune_heads_(m, {2: [0]}), r"layer indices \[2\] are out of range"),
        (lambda m: prune_neurons_(m, {0: [-1]}), r"neuron indices \[-1\] are out of range"),
        (lambda m: drop_layers_(m, [0, 1]), "cannot drop all 2 layers"),
    ],
)
def test_bad_requests_raise_config_errors_and_leave_the_model_alone(call, pattern):
    model = tiny_bert_classifier(seed=0)
    expected = _logits(model)
    with pytest.raises(ConfigError, match=pattern):
        call(model)
    torch.testing.assert_close(_logits(model), expected)
    assert getattr(model.config, "quantization_config", None) is None


def test_unsupported_architecture_is_refused_with_the_family_named():
    toy = nn.Sequential(nn.Linear(4, 4), nn.ModuleList([nn.Linear(4, 4)]))
    with pytest.raises(UnsupportedFamilyError, match=r"does not support the Sequential model family: .*role table"):
        prune_heads_(toy, {0: [0]})


def test_sparsified_layers_must_be_pruned_structurally_first():
    model = tiny_bert_classifier(seed=0)
    hf_sparse.apply_(model, PruningConfig(sparsity=0.8))
    sparsify_(model, format="csr", progress=False)
    with pytest.raises(ConfigError, match="SparseLinear. Prune heads before"):
        prune_heads_(model, {0: [0]})


def test_works_on_a_bare_bert_model():
    from transformers import BertModel

    from hf_sparse.testing import tiny_bert_config

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config()).eval()
    prune_heads_(model, {1: [0]})
    parts = find_encoder_layers(model)
    assert [p.attention_name for p in parts] == ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"]
    assert model(IDS).last_hidden_state.shape == (4, 10, HIDDEN)


# -- scores --------------------------------------------------------------------------------------------------------
def test_magnitude_scores_are_per_head_and_per_neuron_norms():
    model = tiny_bert_classifier(seed=0)
    layer = model.bert.encoder.layer[1]
    with torch.no_grad():
        layer.attention.self.value.weight[2 * HEAD_SIZE : 3 * HEAD_SIZE] *= 10
        layer.intermediate.dense.weight[7] = 0
        layer.output.dense.weight[:, 7] = 0
    heads, neurons = head_magnitude_scores(model), neuron_magnitude_scores(model)
    assert heads[1].shape == (HEADS,) and neurons[0].shape == (INTER,)
    assert int(heads[1].argmax()) == 2 and float(neurons[1][7]) == 0.0
    att = model.bert.encoder.layer[0].attention
    rows = slice(HEAD_SIZE, 2 * HEAD_SIZE)
    by_hand = sum(getattr(att.self, n).weight[rows].pow(2).sum() for n in ("query", "key", "value"))
    by_hand = (by_hand + att.output.dense.weight[:, rows].pow(2).sum()).sqrt()
    torch.testing.assert_close(heads[0][1], by_hand.detach())


def _batches(n=2):
    data = tiny_classification_dataset(n=8 * n, seed=3).with_format("torch")
    return [{k: data[i * 8 : (i + 1) * 8][k] for k in ("input_ids", "attention_mask", "labels")} for i in range(n)]


def test_taylor_scores_match_the_derivative_of_the_loss_in_a_unit_scale():
    """|sum w * dL/dw| over a head's weights is |dL/d alpha| when the head's weights are scaled by alpha: check it
    against a central finite difference (float64, summed over the batches)."""
    model = tiny_bert_classifier(seed=4).double()
    batches = _batches()
    heads, neurons = taylor_scores(model, batches)
    assert all(p.grad is None for p in model.parameters()) and not model.training

    def loss_with_scale(scale_fn, alpha):
        m = copy.deepcopy(model)
        with torch.no_grad():
            scale_fn(m, alpha)
            return sum(float(m(**b).loss) for b in batches)

    def scale_head(m, alpha, layer=1, head=2):
        rows = slice(head * HEAD_SIZE, (head + 1) * HEAD_SIZE)
        att = m.bert.encoder.layer[layer].attention
        for n in ("query", "key", "value"):
            getattr(att.self, n).weight[rows] *= alpha
            getattr(att.self, n).bias[rows] *= alpha
        att.output.dense.weight[:, rows] *= alpha

    def scale_neuron(m, alpha, layer=0, j=11):
        layer = m.bert.encoder.layer[layer]
        layer.intermediate.dense.weight[j] *= alpha
        layer.intermediate.dense.bias[j] *= alpha
        layer.output.dense.weight[:, j] *= alpha

    eps = 1e-5
    for fn, got in ((scale_head, heads[1][2]), (scale_neuron, neurons[0][11])):
        fd = (loss_with_scale(fn, 1 + eps) - loss_with_scale(fn, 1 - eps)) / (2 * eps)
        assert float(got) == pytest.approx(abs(fd), rel=1e-4, abs=1e-9)
    torch.testing.assert_close(head_importance(model, batches)[1], heads[1])


def test_taylor_scores_need_labels():
    model = tiny_bert_classifier(seed=0)
    with pytest.raises(ConfigError, match="Pass batches with `labels`"):
        taylor_scores(model, [{"input_ids": IDS}])
    with pytest.raises(ConfigError, match="at least one batch"):
        taylor_scores(model, [])


# -- config and apply_ ---------------------------------------------------------------------------------------------
def test_apply_with_a_structured_config_shrinks_and_reports():
    model = tiny_bert_classifier(seed=0)
    before = _n_params(model)
    config = StructuredPruningConfig(heads_fraction=0.5, neurons_fraction=0.25)
    report = hf_sparse.apply_(model, config)
    assert report["params_before"] == before and report["params_after"] == _n_params(model) < before
    assert [len(layer["heads_kept"]) for layer in report["layers"]] == [2, 2]
    assert [len(layer["neurons_kept"]) for layer in report["layers"]] == [48, 48]
    assert all(layer["params_after"] < layer["params_before"] for layer in report["layers"])
    removed = sum(layer["params_before"] - layer["params_after"] for layer in report["layers"])
    assert removed == before - _n_params(model)
    # the lowest-magnitude heads went: the kept ones are the top-2 of the scores computed before pruning
    scores = head_magnitude_scores(tiny_bert_classifier(seed=0))
    assert report["layers"][0]["heads_kept"] == sorted(scores[0].argsort()[2:].tolist())


def test_global_scope_keeps_a_head_per_layer_and_removes_the_fraction_overall():
    model = tiny_bert_classifier(seed=0)
    with torch.no_grad():  # make layer 0's heads much weaker than layer 1's, but not uniformly
        model.bert.encoder.layer[0].attention.self.query.weight.mul_(0.01)
        model.bert.encoder.layer[0].attention.self.key.weight.mul_(0.01)
        model.bert.encoder.layer[0].attention.self.value.weight.mul_(0.01)
    report = structured_prune_(model, StructuredPruningConfig(heads_fraction=0.75, scope="global"))
    kept = [len(layer["heads_kept"]) for layer in report["layers"]]
    assert sum(kept) == 2 and min(kept) >= 1


def test_config_validates_and_round_trips():
    config = StructuredPruningConfig(heads_fraction=0.25, criterion="taylor", layers_to_drop=[1])
    assert BaseConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match=r"heads_fraction must be in \[0, 1\)"):
        StructuredPruningConfig(heads_fraction=1.0)
    with pytest.raises(ConfigError, match="criterion must be one of"):
        StructuredPruningConfig(criterion="movement")
    with pytest.raises(ConfigError, match="layers_to_drop must be distinct"):
        StructuredPruningConfig(layers_to_drop=(1, 1))
    with pytest.raises(ConfigError, match="criterion='taylor' needs data"):
        hf_sparse.apply_(tiny_bert_classifier(), StructuredPruningConfig(heads_fraction=0.25, criterion="taylor"))


def test_taylor_criterion_through_structured_prune():
    model = tiny_bert_classifier(seed=0)
    batches = _batches()
    heads, _ = taylor_scores(model, batches)
    report = structured_prune_(model, StructuredPruningConfig(heads_fraction=0.25, criterion="taylor"), batches)
    for index, layer in enumerate(report["layers"]):
        assert int(heads[index].argmin()) not in layer["heads_kept"] and len(layer["heads_kept"]) == 3


# -- dropping layers -----------------------------------------------------------------------------------------------
def test_dropping_layers_equals_skipping_them_and_round_trips_as_a_plain_model(tmp_path):
    model = tiny_bert_classifier(seed=0, num_hidden_layers=3)
    reference = _masked_reference(model, {}, {}, dropped=[1])
    report = structured_prune_(model, StructuredPruningConfig(layers_to_drop=(1,)))
    assert report["dropped_layers"] == [1] and len(model.bert.encoder.layer) == 2
    assert model.config.num_hidden_layers == 2
    assert [layer.attention.self.layer_idx for layer in model.bert.encoder.layer] == [0, 1]
    torch.testing.assert_close(_logits(model), reference, rtol=1e-5, atol=1e-6)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2 and "quantization_config" not in saved  # any transformers loads it
    torch.testing.assert_close(_logits(AutoModelForSequenceClassification.from_pretrained(tmp_path)), reference)


def test_dropped_layers_are_recorded_with_narrower_layers_and_round_trip(tmp_path):
    model = tiny_bert_classifier(seed=0, num_hidden_layers=4)
    reference = _masked_reference(model, {2: [0, 3]}, {3: [1, 2]}, dropped=[0, 1])
    drop_layers_(model, [1])
    drop_layers_(model, [0])  # original layer 0: the record keeps original indices
    prune_heads_(model, {0: [0, 3]})
    prune_neurons_(model, {1: [1, 2]})
    torch.testing.assert_close(_logits(model), reference, rtol=1e-5, atol=1e-6)
    assert model.config.quantization_config.structure["dropped_layers"] == [0, 1]
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert len(loaded.bert.encoder.layer) == 2 and loaded.config.num_hidden_layers == 2
    torch.testing.assert_close(_logits(loaded), reference, rtol=1e-5, atol=1e-6)


# -- checkpoints ---------------------------------------------------------------------------------------------------
HEADS_PLAN = {0: [1, 3], 1: [0]}
NEURONS_PLAN = {0: list(range(20)), 1: list(range(64))}


def _pruned_checkpoint(tmp_path):
    model = tiny_bert_classifier(seed=0)
    prune_heads_(model, HEADS_PLAN)
    prune_neurons_(model, NEURONS_PLAN)
    out = tmp_path / "structured"
    model.save_pretrained(out)
    return model, out


def _check_shapes(model):
    layers = model.bert.encoder.layer
    assert layers[0].attention.self.query.weight.shape == (2 * HEAD_SIZE, HIDDEN)
    assert layers[0].attention.output.dense.weight.shape == (HIDDEN, 2 * HEAD_SIZE)
    assert layers[1].attention.self.value.weight.shape == (3 * HEAD_SIZE, HIDDEN)
    assert layers[0].intermediate.dense.weight.shape == (INTER - 20, HIDDEN)
    assert layers[1].output.dense.weight.shape == (HIDDEN, 0)
    assert [layer.attention.self.num_attention_heads for layer in layers] == [2, 3]


def test_checkpoint_records_the_structure_with_schema_version_2(tmp_path):
    _, out = _pruned_checkpoint(tmp_path)
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "hf_sparse" and q["schema_version"] == 2 and q["modules"] == {}
    assert q["structure"] == {
        "attention": {ATT.format(0): {"num_heads": 2}, ATT.format(1): {"num_heads": 3}},
        "ffn": {FFN.format(0): {"intermediate_size": 44}, FFN.format(1): {"intermediate_size": 0}},
    }


def test_round_trip_in_process(tmp_path):
    model, out = _pruned_checkpoint(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    _check_shapes(loaded)
    assert _n_params(loaded) == _n_params(model)
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)


def test_round_trip_in_a_fresh_process(tmp_path):
    model, out = _pruned_checkpoint(tmp_path)
    save_file({"logits": _logits(model).contiguous()}, tmp_path / "expected.safetensors")
    script = (
        "import torch, hf_sparse\n"
        "from safetensors.torch import load_file\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(out)!r}).eval()\n"
        "layers = m.bert.encoder.layer\n"
        "assert layers[0].attention.self.query.weight.shape == (16, 32), layers[0].attention.self.query\n"
        "assert layers[1].intermediate.dense.weight.shape == (0, 32)\n"
        "ids = torch.arange(40).reshape(4, 10) % 128\n"
        "mask = torch.ones(4, 10, dtype=torch.long); mask[1, 7:] = 0\n"
        f"exp = load_file({str(tmp_path / 'expected.safetensors')!r})['logits']\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(m(input_ids=ids, attention_mask=mask).logits, exp, rtol=0, atol=0)\n"
        "print('fresh ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "fresh ok" in result.stdout, result.stderr[-2000:]


def test_loading_without_hf_sparse_fails_loudly(tmp_path):
    """Without ``import hf_sparse`` transformers does not know the quant method and builds the full-size model; the
    checkpoint's narrower tensors then mismatch and transformers raises (never a silently re-initialised model)."""
    _, out = _pruned_checkpoint(tmp_path)
    script = (
        "from transformers import AutoModelForSequenceClassification\n"
        f"AutoModelForSequenceClassification.from_pretrained({str(out)!r})\n"
        "print('loaded')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "loaded" not in result.stdout
    assert "size mismatch" in result.stderr or "hf_sparse" in result.stderr, result.stderr[-2000:]


def test_structured_and_sparsified_model_round_trips(tmp_path):
    model = tiny_bert_classifier(seed=0)
    prune_heads_(model, HEADS_PLAN)
    # (not every neuron of a layer: PruningConfig's report cannot yet take a zero-element Linear)
    prune_neurons_(model, {0: list(range(20)), 1: list(range(40))})
    hf_sparse.apply_(model, PruningConfig(sparsity=0.8))
    sparsify_(model, format="csr", progress=False)
    q = model.config.quantization_config
    assert q.modules and q.structure["attention"][ATT.format(0)] == {"num_heads": 2}
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.bert.encoder.layer[0].attention.self.query, SparseLinear)
    assert loaded.bert.encoder.layer[0].attention.self.query.out_features == 16
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=1e-5, atol=1e-6)


def test_version_1_checkpoints_are_still_written_without_structure(tmp_path):
    model = tiny_bert_classifier(seed=0)
    hf_sparse.apply_(model, PruningConfig(sparsity=0.8))
    sparsify_(model, format="csr", progress=False)
    model.save_pretrained(tmp_path)
    q = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert q["schema_version"] == 1 and "structure" not in q


def _edit(folder, edit):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config["quantization_config"])
    path.write_text(json.dumps(config))


A0, A1, F0, F1 = ATT.format(0), ATT.format(1), FFN.format(0), FFN.format(1)


@pytest.mark.parametrize(
    "edit, name, pattern",
    [
        (lambda q: q["structure"]["attention"][A0].update(num_heads=5), A0, "num_heads 5 is more than the 4"),
        (lambda q: q["structure"]["attention"][A0].update(num_heads=0), A0, "must be an integer >= 1"),
        (lambda q: q["structure"]["attention"][A0].update(num_heads=True), A0, "must be an integer >= 1"),
        (lambda q: q["structure"]["attention"][A0].update(num_heads=3), A0 + ".query.weight", "has shape"),
        (lambda q: q["structure"]["attention"][A1].update(num_heads=4), A1 + ".query", "has shape"),
        (lambda q: q["structure"]["ffn"][F0].update(intermediate_size=45), F0, r"has shape \[44, 32\]"),
        (lambda q: q["structure"]["ffn"][F0].update(intermediate_size=65), F0, "more than the 64"),
        (lambda q: q["structure"]["ffn"].update({F0: {"size": 3}}), F0, "must be {'intermediate_size'"),
        (lambda q: q["structure"]["ffn"].update({F0 + "x": {"intermediate_size": 3}}), F0 + "x", "has no FFN"),
        (
            lambda q: q["structure"]["attention"].update({"bert.pooler": {"num_heads": 1}}),
            "bert.pooler",
            "no self-attention module",
        ),
        (lambda q: q["structure"].update(heads=[1]), "structure", r"keys \['heads'\]"),
        (lambda q: q["structure"].update(dropped_layers=[1, 1]), "dropped_layers", "distinct"),
        (lambda q: q.update(structure=[1]), "structure", "must be a dict"),
        (lambda q: q.update(schema_version=1), "structure", "needs schema_version 2"),
        (lambda q: q.update(schema_version=3), "schema_version", "Upgrade hf_sparse"),
    ],
)
def test_malformed_structure_raises_format_error_naming_the_module(tmp_path, edit, name, pattern):
    _, out = _pruned_checkpoint(tmp_path)
    _edit(out, edit)
    with pytest.raises(FormatError, match=pattern) as info:
        AutoModelForSequenceClassification.from_pretrained(out)
    assert re.escape(name) and name in str(info.value)


# -- training ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reload", [False, True])
def test_trainer_fine_tunes_the_shrunk_model(tmp_path, reload):
    model = tiny_bert_classifier(seed=0)
    structured_prune_(model, StructuredPruningConfig(heads_fraction=0.5, neurons_fraction=0.5))
    if reload:
        model.save_pretrained(tmp_path / "ckpt")
        model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ckpt")
    query = model.bert.encoder.layer[0].attention.self.query
    start = query.weight.detach().clone()
    args = cpu_training_args(tmp_path / "run", max_steps=3, per_device_train_batch_size=8, learning_rate=1e-2)
    trainer = Trainer(model=model, args=args, train_dataset=tiny_classification_dataset(n=32))
    trainer.train()
    assert model.bert.encoder.layer[0].attention.self.query.weight.shape == (16, HIDDEN)
    assert not torch.equal(model.bert.encoder.layer[0].attention.self.query.weight.detach(), start)
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in trainer.state.log_history if "loss" in log)
