"""hf_sparse::qrow_lookup and hf_sparse::qrow_embedding_bag against their pure-PyTorch references and against
torch.nn.functional.embedding_bag on the dequantised table: bits, modes, weights, empty bags, index dtypes, opcheck,
and bad ids or offsets that must raise (never crash, never read out of bounds)."""

import random

import pytest
import torch
import torch.nn.functional as F

from hf_sparse.errors import FormatError
from hf_sparse.formats import QRow
from hf_sparse.ops import (
    explain_qrow,
    qrow_embedding_bag,
    qrow_embedding_bag_reference,
    qrow_lookup,
    qrow_lookup_reference,
)

BITS = [8, 4, 2]
BACKENDS = ["cpu", "reference"]


def _table(rows, cols, bits, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * (torch.rand(rows, 1, generator=g) * 3) + torch.randn(rows, 1)
    return QRow.from_dense(w, bits=bits)


def _random_bags(rng, rows, bags, max_size, dtype):
    """1-D ids, bag-start offsets (bags,) and the bag sizes; about a fifth of the bags are empty."""
    sizes = [0 if rng.random() < 0.2 else rng.randint(1, max_size) for _ in range(bags)]
    ids = torch.tensor([rng.randrange(rows) for _ in range(sum(sizes))], dtype=dtype)
    starts = [0]
    for s in sizes[:-1]:
        starts.append(starts[-1] + s)
    return ids, torch.tensor(starts, dtype=dtype), sizes


def _close(out, ref, table, ids, offsets_full):
    """Float32 sums in another order: two recursive sums of n terms each differ from the exact one by at most
    (n - 1) * 2**-24 times the bag's sum of magnitudes (the order depends on the kernel's vector width and threads)."""
    mag = F.embedding_bag(
        ids.long(), table.to_dense().abs(), offsets_full.long(), mode="sum", include_last_offset=True
    )
    sizes = (offsets_full[1:] - offsets_full[:-1]).double().reshape(-1, *([1] * (mag.dim() - 1)))
    tol = (1e-6 + 2 * sizes * 2.0**-24) * (mag + 1)
    assert bool(((out - ref).abs() <= tol).all()), float((out - ref).abs().max())


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("cols", [8, 64, 72])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_lookup_kernel_equals_reference_exactly(ops, bits, cols, dtype):
    table = _table(300, cols, bits, seed=bits * cols)
    ids = torch.randint(0, 300, (7, 33), dtype=dtype)
    out = qrow_lookup(table, ids, backend="cpu")
    assert out.shape == (7, 33, cols) and out.dtype == torch.float32
    # c * scale is exact in float32, so the kernel's FMA and the reference's multiply-add round the same way
    assert torch.equal(out, qrow_lookup_reference(table, ids))
    assert torch.equal(out, table.to_dense()[ids.long()])
    assert torch.equal(ops.qrow_lookup(table.values, bits, cols, ids.reshape(-1)), out.reshape(-1, cols))


@pytest.mark.parametrize("bits", BITS)
def test_kernel_reads_scale_and_bias_from_the_row_exactly(ops, bits):
    # Scales and biases across the float16 range (subnormal scales, the largest biases, negative zero) written into
    # the rows: the kernel's float16 conversion (F16C where built) must agree bit for bit with the reference's.
    g = torch.Generator().manual_seed(bits)
    rows, cols = 4096, 16
    finite = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    finite = finite[torch.isfinite(finite)]
    scales = finite[finite > 0][torch.randint(0, int((finite > 0).sum()), (rows,), generator=g)]
    biases = finite[torch.randint(0, finite.numel(), (rows,), generator=g)]
    scales[:8] = torch.tensor([2.0**-24, 2.0**-14, 1.0, 65504.0, 2.0**-24, 0.5, 1e-3, 3.0], dtype=torch.float16)
    biases[:8] = torch.tensor([0.0, -0.0, -65504.0, 65504.0, -1.0, 1e-7, -3.5, 2.0**-24], dtype=torch.float16)
    codes = torch.randint(0, 256, (rows, cols * bits // 8), dtype=torch.uint8, generator=g)
    table = QRow.from_parts(codes, scales, biases, (rows, cols), bits=bits)
    ids = torch.randperm(rows, generator=g)
    dense = table.to_dense()
    assert torch.equal(qrow_lookup(table, ids, backend="cpu"), dense[ids])
    assert torch.equal(qrow_lookup_reference(table, ids), dense[ids])
    assert torch.equal(qrow_embedding_bag(table, ids, torch.arange(rows), backend="cpu"), dense[ids])


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode, weighted", [("sum", False), ("mean", False), ("sum", True)])  # weights: sum only
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_embedding_bag_kernel_matches_reference_and_torch(ops, bits, mode, weighted, dtype):
    rng = random.Random(bits * 10 + weighted)
    for cols in (8, 16, 64, 40):
        table = _table(500, cols, bits, seed=cols)
        ids, offsets, sizes = _random_bags(rng, 500, 60, 40, dtype)
        psw = torch.rand(ids.shape[0]) * 2 - 0.5 if weighted else None
        out = qrow_embedding_bag(table, ids, offsets, mode=mode, per_sample_weights=psw, backend="cpu")
        ref = qrow_embedding_bag_reference(table, ids, offsets, mode=mode, per_sample_weights=psw)
        assert out.shape == (60, cols) and out.dtype == torch.float32
        full = torch.cat([offsets, offsets.new_tensor([ids.numel()])])
        _close(out, ref, table, ids, full)
        expected = F.embedding_bag(ids.long(), table.to_dense(), offsets.long(), mode=mode, per_sample_weights=psw)
        _close(out, expected, table, ids, full)
        empty = torch.tensor(sizes) == 0
        assert bool(empty.any()) and bool((out[empty] == 0).all())
        # include_last_offset and 2-D ids describe the same bags
        last = qrow_embedding_bag(
            table, ids, full, mode=mode, per_sample_weights=psw, include_last_offset=True, backend="cpu"
        )
        assert torch.equal(last, out)


@pytest.mark.parametrize("bits", BITS)
def test_fixed_size_bags_and_bags_of_one(ops, bits):
    table = _table(200, 32, bits)
    ids = torch.randint(0, 200, (50, 8))
    out = qrow_embedding_bag(table, ids, backend="cpu")
    torch.testing.assert_close(out, F.embedding_bag(ids, table.to_dense(), mode="sum"), rtol=1e-5, atol=1e-4)
    assert torch.equal(out, qrow_embedding_bag(table, ids.reshape(-1), torch.arange(0, 400, 8), backend="cpu"))
    empty = torch.zeros(3, 0, dtype=torch.int64)  # three bags of nothing: zeros (F.embedding_bag raises here)
    for backend in BACKENDS:
        assert torch.equal(qrow_embedding_bag(table, empty, backend=backend), torch.zeros(3, 32))
    flat = ids.reshape(-1)
    ones = qrow_embedding_bag(table, flat, torch.arange(400), mode="mean", backend="cpu")
    assert torch.equal(ones, qrow_lookup(table, flat))  # a bag of one is exactly its row, in both modes
    last = qrow_embedding_bag(table, flat, torch.arange(401), include_last_offset=True, backend="cpu")
    assert torch.equal(last, ones)
    w = torch.rand(400)
    weighted = qrow_embedding_bag(table, flat, torch.arange(400), per_sample_weights=w, backend="cpu")
    torch.testing.assert_close(weighted, ones * w.unsqueeze(1), rtol=1e-6, atol=1e-6)


def test_many_lookups_across_threads_and_prefetch_distance(ops):
    table = _table(20000, 64, 4, seed=3)
    ids = torch.randint(0, 20000, (6000,))
    offsets = torch.arange(0, 6000, 3)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = qrow_embedding_bag(table, ids, offsets, backend="cpu")
        rows_one = qrow_lookup(table, ids, backend="cpu")
        torch.set_num_threads(2)
        two = qrow_embedding_bag(table, ids, offsets, backend="cpu")
        rows_two = qrow_lookup(table, ids, backend="cpu")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two) and torch.equal(rows_one, rows_two)  # each bag is summed by one thread, in order
    assert torch.equal(rows_one, qrow_lookup_reference(table, ids))
    full = torch.cat([offsets, offsets.new_tensor([6000])])
    _close(one, qrow_embedding_bag_reference(table, ids, offsets), table, ids, full)


@pytest.mark.parametrize("bits", BITS)
def test_non_contiguous_table_tensors(ops, bits):
    base = _table(100, 16, bits)
    width = base.values.shape[1]
    ids = torch.randint(0, 100, (30,))
    expected = base.to_dense()[ids]
    # rows further apart than their bytes (a slice of a wider tensor: read in place, at its row stride) ...
    wide = torch.cat([base.values, base.values], dim=1)
    table = QRow(wide[:, :width], base.shape, bits=bits)
    assert not table.values.is_contiguous()
    # ... at an odd stride and offset (no alignment is assumed) ...
    odd = torch.cat([base.values.new_zeros(100, 3), base.values, base.values.new_zeros(100, 2)], dim=1)
    shifted = QRow(odd[:, 3 : 3 + width], base.shape, bits=bits)
    # ... and rows whose bytes are not contiguous (copied first)
    cols_major = QRow(base.values.t().contiguous().t(), base.shape, bits=bits)
    assert cols_major.values.stride(1) != 1
    for t in (table, shifted, cols_major):
        assert torch.equal(qrow_lookup(t, ids, backend="cpu"), expected)
        assert torch.equal(qrow_embedding_bag(t, ids, torch.arange(30), backend="cpu"), expected)
        assert torch.equal(qrow_lookup(t, ids, backend="reference"), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_id", [-1, 100, 2**40])
def test_out_of_range_ids_raise_index_error(ops, backend, bad_id):
    table = _table(100, 16, 4)
    ids = torch.tensor([3, 5, bad_id, 7])
    with pytest.raises(IndexError, match=rf"indices\[2\] = {bad_id} is out of range \[0, 100\)"):
        qrow_lookup(table, ids, backend=backend)
    with pytest.raises(IndexError, match=rf"indices\[2\] = {bad_id} is out of range"):
        qrow_embedding_bag(table, ids, torch.tensor([0, 2]), backend=backend)
    if bad_id < 2**31:
        with pytest.raises(IndexError, match="out of range"):
            qrow_lookup(table, ids.to(torch.int32), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "offsets, last, match",
    [
        ([1, 2], False, r"offsets\[0\] must be 0"),
        ([0, 3, 2], False, r"non-decreasing, got offsets\[1\] = 3 > offsets\[2\] = 2"),
        ([0, 5], False, r"offsets\[1\] = 5 is past the end of the 4 indices"),
        ([0, 2, 3], True, "last offset must equal the number of indices"),
        ([], True, "at least one offset"),
    ],
)
def test_bad_offsets_raise_value_error(ops, backend, offsets, last, match):
    table = _table(100, 16, 8)
    ids = torch.tensor([1, 2, 3, 4])
    with pytest.raises(ValueError, match=match):
        qrow_embedding_bag(
            table, ids, torch.tensor(offsets, dtype=torch.int64), include_last_offset=last, backend=backend
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_raise_typed_errors(ops, backend):
    table = _table(50, 8, 8)
    ids, offsets = torch.tensor([1, 2, 3]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="mode must be one of"):
        qrow_embedding_bag(table, ids, offsets, mode="max", backend=backend)
    with pytest.raises(ValueError, match="only supported with mode 'sum'"):
        qrow_embedding_bag(table, ids, offsets, mode="mean", per_sample_weights=torch.ones(3), backend=backend)
    with pytest.raises(ValueError, match="per_sample_weights must have the shape of ids"):
        qrow_embedding_bag(table, ids, offsets, per_sample_weights=torch.ones(4), backend=backend)
    with pytest.raises(ValueError, match="need offsets"):
        qrow_embedding_bag(table, ids, backend=backend)
    with pytest.raises(TypeError, match="int32 or int64"):
        qrow_lookup(table, ids.float(), backend=backend)
    with pytest.raises(FormatError, match="needs a qrow table"):
        qrow_lookup(table.to_dense(), ids, backend=backend)


def test_the_ops_check_their_arguments(ops):
    table = _table(50, 8, 4)
    v = table.values  # (50, 8): 4 bytes of codes, scale, bias
    ids, off = torch.tensor([1, 2]), torch.tensor([0])
    with pytest.raises(ValueError, match="bits must be 8, 4 or 2"):
        ops.qrow_lookup(v, 3, 8, ids)
    with pytest.raises(ValueError, match="cols must be a positive multiple of 2"):
        ops.qrow_lookup(v, 4, 7, ids)
    with pytest.raises(ValueError, match=r"values must be uint8 \(rows, 8\): 4 bytes of 4-bit codes"):
        ops.qrow_lookup(v.to(torch.int8), 4, 8, ids)
    with pytest.raises(ValueError, match=r"values must be uint8 \(rows, 12\)"):
        ops.qrow_lookup(v, 8, 8, ids)  # 4-bit rows read as 8-bit: the width does not match
    with pytest.raises(ValueError, match=r"values must be uint8 \(rows, 8\)"):
        ops.qrow_lookup(v[:, :4].contiguous(), 4, 8, ids)  # codes without their scale and bias
    with pytest.raises(ValueError, match="values must be uint8"):
        ops.qrow_lookup(v.reshape(-1), 4, 8, ids)
    with pytest.raises(ValueError, match="indices must be int32 or int64"):
        ops.qrow_lookup(v, 4, 8, ids.to(torch.int16))
    with pytest.raises(ValueError, match="indices must be 1-D"):
        ops.qrow_lookup(v, 4, 8, ids.reshape(1, 2))
    with pytest.raises(ValueError, match="mode must be 0"):
        ops.qrow_embedding_bag(v, 4, 8, ids, off, 2, None)
    with pytest.raises(ValueError, match="per_sample_weights must be float32"):
        ops.qrow_embedding_bag(v, 4, 8, ids, off, 0, torch.ones(3))
    with pytest.raises(ValueError, match="only supported with mode sum"):
        ops.qrow_embedding_bag(v, 4, 8, ids, off, 1, torch.ones(2))
    with pytest.raises(IndexError, match=r"indices\[1\] = 50 is out of range"):
        ops.qrow_embedding_bag(v, 4, 8, torch.tensor([0, 50]), off, 0, None)
    with pytest.raises(IndexError, match=r"indices\[0\] = -1 is out of range"):
        ops.qrow_lookup(v, 4, 8, torch.tensor([-1, 0]))


def test_per_sample_weights_gradient_runs_the_reference(ops):
    table = _table(60, 8, 8)
    ids, offsets = torch.tensor([1, 5, 5, 9, 0]), torch.tensor([0, 2])
    psw = torch.rand(5, requires_grad=True)
    assert explain_qrow(table, ids, psw)["cpu"]  # the kernel has no gradient formula: it declines
    with pytest.raises(FormatError, match="no gradient formula"):
        qrow_embedding_bag(table, ids, offsets, per_sample_weights=psw, backend="cpu")
    out = qrow_embedding_bag(table, ids, offsets, per_sample_weights=psw)
    out.sum().backward()
    expected = table.to_dense()[ids].sum(1)  # d(sum of all bags)/d(w_p) = sum of row p
    torch.testing.assert_close(psw.grad, expected)
    with torch.no_grad():
        assert not explain_qrow(table, ids, psw)["cpu"]


def _opcheck_cases():
    table = _table(40, 16, 4)
    cases = []
    for bits in BITS:
        t = _table(40, 16, bits)
        cases.append(("qrow_lookup", (t.values, bits, 16, torch.randint(0, 40, (9,)))))
    ids = torch.randint(0, 40, (10,))
    args = (table.values, 4, 16)
    cases += [
        ("qrow_embedding_bag", (*args, ids, torch.tensor([0, 3, 3, 7]), 0, None, False)),
        ("qrow_embedding_bag", (*args, ids, torch.tensor([0, 3, 3, 7]), 1, None, False)),
        ("qrow_embedding_bag", (*args, ids, torch.tensor([0, 4, 10]), 0, torch.rand(10), True)),
        ("qrow_embedding_bag", (*args, ids.int(), torch.tensor([0, 5], dtype=torch.int32), 0, None, False)),
    ]
    return cases


@pytest.mark.parametrize("case", range(7))
def test_opcheck(ops, case):
    name, args = _opcheck_cases()[case]
    torch.library.opcheck(getattr(ops, name).default, args)
