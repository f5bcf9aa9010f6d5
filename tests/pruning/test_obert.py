"""The Optimal BERT Surgeon criterion: block-Fisher scores against direct computations, the OBS weight update, and
runs inside the Trainer and one-shot on a tiny BERT."""

import pytest
import torch
from torch import nn
from transformers import Trainer

from hf_sparse import ConfigError, PruningCallback, PruningConfig
from hf_sparse.errors import PruningStateError
from hf_sparse.pruning import CRITERIA, Pruner, prune_
from hf_sparse.pruning.criteria import ObertCriterion
from hf_sparse.pruning.obert import fisher_inverse, fisher_update, obert_scores, obs_update
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset


def _accumulate(crit, grads):
    state = None
    for g in grads:
        state = crit.accumulate(state, None, g)
    return state


def _direct_scores(weight, grads, block, damp, decay=1.0):
    """Per row and block: F = damp I + weighted mean of g gᵀ over the kept weights, dense inverse, w² / (2 diag)."""
    m = len(grads)
    coeffs = torch.tensor([decay ** (m - 1 - k) for k in range(m)], dtype=torch.float64)
    coeffs = coeffs / coeffs.sum()
    out = torch.zeros_like(weight, dtype=torch.float64)
    rows, cols = weight.shape
    for r in range(rows):
        for c0 in range(0, cols, block):
            idx = [c for c in range(c0, min(c0 + block, cols)) if weight[r, c] != 0]
            if not idx:
                continue
            g = torch.stack([gr[r, idx].double() for gr in grads])  # (m, b)
            fisher = damp * torch.eye(len(idx), dtype=torch.float64) + (g.T * coeffs) @ g
            inv = torch.linalg.inv(fisher)
            w = weight[r, idx].double()
            out[r, idx] = w**2 / (2 * inv.diagonal())
    return out.float()


@pytest.mark.parametrize("decay", [1.0, 0.7])
def test_block_scores_equal_a_dense_inverse_of_each_block(decay):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 10, generator=g)
    weight[1, 2] = 0.0  # pruned before: out of its block's Fisher
    weight[3, 8:] = 0.0  # the whole short last block of a row pruned
    grads = [torch.randn(5, 10, generator=g) for _ in range(7)]
    crit = ObertCriterion(block=4, damp=1e-2, decay=decay)  # 10 = 4 + 4 + a remainder block of 2
    state = _accumulate(crit, grads)
    assert state.shape == (5 * 3, 4, 4) and state.dtype == torch.float32
    scores = crit.scores(weight, state=state, steps=len(grads))
    torch.testing.assert_close(scores, _direct_scores(weight, grads, 4, 1e-2, decay), rtol=1e-4, atol=1e-7)
    assert scores[1, 2] == 0 and (scores[3, 8:] == 0).all()


def test_relative_dampening_follows_the_scale_of_the_gradients():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(4, 8, generator=g)
    weight[0, 1] = 0.0  # pruned: not part of the mean diagonal
    grads = [torch.randn(4, 8, generator=g) * 1e-4 for _ in range(6)]  # a real model's scale: g² ~ 1e-8
    crit = ObertCriterion(block=4, damp=1e-12, relative_damp=0.05)
    state = _accumulate(crit, grads)
    kept = weight != 0
    mean_diag = torch.stack([gr.double() ** 2 for gr in grads]).mean(0)[kept].mean().item()
    scores = crit.scores(weight, state=state, steps=len(grads))
    torch.testing.assert_close(scores, _direct_scores(weight, grads, 4, 0.05 * mean_diag), rtol=1e-4, atol=1e-12)
    # scaling every gradient scales the Fisher and the dampening alike: the ranking does not change
    scaled = [x * 1e3 for x in grads]
    again = crit.scores(weight, state=_accumulate(crit, scaled), steps=len(grads))
    assert torch.equal(scores.flatten().argsort(), again.flatten().argsort())
    # an absolute dampening of 1e-7 swamps such a Fisher: the scores are nearly magnitude's
    absolute = ObertCriterion(block=4, damp=1e-7)
    ratio = absolute.scores(weight, state=state, steps=len(grads))[kept] / weight[kept] ** 2
    assert float(ratio.std() / ratio.mean()) < 0.2
    with pytest.raises(ConfigError, match="obert_relative_damp"):
        PruningConfig(criterion="obert", obert_relative_damp=0.0)


