"""The kernels built for a lower instruction-set path (portable C++ without AVX2/FMA, and AVX2 without AVX-512: the
paths other CPUs get) compute the same results, bfloat16 included."""

import os
import subprocess
import sys

import pytest

from hf_sparse.ops import kernel_status, load_kernels
from hf_sparse.ops._loader import isa_path

SCRIPT = r"""
import torch
from hf_sparse.formats import to_format
from hf_sparse.ops import explain, kernel_status, load_kernels, spmm
from hf_sparse.ops._loader import cpu_flags

assert load_kernels(), kernel_status()
assert kernel_status()["isa"] == EXPECTED_ISA, kernel_status()
assert all(not f.startswith("-mavx512") for f in cpu_flags()), cpu_flags()
if EXPECTED_ISA == "portable":
    assert cpu_flags() == []
torch.manual_seed(0)
w = torch.randn(48, 64)
top = torch.rand(48, 16, 4).argsort(-1)[..., :2]
nm_mask = torch.zeros(48, 16, 4, dtype=torch.bool).scatter_(-1, top, True).reshape(48, 64)
cases = [("csr", torch.rand(48, 64) < 0.3, {}), ("bsr", torch.rand(48, 64) < 0.3, {"block": (16, 16)}),
         ("nm", nm_mask, {"n": 2, "m": 4}), ("hybrid", torch.rand(48, 64) < 0.3, {})]
for name, mask, params in cases:
    for dtype in (torch.float32, torch.float64):
        fmt = to_format(name, w.to(dtype), mask, **params)
        for n in (1, 5, 16, 37):
            xt = torch.randn(64, n, dtype=dtype)
            assert explain(fmt, xt)["cpu"] == []
            torch.testing.assert_close(spmm(fmt, xt, transpose_out=True), ((w * mask).to(dtype) @ xt).t())
# bfloat16: float32 sums, one rounding per result; within 2^-8 of the row's largest result (a bf16 ulp there)
bf = torch.bfloat16
ops = torch.ops.hf_sparse
for name, mask, params in cases:
    fmt = to_format(name, w.to(bf), mask, **params)
    w64 = (w.to(bf) * mask).double()
    for n in (1, 5, 16, 17, 37, 128):
        xt = torch.randn(64, n).to(bf)
        want = (w64 @ xt.double()).t()
        assert explain(fmt, xt)["cpu"] == []
        outs = [spmm(fmt, xt, transpose_out=True)]
        if name == "csr":
            outs.append(ops.linear_csr(fmt.crow_indices, fmt.col_indices, fmt.values, 48, 64, xt.t().contiguous()))
        for got in outs:
            assert got.dtype == bf
            scale = want.abs().amax(0, keepdim=True).clamp_min(1e-30)
            err = float(((got.double() - want).abs() / scale).max())
            assert err <= 2.0**-8, (name, n, err)
    bad = fmt.col_indices.clone() if name == "csr" else None
    if bad is not None:
        bad[-1] = 64
        try:
            ops.spmm_csr(fmt.crow_indices, bad, fmt.values, 48, 64, torch.randn(64, 3).to(bf))
        except ValueError as e:
            assert "out of range" in str(e)
        else:
            raise AssertionError("a bad column index was accepted")
print("lower path ok")
"""


def _run(cache, env_overrides: dict, isa: str) -> None:
    if not load_kernels() and "no C++ compiler" in kernel_status()["reason"]:
        pytest.skip(kernel_status()["reason"])
    env = {**os.environ, **env_overrides, "HF_SPARSE_CACHE": str(cache)}
    env.pop("HF_SPARSE_DISABLE_KERNELS", None)
    script = f"EXPECTED_ISA = {isa!r}\n" + SCRIPT
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lower path ok" in result.stdout


def test_portable_kernels_match_dense(lower_build_cache):
    _run(lower_build_cache, {"HF_SPARSE_PORTABLE": "1"}, "portable")


def test_avx2_kernels_match_dense(lower_build_cache):
    if isa_path() == "portable":
        pytest.skip("this CPU has no AVX2/FMA")
    _run(lower_build_cache, {"HF_SPARSE_ISA": "avx2"}, "avx2")
