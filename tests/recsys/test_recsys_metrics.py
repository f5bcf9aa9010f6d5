"""Full-ranking HR@k / NDCG@k on hand-made cases whose answers are known, history masking and batching."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hf_sparse.errors import ConfigError
from hf_sparse.recsys import LeaveOneOutSplits, evaluate_ranking, hit_rate_and_ndcg, target_ranks


def test_rank_one_gives_hit_and_ndcg_one():
    scores = torch.tensor([[0.0, 5.0, 1.0, 2.0, 3.0]])
    ranks = target_ranks(scores, torch.tensor([1]))
    assert ranks.tolist() == [0]
    assert hit_rate_and_ndcg(ranks, k=10) == (1.0, 1.0)


def test_rank_eleven_is_a_miss_and_rank_three_has_half_gain():
    scores = torch.arange(20, dtype=torch.float).flip(0)[None].repeat(2, 1)  # item i scores 19 - i
    ranks = target_ranks(scores, torch.tensor([10, 2]))  # 0-based ranks 10 (11th) and 2 (3rd)
    assert ranks.tolist() == [10, 2]
    hr, ndcg = hit_rate_and_ndcg(ranks, k=10)
    assert hr == 0.5 and ndcg == pytest.approx(0.5 * (1 / math.log2(4)))
    assert hit_rate_and_ndcg(torch.tensor([10]), k=11) == (1.0, pytest.approx(1 / math.log2(12)))


def test_ties_count_against_the_target_and_excluded_items_never_count():
    scores = torch.ones(1, 6)
    assert target_ranks(scores, torch.tensor([3])).tolist() == [5]
    exclude = torch.tensor([[True, True, False, True, False, False]])
    assert target_ranks(scores, torch.tensor([3]), exclude).tolist() == [3]  # items 2, 4, 5; own flag ignored


class FixedScores(nn.Module):
    """A 'model' that scores every item the same way for every user (item i scores ``order[i]``)."""

    def __init__(self, order: torch.Tensor, max_len: int = 8):
        super().__init__()
        self.register_buffer("order", order.float())
        self.anchor = nn.Parameter(torch.zeros(()))
        self.config = type("C", (), {"max_position_embeddings": max_len})()
        self.inputs = []

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        self.inputs.append(input_ids.clone())
        logits = self.order.expand(input_ids.shape[0], 1, -1)
        return type("O", (), {"logits": logits})()


def hand_made_splits() -> LeaveOneOutSplits:
    # 20 items; the fixed model ranks item 20 first, 19 second, ... (item i scores i)
    return LeaveOneOutSplits(
        user_ids=(1, 2, 3),
        train=((20, 19, 18, 17, 16, 15, 14, 13, 12, 11), (1, 2), (20, 19, 18, 17, 16, 15, 14, 13, 12)),
        valid_targets=(10, 20, 11),
        test_targets=(9, 5, 2),
        num_items=20,
    )


def test_history_items_are_masked_and_the_test_history_includes_the_valid_item():
    splits = hand_made_splits()
    model = FixedScores(torch.arange(21))
    valid = evaluate_ranking(model, splits, split="valid", k=1)
    # user 1: target 10 is 11th overall, but the 10 items above it are its history -> rank 1
    # user 2: target 20 scores highest -> rank 1; user 3: items 20..12 masked, target 11 -> rank 1
    assert valid == {"hr@1": 1.0, "ndcg@1": 1.0, "users": 3}
    test = evaluate_ranking(model, splits, split="test", k=1)
    # user 1: 20..11 masked and the valid item 10 too -> target 9 first; user 2: 20 (valid) masked, then 19.. -> 5
    # is 15th -> miss; user 3: 20..12 and 11 masked, 10..3 above 2 -> miss
    assert test["hr@1"] == pytest.approx(1 / 3) and test["users"] == 3
    test10 = evaluate_ranking(model, splits, split="test", k=10)
    # user 2: 19..6 above 5 is 14 items (rank 14) -> miss; user 3: 10..3 is 8 items (rank 8) -> hit
    assert test10["hr@10"] == pytest.approx(2 / 3)
    assert test10["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(10)) / 3)


def test_inputs_are_the_most_recent_items_left_padded_and_batching_does_not_matter():
    splits = hand_made_splits()
    model = FixedScores(torch.randn(21, generator=torch.Generator().manual_seed(0)), max_len=4)
    model.train()
    one = evaluate_ranking(model, splits, split="test", batch_size=1)
    assert model.training  # mode restored
    first = model.inputs[0]
    assert first.tolist() == [[13, 12, 11, 10]]  # user 1's last 3 training items + the valid item
    assert model.inputs[1].tolist() == [[1, 2, 20]]
    model.inputs.clear()
    all_at_once = evaluate_ranking(model, splits, split="test", batch_size=512)
    assert all_at_once == one
    assert model.inputs[0].tolist() == [[13, 12, 11, 10], [0, 1, 2, 20], [14, 13, 12, 11]]


def test_bad_arguments_raise_config_errors():
    splits = hand_made_splits()
    model = FixedScores(torch.arange(21))
    with pytest.raises(ConfigError, match="split"):
        evaluate_ranking(model, splits, split="train")
    with pytest.raises(ConfigError, match="k must"):
        evaluate_ranking(model, splits, k=0)
