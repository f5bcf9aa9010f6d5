"""Which path a qrow lookup takes (FBGEMM's row-wise ops, our kernel, the reference) and that every path gives the
same results: FBGEMM's sums against the reference within float32 summation order, our kernel on wide rows (more
columns than it keeps in registers) and on the AVX2 and one-lane builds."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from hf_sparse.errors import FormatError
from hf_sparse.formats import QRow
from hf_sparse.ops import kernel_status, load_kernels
from hf_sparse.ops.embedding import (
    explain_qrow,
    qrow_embedding_bag,
    qrow_embedding_bag_reference,
    qrow_fbgemm_int8_copy,
    qrow_lookup,
    qrow_lookup_reference,
    qrow_path,
)

HAS_FBGEMM = hasattr(torch.ops.quantized, "embedding_bag_4bit_rowwise_offsets")
needs_fbgemm = pytest.mark.skipif(not HAS_FBGEMM, reason="this torch build has no FBGEMM row-wise ops")


def _table(rows, cols, bits, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * (torch.rand(rows, 1, generator=g) * 3) + torch.randn(rows, 1)
    return QRow.from_dense(w, bits=bits)


def _bags(rows, seed):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, 9, (50,), generator=g)
    sizes[::7] = 0  # empty bags
    ids = torch.randint(0, rows, (int(sizes.sum()),), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])
    return ids, offsets, sizes


@pytest.fixture
def int8_copy():
    qrow_fbgemm_int8_copy(True)
    yield
    qrow_fbgemm_int8_copy(False)


@needs_fbgemm
@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("cols", [8, 40, 72, 200])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_fbgemm_path_matches_reference(int8_copy, bits, cols, weighted, dtype):
    table = _table(300, cols, bits, seed=bits + cols)
    ids, offsets, sizes = _bags(300, cols)
    ids, offsets = ids.to(dtype), offsets.to(dtype)
    g = torch.Generator().manual_seed(cols)
    psw = torch.rand(ids.numel(), generator=g) * 2 - 0.5 if weighted else None
    assert qrow_path(table, ids, psw) == "fbgemm"
    out = qrow_embedding_bag(table, ids, offsets, per_sample_weights=psw)
    ref = qrow_embedding_bag_reference(table, ids, offsets, per_sample_weights=psw)
    # float32 sums of at most 8 (weighted) rows, rounded in another order: within a few roundings per row of the
    # bag's sum of magnitudes
    weights = None if psw is None else psw.abs()
    mag = F.embedding_bag(ids.long(), table.to_dense().abs(), offsets.long(), mode="sum", per_sample_weights=weights)
    tol = 1e-6 + 32 * 2.0**-24 * (mag + 1)
    assert bool(((out - ref).abs() <= tol).all())
    assert bool((out[sizes == 0] == 0).all())
    full = torch.cat([offsets, offsets.new_tensor([ids.numel()])])
    last = qrow_embedding_bag(table, ids, full, per_sample_weights=psw, include_last_offset=True)
    assert bool(((last - ref).abs() <= tol).all())
    again = qrow_embedding_bag(table, ids, offsets, per_sample_weights=psw, backend="fbgemm")
    assert bool(((again - ref).abs() <= tol).all())
    for size in (1, 3):  # fixed-size bags (2-D ids) take FBGEMM's op by default
        fixed = ids[:30].reshape(30 // size, size)
        fixed_w = None if psw is None else psw[: fixed.numel()].reshape(fixed.shape)
        got = qrow_embedding_bag(table, fixed, per_sample_weights=fixed_w)
        want = qrow_embedding_bag_reference(table, fixed, per_sample_weights=fixed_w)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    for bad in ([1, 2], [0, 3, 2]):
        with pytest.raises(ValueError, match="offsets"):
            qrow_embedding_bag(table, ids[:4], torch.tensor(bad, dtype=dtype), backend="fbgemm")
    # a bag of one, and a plain lookup, round once, as the reference does
    single = ids[:30]
    assert torch.equal(qrow_lookup(table, single.reshape(5, 6)), qrow_lookup_reference(table, single.reshape(5, 6)))
    assert torch.equal(qrow_embedding_bag(table, single.reshape(30, 1)), table.to_dense()[single.long()])


@needs_fbgemm
def test_paths_are_explained():
    table = _table(50, 16, 4)
    ids = torch.arange(10)
    assert explain_qrow(table, ids)["fbgemm"] == []
    assert qrow_path(table, ids) == "fbgemm"
    assert qrow_path(table, ids, mode="mean") == ("cpu" if load_kernels() else "reference")
    assert any("mean" in why for why in explain_qrow(table, ids, mode="mean")["fbgemm"])
    table8 = _table(50, 16, 8)
    assert any("qrow_fbgemm_int8_copy" in why for why in explain_qrow(table8, ids)["fbgemm"])
    assert qrow_path(table8, ids) == ("cpu" if load_kernels() else "reference")
    grad = torch.ones(10, requires_grad=True)
    assert qrow_path(table, ids, grad) == "reference"
    with pytest.raises(FormatError, match="fbgemm"):
        qrow_embedding_bag(table, ids, torch.tensor([0, 4]), mode="mean", backend="fbgemm")


@needs_fbgemm
def test_fbgemm_can_be_turned_off(monkeypatch):
    table = _table(50, 16, 2)
    monkeypatch.setenv("HF_SPARSE_QROW_FBGEMM", "0")
    assert qrow_path(table, torch.arange(4)) != "fbgemm"


@needs_fbgemm
def test_int8_copy_follows_the_table(int8_copy):
    table = _table(40, 24, 8)
    ids = torch.arange(40)
    before = qrow_lookup(table, ids)
    assert torch.equal(before, table.to_dense())
    table.values[:, :24] = 7  # in place: the cached FBGEMM copy must be rebuilt
    assert torch.equal(qrow_lookup(table, ids), table.to_dense())


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("backend", ["fbgemm", "cpu"])
def test_errors_on_every_path(int8_copy, bits, backend):
    if backend == "fbgemm" and not HAS_FBGEMM:
        pytest.skip("no FBGEMM row-wise ops")
    if backend == "cpu" and not load_kernels():
        pytest.skip(kernel_status()["reason"])
    table = _table(30, 16, bits)
    with pytest.raises(IndexError, match="out of range"):
        qrow_embedding_bag(table, torch.tensor([1, 30, 2]), torch.tensor([0, 2]), backend=backend)
    with pytest.raises(IndexError, match="out of range"):
        qrow_embedding_bag(table, torch.tensor([1, -1]), torch.tensor([0]))
    with pytest.raises(IndexError, match="out of range"):
        qrow_lookup(table, torch.tensor([0, 31]), backend=backend)
    with pytest.raises(IndexError, match="out of range"):
        qrow_lookup(table, torch.tensor([0, 31]))
    for bad in ([1, 2], [0, 3, 2], [0, 5]):
        with pytest.raises(ValueError, match="offsets"):
            qrow_embedding_bag(table, torch.tensor([1, 2, 3]), torch.tensor(bad))
    with pytest.raises(ValueError, match="last offset"):
        qrow_embedding_bag(table, torch.tensor([1, 2, 3]), torch.tensor([0, 2]), include_last_offset=True)


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("cols", [4 * 67, 256, 136])
def test_kernel_on_rows_wider_than_its_registers(ops, bits, cols):
    table = _table(200, cols, bits, seed=cols)
    ids, offsets, sizes = _bags(200, bits)
    psw = torch.rand(ids.numel())
    for mode, weights in (("sum", None), ("mean", None), ("sum", psw)):
        out = qrow_embedding_bag(table, ids, offsets, mode=mode, per_sample_weights=weights, backend="cpu")
        ref = qrow_embedding_bag_reference(table, ids, offsets, mode=mode, per_sample_weights=weights)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
        assert bool((out[sizes == 0] == 0).all())
    ids = torch.randint(0, 200, (77,))
    assert torch.equal(qrow_lookup(table, ids, backend="cpu"), table.to_dense()[ids])


SCRIPT = r"""
import torch
from hf_sparse.formats import QRow
from hf_sparse.ops import kernel_status, load_kernels, qrow_embedding_bag, qrow_embedding_bag_reference, qrow_lookup

