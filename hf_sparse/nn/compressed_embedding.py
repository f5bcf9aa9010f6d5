"""``CompressedEmbedding``: an ``nn.Embedding`` replacement whose rows come from a compressed table format (hashed,
quotient-remainder, tensor train, remapped rows, row-wise quantised, or a frequency-aware split of two of them)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FormatError
from ..formats import SparseFormat
from ..ops.embedding import lookup_rows
from .stored import PREFIX, StoredWeightMixin

__all__ = ["CompressedEmbedding", "EMBEDDING_FORMATS"]

#: Formats a ``CompressedEmbedding`` stores (``qdense``, ``csr`` and ``lowrank`` tables have their own modules).
EMBEDDING_FORMATS = ("hashed", "qr", "tt", "rowmap", "hot", "qrow")
#: Formats whose floating-point tensors are quantisation scales: kept frozen (train them with QAT instead).
_QUANTISED = ("qrow", "qdense", "qcsr", "qbsr", "qnm")


def _frozen_tensors(fmt: SparseFormat) -> set[str]:
    if fmt.name in _QUANTISED:
        return set(fmt.tensors())
    if fmt.name == "hot":
        return {f"hot_{n}" for n in _frozen_tensors(fmt.hot)} | {f"cold_{n}" for n in _frozen_tensors(fmt.cold)}
    return set()


class CompressedEmbedding(StoredWeightMixin, nn.Module):
    """Looks up rows of a compressed table: ``forward(ids)`` returns ``format.lookup(ids)``, with gradients into
    the format's floating-point tensors (the quotient and remainder tables, the TT cores, the shared hash table, the
    kept rows), so the compressed table fine-tunes in place; quantised parts (``qrow`` codes and scales) stay frozen.
    Saves and loads through ``from_pretrained`` like every hf_sparse module (tensors ``weight_<name>``, format and
    parameters in ``config.json``).

    ``padding_idx`` is kept for the model's sake, but the padding row is computed like any other (it is not the
    frozen zero row of ``nn.Embedding``).

    Args:
        weight: a format from :data:`EMBEDDING_FORMATS` of shape ``(num_embeddings, embedding_dim)``.
        padding_idx: as in ``nn.Embedding``.
        trainable: whether the (non-quantised) floating-point tensors take gradients.

    Shapes:
        input: (...) integer ids in ``[0, num_embeddings)``. output: (..., embedding_dim).
    """

    def __init__(self, weight: SparseFormat, padding_idx: int | None = None, *, trainable: bool = True):
        super().__init__()
        if not isinstance(weight, SparseFormat) or weight.name not in EMBEDDING_FORMATS:
            raise FormatError(
                f"CompressedEmbedding stores one of {list(EMBEDDING_FORMATS)}, "
                f"got {getattr(weight, 'name', weight)!r}."
            )
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx
        self._store_weight(weight, trainable=trainable)
        frozen = _frozen_tensors(weight)
        for name in frozen:
            # Quantisation scales are buffers, not frozen parameters: a float16 scale among the parameters would
            # make ``model.dtype`` (transformers reads the first parameter) float16 for the whole model.
            tensor = getattr(self, PREFIX + name)
            if isinstance(tensor, nn.Parameter):
                delattr(self, PREFIX + name)
                self.register_buffer(PREFIX + name, tensor.detach())
        # The placeholder carries the dtype rows come out in: float32 from quantised parts (their scales may be
        # float16), else the widest of the float tensors (a float16 hot part beside a float32 cold part: float32).
        dtype = torch.float32 if frozen else None
        for name, t in weight.tensors().items():
            if t.is_floating_point() and name not in frozen:
                dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
        self.weight = torch.empty(0, dtype=dtype or torch.float32, device=self.weight.device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"CompressedEmbedding expects integer ids, got {input_ids.dtype}.")
        flat = input_ids.reshape(-1).long()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(
                f"CompressedEmbedding: ids must be in [0, {self.num_embeddings}), got values in "
                f"[{int(flat.min())}, {int(flat.max())}]."
            )
        rows = lookup_rows(self.weight_format(), flat)
        return rows.to(self.weight.dtype).reshape(*input_ids.shape, self.embedding_dim)  # no-op but for float16 parts

    @property
    def nbytes(self) -> int:
        """Bytes of the stored table."""
        return self.weight_format().nbytes

    def extra_repr(self) -> str:
        dense = self.num_embeddings * self.embedding_dim * 4
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, format={self.format}, "
            f"{self.nbytes / dense:.1%} of float32, padding_idx={self.padding_idx}"
        )
