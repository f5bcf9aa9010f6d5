"""``LowRankEmbedding``: an embedding table stored as two factors, ``E ≈ A B`` (vocab x r times r x dim)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FormatError
from ..formats.lowrank import LowRank
from .stored import StoredWeightMixin

__all__ = ["LowRankEmbedding"]


class LowRankEmbedding(StoredWeightMixin, nn.Module):
    """Looks up rows of a factorised table: ``E[ids] = A[ids] @ B``, with A (num_embeddings, r) and B
    (r, embedding_dim) the factors of a ``lowrank`` format (``weight_u`` and ``weight_v`` in the state dict).
    MiniLM's 30522 x 384 word table (11.7M values) at r = 64 keeps 2.0M.

    ``padding_idx`` is kept for the model's sake, but its row is a product of two trained factors and changes when B
    does (it is not the frozen zero row of ``nn.Embedding``).

    Shapes:
        input: (...) token ids in ``[0, num_embeddings)``. output: (..., embedding_dim).
    """

    def __init__(self, weight: LowRank, padding_idx: int | None = None, *, trainable: bool = True):
        super().__init__()
        if not isinstance(weight, LowRank):
            raise FormatError(f"LowRankEmbedding stores a lowrank table, got {type(weight).__name__}.")
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx
        self._store_weight(weight, trainable=trainable)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, rank: int, *, trainable: bool = True) -> LowRankEmbedding:
        """The rank-``rank`` truncated SVD of ``embedding``'s table."""
        if not isinstance(embedding, nn.Embedding):
            raise FormatError(
                f"LowRankEmbedding.from_embedding needs an nn.Embedding, got {type(embedding).__name__}."
            )
        if embedding.max_norm is not None or embedding.sparse:
            raise FormatError("LowRankEmbedding supports neither max_norm nor sparse=True; keep this table dense.")
        with torch.no_grad():
            weight = LowRank.from_dense(embedding.weight.detach(), rank=rank)
        return cls(weight, embedding.padding_idx, trainable=trainable)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"LowRankEmbedding expects integer token ids, got {input_ids.dtype}.")
        flat = input_ids.reshape(-1).long()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(
                f"LowRankEmbedding: token ids must be in [0, {self.num_embeddings}), got values in "
                f"[{int(flat.min())}, {int(flat.max())}]."
            )
        out = self.weight_u[flat] @ self.weight_v
        return out.to(self.weight.dtype).reshape(*input_ids.shape, self.embedding_dim)  # the model's dtype

    def extra_repr(self) -> str:
        rank = self.format_params["rank"]
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={rank}, padding_idx={self.padding_idx}"
