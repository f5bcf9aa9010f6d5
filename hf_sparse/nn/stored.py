"""What ``SparseLinear`` and ``SparseEmbedding`` share: a weight kept as a format's tensors inside a module."""

from __future__ import annotations

import torch
from torch import nn

from ..formats import SparseFormat, from_tensors

__all__ = ["StoredWeightMixin", "PREFIX"]

#: State-dict prefix of a stored weight's tensors: ``weight_values``, ``weight_col_indices``, ...
PREFIX = "weight_"


class StoredWeightMixin:
    """Keeps a :class:`~hf_sparse.formats.SparseFormat` as this module's tensors.

    Floating-point tensors become parameters (they train: gradients reach only stored positions, so a pruned entry
    stays pruned) and index tensors become buffers; all are saved as ``weight_<name>``, compressed, and re-validated
    whenever a state dict is loaded. ``weight`` is a zero-length placeholder buffer that carries the layer's dtype
    and device: code that inspects ``module.weight.dtype`` keeps working, code that multiplies by it fails loudly,
    and a loader that does not know hf_sparse tries to put it into a dense layer's ``weight`` and stops with a size
    mismatch instead of initialising that layer at random.
    """

    def _store_weight(self, weight: SparseFormat, *, trainable: bool) -> None:
        self.format_params = weight.params()
        self._names = list(weight.tensors())
        for name, tensor in weight.tensors().items():
            if tensor.is_floating_point():
                self.register_parameter(PREFIX + name, nn.Parameter(tensor.detach(), requires_grad=trainable))
            else:
                self.register_buffer(PREFIX + name, tensor)
        # Formats made only of integer tensors (qrow rows hold their scales as bytes) compute float32.
        dtype = next((t.dtype for t in weight.tensors().values() if t.is_floating_point()), torch.float32)
        self.register_buffer("weight", torch.empty(0, dtype=dtype, device=weight.values.device))
        self.register_load_state_dict_post_hook(_validate_after_load)

    @property
    def format(self) -> str:
        return self.format_params["format"]

    def weight_format(self, *, validate: bool = False) -> SparseFormat:
        """The weight as a format object over this module's own tensors (gradients flow through it)."""
        tensors = {name: getattr(self, PREFIX + name) for name in self._names}
        return from_tensors(tensors, self.format_params, validate=validate)

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense matrix, zeros included (a copy)."""
        return self.weight_format().to_dense()


def _validate_after_load(module: StoredWeightMixin, incompatible_keys) -> None:
    module.weight_format(validate=True)
