"""Distillation on every model family of hf_sparse.testing.families: a few stock-Trainer steps, the teacher reading
the very inputs (decoder inputs included) the student reads, every term zero for a student that is an exact copy of
its teacher, padding masked, encoder layers matched with encoder layers, and typed refusals for what cannot be
honoured. Tiny models, about a second per family."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import Trainer

from hf_sparse import DistillationCallback, DistillationConfig, Distiller
from hf_sparse.distillation import example_keys
from hf_sparse.errors import ConfigError
from hf_sparse.nn.roles import UnsupportedFamilyError
from hf_sparse.testing import cpu_training_args
from hf_sparse.testing.families import FAMILIES, tiny_model

ALL = sorted(FAMILIES)
SEQ2SEQ = [f for f in ALL if FAMILIES[f].kind == "seq2seq"]
DECODERS = [f for f in ALL if FAMILIES[f].kind == "decoder"]
# Models whose forward returns no hidden states or attention maps (the SASRec recommender): logits KD only.
LOGITS_ONLY = {f for f in ALL if FAMILIES[f].kind == "recommender"}


def _no_dropout(model: nn.Module) -> nn.Module:
    """Dropout off everywhere (modules, and the float probabilities some attention layers and BART keep), so a
    training-mode forward equals the eval-mode one."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        for name, value in list(vars(m).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(m, name, 0.0)
    return model


def _copy_student(teacher: nn.Module) -> nn.Module:
    student = _no_dropout(copy.deepcopy(teacher)).train()
    for p in student.parameters():
        p.requires_grad_(True)
    return student


def _batch(family: str, batch: int = 3, length: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids with right padding in the last row; the family's labels (class ids, the input ids of a language
    model with -100 at padding, or padded target sequences of an encoder-decoder model)."""
    kind = FAMILIES[family].kind
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 128, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, length - 3 :] = 0
    ids = ids.masked_fill(mask == 0, 0)
    out = {"input_ids": ids, "attention_mask": mask}
    if kind == "encoder":
        out["labels"] = torch.randint(0, 2, (batch,), generator=g)
    elif kind == "decoder":
        out["labels"] = ids.masked_fill(mask == 0, -100)
    elif kind == "recommender":
        # left-padded item histories; the label at each position is the next item (0: no label)
        ids, mask = ids.flip(1), mask.flip(1)
        out = {"input_ids": ids, "attention_mask": mask, "labels": torch.cat([ids[:, 1:], ids[:, :1] * 0], 1)}
    else:
        labels = torch.randint(4, 128, (batch, length // 2 + 1), generator=g)
        labels[-1, -2:] = -100  # a shorter target, padded as data collators pad labels
        out["labels"] = labels
    return out


class _Recorder:
    """Records the keyword inputs of each forward of a model (after the Distiller's hooks changed them)."""

    def __init__(self, model: nn.Module):
        self.calls: list[dict] = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})


