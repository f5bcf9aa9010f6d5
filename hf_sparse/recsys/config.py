"""``SASRecConfig``: the transformers configuration of :class:`~hf_sparse.recsys.SASRecForNextItem`."""

from __future__ import annotations

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from ..errors import ConfigError, quote

__all__ = ["SASRecConfig"]


class SASRecConfig(PreTrainedConfig):
    """Configuration of a SASRec-style sequential recommender (Kang & McAuley, 2018): causal self-attention over a
    user's item history, scored against the same item table it reads from.

    Unlike hf_sparse's own method configs this one is not frozen: it is a transformers ``PreTrainedConfig``, which
    transformers itself mutates (``_attn_implementation``, ``dtype``, ``name_or_path``). Like transformers 5's
    configs it is a keyword-only dataclass; values are checked when it is built and again by ``save_pretrained``
    (through :meth:`validate`), with a :class:`~hf_sparse.errors.ConfigError` that names the field.

    Args:
        num_items: number of items. Item ids are ``1..num_items``; id 0 is padding, so the item table has
            ``num_items + 1`` rows. The default is MovieLens 100K's 1,682 movies.
        hidden_size: width of the item and position embeddings and of the residual stream.
        num_hidden_layers: number of self-attention blocks.
        num_attention_heads: attention heads per block (must divide ``hidden_size``).
        intermediate_size: width of each block's feed-forward layer.
        hidden_act: activation of the feed-forward layer (a key of ``transformers.activations.ACT2FN``).
        hidden_dropout_prob: dropout on the embeddings and on each block's residual branches.
        attention_probs_dropout_prob: dropout on the attention probabilities.
        max_position_embeddings: the longest history the model reads (rows of the position table).
        initializer_range: standard deviation of the normal initialisation of embeddings and Linear layers.
        layer_norm_eps: epsilon of the LayerNorms.
        pad_token_id: the padding item id; must be 0 (the item table's row 0 and the score column 0 are padding).
    """

    model_type = "hf_sparse_sasrec"

    num_items: int = 1682
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 256
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.2
    attention_probs_dropout_prob: float = 0.2
    max_position_embeddings: int = 200
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-8
    pad_token_id: int = 0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate()

    def validate(self) -> None:
        """Checks every field; called on construction and by ``save_pretrained``.

        Raises:
            ConfigError: a field has a wrong type or value (the message names it and the allowed values).
        """
        for name in (
            "num_items",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"SASRecConfig.{name} must be a positive integer, got {quote(value)}.")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"SASRecConfig.hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"SASRecConfig.{name} must be a probability in [0, 1), got {quote(value)}.")
        for name in ("initializer_range", "layer_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"SASRecConfig.{name} must be a positive number, got {quote(value)}.")
        if self.hidden_act not in ACT2FN:
            raise ConfigError(
                f"SASRecConfig.hidden_act must be one of {sorted(ACT2FN)}, got {quote(self.hidden_act)}."
            )
        if self.pad_token_id != 0:
            raise ConfigError(
                f"SASRecConfig.pad_token_id must be 0 (item id 0 is the padding row of the item table), "
                f"got {quote(self.pad_token_id)}."
            )
