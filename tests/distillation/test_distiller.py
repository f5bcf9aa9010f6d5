"""The Distiller and DistillationCallback on tiny BERTs: loss wiring, gradients, layer maps, students, the teacher
cache, the stock Trainer, composition with pruning, and the quantised-student hook."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file
from torch.nn.utils import parametrize
from transformers import BertForSequenceClassification, Trainer

from hf_sparse import (
    ConfigError,
    DistillationCallback,
    DistillationConfig,
    Distiller,
    PruningCallback,
    PruningConfig,
    student_from_teacher,
    teacher_snapshot,
)
from hf_sparse.distillation import TeacherCache, auto_layer_map, example_keys, kd_loss, layer_map_for
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset


def _batch(seed=0, batch=4, length=10, vocab=128, with_labels=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, vocab, (batch, length), generator=g)
    lengths = torch.randint(3, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # pad id 0 after each sequence
    out = {"input_ids": ids, "attention_mask": mask}
    if with_labels:
        out["labels"] = torch.randint(0, 2, (batch,), generator=g)
    return out


def test_logits_only_loss_is_the_documented_mix():
    teacher, student = tiny_bert_classifier(seed=1), tiny_bert_classifier(seed=2).train()
    d = Distiller(student, teacher, DistillationConfig(alpha=0.7, temperature=3.0)).attach()
    batch = _batch()
    out = student(**batch)
    with torch.no_grad():
        t_logits = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
    task = nn.functional.cross_entropy(out.logits, batch["labels"])
    expected = 0.3 * task + 0.7 * kd_loss(out.logits, t_logits, 3.0)
    torch.testing.assert_close(out.loss, expected)
    d.detach()
    # Detached: the model's own loss again.
    out = student(**batch)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, batch["labels"]))


def test_eval_mode_forward_is_untouched():
    teacher, student = tiny_bert_classifier(seed=1), tiny_bert_classifier(seed=2).eval()
    Distiller(student, teacher, DistillationConfig(alpha=1.0)).attach()
    batch = _batch()
    out = student(**batch)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, batch["labels"]))


def test_gradients_flow_only_into_the_student_with_every_term_and_projections():
    teacher = tiny_bert_classifier(seed=1, hidden_size=48, num_hidden_layers=4, num_attention_heads=4)
    student = tiny_bert_classifier(seed=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2).train()
    cfg = DistillationConfig(alpha=0.5, hidden_weight=1.0, attention_weight=1.0, embedding_weight=0.5)
    d = Distiller(student, teacher, cfg).attach()
    assert d.layer_map == [1, 3]
    assert set(d.projections) == {"layer_0", "layer_1", "embeddings"}
    # Projections are part of the student while attached (so an optimizer built now trains them).
    assert any(n.startswith("hf_sparse_distill_projections.") for n, _ in student.named_parameters())
    out = student(**_batch())
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    grads = [p.grad for n, p in student.named_parameters() if "encoder.layer.0.attention.self.query" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is not None for p in d.projections.parameters())
    d.detach()
    assert not any(n.startswith("hf_sparse_distill_projections") for n, _ in student.named_parameters())
    assert student.config._attn_implementation == "sdpa"


def test_hidden_term_is_zero_for_a_student_identical_to_its_teacher():
    teacher = tiny_bert_classifier(seed=1)
    student = teacher_snapshot(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    student.train()
    # Dropout off so the two forwards are identical.
    for m in student.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    d = Distiller(student, teacher, DistillationConfig(alpha=1.0, hidden_weight=1.0, embedding_weight=1.0)).attach()
    student(**_batch(with_labels=False))
    means = d.pop_means()
    assert means["distill_hidden"] == pytest.approx(0.0, abs=1e-10)
    assert means["distill_embedding"] == pytest.approx(0.0, abs=1e-10)
    assert means["distill_kd"] == pytest.approx(0.0, abs=1e-6)
    assert "distill_task" not in means  # no labels: KD counts fully


def test_layer_maps():
    assert auto_layer_map(3, 6) == [1, 3, 5]
    assert auto_layer_map(4, 12) == [2, 5, 8, 11]
    assert auto_layer_map(6, 6) == list(range(6))
    with pytest.raises(ConfigError, match="layer_map"):
        auto_layer_map(4, 2)
    teacher = tiny_bert_classifier(seed=1, num_hidden_layers=6)
    student = student_from_teacher(teacher, keep_layers=[0, 2, 5])
    assert layer_map_for(student, teacher) == [0, 2, 5]
    assert layer_map_for(tiny_bert_classifier(num_hidden_layers=3), teacher) == [1, 3, 5]
    assert layer_map_for(student, teacher, [4, -1, 5]) == [4, -1, 5]
    with pytest.raises(ConfigError, match="one teacher layer"):
        layer_map_for(student, teacher, [1, 2])
    with pytest.raises(ConfigError, match="one teacher layer"):
        layer_map_for(student, teacher, [1, 2, 6])


def test_student_from_teacher_keeps_the_teachers_layers(tmp_path):
    teacher = tiny_bert_classifier(seed=1, num_hidden_layers=6)
    student = student_from_teacher(teacher, keep_every=2)
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 6
    for k, j in enumerate([1, 3, 5]):
        torch.testing.assert_close(
            student.bert.encoder.layer[k].output.dense.weight, teacher.bert.encoder.layer[j].output.dense.weight
        )
    assert all(p.requires_grad for p in student.parameters())
    # Saved and reloaded, the student still maps to the layers it came from.
    student.save_pretrained(tmp_path)
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path)
    assert layer_map_for(reloaded, teacher) == [1, 3, 5]
    with pytest.raises(ConfigError, match="exactly one"):
        student_from_teacher(teacher)
    with pytest.raises(ConfigError, match="keep_layers"):
        student_from_teacher(teacher, keep_layers=[7])


def test_config_validation():
    with pytest.raises(ConfigError, match="alpha"):
        DistillationConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        DistillationConfig(temperature=0)
    with pytest.raises(ConfigError, match="cannot be cached"):
        DistillationConfig(attention_weight=1.0, cache_dir="x")
    with pytest.raises(ConfigError, match="every term is off"):
        DistillationConfig(alpha=0.0)
    with pytest.raises(ConfigError, match="unknown|alhpa"):
        DistillationConfig.from_dict({"alhpa": 0.5})
    cfg = DistillationConfig(alpha=0.9, hidden_weight=1.0, layer_map=(1, 3, 5))
    assert DistillationConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# -- the cache --------------------------------------------------------------------------------------------------------
def test_example_keys_ignore_padding_and_labels():
    a = {"input_ids": torch.tensor([[2, 7, 9, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0, 0]])}
    b = {
        "input_ids": torch.tensor([[2, 7, 9]]),
        "attention_mask": torch.tensor([[1, 1, 1]]),
        "labels": torch.tensor([1]),
    }
    c = {"input_ids": torch.tensor([[2, 7, 8]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    assert example_keys(a) == example_keys(b)
    assert example_keys(a) != example_keys(c)


def test_cached_outputs_match_live_ones_and_survive_a_new_process_worth_of_state(tmp_path):
    teacher = tiny_bert_classifier(seed=1)
    student = tiny_bert_classifier(seed=2).train()
    cfg = DistillationConfig(alpha=0.5, hidden_weight=1.0, cache_dir=str(tmp_path))
    d = Distiller(student, teacher, cfg)
    batch = _batch(with_labels=False)
    live = d.teacher_outputs(batch)
    assert d.teacher_calls == 1 and len(d.cache) == 4
    cached = d.teacher_outputs(batch)
    assert d.teacher_calls == 1
    torch.testing.assert_close(cached["logits"], live["logits"])
    valid = batch["attention_mask"].bool()
    for j, h in live["hidden"].items():
        torch.testing.assert_close(cached["hidden"][j][valid], h[valid], atol=2e-3, rtol=2e-3)
        assert cached["hidden"][j][~valid].abs().sum() == 0
    d.cache.flush()
    # A new Distiller (as in another run) reads the shard from disk: no teacher call.
    d2 = Distiller(student, teacher, cfg)
    assert len(d2.cache) == 4
    torch.testing.assert_close(d2.teacher_outputs(batch)["logits"], live["logits"])
    assert d2.teacher_calls == 0


def test_cache_is_invalidated_by_new_data_tokenisation_or_teacher(tmp_path):
    teacher = tiny_bert_classifier(seed=1)
    cfg = DistillationConfig(alpha=1.0, cache_dir=str(tmp_path))
    d = Distiller(tiny_bert_classifier(seed=2), teacher, cfg)
    batch = _batch(seed=0, length=10, with_labels=False)
    d.teacher_outputs(batch)
    d.cache.flush()
    calls = d.teacher_calls
    # Other data.
    d.teacher_outputs(_batch(seed=5, length=10, with_labels=False))
    assert d.teacher_calls == calls + 1
    # Other tokenisation of the same data: truncated to a shorter max_length.
    short = {k: v[:, :4] for k, v in batch.items()}
    d.teacher_outputs(short)
    assert d.teacher_calls == calls + 2
    # Another teacher (weights changed): another cache folder, nothing reused.
    changed = tiny_bert_classifier(seed=1)
    with torch.no_grad():
        changed.classifier.bias.add_(1.0)
    d3 = Distiller(tiny_bert_classifier(seed=2), changed, cfg)
    assert d3.cache.folder != d.cache.folder and len(d3.cache) == 0
    out = d3.teacher_outputs(batch)
    assert d3.teacher_calls == 1
    with torch.no_grad():
        expected = changed(**batch).logits
    torch.testing.assert_close(out["logits"], expected)


def test_a_corrupt_shard_is_skipped_not_trusted(tmp_path):
    teacher = tiny_bert_classifier(seed=1)
    cfg = DistillationConfig(alpha=1.0, cache_dir=str(tmp_path))
    d = Distiller(tiny_bert_classifier(seed=2), teacher, cfg)
    d.teacher_outputs(_batch(with_labels=False))
    shard = d.cache.flush()
    shard.write_bytes(shard.read_bytes()[:50])
    cache = TeacherCache(tmp_path, teacher)
    assert len(cache) == 0


# -- with the stock Trainer -------------------------------------------------------------------------------------------
def test_callback_with_stock_trainer_logs_terms_and_saves_a_plain_student(tmp_path):
    teacher = tiny_bert_classifier(seed=1, hidden_size=48, num_attention_heads=4)
    student = tiny_bert_classifier(seed=2, hidden_size=32)
    cb = DistillationCallback(teacher, alpha=0.5, hidden_weight=1.0, cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(
        model=student,
        args=cpu_training_args(tmp_path / "out", max_steps=6, per_device_train_batch_size=16, learning_rate=1e-3),
        train_dataset=tiny_classification_dataset(n=32),
        callbacks=[cb],
    )
    # The projections are in the optimizer the Trainer builds.
    trainer.create_optimizer()
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in optimized for p in cb.distiller.projections.parameters())
    proj_before = cb.distiller.projections["layer_0"].weight.detach().clone()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all("distill_kd" in h and "distill_hidden" in h and "distill_task" in h for h in logs)
    # 32 examples, batch 16: epoch 1 fills the cache, the next epochs read it.
    assert cb.distiller.teacher_calls == 2
    assert cb.distiller.cache.hits == 64
    assert not torch.equal(cb.distiller.projections["layer_0"].weight, proj_before)
    trainer.save_model(tmp_path / "student")
    saved = load_file(str(tmp_path / "student" / "model.safetensors"))
    assert not any("distill" in k for k in saved)
    assert list((tmp_path / "cache").glob("teacher-*/shard-*.safetensors"))


def test_label_smoothing_is_refused(tmp_path):
    cb = DistillationCallback(tiny_bert_classifier(seed=1), alpha=0.5)
    trainer = Trainer(
        model=tiny_bert_classifier(seed=2),
        args=cpu_training_args(tmp_path, max_steps=1, label_smoothing_factor=0.1),
        train_dataset=tiny_classification_dataset(n=8),
        callbacks=[cb],
    )
    with pytest.raises(ConfigError, match="label_smoothing_factor"):
        trainer.train()


def test_composes_with_the_pruning_callback(tmp_path):
    teacher = tiny_bert_classifier(seed=1)
    student = teacher_snapshot(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    prune = PruningCallback(PruningConfig(sparsity=0.5, schedule="oneshot"))
    distil = DistillationCallback(teacher, alpha=0.9, hidden_weight=1.0)
    trainer = Trainer(
        model=student,
        args=cpu_training_args(tmp_path, max_steps=4, per_device_train_batch_size=8, learning_rate=1e-3),
        train_dataset=tiny_classification_dataset(n=32),
        callbacks=[distil, prune],
    )
    trainer.train()
    assert prune.pruner.sparsity() == pytest.approx(0.5, abs=0.01)
    weight = student.bert.encoder.layer[0].intermediate.dense.weight
    assert (weight == 0).float().mean() == pytest.approx(0.5, abs=0.02)
    assert distil.distiller.teacher_calls == 4
    assert all("distill_kd" in h for h in trainer.state.log_history if "loss" in h)
    # The teacher stayed dense and unchanged.
    assert (teacher.bert.encoder.layer[0].intermediate.dense.weight == 0).float().mean() < 0.01


class _FakeQuant(nn.Module):
    """Symmetric per-tensor int8 rounding with a straight-through gradient: a stand-in quantised student."""

    def forward(self, w):
        scale = w.detach().abs().max() / 127
        return w + ((w / scale).round() * scale - w).detach()


def test_quantised_student_learns_from_its_float_snapshot(tmp_path):
    model = tiny_bert_classifier(seed=3)
    teacher = teacher_snapshot(model)  # the float model, before quantisation
    reference = {k: v.clone() for k, v in teacher.state_dict().items()}
    for layer in model.bert.encoder.layer:
        parametrize.register_parametrization(layer.intermediate.dense, "weight", _FakeQuant())
    cb = DistillationCallback(teacher, alpha=1.0, hidden_weight=1.0)
    trainer = Trainer(
        model=model,
        args=cpu_training_args(tmp_path, max_steps=3, per_device_train_batch_size=8, learning_rate=1e-3),
        train_dataset=tiny_classification_dataset(n=16),
        callbacks=[cb],
    )
    trainer.train()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in reference.items())
    assert cb.distiller.teacher_calls == 3
    losses = [h["distill_kd"] for h in trainer.state.log_history if "distill_kd" in h]
    assert losses and losses[0] > 0  # the rounded student differs from its float teacher


def test_teacher_none_snapshots_the_model_at_init(tmp_path):
    model = tiny_bert_classifier(seed=3)
    cb = DistillationCallback(None, alpha=1.0)
    Trainer(
        model=model,
        args=cpu_training_args(tmp_path, max_steps=1),
        train_dataset=tiny_classification_dataset(n=8),
        callbacks=[cb],
    )
    assert cb.distiller.teacher is not model
    torch.testing.assert_close(cb.distiller.teacher.classifier.weight, model.classifier.weight)
