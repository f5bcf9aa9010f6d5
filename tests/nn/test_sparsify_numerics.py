"""sparsify_(numerics=...): each layer takes the option predicted fastest, dense or sparse, in any allowed arithmetic,
so a layer sparse storage does not speed up stays dense in the fastest dtype of the machine."""

import pytest
import torch

import hf_sparse
from hf_sparse.errors import ConfigError, FormatError
from hf_sparse.formats import Full
from hf_sparse.nn import SparseLinear
from hf_sparse.ops import choose_format
from hf_sparse.testing import synthetic_cost_model


def _model(bf16=True, **per_entry):
    """Dense bf16 three times cheaper than fp32, our int8 layouts slower than dense bf16 unless very sparse."""
    costs = {"dense-int8": 0.5e-9, "qbsr1x4": 2.5e-9, "qbsr16x4": 0.45e-9}
    if bf16:
        costs |= {"dense-bf16": 0.33e-9, "csr-bf16": 3.5e-9, "bsr16-bf16": 0.4e-9}
    return synthetic_cost_model(**(costs | per_entry))


def _sparse(sparsity, shape=(64, 128), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    return w * (torch.rand(*shape, generator=g) >= sparsity)


def test_a_layer_sparse_storage_does_not_speed_up_stays_dense_in_the_fastest_dtype():
    model = _model()
    half = _sparse(0.5)
    keep_only = choose_format(half, model=model)
    assert keep_only.format == "dense"  # compared with fp32 only: dense fp32
    choice = choose_format(half, model=model, numerics="fastest")
    assert choice.format == "full" and choice.params == {"dtype": "bfloat16"}
    assert choice.chosen == "bfloat16:dense"
    assert choice.seconds == pytest.approx(model.predict("dense-bf16", half.numel(), 16))
    assert "3.03x the layer dense in float32" in choice.reasons[-1]
    assert any(r.startswith("float32: kept dense") for r in choice.reasons)
    assert any(r.startswith("int8: chose qbsr16x4") for r in choice.reasons)
    stored = choice.build(half)
    assert isinstance(stored, Full) and stored.dtype == torch.bfloat16
    torch.testing.assert_close(stored.to_dense().float(), half.bfloat16().float())


def test_the_fastest_option_wins_across_dtypes_sparse_included():
    model = _model()
    very = _sparse(0.99)
    choice = choose_format(very, model=model, numerics="fastest")
    # 1% stored: fp32 CSR 0.04 ns/entry-of-dense beats dense bf16 (0.33); bf16 CSR (0.035) beats both
    assert choice.chosen == "bfloat16:csr" and choice.format == "csr" and choice.params == {"dtype": "bfloat16"}
    stored = choice.build(very)
    assert stored.dtype == torch.bfloat16 and stored.nnz == int((very != 0).sum())
    fp32_only = choose_format(very, model=model, numerics=("keep",))
    assert fp32_only.chosen == "float32:csr" and fp32_only.params == {}
    int8 = choose_format(_sparse(0.5), model=_model(bf16=False), numerics=("keep", "int8"))
    assert int8.format == "qbsr" and int8.params == {"block": (16, 4), "activation": "dynamic"}


def test_bf16_is_not_considered_without_native_bf16_and_says_so():
    choice = choose_format(_sparse(0.5), model=_model(bf16=False), numerics=("keep", "bfloat16"))
    assert choice.format == "dense"
    assert "bfloat16: not considered, this CPU has no native bf16" in choice.reasons


def test_bad_numerics_are_refused():
    w = _sparse(0.5)
    with pytest.raises(ConfigError, match="numerics must be 'fastest' or among"):
        choose_format(w, model=_model(), numerics="fp8")
    with pytest.raises(ConfigError, match="got nothing"):
        choose_format(w, model=_model(), numerics=())
    with pytest.raises(FormatError, match="numerics or activation"):
        choose_format(w, model=_model(), numerics="fastest", activation="dynamic")
    net = torch.nn.Sequential(torch.nn.Linear(16, 16))
    with pytest.raises(ConfigError, match="need format='auto'"):
        hf_sparse.sparsify_(net, format="csr", numerics="fastest", target_modules=["0"], progress=False)


def _net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    with torch.no_grad():
        net[0].weight.mul_(torch.rand(64, 128) >= 0.99)  # 99% zeros; net[2] keeps all its weights
    return net


def test_sparsify_keeps_unhelped_layers_dense_in_bf16_below_min_sparsity_too(monkeypatch):
    monkeypatch.setattr("hf_sparse.ops.choose.cost_model", lambda **_: _model())
    net = _net()
    x = torch.randn(5, 128)
    decisions = hf_sparse.sparsify_(net, numerics="fastest", target_modules=["0", "2"], progress=False)
    assert decisions["0"].choice.chosen == "bfloat16:csr"
    assert decisions["2"].choice.format == "full"  # 0% sparse: below min_sparsity, still the fastest dense
    assert isinstance(net[2], SparseLinear) and net[2].weight_format().dtype == torch.bfloat16
    ref = _net()
    out = net(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref(x), atol=0.05, rtol=0.02)  # bf16 arithmetic

    kept = _net()
    decisions = hf_sparse.sparsify_(kept, target_modules=["0", "2"], progress=False)  # numerics="keep"
    assert decisions["2"].choice.format == "dense" and isinstance(kept[2], torch.nn.Linear)


def test_a_model_with_bf16_and_int8_layers_reloads_in_a_fresh_process(tmp_path, monkeypatch):
    from hf_sparse.testing import check_fresh_process_reload, tiny_bert_classifier

    # dense int8 cheapest for full layers, bf16 CSR for very sparse ones
    cheap_int8 = _model(**{"qbsr16x4": 0.2e-9})
    monkeypatch.setattr("hf_sparse.ops.choose.cost_model", lambda **_: cheap_int8)
    model = tiny_bert_classifier(seed=3).eval()
    hf_sparse.apply_(model, hf_sparse.PruningConfig(sparsity=0.99, target_modules=["query", "key"]))
    decisions = hf_sparse.sparsify_(model, numerics="fastest", progress=False)
    formats = {n: (d.choice.format, d.choice.params.get("dtype")) for n, d in decisions.items()}
    assert formats["bert.encoder.layer.0.attention.self.query"] == ("csr", "bfloat16")
    assert formats["bert.encoder.layer.0.intermediate.dense"] == ("qbsr", None)
    check = (
        "q = m.bert.encoder.layer[0].attention.self.query.weight_format()\n"
        "assert q.name == 'csr' and q.dtype == torch.bfloat16, q"
    )
    check_fresh_process_reload(model, tmp_path, check)


def test_full_format_validates_and_round_trips():
    w = torch.randn(8, 12)
    stored = Full.from_dense(w, dtype="bfloat16")
    again = Full.from_tensors(stored.tensors(), stored.params())
    assert again.values.equal(stored.values) and again.nbytes == 8 * 12 * 2
    with pytest.raises(FormatError, match="dtype must be one of"):
        Full.from_dense(w, dtype="int4")
    with pytest.raises(FormatError, match="shape"):
        Full(torch.zeros(8, 11), (8, 12))
    mask = torch.zeros(8, 12, dtype=torch.bool)
    mask[0, 0] = True
    assert int((Full.from_dense(w, mask).to_dense() != 0).sum()) == 1