def test_whole_row_block_ranks_as_the_exact_obs_formula_on_a_quadratic():
    g = torch.Generator().manual_seed(1)
    d = 12
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    hessian = a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)
    w = torch.randn(1, d, generator=g, dtype=torch.float64)
    exact = (w[0] ** 2 / (2 * torch.linalg.inv(hessian).diagonal())).float()
    lower = torch.linalg.cholesky(hessian)
    crit = ObertCriterion(block=d, damp=1e-9)

    # d gradients whose mean outer product is exactly H.
    exact_grads = [(d**0.5 * lower[:, k]).float().reshape(1, d) for k in range(d)]
    scores = crit.scores(w.float(), state=_accumulate(crit, exact_grads), steps=d)[0]
    torch.testing.assert_close(scores, exact, rtol=1e-3, atol=1e-6)
    assert torch.equal(scores.argsort(), exact.argsort())
    assert not torch.equal(exact.argsort(), w[0].abs().argsort())  # the ranking is not the magnitude one

    # Many sampled gradients with covariance H: the empirical Fisher converges to H.
    z = torch.randn(20000, d, generator=g, dtype=torch.float64)
    sampled = (z @ lower.T).float()
    state = crit.accumulate(None, None, sampled[:1])
    for i in range(1, sampled.shape[0], 1000):
        # Folding 1000 gradients at once is 1000 single folds (the sum of outer products is additive).
        chunk = sampled[i : i + 1000]
        state = state + torch.einsum("nb,nc->bc", chunk, chunk).unsqueeze(0)
    scores = crit.scores(w.float(), state=state, steps=sampled.shape[0])[0]
    ranks = scores.argsort().argsort().double()
    exact_ranks = exact.argsort().argsort().double()
    assert torch.corrcoef(torch.stack([ranks, exact_ranks]))[0, 1] > 0.95
    k = d // 2
    assert set(scores.argsort()[:k].tolist()) == set(exact.argsort()[:k].tolist())


