"""Importance scores of attention heads and FFN neurons, per encoder layer: the magnitude of each unit's weights, or
its first-order Taylor estimate of the loss change (what :func:`~hf_sparse.pruning.structured.structured_prune_`
ranks units by)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.structure import EncoderLayerParts, find_encoder_layers, plain_linear, qkv_linears

__all__ = ["head_magnitude_scores", "neuron_magnitude_scores", "taylor_scores", "head_importance"]


def _head_rows(parts: EncoderLayerParts, t: torch.Tensor) -> torch.Tensor:
    """``t`` (rows = heads * head_size, ...) grouped per head: shape (heads, head_size * rest)."""
    return t.reshape(parts.num_heads, -1)


def head_magnitude_scores(model: nn.Module) -> dict[int, torch.Tensor]:
    """Per layer, the L2 norm of each head's weights: its rows of ``query``/``key``/``value`` and its columns of
    the attention output projection.

    Shapes:
        returns ``{layer: (num_heads,)}``.
    """
    scores = {}
    for parts in find_encoder_layers(model):
        with torch.no_grad():
            total = torch.zeros(parts.num_heads)
            for lin in qkv_linears(parts).values():
                total += _head_rows(parts, lin.weight.float()).pow(2).sum(1).cpu()
            out_w = plain_linear(parts, "attention_output").weight.float()  # (hidden, heads * head_size)
            total += _head_rows(parts, out_w.t()).pow(2).sum(1).cpu()
        scores[parts.index] = total.sqrt()
    return scores


def neuron_magnitude_scores(model: nn.Module) -> dict[int, torch.Tensor]:
    """Per layer, the L2 norm of each FFN neuron's weights: its row of ``intermediate.dense`` and its column of
    ``output.dense``.

    Shapes:
        returns ``{layer: (intermediate_size,)}``.
    """
    scores = {}
    for parts in find_encoder_layers(model):
        with torch.no_grad():
            rows = plain_linear(parts, "intermediate").weight.float().pow(2).sum(1)
            cols = plain_linear(parts, "ffn_output").weight.float().pow(2).sum(0)
        scores[parts.index] = (rows + cols).sqrt().cpu()
    return scores


def taylor_scores(
    model: nn.Module, batches: Iterable[Mapping[str, Any]]
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """First-order Taylor importance of every head and FFN neuron: ``|sum of w * dL/dw|`` over the unit's weights
    (and biases of its rows), with the gradient of the model's loss summed over ``batches``.

    This is the derivative of the loss with respect to a scale on the unit's weights, so it estimates how much the
    loss changes when the unit is removed. Run in eval mode (no dropout); the model's ``.grad`` fields and training
    mode are restored afterwards.

    Args:
        model: a BERT-family model whose forward returns ``loss`` when the batches carry ``labels``.
        batches: mappings of forward keyword arguments (``input_ids``, ``attention_mask``, ``labels``, ...).

    Returns:
        ``(head_scores, neuron_scores)``: ``{layer: (num_heads,)}`` and ``{layer: (intermediate_size,)}``.

    Raises:
        ConfigError: no batches, or a batch gives no loss (no labels).
    """
    layers = find_encoder_layers(model)
    params = [p for p in model.parameters() if p.requires_grad]
    saved_grads = [p.grad for p in params]
    was_training = model.training
    tracked: list[nn.Parameter] = []
    for parts in layers:
        for lin in [*qkv_linears(parts).values(), plain_linear(parts, "attention_output")]:
            tracked += [p for p in (lin.weight, lin.bias) if p is not None]
        for lin in (plain_linear(parts, "intermediate"), plain_linear(parts, "ffn_output")):
            tracked += [p for p in (lin.weight, lin.bias) if p is not None]
    flags = [p.requires_grad for p in tracked]
    device = next(model.parameters()).device
    n = 0
    try:
        model.eval()
        for p in params:
            p.grad = None
        for p in tracked:
            p.requires_grad_(True)
        for batch in batches:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dict(batch).items()}
            loss = getattr(model(**batch), "loss", None)
            if loss is None:
                raise ConfigError(
                    f"taylor scores need a loss: batch {n} gave none. Pass batches with `labels` (keys given: "
                    f"{sorted(batch)})."
                )
            loss.backward()
            n += 1
        if n == 0:
            raise ConfigError("taylor scores need at least one batch; `batches` was empty.")
        heads, neurons = {}, {}
        with torch.no_grad():
            for parts in layers:
                total = torch.zeros(parts.num_heads, device=device)
                for lin in qkv_linears(parts).values():
                    total += _head_rows(parts, lin.weight * _grad(lin.weight)).sum(1)
                    if lin.bias is not None:
                        total += _head_rows(parts, lin.bias * _grad(lin.bias)).sum(1)
                out = plain_linear(parts, "attention_output").weight
                total += _head_rows(parts, (out * _grad(out)).t()).sum(1)
                heads[parts.index] = total.abs().cpu()
                inter, ffn_out = plain_linear(parts, "intermediate"), plain_linear(parts, "ffn_output")
                unit = (inter.weight * _grad(inter.weight)).sum(1) + (ffn_out.weight * _grad(ffn_out.weight)).sum(0)
                if inter.bias is not None:
                    unit += inter.bias * _grad(inter.bias)
                neurons[parts.index] = unit.abs().cpu()
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
        for p, flag in zip(tracked, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return heads, neurons


def _grad(p: torch.Tensor) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


def head_importance(model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> dict[int, torch.Tensor]:
    """First-order Taylor importance of every attention head (see :func:`taylor_scores`).

    Shapes:
        returns ``{layer: (num_heads,)}``.
    """
    return taylor_scores(model, batches)[0]
