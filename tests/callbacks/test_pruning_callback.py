import logging

import pytest
import torch
from transformers import Trainer, TrainerCallback

from hf_sparse import PruningCallback, PruningConfig, PruningStateError, attach_callbacks, sparsity_at
from hf_sparse.callbacks import MASKS_FILE
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset


def _args(out, **kw):
    base = dict(per_device_train_batch_size=8, learning_rate=1e-3, weight_decay=0.1, max_steps=8)
    base.update(kw)
    return cpu_training_args(out, **base)


class MaskChecker(TrainerCallback):
    """Runs after PruningCallback: records, at every event, whether any pruned weight is non-zero."""

    def __init__(self, pruning_cb):
        self.cb = pruning_cb
        self.violations = []
        self.targets = []
        self.masks_at_substep = []

    def _check(self, where, state):
        for name, mask in self.cb.pruner.masks.items():
            w = self.cb.pruner.modules[name].weight
            if (w.detach()[~mask] != 0).any():
                self.violations.append((where, state.global_step, name))

    def on_optimizer_step(self, args, state, control, **kw):
        self._check("optimizer_step", state)

    def on_step_end(self, args, state, control, **kw):
        self._check("step_end", state)
        self.targets.append((state.global_step, self.cb.pruner.target_sparsity))

    def on_substep_end(self, args, state, control, **kw):
        self.masks_at_substep.append({n: m.clone() for n, m in self.cb.pruner.masks.items()})


def test_masks_stay_zero_under_adamw_weight_decay_and_accumulation(tmp_path):
    model = tiny_bert_classifier(seed=0).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = PruningConfig(sparsity=0.5, start_step=0, end_step=4, update_every=1)
    cb = PruningCallback(cfg)
    checker = MaskChecker(cb)
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, gradient_accumulation_steps=2),
        train_dataset=tiny_classification_dataset(n=64),
        callbacks=[cb, checker],
    )
    trainer.train()
    assert checker.violations == []
    # the schedule was followed step by step
    assert [t for _, t in checker.targets] == pytest.approx([sparsity_at(cfg, s) for s, _ in checker.targets])
    assert cb.pruner.sparsity() == pytest.approx(0.5, abs=1e-3)
    # masks never change between the micro-batches of one accumulated step
    assert len(checker.masks_at_substep) == 8
    # kept weights were trained (AdamW moved them), so the zeros are not an artefact of a frozen model
    name = next(iter(cb.pruner.modules))
    w = cb.pruner.modules[name].weight.detach()
    assert not torch.equal(w[cb.pruner.masks[name]], before[f"{name}.weight"][cb.pruner.masks[name]])
    # gradient hooks are removed when training ends
    assert cb._hooks == []


def test_sparsity_is_in_the_trainer_logs(tmp_path):
    cb = PruningCallback(PruningConfig(sparsity=0.4, schedule="oneshot"))
    trainer = Trainer(
        model=tiny_bert_classifier(seed=0),
        args=_args(tmp_path, max_steps=3),
        train_dataset=tiny_classification_dataset(),
    )
    seen = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(dict(logs))

    trainer.add_callback(Recorder())
    attach_callbacks(trainer, cb)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index("PruningCallback") < names.index("Recorder")
    trainer.train()
    losses = [e for e in trainer.state.log_history if "loss" in e]
    assert losses and all(e["sparsity"] == pytest.approx(0.4, abs=1e-3) for e in losses)
    assert any("sparsity" in e for e in seen)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            control.should_training_stop = True


def _resume_args(out):
    return _args(out, max_steps=12, save_strategy="steps", save_steps=6)


def _train(out, stop_at=None, resume=None):
    cfg = PruningConfig(sparsity=0.5, start_step=0, end_step=8, update_every=2)
    cb = PruningCallback(cfg)
    callbacks = [cb] + ([StopAt(stop_at)] if stop_at else [])
    model = tiny_bert_classifier(seed=0)
    trainer = Trainer(
        model=model, args=_resume_args(out), train_dataset=tiny_classification_dataset(n=96), callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, cb


def test_resume_gives_the_same_masks_and_weights_as_an_uninterrupted_run(tmp_path):
    ref_model, ref_cb = _train(tmp_path / "a")
    _train(tmp_path / "b", stop_at=6)
    ckpt = tmp_path / "b" / "checkpoint-6"
    assert (ckpt / MASKS_FILE).is_file()
    model, cb = _train(tmp_path / "b", resume=str(ckpt))
    assert cb.restored_from == str(ckpt / MASKS_FILE)
    assert ref_cb.pruner.masks.keys() == cb.pruner.masks.keys()
    for name in ref_cb.pruner.masks:
        assert torch.equal(ref_cb.pruner.masks[name], cb.pruner.masks[name]), name
    ref = dict(ref_model.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, ref[name], rtol=0, atol=1e-6, msg=name)


def test_resume_without_mask_file_reads_masks_off_the_weights(tmp_path, caplog):
    ref_model, ref_cb = _train(tmp_path / "a")
    _train(tmp_path / "b", stop_at=6)
    (tmp_path / "b" / "checkpoint-6" / MASKS_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        model, cb = _train(tmp_path / "b", resume=str(tmp_path / "b" / "checkpoint-6"))
    assert cb.restored_from == "weights"
    assert "reading the masks off the resumed weights" in caplog.text
    for name in ref_cb.pruner.masks:
        assert torch.equal(ref_cb.pruner.masks[name], cb.pruner.masks[name]), name


def test_corrupt_mask_file_is_a_typed_error(tmp_path):
    _train(tmp_path / "b", stop_at=6)
    (tmp_path / "b" / "checkpoint-6" / MASKS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(PruningStateError, match="Cannot read pruning masks"):
        _train(tmp_path / "b", resume=str(tmp_path / "b" / "checkpoint-6"))


def test_callback_accepts_a_dict_and_exports_its_state():
    cb = PruningCallback({"sparsity": 0.3, "schedule": "oneshot"})
    assert cb.config == PruningConfig(sparsity=0.3, schedule="oneshot")
    state = cb.state()
    assert PruningConfig.from_dict(state["args"]["config"]) == cb.config
