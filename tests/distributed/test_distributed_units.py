"""One-process tests of hf_sparse.distributed: the top-k maths, the residual book-keeping, the byte counter, the
hook options and their errors, and the Trainer callback outside a multi-process run."""

import logging

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from transformers import Trainer

from hf_sparse.distributed import (
    CommCounter,
    CommHookConfig,
    TopKState,
    is_distributed,
    register_comm_hook,
    register_hook,
)
from hf_sparse.distributed.topk import entries_to_send, pack_sparse, sparse_mean, topk_select, unpack_sparse
from hf_sparse.errors import ConfigError
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset


# -- pure functions ---------------------------------------------------------------------------------------------------
def test_entries_to_send_bounds():
    assert entries_to_send(1000, 0.01) == 10
    assert entries_to_send(1000, 1.0) == 1000
    assert entries_to_send(10, 0.001) == 1  # at least one entry
    assert entries_to_send(7, 0.5) == 4


def test_topk_select_takes_largest_magnitudes_with_their_sign():
    acc = torch.tensor([0.1, -3.0, 2.0, -0.5, 2.5, 0.0])
    values, indices = topk_select(acc, 3)
    order = indices.argsort()
    assert indices.dtype == torch.int32
    assert indices[order].tolist() == [1, 2, 4]
    assert values[order].tolist() == [-3.0, 2.0, 2.5]


@pytest.mark.parametrize("k", [1, 37, 2000, 20_000])
def test_topk_select_large_buckets_match_torch_topk(k):
    # above 65,536 entries the selection goes through a sampled threshold: it must return exactly the top k
    g = torch.Generator().manual_seed(k)
    acc = torch.randn(300_000, generator=g) * torch.rand(300_000, generator=g)
    values, indices = topk_select(acc, k)
    expected = torch.topk(acc.abs(), k).indices
    assert torch.equal(indices.long().sort().values, expected.sort().values)
    assert torch.equal(values, acc[indices.long()])


