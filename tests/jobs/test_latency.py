"""The jobs' latency harness: each saved model timed against every dense configuration of the machine (built once
per job, each checked against fp32 first), the fields of earlier reports kept with their fp32 meaning, the option
that limits the baselines, and the reports and cards naming the best dense configuration and the machine."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from hf_sparse.benchmarking import MODEL_TOLERANCES
from hf_sparse.errors import ConfigError
from hf_sparse.jobs import classification, training
from hf_sparse.jobs.cards import card_results
from hf_sparse.jobs.classification import ClassificationTask
from hf_sparse.jobs.report import dense_comparison_lines, machine_label, render_markdown, vs_best_dense
from hf_sparse.jobs.sections import CheckpointSection
from hf_sparse.machine import machine_info
from hf_sparse.pruning import PruningConfig
from hf_sparse.recipes import Recipe
from hf_sparse.testing import tiny_bert_classifier, tiny_causal_lm


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models time in microseconds; with every core busy (a parallel test run) two torch threads each spin
    # waiting for the other and a forward pass takes a hundred times longer.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Everything but onnxruntime (its export takes seconds; the real-model job tests build it).
QUICK = ("fp32", "bf16", "torch-dynamic-int8")


def _batch(seq: int = 12) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 100, (1, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _accounted(baselines) -> set[str]:
    return set(baselines) | set(baselines.skipped)


def test_latency_records_every_dense_baseline_the_best_one_and_the_fp32_fields():
    dense = tiny_bert_classifier(seed=0)
    ours = copy.deepcopy(dense)
    batch = _batch()
    baselines = training.dense_baselines(dense, batch, QUICK)
    assert "fp32" in baselines and _accounted(baselines) == set(MODEL_TOLERANCES)
    assert "not among the baselines asked for" in baselines.skipped["onnxruntime-dynamic-int8"]
    lat = training.latency(ours, dense, batch, 3, baselines=baselines)

    assert lat["batch"] == 1 and lat["seq"] == 12 and lat["rounds"] == 3 and lat["threads"] >= 1
    timed = lat["dense_baselines_s"]
    assert set(timed) == set(baselines) and all(t > 0 for t in timed.values())
    assert lat["best_dense"] == min(timed, key=timed.get) and lat["best_dense_s"] == min(timed.values())
    assert lat["ratio_vs_best_dense"] == pytest.approx(lat["best_dense_s"] / lat["ours_s"])
    assert lat["ratio_vs_fp32"] == pytest.approx(timed["fp32"] / lat["ours_s"])
    assert lat["ratio_vs_best_dense"] <= lat["ratio_vs_fp32"] * (1 + 1e-9)
    assert lat["skipped_baselines"] == baselines.skipped and set(lat["baseline_errors"]) == set(timed)
    # The fields of earlier reports keep their meaning: fp32.
    assert lat["dense_s"] == timed["fp32"]
    assert lat["speedup"] == lat["ratios"]["fp32"]["median"]
    assert lat["speedup_min"] <= lat["speedup"] <= lat["speedup_max"]
    assert set(lat["ratios"]) == set(timed) and lat["machine"] == machine_label(machine_info())
    assert all(math.isfinite(v) for v in (lat["ours_s"], lat["ratio_vs_best_dense"], lat["speedup"]))


def test_dense_baselines_of_tiny_random_models_are_built_or_skipped_with_a_reason():
    # Every baseline, onnxruntime's export included: a tiny Llama (grouped-query attention) and a tiny BERT.
    for model, batch in (
        (tiny_causal_lm("llama", seed=0), {"input_ids": _batch(16)["input_ids"]}),
        (tiny_bert_classifier(seed=1), _batch(16)),
    ):
        baselines = training.dense_baselines(model, batch)
        assert "fp32" in baselines and _accounted(baselines) == set(MODEL_TOLERANCES)
        assert all(isinstance(why, str) and why for why in baselines.skipped.values())
        lat = training.latency(copy.deepcopy(model), model, batch, 1, baselines=baselines)
        assert lat["best_dense"] in baselines and lat["skipped_baselines"] == baselines.skipped


def test_the_task_builds_its_baselines_once_for_every_run(monkeypatch):
    calls = []
    build = training.dense_baselines

    def counting(model, batch, include=None):
        calls.append(include)
        return build(model, batch, include)

    monkeypatch.setattr(classification, "dense_baselines", counting)
    task = ClassificationTask.__new__(ClassificationTask)  # the latency part only: no data, no training
    task.recipe = Recipe(checkpoint=CheckpointSection(latency_baselines=("fp32",)))
    task.dense_model = tiny_bert_classifier(seed=0)
    task.latency_batch = _batch()
    task._dense_baselines = None
    first = task.latency(copy.deepcopy(task.dense_model), 2)
    second = task.latency(copy.deepcopy(task.dense_model), 2)
    assert calls == [("fp32",)]
    assert first["best_dense"] == second["best_dense"] == "fp32" and first["ratio_vs_best_dense"] > 0
    assert set(first["skipped_baselines"]) == set(MODEL_TOLERANCES) - {"fp32"}


def test_latency_baselines_option_is_validated():
    assert CheckpointSection().latency_baselines is None
    ok = CheckpointSection.from_dict({"latency_baselines": ["fp32", "onnxruntime-dynamic-int8"]})
    assert ok.latency_baselines == ("fp32", "onnxruntime-dynamic-int8")
    for bad, match in (
        (["fp32", "int3"], "unknown dense baseline 'int3'"),
        (["bf16"], "must include 'fp32'"),
        (["fp32", "fp32"], "names a baseline twice"),
    ):
        with pytest.raises(ConfigError, match=match):
            CheckpointSection.from_dict({"latency_baselines": bad})


def _latency(best: str, ratio_best: float, ratio_fp32: float) -> dict:
    ours = 0.010
    dense = {"fp32": ours * ratio_fp32, "bf16": ours * 1.5, best: ours * ratio_best}
    return {
        "batch": 1,
        "seq": 128,
        "threads": 2,
        "rounds": 5,
        "ours_s": ours,
        "dense_s": dense["fp32"],
        "speedup": ratio_fp32,
        "speedup_min": ratio_fp32,
        "speedup_max": ratio_fp32,
        "dense_baselines_s": dense,
        "best_dense": best,
        "best_dense_s": dense[best],
        "ratio_vs_best_dense": ratio_best,
        "ratio_vs_fp32": ratio_fp32,
        "skipped_baselines": {"onnxruntime-dynamic-int8": "onnxruntime / onnx not importable (onnx)"},
        "machine": "m",
    }


MACHINE = {
    "cpu": "AMD EPYC",
    "uarch": "AMD Zen 4 (Genoa)",
    "cores": 2,
    "torch_threads": 2,
    "isa_flags": ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"],
    "gpu": None,
    "torch": "2.13.0",
    "transformers": "5.0",
}


def _report(latencies: list[dict | None]) -> dict:
    runs = []
    for i, lat in enumerate(latencies):
        run = {
            "name": f"pruned-{i}",
            "sparsity": 0.5,
            "nonzero_params": 10,
            "test_accuracy": 0.75,
            "delta_vs_dense": -0.05,
            "train_s": 1.0,
            "layers": {"bert.encoder.layer.0.output.dense": 0.5},
            "formats": {"bert.encoder.layer.0.output.dense": "csr"},
            "checkpoint_bytes": 1e6,
            "disk_ratio_vs_dense": 0.5,
            "pruning_config": PruningConfig(sparsity=0.5).to_dict(),
        }
        if lat is not None:
            run["latency"] = lat
        runs.append(run)
    return {
        "model": "minilm-l6",
        "recipe": "r.yaml",
        "data": {
            "dataset": "rotten_tomatoes",
            "test_examples": 100,
            "train_examples": 200,
            "seed": 42,
            "test_majority_accuracy": 0.5,
        },
        "dense": {"test_accuracy": 0.8, "nonzero_params": 20, "checkpoint_bytes": 2e6},
        "runs": runs,
        "machine": MACHINE,
        "timings": {"dense_train_s": 1.0, "total_s": 2.0},
    }


def test_report_names_the_best_dense_configuration_and_the_machine():
    lat = _latency("torch-dynamic-int8", 0.8, 2.5)
    md = render_markdown(_report([lat, _latency("torch-dynamic-int8", 1.2, 3.0)]))
    assert "| vs dense fp32 | vs best dense (torch-dynamic-int8) |" in md
    assert "| 10.0 ms | 2.50x | 0.80x |" in md and "| 10.0 ms | 3.00x | 1.20x |" in md
    assert machine_label(MACHINE) == "AMD EPYC (AMD Zen 4 (Genoa)), 2 cores (2 torch threads), avx512_vnni avx512_bf16"
    assert f"Dense configurations of this machine ({machine_label(MACHINE)})" in md
    assert "| pruned-0 | 10.00 | 25.00 | 15.00 | 8.00 | torch-dynamic-int8 | 0.80x | 2.50x |" in md
    assert "Not timed: `onnxruntime-dynamic-int8`: onnxruntime / onnx not importable (onnx)." in md
    # Different best configurations per run: each cell names its own; a run without latency (or with a record
    # of an earlier version, fp32 only) shows a dash.
    old = {k: v for k, v in lat.items() if k in ("ours_s", "dense_s", "speedup")}
    md = render_markdown(_report([lat, _latency("bf16", 0.9, 2.0), old, None]))
    assert "| vs dense fp32 | vs best dense |" in md
    assert "| 0.80x (torch-dynamic-int8) |" in md and "| 0.90x (bf16) |" in md
    assert vs_best_dense(old) == "–" and vs_best_dense(None) == "–"
    assert "| pruned-2 | 10.00 |" not in md  # left out of the dense table: nothing to compare
    assert dense_comparison_lines([("pruned-2", old), ("pruned-3", None)], MACHINE) == []


def test_card_states_the_ratio_against_the_best_dense_configuration_with_its_machine():
    report = _report([_latency("torch-dynamic-int8", 0.8, 2.5)])
    results = card_results(report["runs"][0], report, Recipe())
    lat = results["latency"]
    assert lat["machine"] == machine_label(MACHINE) and lat["best_dense"] == "torch-dynamic-int8"
    assert lat["dense_s"] == lat["dense_baselines_s"]["fp32"]  # the card template's fp32 line stays as it was
    summary = results["summary"]
    assert "**0.80x the best dense configuration of that machine** (torch-dynamic-int8" in summary
    assert f"on {machine_label(MACHINE)}" in summary and "2.50x dense fp32" in summary
    no_latency = _report([None])
    assert "best dense" not in card_results(no_latency["runs"][0], no_latency, Recipe())["summary"]
