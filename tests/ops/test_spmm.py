import random

import pytest
import torch

from hf_sparse.errors import FormatError
from hf_sparse.formats import CSR
from hf_sparse.ops import spmm_csr, spmm_csr_reference


def _csr(rows, cols, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    w[torch.rand(rows, cols, generator=g) < sparsity] = 0
    return w, CSR.from_dense(w)


def test_spmm_csr_matches_reference_and_dense(ops):
    rng = random.Random(0)
    for i in range(60):
        rows, cols, n = rng.randint(1, 80), rng.randint(1, 80), rng.choice([1, 3, 8, 16, 33])
        w, f = _csr(rows, cols, rng.choice([0.0, 0.5, 0.9, 1.0]), i)
        xt = torch.randn(cols, n)
        out = spmm_csr(f, xt)
        torch.testing.assert_close(out, spmm_csr_reference(f, xt), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, w @ xt, rtol=1e-5, atol=1e-5)


def test_spmm_csr_int32_columns(ops):
    w, f = _csr(3, 40_000, 0.999, 1)
    assert f.col_indices.dtype == torch.int32
    xt = torch.randn(40_000, 4)
    torch.testing.assert_close(spmm_csr(f, xt), w @ xt, rtol=1e-4, atol=1e-4)


def test_opcheck(ops):
    _, f = _csr(24, 40, 0.7, 2)
    xt = torch.randn(40, 5)
    torch.library.opcheck(
        ops.spmm_csr.default,
        (f.crow_indices, f.col_indices, f.values, 24, 40, xt),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_kernel_checks_its_inputs_at_the_boundary(ops):
    _, f = _csr(4, 10, 0.5, 3)
    xt = torch.randn(10, 2)
    bad_col = f.col_indices.clone()
    if bad_col.numel():
        bad_col[-1] = 10
        with pytest.raises(ValueError, match="out of range"):
            ops.spmm_csr(f.crow_indices, bad_col, f.values, 4, 10, xt)
    bad_crow = f.crow_indices.clone()
    bad_crow[-1] += 1
    with pytest.raises(ValueError, match="crow must start at 0"):
        ops.spmm_csr(bad_crow, f.col_indices, f.values, 4, 10, xt)
    with pytest.raises(ValueError, match="xt must be"):
        ops.spmm_csr(f.crow_indices, f.col_indices, f.values, 4, 10, torch.randn(9, 2))


def test_wrapper_errors_and_reference_for_other_dtypes():
    w, f = _csr(5, 6, 0.5, 4)
    with pytest.raises(FormatError, match=r"xt must have shape \(6, N\)"):
        spmm_csr(f, torch.randn(5, 2))
    xt = torch.randn(6, 3, dtype=torch.float64)
    f64 = CSR.from_dense(w.double())
    torch.testing.assert_close(spmm_csr(f64, xt), w.double() @ xt)
