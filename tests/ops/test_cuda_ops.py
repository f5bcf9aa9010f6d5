"""Every CUDA impl of kernels/csrc/cuda/binding.cpp against the CPU op (float32, the oracle) and the reference:
float32 / float16 / bfloat16, int16 / int32 indices, N = 1 / 16 / 64, both output layouts, BSR blocks 16 / 32,
malformed structures that must raise (never an illegal memory access), ``torch.library.opcheck``, and the Python
dispatch (the "cuda" backend). All skip with the reason "no CUDA device" where there is none.
"""

import pytest
import torch

from hf_sparse.formats import from_tensors, to_format
from hf_sparse.ops import _loader, explain, sparse_linear, spmm

pytestmark = pytest.mark.cuda

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=3e-2, atol=3e-2),
}
INDEX = {"int16": torch.int16, "int32": torch.int32}
NS = [1, 16, 64]
ROWS, COLS = 96, 80  # neither a multiple of 64: tails of every kernel


@pytest.fixture(scope="module")
def ops():
    """``torch.ops.hf_sparse`` with the CPU and CUDA impls registered; a build failure on a GPU machine fails."""
    assert _loader.load(), f"the CPU ops failed to build: {_loader.status()['reason']}"
    assert _loader.load_cuda(), f"the CUDA ops failed to build: {_loader.cuda_status()}"
    return torch.ops.hf_sparse


def _to_cuda(fmt):
    return from_tensors({k: v.cuda() for k, v in fmt.tensors().items()}, fmt.params())