assert load_kernels(), kernel_status()
assert kernel_status()["isa"] == ISA, kernel_status()
g = torch.Generator().manual_seed(0)
for bits in (8, 4, 2):
    for cols in (4, 8, 12, 40, 72, 264):
        w = torch.randn(120, cols, generator=g) * 2 + 1
        table = QRow.from_dense(w, bits=bits)
        ids = torch.randint(0, 120, (90,), generator=g)
        assert torch.equal(qrow_lookup(table, ids, backend="cpu"), table.to_dense()[ids])
        offsets = torch.tensor([0, 0, 3, 10, 10, 40, 89])
        psw = torch.rand(90, generator=g)
        for mode, weights in (("sum", None), ("mean", None), ("sum", psw)):
            out = qrow_embedding_bag(table, ids, offsets, mode=mode, per_sample_weights=weights, backend="cpu")
            ref = qrow_embedding_bag_reference(table, ids, offsets, mode=mode, per_sample_weights=weights)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
        try:
            qrow_lookup(table, torch.tensor([3, 120]), backend="cpu")
            raise AssertionError("no IndexError")
        except IndexError:
            pass
print("embedding ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_lower_builds_compute_the_same(lower_build_cache, isa):
    if not load_kernels() and "no C++ compiler" in kernel_status()["reason"]:
        pytest.skip(kernel_status()["reason"])
    order = ["portable", "avx2", "avx512"]
    if order.index(kernel_status()["isa"] or "portable") < order.index(isa):
        pytest.skip(f"this CPU has no {isa} path")
    env = {**os.environ, "HF_SPARSE_ISA": isa, "HF_SPARSE_CACHE": str(lower_build_cache)}
    env.pop("HF_SPARSE_DISABLE_KERNELS", None)
    env.pop("HF_SPARSE_PORTABLE", None)
    script = f"ISA = {isa!r}\n" + SCRIPT
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedding ok" in result.stdout
