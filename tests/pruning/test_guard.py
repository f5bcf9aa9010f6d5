"""The accuracy guard of progressive pruning, on a linear probe whose accuracy under magnitude pruning is known.

The probe has 4 informative inputs with weights of magnitude 1-2 and 36 noise inputs with weights below 1e-3; the
labels are the dense probe's own predictions (baseline accuracy exactly 1). Magnitude pruning removes the 36 noise
weights first: up to sparsity 36/40 = 0.9 the accuracy stays ~1. The next weight removed is informative, and
accuracy falls by several points (removing the smallest of the four flips ~10% of the decisions).
"""

import json
import math

import pytest
import torch
from torch import nn

from hf_sparse.errors import ConfigError
from hf_sparse.pruning import Pruner, PruningConfig
from hf_sparse.pruning.guard import GuardResult, guarded_prune_

N_IN, N_INFORMATIVE = 40, 4
STAGES = [0.3, 0.6, 0.9, 0.925, 0.95, 0.975]  # 12, 24, 36 (all noise), then 37 (one informative) ... weights


class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(N_IN, 1)
        # A parameter outside the pruned modules: fine-tuning changes it, so a rollback must restore it too.
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.proj(x).squeeze(-1) * self.temperature


def make_probe(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = Probe()
    with torch.no_grad():
        w = (torch.rand(1, N_IN, generator=g) * 2 - 1) * 1e-3  # noise weights: |w| < 1e-3
        signs = torch.tensor([1.0, -1.0, 1.0, -1.0])
        w[0, :N_INFORMATIVE] = signs * torch.tensor([1.0, 1.3, 1.6, 2.0])
        model.proj.weight.copy_(w)
        model.proj.bias.zero_()
    x = torch.randn(2000, N_IN, generator=g)
    with torch.no_grad():
        y = model(x) > 0  # the dense probe is right by definition
    return model, x, y


def accuracy_fn(x, y, record=None):
    def evaluate(model):
        model.eval()
        with torch.no_grad():
            acc = ((model(x) > 0) == y).float().mean().item()
        if record is not None:
            record.append({k: v.clone() for k, v in model.state_dict().items()})
        return acc

    return evaluate


CFG = PruningConfig(criterion="magnitude", scope="global")


def test_guard_accepts_stages_until_the_collapse_and_rolls_back_exactly():
    model, x, y = make_probe()
    states = []
    result = guarded_prune_(model, CFG, STAGES, accuracy_fn(x, y, states), max_drop=0.02, progress=False)

    assert result.baseline == 1.0
    assert [h["sparsity"] for h in result.history] == STAGES[:4]  # nothing runs after the rejected stage
    assert [h["accepted"] for h in result.history] == [True, True, True, False]
    assert [h["stage"] for h in result.history] == [1, 2, 3, 4]
    assert all(h["drop"] <= 0.005 for h in result.history[:3])  # only noise weights removed
    assert result.history[3]["drop"] > 0.05  # an informative weight removed
    for h in result.history:
        assert h["drop"] == pytest.approx(result.baseline - h["metric"])
        assert h["measured_sparsity"] == pytest.approx(h["sparsity"], abs=1e-9)
        assert h["seconds"] >= 0
    assert result.stopped and result.stopped_at == 0.925
    assert result.accepted_sparsity == 0.9
    assert result.accepted_metric == result.history[2]["metric"]

    # The weights are those evaluated at the last accepted stage (states[0] is the baseline), bit for bit.
    last_accepted = states[3]
    for k, v in model.state_dict().items():
        assert torch.equal(v, last_accepted[k]), k
    w = model.proj.weight[0]
    assert int((w != 0).sum()) == N_INFORMATIVE and bool((w[:N_INFORMATIVE] != 0).all())
    # The masks are those of the last accepted stage too.
    assert list(result.masks) == ["proj"]
    assert torch.equal(result.masks["proj"], last_accepted["proj.weight"] != 0)


def test_lower_is_better_metric_stops_at_the_same_stage():
    model, x, y = make_probe()
    acc = accuracy_fn(x, y)
    result = guarded_prune_(
        model, CFG, STAGES, lambda m: 1.0 - acc(m), max_drop=0.02, higher_is_better=False, progress=False
    )
    assert result.baseline == 0.0
    assert [h["accepted"] for h in result.history] == [True, True, True, False]
    assert result.history[3]["drop"] > 0.05  # error rate rose: a positive drop means worse
    assert result.accepted_sparsity == 0.9


def test_no_stage_over_the_threshold_runs_to_the_end():
    model, x, y = make_probe()
    calls = []
    evaluate = accuracy_fn(x, y)
    result = guarded_prune_(
        model,
        CFG,
        STAGES[:3],
        lambda m: calls.append(1) or evaluate(m),
        max_drop=0.02,
        baseline=1.0,
        progress=False,
    )
    assert len(calls) == 3  # the given baseline is not re-measured
    assert not result.stopped and result.stopped_at is None
    assert result.accepted_sparsity == 0.9
    assert all(h["accepted"] for h in result.history)
    assert Pruner(model, CFG).sparsity() == pytest.approx(0.9)


def test_first_stage_rejected_restores_the_dense_model():
    model, x, y = make_probe()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    result = guarded_prune_(model, CFG, [0.95], accuracy_fn(x, y), max_drop=0.0, progress=False)
    assert result.stopped and result.stopped_at == 0.95 and result.accepted_sparsity == 0.0
    assert result.masks == {}
    for k, v in model.state_dict().items():
        assert torch.equal(v, dense[k]), k


def test_finetune_hook_runs_once_per_stage_and_its_changes_are_rolled_back():
    model, x, y = make_probe()
    states, calls = [], []

    def finetune(m, pruner, sparsity):
        calls.append((m, sparsity))
        assert pruner.target_sparsity == sparsity
        # One SGD step on every parameter (also those not pruned), masks enforced afterwards.
        m.train()
        loss = nn.functional.binary_cross_entropy_with_logits(m(x), y.float())
        m.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in m.parameters():
                p.sub_(0.01 * p.grad)
        pruner.apply_masks()

    result = guarded_prune_(
        model, CFG, STAGES, accuracy_fn(x, y, states), max_drop=0.02, finetune=finetune, progress=False
    )
    assert [s for _, s in calls] == STAGES[:4]
    assert all(m is model for m, _ in calls)
    assert result.accepted_sparsity == 0.9
    last_accepted = states[3]
    # The hook changed parameters outside the pruned module, and they are rolled back as well.
    assert not torch.equal(last_accepted["temperature"], torch.ones(()))
    assert not torch.equal(states[4]["temperature"], last_accepted["temperature"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, last_accepted[k]), k
    # Masks are still enforced after fine-tuning.
    assert bool((model.proj.weight[result.masks["proj"].logical_not()] == 0).all())


def test_an_exception_in_finetune_rolls_back_and_propagates():
    model, x, y = make_probe()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def finetune(m, pruner, sparsity):
        with torch.no_grad():
            m.proj.bias.add_(1.0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        guarded_prune_(model, CFG, [0.5], accuracy_fn(x, y), max_drop=0.1, finetune=finetune, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_result_serialises_to_json_and_markdown():
    model, x, y = make_probe()
    result = guarded_prune_(model, CFG, STAGES, accuracy_fn(x, y), max_drop=0.02, progress=False)
    assert isinstance(result, GuardResult)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["accepted_sparsity"] == 0.9 and data["stopped_at"] == 0.925 and data["stopped"] is True
    assert len(data["history"]) == 4 and data["masked_modules"] == ["proj"]
    md = result.to_markdown(metric_name="accuracy")
    assert "| stage | target sparsity | measured sparsity | accuracy | drop | accepted | time |" in md
    assert md.count("\n| ") == 1 + 4  # header + one row per evaluated stage
    assert "**no**" in md and "Stopped at 92.5% sparsity" in md and "rolled back to 90.0%" in md


@pytest.mark.parametrize(
    "sparsities, max_drop, match",
    [
        ([], 0.1, "empty"),
        ([0.5, 0.5], 0.1, "strictly increasing"),
        ([0.7, 0.5], 0.1, "strictly increasing"),
        ([0.5, 1.0], 0.1, r"in \[0, 1\)"),
        ([-0.1], 0.1, r"in \[0, 1\)"),
        ([0.5], -0.01, "max_drop"),
        ([0.5], math.nan, "max_drop"),
    ],
)
def test_bad_inputs_are_config_errors(sparsities, max_drop, match):
    model, x, y = make_probe()
    with pytest.raises(ConfigError, match=match):
        guarded_prune_(model, CFG, sparsities, accuracy_fn(x, y), max_drop, progress=False)


def test_evaluate_must_return_a_number_and_the_baseline_must_be_finite():
    model, _, _ = make_probe()
    with pytest.raises(ConfigError, match="must return a number"):
        guarded_prune_(model, CFG, [0.5], lambda m: {"accuracy": 1.0}, 0.1, progress=False)
    with pytest.raises(ConfigError, match="finite"):
        guarded_prune_(model, CFG, [0.5], lambda m: 1.0, 0.1, baseline=math.nan, progress=False)


def test_a_nan_metric_rejects_the_stage():
    model, _, _ = make_probe()
    result = guarded_prune_(model, CFG, [0.5], lambda m: math.nan, 1.0, baseline=1.0, progress=False)
    assert result.stopped and not result.history[0]["accepted"]


def test_layer_granularity_and_calibrated_criteria_are_refused():
    model, x, y = make_probe()
    with pytest.raises(ConfigError, match="granularity='layer'"):
        guarded_prune_(model, PruningConfig(granularity="layer"), [0.5], accuracy_fn(x, y), 0.1, progress=False)
    with pytest.raises(ConfigError, match="calibration"):
        guarded_prune_(
            model, PruningConfig(criterion="wanda", schedule="oneshot"), [0.5], accuracy_fn(x, y), 0.1, progress=False
        )


def test_masked_heads_roll_back_exactly(tiny_model):
    x = torch.randint(0, 128, (8, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = tiny_model(x).logits
    states = []

    def fidelity(model):
        with torch.no_grad():
            out = model(x).logits
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return -float((out - reference).norm() / reference.norm())

    cfg = PruningConfig(granularity="head", sparsity=0.5)
    result = guarded_prune_(tiny_model, cfg, [0.25, 0.5, 0.75], fidelity, max_drop=0.009, progress=False)
    assert [h["accepted"] for h in result.history] == [True, False]
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, states[1][k]), k
