"""The ``qrow`` format (row-wise quantised embedding tables): round trips, error bounds, the row layout (packed codes,
then the float16 scale and bias, little-endian), and malformed tensors that must raise FormatError."""

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from hf_sparse.errors import FormatError
from hf_sparse.formats import FORMATS, QRow, from_tensors, to_format
from hf_sparse.ops import qrow_embedding_bag

BITS = [8, 4, 2]


def _table(rows=50, cols=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 4
    w[::7] += 100.0  # rows far from zero: the bias, not the codes, carries the offset
    return w


def _check_bound(fmt: QRow, w: torch.Tensor) -> None:
    """Every value within half a step of its row (float32 arithmetic adds at most a few ulps of the value)."""
    err = (fmt.to_dense() - w.float()).abs()
    scale = fmt.scales().float().unsqueeze(1)
    bound = scale / 2 + 4 * torch.finfo(torch.float32).eps * w.float().abs()
    assert bool((err <= bound).all()), float((err / scale).max())


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("cols", [8, 16, 64, 72])
def test_round_trip_error_bound_and_storage(bits, cols):
    w = _table(cols=cols, seed=cols + bits)
    fmt = to_format("qrow", w, bits=bits)
    assert isinstance(fmt, QRow) and FORMATS.get("qrow") is QRow
    fmt.validate()
    assert fmt.values.dtype == torch.uint8 and fmt.values.shape == (50, cols * bits // 8 + 4)
    assert list(fmt.tensors()) == ["values"]
    scales, biases = fmt.scales(), fmt.biases()
    assert scales.dtype == torch.float16 and biases.dtype == torch.float16
    assert scales.shape == (50,) and biases.shape == (50,)
    assert fmt.params() == {"format": "qrow", "shape": [50, cols], "bits": bits}
    _check_bound(fmt, w)
    # bias = the row minimum rounded down to float16: the largest float16 not above it
    up = torch.nextafter(biases, torch.full_like(biases, float("inf")))
    assert bool((biases.float() <= w.amin(1)).all()) and bool((up.float() > w.amin(1)).all())
    assert int(fmt.codes().max()) <= 2**bits - 1
    assert fmt.nbytes == 50 * (cols * bits // 8 + 4)  # codes + float16 scale + float16 bias per row, nothing else
    assert fmt.nbytes == sum(t.numel() * t.element_size() for t in fmt.tensors().values())
    assert fmt.nnz == 50 * cols and fmt.dtype == torch.float32
    again = from_tensors(st_load(st_save(fmt.tensors())), fmt.params())  # through safetensors bytes
    assert isinstance(again, QRow) and torch.equal(again.to_dense(), fmt.to_dense())


@pytest.mark.parametrize("bits", BITS)
def test_error_shrinks_with_bits_and_full_range_is_used(bits):
    w = torch.linspace(-1, 1, 64).repeat(3, 1)
    fmt = QRow.from_dense(w, bits=bits)
    assert int(fmt.codes().max()) == 2**bits - 1  # the row maximum maps to the top code
    step = 2 / (2**bits - 1)
    assert bool((fmt.scales().float() >= step).all()) and bool((fmt.scales().float() <= step * 1.001).all())
    _check_bound(fmt, w)


def test_constant_rows_get_a_positive_scale_and_exact_values():
    w = torch.zeros(5, 8)
    w[1] = 1.0
    w[2] = -3.5
    w[3] = 65504.0  # the float16 maximum
    w[4] = 0.1  # not a float16 number: within half a step, still a valid positive scale
    for bits in BITS:
        fmt = QRow.from_dense(w, bits=bits)
        fmt.validate()
        assert bool((fmt.scales() > 0).all()) and bool(torch.isfinite(fmt.scales()).all())
        dense = fmt.to_dense()
        assert torch.equal(dense[:4], w[:4])
        _check_bound(fmt, w)


def test_mask_zeroes_positions_first():
    w = torch.randn(6, 8)
    mask = torch.rand(6, 8) < 0.5
    fmt = QRow.from_dense(w, mask, bits=8)
    _check_bound(fmt, w * mask)


def test_row_layout_codes_low_bits_first_then_scale_and_bias_little_endian():
    # float16 bits: 1.0 = 0x3C00, 0.0 = 0x0000, 2.0 = 0x4000, -3.0 = 0xC200, 0.5 = 0x3800
    w = torch.tensor([[0.0, 1.0, 2.0, 15.0, 0.0, 15.0, 3.0, 4.0]])
    fmt = QRow.from_dense(w, bits=4)
    assert float(fmt.scales()) == 1.0 and float(fmt.biases()) == 0.0
    assert fmt.values.tolist() == [[0x10, 0xF2, 0xF0, 0x43, 0x00, 0x3C, 0x00, 0x00]]
    w2 = torch.tensor([[0.0, 1.0, 2.0, 3.0, 3.0, 2.0, 1.0, 0.0]]) * 2 - 3  # scale 2, bias -3
    fmt2 = QRow.from_dense(w2, bits=2)
    assert fmt2.values.tolist() == [[0b11100100, 0b00011011, 0x00, 0x40, 0x00, 0xC2]]
    assert fmt2.codes().tolist() == [[0, 1, 2, 3, 3, 2, 1, 0]]
    fmt8 = QRow.from_dense(torch.tensor([[0.0, 127.5, 3.5, 64.0]]), bits=8)  # scale 0.5, bias 0
    assert fmt8.values.tolist() == [[0, 255, 7, 128, 0x00, 0x38, 0x00, 0x00]]
    assert torch.equal(fmt8.to_dense(), torch.tensor([[0.0, 127.5, 3.5, 64.0]]))


@pytest.mark.parametrize("bits", BITS)
def test_from_parts_assembles_the_rows(bits):
    fmt = QRow.from_dense(_table(rows=9, cols=16), bits=bits)
    cb = 16 * bits // 8
    again = QRow.from_parts(fmt.values[:, :cb], fmt.scales(), fmt.biases(), fmt.shape, bits=bits)
    assert torch.equal(again.values, fmt.values)
    # every float16 bit pattern survives the trip through the row bytes (subnormals, negatives, the top of the range)
    h = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    h = h[torch.isfinite(h)]
    codes = torch.zeros(h.numel(), 1, dtype=torch.uint8)
    raw = QRow.from_parts(codes, h, h, (h.numel(), 8 // bits), bits=bits, validate=False)
    assert torch.equal(raw.scales().view(torch.int16), h.view(torch.int16))
    assert torch.equal(raw.biases().view(torch.int16), h.view(torch.int16))
    with pytest.raises(FormatError, match="scales has dtype torch.float32"):
        QRow.from_parts(fmt.values[:, :cb], fmt.scales().float(), fmt.biases(), fmt.shape, bits=bits)
    with pytest.raises(FormatError, match=r"codes has shape"):
        QRow.from_parts(fmt.values, fmt.scales(), fmt.biases(), fmt.shape, bits=bits)


def test_float_tensors_match_the_stored_dtypes():
    # what checkpoint loading checks: a tensor is floating point exactly when the format lists it
    fmt = QRow.from_dense(_table(), bits=4)
    assert QRow.float_tensors == ()  # scales and biases are bytes inside the uint8 rows
    for name, t in fmt.tensors().items():
        assert t.dtype.is_floating_point == (name in QRow.float_tensors), name
    assert fmt.dtype == torch.float32  # what lookups return


def test_int4_dim64_is_over_seven_times_smaller_than_float32():
    fmt = QRow.from_dense(torch.randn(1000, 64), bits=4)
    assert fmt.values.shape == (1000, 36)
    assert 1000 * 64 * 4 / fmt.nbytes >= 7.0


def test_lookup_methods_equal_the_dense_table():
    w = _table(rows=40, cols=16)
    fmt = QRow.from_dense(w, bits=4)
    dense = fmt.to_dense()
    ids = torch.tensor([[3, 0, 39], [7, 7, 1]])
    assert torch.equal(fmt.lookup(ids), dense[ids])
    offsets = torch.tensor([0, 2, 2])
    flat = ids.reshape(-1)
    expected = torch.nn.functional.embedding_bag(flat, dense, offsets, mode="mean")
    torch.testing.assert_close(qrow_embedding_bag(fmt, flat, offsets, mode="mean"), expected)
    torch.testing.assert_close(qrow_embedding_bag(fmt, ids), torch.nn.functional.embedding_bag(ids, dense, mode="sum"))


@pytest.mark.parametrize(
    "weight, params, match",
    [
        (torch.randn(4, 8), {"bits": 3}, "bits must be 8, 4 or 2"),
        (torch.randn(4, 8), {"bits": 8.0}, "bits must be 8, 4 or 2"),
        (torch.randn(4, 7), {"bits": 4}, "7 columns do not divide"),
        (torch.randn(4, 6), {"bits": 2}, "6 columns do not divide"),
        (torch.randn(4, 8), {"bits": 8, "group_size": 4}, "takes only `bits`"),
        (torch.tensor([[0.0, float("nan")]]), {"bits": 8}, r"weight\[0, 1\] = nan"),
        (torch.tensor([[0.0, float("inf")]]), {"bits": 8}, "finite"),
        (torch.tensor([[0.0, 1e5]]), {"bits": 8}, "float16 range"),
        (torch.randn(8), {"bits": 8}, "2-D weight"),
    ],
)
def test_from_dense_rejects_what_it_cannot_store(weight, params, match):
    with pytest.raises(FormatError, match=match):
        QRow.from_dense(weight, **params)


def _good():
    return QRow.from_dense(_table(rows=6, cols=8), bits=4)  # rows of 4 code bytes + scale + bias = 8 bytes


def _replace(fmt, **kw):
    tensors = {**fmt.tensors(), **kw}
    return tensors, fmt.params()


def _with(fmt, scales=None, biases=None):
    """The table's tensors with some rows' scales or biases replaced (as float16 numbers written into the rows)."""
    cb = fmt.code_bytes
    s = fmt.scales() if scales is None else scales(fmt.scales())
    b = fmt.biases() if biases is None else biases(fmt.biases())
    return QRow.from_parts(fmt.values[:, :cb], s, b, fmt.shape, bits=fmt.bits, validate=False).tensors(), fmt.params()


def _set(t, i, v):
    t = t.clone()
    t[i] = v
    return t


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda f: _replace(f, values=f.values.to(torch.int8)), "values has dtype torch.int8"),
        (lambda f: _replace(f, values=f.values[:, :4]), r"values has shape \(6, 4\); 4-bit codes .* need \(6, 8\)"),
        (lambda f: _replace(f, values=f.values[:, :7]), r"values has shape \(6, 7\)"),
        (lambda f: _replace(f, values=torch.cat([f.values, f.values[:, :1]], 1)), r"values has shape \(6, 9\)"),
        (lambda f: _replace(f, values=f.values[:5]), r"values has shape \(5, 8\)"),
        (lambda f: _replace(f, values=f.values.reshape(-1)), "values must have 2 dimension"),
        (lambda f: _replace(f, values=f.values.view(torch.float16)), "values has dtype torch.float16"),
        (lambda f: _with(f, scales=lambda s: _set(s, 5, 0.0)), r"row 5 has scale 0.0 .*bytes 4-5 of values\[5\]"),
        (lambda f: _with(f, scales=lambda s: -s), r"row 0 has scale -"),
        (lambda f: _with(f, scales=lambda s: _set(s, 2, float("nan"))), "every scale must be finite and > 0"),
        (lambda f: _with(f, scales=lambda s: _set(s, 3, float("inf"))), "every scale must be finite and > 0"),
        (lambda f: _with(f, biases=lambda b: _set(b, 1, float("-inf"))), r"row 1 has bias -inf .*bytes 6-7"),
        (lambda f: _with(f, biases=lambda b: _set(b, 4, float("nan"))), "every bias must be finite"),
        (lambda f: (f.tensors(), {**f.params(), "bits": 5}), "bits must be 8, 4 or 2"),
        (lambda f: (f.tensors(), {**f.params(), "bits": 8}), r"values has shape \(6, 8\); 8-bit codes .* \(6, 12\)"),
        (lambda f: (f.tensors(), {**f.params(), "shape": [6, 7]}), "7 columns do not divide"),
        (lambda f: (f.tensors(), {**f.params(), "shape": [6, -8]}), "two positive integers"),
        (lambda f: (f.tensors(), {**f.params(), "granularity": "channel"}), "unknown parameters"),
        (lambda f: ({}, f.params()), "missing tensor or parameter 'values'"),
        (lambda f: (f.tensors(), {"format": "qrow", "shape": [6, 8]}), "missing tensor or parameter 'bits'"),
        # the earlier layout (separate scale and bias tensors) is named, with the way to convert it
        (
            lambda f: _replace(f, values=f.values[:, :4].clone(), scales=f.scales(), biases=f.biases()),
            r"unknown tensors \['biases', 'scales'\].*QRow.from_parts",
        ),
    ],
)
def test_malformed_tensors_raise_format_error(change, match):
    tensors, params = change(_good())
    with pytest.raises(FormatError, match=match):
        from_tensors(tensors, params)


def test_unvalidated_construction_defers_the_checks():
    fmt = _good()
    bad = QRow(fmt.values[:, :5], fmt.shape, bits=4, validate=False)
    with pytest.raises(FormatError, match=r"values has shape \(6, 5\)"):
        bad.validate()
    zero = QRow(fmt.values.clone(), fmt.shape, bits=4, validate=False)
    zero.values[2, 4:6] = 0  # row 2's scale: +0.0
    with pytest.raises(FormatError, match="row 2 has scale 0.0"):
        zero.validate()
    meta = {k: torch.empty(t.shape, dtype=t.dtype, device="meta") for k, t in fmt.tensors().items()}
    QRow.from_tensors(meta, fmt.params()).validate()  # shapes and dtypes only: meta tensors hold no values
