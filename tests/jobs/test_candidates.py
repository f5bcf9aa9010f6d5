"""A recipe's ``candidates`` (several method mixes in one job) and its ``selection`` (which model to use): the
trade-off of the saved models against the best dense configuration, the Pareto fronts, the per-budget table and the
recommendation, decided on the validation split. Tiny BERTs on generated reviews, a few steps each."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml
from test_user_tasks import _review, _save_tiny_bert

from hf_sparse.compress import run_compress
from hf_sparse.errors import ConfigError, RecipeError
from hf_sparse.jobs.recipe_plan import recipe_plans
from hf_sparse.jobs.sections import SelectionSection
from hf_sparse.jobs.selection import (
    best_dense_configuration,
    metric_drop,
    pareto_front,
    recommendation_lines,
    select_model,
)
from hf_sparse.recipes import Recipe, dump_recipe, load_recipe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cand")
    _save_tiny_bert(folder / "bert", num_hidden_layers=4)
    rng = random.Random(0)
    rows = ["review,label"] + [",".join(_review(rng)) for _ in range(160)]
    (folder / "reviews.csv").write_text("\n".join(rows) + "\n")
    return folder


def _document(**extra) -> dict:
    train = {"max_steps": 2, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1}
    return {
        "name": "cands",
        "model": {"name": "bert", "max_length": 24},
        "data": {"dataset": "reviews.csv", "seed": 1},
        "dense": {**train, "max_steps": 3},
        "pruned": train,
        "candidates": [
            {"name": "as-is-fastest", "stages": [{"name": "store", "train": None}]},
            {
                "name": "student-2layer",
                "train": train,
                "structured": {"layers_to_drop": [0, 2]},
                "distillation": {"alpha": 0.5},
            },
            {
                "name": "structured-then-pruned",
                "stages": [
                    {
                        "name": "shrink",
                        "train": train,
                        "structured": {"heads_fraction": 0.5, "criterion": "magnitude"},
                    },
                    {"name": "prune", "train": train, "pruning": {"sparsity": 0.5, "end_step": 1, "update_every": 1}},
                ],
            },
        ],
        "checkpoint": {
            "latency_rounds": 2,
            "latency_baselines": ["fp32", "torch-dynamic-int8", "openvino-int8-weights"],
            "numerics": "fastest",
            "runtimes": True,
        },
        **extra,
    }


def _load(tmp_path, tiny, document):
    path = tiny / f"{tmp_path.name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_recipe(path)


def test_candidates_run_each_mix_and_the_report_recommends_one(tmp_path, tiny):
    recipe = _load(tmp_path, tiny, _document(selection={"max_drop": 0.99, "objective": "size"}))
    assert [p.name for p in recipe_plans(recipe)] == ["as-is-fastest", "student-2layer", "structured-then-pruned"]
    # the resolved recipe reads back the same (candidates written with their stages)
    assert Recipe.from_dict(yaml.safe_load(dump_recipe(recipe))) == recipe
    report = run_compress(recipe, tmp_path / "out")
    runs = {r["name"]: r for r in report["runs"]}
    assert list(runs) == ["as-is-fastest", "student-2layer", "structured-then-pruned"]
    assert runs["student-2layer"]["total_params"] < report["dense"]["total_params"]
    assert [s["name"] for s in runs["structured-then-pruned"]["stages"]] == ["shrink", "prune"]
    for run in runs.values():
        assert (tmp_path / "out" / run["name"] / "config.json").is_file()
        assert 0 <= run["validation"]["validation_accuracy"] <= 1 and run["round_trip"]["identical_predictions"]
    assert 0 <= report["dense"]["validation"]["validation_accuracy"] <= 1
    sel = report["selection"]
    assert sel["decided_on"] == "validation" and sel["objective"] == "size"
    # every model is within a 99-point budget, unless it is no smaller than the dense checkpoint
    for m in sel["models"]:
        assert m["qualifies"] == (m["size_ratio"] < 1.0), m
        assert m["qualifies"] or m["why_not"].startswith("not smaller than the dense checkpoint")
    smallest = min((m for m in sel["models"] if m["qualifies"]), key=lambda m: m["size_ratio"])["name"]
    assert sel["pick"] == smallest and smallest in sel["pareto_size"]
    # each run was also timed in the torch configurations (bf16 where native, dynamic int8): the fastest of them,
    # when faster than float32, is a model of its own with its metrics measured in that configuration
    rows = [r["runtime"] for r in report["runs"] if "runtime" in r]
    for row in rows:
        assert row["runtime"] in ("bf16", "torch-dynamic-int8", "openvino-int8-weights")
        assert 0 <= row["test_accuracy"] <= 1
        assert row["configs_s"][row["runtime"]] < row["configs_s"]["fp32"]
        assert row["latency"]["ratio_vs_best_dense"] > 0 and "validation_accuracy" in row["validation"]
    assert len(sel["models"]) == 3 + len(rows)
    pick = next(m for m in sel["models"] if m["name"] == smallest)
    folder = tmp_path / "out" / pick["checkpoint"]
    assert (folder / "config.json").is_file()
    if pick["runtime"]:  # picked in a torch configuration: its float32 weights saved, with how to run them
        assert json.loads((folder / "hf_sparse_runtime.json").read_text())["runtime"] == pick["runtime"]
        from transformers import AutoTokenizer

        from hf_sparse import load_runtime  # and it loads in that configuration

        inputs = AutoTokenizer.from_pretrained(folder)(["the movie was great"], return_tensors="pt")
        assert load_runtime(folder)(**inputs).logits.shape[0] == 1
    assert not (tmp_path / "out" / "trainer" / "float32-runs").exists()  # the kept float32 models are gone
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Which model to use" in md and f"Use {smallest}" in md and "| budget | fastest | smallest |" in md
    assert (tmp_path / "out" / "plots" / "pareto.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "report.json").read_text())["selection"]["pick"] == smallest


def _report(runs, dense_val=0.85, metric="test_accuracy", higher=True):
    return {
        "metric": {"key": metric, "name": "accuracy", "higher_is_better": higher},
        "dense": {metric: dense_val, "validation": {"validation_" + metric[5:]: dense_val}, "checkpoint_bytes": 100},
        "runs": [
            {
                "name": name,
                metric: test,
                "delta_vs_dense": test - dense_val,
                "validation": {"validation_" + metric[5:]: val},
                "disk_ratio_vs_dense": size,
                "checkpoint": name,
                **({"latency": {"ratio_vs_best_dense": speed, "best_dense": "bf16"}} if speed else {}),
            }
            for name, test, val, speed, size in runs
        ],
    }


def test_a_runtime_pick_is_saved_from_the_kept_float32_model_and_refused_when_none_was_kept(tmp_path, tiny, caplog):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_sparse.compress import _save_runtime_pick
    from hf_sparse.jobs.classification import ClassificationTask

    model = AutoModelForSequenceClassification.from_pretrained(tiny / "bert", num_labels=2)
    task = ClassificationTask.__new__(ClassificationTask)  # only what saving the pick reads
    task.work, task.tokenizer = tmp_path / "out" / "trainer", AutoTokenizer.from_pretrained(tiny / "bert")
    task.head = type("Head", (), {"name": "text-classification"})()
    task.keep_plain("student", model)
    assert (task.plain_folder("student") / "config.json").is_file()
    pick = {"name": "student (torch-dynamic-int8)", "run": "student", "runtime": "torch-dynamic-int8"}
    selection = {"pick": pick["name"], "models": [{**pick, "checkpoint": "student-torch-dynamic-int8"}]}
    _save_runtime_pick(selection, task, tmp_path / "out")
    folder = tmp_path / "out" / "student-torch-dynamic-int8"
    assert selection["pick_saved"] and json.loads((folder / "hf_sparse_runtime.json").read_text())["run"] == "student"
    again = AutoModelForSequenceClassification.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert (folder / "tokenizer_config.json").is_file()
    # a run whose float32 model was never kept (reused from an older job): said, not saved
    selection = {"pick": "other (bf16)", "models": [{"name": "other (bf16)", "run": "other", "runtime": "bf16"}]}
    _save_runtime_pick(selection, task, tmp_path / "out")
    assert selection["pick_saved"] is False and "were not kept" in caplog.text


def test_selection_decides_on_validation_and_meets_every_target():
    runs = [
        # name, test, validation, speed-up vs best dense, size fraction
        ("fast-bad", 0.80, 0.80, 3.0, 0.3),
        ("fast-ok", 0.84, 0.845, 2.0, 0.5),
        ("slow-good", 0.86, 0.85, 1.2, 0.8),
        ("test-lucky", 0.86, 0.83, 2.5, 0.4),  # within the budget on test, not on validation
    ]
    report = _report(runs)
    sel = select_model(report, SelectionSection(max_drop=0.01))
    assert sel["pick"] == "fast-ok"  # test-lucky is 2 points down on validation: out, though its test looks fine
    by = {m["name"]: m for m in sel["models"]}
    assert "validation drop 2.00 points > 1.00 points" in by["test-lucky"]["why_not"]
    # by test metric, fastest first: test-lucky (0.86 at 2.5x) dominates slow-good and fast-ok
    assert sel["pareto_speed"] == ["fast-bad", "test-lucky"]
    assert select_model(report, SelectionSection(max_drop=0.01, objective="size"))["pick"] == "fast-ok"
    assert select_model(report, SelectionSection(max_drop=0.01, min_speedup=2.5))["pick"] is None
    none = select_model(report, SelectionSection(max_drop=0.01, max_size=0.45))
    assert none["pick"] is None and none["closest"] == "slow-good"
    lines = recommendation_lines(none, report)
    assert lines[0].startswith("No compressed model meets the goal") and "(bf16)" in lines[0]
    assert "size 80.0% > 45%" in lines[1]
    table = {b["budget"]: (b["fastest"], b["smallest"]) for b in sel["budgets"]}
    assert table[0.005] == ("fast-ok", "fast-ok") and table[0.05] == ("fast-bad", "fast-bad")
    # a test-only report (older runs without validation metrics) decides on the test split, and says so
    for run in report["runs"]:
        del run["validation"]
    assert select_model(report, SelectionSection(max_drop=0.01))["decided_on"] == "test"


def test_one_best_dense_configuration_is_named_when_runs_disagree():
    def run(ovi8, tdi8):
        dense = {"fp32": 0.030, "openvino-int8-weights": ovi8, "torch-dynamic-int8": tdi8}
        return {"latency": {"dense_baselines_s": dense, "best_dense": min(dense, key=dense.get)}}

    # two runs found OpenVINO fastest by a hair, one found torch int8 fastest by a lot: the medians decide
    runs = [run(0.0115, 0.0116), run(0.0116, 0.0117), run(0.0156, 0.0120)]
    assert best_dense_configuration(runs) == "openvino-int8-weights"
    assert best_dense_configuration([run(0.0150, 0.0120), run(0.0116, 0.0117), run(0.0140, 0.0118)]) == (
        "torch-dynamic-int8"
    )
    assert best_dense_configuration([{"name": "untimed"}]) is None
    report = _report([("a", 0.84, 0.84, 2.0, 0.5)])
    report["runs"] = [
        {**report["runs"][0], "name": n, "latency": r["latency"] | {"ratio_vs_best_dense": 2.0}}
        for n, r in zip("abc", runs)
    ]
    sel = select_model(report, SelectionSection())
    assert sel["best_dense"] == "openvino-int8-weights" and " or " not in recommendation_lines(sel, report)[0]


def test_selection_of_a_lower_is_better_metric_is_relative():
    runs = [("a", 11.0, 11.0, 2.0, 0.5), ("b", 10.05, 10.05, 1.5, 0.5)]
    sel = select_model(_report(runs, dense_val=10.0, metric="test_perplexity", higher=False), SelectionSection())
    assert sel["pick"] == "b"  # +0.5% perplexity is within 1%, +10% is not
    assert metric_drop(11.0, 10.0, higher_is_better=False, fraction=False) == pytest.approx(0.1)


def test_a_better_but_untimed_model_is_not_reported_as_failing_the_accuracy_goal():
    # perplexity 30% lower than dense (better), but the job timed nothing (checkpoint.latency_rounds: 0)
    report = _report([("pruned", 7.0, 7.0, None, 1.0)], dense_val=10.0, metric="test_perplexity", higher=False)
    sel = select_model(report, SelectionSection())
    assert sel["pick"] is None and sel["models"][0]["why_not"] == "not timed"
    lines = recommendation_lines(sel, report)
    assert "below the dense model on the validation split, faster than the best dense configuration" in lines[0]
    assert lines[1] == "  Closest: pruned (not timed)."
    assert "No model was timed (checkpoint.latency_rounds is 0)" in lines[2]
    # a timed job whose models are all slower says why, without the untimed line
    slow = _report([("pruned", 7.0, 7.0, 0.8, 1.0)], dense_val=10.0, metric="test_perplexity", higher=False)
    lines = recommendation_lines(select_model(slow, SelectionSection()), slow)
    assert "not faster than the best dense configuration (0.80x)" in lines[1] and len(lines) == 2
    size = recommendation_lines(select_model(report, SelectionSection(objective="size")), report)
    assert "validation split, smaller than dense. Use the dense model" in size[0]


def test_pareto_front_keeps_only_undominated_points():
    pts = [("a", 0.9, 3.0), ("b", 0.8, 1.0), ("c", 0.7, 2.0), ("d", 0.9, 3.0)]
    assert pareto_front(pts) == ["b", "a", "d"]  # c is worse and costlier than b; equal points both stay


def test_a_candidate_stage_without_train_trains_as_the_pruned_section_says():
    pruned = {"learning_rate": 3e-4, "max_steps": 7}
    recipe = Recipe.from_dict(
        {
            "pruned": pruned,
            "candidates": [
                {"name": "a", "structured": {"heads_fraction": 0.5}},
                {"name": "b", "stages": [{"name": "s1"}, {"name": "s2", "train": None}]},
                {"name": "c", "train": {"max_steps": 3}, "structured": {"heads_fraction": 0.5}},
            ],
        }
    )
    a, b, c = (cand.stages for cand in recipe.candidates)
    assert a[0].train == b[0].train == recipe.pruned and recipe.pruned.max_steps == 7
    assert b[1].train is None and c[0].train.max_steps == 3 and c[0].train.learning_rate == 5e-5


def test_bad_candidates_and_selection_are_typed_errors(tmp_path, tiny):
    with pytest.raises(RecipeError, match="candidates: names must be unique"):
        doc = _document()
        doc["candidates"][1]["name"] = "as-is-fastest"
        _load(tmp_path, tiny, doc)
    with pytest.raises(RecipeError, match=r"candidates\[0\]\.name: .*one path component"):
        doc = _document()
        doc["candidates"][0]["name"] = "../escape"
        _load(tmp_path, tiny, doc)
    with pytest.raises(RecipeError, match="distillation: a recipe with candidates"):
        _load(tmp_path, tiny, _document(distillation={"alpha": 0.5}))
    with pytest.raises(RecipeError, match="selection.max_drop"):
        _load(tmp_path, tiny, _document(selection={"max_drop": 5}))
    with pytest.raises(RecipeError, match="Unknown key 'selection.max_dorp'"):
        _load(tmp_path, tiny, _document(selection={"max_dorp": 0.01}))
    with pytest.raises(ConfigError, match="changes the shapes of layers"):
        Recipe.from_dict(
            {
                "candidates": [
                    {
                        "name": "x",
                        "stages": [
                            {"name": "p", "pruning": {"sparsity": 0.5}},
                            {"name": "s", "structured": {"heads_fraction": 0.5}},
                        ],
                    }
                ]
            }
        )
    with pytest.raises(RecipeError, match=r"candidates\[0\].stages\[0\]"):
        doc = _document()
        doc["candidates"][0]["stages"][0] = {"name": "store", "train": None, "structured": {"layers_to_drop": [9]}}
        from hf_sparse.jobs.recipe_plan import preflight

        preflight(_load(tmp_path, tiny, doc))
