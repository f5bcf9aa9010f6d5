"""int8 values inside BSR and N:M (``qbsr``, ``qnm``): formats, kernels, gradients, conversion and checkpoints."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import hf_sparse
from hf_sparse import PruningConfig
from hf_sparse.errors import ConfigError, FormatError
from hf_sparse.formats import BSR, NM, QBSR, QNM, from_tensors
from hf_sparse.ops import _loader, spmm
from hf_sparse.quantization import QuantizationConfig, convert_, prepare_qat_
from hf_sparse.quantization.apply import sparse_layout
from hf_sparse.testing import tiny_bert_classifier

kernels = pytest.mark.skipif(not _loader.load(), reason="C++ ops unavailable: " + str(_loader.status()["reason"]))


def _block_weight(rows, cols, block, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    r, c = block
    keep = (torch.rand(rows // r, cols // c, generator=g) < density).repeat_interleave(r, 0).repeat_interleave(c, 1)
    return torch.randn(rows, cols, generator=g) * keep, keep


def _nm_weight(rows, cols, n, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(rows, cols // m, m, generator=g).argsort(-1)[..., :n]
    keep = torch.zeros(rows, cols // m, m, dtype=torch.bool).scatter_(-1, order, True).reshape(rows, cols)
    return torch.randn(rows, cols, generator=g) * keep, keep


def _row_error_bound(w):
    return w.abs().amax(1, keepdim=True) / 254 + 1e-6


# -- formats --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [(4, 4), (16, 16), (8, 16)])
def test_qbsr_round_trip(block):
    w, keep = _block_weight(32, 48, block, 0.4)
    q = QBSR.from_dense(w, keep, block=block)
    assert q.values.dtype == torch.int8 and q.block == block
    assert ((q.to_dense() - w).abs() <= _row_error_bound(w)).all()
    assert bool((q.to_dense()[~keep] == 0).all())
    again = from_tensors(q.tensors(), q.params())
    assert torch.equal(again.to_dense(), q.to_dense())
    assert q.nbytes < BSR.from_dense(w, keep, block=block).nbytes / 3


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_qnm_round_trip(n, m):
    w, keep = _nm_weight(12, 32, n, m)
    q = QNM.from_dense(w, keep, n=n, m=m)
    assert ((q.to_dense() - w).abs() <= _row_error_bound(w)).all()
    again = from_tensors(q.tensors(), q.params())
    assert torch.equal(again.to_dense(), q.to_dense())
    assert q.nbytes <= NM.from_dense(w, keep, n=n, m=m).nbytes / 2  # 1-byte codes + int8 positions vs 4 + 1


def test_learned_scales_are_kept():
    w, keep = _nm_weight(6, 16, 2, 4)
    scales = torch.full((6,), 0.05)
    q = QNM.from_dense(w, keep, scales=scales)
    assert torch.equal(q.scales, scales)
    with pytest.raises(FormatError, match="one scale per row"):
        QBSR.from_dense(w, keep, block=(2, 4), scales=torch.ones(5))


def test_malformed_sparse_int8_tensors_raise():
    w, keep = _block_weight(16, 16, (4, 4), 0.5)
    q = QBSR.from_dense(w, keep, block=(4, 4))
    t = q.tensors()
    bad_col = t["col_indices"].clone()
    bad_col[0] = 9
    for name, bad, match in [
        ("scales", -t["scales"], "finite and > 0"),
        ("scales", t["scales"][:3], "shape"),
        ("values", t["values"].float(), "dtype"),
        ("values", torch.full_like(t["values"], -128), "outside"),
        ("col_indices", bad_col, "^qbsr: .*out of range"),
    ]:
        with pytest.raises(FormatError, match=match):
            from_tensors({**t, name: bad}, q.params())
    with pytest.raises(FormatError, match="^qbsr: .*divisible"):
        from_tensors(t, {**q.params(), "block": [3, 4]})
    with pytest.raises(FormatError, match="unknown parameters"):
        from_tensors(t, {**q.params(), "bits": 4})
    wn, keepn = _nm_weight(4, 8, 2, 4)
    qn = QNM.from_dense(wn, keepn)
    tn = qn.tensors()
    idx = tn["indices"].clone()
    idx[0, 0] = 7
    with pytest.raises(FormatError, match="^qnm: .*outside its group"):
        from_tensors({**tn, "indices": idx}, qn.params())
    with pytest.raises(FormatError, match="^qnm: .*more than n=2"):
        QNM.from_dense(torch.randn(4, 8))


# -- kernels --------------------------------------------------------------------------------------------------------
@kernels
@pytest.mark.parametrize("n_tokens", [1, 7, 16, 33])
@pytest.mark.parametrize("fmt", ["qbsr16", "qbsr4x8", "qnm24", "qnm48"])
def test_sparse_int8_kernels_match_reference(n_tokens, fmt):
    if fmt.startswith("qbsr"):
        block = (16, 16) if fmt == "qbsr16" else (4, 8)
        w, keep = _block_weight(64, 96, block, 0.3, seed=n_tokens)
        w[: block[0]] = 0  # an empty block row
        q = QBSR.from_dense(w, w != 0, block=block)
    else:
        n, m = (2, 4) if fmt == "qnm24" else (4, 8)
        w, keep = _nm_weight(40, 96, n, m, seed=n_tokens)
        q = QNM.from_dense(w, keep, n=n, m=m)
    xt = torch.randn(96, n_tokens, generator=torch.Generator().manual_seed(1))
    ref = q.to_dense() @ xt
    torch.testing.assert_close(spmm(q, xt, backend="reference"), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(spmm(q, xt, backend="cpu"), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(spmm(q, xt, backend="cpu", transpose_out=True), ref.t(), rtol=1e-4, atol=1e-4)


@kernels
@pytest.mark.parametrize("fmt", ["qbsr", "qnm"])
def test_sparse_int8_kernel_gradients_and_opcheck(fmt):
    if fmt == "qbsr":
        w, keep = _block_weight(16, 24, (4, 8), 0.5, seed=3)
        q = QBSR.from_dense(w, keep, block=(4, 8))
        scales = q.scales.clone().requires_grad_(True)
        q2 = QBSR(q.crow_indices, q.col_indices, q.values, scales, q.shape, q.block)
        op = torch.ops.hf_sparse.spmm_qbsr
        args = (q.crow_indices, q.col_indices, q.values, q.scales.clone().requires_grad_(True), 16, 24)
    else:
        w, keep = _nm_weight(16, 24, 2, 4, seed=3)
        q = QNM.from_dense(w, keep)
        scales = q.scales.clone().requires_grad_(True)
        q2 = QNM(q.values, q.indices, scales, q.shape, 2, 4)
        op = torch.ops.hf_sparse.spmm_qnm
        args = (q.values, q.indices, q.scales.clone().requires_grad_(True), 2, 4, 24)
    xt = torch.randn(24, 5, requires_grad=True)
    for transpose_out in (False, True):
        spmm(q2, xt, backend="cpu", transpose_out=transpose_out).pow(2).sum().backward()
        g_x, g_s = xt.grad.clone(), scales.grad.clone()
        xt.grad = scales.grad = None
        spmm(q2, xt, backend="reference", transpose_out=transpose_out).pow(2).sum().backward()
        torch.testing.assert_close(g_x, xt.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g_s, scales.grad, rtol=1e-4, atol=1e-3)
        xt.grad = scales.grad = None
        torch.library.opcheck(op, (*args, torch.randn(24, 3, requires_grad=True), transpose_out))


@kernels
def test_sparse_int8_kernels_reject_bad_input_without_crashing():
    w, keep = _block_weight(16, 16, (4, 4), 0.5)
    q = QBSR.from_dense(w, keep, block=(4, 4))
    col = q.col_indices.to(torch.int32).clone()
    col[0] = 99
    with pytest.raises(ValueError, match="spmm_qbsr: col.*out of range"):
        torch.ops.hf_sparse.spmm_qbsr(q.crow_indices, col, q.values, q.scales, 16, 16, torch.randn(16, 3), False)
    with pytest.raises(ValueError, match="scales must be float32"):
        x = torch.randn(16, 3)
        torch.ops.hf_sparse.spmm_qbsr(q.crow_indices, q.col_indices, q.values, q.scales[:3], 16, 16, x)
    wn, keepn = _nm_weight(4, 8, 2, 4)
    qn = QNM.from_dense(wn, keepn)
    idx = qn.indices.clone()
    idx[1, 1] = 5
    with pytest.raises(ValueError, match="spmm_qnm: indices.*out of range"):
        torch.ops.hf_sparse.spmm_qnm(qn.values, idx, qn.scales, 2, 4, 8, torch.randn(8, 2), False)
    with pytest.raises(ValueError, match="values must be int8"):
        torch.ops.hf_sparse.spmm_qnm(qn.values.float(), qn.indices, qn.scales, 2, 4, 8, torch.randn(8, 2))


# -- conversion and checkpoints --------------------------------------------------------------------------------------
def test_sparse_layout_detects_the_pattern():
    w, keep = _nm_weight(32, 64, 2, 4)
    assert sparse_layout(keep) == ("nm", {"n": 2, "m": 4})
    _, keep = _block_weight(64, 64, (16, 16), 0.3)
    assert sparse_layout(keep) == ("bsr", {"block": (16, 16)})
    _, keep = _block_weight(64, 64, (4, 4), 0.3)
    assert sparse_layout(keep) == ("bsr", {"block": (4, 4)})
    keep = torch.rand(64, 64, generator=torch.Generator().manual_seed(0)) > 0.8
    assert sparse_layout(keep) == ("csr", {})


@pytest.mark.parametrize(
    "pruning,expected",
    [
        (PruningConfig(granularity="nm", n=2, m=4, sparsity=0.5), "qnm"),
        (PruningConfig(granularity="block", block=(8, 8), sparsity=0.75), "qbsr"),
    ],
)
def test_structured_int8_converts_and_reloads(tmp_path, pruning, expected):
    model = tiny_bert_classifier(seed=8)
    hf_sparse.prune_(model, pruning)
    prepare_qat_(model, QuantizationConfig())
    model.eval()
    g = torch.Generator().manual_seed(2)
    batch = {"input_ids": torch.randint(6, 128, (3, 11), generator=g), "attention_mask": torch.ones(3, 11, dtype=int)}
    batch["attention_mask"][1, 7:] = 0
    with torch.no_grad():
        before = model(**batch).logits
    formats = convert_(model)
    assert set(formats.values()) == {expected}
    with torch.no_grad():
        after = model(**batch).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    layer = loaded.bert.encoder.layer[0].intermediate.dense
    assert layer.format == expected
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, after)


def test_convert_to_nm_without_a_pattern_is_an_error():
    model = tiny_bert_classifier(seed=9)
    hf_sparse.prune_(model, PruningConfig(sparsity=0.8))
    prepare_qat_(model, QuantizationConfig())
    with pytest.raises(ConfigError, match="needs an n:m pattern"):
        convert_(model, format="nm")
    with pytest.raises(ConfigError, match="'auto', 'dense', 'csr', 'bsr' or 'nm'"):
        convert_(model, format="coo")
