"""The embedded default job at full scale (about 12 minutes on 2 cores): `make test-full`."""

import json

import pytest

from hf_sparse.cli import main

pytestmark = [pytest.mark.real, pytest.mark.full]


def test_default_compress_job(tmp_path):
    assert main(["compress", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data"]["test_examples"] == 1281
    dense = report["dense"]["test_accuracy"]
    assert dense > report["data"]["test_majority_accuracy"] + 0.15
    runs = {r["name"]: r for r in report["runs"]}
    assert runs["pruned-50"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert runs["pruned-80"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    # The pruned models must stay useful classifiers; how close they come to dense is reported, not asserted.
    for run in runs.values():
        assert run["test_accuracy"] > report["data"]["test_majority_accuracy"] + 0.05
