"""Per-layer mixed precision from a measured sensitivity scan (adaptive quantisation).

Each selected Linear layer is quantised alone to the lowest candidate width and the loss increase on a few real
batches is measured; layers then start at the lowest width and the ones whose increase per parameter is largest are
raised to the highest width while the parameter-weighted mean width stays within the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..nn.qat import FakeQuantizer
from .config import QuantizationConfig

__all__ = ["choose_bits", "layer_sensitivity"]


def _model_loss(model: nn.Module, batch: Mapping[str, Any]) -> float:
    out = model(**batch)
    loss = getattr(out, "loss", None)
    if loss is None:
        raise ConfigError("choose_bits: the model returned no loss; give batches with labels or a loss_fn.")
    return float(loss)


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    config: QuantizationConfig,
    batches: Iterable[Mapping[str, Any]],
    *,
    bits: int,
    loss_fn: Callable[[nn.Module, Mapping[str, Any]], float] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """The loss increase when each selected Linear layer alone has ``bits``-bit weights (the model's other layers
    float), averaged over ``batches``.

    Returns:
        layer name -> loss increase (negative values are noise: a layer that does not mind).
    """
    from ..nn.linear_like import linear_weight
    from ..nn.matching import match_linears

    loss_fn = loss_fn or _model_loss
    device = next(model.parameters()).device
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
    if not batches:
        raise ConfigError("choose_bits: no batches to measure the sensitivity on.")
    linears = match_linears(model, config.target_modules, config.exclude_modules, who="QuantizationConfig")
    was_training = model.training
    model.eval()
    try:
        base = sum(loss_fn(model, b) for b in batches) / len(batches)
        out = {}
        for name, linear in tqdm(linears.items(), desc=f"Sensitivity at {bits} bits", disable=not progress):
            quantizer = FakeQuantizer(config.weight.replace(bits=bits, lsq=False), role="weight")
            weight = linear_weight(linear)  # (out, in): per-channel scales are per output row, Conv1D's too
            original = weight.detach().clone()
            weight.copy_(quantizer(original))
            try:
                out[name] = sum(loss_fn(model, b) for b in batches) / len(batches) - base
            finally:
                weight.copy_(original)
    finally:
        model.train(was_training)
    return out


def choose_bits(
    model: nn.Module,
    config: QuantizationConfig,
    batches: Iterable[Mapping[str, Any]],
    *,
    loss_fn: Callable[[nn.Module, Mapping[str, Any]], float] | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Weight bit widths per layer with a parameter-weighted mean of at most ``config.average_bits``, from
    :func:`layer_sensitivity` at the lowest of ``config.bit_candidates``.

    Returns:
        layer name -> bits (for ``QuantizationConfig.module_bits``).

    Raises:
        ConfigError: ``average_bits`` is not set, or no batches are given.
    """
    if config.average_bits is None:
        raise ConfigError("choose_bits needs QuantizationConfig.average_bits (e.g. 5.0 for a mix of 4 and 8 bits).")
    low, high = min(config.bit_candidates), max(config.bit_candidates)
    drops = layer_sensitivity(model, config, batches, bits=low, loss_fn=loss_fn, progress=progress)
    sizes = {n: model.get_submodule(n).weight.numel() for n in drops}
    total = sum(sizes.values())
    bits = {n: low for n in drops}
    budget = config.average_bits * total
    used = low * total
    for name in sorted(drops, key=lambda n: drops[n] / sizes[n], reverse=True):
        extra = (high - low) * sizes[name]
        if drops[name] <= 0 or used + extra > budget + 1e-9:
            continue
        bits[name] = high
        used += extra
    return bits
