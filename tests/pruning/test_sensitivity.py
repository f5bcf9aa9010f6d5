"""Sensitivity scan and per-layer sparsity allocation, on an MLP with one deliberately sensitive layer.

``a`` and ``c`` have 90% near-zero weights (magnitude pruning up to 0.9 removes only those: their output barely
moves); ``b`` is dense with weights of similar size, so pruning it changes the output a lot. The metric is the
negative relative error of the output against the dense model's (0 = unchanged, higher is better).
"""

import json
import math

import pytest
import torch
from torch import nn

from hf_sparse.errors import ConfigError
from hf_sparse.pruning import PruningConfig, prune_
from hf_sparse.pruning.sensitivity import SensitivityScan, allocate_sparsity, sensitivity_scan

SIZES = {"a": (32, 16), "b": (32, 32), "c": (8, 32)}  # (out, in): 512, 1024 and 256 weights


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 32)
        self.c = nn.Linear(32, 8)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


def make_mlp(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = MLP()
    with torch.no_grad():
        for name in ("a", "c"):
            w = getattr(model, name).weight
            big = torch.rand(w.shape, generator=g) < 0.1
            w.copy_(torch.where(big, torch.randn(w.shape, generator=g), 1e-4 * torch.randn(w.shape, generator=g)))
        model.b.weight.copy_(torch.randn(32, 32, generator=g).sign() * (0.2 + 0.05 * torch.rand(32, 32, generator=g)))
    x = torch.randn(256, 16, generator=g)
    with torch.no_grad():
        reference = model(x)
    return model, x, reference


def fidelity_fn(x, reference, log=None):
    def evaluate(model):
        with torch.no_grad():
            out = model(x)
        if log is not None:
            log.append({n: float((m.weight == 0).float().mean()) for n, m in model.named_children()})
        return -float((out - reference).norm() / reference.norm())

    return evaluate


CFG = PruningConfig(criterion="magnitude", exclude_modules=())


def weighted_mean(alloc, scan):
    return sum(alloc[n] * scan.params[n] for n in alloc) / sum(scan.params[n] for n in alloc)


def test_scan_prunes_one_layer_at_a_time_and_restores_it_bit_exactly():
    model, x, reference = make_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = []
    scan = sensitivity_scan(model, CFG, fidelity_fn(x, reference, log), (0.5, 0.7, 0.9), progress=False)

    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert len(log) == 1 + 3 * 3
    assert log[0] == {"a": 0.0, "b": 0.0, "c": 0.0}
    expected = [(n, s) for n in ("a", "b", "c") for s in (0.5, 0.7, 0.9)]
    for seen, (name, sparsity) in zip(log[1:], expected):
        assert seen[name] == pytest.approx(sparsity, abs=1e-2), (name, seen)
        assert all(v == 0.0 for n, v in seen.items() if n != name), (name, seen)

    assert scan.baseline == 0.0 and scan.sparsities == (0.5, 0.7, 0.9)
    assert list(scan.metrics) == ["a", "b", "c"]
    assert scan.params == {n: o * i for n, (o, i) in SIZES.items()}
    assert max(scan.drops("a")) < 1e-3 and max(scan.drops("c")) < 1e-3  # only near-zero weights removed
    assert min(scan.drops("b")) > 0.1  # the dense layer hurts at every level
    assert scan.drops("b") == sorted(scan.drops("b"))


def test_scan_restores_the_layer_when_evaluate_raises():
    model, x, reference = make_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def evaluate(m):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("evaluation failed")
        return 0.0

    with pytest.raises(RuntimeError, match="evaluation failed"):
        sensitivity_scan(model, CFG, evaluate, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_the_sensitive_layer_gets_less_sparsity_and_the_mean_hits_the_target():
    model, x, reference = make_mlp()
    scan = sensitivity_scan(model, CFG, fidelity_fn(x, reference), (0.5, 0.7, 0.9), progress=False)
    for target in (0.5, 0.6, 0.8):
        alloc = allocate_sparsity(scan, target)
        assert list(alloc) == ["a", "b", "c"]
        assert weighted_mean(alloc, scan) == pytest.approx(target, abs=1e-6)
        assert alloc["b"] < target < min(alloc["a"], alloc["c"]), alloc
        assert all(0.0 <= s <= 0.98 for s in alloc.values())


def test_equally_sensitive_layers_get_the_target_and_bounds_are_respected():
    scan = SensitivityScan(
        baseline=0.9,
        sparsities=(0.5, 0.9),
        metrics={"x": [0.85, 0.6], "y": [0.85, 0.6]},
        params={"x": 100, "y": 300},
    )
    alloc = allocate_sparsity(scan, 0.7)
    assert alloc == pytest.approx({"x": 0.7, "y": 0.7}, abs=1e-6)
    assert allocate_sparsity(scan, 0.98) == pytest.approx({"x": 0.98, "y": 0.98}, abs=1e-6)
    assert allocate_sparsity(scan, 0.2, min_sparsity=0.2) == pytest.approx({"x": 0.2, "y": 0.2}, abs=1e-6)


def test_allocation_follows_the_drop_curves():
    # "free" never loses anything; "steep" loses at once; "late" is flat to 0.5 then falls. Lower is better here.
    scan = SensitivityScan(
        baseline=1.0,
        sparsities=(0.5, 0.7, 0.9),
        metrics={"free": [1.0, 1.0, 0.99], "steep": [3.0, 5.0, 9.0], "late": [1.0, 1.5, 3.0]},
        params={"free": 100, "steep": 100, "late": 100},
        higher_is_better=False,
    )
    assert scan.drops("steep") == [2.0, 4.0, 8.0]
    alloc = allocate_sparsity(scan, 0.6, max_sparsity=0.95)
    assert weighted_mean(alloc, scan) == pytest.approx(0.6, abs=1e-6)
    # By hand: "free" takes the whole flat range (0.9) but not beyond it (unmeasured); the others share the rest
    # at an equal interpolated drop t: steep = t / 4 (first segment), late = 0.7 + 0.2 * (t - 0.5) / 1.5.
    # 0.9 + t / 4 + 0.7 + (t - 0.5) * 2 / 15 = 1.8  =>  t = 16 / 23.
    t = 16 / 23
    assert alloc == pytest.approx({"free": 0.9, "steep": t / 4, "late": 0.7 + 0.2 * (t - 0.5) / 1.5}, abs=1e-5)
    # A target above the scanned range is spread past it, evenly between these equally sized layers.
    assert allocate_sparsity(scan, 0.94, max_sparsity=0.95) == pytest.approx(
        {"free": 0.94, "steep": 0.94, "late": 0.94}, abs=1e-5
    )


def test_scan_round_trips_through_json_and_renders_markdown():
    model, x, reference = make_mlp()
    scan = sensitivity_scan(model, CFG, fidelity_fn(x, reference), (0.5, 0.9), progress=False)
    again = SensitivityScan.from_dict(json.loads(json.dumps(scan.to_dict())))
    assert again == scan
    alloc = allocate_sparsity(scan, 0.6)
    md = scan.to_markdown(alloc, metric_name="fidelity")
    assert "| layer | params | fidelity @ 50% | fidelity @ 90% | allocated sparsity |" in md
    assert "| `b` | 1,024 |" in md and f"{100 * alloc['b']:.1f}%" in md
    with pytest.raises(ConfigError, match="not a scan"):
        SensitivityScan.from_dict({"baseline": 1.0})
    bad = scan.to_dict()
    bad["layers"]["a"]["metrics"] = [0.0]
    with pytest.raises(ConfigError, match="'a' has 1 metrics for 2 sparsities"):
        SensitivityScan.from_dict(bad)


@pytest.mark.parametrize(
    "sparsities, match",
    [((), "empty"), ((0.5, 0.5), "strictly increasing"), ((0.0, 0.5), r"in \(0, 1\)"), ((0.5, 1.0), r"\(0, 1\)")],
)
def test_scan_rejects_bad_sparsities(sparsities, match):
    model, x, reference = make_mlp()
    with pytest.raises(ConfigError, match=match):
        sensitivity_scan(model, CFG, fidelity_fn(x, reference), sparsities, progress=False)


def test_scan_rejects_nm_gradient_criteria_bad_scores_and_non_numbers():
    model, x, reference = make_mlp()
    evaluate = fidelity_fn(x, reference)
    with pytest.raises(ConfigError, match="granularity='nm'"):
        sensitivity_scan(model, CFG.replace(granularity="nm", sparsity=0.5), evaluate, progress=False)
    with pytest.raises(ConfigError, match="movement"):
        sensitivity_scan(model, CFG.replace(criterion="movement"), evaluate, progress=False)
    with pytest.raises(ConfigError, match="no entry for the selected layers"):
        sensitivity_scan(model, CFG, evaluate, scores={"a": torch.ones(32, 16)}, progress=False)
    with pytest.raises(ConfigError, match="must return a number"):
        sensitivity_scan(model, CFG, lambda m: "good", progress=False)


def test_scan_uses_given_scores():
    model, x, reference = make_mlp()
    # Inverted magnitudes: the large weights of "a" go first, so "a" becomes sensitive.
    scores = {n: -m.weight.detach().abs() for n, m in model.named_children()}
    scan = sensitivity_scan(model, CFG, fidelity_fn(x, reference), (0.5,), scores=scores, progress=False)
    assert scan.drops("a")[0] > 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target=0.99), "outside"),
        (dict(target=0.1, min_sparsity=0.2), "outside"),
        (dict(target=0.5, min_sparsity=0.6, max_sparsity=0.5), "min_sparsity <= max_sparsity"),
        (dict(target=0.5, max_sparsity=1.0), "max_sparsity < 1"),
    ],
)
def test_allocate_rejects_bad_bounds(kwargs, match):
    scan = SensitivityScan(baseline=1.0, sparsities=(0.5,), metrics={"x": [0.9]}, params={"x": 10})
    with pytest.raises(ConfigError, match=match):
        allocate_sparsity(scan, **kwargs)


