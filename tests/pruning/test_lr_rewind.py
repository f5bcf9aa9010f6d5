"""Learning-rate rewinding of PruningCallback, read off the learning rate the Trainer logs at every step."""

import pytest
from transformers import Trainer

from hf_sparse import ConfigError, PruningCallback, PruningConfig
from hf_sparse.pruning.schedules import lr_rewind_steps, mask_update_steps, rewound_lr_factor
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset

PEAK = 1e-3


def _lrs(tmp_path, cfg, max_steps=40, resume=None, **kw):
    """{step: learning rate of that step} of a short run on the tiny BERT (and the callback)."""
    args = cpu_training_args(tmp_path, per_device_train_batch_size=8, learning_rate=PEAK, max_steps=max_steps, **kw)
    cb = PruningCallback(cfg)
    trainer = Trainer(
        model=tiny_bert_classifier(seed=0).train(),
        args=args,
        train_dataset=tiny_classification_dataset(n=64),
        callbacks=[cb],
    )
    trainer.train(resume_from_checkpoint=resume)
    return {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}, cb


def test_rewind_at_the_end_of_the_ramp(tmp_path):
    cfg = PruningConfig(sparsity=0.5, end_step=20, update_every=5, lr_rewind="end")
    lrs, cb = _lrs(tmp_path / "a", cfg)
    plain, _ = _lrs(tmp_path / "b", cfg.replace(lr_rewind="none"))
    assert sorted(lrs) == list(range(1, 41))
    for step in range(1, 21):  # the original linear decay (no warm-up) until the ramp ends
        assert lrs[step] == pytest.approx(PEAK * (1 - (step - 1) / 40)) == pytest.approx(plain[step])
    assert lrs[21] == pytest.approx(PEAK)  # back to the peak right after the last mask update
    for step in range(21, 41):
        assert lrs[step] == pytest.approx(PEAK * (1 - (step - 21) / 20))
    assert lrs[40] <= PEAK / 20 + 1e-12 and plain[40] == pytest.approx(PEAK / 40)
    assert cb.pruner.sparsity() == pytest.approx(0.5, abs=2e-3)
    assert cb._lr_original is None  # the scheduler's own lambdas are back after training


def test_rewind_after_each_update_and_with_a_cosine_schedule(tmp_path):
    cfg = PruningConfig(sparsity=0.5, end_step=20, update_every=5, lr_rewind="each_update")
    assert mask_update_steps(cfg, 40) == [5, 10, 15, 20]
    lrs, _ = _lrs(tmp_path / "a", cfg)
    for start, end in [(5, 10), (10, 15), (15, 20), (20, 40)]:
        for step in range(start + 1, end + 1):
            assert lrs[step] == pytest.approx(PEAK * (1 - (step - 1 - start) / (end - start))), step
    assert lrs[5] == pytest.approx(PEAK * (1 - 4 / 40))  # before the first update: the original schedule
    cosine, _ = _lrs(tmp_path / "b", cfg.replace(lr_rewind="end"), lr_scheduler_type="cosine")
    assert cosine[21] == pytest.approx(PEAK) and cosine[31] == pytest.approx(PEAK / 2)


def test_rewind_survives_resuming_from_a_checkpoint(tmp_path):
    cfg = PruningConfig(sparsity=0.5, end_step=20, update_every=5, lr_rewind="end")
    full, _ = _lrs(tmp_path, cfg, save_strategy="steps", save_steps=25)
    resumed, cb = _lrs(tmp_path, cfg, resume=str(tmp_path / "checkpoint-25"))
    # Steps 1-25 come back from the checkpoint's log history; 26-40 are the resumed run's.
    assert sorted(resumed) == list(range(1, 41))
    for step in range(26, 41):
        assert resumed[step] == pytest.approx(full[step])
    assert cb.restored_from is not None


def test_unsupported_schedules_raise(tmp_path):
    cfg = PruningConfig(sparsity=0.5, end_step=4, update_every=2, lr_rewind="end")
    with pytest.raises(ConfigError, match="lr_scheduler_type must be one of"):
        _lrs(tmp_path, cfg, max_steps=6, lr_scheduler_type="constant")
    with pytest.raises(ConfigError, match="lr_rewind must be one of"):
        PruningConfig(lr_rewind="always")


def test_rewind_steps_and_factor():
    cfg = PruningConfig(sparsity=0.5, end_step=20, update_every=5, lr_rewind="end")
    assert lr_rewind_steps(cfg, 40) == [20]
    assert lr_rewind_steps(cfg, 20) == []  # the ramp ends with the run: nothing to rewind
    assert lr_rewind_steps(cfg.replace(schedule="oneshot", start_step=3), 40) == [3]
    assert lr_rewind_steps(cfg.replace(schedule="iterative", stages=3), 40) == [20]
    assert rewound_lr_factor(19, [20], 40) is None
    assert rewound_lr_factor(20, [20], 40) == 1.0 and rewound_lr_factor(30, [20], 40) == 0.5
    assert rewound_lr_factor(30, [20], 40, "cosine") == pytest.approx(0.5)
