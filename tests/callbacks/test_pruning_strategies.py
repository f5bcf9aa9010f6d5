"""PruningCallback with gradient criteria, the iterative schedule and RigL, on the tiny BERT with the stock
Trainer."""

import pytest
import torch
from transformers import Trainer, TrainerCallback

from hf_sparse import ConfigError, PruningCallback, PruningConfig
from hf_sparse.pruning import masks_from_scores
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset


class Recorder(TrainerCallback):
    """Runs after PruningCallback: snapshots masks, scores, sparsity and the zeros of the weights at each step end."""

    def __init__(self, cb):
        self.cb = cb
        self.steps = {}

    def on_step_end(self, args, state, control, **kw):
        p = self.cb.pruner
        self.steps[state.global_step] = {
            "masks": {n: m.clone() for n, m in p.masks.items()},
            "scores": {n: s.clone() for n, s in p.score_state.items()},
            "weights": {n: m.weight.detach().clone() for n, m in p.modules.items()},
            "sparsity": p.sparsity(),
            "violations": sum(int((m.weight.detach()[~p.masks[n]] != 0).sum()) for n, m in p.modules.items())
            if p.masks
            else 0,
        }


def _run(tmp_path, cfg, max_steps, **kw):
    cb = PruningCallback(cfg)
    rec = Recorder(cb)
    args = cpu_training_args(
        tmp_path, per_device_train_batch_size=8, learning_rate=1e-3, weight_decay=0.1, max_steps=max_steps, **kw
    )
    trainer = Trainer(
        model=tiny_bert_classifier(seed=0).train(),
        args=args,
        train_dataset=tiny_classification_dataset(n=64),
        callbacks=[cb, rec],
    )
    trainer.train()
    return cb, rec


def test_movement_criterion_ranks_on_scores_accumulated_through_the_grad_hooks(tmp_path):
    cfg = PruningConfig(sparsity=0.5, criterion="movement", schedule="oneshot", start_step=3)
    cb, rec = _run(tmp_path, cfg, max_steps=5, gradient_accumulation_steps=2)
    # one accumulation per backward pass (micro-batch), for every pruned module
    assert set(cb.pruner.grad_steps) == set(cb.pruner.modules)
    assert all(v == 5 * 2 for v in cb.pruner.grad_steps.values())
    assert rec.steps[2]["masks"] == {}  # nothing pruned before start_step
    at3 = rec.steps[3]
    # the mask of step 3 is exactly the global ranking of the movement scores accumulated over steps 1-3
    expected = masks_from_scores(at3["scores"], 0.5, "global")
    for name, mask in at3["masks"].items():
        assert torch.equal(mask, expected[name]), name
    assert at3["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert all(s["violations"] == 0 for s in rec.steps.values())
    # movement is not magnitude: the kept set differs from the largest weights of step 2
    mag = masks_from_scores({n: w.abs() for n, w in rec.steps[2]["weights"].items()}, 0.5, "global")
    assert any(not torch.equal(mag[n], at3["masks"][n]) for n in mag)


def test_gradient_criterion_pruning_at_step_zero_is_a_clear_error(tmp_path):
    cfg = PruningConfig(sparsity=0.5, criterion="taylor", schedule="oneshot", start_step=0)
    with pytest.raises(ConfigError, match="taylor.*after at least one training step"):
        _run(tmp_path, cfg, max_steps=2)


def test_iterative_schedule_prunes_in_stages_at_the_right_steps(tmp_path):
    cfg = PruningConfig(sparsity=0.6, schedule="iterative", stages=3, start_step=1, end_step=5)
    _, rec = _run(tmp_path, cfg, max_steps=6)
    measured = [round(rec.steps[t]["sparsity"], 3) for t in range(1, 7)]
    assert measured == pytest.approx([0.2, 0.2, 0.4, 0.4, 0.6, 0.6], abs=2e-3)
    # prune, then fine-tune: masks change only at the stage steps, and monotonically
    for t in (2, 4, 6):
        assert all(torch.equal(rec.steps[t]["masks"][n], rec.steps[t - 1]["masks"][n]) for n in rec.steps[t]["masks"])
    for t in (3, 5):
        assert all(not (rec.steps[t]["masks"][n] & ~m).any() for n, m in rec.steps[t - 1]["masks"].items())


def test_rigl_keeps_sparsity_constant_moves_the_mask_and_regrows_from_zero(tmp_path):
    cfg = PruningConfig(sparsity=0.5, schedule="rigl", start_step=1, end_step=8, update_every=2, regrow_fraction=0.3)
    cb, rec = _run(tmp_path, cfg, max_steps=6)
    kept = {n: int(m.sum()) for n, m in rec.steps[1]["masks"].items()}
    for t in range(1, 7):
        assert {n: int(m.sum()) for n, m in rec.steps[t]["masks"].items()} == kept
        assert rec.steps[t]["sparsity"] >= 0.5 - 1e-3
        assert rec.steps[t]["violations"] == 0
    for t in (3, 5):  # update steps: 1 + 2k
        before, after = rec.steps[t - 1]["masks"], rec.steps[t]["masks"]
        regrown = {n: after[n] & ~before[n] for n in after}
        assert sum(int(r.sum()) for r in regrown.values()) > 0
        # regrown weights are exactly zero when they are regrown ...
        assert all((rec.steps[t]["weights"][n][r] == 0).all() for n, r in regrown.items())
    for t in (2, 4, 6):  # ... and the mask holds between updates
        assert all(torch.equal(rec.steps[t]["masks"][n], rec.steps[t - 1]["masks"][n]) for n in kept)
    # regrown weights then train: some are non-zero one step later
    r3 = {n: rec.steps[3]["masks"][n] & ~rec.steps[2]["masks"][n] for n in kept}
    assert any((rec.steps[4]["weights"][n][r] != 0).any() for n, r in r3.items())
    assert cb.pruner.dense_grads == {} and not cb.pruner.track_dense_grads


def test_movement_scores_are_saved_with_checkpoints_and_restored(tmp_path):
    from hf_sparse.pruning import Pruner
    from hf_sparse.pruning.callback import SCORES_FILE

    cfg = PruningConfig(sparsity=0.5, criterion="movement", schedule="oneshot", start_step=2)
    cb, _ = _run(tmp_path, cfg, max_steps=3, save_strategy="steps", save_steps=3)
    folder = tmp_path / "checkpoint-3"
    assert (folder / SCORES_FILE).is_file()
    fresh = PruningCallback(cfg)
    fresh.pruner = Pruner(tiny_bert_classifier(seed=0), cfg)
    fresh._restore_scores(str(folder))
    assert fresh.pruner.grad_steps == cb.pruner.grad_steps == {n: 3 for n in cb.pruner.modules}
    for name, s in cb.pruner.score_state.items():
        assert torch.equal(fresh.pruner.score_state[name], s), name
