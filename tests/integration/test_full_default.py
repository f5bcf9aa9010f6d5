"""The embedded default job at full scale (about 13 minutes on 2 cores): `make test-full`."""

import json

import pytest

from hf_sparse.cli import main

pytestmark = [pytest.mark.real, pytest.mark.full]


def test_default_compress_job(tmp_path, capsys):
    assert main(["compress", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data"]["test_examples"] == 1281
    dense = report["dense"]["test_accuracy"]
    assert dense > report["data"]["test_majority_accuracy"] + 0.15
    runs = {r["name"]: r for r in report["runs"]}
    assert list(runs) == ["student-3layer", "student-3layer-structured-50"]
    # The compressed models must stay useful classifiers; how close they come to dense is reported, not asserted.
    for run in runs.values():
        assert run["test_accuracy"] > report["data"]["test_majority_accuracy"] + 0.05
        assert run["round_trip"]["identical_predictions"] and run["latency"]["ratio_vs_best_dense"] > 0
    sel = report["selection"]
    assert sel["decided_on"] == "validation" and len(sel["models"]) >= 3
    assert (tmp_path / "plots" / "pareto.png").is_file()
    # the output ends by naming the model to use (or the dense model when none is within the goal)
    out = capsys.readouterr().out
    assert ("Use " in out and "within the goal" in out) or "No compressed model meets the goal" in out