@pytest.mark.parametrize("family", ALL)
def test_trainer_steps_with_the_teacher_reading_the_students_inputs(family, tmp_path):
    teacher = tiny_model(family, seed=0)
    student = _copy_student(tiny_model(family, seed=1))
    seen_by_teacher, seen_by_student = _Recorder(teacher), _Recorder(student)
    rows = [{k: v[i].tolist() for k, v in _batch(family, seed=s).items()} for s in range(2) for i in range(3)]
    terms = ("kd",) if family in LOGITS_ONLY else ("kd", "hidden")
    cb = DistillationCallback(teacher, alpha=0.5, hidden_weight=0.0 if family in LOGITS_ONLY else 1.0)
    trainer = Trainer(
        model=student,
        args=cpu_training_args(tmp_path, max_steps=2, per_device_train_batch_size=3, learning_rate=1e-3),
        train_dataset=Dataset.from_list(rows),
        callbacks=[cb],
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert all(h[f"distill_{t}"] > 0 for h in logs for t in terms)  # two different models
    student_calls = [c for c in seen_by_student.calls if "labels" in c]  # the training forwards
    assert len(seen_by_teacher.calls) == len(student_calls) == 2
    for s_in, t_in in zip(student_calls, seen_by_teacher.calls):
        assert "labels" not in t_in
        keys = ["input_ids", "attention_mask"] + (["decoder_input_ids"] if family in SEQ2SEQ else [])
        for key in keys:
            assert torch.equal(t_in[key], s_in[key]), f"{family}: the teacher got other {key}"
        if family in SEQ2SEQ:
            # The decoder inputs the model itself builds from the labels (shifted right, -100 -> pad).
            expected = student.prepare_decoder_input_ids_from_labels(labels=s_in["labels"])
            assert torch.equal(t_in["decoder_input_ids"], expected)


@pytest.mark.parametrize("family", ALL)
def test_every_term_is_zero_for_an_exact_copy_and_not_for_another_model(family):
    teacher = _no_dropout(tiny_model(family, seed=0))
    batch = _batch(family)
    cfg = DistillationConfig(alpha=1.0, hidden_weight=1.0, embedding_weight=1.0, attention_weight=1.0)
    terms = ("kd", "hidden", "embedding", "attention")
    if family in LOGITS_ONLY:
        student = _copy_student(teacher)
        Distiller(student, teacher, cfg).attach()
        with pytest.raises(UnsupportedFamilyError, match="output has no hidden_states"):
            student(**batch)
        cfg, terms = DistillationConfig(alpha=1.0), ("kd",)
    student = _copy_student(teacher)
    d = Distiller(student, teacher, cfg).attach()
    out = student(**batch)
    means = d.pop_means()
    d.detach()
    assert torch.isfinite(out.loss)
    for term in terms:
        assert means[f"distill_{term}"] == pytest.approx(0.0, abs=1e-6), f"{family}: {term} {means}"
    # The same check fails for a student that is not the teacher: the zeros above are not vacuous.
    other = _copy_student(tiny_model(family, seed=1))
    d = Distiller(other, teacher, cfg).attach()
    other(**batch)
    means = d.pop_means()
    d.detach()
    assert all(means[f"distill_{t}"] > 3e-6 for t in terms), means


@pytest.mark.parametrize("family", DECODERS + SEQ2SEQ)
def test_per_token_kd_ignores_padding(family):
    """Teacher logits that are garbage only at padded positions (attention_mask 0 for a decoder, label -100 for an
    encoder-decoder model's targets) leave the KD term of an exact copy at zero."""
    teacher = _no_dropout(tiny_model(family, seed=0))
    student = _copy_student(teacher)
    d = Distiller(student, teacher, DistillationConfig(alpha=1.0))
    batch = _batch(family)
    feed = d._teacher_inputs(batch)
    masks = d._masks(feed, batch["labels"])
    t_out = d.teacher_outputs(batch)
    with torch.no_grad():
        s_out = student(**feed)
    pad = ~masks["logits"].bool()
    assert pad.any()
    t_out["logits"][pad] = torch.randn_like(t_out["logits"][pad]) * 10
    assert float(d.loss_terms(s_out, t_out, masks)["kd"][1]) == pytest.approx(0.0, abs=1e-5)
    t_out["logits"][~pad] += torch.randn_like(t_out["logits"][~pad])
    assert float(d.loss_terms(s_out, t_out, masks)["kd"][1]) > 1e-3


@pytest.mark.parametrize("family", SEQ2SEQ)
def test_encoder_layers_learn_from_encoder_layers_and_decoder_from_decoder(family):
    layers = {"t5": "num_decoder_layers", "bart": "decoder_layers"}[family]
    teacher = _no_dropout(tiny_model(family, seed=0, **{layers: 3}))
    student = _copy_student(tiny_model(family, seed=1, **{layers: 1}))
    d = Distiller(student, teacher, DistillationConfig(alpha=0.5, hidden_weight=1.0))
    assert d.stack_maps == [("encoder_", [0, 1]), ("decoder_", [2])]
    explicit = Distiller(student, teacher, DistillationConfig(alpha=0.5, hidden_weight=1.0, layer_map=(1, -1, 0)))
    assert explicit.stack_maps == [("encoder_", [1, -1]), ("decoder_", [0])]
    with pytest.raises(ConfigError, match="encoder layers then its 1 decoder layers"):
        Distiller(student, teacher, DistillationConfig(alpha=0.5, hidden_weight=1.0, layer_map=(0, 1, 2, 0)))
    with pytest.raises(ConfigError, match="encoder layers then its 1 decoder layers"):
        Distiller(student, teacher, DistillationConfig(alpha=0.5, hidden_weight=1.0, layer_map=(0, 1, 3)))
    # The matched pairs are what the hidden term compares: student decoder layer 0 with teacher decoder layer 2.
    batch = _batch(family)
    d.attach()
    out = student(**batch)
    teacher_out = d.teacher_outputs(batch)
    masks = d._masks(d._teacher_inputs(batch), batch["labels"])
    d.detach()
    assert set(teacher_out["hidden"]) == {("encoder_", 1), ("encoder_", 2), ("decoder_", 3)}
    assert d.teacher_hidden == sorted(teacher_out["hidden"])
    from hf_sparse.distillation import hidden_state_loss

    expected = torch.stack(
        [
            hidden_state_loss(out.encoder_hidden_states[1], teacher_out["hidden"][("encoder_", 1)], masks["encoder_"]),
            hidden_state_loss(out.encoder_hidden_states[2], teacher_out["hidden"][("encoder_", 2)], masks["encoder_"]),
            hidden_state_loss(out.decoder_hidden_states[1], teacher_out["hidden"][("decoder_", 3)], masks["decoder_"]),
        ]
    ).mean()
    torch.testing.assert_close(d.loss_terms(out, teacher_out, masks)["hidden"][1], expected)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_different_widths_learn_through_projections(family):
    width = {"llama": dict(hidden_size=32), "t5": dict(d_model=16)}[family]
    teacher = tiny_model(family, seed=0)
    student = _copy_student(tiny_model(family, seed=1, **width))
    d = Distiller(student, teacher, DistillationConfig(alpha=0.5, hidden_weight=1.0, embedding_weight=1.0)).attach()
    expected = (
        {"layer_0", "layer_1", "embeddings"}
        if family == "llama"
        else {f"{s}_{n}" for s in ("encoder", "decoder") for n in ("layer_0", "layer_1", "embeddings")}
    )
    assert set(d.projections) == expected
    out = student(**_batch(family))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in d.projections.parameters())
    d.detach()


