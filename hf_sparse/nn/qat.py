"""Quantisation-aware training modules: fake-quantised Linear layers and embedding tables.

:class:`QATLinear` and :class:`QATEmbedding` wrap the layer they replace (``base_layer``, peft's pattern: its
parameters are the same objects, so an optimizer, a pruning mask or a distillation hook that holds them keeps
working) and compute with weights, and optionally inputs, rounded to the integer grid in the forward pass, with
straight-through gradients. :func:`~hf_sparse.quantization.convert_` turns them into integer layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..formats.schemes import (
    QuantScheme,
    fake_quantize,
    grouped,
    lsq_grad_scale,
    qparams_from_range,
    qrange,
)
from .linear_like import is_linear_like, linear_features, linear_weight
from .observers import Observer

__all__ = ["FakeQuantizer", "QATLinear", "QATEmbedding"]

_EPS = 1e-12


class FakeQuantizer(nn.Module):
    """Rounds a tensor to a ``bits``-bit grid in the forward pass; gradients pass straight through.

    Args:
        scheme: bits, granularity, symmetry, observer, LSQ.
        role: ``"weight"`` (the range is that of the current values, or a learned scale with ``lsq``) or
            ``"activation"`` (a static range observed while training or calibrating).
        dynamic: activations only: each token's own range, measured at every call.
        init: weights with ``lsq``: the weight the learned scale starts from (its observed range).

    ``bits`` may be changed while training (a progressive schedule); a learned scale is rescaled with it.
    ``observing`` turns updates of a static range on or off (frozen ranges); ranges update only in training mode or
    while ``calibrating``.
    """

    def __init__(
        self,
        scheme: QuantScheme,
        *,
        role: str = "weight",
        dynamic: bool = False,
        init: torch.Tensor | None = None,
    ):
        super().__init__()
        if role not in ("weight", "activation"):
            raise ConfigError(f"FakeQuantizer role must be 'weight' or 'activation', got {role!r}.")
        if scheme.lsq and role != "weight":
            raise ConfigError("Learned step size (lsq) applies to weights only.")
        self.scheme, self.role, self.dynamic = scheme, role, dynamic
        self._bits = scheme.bits
        self.observing = True
        self.calibrating = False
        self.enabled = True
        self.observer = Observer(scheme)
        if scheme.lsq:
            if init is None:
                raise ConfigError("A learned-step-size quantiser needs the initial weight (init=...).")
            scale, zero_point = self._range_qparams(init.detach())
            self.scale = nn.Parameter(scale)
            self.register_buffer("zero_point", zero_point)
        else:
            self.scale = None

    # -- bit width ------------------------------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self._bits

    @bits.setter
    def bits(self, value: int) -> None:
        qrange(value, self.scheme.symmetric)  # validates
        if value != self._bits and self.scale is not None:
            with torch.no_grad():  # keep the covered range: the step grows as the grid gets coarser
                self.scale.mul_(qrange(self._bits, self.scheme.symmetric)[1] / qrange(value, self.scheme.symmetric)[1])
        self._bits = value

    # -- parameters -----------------------------------------------------------------------------------------------
    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            return x.reshape(-1, x.shape[-1])
        return grouped(x, self.scheme.granularity, self.scheme.group_size)

    def _range_qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        observer = Observer(self.scheme)
        observer.update(self._grouped(x))
        return observer.qparams(self._bits)

    def qparams(self, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point), each (groups, 1), that the next forward pass uses; weights need ``x`` (the weight)
        unless the scale is learned."""
        if self.scale is not None:
            return self.scale.detach().abs().clamp_min(_EPS), self.zero_point
        if self.role == "weight":
            if x is None:
                raise ConfigError("A weight quantiser's parameters depend on the weight: pass it.")
            if self.scheme.observer == "minmax":
                return self._range_qparams(x.detach())
            return self.observer.qparams(self._bits)
        return self.observer.qparams(self._bits)

    # -- forward --------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantised ``x`` (same shape and dtype).

        Shapes:
            x: (rows, cols) weights, or (..., features) activations.
        """
        if not self.enabled:
            return x
        qmin, qmax = qrange(self._bits, self.scheme.symmetric)
        xg = self._grouped(x)
        if self.dynamic:
            detached = xg.detach()
            scale, zero_point = qparams_from_range(
                detached.amin(1, keepdim=True), detached.amax(1, keepdim=True), self._bits, self.scheme.symmetric
            )
        elif self.scale is not None:
            scale = lsq_grad_scale(self.scale.abs().clamp_min(_EPS), xg.shape[1], qmax)
            zero_point = self.zero_point
        elif self.role == "weight":
            if self.scheme.observer == "minmax":
                scale, zero_point = self._range_qparams(xg.detach())
            else:
                self.observer.update(xg)
                scale, zero_point = self.observer.qparams(self._bits)
        else:
            if self.observing and (self.training or self.calibrating):
                self.observer.update(xg)
            scale, zero_point = self.observer.qparams(self._bits)
        out = fake_quantize(xg.float(), scale, zero_point, qmin, qmax)
        return out.reshape(x.shape).to(x.dtype)

    def extra_repr(self) -> str:
        s = self.scheme
        kind = "dynamic" if self.dynamic else s.granularity
        sym = "symmetric" if s.symmetric else "asymmetric"
        return f"role={self.role}, bits={self._bits}, {kind}, {sym}, observer={s.observer}, lsq={s.lsq}"


class QATLinear(nn.Module):
    """An ``nn.Linear`` (or a transformers ``Conv1D``, GPT-2's) trained with fake-quantised weights (and inputs).

    The weight is quantised in the ``(out_features, in_features)`` orientation (scales per output row), a
    ``Conv1D``'s through a transposed view of its parameter, so both compute ``x @ W^T + b`` with the same grid.

    Args:
        base_layer: the Linear layer or ``Conv1D``; its parameters are used as they are (nothing is copied).
        weight_scheme: the weights' scheme.
        activation: ``"none"``, ``"dynamic"`` or ``"static"`` input quantisation.
        activation_scheme: the inputs' scheme.
        keep_sparsity: multiply the weight by its current non-zero pattern in every forward pass, so pruned
            weights get no gradient and stay exactly zero.

    Shapes:
        input: (..., in_features). output: (..., out_features).
    """

    def __init__(
        self,
        base_layer: nn.Module,
        weight_scheme: QuantScheme,
        *,
        activation: str = "none",
        activation_scheme: QuantScheme | None = None,
        keep_sparsity: bool = True,
    ):
        super().__init__()
        if not is_linear_like(base_layer):
            raise ConfigError(
                f"QATLinear wraps an nn.Linear or a transformers Conv1D, got {type(base_layer).__name__}."
            )
        self.base_layer = base_layer
        self.in_features, self.out_features = linear_features(base_layer)
        weight = linear_weight(base_layer).detach()
        self.weight_quantizer = FakeQuantizer(weight_scheme, role="weight", init=weight)
        if activation not in ("none", "dynamic", "static"):
            raise ConfigError(f"activation must be 'none', 'dynamic' or 'static', got {activation!r}.")
        self.activation = activation
        self.input_quantizer = (
            None
            if activation == "none"
            else FakeQuantizer(
                activation_scheme or QuantScheme(granularity="tensor"),
                role="activation",
                dynamic=activation == "dynamic",
            )
        )
        zeros = weight == 0
        if keep_sparsity and bool(zeros.any()):
            self.register_buffer("weight_mask", ~zeros, persistent=False)
        else:
            self.weight_mask = None

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped layer's weight parameter, as that layer stores it (``(in, out)`` for a ``Conv1D``)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def float_weight(self) -> torch.Tensor:
        """The float weight with the sparsity pattern applied (what is quantised), ``(out_features, in_features)``."""
        w = linear_weight(self.base_layer)
        return w * self.weight_mask if self.weight_mask is not None else w

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantised weight the forward pass uses."""
        return self.weight_quantizer(self.float_weight())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return F.linear(x, self.quantized_weight(), self.base_layer.bias)

    def extra_repr(self) -> str:
        sparse = "" if self.weight_mask is None else f", kept={float(self.weight_mask.float().mean()):.1%}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}{sparse}"
        )


