"""The integer kernels (int8 codes x dynamically quantised int8 inputs): every instruction-set path this CPU can run
computes what the Python reference does, the other paths compile, and the op checks its arguments."""

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_sparse.errors import ConfigError, FormatError
from hf_sparse.formats import QBSR
from hf_sparse.machine import isa_flags
from hf_sparse.nn.quant import QuantLinear
from hf_sparse.ops import dynamic_int8_linear, kernel_status, load_kernels
from hf_sparse.ops._loader import ISA_PATHS, cpu_flag_names, cpu_flags, isa_path

SOURCE = Path(__file__).resolve().parents[2] / "kernels" / "csrc" / "cpu" / "int8_dot.cpp"
#: Compiler options of each kernel variant, and the name the compiled code reports for it.
VARIANTS = {
    "portable": ([], "portable"),
    "avx2": (["-mavx2", "-mfma"], "avx2"),
    "avx-vnni": (["-mavx2", "-mfma", "-mavxvnni"], "avx-vnni"),
    "avx512": (["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"], "avx512"),
    "avx512-vnni": (
        ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni"],
        "avx512-vnni",
    ),
}
#: /proc/cpuinfo flags a variant needs to run here.
NEEDS = {
    "portable": set(),
    "avx2": {"avx2", "fma"},
    "avx-vnni": {"avx2", "fma", "avx_vnni"},
    "avx512": {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"},
    "avx512-vnni": {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"},
}
CASES = [  # (block rows R, block cols C, rows, cols, tokens)
    (1, 4, 48, 64, 1),
    (1, 4, 48, 64, 5),
    (1, 4, 48, 68, 37),
    (2, 8, 48, 64, 16),
    (4, 4, 32, 96, 3),
    (1, 4, 256, 128, 70),
    (2, 4, 64, 96, 130),
    (16, 16, 64, 64, 17),
    (16, 4, 64, 96, 1),
    (16, 4, 64, 96, 16),
    (32, 4, 64, 96, 37),
    (8, 4, 64, 96, 5),
]


def _weight(rows, cols, block, density=0.15, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    keep = torch.rand(rows, cols, generator=g) < density
    q = QBSR.from_dense(w, keep, block=block)
    q._set_input("dynamic")
    return q


def _reference(q, x, bias=None):
    return torch.nn.functional.linear(q.quantize_input(x), q.to_dense(), bias)


@pytest.fixture(scope="module")
def compiler():
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    return cxx


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_compiles_and_those_this_cpu_runs_match_the_reference(variant, compiler, tmp_path):
    options, name = VARIANTS[variant]
    lib_path = tmp_path / f"int8_{variant}.so"
    done = subprocess.run(
        [compiler, "-std=c++17", "-O2", *options, "-fPIC", "-shared", "-o", str(lib_path), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    if not NEEDS[variant] <= set(isa_flags()):
        pytest.skip(f"compiled; this CPU cannot run {variant}")
    lib = ctypes.CDLL(str(lib_path))
    lib.hf_sparse_int8_isa.restype = ctypes.c_char_p
    assert lib.hf_sparse_int8_isa().decode() == name
    run = lib.hf_sparse_int8_linear_qbsr
    run.restype = ctypes.c_int64
    run.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 3 + [ctypes.c_int64]
    run.argtypes += [ctypes.c_void_p]

    def ptr(t):
        return ctypes.c_void_p(t.data_ptr())

    for R, C, rows, cols, n in CASES:
        q = _weight(rows, cols, (R, C))
        x = torch.randn(n, cols, generator=torch.Generator().manual_seed(n)) * 3
        x[0, :3] = 0.0
        bias = torch.randn(rows)
        col = q.col_indices.to(torch.int32).contiguous()
        y = torch.full((n, rows), float("nan"))
        args = (ptr(q.crow_indices), ptr(col), ptr(q.values), R, C, rows // R, cols // C, ptr(q.scales), ptr(bias))
        assert run(*args, ptr(x), n, ptr(y)) == -1
        torch.testing.assert_close(y, _reference(q, x, bias), rtol=1e-5, atol=1e-4)
        if col.numel():  # a bad block column is reported before anything is computed
            col[col.numel() // 2] = cols // C
            assert run(*args, ptr(x), n, ptr(y)) == col.numel() // 2


# ---- the op in the loaded build (this CPU's path) ----


@pytest.fixture(scope="module")
def kernels():
    if not load_kernels():
        pytest.skip(kernel_status()["reason"])
    return torch.ops.hf_sparse


def test_the_loaded_build_names_its_path(kernels):
    status = kernel_status()
    assert status["isa"] == isa_path()
    assert status["int8_kernels"] == kernels.cpu_isa()
    expected = {"portable": "portable", "avx2": ("avx2", "avx-vnni"), "avx512": ("avx512", "avx512-vnni")}
    assert status["int8_kernels"] in expected[status["isa"]]


@pytest.mark.parametrize("index_dtype", [torch.int16, torch.int32])
@pytest.mark.parametrize(("R", "C", "rows", "cols", "n"), CASES)
def test_op_matches_the_simulated_path(kernels, R, C, rows, cols, n, index_dtype):
    q = _weight(rows, cols, (R, C), seed=R + C + n)
    x = torch.randn(n, cols, generator=torch.Generator().manual_seed(7)) * 2 + 0.5
    bias = torch.randn(rows)
    col = q.col_indices.to(index_dtype)
    y = kernels.linear_qbsr_dyn(q.crow_indices, col, q.values, q.scales, bias, rows, cols, x)
    torch.testing.assert_close(y, _reference(q, x, bias), rtol=1e-5, atol=1e-4)
    y0 = kernels.linear_qbsr_dyn(q.crow_indices, col, q.values, q.scales, None, rows, cols, x)
    torch.testing.assert_close(y0, _reference(q, x), rtol=1e-5, atol=1e-4)


def test_op_edge_inputs(kernels):
    q = _weight(32, 64, (1, 4))
    x = torch.randn(4, 64)
    x[1] = 0.0  # all zeros: scale at its floor, output = bias
    x[2, 5] = float("nan")  # a non-finite token: its outputs are NaN, the others are untouched
    y = kernels.linear_qbsr_dyn(q.crow_indices, q.col_indices, q.values, q.scales, None, 32, 64, x)
    assert torch.isnan(y[2]).all() and not torch.isnan(y[[0, 1, 3]]).any()
    assert (y[1] == 0).all()
    torch.testing.assert_close(y[[0, 3]], _reference(q, x[[0, 3]]), rtol=1e-5, atol=1e-4)
    empty = kernels.linear_qbsr_dyn(q.crow_indices, q.col_indices, q.values, q.scales, None, 32, 64, x[:0])
    assert empty.shape == (0, 32)


def _args(q, rows=32, cols=64):
    return [q.crow_indices, q.col_indices.clone(), q.values, q.scales, None, rows, cols, torch.randn(3, cols)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.__setitem__(7, torch.randn(3, 60)), "x must be float32"),
        (lambda a: a.__setitem__(7, torch.randn(3, 64, dtype=torch.float64)), "x must be float32"),
        (lambda a: a.__setitem__(2, a[2].float()), "values must be int8"),
        (lambda a: a.__setitem__(3, a[3][:-1]), "scales must be float32"),
        (lambda a: a.__setitem__(4, torch.randn(5)), "bias must be float32"),
        (lambda a: a.__setitem__(0, a[0][:-1]), "crow must be"),
        (lambda a: a.__setitem__(1, a[1][:-1]), "col must be"),
        (lambda a: a[1].__setitem__(0, 16), "out of range [0, 16)"),
        (lambda a: a[1].__setitem__(-1, -1), "out of range [0, 16)"),
        (lambda a: a.__setitem__(6, 1 << 20), "exceeds"),
    ],
)
def test_op_rejects_bad_arguments_before_reading(kernels, change, message):
    args = _args(_weight(32, 64, (1, 4), density=0.5))
    change(args)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        kernels.linear_qbsr_dyn(*args)


def test_blocks_whose_width_is_not_a_multiple_of_four_are_refused(kernels):
    q = _weight(32, 66, (2, 3))
    with pytest.raises(ValueError, match="multiple of 4"):
        kernels.linear_qbsr_dyn(q.crow_indices, q.col_indices, q.values, q.scales, None, 32, 66, torch.randn(2, 66))
    assert dynamic_int8_linear(q, torch.randn(2, 66)) is None  # the layer takes the general path instead


def test_quant_linear_takes_the_integer_path_and_keeps_its_numbers(kernels, monkeypatch):
    q = _weight(96, 128, (1, 4))
    layer = QuantLinear(q, torch.randn(96))
    x = torch.randn(2, 5, 128)
    with torch.no_grad():
        fast = layer(x)
    calls = []
    real = torch.ops.hf_sparse.linear_qbsr_dyn

    def spy(*args):
        calls.append(args)
        return real(*args)

    module = sys.modules["hf_sparse.ops.spmm"]  # the package's `spmm` attribute is the function of that name
    monkeypatch.setattr(module, "_ops", type("Ops", (), {"linear_qbsr_dyn": staticmethod(spy)}))
    with torch.no_grad():
        layer(x)
    assert len(calls) == 1
    assert fast.shape == (2, 5, 96)
    torch.testing.assert_close(fast, _reference(q, x, layer.bias), rtol=1e-5, atol=1e-4)
    # with a gradient to compute the simulated path runs (the op has no backward)
    assert dynamic_int8_linear(q, x.requires_grad_()) is None


# ---- which path the build takes ----


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], "portable"),
        (["avx2"], "portable"),
        (["avx2", "fma", "f16c"], "avx2"),
        (["avx2", "fma", "avx512f", "avx512bw", "avx512vl"], "avx2"),
        (["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"], "avx512"),
        (["avx512f", "avx512bw", "avx512vl", "avx512dq"], "portable"),
    ],
)
def test_isa_path_follows_the_cpu_flags(flags, expected, monkeypatch):
    monkeypatch.delenv("HF_SPARSE_ISA", raising=False)
    monkeypatch.delenv("HF_SPARSE_PORTABLE", raising=False)
    assert isa_path(flags) == expected


def test_cpu_flags_add_the_extras_the_cpu_lists(monkeypatch):
    monkeypatch.delenv("HF_SPARSE_ISA", raising=False)
    monkeypatch.delenv("HF_SPARSE_PORTABLE", raising=False)
    zen4 = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"]
    opts = cpu_flags(zen4)
    assert {"-mavx512f", "-mavx512vnni", "-mavx512bf16", "-mf16c"} <= set(opts)
    assert "-mavxvnni" not in opts
    assert cpu_flags(zen4, path="avx2") == ["-mavx2", "-mfma", "-mf16c"]
    assert cpu_flags(zen4, path="portable") == []
    # what a prebuilt package checks in /proc/cpuinfo: the flags' own names, not the compiler's
    names = cpu_flag_names(zen4)
    assert {"avx512_vnni", "avx512_bf16", "avx512dq", "f16c"} <= set(names) and "avx512vnni" not in names
    assert cpu_flag_names(zen4, path="avx2") == ["avx2", "fma", "f16c"]


def test_hf_sparse_isa_caps_the_path_and_refuses_what_the_cpu_lacks(monkeypatch):
    monkeypatch.delenv("HF_SPARSE_PORTABLE", raising=False)
    avx2 = ["avx2", "fma"]
    monkeypatch.setenv("HF_SPARSE_ISA", "portable")
    assert isa_path(avx2) == "portable"
    monkeypatch.setenv("HF_SPARSE_ISA", "AVX2")
    assert isa_path(avx2) == "avx2"
    monkeypatch.setenv("HF_SPARSE_ISA", "avx512")
    with pytest.raises(ConfigError, match="illegal instruction"):
        isa_path(avx2)
    monkeypatch.setenv("HF_SPARSE_ISA", "sse9")
    with pytest.raises(ConfigError, match="not a kernel path"):
        isa_path(avx2)
    assert list(ISA_PATHS) == ["portable", "avx2", "avx512"]


def test_sparsify_with_dynamic_activation_runs_the_integer_path_and_matches_the_simulation(kernels):
    import hf_sparse
    from hf_sparse.nn import SparseLinear

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 32))
    hf_sparse.apply_(model, hf_sparse.PruningConfig(sparsity=0.75, granularity="block", block=(1, 4)))
    hf_sparse.sparsify_(model, format="qbsr", block=(1, 4), activation="dynamic", progress=False)
    layer = model[0]
    assert isinstance(layer, SparseLinear) and layer.weight_format().activation == "dynamic"
    x = torch.randn(3, 64)
    with torch.no_grad():
        fast = model(x)
        h = torch.relu(_reference(model[0].weight_format(), x, model[0].bias))
        want = _reference(model[2].weight_format(), h, model[2].bias)
    torch.testing.assert_close(fast, want, rtol=1e-4, atol=1e-4)
    # the simulated path (a gradient to compute) gives the same numbers
    xg = x.clone().requires_grad_()
    torch.testing.assert_close(model(xg).detach(), want, rtol=1e-4, atol=1e-4)


