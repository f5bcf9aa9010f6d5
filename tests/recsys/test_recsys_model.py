"""SASRecForNextItem on tiny random configs: shapes, causality, padding, attention kernels, a swapped item table,
config validation and round trips, save -> from_pretrained in a fresh process, and training with the Trainer."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from hf_sparse.errors import ConfigError
from hf_sparse.recsys import (
    LeaveOneOutSplits,
    SASRecConfig,
    SASRecForNextItem,
    evaluate_ranking,
    train_recommender,
)

NUM_ITEMS = 30


def tiny_config(**overrides) -> SASRecConfig:
    kwargs = dict(
        num_items=NUM_ITEMS,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=12,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    kwargs.update(overrides)
    return SASRecConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> SASRecForNextItem:
    torch.manual_seed(seed)
    return SASRecForNextItem(tiny_config(**overrides)).eval()


def random_items(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, NUM_ITEMS + 1, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_and_padding_column():
    model = tiny_model()
    ids = random_items(3, 7)
    ids[0, :3] = 0  # left padding
    with torch.no_grad():
        out = model(input_ids=ids)
        last = model(input_ids=ids, logits_to_keep=1)
        trained = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (3, 7, NUM_ITEMS + 1) and out.loss is None
    assert out.last_hidden_state.shape == (3, 7, 16)
    assert torch.all(out.logits[..., 0] == torch.finfo(out.logits.dtype).min)
    assert last.logits.shape == (3, 1, NUM_ITEMS + 1)
    torch.testing.assert_close(last.logits[:, 0], out.logits[:, -1])
    assert trained.logits is None and trained.loss.dim() == 0 and torch.isfinite(trained.loss)
    assert torch.isfinite(out.logits[..., 1:]).all()


def test_loss_is_the_mean_cross_entropy_of_supervised_positions_only():
    model = tiny_model()
    ids = random_items(2, 6, seed=1)
    ids[1, :2] = 0
    labels = random_items(2, 6, seed=2)
    labels[1, :2] = -100
    labels[0, 1] = 0  # the padding id as a label is ignored too
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss
        logits = model(input_ids=ids).logits
    keep = labels > 0
    expected = nn.functional.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(loss, expected)
    other = labels.clone()
    other[1, :2] = 0
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, labels=other).loss, loss)
        # no supervised position: a zero loss, not NaN
        assert model(input_ids=ids, labels=torch.full_like(ids, -100)).loss.item() == 0.0


def test_left_padding_and_a_nonzero_padding_row_do_not_change_scores():
    model = tiny_model()
    ids = random_items(2, 5, seed=3)
    padded = torch.cat([torch.zeros(2, 4, dtype=torch.long), ids], dim=1)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        more = model(input_ids=padded).logits[:, 4:]
        # compressed tables compute their padding row like any other: the model must not rely on it being zero
        model.item_embeddings.weight[0].normal_()
        nonzero_pad = model(input_ids=padded).logits[:, 4:]
    torch.testing.assert_close(more, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nonzero_pad[..., 1:], plain[..., 1:], rtol=1e-5, atol=1e-5)


def test_attention_is_causal():
    model = tiny_model()
    ids = random_items(2, 8, seed=4)
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] % NUM_ITEMS) + 1
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_eager_and_sdpa_agree(tmp_path):
    model = tiny_model()
    ids = random_items(3, 9, seed=5)
    ids[1, :4] = 0
    model.save_pretrained(tmp_path)
    outputs = {}
    for implementation in ("eager", "sdpa"):
        loaded = AutoModel.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert loaded.config._attn_implementation == implementation
        with torch.no_grad():
            outputs[implementation] = loaded(input_ids=ids).logits
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], rtol=1e-4, atol=1e-5)


class RowsOnly(nn.Module):
    """A table module with no usable ``.weight``: only ``forward(ids) -> rows`` (like a compressed table)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.rows = nn.Parameter(table.clone())
        self.weight = torch.empty(0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows[ids]


def test_item_table_can_be_swapped_for_a_rows_only_module():
    model = tiny_model()
    ids = random_items(2, 6, seed=6)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    model.item_embeddings = RowsOnly(model.item_embeddings.weight.detach())
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before)
    assert model.get_input_embeddings() is model.item_embeddings
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    grad = model.item_embeddings.rows.grad
    assert grad is not None and grad[1:].abs().sum() > 0


def test_config_validation_names_the_field():
    for bad, field in [
        (dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
        (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob"),
        (dict(num_items=0), "num_items"),
        (dict(pad_token_id=1), "pad_token_id"),
        (dict(hidden_act="nope"), "hidden_act"),
        (dict(max_position_embeddings=2.5), "max_position_embeddings"),
    ]:
        with pytest.raises(ConfigError, match=field):
            tiny_config(**bad)


def test_config_round_trips(tmp_path):
    config = tiny_config(hidden_act="relu", layer_norm_eps=1e-6)
    again = SASRecConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SASRecConfig) and loaded.model_type == "hf_sparse_sasrec"
    for name in ("num_items", "hidden_size", "intermediate_size", "hidden_act", "layer_norm_eps", "pad_token_id"):
        assert getattr(loaded, name) == getattr(config, name)
    # save_pretrained validates: a config broken after construction is not written
    config.hidden_dropout_prob = 2.0
    with pytest.raises(ConfigError, match="hidden_dropout_prob"):
        config.save_pretrained(tmp_path / "bad")


def test_inputs_longer_than_the_position_table_are_rejected():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_position_embeddings=12"):
        model(input_ids=random_items(1, 13))


def test_save_and_from_pretrained_in_a_fresh_process(tmp_path):
    model = tiny_model(seed=7)
    ids = random_items(2, 8, seed=8)
    ids[0, :3] = 0
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    script = (
        "import torch, hf_sparse\n"
        "from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(tmp_path)!r}).eval()\n"
        "assert type(m).__name__ == 'SASRecForNextItem', type(m)\n"
        f"ids = torch.tensor({ids.tolist()})\n"
        "with torch.no_grad(): print(repr(m(input_ids=ids).logits.tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert torch.equal(torch.tensor(eval(out.stdout.strip().splitlines()[-1])), logits)


def cyclic_splits(users: int = 48, length: int = 14, seed: int = 0) -> LeaveOneOutSplits:
    """Every user walks the items in order (item i is followed by i + 1, wrapping): a learnable next item."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, NUM_ITEMS, (users,), generator=g).tolist()
    seqs = [[(s + t) % NUM_ITEMS + 1 for t in range(length)] for s in starts]
    return LeaveOneOutSplits(
        user_ids=tuple(range(1, users + 1)),
        train=tuple(tuple(s[:-2]) for s in seqs),
        valid_targets=tuple(s[-2] for s in seqs),
        test_targets=tuple(s[-1] for s in seqs),
        num_items=NUM_ITEMS,
    )


def test_trainer_learns_a_sequential_pattern_deterministically(tmp_path):
    splits = cyclic_splits()
    results, states = [], []
    for run in range(2):
        model = tiny_model(seed=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        before = evaluate_ranking(model, splits, split="valid", k=1)
        trainer = train_recommender(
            model, splits, tmp_path / str(run), epochs=30, learning_rate=1e-2, batch_size=16, seed=1
        )
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        assert losses[-1] < 0.5 * losses[0]
        results.append((evaluate_ranking(model, splits, split="valid", k=1), before))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    (after, before), (again, _) = results
    assert before["hr@1"] < 0.3 and after["hr@1"] > 0.9 and after["users"] == 48
    assert after == again
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
