"""One-shot pruning from calibration data (Wanda, SparseGPT) and the calibration statistics behind it."""

import copy

import pytest
import torch
from torch import nn

from hf_sparse.errors import ConfigError
from hf_sparse.pruning.calibration import calibrate_sequentially, collect_input_stats, find_blocks
from hf_sparse.pruning.criteria import masks_from_scores
from hf_sparse.pruning.oneshot import (
    sparsegpt_prune_,
    sparsegpt_prune_weight,
    wanda_mask,
    wanda_prune_,
    wanda_scores,
)
from hf_sparse.testing import tiny_bert_classifier


class ToyLinearModel(nn.Module):
    """``model(x=..., attention_mask=...)`` -> one Linear: its input is exactly ``x``."""

    def __init__(self, in_features=8, out_features=4):
        super().__init__()
        self.lin = nn.Linear(in_features, out_features)

    def forward(self, x, attention_mask=None):
        return self.lin(x)


def token_batches(n_batches=3, batch=4, seq=12, seed=0, pad_last=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(1, 128, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.long)
        if pad_last:
            mask[:, seq - pad_last :] = 0
            ids[:, seq - pad_last :] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def correlated_inputs(n=512, d=64, seed=0):
    """Inputs with strongly correlated features of different scales: where reconstruction beats selection."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.1, 3.0, d)[torch.randperm(d, generator=g)]
    mixing = torch.randn(d, d, generator=g) * scales
    return torch.randn(n, d // 4, generator=g).repeat(1, 4) @ mixing + 0.3 * torch.randn(n, d, generator=g)


# -- calibration statistics -----------------------------------------------------------------------------------------


def test_hessian_and_norms_match_hand_computation_without_padding_rows():
    torch.manual_seed(0)
    model = ToyLinearModel(8, 4)
    xs = [torch.randn(3, 5, 8) for _ in range(2)]
    masks = [torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]), torch.ones(3, 5, dtype=torch.long)]
    xs[0][masks[0] == 0] = 1e3  # padding rows that must not count
    batches = [{"x": x, "attention_mask": m} for x, m in zip(xs, masks)]
    rows = torch.cat([x[m.bool()] for x, m in zip(xs, masks)]).double()

    hess = collect_input_stats(model, batches, {"lin": model.lin}, "hessian", progress=False)
    norms = collect_input_stats(model, batches, {"lin": model.lin}, "norms", progress=False)
    assert hess.tokens["lin"] == norms.tokens["lin"] == rows.shape[0] == 24
    torch.testing.assert_close(hess.sums["lin"], 2 * rows.T @ rows, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norms.sums["lin"], (rows**2).sum(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hess.mean("lin"), 2 * rows.T @ rows / 24, rtol=1e-5, atol=1e-5)
    assert hess.batches == 2


def test_padding_tokens_do_not_change_bert_statistics():
    model = tiny_bert_classifier(seed=0)
    modules = {n: m for n, m in model.named_modules() if n.endswith("attention.self.query")}
    plain = token_batches(2, seq=8, seed=1)
    padded = [
        {
            "input_ids": torch.cat([b["input_ids"], torch.zeros(4, 5, dtype=torch.long)], 1),
            "attention_mask": torch.cat([b["attention_mask"], torch.zeros(4, 5, dtype=torch.long)], 1),
        }
        for b in plain
    ]
    a = collect_input_stats(model, plain, modules, "norms", progress=False)
    b = collect_input_stats(model, padded, modules, "norms", progress=False)
    for name in modules:
        assert a.tokens[name] == b.tokens[name] == 2 * 4 * 8
        torch.testing.assert_close(a.sums[name], b.sums[name], rtol=1e-4, atol=1e-4)


def test_empty_batches_and_unknown_kind_raise():
    model = ToyLinearModel()
    with pytest.raises(ConfigError, match="empty"):
        collect_input_stats(model, [], {"lin": model.lin}, "norms", progress=False)
    with pytest.raises(ConfigError, match="kind"):
        collect_input_stats(model, [{"x": torch.randn(2, 8)}], {"lin": model.lin}, "gradients", progress=False)


def test_sequential_calibration_feeds_later_blocks_the_pruned_earlier_ones():
    model = tiny_bert_classifier(seed=0)
    batches = token_batches(2)
    name, blocks = find_blocks(model, {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    assert name == "bert.encoder.layer" and len(blocks) == 2
    query1 = "bert.encoder.layer.1.attention.self.query"
    dense = collect_input_stats(model, batches, {query1: model.get_submodule(query1)}, "norms", progress=False)
    seen = {}

    def prune_fn(chosen, stats):
        for n, m in chosen.items():
            seen[n] = stats.sums[n].clone()
            m.weight.masked_fill_(~wanda_mask(m.weight, stats.sums[n], 0.5), 0.0)

    modules = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layer." in n}
    calibrate_sequentially(model, batches, modules, "norms", prune_fn, progress=False)
    assert set(seen) == set(modules)
    after = collect_input_stats(model, batches, {query1: model.get_submodule(query1)}, "norms", progress=False)
    # Block 1 was calibrated on what the pruned block 0 produces, not on the dense model's activations.
    torch.testing.assert_close(seen[query1], after.sums[query1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(seen[query1], dense.sums[query1], rtol=1e-3)


# -- Wanda ----------------------------------------------------------------------------------------------------------


def test_wanda_mask_is_exact_per_row_top_k_of_weight_times_input_norm():
    g = torch.Generator().manual_seed(0)
    weight, sq_norms = torch.randn(6, 20, generator=g), torch.rand(20, generator=g) * 10
    mask = wanda_mask(weight, sq_norms, 0.6)
    scores = weight.abs() * sq_norms.sqrt()
    torch.testing.assert_close(wanda_scores(weight, sq_norms), scores)
    assert (mask.sum(1) == 8).all()  # 20 - round(0.6 * 20) kept in every row
    for row in range(6):
        expected = set(torch.topk(scores[row], 8).indices.tolist())
        assert set(mask[row].nonzero().flatten().tolist()) == expected


def test_wanda_keeps_small_weights_of_a_huge_input_column_that_magnitude_drops():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 16, generator=g)
    weight[:, 3] = 1e-3
    sq_norms = torch.ones(16)
    sq_norms[3] = 1e12
    assert wanda_mask(weight, sq_norms, 0.5)[:, 3].all()
    assert not wanda_mask(weight, torch.ones(16), 0.5)[:, 3].any()


def test_wanda_nm_mask_is_exact():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(7, 24, generator=g)
    mask = wanda_mask(weight, torch.rand(24, generator=g), nm=(2, 4))
    assert (mask.reshape(7, 6, 4).sum(-1) == 2).all()


def test_wanda_prune_tiny_bert_per_row_sparsity_and_untouched_heads():
    model = tiny_bert_classifier(seed=0)
    head = model.classifier.weight.clone()
    report = wanda_prune_(model, token_batches(), 0.5, progress=False)
    assert report["method"] == "wanda" and report["sparsity"] == 0.5
    assert len(report["layers"]) == 12  # 2 blocks x (q, k, v, attention output, intermediate, output)
    for name in report["layers"]:
        w = model.get_submodule(name).weight
        assert ((w == 0).sum(1) == w.shape[1] // 2).all()
    assert torch.equal(model.classifier.weight, head)
    assert report["calibration"] == {"batches": 3, "tokens": 3 * 4 * 12}


@pytest.mark.parametrize("prune", [wanda_prune_, sparsegpt_prune_])
def test_nm_structure_is_exact_on_a_model(prune):
    model = tiny_bert_classifier(seed=0)
    report = prune(model, token_batches(), None, nm=(2, 4), progress=False)
    assert report["sparsity"] == 0.5 and report["nm"] == [2, 4]
    for name in report["layers"]:
        w = model.get_submodule(name).weight
        assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) == 2).all()


def test_single_pass_mode_prunes_too():
    model = tiny_bert_classifier(seed=0)
    report = wanda_prune_(model, iter(token_batches()), 0.25, sequential=False, progress=False)
    assert report["sparsity"] == 0.25 and report["sequential"] is False


# -- SparseGPT ------------------------------------------------------------------------------------------------------


def _reconstruction_error(x, weight, pruned):
    return float(torch.linalg.norm(x @ weight.T - x @ pruned.T))


@pytest.mark.parametrize("seed", [0, 1])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(seed):
    sparsity = 0.5
    x = correlated_inputs(seed=seed)
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    hessian = 2 * x.T.double() @ x.double()
    sq_norms = (x.double() ** 2).sum(0)

    pruned, keep = sparsegpt_prune_weight(weight, hessian, sparsity, blocksize=16)
    magnitude_keep = masks_from_scores({"w": weight.abs()}, sparsity, "layer")["w"]
    wanda_keep = wanda_mask(weight, sq_norms, sparsity)
    n_zero = round(sparsity * weight.numel())
    assert int((pruned == 0).sum()) == int((~keep).sum()) == int((~magnitude_keep).sum()) == n_zero
    assert int((~wanda_keep).sum()) == n_zero  # 64 * sparsity is a whole number per row
    assert torch.equal(pruned != 0, keep)

    err_sparsegpt = _reconstruction_error(x, weight, pruned)
    err_magnitude = _reconstruction_error(x, weight, weight * magnitude_keep)
    err_wanda = _reconstruction_error(x, weight, weight * wanda_keep)
    assert err_sparsegpt < err_wanda < err_magnitude
    assert err_sparsegpt < 0.8 * err_wanda


def test_sparsegpt_lazy_block_updates_equal_column_by_column_updates():
    # With N:M the mask is chosen per group, so the block size only changes when the deferred updates are applied:
    # the result must be the same as updating every later column after each column (blocksize = m).
    x = correlated_inputs(seed=2)
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))
    hessian = 2 * x.T.double() @ x.double()
    lazy, keep_lazy = sparsegpt_prune_weight(weight, hessian, nm=(2, 4), blocksize=32)
    eager, keep_eager = sparsegpt_prune_weight(weight, hessian, nm=(2, 4), blocksize=4)
    assert torch.equal(keep_lazy, keep_eager)
    torch.testing.assert_close(lazy, eager, rtol=1e-4, atol=1e-4)


def test_sparsegpt_reconstruction_beats_keeping_its_own_mask_without_updates():
    x = correlated_inputs(seed=3)
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    pruned, keep = sparsegpt_prune_weight(weight, 2 * x.T @ x, 0.5)
    assert _reconstruction_error(x, weight, pruned) < _reconstruction_error(x, weight, weight * keep)


@pytest.mark.parametrize(
    ("rows", "cols", "sparsity", "blocksize"), [(7, 50, 0.3, 16), (5, 33, 0.9, 128), (3, 8, 0.0, 4)]
)
def test_sparsegpt_sparsity_is_exact(rows, cols, sparsity, blocksize):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, cols, generator=g)
    weight = torch.randn(rows, cols, generator=g)
    pruned, keep = sparsegpt_prune_weight(weight, 2 * x.T @ x, sparsity, blocksize=blocksize)
    assert int((pruned == 0).sum()) == round(sparsity * rows * cols)
    assert torch.isfinite(pruned).all() and pruned.dtype == weight.dtype


def test_sparsegpt_nm_is_exact_and_beats_wanda_nm():
    x = correlated_inputs(seed=5)
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(4))
    pruned, keep = sparsegpt_prune_weight(weight, 2 * x.T @ x, nm=(2, 4), blocksize=32)
    assert ((pruned.reshape(32, 16, 4) != 0).sum(-1) == 2).all()
    wanda_keep = wanda_mask(weight, (x**2).sum(0), nm=(2, 4))
    assert _reconstruction_error(x, weight, pruned) < _reconstruction_error(x, weight, weight * wanda_keep)


def test_sparsegpt_handles_dead_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g)
    x[:, [2, 9]] = 0.0  # two inputs that never fire: H has zero rows/columns there
    weight = torch.randn(4, 16, generator=g)
    pruned, keep = sparsegpt_prune_weight(weight, 2 * x.T @ x, 0.25, blocksize=8)
    assert torch.isfinite(pruned).all()
    assert int((pruned == 0).sum()) == 16
    assert not keep[:, [2, 9]].any()  # free to remove, so removed first
    all_dead, _ = sparsegpt_prune_weight(weight, torch.zeros(16, 16), 0.5)
    assert torch.isfinite(all_dead).all() and int((all_dead == 0).sum()) == 32


def test_sparsegpt_prune_tiny_bert_exact_per_layer_and_runs():
    model = tiny_bert_classifier(seed=0)
    dense = copy.deepcopy(model)
    batches = token_batches()
    report = sparsegpt_prune_(model, batches, 0.5, blocksize=16, progress=False)
    assert report["method"] == "sparsegpt"
    for name, layer in report["layers"].items():
        assert layer["sparsity"] == 0.5, name
    assert torch.equal(model.bert.pooler.dense.weight, dense.bert.pooler.dense.weight)
    with torch.no_grad():
        assert torch.isfinite(model(**batches[0]).logits).all()


def test_target_modules_and_heads_outside_blocks_are_pruned_last():
    model = tiny_bert_classifier(seed=0)
    report = sparsegpt_prune_(
        model, token_batches(), 0.5, target_modules=("query", "pooler"), exclude_modules=(), progress=False
    )
    assert set(report["layers"]) == {
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.1.attention.self.query",
        "bert.pooler.dense",
    }
    assert report["sparsity"] == 0.5


# -- bad arguments -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prune", [wanda_prune_, sparsegpt_prune_])
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": None}, "sparsity"),
        ({"sparsity": None, "nm": (4, 4)}, "n < m"),
        ({"sparsity": None, "nm": (5, 4)}, "n < m"),
        ({"sparsity": None, "nm": (0, 4)}, "n < m"),
        ({"sparsity": None, "nm": (2,)}, "pair"),
        ({"sparsity": 0.3, "nm": (2, 4)}, "contradicts"),
        ({"sparsity": None, "nm": (1, 3)}, "divisible"),  # hidden size 32 is not a multiple of 3
        ({"sparsity": 0.5, "target_modules": ("nothing_here",)}, "selects no"),
    ],
)
def test_bad_arguments_raise_config_error(prune, kwargs, match):
    model = tiny_bert_classifier(seed=0)
    before = {n: p.clone() for n, p in model.named_parameters()}
    kwargs = dict(kwargs)  # the parametrize dict is shared between the two functions
    sparsity = kwargs.pop("sparsity")
    with pytest.raises(ConfigError, match=match):
        prune(model, token_batches(1), sparsity, progress=False, **kwargs)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("prune", [wanda_prune_, sparsegpt_prune_])
def test_empty_batches_raise_config_error(prune):
    with pytest.raises(ConfigError, match="empty"):
        prune(tiny_bert_classifier(seed=0), [], 0.5, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"blocksize": 0}, "blocksize"), ({"percdamp": -1}, "percdamp"), ({"percdamp": float("nan")}, "percdamp")],
)
def test_sparsegpt_bad_options_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        sparsegpt_prune_(tiny_bert_classifier(seed=0), token_batches(1), 0.5, progress=False, **kwargs)
    with pytest.raises(ConfigError, match=match):
        sparsegpt_prune_weight(torch.randn(4, 8), torch.eye(8), 0.5, **kwargs)
    with pytest.raises(ConfigError, match="shape"):
        sparsegpt_prune_weight(torch.randn(4, 8), torch.eye(7), 0.5)


def test_sparsegpt_nm_blocksize_is_rounded_to_whole_groups():
    x = correlated_inputs(seed=4)
    weight = torch.randn(4, 24, generator=torch.Generator().manual_seed(0))
    a, _ = sparsegpt_prune_weight(weight, 2 * x[:, :24].T @ x[:, :24], nm=(2, 4), blocksize=6)  # used as 4
    b, _ = sparsegpt_prune_weight(weight, 2 * x[:, :24].T @ x[:, :24], nm=(2, 4), blocksize=4)
    torch.testing.assert_close(a, b)
