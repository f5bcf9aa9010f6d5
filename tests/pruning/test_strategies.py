"""Criteria that use gradients, the seeded random criterion, granularities through the Pruner, RigL regrowth and
the new PruningConfig fields."""

import pytest
import torch
from torch import nn

import hf_sparse
from hf_sparse import ConfigError, Pruner, PruningConfig
from hf_sparse.pruning import CRITERIA, Criterion, prune_


class Toy(nn.Module):
    def __init__(self, out=4, inp=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(inp, out, bias=False)
        self.emb = nn.Embedding(10, 4)


def _cfg(**kw):
    base = dict(target_modules=("fc",), exclude_modules=(), scope="layer")
    base.update(kw)
    return PruningConfig(**base)


def test_registry_interface_is_uniform():
    for name in ("magnitude", "movement", "taylor", "random"):
        assert isinstance(CRITERIA.get(name), Criterion)
    assert CRITERIA.get("movement").needs_gradients and CRITERIA.get("taylor").needs_gradients
    assert not CRITERIA.get("magnitude").needs_gradients and not CRITERIA.get("random").needs_gradients
    w = torch.tensor([-2.0, 0.5])
    assert torch.equal(CRITERIA.get("magnitude")(w), torch.tensor([2.0, 0.5]))


W = torch.tensor([[0.1, -0.1, 0.2, -0.2, 1.0, -1.0, 2.0, -2.0]])


def test_movement_keeps_weights_moving_away_from_zero_even_when_small():
    model = Toy(out=1, inp=8)
    with torch.no_grad():
        # small weights that training pushes away from zero, large ones it pulls towards zero
        model.fc.weight.copy_(W)
    # dL/dw: sign(w) * -1 for the first four (descent w - lr*g grows |w|), sign(w) * +1 for the last four
    grad = torch.tensor([[-1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0, -1.0]])
    pruner = Pruner(model, _cfg(criterion="movement"))
    for _ in range(3):
        pruner.observe_gradient("fc", grad)
    pruner.prune_to(0.5)
    assert pruner.masks["fc"][0, :4].all() and not pruner.masks["fc"][0, 4:].any()
    torch.testing.assert_close(pruner.score_state["fc"], -3 * W * grad)
    # magnitude does the opposite on the same weights
    mag = Pruner(Toy(out=1, inp=8), _cfg())
    with torch.no_grad():
        mag.modules["fc"].weight.copy_(W)
    mag.prune_to(0.5)
    assert not mag.masks["fc"][0, :4].any()


def test_taylor_is_the_mean_of_w_times_g_over_steps_in_absolute_value():
    model = Toy()
    pruner = Pruner(model, _cfg(criterion="taylor"))
    g = torch.Generator().manual_seed(0)
    total = torch.zeros_like(model.fc.weight)
    for _ in range(4):
        grad = torch.randn(model.fc.weight.shape, generator=g)
        with torch.no_grad():  # the weight changes between steps, as in training
            model.fc.weight.add_(0.01 * torch.randn(model.fc.weight.shape, generator=g))
        total += model.fc.weight.detach() * grad
        pruner.observe_gradient("fc", grad)
    scores = pruner.compute_scores()["fc"]
    torch.testing.assert_close(scores, total.abs() / 4)
    assert pruner.grad_steps["fc"] == 4


def test_random_is_seeded_reproducible_and_per_layer():
    masks = []
    for seed in (0, 0, 1):
        model = Toy()
        p = Pruner(model, _cfg(criterion="random", seed=seed))
        p.prune_to(0.5)
        masks.append(p.masks["fc"])
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])
    a = CRITERIA.get("random").scores(torch.zeros(4, 4), name="a", seed=0)
    b = CRITERIA.get("random").scores(torch.zeros(4, 4), name="b", seed=0)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("criterion", ["movement", "taylor"])
def test_gradient_criteria_without_gradients_are_a_config_error(tiny_model, criterion):
    cfg = PruningConfig(criterion=criterion)
    with pytest.raises(ConfigError, match="PruningCallback.*scores="):
        hf_sparse.apply_(tiny_model, cfg)
    # with precomputed scores it works
    names = list(hf_sparse.select_modules(tiny_model, cfg))
    scores = {n: torch.rand(tiny_model.get_submodule(n).weight.shape) for n in names}
    report = prune_(tiny_model, cfg, scores=scores)
    assert report["sparsity"] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ConfigError, match="missing"):
        prune_(tiny_model, cfg, scores=dict(list(scores.items())[1:]))


