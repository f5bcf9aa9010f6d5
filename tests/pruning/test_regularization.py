"""Regularisation for pruning: penalties against hand computation, DropConnect, hard-concrete gate maths, finalizing
gates into a smaller plain model, config validation, and training with the stock Trainer."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, Trainer

from hf_sparse.apply import apply_
from hf_sparse.config import BaseConfig
from hf_sparse.errors import ConfigError
from hf_sparse.pruning.regularization import (
    DropConnect,
    HardConcreteGate,
    RegularizationConfig,
    RegularizationHandle,
    attach_regularization,
    hard_concrete_deterministic,
    hard_concrete_log_alpha,
    hard_concrete_prob_nonzero,
    hard_concrete_sample,
)
from hf_sparse.pruning.regularization_callback import RegularizationCallback
from hf_sparse.pruning.structured import prune_heads_, prune_neurons_
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset

IDS = torch.arange(40).reshape(4, 10) % 128
MASK = torch.ones(4, 10, dtype=torch.long)
MASK[1, 7:] = 0
LABELS = torch.tensor([0, 1, 0, 1])
HEADS, HEAD_SIZE, INTER = 4, 8, 64


def _model(seed: int = 0):
    # No dropout: outputs of two forwards can then differ only through DropConnect or sampled gates.
    return tiny_bert_classifier(seed=seed, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)
        self.classifier = nn.Linear(2, 2)  # excluded by DEFAULT_EXCLUDE

    def forward(self, x):
        return {"loss": self.classifier(self.b(self.a(x))).pow(2).mean()}


# -- config ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"l1": -1.0}, "l1"),
        ({"group_lasso": float("nan")}, "group_lasso"),
        ({"groups": ("head", "layer")}, "groups"),
        ({"groups": ("head", "head")}, "groups"),
        ({"group_lasso": 0.1, "groups": ()}, "groups"),
        ({"dropconnect": 1.0}, "dropconnect"),
        ({"gates": ("heads",)}, "gates"),
        ({"gate_penalty": 1.0}, "gates"),
        ({"gates": ("head",), "gate_target_density": 1.5}, "gate_target_density"),
        ({"gate_init_keep": 1.0}, "gate_init_keep"),
        ({"gate_temperature": 0.0}, "gate_temperature"),
        ({"gate_limits": (0.0, 1.1)}, "gate_limits"),
        ({"gate_limits": (-0.1, 1.1, 2.0)}, "gate_limits"),
        ({"gate_lr_multiplier": 0.0}, "gate_lr_multiplier"),
        ({"target_modules": ("(",)}, "target_modules"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"RegularizationConfig\.{field}"):
        RegularizationConfig(**kwargs)


def test_config_round_trips_and_is_registered():
    cfg = RegularizationConfig(l1=1e-4, gates=("neuron",), gate_penalty=2.0, gate_target_density=0.5)
    assert BaseConfig.from_json(cfg.to_json()) == cfg
    assert cfg.to_dict()["config_type"] == "regularization"
    with pytest.raises(ConfigError, match="Unknown key 'l2'"):
        RegularizationConfig.from_dict({"l2": 1.0})
    with pytest.raises(ConfigError, match="gates"):
        RegularizationConfig.from_dict({"gates": "head"})  # a string is not a list of units


# -- penalties ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [False, True])
def test_l1_penalty_matches_hand_computation(normalize):
    toy = Toy()
    handle = attach_regularization(toy, RegularizationConfig(l1=0.5, normalize=normalize))
    assert set(handle.modules) == {"a", "b"}
    total = toy.a.weight.abs().sum() + toy.b.weight.abs().sum()
    expected = 0.5 * (total / (12 + 8) if normalize else total)
    torch.testing.assert_close(handle.penalty(), expected)
    # The hook adds it to the loss in training mode only.
    x = torch.randn(5, 3)
    toy.train()
    base = toy.classifier(toy.b(toy.a(x))).pow(2).mean()
    torch.testing.assert_close(toy(x)["loss"], base + expected)
    toy.eval()
    torch.testing.assert_close(toy(x)["loss"], base)
    handle.remove()
    toy.train()
    torch.testing.assert_close(toy(x)["loss"], base)


def _hand_group_norms(model):
    heads, neurons = [], []
    for layer in model.bert.encoder.layer:
        att = layer.attention.self
        out = layer.attention.output.dense.weight
        for h in range(HEADS):
            rows = slice(h * HEAD_SIZE, (h + 1) * HEAD_SIZE)
            sq = sum(getattr(att, n).weight[rows].pow(2).sum() for n in ("query", "key", "value"))
            heads.append(torch.sqrt(sq + out[:, rows].pow(2).sum()))
        inter, ffn_out = layer.intermediate.dense.weight, layer.output.dense.weight
        for j in range(INTER):
            neurons.append(torch.sqrt(inter[j].pow(2).sum() + ffn_out[:, j].pow(2).sum()))
    return torch.stack(heads), torch.stack(neurons)


@pytest.mark.parametrize(
    ("groups", "normalize"), [(("head", "neuron"), False), (("head",), True), (("neuron",), True)]
)
def test_group_lasso_matches_hand_computation(groups, normalize):
    model = _model()
    heads, neurons = _hand_group_norms(model)
    handle = attach_regularization(model, RegularizationConfig(group_lasso=0.3, groups=groups, normalize=normalize))
    norms = torch.cat(([heads] if "head" in groups else []) + ([neurons] if "neuron" in groups else []))
    expected = 0.3 * (norms.mean() if normalize else norms.sum())
    torch.testing.assert_close(handle.penalty(), expected)
    assert handle.stats()["reg_group_lasso"] == pytest.approx(expected.item(), rel=1e-5)


def test_group_lasso_gradient_is_finite_at_a_zero_group():
    model = _model()
    with torch.no_grad():
        att = model.bert.encoder.layer[0].attention
        for n in ("query", "key", "value"):
            getattr(att.self, n).weight[:HEAD_SIZE] = 0.0
        att.output.dense.weight[:, :HEAD_SIZE] = 0.0
    handle = attach_regularization(model, RegularizationConfig(group_lasso=1.0, groups=("head",)))
    handle.penalty().backward()
    grad = model.bert.encoder.layer[0].attention.self.query.weight.grad
    assert torch.isfinite(grad).all() and (grad[:HEAD_SIZE] == 0).all() and (grad[HEAD_SIZE:] != 0).any()


def test_penalty_reaches_the_loss_of_a_transformers_model():
    model = _model()
    plain = copy.deepcopy(model)
    handle = attach_regularization(model, RegularizationConfig(l1=1.0, group_lasso=0.5))
    model.train(), plain.train()
    out = model(input_ids=IDS, attention_mask=MASK, labels=LABELS)
    ref = plain(input_ids=IDS, attention_mask=MASK, labels=LABELS)
    torch.testing.assert_close(out.loss, ref.loss + handle.penalty())
    assert out["loss"] is out.loss
    model(input_ids=IDS, attention_mask=MASK)  # no labels, no loss: nothing to add, no error
    model.eval(), plain.eval()
    torch.testing.assert_close(
        model(input_ids=IDS, attention_mask=MASK, labels=LABELS).loss,
        plain(input_ids=IDS, attention_mask=MASK, labels=LABELS).loss,
    )


def test_errors_for_unsupported_models_and_double_attach():
    with pytest.raises(ConfigError, match="selects no nn.Linear"):
        attach_regularization(Toy(), RegularizationConfig(l1=1.0, target_modules=("nothing",)))
    with pytest.raises(ConfigError, match="group_lasso / gates"):
        attach_regularization(Toy(), RegularizationConfig(gates=("head",)))
    model = _model()
    handle = attach_regularization(model, RegularizationConfig(dropconnect=0.1, gates=("head",)))
    with pytest.raises(ConfigError, match="attached twice"):
        attach_regularization(model, RegularizationConfig(gates=("head",)))
    with pytest.raises(ConfigError, match="already parametrized"):
        attach_regularization(model, RegularizationConfig(dropconnect=0.2))
    handle.remove()
    assert not handle.attached
    with pytest.raises(ConfigError, match="removed or finalized"):
        handle.penalty()
    # apply_ reaches the same handler through the registry.
    assert isinstance(apply_(model, RegularizationConfig(l1=1.0)), RegularizationHandle)


# -- DropConnect ------------------------------------------------------------------------------------------------------
def test_dropconnect_drops_in_training_is_identity_in_eval_and_removes_cleanly():
    model = _model()
    reference = _logits(model)
    layer = model.bert.encoder.layer[0].intermediate.dense
    weight_param = layer.weight
    original = weight_param.detach().clone()
    handle = attach_regularization(model, RegularizationConfig(dropconnect=0.5, l1=1.0, normalize=False))
    assert "bert.pooler.dense" not in handle.modules and "classifier" not in handle.modules
    # The penalty reads the trained weights, not a dropped copy.
    expected_l1 = sum(m.parametrizations.weight.original.abs().sum() for m in handle.modules.values())
    torch.testing.assert_close(handle.penalty(), expected_l1)

    model.train()
    torch.manual_seed(1)
    w = layer.weight
    dropped = w == 0
    assert 0.4 < dropped.float().mean() < 0.6
    torch.testing.assert_close(w[~dropped], original[~dropped] * 2.0)  # survivors scaled by 1 / (1 - p)
    assert not torch.equal(layer.weight, w)  # a fresh mask at every access
    with torch.no_grad():
        a = model(input_ids=IDS, attention_mask=MASK).logits
        b = model(input_ids=IDS, attention_mask=MASK).logits
    assert not torch.allclose(a, b)

    model.eval()
    assert torch.equal(layer.weight, original)
    torch.testing.assert_close(_logits(model), reference)

    handle.remove()
    assert type(layer) is nn.Linear and layer.weight is weight_param and torch.equal(layer.weight, original)
    assert not any("parametrizations" in k for k in model.state_dict())


def test_dropconnect_module_alone():
    drop = DropConnect(0.25)
    w = torch.randn(200, 200)
    torch.manual_seed(0)
    out = drop(w)
    assert abs(float((out == 0).float().mean()) - 0.25) < 0.01
    drop.eval()
    assert drop(w) is w
    with pytest.raises(ConfigError, match="DropConnect p"):
        DropConnect(1.0)


# -- hard-concrete gates ----------------------------------------------------------------------------------------------
def test_hard_concrete_formulas():
    la = torch.tensor([-10.0, -1.0, 0.0, 0.5, 2.0, 10.0])
    det = hard_concrete_deterministic(la)
    hand = [min(max(1.2 / (1 + math.exp(-v)) - 0.1, 0.0), 1.0) for v in la.tolist()]
    torch.testing.assert_close(det, torch.tensor(hand))
    assert det[0] == 0 and det[-1] == 1
    prob = hard_concrete_prob_nonzero(la)
    hand_p = [1 / (1 + math.exp(-(v - (2 / 3) * math.log(0.1 / 1.1)))) for v in la.tolist()]
    torch.testing.assert_close(prob, torch.tensor(hand_p))
    for keep in (0.1, 0.5, 0.99):
        torch.testing.assert_close(
            hard_concrete_prob_nonzero(torch.tensor(hard_concrete_log_alpha(keep))), torch.tensor(keep)
        )


def test_hard_concrete_samples_are_in_unit_interval_and_match_the_expected_l0():
    torch.manual_seed(0)
    la = torch.tensor([-2.0, 0.0, 1.5]).repeat(100_000, 1)
    z = hard_concrete_sample(la)
    assert z.min() >= 0 and z.max() <= 1
    assert (z == 0).any() and (z == 1).any() and ((z > 0) & (z < 1)).any()
    empirical = (z > 0).float().mean(0)
    torch.testing.assert_close(empirical, hard_concrete_prob_nonzero(la[0]), atol=5e-3, rtol=0)
    la.requires_grad_(True)
    hard_concrete_sample(la).sum().backward()
    assert torch.isfinite(la.grad).all() and (la.grad > 0).any()


def test_gate_module_modes_init_and_lr_multiplier():
    gate = HardConcreteGate(5, init_keep=0.9, lr_multiplier=10.0)
    torch.testing.assert_close(gate.prob_nonzero(), torch.full((5,), 0.9))
    torch.testing.assert_close(gate.log_alpha, 10.0 * gate.scaled_log_alpha.detach())
    gate.eval()
    assert torch.equal(gate(), gate.deterministic())
    gate.train()
    torch.manual_seed(0)
    assert not torch.equal(gate(), gate())
    # The gradient reaches the stored parameter unscaled, so a plain SGD step of lr moves log_alpha by 10 * lr.
    before = gate.log_alpha.detach().clone()
    gate.prob_nonzero().sum().backward()
    grad = gate.scaled_log_alpha.grad.clone()
    p = gate.prob_nonzero().detach()
    torch.testing.assert_close(grad, p * (1 - p))
    with torch.no_grad():
        gate.scaled_log_alpha -= 0.01 * grad
    torch.testing.assert_close(gate.log_alpha.detach(), before - 0.1 * grad)
    assert HardConcreteGate(3, init_keep=0.99).deterministic().eq(1).all()  # default init leaves outputs unchanged


def test_gates_scale_heads_and_neurons_like_physical_removal():
    model = _model()
    reference = copy.deepcopy(model)
    handle = attach_regularization(model, RegularizationConfig(gates=("head", "neuron")))
    torch.testing.assert_close(_logits(model), _logits(reference))  # default init: every gate is exactly 1
    handle.gates["head"][0].set_log_alpha(torch.tensor([10.0, -10.0, 10.0, -10.0]))
    neuron_la = torch.full((INTER,), 10.0)
    neuron_la[::3] = -10.0
    handle.gates["neuron"][1].set_log_alpha(neuron_la)
    prune_heads_(reference, {0: [1, 3]})
    prune_neurons_(reference, {1: list(range(0, INTER, 3))})
    torch.testing.assert_close(_logits(model), _logits(reference))


def test_gates_are_stochastic_in_training_and_expected_density_is_size_weighted():
    model = _model()
    cfg = RegularizationConfig(gates=("head", "neuron"), gate_penalty=2.0, gate_init_keep=0.5)
    handle = attach_regularization(model, cfg)
    handle.gates["head"][0].set_log_alpha(torch.full((HEADS,), 50.0))  # layer 0's heads: P(z != 0) = 1
    head_params, neuron_params = 4 * 32 * HEAD_SIZE, 2 * 32  # weights one head / one neuron owns
    kept = head_params * (HEADS * 1.0 + HEADS * 0.5) + neuron_params * (2 * INTER * 0.5)
    total = head_params * 2 * HEADS + neuron_params * 2 * INTER
    torch.testing.assert_close(handle.expected_density(), torch.tensor(kept / total))
    torch.testing.assert_close(handle.penalty(), 2.0 * handle.expected_density())
    target = attach_regularization(
        _model(), cfg.replace(gate_target_density=0.2, gate_penalty=3.0)
    )  # quadratic controller
    torch.testing.assert_close(target.penalty(), 3.0 * (target.expected_density() - 0.2) ** 2)

    model.train()
    torch.manual_seed(0)
    a = model(input_ids=IDS, attention_mask=MASK, labels=LABELS)
    b = model(input_ids=IDS, attention_mask=MASK, labels=LABELS)
    assert not torch.allclose(a.logits, b.logits)
    a.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in handle.gate_parameters())
    stats = handle.stats()
    assert stats["gate_density"] == pytest.approx(kept / total, rel=1e-5)
    assert stats["reg_gates"] == pytest.approx(2.0 * kept / total, rel=1e-5)


def test_gates_and_dropconnect_work_with_gradient_checkpointing():
    # Checkpointing recomputes each layer in the backward pass with the RNG restored: the gate samples and DropConnect
    # masks must be drawn inside the layer so that the recomputation matches the forward (else CheckpointError).
    grads = []
    for checkpointing in (False, True):
        model = _model()
        handle = attach_regularization(model, RegularizationConfig(gates=("head", "neuron"), dropconnect=0.3))
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        torch.manual_seed(0)
        model(input_ids=IDS, attention_mask=MASK, labels=LABELS).loss.backward()
        grads.append([p.grad.clone() for p in handle.gate_parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# -- finalize -------------------------------------------------------------------------------------------------------
def test_finalize_keeps_eval_outputs_removes_units_and_saves(tmp_path):
    model = _model()
    handle = attach_regularization(model, RegularizationConfig(gates=("head", "neuron"), dropconnect=0.2))
    handle.gates["head"][0].set_log_alpha(torch.tensor([-10.0, 0.5, 10.0, 1.0]))  # one closed, two fractional
    handle.gates["head"][1].set_log_alpha(torch.tensor([-10.0, -12.0, -9.0, -11.0]))  # all closed: one stays
    handle.gates["neuron"][0].set_log_alpha(torch.linspace(-6.0, 6.0, INTER))
    model.eval()
    before = _logits(model)
    n_closed = int((handle.deterministic_gates()["neuron"][0] == 0).sum())
    assert 0 < n_closed < INTER
    report = handle.finalize_(model)

    torch.testing.assert_close(_logits(model), before, atol=1e-5, rtol=1e-5)
    assert report["params_after"] < report["params_before"]
    assert report["params_after"] == sum(p.numel() for p in model.parameters())
    assert report["layers"][0]["heads_kept"] == [1, 2, 3] and report["layers"][1]["heads_kept"] == [2]
    assert len(report["layers"][0]["neurons_kept"]) == INTER - n_closed
    layers = model.bert.encoder.layer
    assert layers[0].attention.self.query.out_features == 3 * HEAD_SIZE
    assert layers[1].attention.output.dense.in_features == HEAD_SIZE
    assert layers[0].intermediate.dense.out_features == INTER - n_closed
    assert torch.equal(
        layers[1].attention.output.dense.weight, torch.zeros_like(layers[1].attention.output.dense.weight)
    )
    # A plain model again: no gates, hooks or parametrizations left.
    assert not any("gate" in k or "parametrizations" in k for k in model.state_dict())
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(loaded), before, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="removed or finalized"):
        handle.finalize_()


def test_finalize_checks_its_inputs():
    model = _model()
    handle = attach_regularization(model, RegularizationConfig(l1=1.0))
    with pytest.raises(ConfigError, match="needs gates"):
        handle.finalize_()
    gated = attach_regularization(_model(), RegularizationConfig(gates=("neuron",)))
    with pytest.raises(ConfigError, match="different model"):
        gated.finalize_(model)


# -- Trainer ----------------------------------------------------------------------------------------------------------
def _train(tmp_path, config, *, finalize_gates=False, steps=6, lr=1e-2):
    model = tiny_bert_classifier(seed=0)
    callback = RegularizationCallback(config, finalize_gates=finalize_gates)
    args = cpu_training_args(
        tmp_path, per_device_train_batch_size=8, learning_rate=lr, max_steps=steps, weight_decay=0.0
    )
    trainer = Trainer(model=model, args=args, train_dataset=tiny_classification_dataset(n=32), callbacks=[callback])
    return trainer, callback, model


def test_trainer_l1_penalty_shrinks_weights(tmp_path):
    def l1_after(config):
        trainer, callback, model = _train(tmp_path, config, steps=5)
        trainer.train()
        return sum(m.weight.detach().abs().sum().item() for m in callback.handle.modules.values())

    assert l1_after(RegularizationConfig(l1=100.0)) < 0.9 * l1_after(RegularizationConfig(l1=0.0, dropconnect=0.1))


def test_trainer_trains_gates_logs_and_cleans_up(tmp_path):
    config = RegularizationConfig(
        gates=("head", "neuron"),
        gate_penalty=5.0,
        gate_target_density=0.0,
        gate_init_keep=0.9,
        gate_lr_multiplier=100.0,
        dropconnect=0.1,
        l1=1e-3,
    )
    trainer, callback, model = _train(tmp_path, config, steps=8, lr=5e-3)
    handle = callback.handle
    assert handle is not None and handle.attached  # attached in on_init_end, before the optimizer
    density_before = handle.expected_density().item()
    trainer.train()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in handle.gate_parameters())
    assert handle.expected_density().item() < density_before - 0.1
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all("reg_penalty" in e and "gate_density" in e for e in logged)
    assert logged[-1]["gate_density"] < density_before
    # on_train_end removed DropConnect but kept the gates (finalize_gates=False).
    assert not any("parametrizations" in k for k in model.state_dict())
    assert handle.gates and any("gate" in k for k in model.state_dict())
    model.eval()
    before = _logits(model)
    report = handle.finalize_()
    torch.testing.assert_close(_logits(model), before, atol=1e-5, rtol=1e-5)
    assert report["params_after"] <= report["params_before"]


def test_trainer_finalizes_gates_when_asked(tmp_path):
    config = RegularizationConfig(gates=("neuron",), gate_penalty=50.0, gate_init_keep=0.5, gate_lr_multiplier=50.0)
    trainer, callback, model = _train(tmp_path, config, finalize_gates=True, steps=6)
    trainer.train()
    report = callback.finalize_report
    assert report is not None and not callback.handle.attached
    assert report["params_after"] < report["params_before"]
    assert not any("gate" in k for k in model.state_dict())
    trainer.evaluate(tiny_classification_dataset(n=8, seed=1))  # the finalized model still runs in the Trainer


def test_callback_added_after_init_refuses_gates(tmp_path):
    trainer, callback, model = _train(tmp_path, RegularizationConfig(l1=1.0), steps=1)
    late = RegularizationCallback(RegularizationConfig(gates=("head",)))
    trainer.add_callback(late)
    with pytest.raises(ConfigError, match="after the Trainer was built"):
        trainer.train()
