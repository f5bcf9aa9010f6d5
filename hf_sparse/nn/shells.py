"""Empty sparse modules shaped from a checkpoint's description, for ``from_pretrained`` to load weights into."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FormatError
from ..formats import from_tensors
from .replace import replace_module
from .sparse_linear import SparseLinear

__all__ = ["build_sparse_shells"]


def build_sparse_shells(model: nn.Module, modules: dict[str, dict]) -> None:
    """Replace each described ``nn.Linear`` of ``model`` by a ``SparseLinear`` with empty tensors of the described
    shapes and dtypes (on the Linear's device, typically meta).

    Raises:
        FormatError: a described module is missing, is not an ``nn.Linear``, or disagrees with its shape.
    """
    for name, spec in modules.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise FormatError(f"checkpoint describes module {name!r}, which this model does not have.") from None
        if not isinstance(linear, nn.Linear):
            raise FormatError(f"checkpoint module {name!r} is a {type(linear).__name__}, expected nn.Linear.")
        shape = tuple(spec["params"].get("shape", ()))
        if shape != (linear.out_features, linear.in_features):
            raise FormatError(
                f"checkpoint module {name!r} has shape {list(shape)} in config.json, but the model's layer is "
                f"{[linear.out_features, linear.in_features]}."
            )
        device = linear.weight.device
        tensors = {
            k: torch.empty(tuple(s), dtype=getattr(torch, dt), device=device) for k, (s, dt) in spec["tensors"].items()
        }
        weight = from_tensors(tensors, spec["params"], validate=False)
        replace_module(model, name, SparseLinear(weight, linear.bias))
