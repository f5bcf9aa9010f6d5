"""A real 2-process CPU fine-tune (accelerate launch, gloo, the stock Trainer) with gradual pruning, QAT and
distillation (and, in further fits, the top-k hook and low-rank training): every rank must end with the same masks,
quantisation ranges and weights, and only rank 0 writes.

The worker (ddp_train_worker.py) gives each rank its own output folder, so what a rank wrote is visible: with a
shared folder, as in normal use, rank 1's writes would be indistinguishable from rank 0's.
"""

import json

import pytest


@pytest.fixture(scope="module")
def ranks(two_process, module_tmp):
    two_process("accelerate", "ddp_train_worker.py", str(module_tmp))
    return [json.loads((module_tmp / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_the_trainer_ran_ddp_on_two_processes(ranks):
    for r in ranks:
        assert r["compress"]["world_size"] == 2
        assert r["compress"]["wrapped"] == "DistributedDataParallel"


@pytest.mark.parametrize("what", ["masks", "ranges", "weights"])
def test_compression_state_is_identical_on_both_ranks(ranks, what):
    # movement scores come from each rank's local gradient and the activation ranges from its local batches:
    # without synchronisation these differ between ranks (and so do the weights, once masks differ)
    r0, r1 = ranks[0]["compress"], ranks[1]["compress"]
    assert r0[what] == r1[what]


def test_training_pruned_and_quantised(ranks):
    c = ranks[0]["compress"]
    assert c["target_sparsity"] == pytest.approx(0.5)
    assert c["sparsity"] >= 0.5 - 1e-3
    assert len(c["mask_names"]) == 12  # 2 layers x (q, k, v, attention output, intermediate, output)
    assert c["range_count"] == 24  # a static input range (low, high) for each of the 12 QAT layers


def test_only_rank_zero_writes_the_checkpoint(ranks):
    files0, files1 = set(ranks[0]["compress"]["files"]), set(ranks[1]["compress"]["files"])
    for name in ("model.safetensors", "trainer_state.json", "hf_sparse_pruning_masks.safetensors"):
        assert f"checkpoint-12/{name}" in files0
    # The Trainer saves each process's RNG state next to the checkpoint by design; nothing else comes from rank 1.
    assert files1 <= {"checkpoint-12/rng_state_1.pth"}


def test_teacher_cache_shards_are_per_rank_and_complete(ranks):
    shards = ranks[0]["compress"]["cache_shards"]
    assert shards and all(s.endswith(".safetensors") for s in shards)
    assert {s.rsplit("-rank", 1)[-1] for s in shards} == {"00000.safetensors", "00001.safetensors"}
    assert len(set(shards)) == len(shards)
    # the first epoch's 128 examples were split between the ranks; the reloaded cache holds all of them
    assert ranks[0]["compress"]["cache_entries"] == 128


def test_topk_hook_registered_through_the_trainer(ranks):
    t0, t1 = ranks[0]["topk"], ranks[1]["topk"]
    assert t0["masks"] == t1["masks"] and t0["weights"] == t1["weights"]
    assert t0["sparsity"] >= 0.4 - 1e-3
    # one bucket (the tiny model fits): a quarter of the entries, 4-byte value + 4-byte index each
    assert t0["residual_buckets"] == [0]
    assert t0["bytes_per_step"] == [round(0.25 * t0["grad_entries"]) * 8] * 10
    assert t0["logged_bytes"] == [float(t0["bytes_per_step"][0])] * 5


def test_lowrank_schedule_and_factorisation_agree_across_ranks(ranks):
    l0, l1 = ranks[0]["lowrank"], ranks[1]["lowrank"]
    assert l0["targets"] == l1["targets"] and l0["weights"] == l1["weights"]
    assert l0["factorised"] > 0
    assert any(l0["targets"][n] < l0["full"][n] for n in l0["targets"])  # ranks were actually lowered
