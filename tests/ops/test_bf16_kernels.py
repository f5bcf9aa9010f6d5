"""bfloat16 values with a bfloat16 dense operand on the CPU kernels (spmm_csr, linear_csr, spmm_bsr, spmm_nm):
float32 sums, each result rounded to bfloat16 once. Compared with the float64 product of the same bfloat16 inputs,
rounded to bfloat16: the kernels must agree to a bfloat16 ulp of the row's largest result, and in nearly every bit."""

import importlib

import pytest
import torch

import hf_sparse
from hf_sparse.formats import CSR, to_format
from hf_sparse.ops import explain, sparse_linear, spmm
from hf_sparse.testing import tiny_bert_config

spmm_module = importlib.import_module("hf_sparse.ops.spmm")  # the module (the package exports its spmm function)
BF16 = torch.bfloat16
NS = [1, 5, 16, 17, 37, 128]


def _assert_bf16_close(got: torch.Tensor, want64: torch.Tensor) -> None:
    """got (bf16) against the float64 result of the same inputs: within 2^-8 of each row's largest magnitude (one
    bf16 ulp at the top of the row: half an ulp of rounding plus float32 sums), and equal to want64 rounded to bf16
    in at least 99% of the elements (float32 and float64 sums can round to neighbours near a rounding boundary)."""
    assert got.dtype == BF16 and got.shape == want64.shape
    if got.numel() == 0:
        return
    scale = want64.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    err = ((got.double() - want64).abs() / scale).max().item()
    assert err <= 2.0**-8, err
    same = (got.view(torch.int16) == want64.to(BF16).view(torch.int16)).double().mean().item()
    assert same >= 0.99, same


def _weight(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g).to(BF16), torch.rand(rows, cols, generator=g)


