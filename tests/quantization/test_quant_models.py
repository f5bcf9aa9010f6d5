"""Quantised formats, QAT layers, conversion, PTQ, checkpoints and the int8-value SpMM kernel on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, Trainer

import hf_sparse  # noqa: F401  (registers the quantizer that loads the checkpoints)
from hf_sparse import DistillationCallback, PruningCallback, PruningConfig, QATCallback
from hf_sparse.errors import ConfigError, FormatError
from hf_sparse.formats import QCSR, QDense, from_tensors
from hf_sparse.nn.qat import QATEmbedding, QATLinear
from hf_sparse.nn.quant import QuantEmbedding, QuantLinear
from hf_sparse.ops import _loader, spmm
from hf_sparse.quantization import QuantizationConfig, QuantScheme, choose_bits, convert_, prepare_qat_, quantize_
from hf_sparse.quantization.apply import quantizers
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset

kernels = pytest.mark.skipif(not _loader.load(), reason="C++ ops unavailable: " + str(_loader.status()["reason"]))


def _batch(seed=0, batch=3, length=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, 128, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# -- formats ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        dict(bits=8, granularity="channel"),
        dict(bits=8, granularity="tensor", symmetric=False),
        dict(bits=4, granularity="group", group_size=4),
        dict(bits=4, granularity="channel", symmetric=False),
        dict(bits=2, granularity="channel", symmetric=False),
    ],
)
def test_qdense_round_trip(params):
    w = torch.randn(6, 16)
    q = QDense.from_dense(w, **params)
    again = from_tensors(q.tensors(), q.params())
    torch.testing.assert_close(again.to_dense(), q.to_dense())
    bits = params["bits"]
    err = (q.to_dense() - w).abs().max()
    assert err <= w.abs().max() * 2 / (2**bits - 2) + 1e-6
    assert q.nbytes < w.numel() * 4


def test_qcsr_round_trip_and_zeros():
    w = torch.randn(10, 12) * (torch.rand(10, 12) > 0.7)
    q = QCSR.from_dense(w)
    d = q.to_dense()
    assert torch.equal(d == 0, w == 0) or bool(((d == 0) | (w != 0)).all())
    assert ((d - w).abs() <= w.abs().amax(1, keepdim=True) / 254 + 1e-6).all()
    assert q.nbytes < CSR_bytes(w)


def CSR_bytes(w):
    from hf_sparse.formats import CSR

    return CSR.from_dense(w).nbytes


def test_malformed_quantised_tensors_raise():
    q = QDense.from_dense(torch.randn(4, 8), bits=8, symmetric=False)
    t = q.tensors()
    for name, bad, match in [
        ("scales", t["scales"].clone().fill_(float("nan")), "finite"),
        ("scales", -t["scales"], "finite and > 0"),
        ("scales", t["scales"][:2], "shape"),
        ("values", t["values"].to(torch.int16), "dtype"),
    ]:
        with pytest.raises(FormatError, match=match):
            from_tensors({**t, name: bad}, q.params())
    q4 = QDense.from_dense(torch.randn(4, 8), bits=4, symmetric=False)
    t4 = q4.tensors()
    with pytest.raises(FormatError, match="outside"):
        from_tensors({**t4, "zero_points": torch.full_like(t4["zero_points"], 100)}, q4.params())
    s = QCSR.from_dense(torch.randn(4, 8))
    ts = s.tensors()
    with pytest.raises(FormatError, match="outside"):
        from_tensors({**ts, "values": torch.full_like(ts["values"], -128)}, s.params())
    with pytest.raises(FormatError, match="out of range"):
        bad_cols = ts["col_indices"].clone()
        bad_cols[0] = 99
        from_tensors({**ts, "col_indices": bad_cols}, s.params())
    with pytest.raises(FormatError, match="unknown parameters"):
        from_tensors(ts, {**s.params(), "bits": 4})


# -- kernel --------------------------------------------------------------------------------------------------------
@kernels
@pytest.mark.parametrize("n", [1, 5, 16, 37])
@pytest.mark.parametrize("index_dtype_cols", [40, 40000])
def test_qcsr_kernel_matches_reference(n, index_dtype_cols):
    g = torch.Generator().manual_seed(n)
    cols = index_dtype_cols
    w = torch.randn(33, cols, generator=g) * (torch.rand(33, cols, generator=g) > 0.9)
    w[3] = 0  # an empty row
    q = QCSR.from_dense(w)
    xt = torch.randn(cols, n, generator=g)
    ref = spmm(q, xt, backend="reference")
    tol = dict(rtol=1e-4, atol=1e-5 * cols)  # float sums over up to 4,000 values per row, in another order
    torch.testing.assert_close(spmm(q, xt, backend="cpu"), ref, **tol)
    torch.testing.assert_close(spmm(q, xt, backend="cpu", transpose_out=True), ref.t(), **tol)


@kernels
def test_qcsr_kernel_gradients_and_opcheck():
    w = torch.randn(8, 12) * (torch.rand(8, 12) > 0.5)
    q = QCSR.from_dense(w)
    xt = torch.randn(12, 5, dtype=torch.float32, requires_grad=True)
    scales = q.scales.clone().requires_grad_(True)
    q2 = QCSR(q.crow_indices, q.col_indices, q.values, scales, q.shape)
    spmm(q2, xt, backend="cpu").pow(2).sum().backward()
    g_x, g_s = xt.grad.clone(), scales.grad.clone()
    xt.grad = None
    scales.grad = None
    spmm(q2, xt, backend="reference").pow(2).sum().backward()
    torch.testing.assert_close(g_x, xt.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g_s, scales.grad, rtol=1e-4, atol=1e-4)
    torch.library.opcheck(
        torch.ops.hf_sparse.spmm_qcsr,
        (q.crow_indices, q.col_indices, q.values, q.scales, 8, 12, torch.randn(12, 3), True),
    )


@kernels
def test_qcsr_kernel_rejects_bad_index_without_crashing():
    q = QCSR.from_dense(torch.randn(4, 8))
    col = q.col_indices.clone()
    col[5] = 77
    with pytest.raises(ValueError, match="out of range"):
        torch.ops.hf_sparse.spmm_qcsr(q.crow_indices, col, q.values, q.scales, 4, 8, torch.randn(8, 3), False)


# -- QAT layers ----------------------------------------------------------------------------------------------------
def test_qat_linear_gradients_reach_the_float_weight_and_keep_zeros():
    lin = torch.nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[:, :4] = 0
    m = QATLinear(
        lin,
        QuantScheme(bits=4, granularity="channel"),
        activation="dynamic",
        activation_scheme=QuantScheme(granularity="channel", symmetric=False),
    )
    m(torch.randn(3, 8)).sum().backward()
    assert lin.weight.grad is not None
    assert lin.weight.grad[:, :4].abs().sum() == 0  # pruned positions get no gradient
    assert lin.weight.grad[:, 4:].abs().sum() > 0
    assert m.weight is lin.weight


def test_prepare_convert_predicts_what_qat_computed(tmp_path):
    model = tiny_bert_classifier(seed=3)
    config = QuantizationConfig(
        weight=QuantScheme(bits=4, granularity="group", group_size=8),
        activation="static",
        activation_scheme=QuantScheme(granularity="tensor", symmetric=False, observer="minmax"),
        embedding=QuantScheme(bits=4, granularity="channel", symmetric=False),
    )
    prepared = prepare_qat_(model, config)
    assert any(isinstance(m, QATEmbedding) for m in prepared.values())
    assert not any("classifier" in n or "pooler" in n for n in prepared)
    hf_sparse.quantization.calibrate_(model, [_batch(1), _batch(2)], progress=False)
    model.eval()
    batch = _batch(5)
    with torch.no_grad():
        qat_logits = model(**batch).logits
    formats = convert_(model)
    assert set(formats.values()) == {"qdense"}
    assert any(isinstance(m, QuantLinear) for m in model.modules())
    assert any(isinstance(m, QuantEmbedding) for m in model.modules())
    with torch.no_grad():
        int_logits = model(**batch).logits
    torch.testing.assert_close(int_logits, qat_logits, rtol=1e-4, atol=1e-4)
    model.save_pretrained(tmp_path)
    spec = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["modules"]
    query = spec["bert.encoder.layer.0.attention.self.query"]["params"]
    assert query == {
        "format": "qdense",
        "shape": [32, 32],
        "bits": 4,
        "granularity": "group",
        "group_size": 8,
        "activation": "static",
    }
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, int_logits)
    sizes = sum(t.numel() * t.element_size() for t in load_file(tmp_path / "model.safetensors").values())
    assert sizes < sum(p.numel() * 4 for p in tiny_bert_classifier(seed=3).parameters()) / 2


def test_sparse_int8_converts_to_qcsr_and_reloads(tmp_path):
    model = tiny_bert_classifier(seed=4)
    hf_sparse.prune_(model, PruningConfig(sparsity=0.8))
    prepare_qat_(model, QuantizationConfig())
    model.eval()
    batch = _batch(6)
    with torch.no_grad():
        before = model(**batch).logits
    formats = convert_(model)
    assert set(formats.values()) == {"qcsr"}
    with torch.no_grad():
        after = model(**batch).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, after)


def test_corrupt_scales_in_checkpoint_raise_typed_error(tmp_path):
    model = tiny_bert_classifier(seed=5)
    quantize_(model, QuantizationConfig(), progress=False)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    key = "bert.encoder.layer.0.attention.self.query.weight_scales"
    tensors[key] = -tensors[key]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FormatError, match="scales"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)


def test_ptq_static_needs_calibration_and_dynamic_does_not():
    with pytest.raises(ConfigError, match="calibration"):
        quantize_(tiny_bert_classifier(), QuantizationConfig(activation="static"))
    model = tiny_bert_classifier(seed=6)
    batch = _batch(7)
    with torch.no_grad():
        ref = model(**batch).logits
    dyn = QuantizationConfig(
        activation="dynamic", activation_scheme=QuantScheme(granularity="tensor", symmetric=False)
    )
    quantize_(model, dyn, progress=False)
    with torch.no_grad():
        out = model(**batch).logits
    assert (out - ref).abs().max() < 0.05


def test_choose_bits_respects_the_budget():
    model = tiny_bert_classifier(seed=7)
    data = tiny_classification_dataset(16)
    batches = [
        {k: torch.tensor(data[i : i + 8][k]) for k in ("input_ids", "attention_mask", "labels")} for i in (0, 8)
    ]
    config = QuantizationConfig(weight=QuantScheme(bits=4), average_bits=6.0)
    bits = choose_bits(model, config, batches, progress=False)
    sizes = {n: model.get_submodule(n).weight.numel() for n in bits}
    assert set(bits.values()) <= {4, 8}
    assert sum(bits[n] * sizes[n] for n in bits) / sum(sizes.values()) <= 6.0 + 1e-9


# -- the Trainer callback --------------------------------------------------------------------------------------------
def test_qat_callback_schedule_convert_and_distillation(tmp_path):
    model = tiny_bert_classifier(seed=8).train()
    config = QuantizationConfig(weight=QuantScheme(bits=4), bit_schedule=(8, 4), schedule_end_step=3)
    seen = []

    class Spy(hf_sparse.callbacks.QATCallback.__mro__[1]):  # a plain TrainerCallback
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(next(iter(quantizers(kwargs["model"], "weight").values())).bits)

    distil = DistillationCallback(None, alpha=0.5)
    qat = QATCallback(config, convert_at_end=True)
    trainer = Trainer(
        model=model,
        args=cpu_training_args(tmp_path, max_steps=5, per_device_train_batch_size=8, learning_rate=1e-3),
        train_dataset=tiny_classification_dataset(64),
        callbacks=[distil, qat, Spy()],
    )
    trainer.train()
    assert seen == [8, 8, 8, 4, 4]
    # The teacher is the float model: its snapshot has its quantisers off.
    assert all(not q.enabled for q in quantizers(distil.distiller.teacher).values())
    assert qat.converted and set(qat.converted.values()) == {"qdense"}
    assert any(isinstance(m, QuantLinear) for m in model.modules())


def test_qat_composes_with_pruning(tmp_path):
    model = tiny_bert_classifier(seed=9).train()
    prepare_qat_(model, QuantizationConfig())
    prune = PruningCallback(PruningConfig(sparsity=0.75, schedule="oneshot"))
    trainer = Trainer(
        model=model,
        args=cpu_training_args(tmp_path, max_steps=3, per_device_train_batch_size=8),
        train_dataset=tiny_classification_dataset(32),
        callbacks=[prune, QATCallback(QuantizationConfig())],
    )
    trainer.train()
    formats = convert_(model)
    assert set(formats.values()) == {"qcsr"}
    weights = [m.weight_format() for m in model.modules() if isinstance(m, QuantLinear)]
    stored = sum(w.nnz for w in weights)
    assert stored <= 0.251 * sum(w.shape[0] * w.shape[1] for w in weights)  # the pruned zeros stayed zero


@kernels
@pytest.mark.parametrize("n", [1, 7, 32, 70])
@pytest.mark.parametrize("quantized", [False, True])
def test_linear_layout_kernels_match_and_train(n, quantized):
    from hf_sparse.formats import CSR
    from hf_sparse.ops import sparse_linear

    g = torch.Generator().manual_seed(n)
    w = torch.randn(20, 24, generator=g) * (torch.rand(20, 24, generator=g) > 0.6)
    fmt = QCSR.from_dense(w) if quantized else CSR.from_dense(w)
    dense_w = fmt.to_dense()
    x = torch.randn(n, 24, generator=g, requires_grad=True)
    values = fmt.scales if quantized else fmt.values
    values = values.clone().requires_grad_(True)
    fmt = (
        QCSR(fmt.crow_indices, fmt.col_indices, fmt.values, values, fmt.shape)
        if quantized
        else CSR(fmt.crow_indices, fmt.col_indices, values, fmt.shape)
    )
    y = sparse_linear(fmt, x)
    torch.testing.assert_close(y, x.detach() @ dense_w.t(), rtol=1e-5, atol=1e-5)
    y.pow(2).sum().backward()
    gx, gv = x.grad.clone(), values.grad.clone()
    x.grad = None
    values.grad = None
    spmm(fmt, x.t(), backend="reference").t().pow(2).sum().backward()
    torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gv, values.grad, rtol=1e-4, atol=1e-4)
    args = (fmt.crow_indices, fmt.col_indices, fmt.values.detach())
    if quantized:
        torch.library.opcheck(
            torch.ops.hf_sparse.linear_qcsr, (*args, fmt.scales.detach(), 20, 24, torch.randn(5, 24))
        )
    else:
        torch.library.opcheck(torch.ops.hf_sparse.linear_csr, (*args, 20, 24, torch.randn(5, 24)))


@kernels
@pytest.mark.parametrize(
    "params",
    [
        dict(bits=8, granularity="channel"),
        dict(bits=8, granularity="tensor", symmetric=False),
        dict(bits=4, granularity="group", group_size=8, symmetric=False),
        dict(bits=4, granularity="channel"),
        dict(bits=2, granularity="group", group_size=4, symmetric=False),
    ],
)
def test_dequantize_kernel_matches_to_dense(params):
    from hf_sparse.ops import dequantize_weight

    q = QDense.from_dense(torch.randn(9, 24), **params)
    torch.testing.assert_close(dequantize_weight(q), q.to_dense())
    with pytest.raises(ValueError, match="scales"):
        torch.ops.hf_sparse.dequantize(q.values, q.scales.double(), torch.empty(0, dtype=torch.int8), q.bits, 9, 24)


@kernels
def test_quant_scheme_with_an_odd_group_runs_a_model_as_the_reference():
    """``QuantScheme(bits=4, granularity="group", group_size=3)``: the documented scheme quantises a model whose
    rows are a multiple of 3, and the kernel's forward equals the reference dequantisation."""
    from hf_sparse.ops import dequantize_weight

    torch.manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Linear(30, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    quantize_(model, QuantizationConfig(weight=QuantScheme(bits=4, granularity="group", group_size=3)), progress=False)
    layers = [m for m in model.modules() if isinstance(m, QuantLinear) and isinstance(m.weight_format(), QDense)]
    assert layers and all(m.weight_format().group_size == 3 for m in layers)
    for layer in layers:
        assert torch.equal(dequantize_weight(layer.weight_format()), layer.weight_format().to_dense())
    x = torch.randn(2, 5, layers[0].in_features)
    expected = torch.nn.functional.linear(x, layers[0].weight_format().to_dense(), layers[0].bias)
    torch.testing.assert_close(layers[0](x), expected)


def test_inspect_reports_quantised_layers(tmp_path):
    from hf_sparse.integrations.inspect import inspect_checkpoint

    model = tiny_bert_classifier(seed=10)
    quantize_(model, QuantizationConfig(weight=QuantScheme(bits=4, granularity="group", group_size=8)), progress=False)
    model.save_pretrained(tmp_path)
    report = inspect_checkpoint(tmp_path)
    layer = report["layers"][0]
    assert layer["format"] == "qdense" and layer["bits"] == 4
    assert layer["stored_fraction"] == 1.0
    assert layer["bytes"] < layer["dense_fp32_bytes"] / 3  # 4-bit codes plus a float scale per 8 weights
