"""A pruning schedule longer than the run: the warning at train begin, and end_fraction."""

import logging

import pytest
from transformers import Trainer

from hf_sparse import ConfigError, PruningCallback, PruningConfig
from hf_sparse.pruning.schedules import resolve_end_step, sparsity_at
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset


def _train(tmp_path, cfg, max_steps):
    cb = PruningCallback(cfg)
    trainer = Trainer(
        model=tiny_bert_classifier(seed=0).train(),
        args=cpu_training_args(tmp_path, per_device_train_batch_size=8, learning_rate=1e-3, max_steps=max_steps),
        train_dataset=tiny_classification_dataset(n=64),
        callbacks=[cb],
    )
    trainer.train()
    return cb, trainer


def test_end_step_beyond_the_run_warns_with_the_sparsity_reached(tmp_path, caplog):
    cfg = PruningConfig(sparsity=0.8, end_step=1000, update_every=2)
    with caplog.at_level(logging.WARNING, logger="hf_sparse"):
        cb, _ = _train(tmp_path, cfg, max_steps=6)
    reached = sparsity_at(cfg, 6)
    assert 0 < reached < 0.8
    text = caplog.text
    assert "end_step=1000" in text and "6 optimizer steps" in text
    assert f"ends at sparsity {reached:.4g} instead of the target 0.8" in text
    assert "end_fraction" in text
    assert cb.pruner.target_sparsity == pytest.approx(reached)


def test_no_warning_when_the_ramp_fits(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_sparse"):
        _train(tmp_path, PruningConfig(sparsity=0.5, end_step=4, update_every=2), max_steps=4)
    assert "optimizer steps" not in caplog.text


def test_oneshot_after_the_run_warns_about_start_step(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_sparse"):
        _train(tmp_path, PruningConfig(sparsity=0.5, schedule="oneshot", start_step=50), max_steps=3)
    assert "start_step=50" in caplog.text and "ends at sparsity 0 instead" in caplog.text


def test_end_fraction_reaches_the_target_within_the_run(tmp_path, caplog):
    cfg = PruningConfig(sparsity=0.8, end_fraction=0.5, update_every=2)
    with caplog.at_level(logging.WARNING, logger="hf_sparse"):
        cb, trainer = _train(tmp_path, cfg, max_steps=12)
    assert "optimizer steps" not in caplog.text
    assert cb.config.end_step == 6 and cb.config.end_fraction is None and cb.given_config == cfg
    targets = {h["step"]: h["target_sparsity"] for h in trainer.state.log_history if "target_sparsity" in h}
    assert targets[5] < 0.8 and targets[6] == pytest.approx(0.8) and targets[12] == pytest.approx(0.8)
    assert cb.pruner.sparsity() == pytest.approx(0.8, abs=2e-3)
    # The checkpointed callback state records the ramp as it ran.
    assert cb.state()["args"]["config"]["end_step"] == 6


def test_resolve_end_step_and_validation():
    cfg = PruningConfig(sparsity=0.8, end_fraction=0.5, start_step=10)
    assert resolve_end_step(cfg, 300).end_step == 150
    assert resolve_end_step(cfg, 12).end_step == 10  # never before start_step
    plain = PruningConfig(end_step=7)
    assert resolve_end_step(plain, 300) is plain
    for kwargs, match in [
        (dict(end_fraction=0.0), r"end_fraction must be in \(0, 1\]"),
        (dict(end_fraction=1.5), r"end_fraction must be in \(0, 1\]"),
        (dict(end_fraction=0.5, end_step=100), "give one"),
        (dict(end_fraction=0.5, schedule="oneshot"), "schedule='oneshot' has none"),
    ]:
        with pytest.raises(ConfigError, match=match):
            PruningConfig(**kwargs)
