"""hf_sparse::dequantize over every group width of 4- and 2-bit codes, odd ones included (a group may start and end
inside a packed byte): bit-exact against the pure-PyTorch QDense.to_dense, and rows that do not fill whole bytes,
groups that do not divide the row or wrong-sized codes raise a ValueError naming the argument before any write."""

import pytest
import torch

from hf_sparse.formats import QDense
from hf_sparse.quantization import QuantScheme


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_every_width_is_bit_exact(ops, bits, symmetric):
    gen = torch.Generator().manual_seed(bits + symmetric)
    for cols in (12, 36):
        for width in [w for w in range(1, cols + 1) if cols % w == 0]:
            q = QDense.from_dense(
                torch.randn(5, cols, generator=gen),
                bits=bits,
                granularity="group",
                group_size=width,
                symmetric=symmetric,
            )
            zero = q.zero_points if q.zero_points is not None else torch.empty(0, dtype=torch.int8)
            got = ops.dequantize(q.values, q.scales.float(), zero, bits, 5, cols)
            assert torch.equal(got, q.to_dense().float()), (cols, width)


def test_the_documented_odd_group_scheme(ops):
    scheme = QuantScheme(bits=4, granularity="group", group_size=3)
    q = QDense.from_dense(torch.randn(4, 18), bits=scheme.bits, granularity="group", group_size=scheme.group_size)
    got = ops.dequantize(q.values, q.scales.float(), torch.empty(0, dtype=torch.int8), 4, 4, 18)
    assert torch.equal(got, q.to_dense().float())


@pytest.mark.parametrize(
    ("bits", "cols", "packed", "groups", "match"),
    [
        (4, 9, 4, "3", "cols=9 is not a multiple of 2"),  # the row does not fill whole bytes
        (2, 6, 1, "3", "cols=6 is not a multiple of 4"),
        (4, 12, 6, "5", "scales"),  # 5 groups do not divide 12 columns
        (4, 12, 5, "4", "values"),  # codes one byte short per row
        (2, 12, 4, "4", "values"),
    ],
)
def test_malformed_widths_raise_before_any_write(ops, bits, cols, packed, groups, match):
    values = torch.zeros(3, packed, dtype=torch.uint8)
    with pytest.raises(ValueError, match=match) as info:
        ops.dequantize(values, torch.ones(3, int(groups)), torch.empty(0, dtype=torch.int8), bits, 3, cols)
    assert "hf_sparse::dequantize" in str(info.value)
