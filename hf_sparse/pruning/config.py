"""Configuration of weight pruning."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from ..config import BaseConfig, register_config
from ..errors import ConfigError

__all__ = ["PruningConfig", "DEFAULT_EXCLUDE"]

#: Module-name components that are never pruned by default: task heads, the pooler and embeddings. Matched against
#: each dot-separated component of a module's qualified name (``bert.pooler.dense`` has the component ``pooler``).
DEFAULT_EXCLUDE: tuple[str, ...] = (
    "classifier",
    "pre_classifier",
    "pooler",
    "lm_head",
    "score",
    "qa_outputs",
    "cls",
    "embeddings",
    "embed_tokens",
)


@register_config("pruning")
@dataclasses.dataclass(frozen=True)
class PruningConfig(BaseConfig):
    """Unstructured weight pruning of ``nn.Linear`` layers.

    Args:
        sparsity: Final fraction of the selected weights set to zero, in [0, 1).
        criterion: How weights are ranked; ``"magnitude"`` keeps the largest ``|w|``.
        scope: ``"global"`` ranks all selected weights together (layers end with different sparsities);
            ``"layer"`` prunes every selected layer to the same sparsity.
        target_modules: Regular expressions over qualified module names (``re.fullmatch``; a plain word such as
            ``"query"`` also matches as the last name component). Empty means every ``nn.Linear``.
        exclude_modules: Names (components) or regular expressions never pruned. Exclusion wins over
            ``target_modules``. Defaults to task heads, poolers and embeddings (:data:`DEFAULT_EXCLUDE`).
        embeddings: ``nn.Embedding`` modules pruned together with the selected Linear layers (ranked with them
            under ``scope="global"``), by name component or full-name regex, e.g. ``["word_embeddings"]``: in
            MiniLM/BERT the word-embedding table is half the parameters, so a checkpoint cannot get much below half
            its dense size without it. ``exclude_modules`` does not apply to embeddings named here (naming them is
            explicit); a name that matches no ``nn.Embedding`` is an error. Tied input/output embeddings cannot be
            pruned this way.
        schedule: ``"cubic"`` — gradual pruning of Zhu & Gupta (2017) from ``initial_sparsity`` at ``start_step``
            to ``sparsity`` at ``end_step``, masks recomputed every ``update_every`` optimizer steps;
            ``"oneshot"`` — prune to ``sparsity`` at ``start_step`` and keep the mask fixed.
        initial_sparsity: Sparsity at ``start_step`` for the cubic schedule.
        start_step: Optimizer step at which pruning starts.
        end_step: Optimizer step at which the final sparsity is reached (cubic schedule).
        update_every: Steps between mask updates (cubic schedule).
    """

    sparsity: float = 0.5
    criterion: Literal["magnitude"] = "magnitude"
    scope: Literal["global", "layer"] = "global"
    target_modules: tuple[str, ...] = ()
    exclude_modules: tuple[str, ...] = DEFAULT_EXCLUDE
    embeddings: tuple[str, ...] = ()
    schedule: Literal["cubic", "oneshot"] = "cubic"
    initial_sparsity: float = 0.0
    start_step: int = 0
    end_step: int = 0
    update_every: int = 10

    def validate(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"PruningConfig.sparsity must be in [0, 1), got {self.sparsity}.")
        if not 0.0 <= self.initial_sparsity <= self.sparsity:
            raise ConfigError(
                f"PruningConfig.initial_sparsity must be in [0, sparsity={self.sparsity}], "
                f"got {self.initial_sparsity}."
            )
        if self.start_step < 0:
            raise ConfigError(f"PruningConfig.start_step must be >= 0, got {self.start_step}.")
        if self.schedule == "cubic" and self.end_step < self.start_step:
            raise ConfigError(f"PruningConfig.end_step ({self.end_step}) must be >= start_step ({self.start_step}).")
        if self.update_every < 1:
            raise ConfigError(f"PruningConfig.update_every must be >= 1, got {self.update_every}.")
        for key in ("target_modules", "exclude_modules", "embeddings"):
            for pattern in getattr(self, key):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(
                        f"PruningConfig.{key} has an invalid regular expression {pattern!r}: {exc}."
                    ) from None
