"""Wanda and SparseGPT as PruningConfig criteria: same masks as the direct functions, block granularity, calibration
data taken from the Trainer, and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Trainer

from hf_sparse import PruningCallback, PruningConfig, prune_
from hf_sparse.errors import ConfigError
from hf_sparse.pruning import Pruner, sparsegpt_prune_, wanda_prune_
from hf_sparse.pruning.oneshot import sparsegpt_prune_weight
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset


def _batches(n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(0, 128, (4, 10), generator=g),
            "attention_mask": torch.ones(4, 10, dtype=torch.long),
        }
        for _ in range(n)
    ]


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("granularity", ["unstructured", "nm"])
def test_criterion_equals_the_direct_function(method, granularity):
    model = tiny_bert_classifier(seed=1)
    reference = copy.deepcopy(model)
    nm = (2, 4) if granularity == "nm" else None
    fn = wanda_prune_ if method == "wanda" else sparsegpt_prune_
    fn(reference, _batches(), 0.5, nm=nm, progress=False)
    cfg = PruningConfig(criterion=method, schedule="oneshot", granularity=granularity, sparsity=0.5)
    prune_(model, cfg, calibration=_batches())
    got, expected = _weights(model), _weights(reference)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_block_granularity_prunes_whole_tiles_to_the_exact_sparsity(method):
    model = tiny_bert_classifier(seed=2)
    cfg = PruningConfig(criterion=method, schedule="oneshot", granularity="block", block=(4, 4), sparsity=0.75)
    pruner = Pruner(model, cfg)
    pruner.calibration = _batches()
    pruner.prune_to(0.75)
    for name, mask in pruner.masks.items():
        rows, cols = mask.shape
        tiles = mask.reshape(rows // 4, 4, cols // 4, 4).permute(0, 2, 1, 3).reshape(-1, 16)
        assert bool(((tiles.all(1)) | (~tiles.any(1))).all()), f"{name}: a tile is partly pruned"
        assert (~mask).float().mean().item() == pytest.approx(0.75), name
        weight = pruner.modules[name].weight
        assert not bool(weight[~mask].any())


def test_sparsegpt_blocks_reconstruct_better_than_dropping_the_same_tiles():
    torch.manual_seed(0)
    x = torch.randn(256, 32) @ torch.randn(32, 32)  # correlated inputs: reconstruction has something to fix
    w = torch.randn(16, 32)
    hessian = 2 * x.T @ x
    new, keep = sparsegpt_prune_weight(w, hessian, 0.5, block=(4, 4))
    dropped = w * keep
    assert (x @ (new - w).T).pow(2).sum() < (x @ (dropped - w).T).pow(2).sum()
    with pytest.raises(ConfigError, match="does not divide into 4x4"):
        sparsegpt_prune_weight(torch.randn(6, 32), torch.eye(32), 0.5, block=(4, 4))


def test_callback_takes_calibration_data_from_the_training_set_and_keeps_the_mask(tmp_path):
    model = tiny_bert_classifier(seed=3)
    data = tiny_classification_dataset(n=32)
    cfg = PruningConfig(criterion="wanda", schedule="oneshot", sparsity=0.6, calibration_samples=12)
    callback = PruningCallback(cfg)
    trainer = Trainer(
        model=model,
        args=cpu_training_args(tmp_path, max_steps=4, per_device_train_batch_size=8, learning_rate=1e-3),
        train_dataset=data,
        callbacks=[callback],
    )
    trainer.train()
    assert sum(int(b["input_ids"].shape[0]) for b in callback.pruner.calibration) == 12
    assert all("labels" not in b for b in callback.pruner.calibration)
    assert callback.pruner.sparsity() == pytest.approx(0.6, abs=0.01)  # per-row rounding: 19 of 32


def test_given_masks_are_kept_by_a_one_shot_callback(tmp_path):
    model = tiny_bert_classifier(seed=4)
    cfg = PruningConfig(criterion="sparsegpt", schedule="oneshot", sparsity=0.5)
    pruner = Pruner(model, cfg)
    pruner.calibration = _batches()
    pruner.prune_to(0.5)
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    callback = PruningCallback(cfg, masks=masks)
    Trainer(
        model=model,
        args=cpu_training_args(tmp_path, max_steps=3, per_device_train_batch_size=8, learning_rate=1e-3),
        train_dataset=tiny_classification_dataset(n=24),
        callbacks=[callback],
    ).train()
    for name, mask in masks.items():
        assert torch.equal(callback.pruner.masks[name], mask)
        weight = callback.pruner.modules[name].weight
        assert not bool(weight[~mask].any()) and bool(weight[mask].all())


def test_missing_calibration_data_is_an_actionable_error():
    cfg = PruningConfig(criterion="wanda", schedule="oneshot")
    with pytest.raises(ConfigError, match="needs calibration data"):
        prune_(tiny_bert_classifier(), cfg)