def test_prune_with_block_and_nm_on_the_tiny_bert(tiny_model):
    report = hf_sparse.apply_(tiny_model, PruningConfig(granularity="block", block=(4, 8), sparsity=0.5))
    assert report["sparsity"] == pytest.approx(0.5, abs=1e-6)
    for name in report["layers"]:
        w = tiny_model.get_submodule(name).weight.detach()
        tiles = (w != 0).reshape(w.shape[0] // 4, 4, w.shape[1] // 8, 8).permute(0, 2, 1, 3).flatten(2)
        assert (tiles.all(-1) | ~tiles.any(-1)).all()
    model = hf_sparse.testing.tiny_bert_classifier(seed=1)
    hf_sparse.apply_(model, PruningConfig(granularity="nm", n=2, m=4, sparsity=0.5))
    w = model.bert.encoder.layer[0].intermediate.dense.weight.detach()
    assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all()


def test_embedding_row_prunes_only_the_named_tables_by_whole_rows():
    model = Toy()
    fc = model.fc.weight.detach().clone()
    report = prune_(model, PruningConfig(granularity="embedding_row", embeddings=("emb",), sparsity=0.3))
    w = model.emb.weight.detach()
    zero_rows = (w == 0).all(1)
    assert int(zero_rows.sum()) == 3 and ((w != 0).all(1) | zero_rows).all()
    assert list(report["layers"]) == ["emb"] and torch.equal(model.fc.weight, fc)


def test_rigl_regrow_keeps_sparsity_changes_the_mask_and_regrows_at_zero():
    model = Toy(out=8, inp=16)
    pruner = Pruner(model, _cfg(schedule="rigl", end_step=100))
    pruner.prune_to(0.5)
    before = pruner.masks["fc"].clone()
    grad = torch.rand(8, 16)
    grad[~before] += 10.0  # every pruned position has a larger gradient than any kept one
    pruner.dense_grads = {"fc": grad}
    # remember the kept weights that should be dropped: the lowest |w| among the kept
    w = model.fc.weight.detach().clone()
    stats = pruner.regrow(0.25)
    after = pruner.masks["fc"]
    k = int(0.25 * 64)
    assert stats == {"dropped": k, "regrown": k}
    assert int(after.sum()) == int(before.sum()) == 64
    regrown = after & ~before
    dropped = before & ~after
    assert int(regrown.sum()) == k and int(dropped.sum()) == k
    assert (model.fc.weight.detach()[regrown] == 0).all() and (model.fc.weight.detach()[dropped] == 0).all()
    assert w.abs()[dropped].max() <= w.abs()[before & after].min()
    assert grad[regrown].min() >= grad[~before & ~after].max()


def test_new_config_fields_validate_and_round_trip():
    cfg = PruningConfig(criterion="movement", granularity="block", block=(2, 8), group_reduce="l2", seed=3)
    assert PruningConfig.from_json(cfg.to_json()) == cfg
    cfg = PruningConfig(schedule="iterative", stages=3, end_step=20)
    assert PruningConfig.from_dict(cfg.to_dict()) == cfg
    cases = [
        (dict(criterion="wandb"), r"criterion must be one of \['magnitude', 'movement', 'obert', 'random'"),
        (dict(granularity="head", criterion="wanda", schedule="oneshot"), "'unstructured', 'block' or 'nm'"),
        (dict(granularity="head", schedule="rigl"), "does not combine with schedule='rigl'"),
        (dict(criterion="wanda"), "use schedule='oneshot'"),
        (dict(criterion="sparsegpt", schedule="oneshot", embeddings=("word_embeddings",)), "cannot prune embedding"),
        (dict(calibration_samples=0), "calibration_samples must be >= 1"),
        (dict(layer_sparsity={"a": 1.0}), r"layer_sparsity\['a'\] must be in \[0, 1\)"),
        (dict(granularity="rows"), r"granularity must be one of \['unstructured', 'block', 'nm', 'embedding_row', 'h"),
        (dict(granularity="nm", n=2, m=4, sparsity=0.7), "fixes it at 1 - n/m = 0.5"),
        (dict(n=5, m=4), "1 <= n <= m"),
        (dict(block=(4,)), "block must be two positive integers"),
        (dict(block=(0, 4)), "block must be two positive integers"),
        (dict(granularity="embedding_row"), "embeddings, which is empty"),
        (dict(stages=0), "stages must be >= 1"),
        (dict(regrow_fraction=1.5), r"regrow_fraction must be in \[0, 1\]"),
        (dict(schedule="rigl", granularity="block"), "rigl.*unstructured"),
        (dict(group_reduce="max"), "group_reduce must be one of"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            PruningConfig(**kwargs)
    with pytest.raises(ConfigError, match="Unknown key 'blocks'"):
        PruningConfig.from_dict({"blocks": [4, 4]})


def test_a_zero_element_linear_is_pruned_and_reported_without_error():
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 0), nn.Linear(8, 4))
    report = prune_(model, PruningConfig(sparsity=0.5, exclude_modules=()))
    assert report["layers"]["1"]["numel"] == 0 and report["layers"]["1"]["sparsity"] == 0.0
    assert report["sparsity"] == pytest.approx(0.5)
