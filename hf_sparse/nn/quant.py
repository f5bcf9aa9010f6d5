"""Integer layers: ``QuantLinear`` (int8 / int4 weights, dense or inside CSR) and ``QuantEmbedding`` (int8 / int4 /
int2 rows). Both keep their weight as a quantised format's tensors (codes as buffers, scales as parameters), so they
save compressed, load through ``from_pretrained`` and re-validate on load like :class:`SparseLinear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FormatError
from ..formats import QBSR, QCSR, QNM, QDense
from ..ops import dequantize_weight
from .sparse_linear import SparseLinear
from .stored import StoredWeightMixin

__all__ = ["QuantLinear", "QuantEmbedding"]


class QuantLinear(SparseLinear):
    """``y = x @ W^T + b`` with ``W`` as integer codes and scales.

    A ``qcsr``, ``qbsr`` or ``qnm`` weight runs through our int8-value SpMM kernels (the scale is applied once per
    output row); a
    ``qdense`` weight is dequantised and multiplied by the float GEMM (int8 and int4 cut memory and disk four and
    eight times; the arithmetic is float). Inputs are rounded to the recorded 8-bit grid first when the weight
    records input quantisation (``activation`` static or dynamic), as in the training that produced it.

    Shapes:
        input: (..., in_features). output: (..., out_features).
    """

    def __init__(
        self, weight: QDense | QCSR | QBSR | QNM, bias: torch.Tensor | None = None, *, trainable: bool = False
    ):
        if not isinstance(weight, (QDense, QCSR, QBSR, QNM)):
            raise FormatError(f"QuantLinear needs a qdense, qcsr, qbsr or qnm weight, got {type(weight).__name__}.")
        super().__init__(weight, bias, trainable=trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_format()
        if isinstance(weight, QDense):
            x = weight.quantize_input(x)
            return F.linear(x, dequantize_weight(weight).to(x.dtype), self.bias)
        return super().forward(x)  # sparse_linear quantises the input as the weight records

    def extra_repr(self) -> str:
        weight = self.weight_format()
        bits = getattr(weight, "bits", 8)
        act = f", activation={weight.activation}" if weight.activation else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"format={self.format}, bits={bits}{act}"
        )


class QuantEmbedding(StoredWeightMixin, nn.Module):
    """An embedding table of integer codes (8, 4 or 2 bits) with per-row (or per-group) scales and zero points; a
    lookup dequantises only the rows it returns.

    Args:
        weight: a :class:`~hf_sparse.formats.QDense` of shape ``(num_embeddings, embedding_dim)`` with
            ``granularity`` ``"channel"`` or ``"group"``.
        padding_idx: as in ``nn.Embedding``.

    Shapes:
        input: (...) token ids in ``[0, num_embeddings)``. output: (..., embedding_dim).
    """

    def __init__(self, weight: QDense, padding_idx: int | None = None):
        super().__init__()
        if not isinstance(weight, QDense) or weight.granularity == "tensor" or weight.activation:
            raise FormatError(
                "QuantEmbedding stores a qdense table with per-row or per-group scales and no input quantisation, "
                f"got {weight!r}."
            )
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx
        self._store_weight(weight, trainable=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"QuantEmbedding expects integer token ids, got {input_ids.dtype}.")
        flat = input_ids.reshape(-1).long()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(
                f"QuantEmbedding: token ids must be in [0, {self.num_embeddings}), got values in "
                f"[{int(flat.min())}, {int(flat.max())}]."
            )
        table = self.weight_format()
        rows = QDense(
            table.values[flat],
            table.scales[flat],
            table.zero_points[flat] if table.zero_points is not None else None,
            (flat.numel(), self.embedding_dim),
            bits=table.bits,
            granularity=table.granularity,
            group_size=table.group_size,
            validate=False,
        )
        # The placeholder's dtype is the model's (a model loaded in bfloat16 gets bfloat16 rows from float32 scales).
        return dequantize_weight(rows).to(self.weight.dtype).reshape(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        bits = self.format_params["bits"]
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, bits={bits}"
