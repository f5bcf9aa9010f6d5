"""The AMX tile kernels (kernels/csrc/cpu/amx.cpp): int8 for linear_qbsr_dyn with 16 x 64k blocks, bf16 for spmm_bsr
with 16 x 32k blocks. They compile in the avx512 build of every machine (and compile to stubs elsewhere); their
logic runs here over a software model of the tile registers (-DHF_SPARSE_AMX_EMULATE); the real instructions run only
on a CPU with AMX, behind the gates (CPU flags, tile permission, self-check), which the status reports."""

import ctypes
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from hf_sparse.formats import QBSR, to_format
from hf_sparse.machine import isa_flags
from hf_sparse.ops import dynamic_int8_linear, kernel_status, spmm
from hf_sparse.pruning.granularity import block_masks

CPU_DIR = Path(__file__).resolve().parents[2] / "kernels" / "csrc" / "cpu"
AMX_SRC, INT8_SRC = CPU_DIR / "amx.cpp", CPU_DIR / "int8_dot.cpp"
AVX512 = ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
AVX512_FLAGS = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
BF16 = torch.bfloat16
OK, BAD_SHAPE, UNAVAILABLE, BAD_POINTERS = -1, -2, -3, -4
INT8_CASES = [  # (C, block rows, block cols, tokens)
    (64, 3, 4, 1),
    (64, 3, 4, 5),
    (64, 2, 3, 16),
    (128, 3, 2, 17),
    (64, 4, 3, 37),
    (64, 2, 2, 64),
    (128, 2, 3, 70),
    (64, 3, 2, 130),
]
BF16_CASES = [(32, 3, 4, 1), (32, 3, 4, 5), (64, 2, 3, 16), (32, 4, 3, 37), (96, 2, 2, 70), (32, 2, 3, 130)]


@pytest.fixture(scope="module")
def compiler():
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    probe = subprocess.run(
        [cxx, "-mamx-tile", "-mamx-int8", "-mamx-bf16", "-x", "c++", "-c", "-o", os.devnull, "-"],
        input="int main() { return 0; }\n",
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"{cxx} has no AMX options (-mamx-tile): {probe.stderr.strip()[:200]}")
    return cxx


