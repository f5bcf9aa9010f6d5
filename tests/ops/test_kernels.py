"""Every hf_sparse:: op against its pure-PyTorch reference and dense maths: generated cases, opcheck, gradcheck,
and malformed inputs that must raise (never crash, never read out of bounds)."""

import random

import pytest
import torch

from hf_sparse.errors import FormatError
from hf_sparse.formats import to_format
from hf_sparse.ops import explain, sparse_linear, spmm, spmm_reference
from hf_sparse.testing import random_format_case

KERNEL_FORMATS = ["csr", "csc", "bsr", "nm", "hybrid"]
ALL_FORMATS = [*KERNEL_FORMATS, "coo", "bitmask"]


def test_every_op_matches_reference_and_dense_over_1000_generated_cases(ops):
    rng = random.Random(1234)
    backends = {"cpu": 0, "reference": 0}
    for i in range(1050):
        name = ALL_FORMATS[i % len(ALL_FORMATS)]
        weight, mask, params = random_format_case(rng, name)
        fmt = to_format(name, weight, mask, **params)
        n = rng.choice([1, 2, 7, 8, 16, 17, 33, 64, 130])
        dtype = rng.choice([torch.float32, torch.float32, torch.float64])
        xt = torch.randn(weight.shape[1], n, dtype=dtype)
        if dtype == torch.float64:
            fmt = to_format(name, weight.double(), mask, **params)
        dense = (weight * mask).to(dtype) @ xt
        out = spmm(fmt, xt)
        backends["reference" if explain(fmt, xt)["cpu"] else "cpu"] += 1
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out, spmm_reference(fmt, xt), **tol)
        torch.testing.assert_close(out, dense, **tol)
        torch.testing.assert_close(spmm(fmt, xt, transpose_out=True), dense.t(), **tol)
    assert backends["cpu"] >= 700 and backends["reference"] >= 250  # coo and bitmask run the reference


def test_sparse_linear_equals_dense_linear(ops):
    rng = random.Random(7)
    for name in KERNEL_FORMATS:
        weight, mask, params = random_format_case(rng, name)
        fmt = to_format(name, weight, mask, **params)
        x = torch.randn(3, 5, weight.shape[1])
        bias = torch.randn(weight.shape[0])
        expected = torch.nn.functional.linear(x, weight * mask, bias)
        torch.testing.assert_close(sparse_linear(fmt, x, bias), expected, rtol=1e-4, atol=1e-4)


def _op_args(name, fmt, xt, transpose_out=False):
    rows, cols = fmt.shape
    if name == "csr":
        return "spmm_csr", (fmt.crow_indices, fmt.col_indices, fmt.values, rows, cols, xt, transpose_out)
    if name == "bsr":
        return "spmm_bsr", (fmt.crow_indices, fmt.col_indices, fmt.values, rows, cols, xt, transpose_out)
    return "spmm_nm", (fmt.values, fmt.indices, fmt.n, fmt.m, cols, xt, transpose_out)


@pytest.mark.parametrize("name", ["csr", "bsr", "nm"])
@pytest.mark.parametrize("transpose_out", [False, True])
def test_opcheck_forward_ops(ops, name, transpose_out):
    params = {"bsr": {"block": (4, 4)}, "nm": {"n": 2, "m": 4}}.get(name, {})
    w = torch.randn(16, 24, dtype=torch.float64)
    mask = torch.rand(16, 24) < 0.4
    if name == "nm":
        top = torch.rand(16, 6, 4).argsort(-1)[..., :2]
        mask = torch.zeros(16, 6, 4, dtype=torch.bool).scatter_(-1, top, True).reshape(16, 24)
    fmt = to_format(name, w, mask, **params)
    xt = torch.randn(24, 5, dtype=torch.float64, requires_grad=True)
    values = fmt.values.clone().requires_grad_()
    op_name, args = _op_args(name, fmt, xt, transpose_out)
    args = tuple(values if a is fmt.values else a for a in args)
    torch.library.opcheck(getattr(ops, op_name).default, args)


def test_opcheck_backward_ops(ops):
    w = torch.randn(12, 20, dtype=torch.float64)
    fmt = to_format("csr", w, torch.rand(12, 20) < 0.3)
    yt, xt = torch.randn(12, 4, dtype=torch.float64), torch.randn(20, 4, dtype=torch.float64)
    torch.library.opcheck(ops.spmm_csr_t.default, (fmt.crow_indices, fmt.col_indices, fmt.values, 12, 20, yt))
    torch.library.opcheck(ops.sddmm_csr.default, (fmt.crow_indices, fmt.col_indices, 12, 20, yt, xt))


@pytest.mark.parametrize("name", KERNEL_FORMATS)
def test_gradcheck_through_the_kernels(ops, name):
    rng = random.Random(KERNEL_FORMATS.index(name))  # not hash(name): string hashes change from run to run
    while True:  # a case with stored values (an empty one has nothing to check)
        weight, mask, params = random_format_case(rng, name)
        fmt = to_format(name, weight.double(), mask, **params)
        if fmt.values.numel() > 0:
            break
    tensors = fmt.tensors()
    trainable = [k for k, t in tensors.items() if t.is_floating_point()]
    xt = torch.randn(weight.shape[1], 3, dtype=torch.float64, requires_grad=True)

    def fn(x, *values):
        rebuilt = dict(tensors)
        rebuilt.update(zip(trainable, values))
        from hf_sparse.formats import from_tensors

        return spmm(from_tensors(rebuilt, fmt.params()), x, transpose_out=True)

    inputs = (xt, *(tensors[k].clone().contiguous().requires_grad_() for k in trainable))
    assert explain(fmt, xt.detach())["cpu"] == []
    assert torch.autograd.gradcheck(fn, inputs)


