"""Quantisation maths, observers and fake quantisers: hand-computed values, straight-through gradients, LSQ."""

from __future__ import annotations

import pytest
import torch

from hf_sparse.errors import ConfigError, FormatError
from hf_sparse.formats.schemes import fake_quantize, grouped, pack_codes, quantize, unpack_codes
from hf_sparse.nn.qat import FakeQuantizer
from hf_sparse.quantization import Observer, QuantizationConfig, QuantScheme, qparams_from_range, qrange


def test_ranges():
    assert qrange(8, True) == (-127, 127)
    assert qrange(8, False) == (-128, 127)
    assert qrange(4, True) == (-7, 7)
    assert qrange(2, False) == (-2, 1)
    with pytest.raises(ConfigError, match="2 to 8"):
        qrange(9, True)


def test_symmetric_int8_by_hand():
    x = torch.tensor([[-1.0, 0.0, 0.5, 2.54]])
    scale, zp = qparams_from_range(x.amin(1, keepdim=True), x.amax(1, keepdim=True), 8, True)
    assert scale.item() == pytest.approx(2.54 / 127)
    assert zp.item() == 0
    q = quantize(x, scale, zp, -127, 127)
    assert q.tolist() == [[-50, 0, 25, 127]]  # -1 / 0.02 = -50, 0.5 / 0.02 = 25
    y = fake_quantize(x, scale, zp, -127, 127)
    torch.testing.assert_close(y, q.float() * scale)


def test_asymmetric_keeps_zero_exact():
    x = torch.tensor([[0.3, 1.0, 2.2, 0.0]])  # all >= 0: the range widens to include 0
    scale, zp = qparams_from_range(x.amin(1, keepdim=True), x.amax(1, keepdim=True), 4, False)
    assert scale.item() == pytest.approx(2.2 / 15)
    assert zp.item() == -8  # qmin - round(0 / scale)
    y = fake_quantize(x, scale, zp, -8, 7)
    assert y[0, 3].item() == 0.0
    assert (y - x).abs().max().item() <= scale.item() / 2 + 1e-6


def test_straight_through_gradient_and_clipping():
    x = torch.tensor([[-3.0, -0.5, 0.4, 3.0]], requires_grad=True)
    scale = torch.tensor([[0.1]])
    y = fake_quantize(x, scale, torch.zeros(1, 1), -7, 7)  # representable range [-0.7, 0.7]
    y.sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_lsq_scale_gradient_matches_formula():
    # d/ds of s * clamp(round(x/s)) for one unclipped value is round(x/s) - x/s; for a clipped value it is qmax.
    x = torch.tensor([[0.26, 5.0]])
    s = torch.tensor([[0.1]], requires_grad=True)
    fake_quantize(x, s, torch.zeros(1, 1), -7, 7).sum().backward()
    expected = (round(0.26 / 0.1) - 0.26 / 0.1) + 7
    assert s.grad.item() == pytest.approx(expected, abs=1e-5)


def test_grouped_views():
    w = torch.arange(24.0).reshape(4, 6)
    assert grouped(w, "tensor").shape == (1, 24)
    assert grouped(w, "channel").shape == (4, 6)
    assert grouped(w, "group", 3).shape == (8, 3)
    with pytest.raises(FormatError, match="does not divide"):
        grouped(w, "group", 4)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_round_trip(bits):
    lo, hi = qrange(bits, False)
    q = torch.randint(lo, hi + 1, (5, 16), dtype=torch.int8)
    packed = pack_codes(q, bits)
    assert packed.shape == (5, 16 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, 16), q)


