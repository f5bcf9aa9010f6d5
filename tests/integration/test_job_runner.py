"""The one stage loop on the real MiniLM and Rotten Tomatoes (small seeded subsets): a flat recipe and the same
recipe written as one stage give identical checkpoints, and a method registered by a plugin runs inside a staged
recipe — transform, callback, finalize, record, report — without any change to the job code."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_sparse.cli import main
from hf_sparse.config import BaseConfig, register_config
from hf_sparse.method import Method, register_method, unregister_method
from hf_sparse.registry import CONFIGS

pytestmark = pytest.mark.real

COMMON = r"""
model: {max_length: 32}
data: {train_limit: 64, validation_limit: 32, test_limit: 32, seed: 42}
dense: {max_steps: 2, batch_size: 16, learning_rate: 1e-4, logging_steps: 1}
checkpoint: {save_steps: 0, latency_rounds: 0, format: csr, verify: false}
"""
TRAIN = "{max_steps: 3, batch_size: 16, learning_rate: 1e-4, logging_steps: 1}"
PRUNING = "{sparsity: 0.6, end_step: 2, update_every: 1}"
QUANT = "{mode: ptq, compare_ptq: false, weight: {bits: 8}, calibration_samples: 16}"

FLAT = f"""
name: flat
{COMMON}
pruned: {TRAIN}
pruning: {PRUNING}
sparsities: [0.6]
quantization: {QUANT}
"""
ONE_STAGE = f"""
name: one-stage
{COMMON}
stages:
  - name: all
    train: {TRAIN}
    pruning: {PRUNING}
    quantization: {QUANT.replace("compare_ptq: false, ", "")}
"""


def _tensors(folder):
    (path,) = folder.glob("*.safetensors")
    return load_file(path)


def test_a_flat_recipe_and_the_same_recipe_as_one_stage_give_identical_checkpoints(tmp_path):
    for name, text in (("flat", FLAT), ("staged", ONE_STAGE)):
        (tmp_path / f"{name}.yaml").write_text(text)
        assert main(["compress", str(tmp_path / f"{name}.yaml"), "--output", str(tmp_path / name)]) == 0
    flat = json.loads((tmp_path / "flat" / "report.json").read_text())
    staged = json.loads((tmp_path / "staged" / "report.json").read_text())
    (flat_run,) = flat["runs"]
    (staged_run,) = staged["runs"]
    assert flat_run["name"] == "pruned-60-int8-ptq" and staged_run["name"] == "one-stage"
    a = _tensors(tmp_path / "flat" / "pruned-60-int8-ptq")
    b = _tensors(tmp_path / "staged" / "one-stage")
    assert a.keys() == b.keys() and any(k.endswith("qweight") or "values" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert flat_run["test_accuracy"] == staged_run["test_accuracy"]
    assert flat_run["formats"] == staged_run["formats"]
    assert flat_run["sparsity"] == pytest.approx(staged_run["sparsity"]) == pytest.approx(0.6, abs=0.01)
    assert flat_run["quantization"]["mode"] == staged_run["quantization"]["mode"] == "ptq"


@register_config("test_toy_head_scale")
@dataclasses.dataclass(frozen=True)
class ToyConfig(BaseConfig):
    factor: float = 0.5


EVENTS: list[str] = []


class ToyCallback(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        EVENTS.append("train_begin")


def _toy_apply(model, cfg):
    with torch.no_grad():
        model.classifier.weight.mul_(cfg.factor)
    return {"scaled": True}


def _toy_start(model, cfg, ctx):
    EVENTS.append(f"start:{ctx.stage}")
    ctx.result("toy")["norm_before"] = float(model.classifier.weight.norm())
    _toy_apply(model, cfg)


def _toy_finalize(model, cfg, callbacks, ctx):
    EVENTS.append(f"finalize:{ctx.stage}:{len(callbacks)}")
    ctx.result("toy")["norm_after"] = float(model.classifier.weight.norm())


TOY = Method(
    name="toy",
    config_class=ToyConfig,
    apply=_toy_apply,
    order=15,
    start=_toy_start,
    callbacks=lambda cfg, ctx: [ToyCallback()] if cfg is not None else [],
    finalize=_toy_finalize,
    tag=lambda cfg: (7, "toy"),
    describe=lambda cfg: f"classifier scaled by {cfg.factor}",
    record=lambda cfg, ctx: {"toy": {"factor": cfg.factor, **ctx.result("toy")}},
    report=lambda report: ["## Toy", "", *(f"- {r['name']}: {r['toy']}" for r in report["runs"] if "toy" in r), ""],
)

STAGED_TOY = f"""
name: with-toy
{COMMON}
stages:
  - name: scale
    train: {TRAIN}
    methods:
      toy: {{factor: 0.25}}
  - name: prune
    train: {TRAIN}
    pruning: {PRUNING}
"""


@pytest.fixture
def toy_method():
    register_method(TOY)
    EVENTS.clear()
    yield TOY
    unregister_method("toy")


def test_a_registered_method_runs_in_a_staged_recipe_without_job_changes(tmp_path, toy_method):
    path = tmp_path / "toy.yaml"
    path.write_text(STAGED_TOY)
    assert main(["compress", str(path), "--output", str(tmp_path / "out")]) == 0
    # The hooks ran in order: transform at the stage's start, callback while it trained, finalize after.
    assert EVENTS == ["start:scale", "train_begin", "finalize:scale:1"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (run,) = report["runs"]
    toy = run["toy"]
    assert toy["factor"] == 0.25 and toy["norm_after"] < toy["norm_before"]
    assert run["stages"][0]["description"] == "classifier scaled by 0.25"
    assert run["sparsity"] == pytest.approx(0.6, abs=0.01)  # the built-in method of the next stage still ran
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Toy" in md and "with-toy" in md
    saved = (tmp_path / "out" / "with-toy" / "hf_sparse_recipe.yaml").read_text()
    assert "toy:" in saved and "factor: 0.25" in saved


def test_an_unregistered_method_in_a_recipe_is_refused_with_the_registered_names(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(STAGED_TOY)
    assert main(["validate", str(path)]) == 2


def teardown_module():
    CONFIGS.unregister("test_toy_head_scale")
