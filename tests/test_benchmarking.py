"""The dense baselines every CPU speed claim is compared with (hf_sparse.benchmarking): correctness, reasons for
what is skipped, and the fields a record gains. No timing assertions."""

import importlib.util
import sys

import pytest
import torch

from hf_sparse import benchmarking, machine
from hf_sparse.benchmarking import (
    LINEAR_TOLERANCES,
    MODEL_TOLERANCES,
    DenseBaseline,
    DenseBaselines,
    add_dense_comparison,
    best_dense,
    dense_linear_baselines,
    dense_model_baselines,
    dense_table,
)

ALL_LINEAR = set(LINEAR_TOLERANCES)


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    return torch.randn(24, 32, generator=g), torch.randn(24, generator=g), torch.randn(5, 32, generator=g)


@pytest.fixture(scope="module")
def linear_baselines(tiny):
    torch.set_num_threads(1)
    w, b, x = tiny
    return dense_linear_baselines(w, b, example=x, copies=2)


def _rel(out, ref):
    out = out if torch.is_tensor(out) else torch.from_numpy(out)
    return float((out.float() - ref).norm() / ref.norm())


def test_every_linear_baseline_is_close_to_fp32_or_skipped_with_a_reason(tiny, linear_baselines):
    w, b, x = tiny
    ref = torch.nn.functional.linear(x, w, b)
    assert "fp32" in linear_baselines and "torch-dynamic-int8" in linear_baselines
    assert set(linear_baselines) | set(linear_baselines.skipped) == ALL_LINEAR
    assert not set(linear_baselines) & set(linear_baselines.skipped)
    for name, baseline in linear_baselines.items():
        assert isinstance(baseline, DenseBaseline)
        with torch.inference_mode():
            assert _rel(baseline(x), ref) <= LINEAR_TOLERANCES[name], name
        assert linear_baselines.errors[name] <= LINEAR_TOLERANCES[name]
    for name, reason in linear_baselines.skipped.items():
        assert isinstance(reason, str) and len(reason) > 10, name


def test_timed_calls_run_on_prepared_inputs_and_rotate_copies(tiny, linear_baselines):
    w, b, x = tiny
    calls = linear_baselines.timed(x)
    assert set(calls) == set(linear_baselines)
    assert len(linear_baselines["fp32"].fns) == 2
    ref = torch.nn.functional.linear(x, w, b)
    for name, call in calls.items():
        for i in range(3):
            assert _rel(call(i), ref) <= LINEAR_TOLERANCES[name], name
    if "bf16" in linear_baselines:  # timed on a bf16 input: the output stays bf16
        assert calls["bf16"](0).dtype == torch.bfloat16


def test_onnxruntime_baseline_where_installed(tiny, linear_baselines):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    assert "onnxruntime-dynamic-int8" in linear_baselines, linear_baselines.skipped


@pytest.mark.parametrize("flags,expected", [(["avx2", "fma", "avx512f"], False), (["avx512f", "avx512_bf16"], True)])
def test_bf16_only_where_the_cpu_has_native_bf16(monkeypatch, tiny, flags, expected):
    monkeypatch.setattr(machine, "isa_flags", lambda: flags)
    w, b, x = tiny
    baselines = dense_linear_baselines(w, b, example=x)
    assert ("bf16" in baselines) is expected
    if not expected:
        assert "avx512_bf16" in baselines.skipped["bf16"] and "native bf16" in baselines.skipped["bf16"]


def test_a_wrong_baseline_is_skipped_with_its_error(tiny):
    w, b, x = tiny
    ref = torch.nn.functional.linear(x, w, b)
    out = DenseBaselines()
    wrong = DenseBaseline(
        "bf16", [lambda v: torch.nn.functional.linear(v, w.t().contiguous().t() * 2, b)], lambda v: v, 0
    )
    out._add(wrong, ref, x, LINEAR_TOLERANCES)
    failing = DenseBaseline("torch-dynamic-int8", [lambda v: 1 / 0], lambda v: v, 0)
    out._add(failing, ref, x, LINEAR_TOLERANCES)
    assert len(out) == 0
    assert out.skipped["bf16"].startswith("wrong output: relative error")
    assert "ZeroDivisionError" in out.skipped["torch-dynamic-int8"]