def test_allocate_treats_a_non_finite_metric_as_the_worst_drop():
    scan = SensitivityScan(
        baseline=1.0, sparsities=(0.5, 0.9), metrics={"x": [1.0, math.nan], "y": [1.0, 0.9]}, params={"x": 1, "y": 1}
    )
    alloc = allocate_sparsity(scan, 0.8)
    assert alloc["x"] < alloc["y"]


@pytest.mark.skipif(
    "layer_sparsity" not in PruningConfig.__dataclass_fields__, reason="PruningConfig has no layer_sparsity yet"
)
def test_allocation_drives_prune_through_layer_sparsity():
    model, x, reference = make_mlp()
    scan = sensitivity_scan(model, CFG, fidelity_fn(x, reference), (0.5, 0.7, 0.9), progress=False)
    alloc = allocate_sparsity(scan, 0.6)
    report = prune_(model, CFG.replace(sparsity=0.6, schedule="oneshot", layer_sparsity=alloc))
    for name, sparsity in alloc.items():
        assert report["layers"][name]["sparsity"] == pytest.approx(sparsity, abs=2e-3), name
    assert report["sparsity"] == pytest.approx(0.6, abs=2e-3)
    # And the allocation beats a uniform 60%: the sensitive layer was spared.
    uniform, _, _ = make_mlp()
    prune_(uniform, CFG.replace(sparsity=0.6, scope="layer"))
    evaluate = fidelity_fn(x, reference)
    assert evaluate(model) > evaluate(uniform)