def test_topk_select_with_ties_returns_k_distinct_entries_of_top_magnitude():
    acc = torch.zeros(200_000)
    acc[:50] = 1.0
    acc[50:4000] = torch.linspace(-0.5, 0.5, 3950)
    for k in (40, 3000, 5000):  # inside the tie, inside the ramp, beyond the non-zeros
        values, indices = topk_select(acc, k)
        assert len(set(indices.tolist())) == k
        assert torch.equal(values.abs().sort().values, torch.topk(acc.abs(), k).values.sort().values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pack_unpack_round_trip(dtype):
    values = torch.randn(7).to(dtype)
    indices = torch.tensor([5, 0, 99, 3, 17, 2, 8], dtype=torch.int32)
    payload = pack_sparse(values, indices)
    assert payload.dtype == torch.uint8
    assert payload.numel() == 7 * (values.element_size() + 4)
    v, i = unpack_sparse(payload, 7, dtype)
    assert torch.equal(v, values) and i.tolist() == indices.tolist() and i.dtype == torch.int64


def test_sparse_mean_matches_the_dense_mean_and_adds_overlaps():
    n = 10
    parts = [
        (torch.tensor([1.0, 2.0]), torch.tensor([3, 7])),
        (torch.tensor([4.0, -1.0]), torch.tensor([7, 0])),
    ]
    dense = torch.zeros(2, n)
    for r, (v, i) in enumerate(parts):
        dense[r, i] = v
    assert torch.equal(sparse_mean(parts, n, torch.float32), dense.mean(0))


@pytest.mark.parametrize("kwargs", [dict(ratio=0.0), dict(ratio=1.5), dict(ratio=True), dict(warmup_steps=-1)])
def test_topk_state_rejects_bad_options(kwargs):
    with pytest.raises(ConfigError):
        TopKState(**{"ratio": 0.1, **kwargs})


def test_residuals_follow_their_parameters_when_buckets_are_rebuilt():
    state = TopKState(0.1)
    p1, p2, p3 = (torch.zeros(n) for n in (3, 2, 4))
    a0, a1 = ((id(p1), 3), (id(p2), 2)), ((id(p3), 4),)
    r0 = torch.arange(5, dtype=torch.float32)
    r1 = torch.arange(10, 14, dtype=torch.float32)
    state.store(0, a0, r0)
    state.store(1, a1, r1)
    assert state.residual_for(0, a0, 5, "cpu") is r0  # unchanged bucket: its own residual
    state.iter = 1
    b0, b1 = ((id(p3), 4), (id(p1), 3)), ((id(p2), 2),)
    new0 = state.residual_for(0, b0, 7, "cpu")
    assert new0.tolist() == [10, 11, 12, 13, 0, 1, 2]
    state.store(0, b0, new0)
    assert state.residual_for(1, b1, 2, "cpu").tolist() == [3, 4]
    assert state.residual_of(p1).tolist() == [0, 1, 2]


# -- config and options -----------------------------------------------------------------------------------------------
def test_comm_hook_config_round_trip_and_defaults():
    cfg = CommHookConfig(hook="topk", ratio=0.001, warmup_steps=5)
    assert CommHookConfig.from_json(cfg.to_json()) == cfg
    assert CommHookConfig(hook="topk").effective_warmup_steps == 0
    assert CommHookConfig(hook="powersgd").effective_warmup_steps == 2


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(hook="bogus"), "hook"),
        (dict(hook="topk", ratio=0.0), "ratio"),
        (dict(hook="topk", ratio=2.0), "ratio"),
        (dict(hook="allreduce", ratio=0.1), "ratio applies to hook='topk'"),
        (dict(hook="topk", rank=8), "rank applies to hook='powersgd'"),
        (dict(hook="powersgd", warmup_steps=1), "warmup_steps must be >= 2"),
        (dict(hook="powersgd", rank=0), "rank"),
    ],
)
def test_comm_hook_config_errors_name_the_field(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        CommHookConfig(**kwargs)


def _trainer(tmp_path, steps=2):
    return Trainer(
        model=tiny_bert_classifier(seed=0).train(),
        args=cpu_training_args(tmp_path, max_steps=steps, per_device_train_batch_size=8),
        train_dataset=tiny_classification_dataset(n=32),
    )


@pytest.mark.parametrize(
    "hook, options, words",
    [
        ("nope", {}, "Unknown communication hook"),
        ("allreduce", {"ratio": 0.1}, "do not apply"),
        ("topk", {"rank": 4}, "do not apply"),
    ],
)
def test_register_comm_hook_rejects_bad_options(tmp_path, hook, options, words):
    with pytest.raises(ConfigError, match=words):
        register_comm_hook(_trainer(tmp_path), hook, **options)


def test_single_process_training_warns_and_registers_nothing(tmp_path, caplog):
    trainer = _trainer(tmp_path)
    cb = register_comm_hook(trainer, "topk", ratio=0.1)
    assert cb in trainer.callback_handler.callbacks
    with caplog.at_level(logging.WARNING, logger="hf_sparse.distributed.callback"):
        trainer.train()
    assert "not a multi-process run" in caplog.text
    assert not cb.registered and cb.hook_state is None and cb.bytes_per_step == []
    assert trainer.state.global_step == 2


# -- one-process gloo group: the counter, registration and the hook itself ------------------------------------------
@pytest.fixture(scope="module")
def single_rank_group():
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_counter_counts_what_each_collective_sends(single_rank_group):
    original = dist.all_reduce
    with CommCounter() as outer:
        with CommCounter() as inner:
            dist.all_reduce(torch.zeros(10))
        dist.all_gather([torch.empty(3, dtype=torch.float64)], torch.zeros(3, dtype=torch.float64))
        dist.broadcast(torch.zeros(5, dtype=torch.int32), src=0)
        assert dist.all_reduce is not original
    assert dist.all_reduce is original  # unwrapped when the last counter stops
    assert inner.bytes == 40 and inner.calls == 1
    assert outer.bytes == 40 + 24 + 20 and outer.calls == 3
    assert dict(outer.by_op) == {"all_reduce": 40, "all_gather": 24, "broadcast": 20}
    assert not is_distributed()  # one process: the callbacks' synchronisation stays off


def _ddp(bucket_cap_mb=25.0):
    torch.manual_seed(0)
    return DDP(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2)), bucket_cap_mb=bucket_cap_mb)


def test_register_hook_errors(single_rank_group):
    with pytest.raises(ConfigError, match="DistributedDataParallel"):
        register_hook(nn.Linear(2, 2), CommHookConfig(hook="topk"))
    model = _ddp()
    register_hook(model, {"hook": "topk", "ratio": 0.5})
    with pytest.raises(ConfigError, match="already has a communication hook"):
        register_hook(model, CommHookConfig(hook="allreduce"))
    with pytest.raises(ConfigError, match="ddp_bucket_cap_mb=1"):
        register_hook(_ddp(bucket_cap_mb=0.001), CommHookConfig(hook="powersgd"))
    register_hook(_ddp(bucket_cap_mb=1.0), CommHookConfig(hook="powersgd"))  # one bucket: accepted


def test_topk_hook_applies_the_top_entries_and_keeps_the_rest(single_rank_group):
    model = _ddp()
    twin = _ddp().module
    x, y = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1] * 4)
    nn.functional.cross_entropy(twin(x), y).backward()
    state = register_hook(model, CommHookConfig(hook="topk", ratio=0.25))
    with CommCounter() as counter:
        nn.functional.cross_entropy(model(x), y).backward()
    local = torch.cat([p.grad.reshape(-1) for p in twin.parameters()])
    applied = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    residual = torch.cat([state.residual_of(p) for p in model.parameters()])
    k = entries_to_send(local.numel(), 0.25)
    assert int((applied != 0).sum()) == k  # one rank: the mean is its own top-k
    assert torch.equal(applied + residual, local)
    kept = applied[applied != 0].abs()
    assert kept.min() >= residual.abs().max()
    assert counter.bytes == 8 * k