def test_observers():
    scheme = QuantScheme(granularity="tensor", observer="minmax")
    o = Observer(scheme)
    o.update(torch.tensor([[1.0, -2.0]]))
    o.update(torch.tensor([[3.0, -1.0]]))
    assert (o.low.item(), o.high.item()) == (-2.0, 3.0)
    ma = Observer(scheme.replace(observer="moving_average", averaging_constant=0.5))
    ma.update(torch.tensor([[0.0, 2.0]]))
    ma.update(torch.tensor([[0.0, 4.0]]))
    assert ma.high.item() == 3.0
    p = Observer(scheme.replace(observer="percentile", percentile=99.0))
    x = torch.cat([torch.linspace(-1, 1, 1000), torch.tensor([100.0])]).reshape(1, -1)
    p.update(x)
    assert p.high.item() < 2.0  # the outlier is clipped
    with pytest.raises(ConfigError, match="seen no data"):
        Observer(scheme).qparams()


def test_observer_state_round_trips():
    o = Observer(QuantScheme(granularity="tensor"))
    o.update(torch.tensor([[1.0, -2.0]]))
    fresh = Observer(QuantScheme(granularity="tensor"))
    fresh.load_state_dict(o.state_dict())
    assert fresh.high.item() == 1.0


def test_weight_quantizer_per_channel_and_group():
    w = torch.randn(8, 16)
    for scheme in (QuantScheme(bits=8), QuantScheme(bits=4, granularity="group", group_size=8, symmetric=False)):
        q = FakeQuantizer(scheme, role="weight")
        y = q(w)
        scale, _ = q.qparams(w)
        step = scale.reshape(8, -1).repeat_interleave(16 // scale.reshape(8, -1).shape[1], 1)
        assert ((y - w).abs() <= step / 2 + 1e-6).all()
        lo, hi = qrange(scheme.bits, scheme.symmetric)
        assert y.unique().numel() <= 8 * (hi - lo + 1)


def test_lsq_quantizer_learns_and_rescales_with_bits():
    w = torch.randn(4, 8)
    q = FakeQuantizer(QuantScheme(bits=8, lsq=True), role="weight", init=w)
    before = q.scale.detach().clone()
    q(w).pow(2).sum().backward()
    assert q.scale.grad is not None and q.scale.grad.abs().sum() > 0
    q.bits = 4
    torch.testing.assert_close(q.scale.detach(), before * 127 / 7)


def test_static_activation_quantizer_observes_only_when_training_or_calibrating():
    q = FakeQuantizer(QuantScheme(granularity="tensor", symmetric=False), role="activation")
    q.train()
    q(torch.tensor([[0.0, 1.0]]))
    q.eval()
    q(torch.tensor([[0.0, 10.0]]))
    assert q.observer.high.item() == 1.0
    q.calibrating = True
    q(torch.tensor([[0.0, 10.0]]))
    assert q.observer.high.item() == 10.0


def test_config_validation():
    with pytest.raises(ConfigError, match="weight.bits"):
        QuantizationConfig(weight=QuantScheme(bits=2))
    with pytest.raises(ConfigError, match="bit_schedule"):
        QuantizationConfig(weight=QuantScheme(bits=4), bit_schedule=(4, 8))
    with pytest.raises(ConfigError, match="ends at"):
        QuantizationConfig(weight=QuantScheme(bits=4), bit_schedule=(8, 6))
    with pytest.raises(ConfigError, match="Unknown key"):
        QuantizationConfig.from_dict({"weight": {"bitz": 8}})
    with pytest.raises(ConfigError, match="symmetric"):
        QuantizationConfig(activation="static", activation_scheme=QuantScheme(granularity="tensor"))
    c = QuantizationConfig(
        weight=QuantScheme(bits=4),
        bit_schedule=(8, 6, 4),
        schedule_start_step=10,
        schedule_end_step=30,
        module_bits={r".*query": 8},
    )
    assert [c.scheduled_bits(s) for s in (0, 9, 10, 29, 30, 99)] == [8, 8, 6, 6, 4, 4]
    assert c.bits_for("bert.encoder.layer.0.attention.self.query") == 8
    assert c.bits_for("bert.encoder.layer.0.attention.self.key") == 4
    assert QuantizationConfig.from_json(c.to_json()) == c