def _least_squares(seed=2, n=400, d=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    return x, y, w


def test_obs_update_beats_plain_zeroing_on_least_squares():
    x, y, w_hat = _least_squares()
    d = x.shape[1]

    def loss(w):
        return float(0.5 * ((x @ w - y) ** 2).mean())

    grads = [(xi * (xi @ w_hat - yi)).float().reshape(1, d) for xi, yi in zip(x, y)]  # per-example gradients
    for block in (d, 8, 5):
        crit = ObertCriterion(block=block, damp=1e-6, update=True)
        state = _accumulate(crit, grads)
        weight = w_hat.float().reshape(1, d)
        scores = crit.scores(weight, state=state, steps=len(grads))
        keep = torch.ones(1, d, dtype=torch.bool)
        keep[0, scores[0].argsort()[: d // 2]] = False
        zeroed = weight * keep
        updated = weight.clone()
        crit.update_weights(updated, keep, state=state, steps=len(grads))
        assert (updated[~keep] == 0).all()
        base = loss(w_hat)
        assert loss(updated[0].double()) - base < 0.8 * (loss(zeroed[0].double()) - base), block


def test_exact_fisher_update_is_the_refit_of_the_kept_weights():
    # With F = XᵀX / n (the quadratic's own Hessian) and one block per row, the multi-weight OBS update lands on the
    # least-squares solution restricted to the kept weights.
    x, y, w_hat = _least_squares(seed=3)
    n, d = x.shape
    grads = [xi.float().reshape(1, d) * 1.0 for xi in x]  # mean of g gᵀ = XᵀX / n
    crit = ObertCriterion(block=d, damp=1e-9, update=True)
    state = _accumulate(crit, grads)
    keep = torch.ones(1, d, dtype=torch.bool)
    keep[0, [1, 4, 5, 11]] = False
    weight = w_hat.float().reshape(1, d)
    crit.update_weights(weight, keep, state=state, steps=n)
    refit = torch.linalg.lstsq(x[:, keep[0]], y.unsqueeze(1)).solution.squeeze(1)
    torch.testing.assert_close(weight[0, keep[0]].double(), refit, rtol=2e-3, atol=2e-4)
    assert (weight[0, ~keep[0]] == 0).all()


def test_update_leaves_earlier_pruned_weights_at_zero_and_untouched_blocks_alone():
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(3, 8, generator=g)
    weight[0, 1] = 0.0
    grads = [torch.randn(3, 8, generator=g) for _ in range(20)]
    state = None
    for grad in grads:
        state = fisher_update(state, grad, block=4)
    keep = weight != 0
    keep[0, 5] = False  # only block (row 0, cols 4-7) loses a weight
    finv = fisher_inverse(state, 20, shape=(3, 8), block=4, damp=1e-3, keep=weight != 0)
    new = obs_update(weight, finv, keep, 4)
    assert new[0, 1] == 0 and new[0, 5] == 0
    assert torch.equal(new[0, :4], weight[0, :4]) and torch.equal(new[1:], weight[1:])
    assert not torch.equal(new[0, 4:], weight[0, 4:])
    assert torch.equal(obert_scores(weight, finv, 4)[0, 1], torch.tensor(0.0))


def test_fisher_state_of_another_block_size_is_refused():
    state = fisher_update(None, torch.randn(4, 8), block=4)
    with pytest.raises(PruningStateError, match="obert_block=8"):
        fisher_update(state, torch.randn(4, 8), block=8)
    with pytest.raises(PruningStateError, match="expected"):
        ObertCriterion(block=8).scores(torch.randn(4, 8), state=state, steps=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(granularity="block"), "use granularity='unstructured'"),
        (dict(granularity="nm", sparsity=0.5), "use granularity='unstructured'"),
        (dict(granularity="head"), "use granularity='unstructured'"),
        (dict(obert_block=0), "obert_block must be >= 1"),
        (dict(obert_damp=0.0), "obert_damp must be > 0"),
        (dict(fisher_decay=0.0), r"fisher_decay must be in \(0, 1\]"),
        (dict(fisher_decay=1.5), r"fisher_decay must be in \(0, 1\]"),
        (dict(fisher_batch_size=0), "fisher_batch_size must be >= 1"),
        (dict(obert_update="yes"), "obert_update must be"),
    ],
)
def test_bad_obert_configs_raise_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PruningConfig(criterion="obert", **kwargs)


def test_registered_and_configured_from_the_config():
    assert isinstance(CRITERIA.get("obert"), ObertCriterion) and CRITERIA.get("obert").needs_gradients
    cfg = PruningConfig(criterion="obert", obert_block=16, obert_damp=1e-4, fisher_decay=0.9, fisher_reset=False)
    assert PruningConfig.from_dict(cfg.to_dict()) == cfg
    crit = Pruner(tiny_bert_classifier(), cfg).criterion
    assert (crit.block, crit.damp, crit.decay, crit.reset_after_update) == (16, 1e-4, 0.9, False)


def _labelled_batches(n=32, size=8):
    ds = tiny_classification_dataset(n=n)
    return [
        {k: torch.tensor(ds[i : i + size][k]) for k in ("input_ids", "attention_mask", "labels")}
        for i in range(0, n, size)
    ]


def test_oneshot_from_labelled_calibration_batches_updates_the_kept_weights():
    batches = _labelled_batches()
    base = tiny_bert_classifier(seed=0)
    # The tiny random model's squared gradients are about 1e-13: the dampening must be of that order to matter.
    cfg = PruningConfig(criterion="obert", sparsity=0.5, obert_block=8, obert_damp=1e-14, scope="layer")
    model = tiny_bert_classifier(seed=0)
    report = prune_(model, cfg, calibration=batches)
    assert report["sparsity"] == pytest.approx(0.5, abs=1e-3)
    plain = tiny_bert_classifier(seed=0)
    prune_(plain, cfg.replace(obert_update=False), calibration=batches)
    name = "bert.encoder.layer.0.attention.self.query"
    w0 = base.get_submodule(name).weight
    w_upd, w_plain = model.get_submodule(name).weight, plain.get_submodule(name).weight
    assert torch.equal(w_upd == 0, w_plain == 0)  # same mask: ranked on the same Fisher
    kept = w_plain != 0
    assert torch.equal(w_plain[kept], w0[kept])  # no update: kept weights as they were
    assert not torch.allclose(w_upd[kept], w0[kept])  # OBS update moved them
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind

    def loss(m):
        with torch.no_grad():
            return sum(float(m.eval()(**b).loss) for b in batches)

    assert loss(model) < loss(plain)


def test_oneshot_without_labels_or_calibration_raises():
    cfg = PruningConfig(criterion="obert", sparsity=0.5, obert_block=8)
    with pytest.raises(ConfigError, match="labelled calibration batches"):
        prune_(tiny_bert_classifier(), cfg)
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in _labelled_batches()]
    with pytest.raises(ConfigError, match="no loss"):
        prune_(tiny_bert_classifier(), cfg, calibration=unlabelled)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_gradual_obert_inside_the_trainer(tmp_path, scope):
    cfg = PruningConfig(
        criterion="obert", sparsity=0.6, scope=scope, end_step=4, update_every=2, obert_block=8, obert_update=True
    )
    cb = PruningCallback(cfg)
    trainer = Trainer(
        model=tiny_bert_classifier(seed=0).train(),
        args=cpu_training_args(tmp_path, per_device_train_batch_size=8, learning_rate=1e-3, max_steps=6),
        train_dataset=tiny_classification_dataset(n=64),
        callbacks=[cb],
    )
    trainer.train()
    p = cb.pruner
    assert p.sparsity() == pytest.approx(0.6, abs=2e-3)
    for name, mask in p.masks.items():
        assert (p.weight(name)[~mask] == 0).all()
        if scope == "layer":
            assert 1 - mask.float().mean().item() == pytest.approx(0.6, abs=1 / mask.numel())
    # The Fisher is freed after the last update (step 4) and nothing more is accumulated.
    assert p.score_state == {} and not p.collect_scores
    history = {h["step"]: h for h in trainer.state.log_history if "target_sparsity" in h}
    assert history[2]["target_sparsity"] > 0 and history[4]["target_sparsity"] == pytest.approx(0.6)


