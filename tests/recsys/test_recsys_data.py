"""Leave-one-out splits, training windows, the left-padding collator and item frequencies on hand-made logs."""

from __future__ import annotations

import random

import pytest
import torch
from datasets import Dataset

from hf_sparse.errors import ConfigError
from hf_sparse.recsys import (
    LeaveOneOutSplits,
    NextItemCollator,
    NextItemDataset,
    item_frequencies,
    leave_one_out_split,
)


def ratings() -> Dataset:
    rows = [(1, 5), (1, 3), (1, 9), (1, 4), (2, 7), (2, 8), (3, 1), (3, 2), (3, 6)]  # user 2 has only 2
    return Dataset.from_dict({"user_id": [u for u, _ in rows], "item_id": [i for _, i in rows]})


def test_leave_one_out_keeps_time_order_and_drops_short_users():
    splits = leave_one_out_split(ratings())
    assert splits.user_ids == (1, 3) and splits.num_users == 2 and splits.num_items == 9
    assert splits.train == ((5, 3), (1,))
    assert splits.valid_targets == (9, 2) and splits.test_targets == (4, 6)
    assert splits.history("valid") == [(5, 3), (1,)]
    assert splits.history("test") == [(5, 3, 9), (1, 2)]
    assert splits.targets("test") == (4, 6)
    sub = splits.subset([3])
    assert sub.user_ids == (3,) and sub.train == ((1,),) and sub.num_items == 9
    assert splits.subset(1).user_ids == (1,)


def test_split_errors_name_the_problem():
    with pytest.raises(ConfigError, match="min_interactions"):
        leave_one_out_split(ratings(), min_interactions=2)
    bad = Dataset.from_dict({"user_id": [1, 1, 1], "item_id": [0, 1, 2]})
    with pytest.raises(ConfigError, match="padding"):
        leave_one_out_split(bad)
    with pytest.raises(ConfigError, match="valid_targets"):
        LeaveOneOutSplits(user_ids=(1,), train=((1,),), valid_targets=(), test_targets=(2,), num_items=2)
    with pytest.raises(ConfigError, match="unknown user"):
        leave_one_out_split(ratings()).subset([2])


def splits_of(seqs) -> LeaveOneOutSplits:
    n = len(seqs)
    return LeaveOneOutSplits(
        user_ids=tuple(range(n)),
        train=tuple(map(tuple, seqs)),
        valid_targets=(1,) * n,
        test_targets=(1,) * n,
        num_items=1000,
    )


def test_windows_cover_whole_histories_or_only_the_most_recent_items():
    splits = splits_of([range(1, 11), [7], [3, 4]])
    recent = NextItemDataset(splits, max_len=4, recent_only=True)
    assert len(recent) == 2  # a single training item gives no example
    assert recent[0] == {"input_ids": [6, 7, 8, 9], "labels": [7, 8, 9, 10]}
    assert recent[1] == {"input_ids": [3], "labels": [4]}
    whole = NextItemDataset(splits, max_len=4)  # default stride = max_len: non-overlapping windows
    assert [whole[i] for i in range(len(whole))] == [
        {"input_ids": [6, 7, 8, 9], "labels": [7, 8, 9, 10]},
        {"input_ids": [2, 3, 4, 5], "labels": [3, 4, 5, 6]},
        {"input_ids": [1], "labels": [2]},
        {"input_ids": [3], "labels": [4]},
    ]


@pytest.mark.parametrize("max_len, stride", [(4, 1), (4, 3), (4, 4), (7, 5), (50, 50)])
def test_strided_windows_make_every_training_item_a_target_once(max_len, stride):
    rng = random.Random(max_len * 100 + stride)
    # item 1000 * (user + 1) + t is the user's t-th item: ids tell where a label sits in its history
    seqs = [[1000 * (u + 1) + t for t in range(rng.randint(1, 40))] for u in range(30)]
    ds = NextItemDataset(splits_of(seqs), max_len=max_len, stride=stride)
    targets = []
    for i in range(len(ds)):
        ex = ds[i]
        assert 1 <= len(ex["input_ids"]) == len(ex["labels"]) <= max_len
        for j, label in enumerate(ex["labels"]):
            # labels are the inputs shifted by one (supervised or not)
            assert j == len(ex["labels"]) - 1 or ex["input_ids"][j + 1] == label or label == -100
            if label != -100:
                t = label % 1000
                assert ex["input_ids"][j] == label - 1
                # the context of a target: all earlier items, or at least max_len - stride + 1 of them
                assert j + 1 >= min(t, max_len - stride + 1)
                targets.append(label)
    assert sorted(targets) == sorted(i for s in seqs for i in s[1:])


def test_stride_is_validated():
    with pytest.raises(ConfigError, match="stride"):
        NextItemDataset(splits_of([[1, 2, 3]]), max_len=4, stride=5)
    with pytest.raises(ConfigError, match="max_len"):
        NextItemDataset(splits_of([[1, 2, 3]]), max_len=0)


def test_collator_left_pads_inputs_and_labels():
    batch = NextItemCollator()([{"input_ids": [4, 5, 6], "labels": [5, 6, 7]}, {"input_ids": [9], "labels": [-100]}])
    assert batch["input_ids"].tolist() == [[4, 5, 6], [0, 0, 9]]
    assert batch["labels"].tolist() == [[5, 6, 7], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert all(t.dtype == torch.long for t in batch.values())
    padded = NextItemCollator(pad_to_multiple_of=4)([{"input_ids": [4], "labels": [5]}])
    assert padded["input_ids"].tolist() == [[0, 0, 0, 4]] and padded["labels"].tolist() == [[-100, -100, -100, 5]]


def test_item_frequencies_count_training_items_only():
    splits = leave_one_out_split(ratings())
    freq = item_frequencies(splits)
    assert freq.shape == (10,) and freq.dtype == torch.long
    expected = torch.zeros(10, dtype=torch.long)
    expected[[5, 3, 1]] = 1
    assert torch.equal(freq, expected)