def _nm_mask(rows, cols, n, m, seed):
    g = torch.Generator().manual_seed(seed)
    top = torch.rand(rows, cols // m, m, generator=g).argsort(-1)[..., :n]
    return torch.zeros(rows, cols // m, m, dtype=torch.bool).scatter_(-1, top, True).reshape(rows, cols)


@pytest.mark.parametrize("index_dtype", [torch.int16, torch.int32])
@pytest.mark.parametrize("n", NS)
def test_csr_and_linear_csr_match_the_rounded_float64_product(ops, n, index_dtype):
    rows, cols = 70, 96
    w, r = _weight(rows, cols, n)
    f = to_format("csr", w, r < 0.3)
    col = f.col_indices.to(index_dtype)
    w64 = f.to_dense().double()
    xt = torch.randn(cols, n).to(BF16)
    want = w64 @ xt.double()
    for transpose_out in (False, True):
        y = ops.spmm_csr(f.crow_indices, col, f.values, rows, cols, xt, transpose_out)
        _assert_bf16_close(y.t() if transpose_out else y, want)
    y = ops.linear_csr(f.crow_indices, col, f.values, rows, cols, xt.t().contiguous())
    _assert_bf16_close(y.t(), want)
    for n_tokens in (n, 70):  # a second size: more than one packed block of tokens
        x = torch.randn(n_tokens, cols).to(BF16)
        _assert_bf16_close(ops.linear_csr(f.crow_indices, col, f.values, rows, cols, x), x.double() @ w64.t())


@pytest.mark.parametrize("index_dtype", [torch.int16, torch.int32])
@pytest.mark.parametrize("block", [(16, 16), (4, 8), (3, 2), (1, 1)])
def test_bsr_matches_the_rounded_float64_product(ops, block, index_dtype):
    rows, cols = 48, 64
    w, r = _weight(rows, cols, 1)
    br, bc = block
    keep = (torch.rand(rows // br, cols // bc) < 0.4).repeat_interleave(br, 0).repeat_interleave(bc, 1)
    f = to_format("bsr", w, keep, block=block)
    w64 = f.to_dense().double()
    for n in NS:
        xt = torch.randn(cols, n).to(BF16)
        for transpose_out in (False, True):
            y = ops.spmm_bsr(f.crow_indices, f.col_indices.to(index_dtype), f.values, rows, cols, xt, transpose_out)
            _assert_bf16_close(y.t() if transpose_out else y, w64 @ xt.double())


@pytest.mark.parametrize("nm", [(2, 4), (1, 8), (3, 7)])
def test_nm_matches_the_rounded_float64_product(ops, nm):
    n_, m_ = nm
    rows, cols = 40, 7 * 8
    w, _ = _weight(rows, cols, 2)
    mask = _nm_mask(rows, cols, n_, m_, 3)
    f = to_format("nm", w, mask, n=n_, m=m_)
    w64 = (w * mask).double()
    for n in NS:
        xt = torch.randn(cols, n).to(BF16)
        for transpose_out in (False, True):
            y = ops.spmm_nm(f.values, f.indices, n_, m_, cols, xt, transpose_out)
            _assert_bf16_close(y.t() if transpose_out else y, w64 @ xt.double())


def test_rounding_is_to_nearest_even_like_torch(ops):
    # W = [1, 1]: each result is a + b summed in float32 (exactly, for these), then rounded once. Ties round to even,
    # inf stays inf, NaN stays NaN, a denormal stays a denormal: as float32 -> bf16 in torch.
    a = torch.tensor([1.0, 1.0, 1.0, -1.0, 3.0, float("inf"), float("nan"), 1e-39, 1.0]).to(BF16)
    b = torch.tensor([2.0**-8, 3 * 2.0**-8, 2.0**-9, -(2.0**-8), 2.0**-7, 1.0, 1.0, 0.0, 2.0**-20]).to(BF16)
    crow = torch.tensor([0, 2], dtype=torch.int32)
    col = torch.tensor([0, 1], dtype=torch.int16)
    values = torch.ones(2).to(BF16)
    for i in range(a.numel()):
        want = (a[i].float() + b[i].float()).to(BF16)
        for n in (1, 9):
            xt = torch.stack([a[i].expand(n), b[i].expand(n)])
            got = ops.spmm_csr(crow, col, values, 1, 2, xt)[0]
            if bool(want.isnan()):
                assert bool(got.isnan().all()), (i, got)
            else:
                assert torch.equal(got, want.expand(n)), (i, got, want)


def test_bad_indices_and_dtype_mismatches_raise(ops):
    rows, cols = 8, 16
    w, r = _weight(rows, cols, 4)
    csr = to_format("csr", w, r < 0.5)
    bsr = to_format("bsr", w, r < 0.5, block=(4, 4))
    nm = to_format("nm", w, _nm_mask(rows, cols, 2, 4, 5), n=2, m=4)
    xt, x = torch.randn(cols, 3).to(BF16), torch.randn(3, cols).to(BF16)
    col_hi = csr.col_indices.clone()
    col_hi[-1] = cols
    bcol = bsr.col_indices.clone()
    bcol[0] = -1
    nidx = nm.indices.clone()
    nidx[1, 2] = 4
    cases = [
        (ops.spmm_csr, (csr.crow_indices, col_hi, csr.values, rows, cols, xt), "out of range"),
        (ops.linear_csr, (csr.crow_indices, col_hi, csr.values, rows, cols, x), "out of range"),
        (ops.spmm_bsr, (bsr.crow_indices, bcol, bsr.values, rows, cols, xt), "out of range"),
        (ops.spmm_nm, (nm.values, nidx, 2, 4, cols, xt), "out of range"),
        (ops.spmm_csr, (csr.crow_indices, csr.col_indices, csr.values, rows, cols, xt.float()), "same dtype"),
        (ops.spmm_csr, (csr.crow_indices, csr.col_indices, csr.values.float(), rows, cols, xt), "same dtype"),
        (ops.linear_csr, (csr.crow_indices, csr.col_indices, csr.values, rows, cols, x.float()), "x's dtype"),
        (ops.linear_csr, (csr.crow_indices, csr.col_indices, csr.values.float(), rows, cols, x), "x's dtype"),
        (ops.linear_csr, (csr.crow_indices, csr.col_indices, csr.values.half(), rows, cols, x.half()), "x must be"),
        (ops.spmm_bsr, (bsr.crow_indices, bsr.col_indices, bsr.values, rows, cols, xt.double()), "dtypes differ"),
        (ops.spmm_nm, (nm.values.float(), nm.indices, 2, 4, cols, xt), "dtypes differ"),
        # the backward and int8-value kernels stay float32 / float64
        (
            ops.spmm_csr_t,
            (csr.crow_indices, csr.col_indices, csr.values, rows, cols, torch.randn(rows, 3).to(BF16)),
            "float32 or float64",
        ),
        (
            ops.sddmm_csr,
            (csr.crow_indices, csr.col_indices, rows, cols, torch.randn(rows, 3).to(BF16), xt),
            "float32 or float64",
        ),
    ]
    for op, args, fragment in cases:
        with pytest.raises(ValueError, match=fragment):
            op(*args)


def test_dispatch_takes_bf16_csr_bsr_nm_hybrid_on_the_cpu_kernels(ops):
    w, r = _weight(32, 48, 6)
    mask = r < 0.3
    xt = torch.randn(48, 5).to(BF16)
    for name, params in [("csr", {}), ("bsr", {"block": (16, 16)}), ("nm", {"n": 2, "m": 4}), ("hybrid", {})]:
        m = _nm_mask(32, 48, 2, 4, 7) if name == "nm" else mask
        f = to_format(name, w, m, **params)
        assert explain(f, xt)["cpu"] == [], name
        _assert_bf16_close(spmm(f, xt, backend="cpu"), (w * m).double() @ xt.double())
    csc = to_format("csc", w, mask)
    assert any("bfloat16 runs on the CPU kernels for" in why for why in explain(csc, xt)["cpu"])
    torch.testing.assert_close(spmm(csc, xt).float(), ((w * mask).float() @ xt.float()), rtol=2e-2, atol=5e-2)
    csr = to_format("csr", w, mask)
    assert any("same dtype" in why for why in explain(csr, xt.float())["cpu"])


class _Counting:
    """torch.ops.hf_sparse with a count of the calls of each op."""

    def __init__(self, ops):
        self._ops, self.calls = ops, {}

    def __getattr__(self, name):
        op = getattr(self._ops, name)

        def call(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return op(*args)

        return call


def _no_reference(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the reference path ran")

    monkeypatch.setattr(spmm_module, "spmm_reference", refuse)
    monkeypatch.setattr(spmm_module, "spmm_csr_reference", refuse)
    counting = _Counting(torch.ops.hf_sparse)
    monkeypatch.setattr(spmm_module, "_ops", counting)
    return counting


def test_sparse_linear_runs_bf16_csr_on_the_linear_kernel(ops, monkeypatch):
    counting = _no_reference(monkeypatch)
    w, r = _weight(64, 96, 8)
    f = to_format("csr", w, r < 0.2)
    bias = torch.randn(64).to(BF16)
    for shape in [(1, 96), (3, 7, 96), (40, 96)]:
        x = torch.randn(*shape).to(BF16)
        y = sparse_linear(f, x, bias)
        assert y.dtype == BF16 and y.shape == (*shape[:-1], 64)
        want = torch.nn.functional.linear(x.double(), f.to_dense().double(), bias.double())
        # the bias is added to the bf16 product (as F.linear's result is): one more rounding
        torch.testing.assert_close(y.double(), want, rtol=2**-6, atol=2**-6 * want.abs().max().item())
    assert counting.calls.get("linear_csr") == 3


def test_bf16_gradients_match_float64(ops):
    w, r = _weight(24, 32, 9)
    mask = r < 0.4
    cases = [
        ("csr", mask, {}),
        ("bsr", (torch.rand(6, 8) < 0.5).repeat_interleave(4, 0).repeat_interleave(4, 1), {"block": (4, 4)}),
        ("nm", _nm_mask(24, 32, 2, 4, 10), {"n": 2, "m": 4}),
    ]
    for name, m, params in cases:
        f = to_format(name, w, m, **params)
        values = f.values.clone().requires_grad_()
        f.values = values
        xt = torch.randn(32, 6).to(BF16).requires_grad_()
        y = spmm(f, xt, transpose_out=True)
        g = torch.randn_like(y)
        y.backward(g)
        w64 = (w * m).double().requires_grad_()
        x64 = xt.detach().double().requires_grad_()
        (w64 @ x64).t().backward(g.double())
        assert values.grad.dtype == BF16 and xt.grad.dtype == BF16
        torch.testing.assert_close(xt.grad.double(), x64.grad, rtol=2**-7, atol=2**-7 * x64.grad.abs().max().item())
        d_values = w64.grad[m] if name != "bsr" else None
        if name == "csr":
            torch.testing.assert_close(values.grad.double(), d_values, rtol=2**-7, atol=2**-7 * d_values.abs().max())
    # the Linear-layout op
    f = to_format("csr", w, mask)
    values = f.values.clone().requires_grad_()
    f.values = values
    x = torch.randn(5, 32).to(BF16).requires_grad_()
    sparse_linear(f, x).sum().backward()
    w64 = (w * mask).double()
    want_x = torch.ones(5, 24, dtype=torch.float64) @ w64
    torch.testing.assert_close(x.grad.double(), want_x, rtol=2**-7, atol=2**-7 * want_x.abs().max().item())
    want_v = x.detach().double().sum(0).expand(24, 32)[mask]
    torch.testing.assert_close(values.grad.double(), want_v, rtol=2**-7, atol=2**-7 * want_v.abs().max().item())


@pytest.mark.parametrize("op_name", ["spmm_csr", "spmm_bsr", "spmm_nm", "linear_csr"])
def test_opcheck_bf16(ops, op_name):
    w, r = _weight(16, 24, 11)
    xt = torch.randn(24, 5).to(BF16)
    if op_name == "spmm_bsr":
        f = to_format("bsr", w, r < 0.5, block=(4, 4))
        args = (f.crow_indices, f.col_indices, f.values, 16, 24, xt, True)
    elif op_name == "spmm_nm":
        f = to_format("nm", w, _nm_mask(16, 24, 2, 4, 12), n=2, m=4)
        args = (f.values, f.indices, 2, 4, 24, xt, False)
    else:
        f = to_format("csr", w, r < 0.5)
        x = xt.t().contiguous() if op_name == "linear_csr" else xt
        args = (f.crow_indices, f.col_indices, f.values, 16, 24, x)
    torch.library.opcheck(
        getattr(ops, op_name).default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


def test_bf16_bert_runs_on_the_kernels_and_matches_the_pruned_dense_model(ops, monkeypatch):
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(hidden_size=64, intermediate_size=128, num_attention_heads=4)).eval()
    model = model.to(BF16)
    hf_sparse.apply_(model, hf_sparse.PruningConfig(sparsity=0.9))
    ids = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        expected = model(ids).last_hidden_state
    decisions = hf_sparse.sparsify_(model, format="csr", progress=False)
    assert sum(d.converted for d in decisions.values()) >= 12
    layers = [m for m in model.modules() if isinstance(m, hf_sparse.SparseLinear)]
    assert layers and all(isinstance(m.weight_format(), CSR) and m.weight_format().dtype == BF16 for m in layers)
    counting = _no_reference(monkeypatch)
    with torch.no_grad():
        got = model(ids).last_hidden_state
    assert got.dtype == BF16
    assert counting.calls.get("linear_csr", 0) >= len(layers)
    # Both models round each layer's output to bf16 once (ours: float32 sums; the dense one: oneDNN's); the layer
    # norms keep the hidden states O(1), so a few bf16 ulps after a dozen layers is the expected agreement.
    diff = (got.float() - expected.float()).abs()
    assert diff.max().item() < 0.1 and diff.mean().item() < 0.01, (diff.max().item(), diff.mean().item())
