import json

import pytest

from hf_sparse.cli import main


def test_bench_spmm_quick_writes_the_documented_json(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "spmm", "--quick", "--rounds", "2", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["suite"] == "spmm" and record["limits"]["gflops"] > 0 and record["limits"]["gbps"] > 0
    case = record["cases"][0]
    assert case["params"] == {
        "M": 3072,
        "K": 768,
        "N": 16,
        "sparsity": 0.9,
        "format": "csr",
        "dtype": "float32",
        "threads": 1,
        "cold": True,
    }
    assert set(case["baselines_s"]) == {"torch_dense", "torch_csr"}
    assert set(case["speedup"]["torch_dense"]) == {"median", "min", "max"}
    assert case["ours_s"] > 0 and 0 < case["pct_bw"] and 0 < case["pct_peak"]
    assert record["not_implemented"] == []
    by_format = {(c["params"]["format"], c["params"]["dtype"]): c for c in record["cases"]}
    assert {f for f, _ in by_format} == {"csr", "bsr16x16", "2:4"}
    assert set(by_format["bsr16x16", "float32"]["baselines_s"]) == {"torch_dense", "torch_bsr"}
    assert by_format["2:4", "float32"]["params"]["sparsity"] == 0.5
    # int8-value cases also compare with our float32 kernel for the same format
    assert set(by_format["csr", "int8"]["baselines_s"]) == {"torch_dense", "torch_csr", "hf_sparse_csr_float32"}
    assert set(by_format["bsr16x16", "int8"]["baselines_s"]) == {"torch_dense", "torch_bsr", "hf_sparse_bsr_float32"}
    assert set(by_format["2:4", "int8"]["baselines_s"]) == {"torch_dense", "torch_csr", "hf_sparse_nm_float32"}


def test_bench_train_step_quick_checks_gradients_and_reports_ratios(tmp_path):
    out = tmp_path / "train.json"
    assert main(["bench", "train-step", "--quick", "--rounds", "2", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["suite"] == "train-step" and len(record["cases"]) == 2
    case = record["cases"][0]
    assert case["params"]["M"] == 3072 and case["params"]["N"] == 128 and case["params"]["sparsity"] == 0.9
    assert set(case["baselines_s"]) == {"torch_dense", "torch_dense_masked"}


@pytest.mark.real
def test_bench_minilm_quick_on_the_real_model(tmp_path):
    out = tmp_path / "minilm.json"
    assert main(["bench", "minilm", "--quick", "--rounds", "2", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [c["params"]["sparsity"] for c in record["cases"]] == [0.8, 0.9]
    assert {"torch_dense"} <= set(record["cases"][0]["baselines_s"])
    assert sum(record["cases"][1]["params"]["formats"].values()) == 36


def test_build_kernels_command(capsys):
    from hf_sparse.ops import load_kernels

    expected = 0 if load_kernels() else 1
    assert main(["build-kernels"]) == expected
    assert "hf-sparse:" in capsys.readouterr().out
