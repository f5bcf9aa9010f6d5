import json

import pytest

from hf_sparse.benchmarking import LINEAR_TOLERANCES, MODEL_TOLERANCES
from hf_sparse.cli import main


def test_bench_spmm_quick_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "spmm", "--quick", "--rounds", "2", "--json", str(out)]) == 0
    assert "vs the best dense (" in capsys.readouterr().out  # each progress line names the best dense baseline
    record = json.loads(out.read_text())
    assert record["suite"] == "spmm" and record["limits"]["gflops"] > 0 and record["limits"]["gbps"] > 0
    from hf_sparse.ops._loader import isa_path

    if record["kernels"]["loaded"]:  # the record says which instruction-set path ran
        assert record["kernels"]["isa"] == isa_path() and record["kernels"]["int8_kernels"]
    assert record["machine"]["isa_flags"] is not None
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
        "block": 2,
    }
    assert "fp32" in case["dense_baselines_s"] and "torch_csr" in case["baselines_s"]
    assert set(case["baselines_s"]) == set(case["dense_baselines_s"]) | {"torch_csr"}
    assert set(case["speedup"]["fp32"]) == {"median", "min", "max"}
    assert case["ours_s"] > 0 and 0 < case["pct_bw"] and 0 < case["pct_peak"]
    assert record["not_implemented"] == []
    for c in record["cases"]:  # every case: the best dense of this machine, next to fp32, and what was skipped
        _check_dense_fields(c)
    assert "vs best dense" in record["table_markdown"]
    by_format = {(c["params"]["format"], c["params"]["dtype"]): c for c in record["cases"]}
    assert {f for f, _ in by_format} == {"csr", "bsr16x16", "2:4", "bsr1x4", "bsr16x4", "unstructured-1x4"}
    assert set(by_format["bsr16x16", "float32"]["baselines_s"]) - dense_all == {"torch_bsr"}
    assert by_format["2:4", "float32"]["params"]["sparsity"] == 0.5
    # int8-value cases also compare with our float32 kernel for the same format
    assert set(by_format["csr", "int8"]["baselines_s"]) - dense_all == {"torch_csr", "hf_sparse_csr_float32"}
    assert set(by_format["bsr16x16", "int8"]["baselines_s"]) - dense_all == {"torch_bsr", "hf_sparse_bsr_float32"}
    assert set(by_format["2:4", "int8"]["baselines_s"]) - dense_all == {"torch_csr", "hf_sparse_nm_float32"}
    # the quick subset: 3072x768 at 90% for N = 1, 16, 128 in csr, qcsr and qbsr 1x4 with dynamic int8 activations
    quick = {
        (c["params"]["format"], c["params"]["dtype"], c["params"]["N"])
        for c in record["cases"]
        if (c["params"]["M"], c["params"]["K"], c["params"]["sparsity"]) == (3072, 768, 0.9)
    }
    for fmt, dtype in [("csr", "float32"), ("csr", "int8"), ("unstructured-1x4", "int8-dynamic")]:
        assert {(fmt, dtype, n) for n in (1, 16, 128)} <= quick
    assert {(f, "int8-dynamic", n) for f in ("bsr1x4", "bsr16x4") for n in (1, 16, 128)} <= quick
    qbsr = by_format["unstructured-1x4", "int8-dynamic"]
    assert qbsr["params"]["pattern"] == "unstructured"
    assert set(qbsr["baselines_s"]) - dense_all == {"torch_csr", "hf_sparse_qcsr_int8"}
    blocks = by_format["bsr1x4", "int8-dynamic"]  # a pattern pruned in 1x4 blocks: 10% of the blocks kept
    assert "pattern" not in blocks["params"] and blocks["stored_bytes"] < qbsr["stored_bytes"]
    assert set(blocks["baselines_s"]) - dense_all == {"torch_csr", "hf_sparse_qcsr_int8"}  # torch BSR: square only


dense_all = set(LINEAR_TOLERANCES)  # every dense baseline of one Linear, built or skipped with a reason