def test_best_dense_and_record_fields():
    assert best_dense({"fp32": 3.0, "bf16": 1.0, "torch-dynamic-int8": 2.0}) == ("bf16", 1.0)
    with pytest.raises(ValueError, match="at least one"):
        best_dense({})
    record = {
        "name": "case",
        "ours_s": 0.5,
        "baselines_s": {"torch_csr": 0.4},
        "speedup": {"torch_csr": {}, "bf16": {}, "fp32": {}},
    }
    add_dense_comparison(record, {"fp32": 2.0, "bf16": 1.0}, {"onnxruntime-dynamic-int8": "not installed"})
    assert record["baselines_s"] == {"torch_csr": 0.4, "fp32": 2.0, "bf16": 1.0}
    assert record["dense_baselines_s"] == {"fp32": 2.0, "bf16": 1.0}
    assert record["best_dense"] == "bf16" and record["best_dense_s"] == 1.0
    assert record["ratio_vs_best_dense"] == pytest.approx(2.0) and record["ratio_vs_fp32"] == pytest.approx(4.0)
    assert record["skipped_baselines"] == {"onnxruntime-dynamic-int8": "not installed"}
    assert list(record["speedup"])[:2] == ["fp32", "bf16"]
    table = dense_table([record])
    assert "| case | 500.000 | 2000.000 | 4.00x | bf16 | 1000.000 | 2.00x |" in table
    assert "`onnxruntime-dynamic-int8`: not installed" in table


def test_record_fields_from_timed_baselines(tiny, linear_baselines):
    w, b, x = tiny
    record = {"ours_s": 1e-3, "baselines_s": {k: 2e-3 for k in linear_baselines}}
    add_dense_comparison(record, linear_baselines)
    assert set(record["dense_baselines_s"]) == set(linear_baselines)
    assert record["skipped_baselines"] == linear_baselines.skipped
    assert record["ratio_vs_best_dense"] == pytest.approx(2.0) and record["ratio_vs_fp32"] == pytest.approx(2.0)
    assert set(record["baseline_errors"]) == set(linear_baselines)


def test_dense_model_baselines_on_a_tiny_bert(monkeypatch):
    from transformers import BertModel

    from hf_sparse.testing import tiny_bert_config

    torch.manual_seed(0)
    monkeypatch.setattr(machine, "isa_flags", lambda: ["avx512f", "avx512_bf16"])
    model = BertModel(tiny_bert_config()).eval()
    inputs = {"input_ids": torch.randint(0, 100, (1, 12)), "attention_mask": torch.ones(1, 12, dtype=torch.long)}
    with torch.inference_mode():
        ref = model(**inputs).last_hidden_state.clone()
    baselines = dense_model_baselines(model, inputs)
    assert {"fp32", "bf16", "torch-dynamic-int8"} <= set(baselines)
    if importlib.util.find_spec("openvino") is not None:
        assert {"openvino", "openvino-int8-weights"} <= set(baselines), baselines.skipped
        assert "int8 (one scale per output channel) weights" in baselines.notes["openvino-int8-weights"]
    assert set(baselines) | set(baselines.skipped) == set(MODEL_TOLERANCES)
    for name, call in baselines.timed(inputs).items():
        with torch.inference_mode():
            out = call(0)
        # a transformers output, onnxruntime's list of arrays, or OpenVINO's first output (an array)
        got = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0] if isinstance(out, list) else out
        assert tuple(got.shape) == tuple(ref.shape), name
        assert _rel(got, ref) <= MODEL_TOLERANCES[name], name
    with torch.inference_mode():  # building the baselines (an ONNX export of a copy) leaves the model as it was
        torch.testing.assert_close(model(**inputs).last_hidden_state, ref)


def test_openvino_baselines_where_installed(tiny, linear_baselines):
    pytest.importorskip("openvino")
    w, b, x = tiny
    ref = torch.nn.functional.linear(x, w, b)
    for name, weights in (("openvino", "float32 weights"), ("openvino-int8-weights", "int8")):
        assert name in linear_baselines, linear_baselines.skipped
        note = linear_baselines.notes[name]
        assert weights in note and "1 thread(s)" in note, note
        assert "inference precision bf16" in note or "inference precision f32" in note, note
        assert len(linear_baselines[name].fns) == 2
        assert _rel(linear_baselines.timed(x)[name](1), ref) <= LINEAR_TOLERANCES[name], name


def test_openvino_int8_weights_compress_every_constant_matmul():
    ov = pytest.importorskip("openvino")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8)).eval()
    x = torch.randn(3, 16)
    converted = ov.convert_model(model, example_input=x)
    assert benchmarking._ov_compress_weights(converted) == 2
    constants = [op for op in converted.get_ordered_ops() if op.get_type_name() == "Constant"]
    assert sum(op.get_output_element_type(0) == ov.Type.i8 for op in constants) == 2
    out = benchmarking._ov_compile(converted, 1)({0: x.numpy()})[0]
    with torch.inference_mode():
        assert 0 < _rel(out, model(x)) <= LINEAR_TOLERANCES["openvino-int8-weights"]