@pytest.mark.skipif(
    "layer_sparsity" not in PruningConfig.__dataclass_fields__, reason="PruningConfig has no layer_sparsity yet"
)
def test_guarded_stages_follow_the_allocation():
    from hf_sparse.pruning.guard import guarded_prune_

    model, x, reference = make_mlp()
    evaluate = fidelity_fn(x, reference)
    alloc = allocate_sparsity(sensitivity_scan(model, CFG, evaluate, progress=False), 0.6)
    cfg = CFG.replace(sparsity=0.6, layer_sparsity=alloc)
    result = guarded_prune_(model, cfg, [0.3, 0.6], evaluate, max_drop=1.0, progress=False)
    assert not result.stopped
    for name, sparsity in alloc.items():
        measured = float((getattr(model, name).weight == 0).float().mean())
        assert measured == pytest.approx(sparsity, abs=2e-3), name


def test_scan_of_gpt2_conv1d_layers_prunes_the_weight_in_its_own_orientation():
    """GPT-2 stores its projections (in, out): scores and masks are (out, in), so a scan in 1x4 blocks must remove
    groups of 4 consecutive *input* weights of an output (a transposed mask would remove 4 outputs of an input)."""
    from hf_sparse.nn.linear_like import linear_weight
    from hf_sparse.testing.families import tiny_inputs, tiny_model

    model, inputs = tiny_model("gpt2"), tiny_inputs("gpt2")
    seen = []

    def evaluate(m):
        for name, module in m.named_modules():
            if name == "transformer.h.0.attn.c_proj":
                w = linear_weight(module)
                groups = (w.reshape(w.shape[0], -1, 4) != 0).sum(-1)
                seen.append((float((groups == 0).float().mean()), bool(((groups == 0) | (groups == 4)).all())))
        with torch.no_grad():
            return -float(m(**inputs, labels=inputs["input_ids"]).loss)

    before = model.transformer.h[0].attn.c_proj.weight.detach().clone()
    config = PruningConfig(
        sparsity=0.5, granularity="block", block=(1, 4), target_modules=("transformer.h.0.attn.c_proj",)
    )
    scan = sensitivity_scan(model, config, evaluate, sparsities=(0.5,), progress=False)
    assert list(scan.metrics) == ["transformer.h.0.attn.c_proj"]
    assert seen[0] == (0.0, True)  # the dense baseline
    assert seen[1][0] == pytest.approx(0.5, abs=0.01) and seen[1][1]  # half the input groups gone, whole
    torch.testing.assert_close(model.transformer.h[0].attn.c_proj.weight, before)  # restored after the scan
