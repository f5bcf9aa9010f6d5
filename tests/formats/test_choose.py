"""choose_format: decisions from a cost model, reasons a user can read, and the per-machine calibration cache."""

import pytest
import torch

from hf_sparse.errors import FormatError
from hf_sparse.ops import CostModel, calibrate, choose_format, cost_model
from hf_sparse.testing import synthetic_cost_model


def _model(**per_entry):
    """A deterministic cost model: seconds per stored entry, the same at every N, no call overhead."""
    return synthetic_cost_model(**per_entry)


def _unstructured(sparsity, shape=(64, 128), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    return w * (torch.rand(*shape, generator=g) >= sparsity)


def test_sparse_enough_unstructured_goes_csr_and_says_why():
    choice = choose_format(_unstructured(0.9), model=_model(), candidates=("csr", "bsr16", "nm2:4"))
    assert choice.format == "csr" and choice.params == {}
    assert choice.predicted_s["csr"] < choice.predicted_s["dense"]
    assert any(r.startswith("chose csr: predicted") for r in choice.reasons)
    assert any(r.startswith("nm2:4: not applicable") for r in choice.reasons)


def test_keeps_dense_when_sparse_is_predicted_slower():
    choice = choose_format(_unstructured(0.5), model=_model())
    assert choice.format == "dense" and not choice.is_sparse
    assert "kept dense: the best sparse format" in choice.reasons[-1]
    with pytest.raises(FormatError, match="kept this weight dense"):
        choice.build(torch.ones(2, 2))


def test_blocks_and_two_four_patterns_are_recognised():
    w = torch.randn(64, 128)
    keep = (torch.rand(4, 8) < 0.2).repeat_interleave(16, 0).repeat_interleave(16, 1)
    keep[:16, :16] = True
    choice = choose_format(w * keep, model=_model())
    assert choice.format == "bsr" and choice.params == {"block": (16, 16)}
    stored = choice.build(w * keep)
    torch.testing.assert_close(stored.to_dense(), w * keep)

    top = torch.rand(64, 32, 4).argsort(-1)[..., :2]
    keep24 = torch.zeros(64, 32, 4, dtype=torch.bool).scatter_(-1, top, True).reshape(64, 128)
    choice = choose_format(w * keep24, model=_model())
    assert choice.format == "nm" and choice.params == {"n": 2, "m": 4}
    assert choice.build(w * keep24).to_dense().equal(w * keep24)


def test_hybrid_when_a_few_rows_are_dense():
    w = _unstructured(0.97, shape=(64, 128))
    w[:4] = torch.randn(4, 128)
    choice = choose_format(w, model=_model(csr=1.5e-9), candidates=("csr", "hybrid"))
    assert choice.format == "hybrid", choice.reasons
    assert choice.build(w).to_dense().equal(w)


def test_other_devices_and_bad_arguments():
    choice = choose_format(_unstructured(0.9), device="cuda", model=_model())
    assert choice.format == "dense" and "cuda" in choice.reasons[0]
    with pytest.raises(FormatError, match="unknown candidates"):
        choose_format(_unstructured(0.9), candidates=("ell",), model=_model())
    with pytest.raises(FormatError, match="batch_hint"):
        choose_format(_unstructured(0.9), batch_hint=0, model=_model())


def test_calibration_is_measured_cached_and_reused(tmp_path, monkeypatch):
    import hf_sparse.ops.choose as choose

    monkeypatch.setenv("HF_SPARSE_CACHE", str(tmp_path))
    model = cost_model(recalibrate=True)
    expected = {"dense", "csr", "bsr16", "bsr32", "nm2:4"}
    if model.backend == "cpu-kernels":  # the integer kernels and the other dense configurations of this machine
        expected |= {"qbsr1x4", "qbsr16x4", *(["dense-bf16", *choose.BF16_KINDS] if choose.native_bf16() else [])}
        expected |= {"dense-int8"} & set(model.per_entry)  # a torch build without a quantized engine has none
    assert set(model.per_entry) == expected
    assert all(v > 0 for f in model.per_entry.values() for v in f.values())
    files = list((tmp_path / "cost_model").glob("*.json"))
    assert len(files) == 1
    assert CostModel.from_json(files[0].read_text()) == model

    monkeypatch.setattr(choose, "_MODELS", {})
    monkeypatch.setattr(choose, "calibrate", lambda: pytest.fail("the cached model should have been used"))
    assert cost_model() == model
    files[0].write_text("{not json")
    monkeypatch.setattr(choose, "_MODELS", {})
    monkeypatch.setattr(choose, "calibrate", lambda: model)
    assert cost_model() == model  # a damaged cache is recalibrated, not trusted


def test_calibrate_predicts_sparse_faster_when_very_sparse():
    model = calibrate()
    w = _unstructured(0.97, shape=(768, 768))
    choice = choose_format(w, batch_hint=16, model=model)
    if model.backend == "cpu-kernels":
        assert choice.is_sparse, choice.reasons


def test_blocks_covering_nearly_the_whole_matrix_are_never_chosen_even_if_predicted_cheap():
    # 50% unstructured: every 16x16 block holds a kept weight, so BSR would multiply the whole matrix.
    choice = choose_format(_unstructured(0.5), batch_hint=128, model=_model(bsr16=0.1e-9, bsr32=0.1e-9))
    assert choice.format != "bsr"
    assert any("bsr16: not useful" in r and "100% of the dense entries" in r for r in choice.reasons)


def test_int8_choice_picks_the_faster_layout_and_never_changes_the_numbers():
    # 16 x 4 blocks cost less per stored entry (one row per lane), 1 x 4 blocks store fewer entries when scattered
    model = _model(**{"qbsr1x4": 0.5e-9, "qbsr16x4": 0.2e-9, "dense-int8": 0.3e-9})
    w = torch.randn(64, 128)
    scattered = w * (torch.rand(64, 128) >= 0.9)
    choice = choose_format(scattered, model=model, activation="dynamic")
    assert choice.format == "qbsr" and choice.params == {"block": (1, 4), "activation": "dynamic"}
    assert {"qbsr1x4", "qbsr16x4", "dense", "dense-int8"} <= set(choice.predicted_s)
    assert "torch's dense dynamic int8" in choice.reasons[-1]
    blocks = (torch.rand(4, 32) >= 0.5).repeat_interleave(16, 0).repeat_interleave(4, 1)
    choice16 = choose_format(w * blocks, model=model, activation="dynamic")
    assert choice16.params == {"block": (16, 4), "activation": "dynamic"}
    dense = choose_format(w, model=model, activation="dynamic")  # nothing pruned: the dense int8 layout
    assert dense.params["block"] == (16, 4)
    stored = dense.build(w)
    assert stored.activation == "dynamic" and stored.nnz == w.numel()


def test_int8_choice_reports_what_cannot_apply():
    model = _model(**{"qbsr1x4": 0.5e-9, "qbsr16x4": 0.2e-9})
    choice = choose_format(torch.randn(40, 128), model=model, activation="dynamic")  # 40 rows: no 16 x 4
    assert choice.params["block"] == (1, 4)
    assert any(r.startswith("qbsr16x4: not applicable") for r in choice.reasons)
    odd = choose_format(torch.randn(40, 66), model=model, activation="dynamic")
    assert odd.format == "dense" and "no int8 layout applies" in odd.reasons[-1]
    uncalibrated = choose_format(torch.randn(64, 128), model=_model(), activation="dynamic")
    assert uncalibrated.format == "dense" and any("not calibrated" in r for r in uncalibrated.reasons)
    with pytest.raises(FormatError, match="activation"):
        choose_format(torch.randn(4, 4), model=model, activation="static")
    with pytest.raises(FormatError, match="unknown candidates"):
        choose_format(torch.randn(4, 4), model=model, activation="dynamic", candidates=("csr",))


def test_sparsify_auto_with_dynamic_activation_makes_every_layer_int8(monkeypatch):
    import hf_sparse
    from hf_sparse.nn import SparseLinear

    model = _model(**{"qbsr1x4": 0.5e-9, "qbsr16x4": 0.2e-9})
    monkeypatch.setattr("hf_sparse.ops.choose.cost_model", lambda **_: model)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    with torch.no_grad():
        net[0].weight.mul_(torch.rand(64, 128) >= 0.9)  # 90% zeros; net[2] keeps all its weights
    x = torch.randn(3, 128)
    decisions = hf_sparse.sparsify_(net, activation="dynamic", progress=False)
    assert isinstance(net[0], SparseLinear) and isinstance(net[2], SparseLinear)  # min_sparsity does not apply
    assert decisions["0"].choice.params["block"] == (1, 4) and decisions["2"].choice.params["block"] == (16, 4)
    assert net[2].weight_format().activation == "dynamic"
    with pytest.raises(hf_sparse.ConfigError, match="activation"):
        hf_sparse.sparsify_(net, activation="int4", progress=False)
    assert net(x).shape == (3, 32)


def test_bf16_weights_are_compared_at_bf16_costs():
    # dense bf16 three times cheaper than fp32; our bf16 CSR a bit cheaper than fp32 CSR
    model = _model(**{"dense-bf16": 0.33e-9, "csr-bf16": 3.5e-9, "bsr16-bf16": 1.1e-9})
    w = _unstructured(0.9)
    assert choose_format(w, model=model).format == "csr"  # fp32: 10% stored x 4 < dense
    choice = choose_format(w.bfloat16(), model=model)
    assert choice.format == "dense"  # bf16: 10% x 3.5 > 0.33 x 0.9: dense bf16 wins
    assert choice.predicted_s["dense"] == pytest.approx(model.predict("dense-bf16", w.numel(), 16))
    assert any("bsr32, nm2:4: not calibrated with bf16 values" in r for r in choice.reasons)
    sparser = choose_format(_unstructured(0.99).bfloat16(), model=model)
    assert sparser.format == "csr"
    no_bf16 = choose_format(w.bfloat16(), model=_model())  # a machine without native bf16: float32 costs
    assert any("no native bf16" in r for r in no_bf16.reasons)


def test_amx_int8_blocks_are_a_candidate_only_where_calibrated():
    w = torch.randn(64, 128)
    keep = (torch.rand(4, 2) < 0.5).repeat_interleave(16, 0).repeat_interleave(64, 1)
    keep[:16, :64] = True
    plain = _model(**{"qbsr1x4": 0.5e-9, "qbsr16x4": 0.4e-9})
    choice = choose_format(w * keep, model=plain, activation="dynamic")
    assert not any(r.startswith("qbsr16x64") for r in choice.reasons)  # not offered where AMX is not in use
    asked = choose_format(w * keep, model=plain, activation="dynamic", candidates=("qbsr16x64",))
    assert "qbsr16x64: not calibrated here (no AMX int8 tile kernels in use)" in asked.reasons
    amx = _model(**{"qbsr1x4": 0.5e-9, "qbsr16x4": 0.4e-9, "qbsr16x64": 0.1e-9})
    choice = choose_format(w * keep, model=amx, activation="dynamic")
    assert choice.params == {"block": (16, 64), "activation": "dynamic"} and choice.chosen == "qbsr16x64"
    stored = choice.build(w * keep)
    assert stored.nnz == int(keep.sum())


def test_amx_in_use_reads_the_kernel_status(monkeypatch):
    from hf_sparse.ops import _loader, choose

    monkeypatch.setattr(_loader, "load", lambda: True)
    for line, want in (
        ("amx: in use: int8 tiles ..., bf16 tiles ...; calls: int8 0, bf16 0", {"int8", "bf16"}),
        ("amx: in use: int8 tiles ...; bf16 off (CPU lacks amx_bf16); calls: int8 0, bf16 0", {"int8"}),
        ("amx: CPU lacks amx_tile; calls: int8 0, bf16 0", set()),
    ):
        monkeypatch.setattr(_loader, "status", lambda line=line: {"amx": line})
        assert choose.amx_in_use() == want
