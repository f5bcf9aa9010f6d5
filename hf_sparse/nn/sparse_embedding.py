"""``SparseEmbedding``: an ``nn.Embedding`` whose pruned table is stored in CSR (one row per token)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FormatError
from ..formats import CSR, to_format
from .stored import StoredWeightMixin

__all__ = ["SparseEmbedding"]


class SparseEmbedding(StoredWeightMixin, nn.Module):
    """Looks up rows of a pruned embedding table kept in CSR: each token's row holds only its non-zero entries.

    A magnitude-pruned word-embedding table at 80% costs 1.2 bytes per entry in CSR (4-byte value + 2-byte column
    index for the kept 20%) instead of 4 dense; for MiniLM's 30522 × 384 table, about half the model, that is the
    difference between a checkpoint at ~60% of the dense size and one at ~30%. A lookup gathers each token's row
    segment and scatters it into a dense ``(..., embedding_dim)`` output; gradients reach only the stored values,
    so pruned entries stay zero while fine-tuning, and the ``padding_idx`` row takes no gradient, as in
    ``nn.Embedding``.

    Args:
        weight: A :class:`~hf_sparse.formats.CSR` of shape ``(num_embeddings, embedding_dim)``.
        padding_idx: As in ``nn.Embedding``.
        trainable: Whether the stored values take gradients.

    Shapes:
        input: (...) integer token ids in ``[0, num_embeddings)``. output: (..., embedding_dim).
    """

    def __init__(self, weight: CSR, padding_idx: int | None = None, *, trainable: bool = True):
        super().__init__()
        if not isinstance(weight, CSR):
            raise FormatError(f"SparseEmbedding stores its table as CSR, got {type(weight).__name__}.")
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx
        self._store_weight(weight, trainable=trainable)

    @classmethod
    def from_embedding(
        cls, embedding: nn.Embedding, mask: torch.Tensor | None = None, *, trainable: bool = True
    ) -> SparseEmbedding:
        """Convert ``embedding`` (stored entries: ``mask``, or its non-zeros) to CSR."""
        if not isinstance(embedding, nn.Embedding):
            raise FormatError(f"SparseEmbedding.from_embedding needs an nn.Embedding, got {type(embedding).__name__}.")
        if embedding.max_norm is not None or embedding.sparse:
            raise FormatError(
                "SparseEmbedding supports neither max_norm (it rescales rows in place at lookup) nor sparse=True "
                "gradients; keep this embedding dense."
            )
        with torch.no_grad():
            weight = to_format("csr", embedding.weight.detach(), mask)
        return cls(weight, embedding.padding_idx, trainable=trainable)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"SparseEmbedding expects integer token ids, got {input_ids.dtype}.")
        flat = input_ids.reshape(-1).long()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(
                f"SparseEmbedding: token ids must be in [0, {self.num_embeddings}), got values in "
                f"[{int(flat.min())}, {int(flat.max())}]."
            )
        crow = self.weight_crow_indices.long()
        values = self.weight_values
        start = crow[flat]
        count = crow[flat + 1] - start
        total = int(count.sum())
        # Position of every gathered entry: its token's row start plus its offset inside the row.
        token = torch.repeat_interleave(torch.arange(flat.numel(), device=flat.device), count, output_size=total)
        first = torch.cumsum(count, 0) - count
        offset = torch.arange(total, device=flat.device) - torch.repeat_interleave(first, count, output_size=total)
        pos = start[token] + offset
        gathered = values[pos]
        if self.padding_idx is not None and values.requires_grad:
            # nn.Embedding semantics: the padding row is looked up but never updated.
            gathered = torch.where(flat[token] == self.padding_idx, gathered.detach(), gathered)
        out = values.new_zeros(flat.numel(), self.embedding_dim)
        out = out.index_put((token, self.weight_col_indices[pos].long()), gathered)
        return out.to(self.weight.dtype).reshape(*input_ids.shape, self.embedding_dim)  # the model's dtype

    def extra_repr(self) -> str:
        density = self.weight_values.numel() / max(self.num_embeddings * self.embedding_dim, 1)
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}, format=csr, stored={density:.1%}"