def test_from_dense_records_only_weight_only_or_dynamic_inputs():
    w = torch.randn(8, 16)
    assert QBSR.from_dense(w, block=(1, 4), activation="dynamic").activation == "dynamic"
    assert QBSR.from_dense(w, block=(1, 4)).activation is None
    with pytest.raises(FormatError, match="static input ranges"):
        QBSR.from_dense(w, block=(1, 4), activation="static")
    with pytest.raises(FormatError, match="activation"):
        QBSR.from_dense(w, block=(1, 4), actvation="dynamic")


def test_an_int8_model_with_dynamic_inputs_saves_and_reloads_in_a_fresh_process(kernels, tmp_path):
    import hf_sparse
    from hf_sparse.testing import check_fresh_process_reload, tiny_bert_classifier

    model = tiny_bert_classifier(seed=3).eval()
    hf_sparse.apply_(model, hf_sparse.PruningConfig(sparsity=0.75, granularity="block", block=(16, 4)))
    hf_sparse.sparsify_(model, format="qbsr", block=(16, 4), activation="dynamic", progress=False)
    check = (
        "layer = m.bert.encoder.layer[0].intermediate.dense\n"
        "assert layer.weight_format().activation == 'dynamic' and layer.format == 'qbsr', layer"
    )
    check_fresh_process_reload(model, tmp_path, check)