def _case(rows, cols, density=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    mask = torch.rand(rows, cols, generator=g) < density
    mask[3] = False  # an empty row
    return w, mask


def _rounded(values, dtype):
    """The values as the CUDA op sees them (rounded to ``dtype``), back in float32 for the CPU oracle."""
    return values.to(dtype).float() if values.is_floating_point() else values


# -- CSR ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("index", INDEX)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("transpose_out", [False, True])
def test_spmm_csr_and_qcsr_match_cpu(ops, dtype, index, n, transpose_out):
    w, mask = _case(ROWS, COLS, seed=n)
    xt = torch.randn(COLS, n).to(dtype)
    for name in ("csr", "qcsr"):
        fmt = to_format(name, w, mask)
        crow, col, values = fmt.crow_indices, fmt.col_indices.to(INDEX[index]), fmt.values
        if name == "csr":
            expected = ops.spmm_csr(crow, col, _rounded(values, dtype), ROWS, COLS, xt.float(), transpose_out)
            got = ops.spmm_csr(crow.cuda(), col.cuda(), values.to(dtype).cuda(), ROWS, COLS, xt.cuda(), transpose_out)
        else:
            args = (crow, col, values, fmt.scales)
            expected = ops.spmm_qcsr(*args, ROWS, COLS, xt.float(), transpose_out)
            got = ops.spmm_qcsr(*(a.cuda() for a in args), ROWS, COLS, xt.cuda(), transpose_out)
        assert got.dtype == dtype and got.is_contiguous()
        torch.testing.assert_close(got.float().cpu(), expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("index", INDEX)
@pytest.mark.parametrize("n", NS)
def test_linear_csr_and_qcsr_match_cpu(ops, dtype, index, n):
    w, mask = _case(ROWS, COLS, seed=10 + n)
    x = torch.randn(n, COLS).to(dtype)
    for name in ("csr", "qcsr"):
        fmt = to_format(name, w, mask)
        crow, col = fmt.crow_indices, fmt.col_indices.to(INDEX[index])
        if name == "csr":
            expected = ops.linear_csr(crow, col, _rounded(fmt.values, dtype), ROWS, COLS, x.float())
            got = ops.linear_csr(crow.cuda(), col.cuda(), fmt.values.to(dtype).cuda(), ROWS, COLS, x.cuda())
        else:
            args = (crow, col, fmt.values, fmt.scales)
            expected = ops.linear_qcsr(*args, ROWS, COLS, x.float())
            got = ops.linear_qcsr(*(a.cuda() for a in args), ROWS, COLS, x.cuda())
        assert got.shape == (n, ROWS) and got.dtype == dtype
        torch.testing.assert_close(got.float().cpu(), expected, **TOL[dtype])


# -- BSR ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("index", INDEX)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("block", [(16, 16), (32, 32), (16, 32), (32, 16)], ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("transpose_out", [False, True])
def test_spmm_bsr_and_qbsr_match_cpu(ops, dtype, index, n, block, transpose_out):
    rows, cols = 128, 96
    w, mask = _case(rows, cols, density=0.05, seed=n + block[0])
    xt = torch.randn(cols, n).to(dtype)
    for name in ("bsr", "qbsr"):
        fmt = to_format(name, w, mask, block=block)
        crow, col = fmt.crow_indices, fmt.col_indices.to(INDEX[index])
        if name == "bsr":
            expected = ops.spmm_bsr(crow, col, _rounded(fmt.values, dtype), rows, cols, xt.float(), transpose_out)
            got = ops.spmm_bsr(
                crow.cuda(), col.cuda(), fmt.values.to(dtype).cuda(), rows, cols, xt.cuda(), transpose_out
            )
        else:
            args = (crow, col, fmt.values, fmt.scales)
            expected = ops.spmm_qbsr(*args, rows, cols, xt.float(), transpose_out)
            got = ops.spmm_qbsr(*(a.cuda() for a in args), rows, cols, xt.cuda(), transpose_out)
        torch.testing.assert_close(got.float().cpu(), expected, **TOL[dtype])


def test_bsr_block_size_outside_16_32_is_a_value_error(ops):
    fmt = to_format("bsr", *_case(64, 64, density=0.2), block=(8, 8))
    args = (fmt.crow_indices.cuda(), fmt.col_indices.cuda(), fmt.values.cuda(), 64, 64)
    with pytest.raises(ValueError, match="block sizes must be 16 or 32"):
        ops.spmm_bsr(*args, torch.randn(64, 4, device="cuda"))
    assert explain(_to_cuda(fmt), torch.randn(64, 4, device="cuda"))["cuda"]  # the dispatcher says why


# -- malformed structures: an error, never an illegal memory access ------------------------------------------------


def _corruptions(crow, col, cols):
    bad_col = col.clone()
    bad_col[len(col) // 2] = cols + 5
    neg_col = col.clone()
    neg_col[0] = -1
    bad_end = crow.clone()
    bad_end[-1] += 7
    not_monotone = crow.clone()
    not_monotone[2], not_monotone[3] = crow[3] + 1, crow[2]
    return {
        "col out of range": (crow, bad_col),
        "negative col": (crow, neg_col),
        "crow end": (bad_end, col),
        "crow not monotone": (not_monotone, col),
    }


@pytest.mark.parametrize("op", ["spmm_csr", "linear_csr", "spmm_qcsr", "linear_qcsr", "spmm_bsr", "spmm_qbsr"])
def test_corrupt_index_raises_and_unchecked_path_stays_in_bounds(ops, op, monkeypatch):
    blocked = "bsr" in op
    rows, cols = (128, 96) if blocked else (ROWS, COLS)
    name = op.split("_")[1]
    fmt = to_format(name, *_case(rows, cols, density=0.2), **({"block": (16, 16)} if blocked else {}))
    extra = [fmt.scales.cuda()] if name.startswith("q") else []
    dense = torch.randn(4, cols, device="cuda") if op.startswith("linear") else torch.randn(cols, 4, device="cuda")
    for _what, (crow, col) in _corruptions(fmt.crow_indices, fmt.col_indices, cols // 16 if blocked else cols).items():
        args = (crow.cuda(), col.cuda(), fmt.values.cuda(), *extra, rows, cols, dense)
        with pytest.raises(ValueError, match="malformed"):
            getattr(ops, op)(*args)
        monkeypatch.setenv("HF_SPARSE_CUDA_CHECK_INDICES", "0")
        getattr(ops, op)(*args)  # wrong numbers allowed, an illegal access is not (it would poison the context)
        torch.cuda.synchronize()
        monkeypatch.delenv("HF_SPARSE_CUDA_CHECK_INDICES")
    # still healthy afterwards
    assert torch.isfinite(
        getattr(ops, op)(fmt.crow_indices.cuda(), fmt.col_indices.cuda(), fmt.values.cuda(), *extra, rows, cols, dense)
    ).all()


def test_wrong_devices_and_dtypes_are_typed_errors(ops):
    fmt = to_format("csr", *_case(ROWS, COLS))
    crow, col, values = fmt.crow_indices.cuda(), fmt.col_indices.cuda(), fmt.values.cuda()
    xt = torch.randn(COLS, 8, device="cuda")
    with pytest.raises(TypeError, match="same dtype"):
        ops.spmm_csr(crow, col, values, ROWS, COLS, xt.half())
    with pytest.raises(ValueError, match="CUDA tensor"):
        ops.spmm_csr(crow.cpu(), col, values, ROWS, COLS, xt)
    with pytest.raises(ValueError, match="rows"):
        ops.spmm_csr(crow, col, values, ROWS, COLS, xt[:-1])
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        ops.spmm_csr(crow, col, values.double(), ROWS, COLS, xt.double())
    # non-contiguous dense operands are made contiguous, not misread
    wide = torch.randn(8, COLS, device="cuda").t()
    torch.testing.assert_close(
        ops.spmm_csr(crow, col, values, ROWS, COLS, wide),
        ops.spmm_csr(crow, col, values, ROWS, COLS, wide.contiguous()),
    )


# -- opcheck -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck_spmm_ops(ops, dtype):
    w, mask = _case(64, 48, density=0.2)
    xt = torch.randn(48, 16, device="cuda", dtype=dtype)
    x = torch.randn(16, 48, device="cuda", dtype=dtype)
    csr, qcsr = _to_cuda(to_format("csr", w, mask)), _to_cuda(to_format("qcsr", w, mask))
    bsr, qbsr = (
        _to_cuda(to_format("bsr", w, mask, block=(16, 16))),
        _to_cuda(to_format("qbsr", w, mask, block=(16, 16))),
    )
    cases = [
        (ops.spmm_csr, (csr.crow_indices, csr.col_indices, csr.values.to(dtype), 64, 48, xt, True)),
        (ops.linear_csr, (csr.crow_indices, csr.col_indices, csr.values.to(dtype), 64, 48, x)),
        (ops.spmm_qcsr, (qcsr.crow_indices, qcsr.col_indices, qcsr.values, qcsr.scales, 64, 48, xt, False)),
        (ops.linear_qcsr, (qcsr.crow_indices, qcsr.col_indices, qcsr.values, qcsr.scales, 64, 48, x)),
        (ops.spmm_bsr, (bsr.crow_indices, bsr.col_indices, bsr.values.to(dtype), 64, 48, xt, False)),
        (ops.spmm_qbsr, (qbsr.crow_indices, qbsr.col_indices, qbsr.values, qbsr.scales, 64, 48, xt, True)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
    # with gradients: the autograd formulas run spmm_csr_t and sddmm_csr on the GPU
    values = csr.values.to(dtype).requires_grad_()
    torch.library.opcheck(ops.spmm_csr, (csr.crow_indices, csr.col_indices, values, 64, 48, xt.requires_grad_(), True))
    torch.library.opcheck(ops.linear_csr, (csr.crow_indices, csr.col_indices, values, 64, 48, x.requires_grad_()))


# -- attention ---------------------------------------------------------------------------------------------------


def _attention_inputs(S, D, dtype, *, heads=4, kv_heads=2, window=40, causal=False, block_q=32, padding=True):
    from hf_sparse.attention import SlidingWindow, build_layout

    g = torch.Generator().manual_seed(S + D)
    q = torch.randn(2, heads, S, D, generator=g).to(dtype)
    k = torch.randn(2, kv_heads, S, D, generator=g).to(dtype)
    v = torch.randn(2, kv_heads, S, D, generator=g).to(dtype)
    layout = build_layout(SlidingWindow(window), S, S, causal=causal, block_q=block_q)
    bias = torch.zeros(2, S)
    if padding:
        bias[1, S - 7 :] = float("-inf")
    return q, k, v, (layout.kv_ptr, layout.kv_blocks, layout.mask_index, layout.bits), bias


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_sparse_attention_forward_and_backward_match_cpu(ops, dtype, D, causal):
    S, block_q, scale = 200, 32, D**-0.5
    q, k, v, layout, bias = _attention_inputs(S, D, dtype, causal=causal, block_q=block_q)
    f32 = [t.float() for t in (q, k, v)]
    out_ref, lse_ref = ops.sparse_attention(*f32, *layout, bias, scale, block_q)
    cu = [t.cuda() for t in (q, k, v)]
    out, lse = ops.sparse_attention(*cu, *(t.cuda() for t in layout), bias.cuda(), scale, block_q)
    torch.testing.assert_close(out.float().cpu(), out_ref, **TOL[dtype])
    torch.testing.assert_close(lse.cpu(), lse_ref, **TOL[dtype])
    g = torch.randn_like(out_ref).to(dtype)
    grads_ref = ops.sparse_attention_backward(g.float(), *f32, out_ref, lse_ref, *layout, bias, scale, block_q)
    grads = ops.sparse_attention_backward(
        g.cuda(), *cu, out, lse, *(t.cuda() for t in layout), bias.cuda(), scale, block_q
    )
    tol = {**TOL[dtype], "atol": 5 * TOL[dtype]["atol"]}  # sums over many keys in a low-precision dtype
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got.float().cpu(), want, **tol)


def test_sparse_attention_layout_on_host_is_accepted(ops):
    q, k, v, layout, bias = _attention_inputs(128, 64, torch.float32)
    a = ops.sparse_attention(q.cuda(), k.cuda(), v.cuda(), *layout, bias, 0.125, 32)
    b = ops.sparse_attention(q.cuda(), k.cuda(), v.cuda(), *(t.cuda() for t in layout), bias.cuda(), 0.125, 32)
    torch.testing.assert_close(a, b)


def test_sparse_attention_corrupt_layout_raises(ops):
    q, k, v, (kv_ptr, kv_blocks, mask_index, bits), bias = _attention_inputs(128, 64, torch.float16)
    cu = [t.cuda() for t in (q, k, v)]
    bad_block = kv_blocks.clone()
    bad_block[0] = 1000
    bad_mask = mask_index.clone()
    bad_mask[0] = bits.shape[0] + 3
    bad_ptr = kv_ptr.clone()
    bad_ptr[-1] += 1
    for layout in (
        (kv_ptr, bad_block, mask_index, bits),
        (kv_ptr, kv_blocks, bad_mask, bits),
        (bad_ptr, kv_blocks, mask_index, bits),
    ):
        with pytest.raises(ValueError, match="invalid block layout"):
            ops.sparse_attention(*cu, *(t.cuda() for t in layout), bias.cuda(), 0.125, 32)
    with pytest.raises(ValueError, match="head_dim"):
        ops.sparse_attention(
            *(t[..., :48].contiguous() for t in cu), kv_ptr, kv_blocks, mask_index, bits, bias, 0.125, 32
        )
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck_attention(ops, dtype):
    q, k, v, layout, bias = _attention_inputs(96, 64, dtype, block_q=16)
    cu = [t.cuda().requires_grad_() for t in (q, k, v)]
    args = (*cu, *(t.cuda() for t in layout), bias.cuda(), 0.125, 16)
    torch.library.opcheck(ops.sparse_attention, args)
    out, lse = ops.sparse_attention(*(t.detach() for t in cu), *args[3:])
    g = torch.randn_like(out)
    torch.library.opcheck(ops.sparse_attention_backward, (g, *(t.detach() for t in cu), out, lse, *args[3:]))


# -- Python dispatch: the "cuda" backend ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_spmm_and_sparse_linear_dispatch_to_cuda(ops, dtype):
    w, mask = _case(ROWS, COLS, seed=5)
    for name in ("csr", "qcsr", "bsr", "qbsr", "nm", "qnm"):
        params = {"block": (16, 16)} if "bsr" in name else ({"n": 2, "m": 4} if "nm" in name else {})
        cpu_fmt = to_format(name, w if name.startswith("q") else w.to(dtype), mask, **params)
        fmt = _to_cuda(cpu_fmt)
        dense_w = cpu_fmt.to_dense().float().cuda()
        xt = torch.randn(COLS, 16, device="cuda", dtype=dtype)
        assert explain(fmt, xt)["cuda"] == [], explain(fmt, xt)
        expected = dense_w @ xt.float()
        torch.testing.assert_close(spmm(fmt, xt).float(), expected, **TOL[dtype])
        torch.testing.assert_close(spmm(fmt, xt, backend="cuda").float(), expected, **TOL[dtype])
        torch.testing.assert_close(spmm(fmt, xt, transpose_out=True).float(), expected.t(), **TOL[dtype])
        x = torch.randn(3, 5, COLS, device="cuda", dtype=dtype)
        want = x.reshape(15, COLS).float() @ dense_w.t()
        torch.testing.assert_close(sparse_linear(fmt, x).reshape(15, ROWS).float(), want, **TOL[dtype])


@pytest.mark.parametrize("name", ["csr", "qcsr", "bsr", "qbsr", "nm", "qnm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_backend_trains_with_the_reference_gradients(ops, name, dtype):
    """Gradients through the CUDA kernels (spmm_csr_t, sddmm_csr and the formulas' torch ops on the GPU) equal the
    reference's."""
    params = {"block": (16, 16)} if "bsr" in name else ({"n": 2, "m": 4} if "nm" in name else {})
    w, mask = _case(ROWS, COLS, density=0.3, seed=7)
    fmt = _to_cuda(to_format(name, w if name.startswith("q") else w.to(dtype), mask, **params))
    xt = torch.randn(COLS, 8, device="cuda", dtype=dtype)
    assert explain(fmt, xt.requires_grad_())["cuda"] == [], explain(fmt, xt)
    grads = {}
    for backend in ("cuda", "reference"):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in fmt.tensors().items() if v.is_floating_point()}
        weight = from_tensors({**fmt.tensors(), **leaves}, fmt.params())
        x = xt.detach().clone().requires_grad_()
        spmm(weight, x, backend=backend).pow(2).sum().backward()
        grads[backend] = [x.grad, *(leaves[k].grad for k in sorted(leaves))]
    for got, want in zip(grads["cuda"], grads["reference"]):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_sparse_attention_wrapper_uses_cuda_kernel(ops, dtype):
    from hf_sparse.attention import SlidingWindow, sparse_attention, sparse_attention_reference
    from hf_sparse.attention.functional import explain as explain_attention

    q, k, v = (torch.randn(1, 4, 300, 64, device="cuda", dtype=dtype) for _ in range(3))
    pad = torch.ones(1, 300, dtype=torch.bool, device="cuda")
    pad[0, -9:] = False
    assert explain_attention(q, k, v)["cuda"] == []
    got = sparse_attention(q, k, v, SlidingWindow(32), key_padding_mask=pad, backend="cuda")
    want = sparse_attention_reference(q.float(), k.float(), v.float(), SlidingWindow(32), key_padding_mask=pad)
    torch.testing.assert_close(got.float(), want, **TOL[dtype])
    qg = q.detach().requires_grad_()
    sparse_attention(qg, k, v, SlidingWindow(32), causal=True).float().sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad.float()).all()


# -- the training ops and N:M ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("index", INDEX)
@pytest.mark.parametrize("n", NS)
def test_spmm_csr_t_and_sddmm_match_cpu(ops, dtype, index, n):
    w, mask = _case(ROWS, COLS, seed=20 + n)
    fmt = to_format("csr", w, mask)
    crow, col, values = fmt.crow_indices, fmt.col_indices.to(INDEX[index]), fmt.values
    yt, xt = torch.randn(ROWS, n).to(dtype), torch.randn(COLS, n).to(dtype)
    expected = ops.spmm_csr_t(crow, col, _rounded(values, dtype), ROWS, COLS, yt.float())
    got = ops.spmm_csr_t(crow.cuda(), col.cuda(), values.to(dtype).cuda(), ROWS, COLS, yt.cuda())
    assert got.shape == (COLS, n) and got.dtype == dtype
    torch.testing.assert_close(got.float().cpu(), expected, **TOL[dtype])
    expected = ops.sddmm_csr(crow, col, ROWS, COLS, yt.float(), xt.float())
    got = ops.sddmm_csr(crow.cuda(), col.cuda(), ROWS, COLS, yt.cuda(), xt.cuda())
    assert got.shape == (col.numel(),) and got.dtype == dtype
    torch.testing.assert_close(got.float().cpu(), expected, **TOL[dtype])
    again = ops.sddmm_csr(crow.cuda(), col.cuda(), ROWS, COLS, yt.cuda(), xt.cuda())
    assert torch.equal(got, again)  # deterministic


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("transpose_out", [False, True])
def test_spmm_nm_and_qnm_match_cpu(ops, dtype, nm, transpose_out):
    n, m = nm
    w, _ = _case(ROWS, COLS, seed=30)
    keep = torch.zeros(ROWS, COLS // m, m, dtype=torch.bool)
    keep.scatter_(-1, w.abs().reshape(ROWS, COLS // m, m).topk(n, dim=-1).indices, True)
    xt = torch.randn(COLS, 16).to(dtype)
    for name in ("nm", "qnm"):
        fmt = to_format(name, w, keep.reshape(ROWS, COLS), n=n, m=m)
        if name == "nm":
            expected = ops.spmm_nm(_rounded(fmt.values, dtype), fmt.indices, n, m, COLS, xt.float(), transpose_out)
            got = ops.spmm_nm(fmt.values.to(dtype).cuda(), fmt.indices.cuda(), n, m, COLS, xt.cuda(), transpose_out)
        else:
            args = (fmt.values, fmt.indices, fmt.scales)
            expected = ops.spmm_qnm(*args, n, m, COLS, xt.float(), transpose_out)
            got = ops.spmm_qnm(*(a.cuda() for a in args), n, m, COLS, xt.cuda(), transpose_out)
        torch.testing.assert_close(got.float().cpu(), expected, **TOL[dtype])
    bad = fmt.indices.clone()
    bad[0, 0] = m
    with pytest.raises(ValueError, match=r"\[0, m="):
        ops.spmm_nm(fmt.values.float().cuda(), bad.cuda(), n, m, COLS, xt.float().cuda(), False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_2_4_weights_use_the_sparse_tensor_cores_where_available(ops, dtype):
    from hf_sparse.ops import spmm as spmm_module

    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("semi-structured sparsity needs sm_80 or newer")
    w = torch.randn(256, 512)
    keep = torch.zeros(256, 128, 4, dtype=torch.bool)
    keep.scatter_(-1, w.abs().reshape(256, 128, 4).topk(2, dim=-1).indices, True)
    fmt = _to_cuda(to_format("nm", w.to(dtype), keep.reshape(256, 512), n=2, m=4))
    xt = torch.randn(512, 64, device="cuda", dtype=dtype)
    with torch.no_grad():
        got = spmm(fmt, xt)
    want = fmt.to_dense().float() @ xt.float()
    torch.testing.assert_close(got.float(), want, **TOL[dtype])
    key = (fmt.values.data_ptr(), fmt.indices.data_ptr(), tuple(fmt.shape), fmt.values.dtype)
    cached = spmm_module._SEMI_STRUCTURED.get(key)
    assert cached is not None  # tried; cached[3] is None only where torch has no semi-structured backend here
    print("semi-structured:", type(cached[3]).__name__ if cached[3] is not None else "unavailable, our kernel ran")
    with torch.inference_mode():  # inference tensors (no version counter) take the same path
        frozen = _to_cuda(to_format("nm", w.to(dtype), keep.reshape(256, 512), n=2, m=4))
        torch.testing.assert_close(spmm(frozen, xt).float(), want, **TOL[dtype])
