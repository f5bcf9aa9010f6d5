"""``SASRecForNextItem``: a SASRec-style next-item recommender as a transformers ``PreTrainedModel``.

The item table is read in two places, the input lookup and the output scores, and both go through
``self.item_embeddings(ids)``: the output reads the item vectors by calling the module on every id, never through
``.weight``. So the table can be swapped for any module whose ``forward(ids)`` returns rows (a quantised, hashed or
tensor-train table, see :mod:`hf_sparse.nn`) with ``model.item_embeddings = module`` and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .config import SASRecConfig

__all__ = ["SASRecForNextItem", "SASRecOutput", "SASRecPreTrainedModel"]


@dataclass
class SASRecOutput(ModelOutput):
    """Output of :class:`SASRecForNextItem`.

    Args:
        loss: mean cross-entropy of the next item over every supervised position (when ``labels`` are given).
        logits: scores of every item id at the kept positions; column 0 (padding) holds the dtype's minimum.
        last_hidden_state: the final (LayerNorm-ed) hidden state at every position.

    Shapes:
        loss: (). logits: (batch, kept_positions, num_items + 1). last_hidden_state: (batch, length, hidden_size).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention with an additive mask (the ``"eager"`` implementation).

    Shapes:
        query, key, value: (batch, heads, length, head_dim). attention_mask: (batch, 1, length, length), additive.
        output: (batch, length, heads, head_dim) and the weights (batch, heads, length, length).
    """
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class SASRecAttention(nn.Module):
    """Multi-head causal self-attention whose kernel is chosen by ``config._attn_implementation`` (``"sdpa"`` or
    ``"eager"``; any function registered in transformers' ``AttentionInterface`` that takes an additive 4-D mask).
    """

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        shape = (*hidden_states.shape[:-1], self.num_heads, self.head_dim)
        query = self.query(hidden_states).view(shape).transpose(1, 2)
        key = self.key(hidden_states).view(shape).transpose(1, 2)
        value = self.value(hidden_states).view(shape).transpose(1, 2)
        implementation = self.config._attn_implementation
        # Indexing (rather than `get_interface`) works with every transformers 5.x release.
        attention: Callable = (
            eager_attention_forward if implementation in (None, "eager") else ALL_ATTENTION_FUNCTIONS[implementation]
        )
        output, _ = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attention_probs_dropout_prob if self.training else 0.0,
            scaling=self.scaling,
        )
        return self.output(output.reshape(*hidden_states.shape[:-1], -1))


class SASRecFeedForward(nn.Module):
    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.dense_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.dense_out = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense_out(self.dropout(self.act(self.dense_in(hidden_states))))


class SASRecLayer(GradientCheckpointingLayer):
    """One pre-LayerNorm block: ``x + attn(LN(x))`` then ``x + ffn(LN(x))``. Pre-LN (as in the original SASRec)
    trains stably without warm-up at the learning rates recommenders use (1e-3)."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = SASRecAttention(config)
        self.feed_forward_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = SASRecFeedForward(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.dropout(
            self.attention(self.attention_norm(hidden_states), attention_mask)
        )
        hidden_states = hidden_states + self.dropout(self.feed_forward(self.feed_forward_norm(hidden_states)))
        # Padding positions are zeroed after every block so that nothing computed there can leak into real ones.
        return hidden_states * keep


class SASRecPreTrainedModel(PreTrainedModel):
    """Base class: config class, weight initialisation (transformers' defaults: normal(0, ``initializer_range``)
    for Linear and embedding tables with a zero padding row, ones/zeros for LayerNorms) and capabilities."""

    config: SASRecConfig
    config_class = SASRecConfig
    base_model_prefix = "sasrec"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SASRecLayer"]
    _supports_sdpa = True
    # The model builds one additive 4-D mask (causal and padding); flash and flex kernels want other mask formats.
    _supports_flash_attn = False
    _supports_flex_attn = False
    # `forward` takes no **kwargs: the loss is a mean over the batch's supervised positions, and the Trainer must not
    # pass `num_items_in_batch` (it would count labels as if shifted, like a causal LM's).
    accepts_loss_kwargs = False


class SASRecForNextItem(SASRecPreTrainedModel):
    """SASRec: causal self-attention over a user's item history that scores every item as the next one.

    ``hidden[t] @ item_vectors.T`` scores the item after position ``t``, where ``item_vectors`` are the rows of the
    same table the history is read from (``self.item_embeddings``, called on all ids). Histories are left-padded
    with id 0; positions count from each history's first item (so the amount of padding does not matter).

    Args:
        config: a :class:`~hf_sparse.recsys.SASRecConfig`.

    Shapes:
        input_ids: (batch, length) item ids in ``[0, num_items]``, 0 = padding, ``length <= max_position_embeddings``.
        attention_mask: (batch, length), 1 for items, 0 for padding (default: ``input_ids != 0``).
        labels: (batch, length) the next item at each position; values ``<= 0`` (-100, or the padding id) are ignored.
        logits: (batch, kept_positions, num_items + 1).
    """

    _input_embed_layer = "item_embeddings"

    def __init__(self, config: SASRecConfig):
        super().__init__(config)
        self.item_embeddings = nn.Embedding(config.num_items + 1, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.embedding_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList([SASRecLayer(config) for _ in range(config.num_hidden_layers)])
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.item_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.item_embeddings = value

    def item_vectors(self, device: torch.device | None = None) -> torch.Tensor:
        """Every row of the item table, padding row included, by calling the table on all ids (so a compressed
        table module works as well as ``nn.Embedding``).

        Shapes:
            output: (num_items + 1, hidden_size).
        """
        if device is None:
            device = self.position_embeddings.weight.device
        return self.item_embeddings(torch.arange(self.config.num_items + 1, device=device))

    def score(self, hidden_states: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every item id given hidden states; the padding column 0 is set to the dtype's minimum.

        Shapes:
            hidden_states: (..., hidden_size). item_vectors: (num_items + 1, hidden_size).
            output: (..., num_items + 1).
        """
        if item_vectors is None:
            item_vectors = self.item_vectors(hidden_states.device)
        scores = hidden_states @ item_vectors.T
        pad = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        pad[self.config.pad_token_id] = True
        return scores.masked_fill(pad, torch.finfo(scores.dtype).min)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final hidden state at every position (zero at padding positions before the final LayerNorm).

        Shapes:
            input_ids, attention_mask: (batch, length). output: (batch, length, hidden_size).
        """
        if input_ids.dim() != 2:
            raise ValueError(
                f"SASRecForNextItem expects input_ids of shape (batch, length), got {tuple(input_ids.shape)}."
            )
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"SASRecForNextItem reads at most max_position_embeddings={self.config.max_position_embeddings} "
                f"items, got histories of length {length}; keep the most recent ones (truncate on the left)."
            )
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_token_id
        present = attention_mask.bool()
        keep = present.unsqueeze(-1).to(self.position_embeddings.weight.dtype)
        position_ids = (present.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.item_embeddings(input_ids) + self.position_embeddings(position_ids)
        # Zeroing padding inputs does not rely on the table's row 0 being zero (compressed tables compute it).
        hidden = self.dropout(self.embedding_norm(hidden)) * keep
        mask = self._attention_mask(present, hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, mask, keep)
        return self.final_norm(hidden)

    @staticmethod
    def _attention_mask(present: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive (batch, 1, length, length) mask: query ``i`` sees keys ``j <= i`` that are items. Each position
        also sees itself, so a padding query never has an empty row (an all-masked softmax is NaN in some kernels,
        and NaN times a zero attention weight is still NaN)."""
        length = present.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=present.device).tril()
        allowed = causal & present[:, None, None, :]
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=present.device)
        return torch.zeros(allowed.shape, dtype=dtype, device=present.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int | None = None,
    ) -> SASRecOutput:
        """Next-item scores, and the full-softmax cross-entropy when ``labels`` are given.

        Args:
            input_ids: left-padded item histories.
            attention_mask: 1 for items, 0 for padding (default: ``input_ids != 0``).
            labels: the next item at every position; positions with a label ``<= 0`` are ignored. The loss is the
                mean over the supervised positions of the cross-entropy over all items (the padding column excluded).
            logits_to_keep: scores of the last ``logits_to_keep`` positions (``0``: all positions). By default all
                positions without labels, and none with labels: training needs only the loss, and (batch, length,
                items) scores would cost as much as the rest of the step.

        Returns:
            :class:`SASRecOutput`.

        Shapes:
            input_ids, attention_mask, labels: (batch, length). logits: (batch, kept, num_items + 1).
        """
        hidden = self.encode(input_ids, attention_mask)
        item_vectors = self.item_vectors(hidden.device)
        loss = None
        if labels is not None:
            supervised = labels > 0
            # Scores of items 1..num_items only (targets shifted by one): the same loss as masking the padding
            # column, without a masked copy of a (positions, items) matrix.
            scores = hidden[supervised] @ item_vectors[1:].T
            # A sum over supervised positions divided by their count (at least 1): a batch without any is a zero
            # loss, not a NaN.
            loss = nn.functional.cross_entropy(
                scores, labels[supervised] - 1, reduction="sum"
            ) / supervised.sum().clamp(min=1)
        if logits_to_keep is None:
            logits_to_keep = None if labels is not None else 0
        logits = None
        if logits_to_keep is not None:
            kept = hidden if logits_to_keep == 0 else hidden[:, -logits_to_keep:]
            logits = self.score(kept, item_vectors)
        return SASRecOutput(loss=loss, logits=logits, last_hidden_state=hidden)


# transformers' public registry: AutoModel builds this model for a SASRecConfig (exist_ok: a reload is fine).
AutoModel.register(SASRecConfig, SASRecForNextItem, exist_ok=True)