def test_what_cannot_be_honoured_is_refused_by_family(tmp_path):
    t5, llama = tiny_model("t5"), tiny_model("llama")
    with pytest.raises(UnsupportedFamilyError, match="T5.*encoder-decoder model and the other is not"):
        Distiller(_copy_student(llama), t5, DistillationConfig(alpha=1.0))
    with pytest.raises(UnsupportedFamilyError, match="T5.*encoder-decoder model and the other is not"):
        Distiller(_copy_student(t5), llama, DistillationConfig(alpha=0.5, hidden_weight=1.0))
    with pytest.raises(UnsupportedFamilyError, match="T5.*two .*set cache_dir=None"):
        Distiller(_copy_student(t5), t5, DistillationConfig(alpha=0.5, hidden_weight=1.0, cache_dir=str(tmp_path)))
    student = _copy_student(llama)
    Distiller(student, llama, DistillationConfig(alpha=1.0)).attach()
    embeds = student.get_input_embeddings()(_batch("llama")["input_ids"])
    with pytest.raises(UnsupportedFamilyError, match="Llama.*inputs_embeds"):
        student(inputs_embeds=embeds, labels=_batch("llama")["labels"])


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_the_teacher_cache_keys_and_places_per_token_logits(family, tmp_path):
    teacher = tiny_model(family, seed=0)
    d = Distiller(_copy_student(teacher), teacher, DistillationConfig(alpha=1.0, cache_dir=str(tmp_path)))
    batch = _batch(family)
    live = d.teacher_outputs(batch)
    assert d.teacher_calls == 1
    # The same examples padded to a longer length read the cache: the logits come back at the valid positions.
    padded = {k: nn.functional.pad(v, (0, 2), value=0 if k != "labels" else -100) for k, v in batch.items()}
    cached = d.teacher_outputs(padded)
    assert d.teacher_calls == 1
    valid = d._masks(d._teacher_inputs(batch), batch["labels"])["logits"].bool()
    length = valid.shape[1]
    torch.testing.assert_close(cached["logits"][:, :length][valid], live["logits"][valid])
    if family == "t5":
        # Other targets for the same encoder inputs are other examples for the teacher.
        other = {**batch, "labels": batch["labels"].flip(0)}
        assert example_keys(d._teacher_inputs(other), other["labels"] != -100) != example_keys(
            d._teacher_inputs(batch), batch["labels"] != -100
        )
        d.teacher_outputs(other)
        assert d.teacher_calls == 2


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_a_seq2seq_student_learns_from_the_layers_it_kept_also_after_reload(family, tmp_path):
    from hf_sparse import student_from_teacher
    from hf_sparse.distillation.apply import stack_layer_maps

    depth = dict(num_layers=4, num_decoder_layers=4) if family == "t5" else dict(encoder_layers=4, decoder_layers=4)
    teacher = tiny_model(family, **depth)
    student = student_from_teacher(teacher, keep_layers=[0, 3], stack="encoder")
    want = [("encoder_", [0, 3]), ("decoder_", [0, 1, 2, 3])]  # a uniform map would pair encoder layer 0 with 1
    assert stack_layer_maps(student, teacher) == want
    student.save_pretrained(tmp_path)
    assert stack_layer_maps(type(student).from_pretrained(tmp_path), teacher) == want
    # a student of that student keeps indices of the first teacher
    grandchild = student_from_teacher(student, keep_layers=[1], stack="encoder")
    assert stack_layer_maps(grandchild, teacher)[0] == ("encoder_", [3])
    # with an explicit map the record is not used
    assert stack_layer_maps(student, teacher, explicit=[1, 2, 0, 1, 2, 3])[0] == ("encoder_", [1, 2])
