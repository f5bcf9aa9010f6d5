"""The one place modules of a model are swapped for hf_sparse modules."""

from __future__ import annotations

from torch import nn

__all__ = ["replace_module"]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where ``model``'s submodule ``name`` (dotted path) is, and return the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old
