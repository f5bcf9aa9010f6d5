"""Model transforms: ``prepare_qat_`` (fake quantisation for training), ``convert_`` (integer layers),
``quantize_`` (post-training quantisation: prepare, calibrate, convert) and the helpers around them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..formats import QBSR, QCSR, QNM, QDense
from ..nn.qat import FakeQuantizer, QATEmbedding, QATLinear
from ..nn.quant import QuantEmbedding, QuantLinear
from ..nn.replace import replace_module
from .config import QuantizationConfig

__all__ = [
    "prepare_qat_",
    "convert_",
    "quantize_",
    "calibrate_",
    "set_weight_bits",
    "quantizers",
    "quantization_report",
]


def _inside_wrapper(name: str, wrappers: Iterable[str]) -> bool:
    return any(name == w or name.startswith(w + ".") for w in wrappers)


def _qat_modules(model: nn.Module) -> dict[str, QATLinear | QATEmbedding]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (QATLinear, QATEmbedding))}


def prepare_qat_(model: nn.Module, config: QuantizationConfig) -> dict[str, nn.Module]:
    """Replace the selected ``nn.Linear`` layers by :class:`~hf_sparse.nn.qat.QATLinear` (and the selected
    embedding tables by :class:`~hf_sparse.nn.qat.QATEmbedding`), in place: the first of QAT's two steps.

    The layers' parameters are reused, not copied; call this before the optimizer is built (the Trainer builds it
    in ``train()``), since learned step sizes (``lsq``) add parameters. Already prepared layers are left alone.

    Returns:
        The prepared modules by name.

    Raises:
        ConfigError: ``config`` is not a QuantizationConfig, nothing matches, or a scheme does not fit a layer
            (e.g. a ``group_size`` that does not divide its width).
    """
    from ..nn.matching import match_embeddings, match_linears

    if not isinstance(config, QuantizationConfig):
        raise ConfigError(f"prepare_qat_ needs a QuantizationConfig, got {type(config).__name__}.")
    wrappers = list(_qat_modules(model))
    linears = {
        n: m
        for n, m in match_linears(
            model, config.target_modules, config.exclude_modules, who="QuantizationConfig"
        ).items()
        if not _inside_wrapper(n, wrappers)
    }
    embeddings: dict[str, nn.Embedding] = {}
    if config.embedding is not None:
        if config.embedding.observer != "minmax" and not config.embedding.lsq:
            raise ConfigError(
                "QuantizationConfig.embedding.observer must be 'minmax' (or use lsq): an embedding row's range is "
                "that of its current values."
            )
        embeddings = {
            n: m
            for n, m in match_embeddings(model, config.embedding_modules, who="QuantizationConfig").items()
            if not _inside_wrapper(n, wrappers)
        }
    start_bits = config.bit_schedule[0] if config.bit_schedule else None
    prepared: dict[str, nn.Module] = {}
    for name, linear in linears.items():
        bits = config.bits_for(name)
        scheme = config.weight.replace(bits=bits)
        try:
            module = QATLinear(
                linear,
                scheme,
                activation=config.activation,
                activation_scheme=config.activation_scheme,
                keep_sparsity=config.keep_sparsity,
            )
        except Exception as exc:
            raise ConfigError(f"QuantizationConfig cannot quantise {name!r}: {exc}") from None
        if start_bits is not None:
            module.weight_quantizer.bits = max(start_bits, bits)
        module.hf_sparse_quantization = config
        replace_module(model, name, module)
        prepared[name] = module
    for name, embedding in embeddings.items():
        try:
            module = QATEmbedding(embedding, config.embedding)
        except Exception as exc:
            raise ConfigError(f"QuantizationConfig cannot quantise embedding {name!r}: {exc}") from None
        module.hf_sparse_quantization = config
        replace_module(model, name, module)
        prepared[name] = module
    return prepared


def quantizers(model: nn.Module, role: str | None = None) -> dict[str, FakeQuantizer]:
    """The model's fake quantisers by name (``role``: only ``"weight"`` or ``"activation"`` ones)."""
    return {
        n: m for n, m in model.named_modules() if isinstance(m, FakeQuantizer) and (role is None or m.role == role)
    }


def set_weight_bits(model: nn.Module, step: int) -> dict[str, int]:
    """Set every QAT layer's weight bit width for training step ``step`` from its config's ``bit_schedule`` (a
    layer never goes below its own final width). Returns the widths by layer name."""
    out = {}
    for name, module in _qat_modules(model).items():
        config: QuantizationConfig = module.hf_sparse_quantization
        final = module.weight_quantizer.scheme.bits
        if isinstance(module, QATEmbedding) or not config.bit_schedule:
            bits = final
        else:
            bits = max(config.scheduled_bits(step), final)
        module.weight_quantizer.bits = bits
        out[name] = bits
    return out


