"""Importance scores of attention heads (key/value groups under grouped-query attention) and FFN neurons, per
layer: the magnitude of each unit's weights, or its first-order Taylor estimate of the loss change (what
:func:`~hf_sparse.pruning.structured.structured_prune_` ranks units by)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.structure import (
    LayerParts,
    check_plain,
    find_layers,
    head_slices,
    neuron_slices,
    num_neurons,
    weight_dim,
)

__all__ = ["head_magnitude_scores", "neuron_magnitude_scores", "taylor_scores", "head_importance"]


def _per_index(model: nn.Module, name: str, axis: str, fn, with_bias: bool) -> torch.Tensor:
    """``fn(weight)`` summed over every dimension but ``axis``'s (plus ``fn(bias)`` for output slices when
    ``with_bias``): one value per output (or input) feature of module ``name``."""
    module = model.get_submodule(name)
    dim = weight_dim(module, axis)
    w = module.weight
    total = fn(w).sum(1 - dim)
    bias = getattr(module, "bias", None)
    if with_bias and axis == "out" and bias is not None:
        total = total + fn(bias)
    return total


def _head_scores(model: nn.Module, parts: LayerParts, fn, with_bias: bool) -> torch.Tensor:
    """One score per key/value group (per head without grouped-query attention): the sum of ``fn`` over the
    weights the group owns (:func:`~hf_sparse.nn.structure.head_slices`)."""
    att = parts.attention
    _, groups = att.sizes(model)  # type: ignore[union-attr]
    cache: dict[tuple[str, str], torch.Tensor] = {}
    out = []
    for g in range(groups):
        total = torch.zeros((), device=model.get_submodule(att.o).weight.device)  # type: ignore[union-attr]
        for name, (axis, idx) in head_slices(model, att, [g]).items():  # type: ignore[arg-type]
            if (name, axis) not in cache:
                cache[name, axis] = _per_index(model, name, axis, fn, with_bias)
            values = cache[name, axis]
            total = total + values[torch.tensor(idx, dtype=torch.long, device=values.device)].sum()
        out.append(total)
    return torch.stack(out) if out else torch.zeros(0)


def _neuron_scores(model: nn.Module, parts: LayerParts, fn, with_bias: bool) -> torch.Tensor:
    """One score per FFN neuron: ``fn`` summed over its rows of the up (and gate) projections and its column of
    the down projection."""
    n = num_neurons(model, parts.ffn)  # type: ignore[arg-type]
    total = None
    for name, (axis, _) in neuron_slices(model, parts.ffn, []).items():  # type: ignore[arg-type]
        values = _per_index(model, name, axis, fn, with_bias)
        values = values.reshape(-1, n).sum(0)  # a fused gate-and-up projection holds two rows per neuron
        total = values if total is None else total + values
    return total  # type: ignore[return-value]


def head_magnitude_scores(model: nn.Module) -> dict[Any, torch.Tensor]:
    """Per layer, the L2 norm of each head's weights: its rows of the query / key / value projections and its
    columns of the attention output projection. Under grouped-query attention one score per key/value group (the
    unit :func:`~hf_sparse.pruning.structured.prune_heads_` removes).

    Shapes:
        returns ``{layer: (num_heads or num_kv_groups,)}``; ``layer`` is an index, or ``"decoder.1"`` in a
        seq2seq model.
    """
    scores = {}
    for parts in find_layers(model):
        if parts.attention is None:
            continue
        check_plain(model, parts.attention.projections, "heads")
        with torch.no_grad():
            scores[parts.key] = _head_scores(model, parts, lambda t: t.float().pow(2), False).sqrt().cpu()
    return scores


def neuron_magnitude_scores(model: nn.Module) -> dict[Any, torch.Tensor]:
    """Per layer, the L2 norm of each FFN neuron's weights: its row of the up projection (and of the gate) and its
    column of the down projection.

    Shapes:
        returns ``{layer: (intermediate_size,)}``.
    """
    scores = {}
    for parts in find_layers(model):
        if parts.ffn is None:
            continue
        check_plain(model, parts.ffn.projections, "neurons")
        with torch.no_grad():
            scores[parts.key] = _neuron_scores(model, parts, lambda t: t.float().pow(2), False).sqrt().cpu()
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
        model: a model of a family in the module-role table whose forward returns ``loss`` when the batches carry
            ``labels``.
        batches: mappings of forward keyword arguments (``input_ids``, ``attention_mask``, ``labels``, ...).

    Returns:
        ``(head_scores, neuron_scores)``: ``{layer: (num_heads or num_kv_groups,)}`` and
        ``{layer: (intermediate_size,)}``.

    Raises:
        ConfigError: no batches, or a batch gives no loss (no labels).
    """
    layers = find_layers(model)
    params = [p for p in model.parameters() if p.requires_grad]
    saved_grads = [p.grad for p in params]
    was_training = model.training
    tracked: list[nn.Parameter] = []
    for parts in layers:
        names = [
            *(parts.attention.projections if parts.attention else ()),
            *(parts.ffn.projections if parts.ffn else ()),
        ]
        check_plain(model, tuple(names), "heads and neurons")
        for name in names:
            module = model.get_submodule(name)
            tracked += [p for p in (module.weight, getattr(module, "bias", None)) if p is not None]
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
                if parts.attention is not None:
                    heads[parts.key] = _head_scores(model, parts, _w_grad, True).abs().cpu()
                if parts.ffn is not None:
                    neurons[parts.key] = _neuron_scores(model, parts, _w_grad, True).abs().cpu()
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
        for p, flag in zip(tracked, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return heads, neurons


def _w_grad(p: torch.Tensor) -> torch.Tensor:
    return p * _grad(p)


def _grad(p: torch.Tensor) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


def head_importance(model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> dict[int, torch.Tensor]:
    """First-order Taylor importance of every attention head (see :func:`taylor_scores`).

    Shapes:
        returns ``{layer: (num_heads or num_kv_groups,)}``.
    """
    return taylor_scores(model, batches)[0]