def _check_dense_fields(case, names=frozenset(dense_all)):
    medians = case["dense_baselines_s"]
    assert "fp32" in medians and set(medians) <= names
    assert set(medians) | set(case["skipped_baselines"]) == names
    assert all(isinstance(r, str) and r for r in case["skipped_baselines"].values())
    assert case["best_dense"] in medians and case["best_dense_s"] == min(medians.values())
    assert case["ratio_vs_best_dense"] == pytest.approx(case["best_dense_s"] / case["ours_s"])
    assert case["ratio_vs_fp32"] == pytest.approx(medians["fp32"] / case["ours_s"])
    assert case["ratio_vs_best_dense"] <= case["ratio_vs_fp32"] + 1e-12


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
    from transformers import AutoModel

    import hf_sparse
    from hf_sparse.data import minilm_l6_path

    saved = tmp_path / "student"  # a saved compressed model, timed with --checkpoint
    model = AutoModel.from_pretrained(minilm_l6_path()).eval()
    hf_sparse.apply_(model, hf_sparse.PruningConfig(sparsity=0.5))
    hf_sparse.sparsify_(model, format="qbsr", block=(16, 4), activation="dynamic", progress=False)
    model.save_pretrained(saved)
    out = tmp_path / "minilm.json"
    args = ["bench", "minilm", "--quick", "--rounds", "2", "--batch", "2", "--checkpoint", str(saved)]
    assert main([*args, "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [(c["params"]["mode"], c["params"].get("sparsity")) for c in record["cases"]] == [
        ("auto", 0.8),
        ("auto", 0.9),
        ("int8-1x4", 0.8),
        ("int8-1x4", 0.9),
        ("int8-16x4", 0.8),
        ("int8-16x4", 0.9),
        ("fastest", 0.8),
        ("fastest", 0.9),
        ("checkpoint", None),
    ]
    assert {c["params"]["batch"] for c in record["cases"]} == {2}
    assert {c["params"]["block"] for c in record["cases"]} == {2}  # each model called twice per round
    assert record["cases"][-1]["params"]["formats"] == {"qbsr": 36, "dense": 1}  # the pooler stays dense
    assert all(":" in f for f in record["cases"][7]["params"]["formats"])  # "int8:qbsr16x4", "bfloat16:dense", ...
    assert record["cases"][3]["params"]["formats"] == {"qbsr": 36}
    assert 0 < record["cases"][3]["params"]["rel_err_vs_pruned_fp32"] <= 5e-2
    assert "fp32" in record["cases"][0]["baselines_s"]
    for c in record["cases"]:
        _check_dense_fields(c, names=set(MODEL_TOLERANCES))
    assert "vs best dense" in record["table_markdown"]
    assert sum(record["cases"][1]["params"]["formats"].values()) == 36


def test_bench_quant_quick_times_the_int8_models_against_int8_baselines(tmp_path):
    out = tmp_path / "quant.json"
    assert main(["bench", "quant", "--quick", "--rounds", "2", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["suite"] == "quant" and [c["params"]["sparsity"] for c in record["cases"]] == [0.8, 0.9]
    for c in record["cases"]:
        assert c["params"]["block"] == 2 and c["params"]["dtype"] == "int8" and c["ours_s"] > 0
        assert {"torch_dense", "hf_sparse_int8_dense"} <= set(c["baselines_s"])
        # onnxruntime's int8 model is timed where it is installed, and said missing where not
        ort = "onnxruntime_dynamic_int8" in c["baselines_s"]
        assert ort != any(m.startswith("onnxruntime_dynamic_int8") for m in record["baselines_missing"])


def test_build_kernels_command(capsys):
    from hf_sparse.ops import load_kernels

    expected = 0 if load_kernels() else 1
    assert main(["build-kernels"]) == expected
    assert "hf-sparse:" in capsys.readouterr().out


def test_bench_options_of_the_minilm_suite_are_checked(tmp_path, capsys):
    for args, match in (
        (["bench", "spmm", "--batch", "32"], "apply to the minilm suite"),
        (["bench", "minilm", "--batch", "0"], "must be positive"),
        (["bench", "minilm", "--checkpoint", str(tmp_path / "missing")], "not a saved model folder"),
    ):
        assert main(args) == 2
        assert match in capsys.readouterr().err