@torch.no_grad()
def calibrate_(model: nn.Module, batches: Iterable[Mapping[str, Any]], *, progress: bool = True) -> int:
    """Run ``batches`` (dicts of model inputs) through a prepared model in eval mode so that static activation
    ranges observe real data. Returns the number of batches seen.

    Raises:
        ConfigError: the model has no activation quantisers to calibrate, or ``batches`` is empty.
    """
    acts = quantizers(model, "activation")
    if not acts:
        raise ConfigError("calibrate_: the model has no activation quantisers (prepare it with activation='static').")
    was_training = model.training
    model.eval()
    for q in acts.values():
        q.calibrating = True
    seen = 0
    device = next(model.parameters()).device
    try:
        for batch in tqdm(batches, desc="Calibrating", disable=not progress):
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "labels"}
            model(**inputs)
            seen += 1
    finally:
        for q in acts.values():
            q.calibrating = False
        model.train(was_training)
    if not seen:
        raise ConfigError("calibrate_: no calibration batches were given.")
    return seen


def sparse_layout(keep: torch.Tensor) -> tuple[str, dict[str, Any]]:
    """The sparse int8 storage that fits a keep-mask's structure: ``("nm", {"n", "m"})`` when every group of ``m``
    consecutive columns keeps at most ``n`` and most groups keep exactly ``n`` (m = 4, 8, 16 tried in turn);
    ``("bsr", {"block"})`` when the kept positions fill whole blocks (32x32, 16x16, 8x8, 4x4 tried in turn; at most
    5% explicit zeros stored); else ``("csr", {})``."""
    rows, cols = keep.shape
    nnz = int(keep.sum())
    if nnz == 0:
        return "csr", {}
    for m in (4, 8, 16):
        if cols % m:
            continue
        counts = keep.reshape(rows, cols // m, m).sum(-1)
        n = int(counts.max())
        if n < m and nnz >= 0.9 * n * counts.numel():
            return "nm", {"n": n, "m": m}
    for r, c in ((32, 32), (16, 16), (8, 8), (4, 4)):
        if rows % r or cols % c:
            continue
        blocks = int(keep.reshape(rows // r, r, cols // c, c).any(dim=(1, 3)).sum())
        if blocks * r * c <= 1.05 * nnz:
            return "bsr", {"block": (r, c)}
    return "csr", {}


_SPARSE_INT8 = {"csr": QCSR, "bsr": QBSR, "nm": QNM}


def _linear_format(module: QATLinear, config: QuantizationConfig, format: str | None) -> QDense | QCSR | QBSR | QNM:
    q = module.weight_quantizer
    weight = module.float_weight().detach()
    scale, zero_point = q.qparams(weight)
    scheme, bits = q.scheme, q.bits
    if bits not in (4, 8):
        raise ConfigError(
            f"convert_: a layer is at {bits} bits; integer layers store 8 or 4. Finish the bit schedule first."
        )
    wanted = format or config.convert_format
    sparsity = float((weight == 0).float().mean())
    sparse_ok = bits == 8 and scheme.symmetric and scheme.granularity in ("channel", "tensor")
    if wanted in _SPARSE_INT8 and not sparse_ok:
        raise ConfigError(
            f"convert_: format {wanted!r} stores symmetric int8 values with one scale per row; this layer is "
            f"{bits}-bit, {scheme.granularity}, {'symmetric' if scheme.symmetric else 'asymmetric'}. Use 'dense'."
        )
    use_sparse = wanted in _SPARSE_INT8 or (wanted == "auto" and sparse_ok and sparsity >= config.min_sparsity)
    activation = None if module.activation == "none" else module.activation
    input_scale = input_zero = None
    if activation == "static":
        s, z = module.input_quantizer.qparams()
        input_scale, input_zero = s.reshape(1, 1).float(), z.reshape(1, 1).to(torch.int8)
    rows = weight.shape[0]
    if use_sparse:
        row_scale = scale.reshape(-1).expand(rows) if scale.numel() == 1 else scale.reshape(-1)
        fmt = QDense.from_dense(weight, bits=8, granularity="channel", symmetric=True, scales=row_scale)
        dense = fmt.to_dense()  # the fake-quantised weight; its non-zeros are what the sparse int8 format stores
        keep = weight != 0  # the pruning pattern (a kept weight may round to code 0)
        layout, params = sparse_layout(keep)
        if wanted in _SPARSE_INT8 and wanted != layout:
            if wanted == "nm":
                raise ConfigError(
                    "convert_: format 'nm' needs an n:m pattern (at most n kept in every m consecutive weights, "
                    "m = 4, 8 or 16); this layer has none. Prune with granularity 'nm', or use 'csr'."
                )
            layout, params = wanted, ({"block": (16, 16)} if wanted == "bsr" else {})
        # CSR drops codes that rounded to zero; n:m slots and blocks keep the pattern's shape.
        mask = dense != 0 if layout == "csr" else keep
        out = _SPARSE_INT8[layout].from_dense(dense, mask, scales=row_scale, **params)
    else:
        out = QDense.from_dense(
            weight,
            bits=bits,
            granularity=scheme.granularity,
            group_size=scheme.group_size,
            symmetric=scheme.symmetric,
            scales=scale,
            zero_points=None if scheme.symmetric else zero_point,
        )
    out._set_input(activation, input_scale, input_zero)
    out.validate()
    return out


def convert_(model: nn.Module, *, format: str | None = None) -> dict[str, str]:
    """Turn every QAT layer into its integer layer, in place: the second of QAT's two steps.

    ``QATLinear`` -> :class:`~hf_sparse.nn.quant.QuantLinear` (for sparse int8 layers ``qnm`` when the pattern
    is n:m, ``qbsr`` when it is whole blocks, else ``qcsr`` — see :func:`sparse_layout`; ``qdense`` otherwise;
    ``format`` overrides the config's ``convert_format``), ``QATEmbedding`` ->
    :class:`~hf_sparse.nn.quant.QuantEmbedding`. The integer weights dequantise to exactly the weights the last
    QAT forward pass used, so predictions are those of the trained model (up to float summation order).
    ``model.save_pretrained`` then writes codes and scales, and ``config.json`` records each layer's scheme.

    Returns:
        The storage format of each converted layer, by name.

    Raises:
        ConfigError: the model has no QAT layers, or a layer's scheme cannot be stored as asked.
    """
    if format not in (None, "auto", "dense", "csr", "bsr", "nm"):
        raise ConfigError(f"convert_: format must be 'auto', 'dense', 'csr', 'bsr' or 'nm', got {format!r}.")
    modules = _qat_modules(model)
    if not modules:
        raise ConfigError("convert_: the model has no QAT layers; call prepare_qat_ (or quantize_) first.")
    out = {}
    for name, module in modules.items():
        config: QuantizationConfig = module.hf_sparse_quantization
        with torch.no_grad():
            if isinstance(module, QATLinear):
                fmt = _linear_format(module, config, format)
                bias = module.base_layer.bias
                new: nn.Module = QuantLinear(fmt, bias.detach() if bias is not None else None)
            else:
                q = module.weight_quantizer
                scale, zero_point = q.qparams(module.base_layer.weight)
                fmt = QDense.from_dense(
                    module.base_layer.weight.detach(),
                    bits=q.bits,
                    granularity=q.scheme.granularity,
                    group_size=q.scheme.group_size,
                    symmetric=q.scheme.symmetric,
                    scales=scale,
                    zero_points=None if q.scheme.symmetric else zero_point,
                )
                new = QuantEmbedding(fmt, module.padding_idx)
        new.to(module.base_layer.weight.device)
        replace_module(model, name, new)
        out[name] = fmt.name
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        # What save_pretrained writes to config.json: each integer layer's scheme, so from_pretrained rebuilds it.
        from ..nn.description import sparse_config_for

        config.quantization_config = sparse_config_for(model)
    return out


def quantize_(
    model: nn.Module,
    config: QuantizationConfig,
    calibration: Iterable[Mapping[str, Any]] | None = None,
    *,
    format: str | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Post-training quantisation, in place: prepare, calibrate static activation ranges on ``calibration``
    batches (dicts of model inputs, e.g. real training examples), convert.

    Weights get their scales from their own range (min-max, or the percentile observer); ``activation="dynamic"``
    and weight-only quantisation need no calibration data.

    Returns:
        The storage format of each converted layer (see :func:`convert_`).

    Raises:
        ConfigError: static activations without calibration batches, or any error of :func:`prepare_qat_`.
    """
    if not isinstance(config, QuantizationConfig):
        raise ConfigError(f"quantize_ needs a QuantizationConfig, got {type(config).__name__}.")
    if config.activation == "static" and calibration is None:
        raise ConfigError(
            "quantize_: static activation quantisation needs calibration batches (e.g. 32 batches of real "
            "training inputs); pass calibration=..., or use activation='dynamic'."
        )
    if config.weight.lsq or (config.embedding is not None and config.embedding.lsq):
        raise ConfigError("quantize_: learned step sizes (lsq) need training; use prepare_qat_ / QATCallback.")
    prepare_qat_(model, config)
    if config.activation == "static":
        calibrate_(model, calibration, progress=progress)
    return convert_(model, format=format)


def quantization_report(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per integer layer: its format, bits, input quantisation and stored bytes (weights and scales)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (QuantLinear, QuantEmbedding)):
            fmt = module.weight_format()
            out[name] = {
                "format": fmt.name,
                "bits": getattr(fmt, "bits", 8),
                "activation": fmt.activation or "none",
                "shape": list(fmt.shape),
                "nbytes": fmt.nbytes,
                "float_bytes": fmt.shape[0] * fmt.shape[1] * 4,
            }
    return out