class QATEmbedding(nn.Module):
    """An ``nn.Embedding`` trained with fake-quantised rows (2, 4 or 8 bits).

    With one scale per row (``granularity="channel"``) or per group of a row, only the looked-up rows are rounded —
    a row's scale depends on that row alone — so a 30,522-row table costs what a batch's tokens cost, not the whole
    table per step. ``granularity="tensor"`` rounds with the whole table's range.

    Shapes:
        input: (...) token ids. output: (..., embedding_dim).
    """

    def __init__(self, base_layer: nn.Embedding, scheme: QuantScheme):
        super().__init__()
        if not isinstance(base_layer, nn.Embedding):
            raise ConfigError(f"QATEmbedding wraps an nn.Embedding, got {type(base_layer).__name__}.")
        if base_layer.max_norm is not None or base_layer.sparse:
            raise ConfigError("QATEmbedding supports neither max_norm nor sparse gradients.")
        self.base_layer = base_layer
        self.num_embeddings, self.embedding_dim = base_layer.num_embeddings, base_layer.embedding_dim
        self.padding_idx = base_layer.padding_idx
        self.weight_quantizer = FakeQuantizer(scheme, role="weight", init=base_layer.weight.detach())

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def quantized_weight(self) -> torch.Tensor:
        """The whole fake-quantised table."""
        return self.weight_quantizer(self.base_layer.weight)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        q = self.weight_quantizer
        if not q.enabled:
            return self.base_layer(input_ids)
        if q.scheme.granularity == "tensor":
            return F.embedding(input_ids, self.quantized_weight(), self.padding_idx)
        flat = input_ids.reshape(-1)
        rows = F.embedding(flat, self.base_layer.weight, self.padding_idx)  # (tokens, dim), padding row frozen
        if q.scale is None:
            out = q(rows)  # per-row (or per-group) ranges of these rows are those of the table's rows
        else:
            per_row = q.scale.shape[0] // self.num_embeddings
            scale = q.scale.reshape(self.num_embeddings, per_row)[flat].reshape(-1, 1)
            zero = q.zero_point.reshape(self.num_embeddings, per_row)[flat].reshape(-1, 1)
            qmin, qmax = qrange(q.bits, q.scheme.symmetric)
            width = self.embedding_dim // per_row
            rg = rows.reshape(-1, width).float()
            scale = lsq_grad_scale(scale.abs().clamp_min(_EPS), width, qmax)
            out = fake_quantize(rg, scale, zero, qmin, qmax).reshape(rows.shape).to(rows.dtype)
        return out.reshape(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"
