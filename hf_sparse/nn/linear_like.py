"""Linear-like layers: ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2's projections), seen one way.

``Conv1D`` computes what a Linear layer computes, ``y = x @ W + b``, but stores its weight as ``(in_features,
out_features)``, the transpose of ``nn.Linear``'s ``(out_features, in_features)``. Every transform of this package
(pruning masks and criteria, sparse formats, quantisers, factorisations) works in the ``(out, in)`` orientation:
block and N:M groups run along the input dimension, quantisation scales are per output row. :func:`linear_weight`
gives that orientation as a *view* of the stored parameter, so in-place edits (masking, a reconstructed weight
copied in) reach the parameter, and the parameter keeps the layout GPT-2 checkpoints have: a model pruned in place
saves as a normal checkpoint of its architecture.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .roles import family_of, layer_lists

__all__ = [
    "LINEAR_LIKE",
    "Conv1D",
    "is_linear_like",
    "is_conv1d",
    "linear_weight",
    "linear_layout",
    "stored_layout",
    "linear_features",
    "dense_layer",
    "stores_conv1d",
]

#: The module types that :func:`~hf_sparse.nn.matching.match_linears` selects and every weight transform accepts.
LINEAR_LIKE: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


def is_linear_like(module: nn.Module) -> bool:
    """``module`` is an ``nn.Linear`` or a transformers ``Conv1D``."""
    return isinstance(module, LINEAR_LIKE)


def is_conv1d(module: nn.Module) -> bool:
    """``module`` is a transformers ``Conv1D`` (its weight is stored ``(in_features, out_features)``)."""
    return isinstance(module, Conv1D)


def linear_layout(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, laid out as ``module.weight`` is stored (e.g. its gradient), in the ``(out, in)`` orientation:
    a transposed view for a ``Conv1D``, ``tensor`` itself otherwise."""
    return tensor.t() if is_conv1d(module) else tensor


def stored_layout(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in the ``(out, in)`` orientation (e.g. a keep-mask), laid out as ``module.weight`` is stored: a
    transposed view for a ``Conv1D``, ``tensor`` itself otherwise."""
    return tensor.t() if is_conv1d(module) else tensor


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight of ``module`` as an ``(out_features, in_features)`` tensor: for a ``Conv1D`` a transposed view of
    its parameter (in-place changes reach the parameter; it is not contiguous), for any other module its
    ``weight`` as it is.

    Shapes:
        Returns: ``(out_features, in_features)`` for Linear-like modules; an embedding's ``(num, dim)``.
    """
    return linear_layout(module, module.weight)


def linear_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or a ``Conv1D``."""
    if is_conv1d(module):
        return module.nx, module.nf
    return module.in_features, module.out_features


def stores_conv1d(model: nn.Module, name: str) -> bool:
    """Whether the dense layer at ``name`` of ``model`` is a ``Conv1D`` in its family's checkpoints (GPT-2's
    projections, inside its layer list; see :mod:`hf_sparse.nn.roles`), so that a dense layer put back there (a
    merge that gives up the sparsity) must be one to save as a normal checkpoint of the architecture."""
    entry = family_of(model)
    if entry is None or not entry.conv1d:
        return False
    return any(name.startswith(f"{list_name}.") for list_name, _ in layer_lists(model, entry))


def dense_layer(
    weight: torch.Tensor, bias: torch.Tensor | None, *, conv1d: bool = False, requires_grad: bool = True
) -> nn.Module:
    """A dense layer computing ``x @ weight.T + bias``: an ``nn.Linear``, or a ``Conv1D`` holding ``weight.T``
    (``conv1d=True``, for a place of a model whose checkpoints store ``Conv1D`` weights, so the model saves as a
    normal checkpoint of its architecture). Always with a bias for ``Conv1D``, which has one (zeros when ``bias``
    is None).

    Shapes:
        weight: ``(out_features, in_features)``. bias: ``(out_features,)``.
    """
    rows, cols = weight.shape
    with torch.no_grad():
        if conv1d:
            layer = Conv1D(rows, cols).to(device=weight.device, dtype=weight.dtype)
            layer.weight.copy_(weight.t())
            layer.bias.copy_(bias if bias is not None else torch.zeros_like(layer.bias))
        else:
            layer = nn.Linear(cols, rows, bias=bias is not None, device=weight.device, dtype=weight.dtype)
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
    layer.requires_grad_(requires_grad)
    return layer
