"""The low-rank section of a recipe: a :class:`~hf_sparse.LowRankConfig` plus how a job applies it."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..config import register_config
from ..errors import ConfigError
from .config import LowRankConfig

__all__ = ["LowRankSection"]


@register_config("recipe_lowrank")
@dataclasses.dataclass(frozen=True)
class LowRankSection(LowRankConfig):
    """Low-rank factorisation of each run, with the fields of :class:`~hf_sparse.LowRankConfig` and:

    Args:
        mode: ``"oneshot"``: each run's layers are factorised by truncated SVD before its fine-tuning;
            ``"gradual"``: each run fine-tunes its dense layers while :class:`~hf_sparse.LowRankCallback` lowers
            their ranks along a cubic schedule (and applies the nuclear-norm penalty when ``nuclear_weight`` > 0),
            then factorises them when training ends.
        nuclear_weight, prox_every, update_every: the callback's penalty weight, steps between proximal steps and
            steps between rank projections (``gradual`` only).
        schedule_end: the fraction of the run's optimizer steps by which ranks reach their targets (``gradual``).

    With a ``sensitivity`` section in the recipe, the ranks come from a measured scan
    (:func:`~hf_sparse.lowrank.rank_sensitivity_scan`, its ``sparsities`` read as fractions of each layer's values
    removed) allocated at ``compression`` (:func:`~hf_sparse.lowrank.allocate_ranks`).
    """

    mode: Literal["oneshot", "gradual"] = "oneshot"
    nuclear_weight: float = 0.0
    prox_every: int = 50
    update_every: int = 50
    schedule_end: float = 0.6

    def validate(self) -> None:
        super().validate()
        if self.mode == "oneshot" and (self.nuclear_weight > 0):
            raise ConfigError("lowrank.nuclear_weight needs mode: gradual (the penalty acts while training).")
        if self.nuclear_weight < 0:
            raise ConfigError(f"lowrank.nuclear_weight must be >= 0, got {self.nuclear_weight}.")
        for key in ("prox_every", "update_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"lowrank.{key} must be >= 1 (optimizer steps), got {getattr(self, key)}.")
        if not 0.0 < self.schedule_end <= 1.0:
            raise ConfigError(f"lowrank.schedule_end must be in (0, 1], got {self.schedule_end}.")
        if self.mode == "gradual" and self.embeddings:
            raise ConfigError(
                "lowrank: mode gradual lowers Linear layers' ranks while training; embedding tables are factorised "
                "one-shot — use mode: oneshot with embeddings."
            )

    def to_config(self) -> LowRankConfig:
        """The plain LowRankConfig of this section."""
        return LowRankConfig(**{k: getattr(self, k) for k in LowRankConfig.field_names()})