def test_openvino_skipped_with_a_reason_when_it_cannot_be_imported(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    w, b, x = tiny
    baselines = dense_linear_baselines(w, b, example=x)
    names = {"openvino", "openvino-int8-weights"}
    assert not names & set(baselines)
    for name in names:
        assert baselines.skipped[name].startswith("openvino not importable (openvino)"), baselines.skipped[name]
    from transformers import BertModel

    from hf_sparse.testing import tiny_bert_config

    model = BertModel(tiny_bert_config()).eval()
    inputs = {"input_ids": torch.randint(0, 100, (1, 6))}
    model_baselines = dense_model_baselines(model, inputs, include=["fp32", "openvino", "openvino-int8-weights"])
    assert set(model_baselines) == {"fp32"}
    for name in names:
        assert "openvino not importable" in model_baselines.skipped[name]


def _bnb_sized():
    """A small layer bitsandbytes' CPU 4-bit kernel takes: output features a multiple of 32, input features of 64."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 128, generator=g), torch.randn(64, generator=g), torch.randn(5, 128, generator=g)


def test_bitsandbytes_nf4_where_it_runs(monkeypatch):
    pytest.importorskip("bitsandbytes")
    # the tiny layer is slower than fp32 (the speed gate would drop it): let it through to check its numerics
    monkeypatch.setattr(benchmarking, "_slower_than_fp32", lambda *args: "")
    w, b, x = _bnb_sized()
    baselines = dense_linear_baselines(w, b, example=x, copies=2)
    assert "bitsandbytes-nf4" in baselines, baselines.skipped
    nf4 = baselines["bitsandbytes-nf4"]
    assert "4-bit nf4 weights" in nf4.note and len(nf4.fns) == 2
    ref = torch.nn.functional.linear(x, w, b)
    with torch.inference_mode():
        error = _rel(baselines.timed(x)["bitsandbytes-nf4"](1), ref)
    # 4-bit numerics: clearly quantised, within the looser bound, far from a broken layer's ~1
    assert 1e-2 < error <= LINEAR_TOLERANCES["bitsandbytes-nf4"] < 0.5
    assert nf4.nbytes < w.numel()  # two weights a byte plus one scale per 64


def test_bitsandbytes_slower_than_fp32_is_skipped_with_the_timings(monkeypatch):
    pytest.importorskip("bitsandbytes")
    monkeypatch.setattr(benchmarking, "_slower_than_fp32", lambda *args: "1.000 ms vs 0.500 ms at N=5")
    w, b, x = _bnb_sized()
    skipped = dense_linear_baselines(w, b, example=x).skipped
    for name, layer in (("bitsandbytes-int8", "Linear8bitLt"), ("bitsandbytes-nf4", "Linear4bit (nf4)")):
        assert f"{layer} on CPU is not faster than fp32 here: 1.000 ms vs 0.500 ms" in skipped[name], skipped[name]


def test_bitsandbytes_skipped_with_a_reason_when_it_cannot_be_imported(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    w, b, x = tiny
    baselines = dense_linear_baselines(w, b, example=x)
    for name in ("bitsandbytes-int8", "bitsandbytes-nf4"):
        assert name not in baselines
        assert baselines.skipped[name].startswith("bitsandbytes not importable (bitsandbytes)"), baselines.skipped


def test_baseline_errors_are_relative_for_large_outputs_and_absolute_near_zero():
    from hf_sparse.benchmarking import _relative_error

    unsure = torch.tensor([[-0.0339, -0.0123]])  # logits of a classifier unsure of its example
    int8 = torch.tensor([[0.2166, -0.2945]])  # what a dynamic int8 copy gave: 10x the logits' norm, 0.38 absolute
    assert _relative_error(int8, unsure) == pytest.approx(float((int8 - unsure).norm()), rel=1e-6)
    assert _relative_error(int8, unsure) < MODEL_TOLERANCES["torch-dynamic-int8"]
    big = torch.full((4, 8), 10.0)
    assert _relative_error(big * 1.01, big) == pytest.approx(0.01, rel=1e-4)
    assert _relative_error(-big, big) == pytest.approx(2.0)  # a broken baseline stays far outside


def test_interleave_in_blocks_times_the_last_call_of_each_block_and_counts_every_call(monkeypatch):
    import hf_sparse.benchmarking as bm

    clock = [0.0]
    order = []

    def call(name):
        def fn(i):
            order.append((name, i))
            clock[0] += 1 + i  # a call's "duration" is its index + 1: the timed one is known

        return fn

    monkeypatch.setattr(bm.time, "perf_counter", lambda: clock[0])
    times = bm.interleave({"a": call("a"), "b": call("b")}, rounds=2, warmup=1, block=2)
    # warm-up, then per round each call twice in a row (A A B B), the index counting every call of that name
    assert order == [
        ("a", 0),
        ("b", 0),
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("b", 1),
        ("a", 2),
        ("a", 3),
        ("b", 2),
        ("b", 3),
    ]
    assert times == {"a": [2.0, 4.0], "b": [2.0, 4.0]}  # only the second of each pair was timed
    assert bm.interleave({"a": call("a")}, rounds=1, warmup=0) == {"a": [1.0]}  # block 1: every call timed
    with pytest.raises(ValueError, match="block must be >= 1"):
        bm.interleave({"a": call("a")}, rounds=1, block=0)
