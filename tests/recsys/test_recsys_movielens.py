"""The recommender on the real MovieLens 100K at small scale: the leave-one-out split's counts, and a short seeded
training run with the stock Trainer that must beat both chance and an untrained model under full ranking."""

from __future__ import annotations

import pytest
import torch

from hf_sparse.recsys import (
    evaluate_ranking,
    item_frequencies,
    movielens_splits,
    sasrec_for_movielens,
    train_recommender,
)

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def splits():
    return movielens_splits()


def test_movielens_leave_one_out_split(splits):
    assert splits.num_users == 943 and splits.num_items == 1682
    assert sum(len(s) for s in splits.train) == 100_000 - 2 * 943
    assert min(len(s) for s in splits.train) == 18  # every user has at least 20 ratings
    freq = item_frequencies(splits)
    assert freq.shape == (1683,) and freq[0] == 0 and freq.sum() == 100_000 - 2 * 943
    # MovieLens users rate a movie once: held-out items are never in the training sequence
    assert all(v not in s and t not in s for s, v, t in zip(splits.train, splits.valid_targets, splits.test_targets))
    assert splits.history("test")[0][-1] == splits.valid_targets[0]


def test_short_training_on_real_data_beats_chance_and_the_untrained_model(splits, tmp_path):
    small = splits.subset(300)
    model = sasrec_for_movielens(seed=42, max_position_embeddings=50)
    before = evaluate_ranking(model, small, split="valid")
    trainer = train_recommender(model, small, tmp_path, epochs=3, learning_rate=3e-3, batch_size=64, seed=42)
    after = evaluate_ranking(model, small, split="valid")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert after["users"] == 300 and set(after) == {"hr@10", "ndcg@10", "users"}
    # chance: about 10 / 1,600 candidates = 0.006
    assert after["hr@10"] > 0.03 and after["hr@10"] > before["hr@10"] + 0.01
    assert 0 < after["ndcg@10"] < after["hr@10"]
    assert torch.isfinite(torch.tensor(list(after.values()))).all()
