"""Quantised formats rebuilt from a checkpoint's parameters: a null, mistyped or out-of-range parameter is a
FormatError that names the parameter (never a raw TypeError), and qdense takes every group width that divides the
row, odd ones included, refusing only rows that do not fill whole bytes."""

import pytest
import torch

from hf_sparse.errors import FormatError
from hf_sparse.formats import QBSR, QCSR, QNM, QDense


def _formats():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    nm_mask = torch.zeros(8, 16, dtype=torch.bool)
    nm_mask[:, 0::4] = nm_mask[:, 1::4] = True
    return {
        "qbsr": QBSR.from_dense(w, block=(4, 4)),
        "qcsr": QCSR.from_dense(w),
        "qnm": QNM.from_dense(w, nm_mask, n=2, m=4),
        "qdense": QDense.from_dense(w, bits=4, granularity="group", group_size=8, symmetric=False),
    }


ODD = [
    None,
    True,
    False,
    "4",
    4.5,
    -1,
    0,
    2**70,
    [],
    [None, None],
    [4],
    [4, 4, 4],
    ["4", "4"],
    [4.0, 4.0],
    [True, True],
    {"a": 1},
    float("nan"),
]


@pytest.mark.parametrize("name", ["qbsr", "qcsr", "qnm", "qdense"])
def test_a_null_or_mistyped_parameter_is_a_format_error_naming_it(name):
    fmt = _formats()[name]
    params, tensors = fmt.params(), fmt.tensors()
    keys = [k for k in params if k != "format"]
    checked = 0
    for key in keys:
        for value in ODD:
            bad = {**params, key: value}
            try:
                type(fmt).from_tensors(tensors, bad)
            except FormatError as exc:
                assert key in str(exc) or (key == "shape" and "shape" in str(exc)), (key, value, str(exc))
                checked += 1
            else:  # only values that mean the same thing may load (e.g. qbsr's block as a list or a tuple)
                assert value == params[key] or (key == "group_size" and value in (2**0,)), (key, value)
    assert checked >= len(keys) * (len(ODD) - 3)


@pytest.mark.parametrize("name", ["qbsr", "qcsr", "qnm", "qdense"])
def test_a_null_tensor_is_a_format_error_naming_it(name):
    fmt = _formats()[name]
    for key in fmt.tensors():
        if key == "zero_points":
            continue  # qdense without zero points is the symmetric layout; a missing tensor is the loader's check
        tensors = {**fmt.tensors(), key: None}
        with pytest.raises(FormatError, match=key):
            type(fmt).from_tensors(tensors, fmt.params())


def test_qbsr_with_a_null_block():
    fmt = _formats()["qbsr"]
    with pytest.raises(FormatError, match="block"):
        QBSR.from_tensors(fmt.tensors(), {**fmt.params(), "block": None})


@pytest.mark.parametrize("bits", [4, 2])
def test_qdense_takes_every_group_width_that_divides_the_row(bits):
    torch.manual_seed(bits)
    cols = 24
    for width in [w for w in range(1, cols + 1) if cols % w == 0]:
        q = QDense.from_dense(torch.randn(3, cols), bits=bits, granularity="group", group_size=width)
        again = QDense.from_tensors(q.tensors(), q.params())
        assert torch.equal(again.to_dense(), q.to_dense())


@pytest.mark.parametrize(("bits", "cols"), [(4, 9), (2, 6), (2, 9)])
def test_qdense_refuses_rows_that_do_not_fill_whole_bytes(bits, cols):
    # group_size=3 is a valid width; the row is what cannot be packed.
    with pytest.raises(FormatError, match="do not divide"):
        QDense.from_dense(torch.randn(2, cols), bits=bits, granularity="group", group_size=3)
    q = QDense.from_dense(torch.randn(2, 12), bits=bits, granularity="group", group_size=3)
    with pytest.raises(FormatError, match="columns"):
        QDense.from_tensors(q.tensors(), {**q.params(), "shape": [2, cols]})


@pytest.mark.parametrize("value", [True, 0, -3, 5, "3", None, 2.5])
def test_qdense_group_size_must_be_a_positive_integer_divisor(value):
    q = QDense.from_dense(torch.randn(2, 12), bits=4, granularity="group", group_size=3)
    with pytest.raises(FormatError, match="group_size"):
        QDense.from_tensors(q.tensors(), {**q.params(), "group_size": value})
