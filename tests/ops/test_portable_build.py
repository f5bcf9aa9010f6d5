"""The kernels built without AVX2/FMA (the path CPUs without them get) compute the same results."""

import os
import subprocess
import sys

import pytest

from hf_sparse.ops import kernel_status, load_kernels

SCRIPT = r"""
import torch
from hf_sparse.formats import to_format
from hf_sparse.ops import explain, kernel_status, load_kernels, spmm
from hf_sparse.ops._loader import cpu_flags

assert load_kernels(), kernel_status()
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
print("portable ok")
"""


def test_portable_kernels_match_dense(tmp_path):
    if not load_kernels() and "no C++ compiler" in kernel_status()["reason"]:
        pytest.skip(kernel_status()["reason"])
    env = {**os.environ, "HF_SPARSE_PORTABLE": "1", "HF_SPARSE_CACHE": str(tmp_path)}
    env.pop("HF_SPARSE_DISABLE_KERNELS", None)
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "portable ok" in result.stdout