def _compile(cxx, out: Path, options, sources, kind="-shared"):
    args = [cxx, "-std=c++17", "-O2", "-fPIC", *options, kind, "-o", str(out), *map(str, sources)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def libs(compiler, tmp_path_factory):
    """amx.cpp + int8_dot.cpp built as the avx512 build builds them (``real``) and over the tile model (``emu``)."""
    folder = tmp_path_factory.mktemp("amx")
    jobs = {
        "real": (AVX512, [AMX_SRC, INT8_SRC]),
        "emu": ([*AVX512, "-DHF_SPARSE_AMX_EMULATE"], [AMX_SRC, INT8_SRC]),
    }
    with ThreadPoolExecutor(2) as pool:
        futures = {k: pool.submit(_compile, compiler, folder / f"amx_{k}.so", o, s) for k, (o, s) in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


def _load(path: Path):
    lib = ctypes.CDLL(str(path))
    for name in ("hf_sparse_amx_int8_status", "hf_sparse_amx_bf16_status", "hf_sparse_amx_summary"):
        getattr(lib, name).restype = ctypes.c_char_p
    lib.hf_sparse_amx_linear_qbsr.restype = ctypes.c_int64
    lib.hf_sparse_amx_linear_qbsr.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 3
    lib.hf_sparse_amx_linear_qbsr.argtypes += [ctypes.c_int64, ctypes.c_void_p]
    lib.hf_sparse_amx_spmm_bsr_bf16.restype = ctypes.c_int64
    lib.hf_sparse_amx_spmm_bsr_bf16.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4 + [ctypes.c_void_p]
    lib.hf_sparse_amx_spmm_bsr_bf16.argtypes += [ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    lib.hf_sparse_int8_linear_qbsr.restype = ctypes.c_int64
    lib.hf_sparse_int8_linear_qbsr.argtypes = lib.hf_sparse_amx_linear_qbsr.argtypes
    return lib


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def _needs_avx512():
    if not AVX512_FLAGS <= set(isa_flags()):
        pytest.skip("compiled; running the avx512 build of amx.cpp needs a CPU with AVX-512")


def _cpu_has_amx():
    return {"amx_tile", "amx_int8", "amx_bf16"} <= set(isa_flags())


def _qbsr(rows, cols, block, seed, density=0.5):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    r, c = block
    keep = (torch.rand(rows // r, cols // c, generator=g) < density).repeat_interleave(r, 0).repeat_interleave(c, 1)
    keep[:r] = False  # an empty block row
    keep[r : 2 * r, :c] = True  # and a stored block
    return QBSR.from_dense(w, keep, block=block, activation="dynamic")


def _bsr_bf16(rows, cols, block, seed, density=0.5):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g).to(BF16)
    r, c = block
    keep = (torch.rand(rows // r, cols // c, generator=g) < density).repeat_interleave(r, 0).repeat_interleave(c, 1)
    keep[-r:] = False  # an empty block row
    keep[:r, -c:] = True  # and a stored block
    return to_format("bsr", w, keep, block=block), (w * keep).double()


def _assert_bf16_close(got, want64):
    """Within 2^-8 of each token's largest result (about one bf16 step at the top), as the vector kernels are."""
    assert got.dtype == BF16 and got.shape == want64.shape
    scale = want64.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    err = ((got.double() - want64).abs() / scale).max().item()
    assert err <= 2.0**-8, err


def _run_int8(lib, entry, q, x, bias):
    rows, cols = q.shape
    r, c = q.block
    col = q.col_indices.to(torch.int32).contiguous()
    y = torch.full((x.shape[0], rows), float("nan"))
    args = (_ptr(q.crow_indices), _ptr(col), _ptr(q.values), r, c, rows // r, cols // c, _ptr(q.scales), _ptr(bias))
    return getattr(lib, entry)(*args, _ptr(x), x.shape[0], _ptr(y)), y, args


def _run_bf16(lib, fmt, xt, transpose_out):
    rows, cols = fmt.shape
    r, c = fmt.block
    n = xt.shape[1]
    col = fmt.col_indices.to(torch.int32).contiguous()
    y = torch.full((n, rows) if transpose_out else (rows, n), float("nan"), dtype=BF16)
    args = (_ptr(fmt.crow_indices), _ptr(col), _ptr(fmt.values), r, c, rows // r, cols // c)
    rc = lib.hf_sparse_amx_spmm_bsr_bf16(*args, _ptr(xt), n, _ptr(y), int(transpose_out))
    return rc, y, col


# ---- compilation: every path compiles; only the avx512 one holds AMX instructions ----------------------------------


@pytest.mark.parametrize(
    "variant, options, has_amx",
    [
        ("avx512", AVX512, True),
        ("avx512-no-amx", [*AVX512, "-DHF_SPARSE_NO_AMX"], False),
        ("avx2", ["-mavx2", "-mfma"], False),
        ("portable", [], False),
    ],
)
def test_amx_source_compiles_for_every_path(variant, options, has_amx, compiler, tmp_path):
    asm = _compile(compiler, tmp_path / f"amx_{variant}.s", options, [AMX_SRC], kind="-S").read_text()
    for instruction in ("ldtilecfg", "tdpbsud", "tdpbf16ps", "tileloadd", "tilerelease"):
        assert (instruction in asm) == has_amx, (variant, instruction)
    assert "hf_sparse_amx_compiled" in asm and "hf_sparse_amx_linear_qbsr" in asm  # the C entry points, always


# ---- the real build: gates on this CPU; the kernels where the CPU has AMX ------------------------------------------


def test_real_build_gates_report_why_or_run(libs):
    _needs_avx512()
    lib = _load(libs["real"])
    assert lib.hf_sparse_amx_compiled() == 1
    int8, bf16 = lib.hf_sparse_amx_int8_status().decode(), lib.hf_sparse_amx_bf16_status().decode()
    flags = set(isa_flags())
    if "amx_tile" not in flags:
        assert int8 == bf16 == "amx: CPU lacks amx_tile"
    elif "amx_int8" not in flags:
        assert int8 == "amx: CPU lacks amx_int8"
    if int8 != "ok":  # nothing runs, whatever the arguments
        q = _qbsr(32, 128, (16, 64), 0)
        rc, y, _ = _run_int8(lib, "hf_sparse_amx_linear_qbsr", q, torch.randn(3, 128), None)
        assert rc == UNAVAILABLE and torch.isnan(y).all()
    if bf16 != "ok":
        fmt, _ = _bsr_bf16(32, 64, (16, 32), 0)
        rc, y, _ = _run_bf16(lib, fmt, torch.randn(64, 3).to(BF16), False)
        assert rc == UNAVAILABLE and torch.isnan(y.float()).all()


def _check_kernels(lib):
    """The int8 kernel against int8_dot's (same bits) and the reference; the bf16 kernel against float64."""
    for C, br, bc, n in INT8_CASES:
        q = _qbsr(16 * br, C * bc, (16, C), seed=n)
        x = torch.randn(n, C * bc, generator=torch.Generator().manual_seed(n)) * 3
        x[0, :5] = 0.0
        for bias in (torch.randn(16 * br), None):
            rc, got, args = _run_int8(lib, "hf_sparse_amx_linear_qbsr", q, x, bias)
            assert rc == OK, (C, br, bc, n)
            rc, want, _ = _run_int8(lib, "hf_sparse_int8_linear_qbsr", q, x, bias)
            assert rc == OK
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), (C, br, bc, n)
            ref = torch.nn.functional.linear(q.quantize_input(x), q.to_dense(), bias)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    for C, br, bc, n in BF16_CASES:
        fmt, w64 = _bsr_bf16(16 * br, C * bc, (16, C), seed=n)
        xt = torch.randn(C * bc, n, generator=torch.Generator().manual_seed(n)).to(BF16)
        want = w64 @ xt.double()
        for transpose_out in (False, True):
            rc, y, _ = _run_bf16(lib, fmt, xt, transpose_out)
            assert rc == OK, (C, br, bc, n)
            _assert_bf16_close(y.t() if transpose_out else y, want)


def _check_argument_errors(lib):
    q = _qbsr(48, 128, (16, 64), 1)
    x = torch.randn(4, 128)
    col = q.col_indices.to(torch.int32).contiguous()
    col[-1] = 2  # block column 2 of 2
    y = torch.full((4, 48), float("nan"))
    args = (_ptr(q.crow_indices), _ptr(col), _ptr(q.values), 16, 64, 3, 2, _ptr(q.scales), None, _ptr(x), 4, _ptr(y))
    assert lib.hf_sparse_amx_linear_qbsr(*args) == col.numel() - 1 and torch.isnan(y).all()
    bad_shape = list(args)
    bad_shape[4] = 32  # C = 32 is not a multiple of 64
    assert lib.hf_sparse_amx_linear_qbsr(*bad_shape) == BAD_SHAPE
    crow = q.crow_indices.clone()
    crow[1] = crow[2] + 1  # not monotone
    assert lib.hf_sparse_amx_linear_qbsr(_ptr(crow), *args[1:]) == BAD_POINTERS
    fmt, _ = _bsr_bf16(32, 96, (16, 32), 2)
    col = fmt.col_indices.to(torch.int32).contiguous()
    col[0] = -1
    yb = torch.zeros(32, 3, dtype=BF16)
    bargs = (_ptr(fmt.crow_indices), _ptr(col), _ptr(fmt.values), 16, 32, 2, 3)
    xt = _ptr(torch.zeros(96, 3, dtype=BF16))
    assert lib.hf_sparse_amx_spmm_bsr_bf16(*bargs, xt, 3, _ptr(yb), 0) == 0
    eight_rows = (_ptr(fmt.crow_indices), _ptr(col), _ptr(fmt.values), 8, 32, 4, 3)  # R = 8: not a 16-row block
    assert lib.hf_sparse_amx_spmm_bsr_bf16(*eight_rows, xt, 3, _ptr(yb), 0) == BAD_SHAPE


def test_real_kernels_on_an_amx_cpu(libs):
    _needs_avx512()
    lib = _load(libs["real"])
    if lib.hf_sparse_amx_int8_status() != b"ok" or lib.hf_sparse_amx_bf16_status() != b"ok":
        if _cpu_has_amx():  # the CPU lists AMX: a refusal must be the kernel's permission, nothing of ours
            summary = lib.hf_sparse_amx_summary().decode()
            assert "self-check failed" not in summary, summary
        pytest.skip(f"the AMX kernels cannot run here: {lib.hf_sparse_amx_summary().decode()}")
    _check_kernels(lib)
    _check_argument_errors(lib)


# ---- the same kernels over the tile model: their logic, on any AVX-512 CPU -----------------------------------------


def test_emulated_kernels_match_the_vector_kernels_and_the_reference(libs):
    _needs_avx512()
    lib = _load(libs["emu"])
    summary = lib.hf_sparse_amx_summary().decode()
    assert summary.startswith("amx: in use (software emulation"), summary  # the self-checks passed
    _check_kernels(lib)
    _check_argument_errors(lib)


def _status_in_subprocess(lib_path: Path, env: dict) -> str:
    script = (
        "import ctypes, sys\n"
        f"lib = ctypes.CDLL({str(lib_path)!r})\n"
        "lib.hf_sparse_amx_summary.restype = ctypes.c_char_p\n"
        "print(lib.hf_sparse_amx_summary().decode())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_wrong_tile_kernel_fails_the_self_check_and_is_turned_off(libs):
    _needs_avx512()
    line = _status_in_subprocess(libs["emu"], {"HF_SPARSE_AMX_EMULATE_FAULT": "1"})
    assert "amx: self-check failed (int8" in line and "amx: self-check failed (bf16" in line, line
    assert "in use" not in line
    line = _status_in_subprocess(libs["emu"], {"HF_SPARSE_DISABLE_AMX": "1"})
    assert line == "amx: disabled by HF_SPARSE_DISABLE_AMX=1", line


# ---- the ops of the loaded build -----------------------------------------------------------------------------------


def test_status_says_whether_amx_is_used(ops):
    line = kernel_status()["amx"]
    assert line.startswith("amx: ") and "; calls: int8 " in line, line
    flags = set(isa_flags())
    if kernel_status()["isa"] != "avx512":
        assert line.startswith("amx: not compiled"), line
    elif "amx_tile" not in flags:
        assert line.startswith("amx: CPU lacks amx_tile"), line
    elif "amx_int8" not in flags or "amx_bf16" not in flags:
        assert "CPU lacks amx_" in line, line
    else:  # an AMX CPU: in use, or a refusal by the OS; never a failed self-check
        assert "self-check failed" not in line, line
        assert line.startswith("amx: in use") or "permission refused" in line or "tile state" in line, line


def _calls() -> tuple[int, int]:
    tail = kernel_status()["amx"].rsplit("; calls: int8 ", 1)[1]
    int8, bf16 = tail.split(", bf16 ")
    return int(int8), int(bf16)


@pytest.mark.parametrize("n", [1, 17, 70])
def test_int8_op_with_16x64_blocks_matches_the_reference(ops, n):
    q = _qbsr(48, 256, (16, 64), seed=n)
    x = torch.randn(2, n, 256, generator=torch.Generator().manual_seed(n))
    bias = torch.randn(48)
    before = _calls()[0]
    got = dynamic_int8_linear(q, x, bias)
    assert got is not None and got.shape == (2, n, 48)
    torch.testing.assert_close(got, torch.nn.functional.linear(q.quantize_input(x), q.to_dense(), bias))
    in_use = kernel_status()["amx"].startswith("amx: in use") and "int8 off" not in kernel_status()["amx"]
    assert (_calls()[0] > before) == in_use
    col = q.col_indices.clone()
    col[-1] = 4
    with pytest.raises(ValueError, match="out of range"):
        ops.linear_qbsr_dyn(q.crow_indices, col, q.values, q.scales, None, 48, 256, x[0])


@pytest.mark.parametrize("n", [1, 17, 70])
def test_bf16_op_with_16x32_blocks_matches_the_reference(ops, n):
    fmt, w64 = _bsr_bf16(48, 96, (16, 32), seed=n)
    xt = torch.randn(96, n, generator=torch.Generator().manual_seed(n)).to(BF16)
    want = w64 @ xt.double()
    before = _calls()[1]
    _assert_bf16_close(spmm(fmt, xt), want)
    _assert_bf16_close(spmm(fmt, xt, transpose_out=True).t(), want)
    in_use = kernel_status()["amx"].startswith("amx: in use") and "bf16 off" not in kernel_status()["amx"]
    assert (_calls()[1] > before) == in_use
    col = fmt.col_indices.clone()
    col[0] = 3
    with pytest.raises(ValueError, match="out of range"):
        ops.spmm_bsr(fmt.crow_indices, col, fmt.values, 48, 96, xt, False)


# ---- pruning to the AMX block shape ---------------------------------------------------------------------------------


def test_block_pruning_gives_16x64_blocks_that_qbsr_stores():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g)
    keep = block_masks({"w": w.abs()}, 0.75, block=(16, 64))["w"]
    tiles = keep.reshape(4, 16, 4, 64)
    assert bool((tiles.all(dim=(1, 3)) | ~tiles.any(dim=(1, 3))).all())  # whole 16 x 64 blocks
    assert int(tiles.any(dim=(1, 3)).sum()) == 4  # 75% of the 16 blocks dropped
    q = QBSR.from_dense(w, keep, block=(16, 64), activation="dynamic")
    assert q.block == (16, 64) and tuple(q.values.shape) == (4, 16, 64) and q.activation == "dynamic"
    half_step = q.scales.unsqueeze(1) / 2 + 1e-7
    assert bool(((q.to_dense() - w * keep).abs() <= half_step).all())
    again = QBSR.from_tensors(q.tensors(), q.params())
    assert again.block == (16, 64) and again.activation == "dynamic"
    assert torch.equal(again.to_dense(), q.to_dense())