def test_value_gradients_only_at_stored_positions(ops):
    w = torch.randn(32, 48)
    mask = torch.rand(32, 48) < 0.2
    fmt = to_format("csr", w, mask)
    values = fmt.values.clone().requires_grad_()
    fmt.values = values
    x = torch.randn(10, 48, requires_grad=True)
    sparse_linear(fmt, x).pow(2).sum().backward()
    dense_w = (w * mask).requires_grad_()
    torch.nn.functional.linear(x.detach().requires_grad_(), dense_w).pow(2).sum().backward()
    torch.testing.assert_close(values.grad, dense_w.grad[mask], rtol=1e-4, atol=1e-4)
    assert values.grad.numel() == int(mask.sum())


def _bad_inputs():
    w = torch.randn(8, 16)
    csr = to_format("csr", w, torch.rand(8, 16) < 0.5)
    bsr = to_format("bsr", w, torch.rand(8, 16) < 0.5, block=(4, 4))
    top = torch.rand(8, 4, 4).argsort(-1)[..., :2]
    nm = to_format("nm", w, torch.zeros(8, 4, 4, dtype=torch.bool).scatter_(-1, top, True).reshape(8, 16))
    xt, yt = torch.randn(16, 3), torch.randn(8, 3)
    col_hi = csr.col_indices.clone()
    col_hi[-1] = 16
    col_neg = csr.col_indices.clone()
    col_neg[0] = -1
    crow_bad = csr.crow_indices.clone()
    crow_bad[3] = crow_bad[4] + 1
    bcol = bsr.col_indices.clone()
    bcol[0] = 4
    nidx = nm.indices.clone()
    nidx[2, 3] = 4
    return [
        ("spmm_csr", (csr.crow_indices, col_hi, csr.values, 8, 16, xt), "out of range"),
        ("spmm_csr", (csr.crow_indices, col_neg, csr.values, 8, 16, xt), "out of range"),
        ("spmm_csr", (crow_bad, csr.col_indices, csr.values, 8, 16, xt), "not monotone"),
        ("spmm_csr", (csr.crow_indices, csr.col_indices, csr.values, 8, 16, torch.randn(15, 3)), "must be"),
        ("spmm_csr", (csr.crow_indices, csr.col_indices, csr.values[:-1], 8, 16, xt), "one entry per column"),
        ("spmm_csr", (csr.crow_indices, csr.col_indices.long(), csr.values, 8, 16, xt), "int16 or int32"),
        ("spmm_csr", (csr.crow_indices, csr.col_indices, csr.values.double(), 8, 16, xt), "same dtype"),
        ("spmm_csr_t", (csr.crow_indices, col_hi, csr.values, 8, 16, yt), "out of range"),
        ("sddmm_csr", (csr.crow_indices, col_hi, 8, 16, yt, xt), "out of range"),
        ("sddmm_csr", (csr.crow_indices, csr.col_indices, 8, 16, yt, torch.randn(16, 4)), "same N"),
        ("spmm_bsr", (bsr.crow_indices, bcol, bsr.values, 8, 16, xt), "out of range"),
        ("spmm_bsr", (bsr.crow_indices, bsr.col_indices, bsr.values, 8, 18, torch.randn(18, 3)), "multiples"),
        ("spmm_nm", (nm.values, nidx, 2, 4, 16, xt), "out of range"),
        ("spmm_nm", (nm.values, nm.indices, 2, 4, 12, torch.randn(12, 3)), "must both be"),
        ("spmm_nm", (nm.values, nm.indices.to(torch.int16), 2, 4, 16, xt), "int8"),
    ]


@pytest.mark.parametrize("op_name, args, fragment", _bad_inputs())
def test_kernels_reject_malformed_inputs_with_value_errors(ops, op_name, args, fragment):
    with pytest.raises(ValueError, match=fragment):
        getattr(ops, op_name)(*args)


def test_dispatch_explains_itself_and_named_backends_raise_with_reasons(ops):
    w = torch.randn(6, 8)
    coo = to_format("coo", w)
    xt = torch.randn(8, 2)
    assert "format coo is not supported" in explain(coo, xt)["cpu"][0]
    assert explain(coo, xt)["reference"] == []
    with pytest.raises(FormatError, match="backend 'cpu' cannot run this input: format coo"):
        spmm(coo, xt, backend="cpu")
    with pytest.raises(FormatError, match="unknown backend"):
        spmm(coo, xt, backend="gpu")
    csr = to_format("csr", w)
    half = torch.randn(8, 2).half()
    assert any("dtypes" in r for r in explain(csr, half)["cpu"])
    torch.testing.assert_close(spmm(csr, half), (w.half() @ half), rtol=1e-2, atol=1e-2)  # reference path
    with pytest.raises(FormatError, match=r"xt must have shape \(8, N\)"):
        spmm(csr, torch.randn(7, 2))
