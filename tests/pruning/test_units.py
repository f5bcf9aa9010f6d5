"""PruningConfig with structured granularities (heads, neurons, layers) and per-layer sparsities."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Trainer

from hf_sparse import PruningCallback, PruningConfig, prune_
from hf_sparse.errors import ConfigError
from hf_sparse.pruning import Pruner, shrink_masked_units_, unit_modules
from hf_sparse.pruning.structured import find_encoder_layers
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset

IDS = torch.arange(40).reshape(4, 10) % 128
MASK = torch.ones(4, 10, dtype=torch.long)
MASK[1, 7:] = 0


def _logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS, attention_mask=MASK).logits


def _dead_heads(model, layer: int) -> list[int]:
    parts = find_encoder_layers(model)[layer]
    w, d = parts.attention_output.weight, parts.head_size
    return [h for h in range(parts.num_heads) if not w[:, h * d : (h + 1) * d].any()]


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_head_masks_drop_whole_heads_and_shrinking_keeps_outputs(scope):
    model = tiny_bert_classifier(seed=1)
    pruner = Pruner(model, PruningConfig(granularity="head", sparsity=0.5, scope=scope))
    pruner.prune_to(0.5)
    dead = [_dead_heads(model, i) for i in range(2)]
    assert sum(len(d) for d in dead) == 4  # 50% of 2 x 4 heads
    assert all(len(d) <= 3 for d in dead)  # every layer keeps a head
    if scope == "layer":
        assert [len(d) for d in dead] == [2, 2]
    # the query rows of a dead head are zero too, the live ones are not
    parts = find_encoder_layers(model)[0]
    q, d = parts.attention.query.weight, parts.head_size
    for h in range(4):
        assert bool(q[h * d : (h + 1) * d].any()) == (h not in dead[0])
    expected = _logits(model)
    report = shrink_masked_units_(model)
    assert report["heads"] == {0: 4 - len(dead[0]), 1: 4 - len(dead[1])}
    assert find_encoder_layers(model)[0].attention.query.weight.shape[0] == 8 * (4 - len(dead[0]))
    torch.testing.assert_close(_logits(model), expected, rtol=1e-5, atol=1e-6)


def test_neuron_pruning_with_prune_shrinks_and_ranks_by_unit_magnitude():
    model = tiny_bert_classifier(seed=2)
    parts = find_encoder_layers(model)[0]
    with torch.no_grad():
        parts.intermediate.weight[:5] *= 1e-3  # the five weakest neurons of layer 0
        parts.ffn_output.weight[:, :5] *= 1e-3
    reference = copy.deepcopy(model)
    report = prune_(reference, PruningConfig(granularity="neuron", sparsity=0.25, scope="layer"), shrink=False)
    assert report["sparsity"] == pytest.approx(0.25)
    assert not reference.bert.encoder.layer[0].output.dense.weight[:, :5].any()
    expected = _logits(reference)
    report = prune_(model, PruningConfig(granularity="neuron", sparsity=0.25, scope="layer"))
    assert report["shrunk"]["neurons"] == {0: 48, 1: 48}
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == 48
    torch.testing.assert_close(_logits(model), expected, rtol=1e-5, atol=1e-6)


def test_masks_grow_monotonically_with_the_schedule():
    model = tiny_bert_classifier(seed=3)
    pruner = Pruner(model, PruningConfig(granularity="neuron", sparsity=0.5))
    pruner.prune_to(0.25)
    first = {n: m.clone() for n, m in pruner.masks.items()}
    with torch.no_grad():  # make the dropped units look important now: they must stay dropped
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.add_(torch.randn_like(m.weight))
    pruner.prune_to(0.5)
    for name, mask in pruner.masks.items():
        assert not bool((mask & ~first[name]).any()), name


def test_callback_masks_heads_during_training_and_removes_them_at_the_end(tmp_path):
    model = tiny_bert_classifier(seed=4)
    data = tiny_classification_dataset(n=32)
    cfg = PruningConfig(granularity="head", sparsity=0.5, scope="layer", schedule="cubic", end_step=4, update_every=2)
    callback = PruningCallback(cfg)
    trainer = Trainer(
        model=model,
        args=cpu_training_args(tmp_path, max_steps=6, per_device_train_batch_size=8, learning_rate=1e-3),
        train_dataset=data,
        callbacks=[callback],
    )
    trainer.train()
    assert callback.shrunk["heads"] == {0: 2, 1: 2}
    layer = model.bert.encoder.layer[0].attention
    assert layer.self.query.out_features == 16 and layer.output.dense.in_features == 16
    assert trainer.model is model
    model(input_ids=IDS, attention_mask=MASK)  # still runs


def test_layer_granularity_is_one_shot_only():
    model = tiny_bert_classifier(seed=5, num_hidden_layers=4)
    with torch.no_grad():
        for p in model.bert.encoder.layer[2].parameters():
            p.mul_(1e-3)  # the least important layer by mean |w|
    report = prune_(model, PruningConfig(granularity="layer", sparsity=0.25))
    assert report["dropped_layers"] == [2]
    assert model.config.num_hidden_layers == 3
    with pytest.raises(ConfigError, match="before creating the Trainer"):
        PruningCallback(PruningConfig(granularity="layer", sparsity=0.25))
    with pytest.raises(ConfigError, match="cannot happen while"):
        Pruner(tiny_bert_classifier(), PruningConfig(granularity="layer", sparsity=0.5)).prune_to(0.5)


def test_unit_modules_rejects_other_architectures():
    with pytest.raises(ConfigError, match="structured pruning does not support"):
        unit_modules(torch.nn.Sequential(torch.nn.Linear(4, 4)), "head")


def test_layer_sparsity_prunes_named_layers_to_their_own_targets_and_follows_the_schedule():
    model = tiny_bert_classifier(seed=6)
    q0, v1 = "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.value"
    cfg = PruningConfig(sparsity=0.5, scope="layer", layer_sparsity={q0: 0.25, v1: 0.75})
    pruner = Pruner(model, cfg)
    pruner.prune_to(0.5)
    report = pruner.report()["layers"]
    assert report[q0]["sparsity"] == pytest.approx(0.25)
    assert report[v1]["sparsity"] == pytest.approx(0.75)
    assert report["bert.encoder.layer.0.attention.self.key"]["sparsity"] == pytest.approx(0.5)
    pruner = Pruner(tiny_bert_classifier(seed=6), cfg)
    pruner.prune_to(0.25)  # halfway through the schedule: every layer at half its final sparsity
    report = pruner.report()["layers"]
    assert report[q0]["sparsity"] == pytest.approx(0.125)
    assert report[v1]["sparsity"] == pytest.approx(0.375)
    with pytest.raises(ConfigError, match="names modules that are not pruned"):
        Pruner(tiny_bert_classifier(), PruningConfig(layer_sparsity={"bert.pooler.dense": 0.5}))


def test_pruning_refuses_weights_under_dropconnect():
    from hf_sparse import RegularizationConfig, attach_regularization

    model = tiny_bert_classifier(seed=7)
    handle = attach_regularization(model, RegularizationConfig(dropconnect=0.1))
    with pytest.raises(ConfigError, match="parametrized"):
        Pruner(model, PruningConfig(sparsity=0.5))
    handle.remove()
    Pruner(model, PruningConfig(sparsity=0.5)).prune_to(0.5)
