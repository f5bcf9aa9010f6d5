"""DistillationConfig: which teacher signals a student learns from, and how strongly."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from ..config import BaseConfig, register_config
from ..errors import ConfigError

__all__ = ["DistillationConfig"]


@register_config("distillation")
@dataclasses.dataclass(frozen=True)
class DistillationConfig(BaseConfig):
    """Knowledge distillation from a dense teacher into a smaller, pruned or quantised student.

    The training loss becomes ``(1 - alpha) * task + alpha * KD + hidden_weight * hidden + attention_weight *
    attention + embedding_weight * embedding`` (see :mod:`hf_sparse.distillation.losses`). Without labels in the
    batch the KD term counts fully.

    Args:
        alpha: Weight of the logits-KD term against the task loss, in [0, 1]. 0 turns logits KD off.
        temperature: Softmax temperature of logits KD (> 0); the KD term is scaled by ``temperature ** 2``.
        hidden_weight: Weight of hidden-state matching between mapped layers (0 = off).
        hidden_loss: ``"mse"`` or ``"cosine"``.
        attention_weight: Weight of attention-map transfer between mapped layers (0 = off). Needs attention
            probabilities, so both models run with the ``eager`` attention implementation while training.
        attention_loss: ``"kl"`` (MiniLM) or ``"mse"`` (TinyBERT).
        embedding_weight: Weight of embedding-output matching (0 = off).
        layer_map: For each student layer in order, the teacher layer (0-based) it learns from; ``-1`` leaves that
            student layer unmatched. Empty (the default) maps automatically: a student made by dropping teacher
            layers learns from the layers it kept, a student of the same depth one-to-one, a shallower one uniformly
            (student layer ``i`` of ``S`` from teacher layer ``round((i + 1) * T / S) - 1``: 6 -> 3 gives 1, 3, 5).
            For an encoder-decoder student it lists the encoder layers, then the decoder layers, each naming a layer
            of the teacher's same stack (encoder layers learn only from encoder layers, decoder from decoder); the
            automatic map works on each stack separately.
        cache_dir: Folder for teacher outputs cached on disk (logits, and the mapped hidden states when a hidden
            or embedding term is on), reused across epochs and runs. Entries are keyed by the teacher's weights and
            by each example's token ids, so a changed model, data set or tokenisation never reads stale outputs.
            ``None`` runs the teacher live on every batch.

    Raises:
        ConfigError: a value outside its range, naming the field.
    """

    alpha: float = 0.5
    temperature: float = 2.0
    hidden_weight: float = 0.0
    hidden_loss: Literal["mse", "cosine"] = "mse"
    attention_weight: float = 0.0
    attention_loss: Literal["kl", "mse"] = "kl"
    embedding_weight: float = 0.0
    layer_map: tuple[int, ...] = ()
    cache_dir: str | None = None

    def validate(self) -> None:
        name = type(self).__name__
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{name}.alpha must be in [0, 1], got {self.alpha}.")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"{name}.temperature must be a finite number > 0, got {self.temperature}.")
        for key in ("hidden_weight", "attention_weight", "embedding_weight"):
            value = getattr(self, key)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name}.{key} must be a finite number >= 0, got {value}.")
        if any(i < -1 for i in self.layer_map):
            raise ConfigError(
                f"{name}.layer_map holds teacher layer indices (0-based) or -1 for an unmatched student layer, got "
                f"{list(self.layer_map)}."
            )
        if self.attention_weight > 0 and self.cache_dir is not None:
            raise ConfigError(
                f"{name}: attention maps cannot be cached (heads x length^2 values per example and layer); set "
                "attention_weight=0 to use cache_dir, or cache_dir=None to run the teacher live."
            )
        if self.alpha == 0 and not (self.hidden_weight or self.attention_weight or self.embedding_weight):
            raise ConfigError(
                f"{name}: every term is off (alpha=0 and no hidden, attention or embedding weight); set alpha > 0 for "
                "logits distillation."
            )

    @property
    def needs_hidden(self) -> bool:
        """Whether the teacher's hidden states are used (hidden-state or embedding matching)."""
        return self.hidden_weight > 0 or self.embedding_weight > 0

    @property
    def needs_attentions(self) -> bool:
        return self.attention_weight > 0