def test_callback_oneshot_at_step_zero_takes_labelled_training_examples(tmp_path):
    cfg = PruningConfig(criterion="obert", sparsity=0.5, schedule="oneshot", obert_block=8, calibration_samples=16)
    cb = PruningCallback(cfg)
    trainer = Trainer(
        model=tiny_bert_classifier(seed=0).train(),
        args=cpu_training_args(tmp_path, per_device_train_batch_size=8, learning_rate=1e-3, max_steps=2),
        train_dataset=tiny_classification_dataset(n=64),
        callbacks=[cb],
    )
    trainer.train()
    assert cb.pruner.sparsity() == pytest.approx(0.5, abs=2e-3)
    assert cb.pruner.calibration is None and cb.pruner.score_state == {}


def test_remainder_blocks_in_a_plain_module_with_a_dict_loss():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(10, 3, bias=False)

        def forward(self, x, labels=None):
            out = self.fc(x).sum(-1)
            return {"loss": ((out - labels) ** 2).mean()}

    torch.manual_seed(0)
    model = Toy()
    batches = [{"x": torch.randn(4, 10), "labels": torch.randn(4)} for _ in range(6)]
    cfg = PruningConfig(
        criterion="obert", sparsity=0.4, target_modules=("fc",), exclude_modules=(), obert_block=4, scope="layer"
    )
    report = prune_(model, cfg, calibration=batches)
    assert report["sparsity"] == pytest.approx(0.4, abs=0.02)
    assert int((model.fc.weight == 0).sum()) == round(0.4 * 30)
