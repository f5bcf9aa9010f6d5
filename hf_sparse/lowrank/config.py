"""``LowRankConfig``: which Linear layers to factorise and how their ranks are chosen."""

from __future__ import annotations

import dataclasses
import re

from ..config import BaseConfig, register_config
from ..errors import ConfigError, quote

__all__ = ["LowRankConfig"]


def _default_exclude() -> tuple[str, ...]:
    from ..pruning.config import DEFAULT_EXCLUDE  # imported late: the pruning package imports the model modules

    return DEFAULT_EXCLUDE


@register_config("lowrank")
@dataclasses.dataclass(frozen=True)
class LowRankConfig(BaseConfig):
    """Truncated-SVD factorisation of Linear layers (``W ≈ U V``, optionally ``+ S`` sparse).

    Each selected layer's rank comes from, in this order of precedence: ``module_ranks`` (by name or regular
    expression), ``rank`` (one rank for all), ``energy`` (the smallest rank whose singular values keep that fraction
    of ``||W||_F^2``), or ``compression`` (the largest rank whose factors hold at most that fraction of the layer's
    parameters). A layer whose factors would not be smaller than it stays dense (reported with the reason).

    Args:
        target_modules: names or regular expressions of the Linear layers to factorise (empty: every Linear not
            excluded).
        exclude_modules: names or regular expressions to leave dense (default: task heads and poolers).
        rank, energy, compression, module_ranks: the rank rules above; exactly one of rank / energy / compression
            (or only module_ranks covering every layer).
        sparse_density: with a value > 0, also keep the largest ``sparse_density`` fraction of each residual
            ``W - U V`` in CSR (``lowrank_sparse``).
        round_to: ranks are rounded down to a multiple of this (SIMD-friendly GEMM widths), at least ``min_rank``.
        min_rank: the smallest rank a layer gets.
        embeddings: ``nn.Embedding`` tables to factorise too (names or regular expressions, e.g.
            ``["word_embeddings"]``), each into ``vocab x r`` and ``r x dim`` factors
            (:class:`~hf_sparse.nn.lowrank_embedding.LowRankEmbedding`).
        embedding_rank, embedding_compression: the tables' rank, or the fraction of their values the factors may
            hold (one of the two when ``embeddings`` is set).
    """

    target_modules: tuple[str, ...] = ()
    exclude_modules: tuple[str, ...] = dataclasses.field(default_factory=_default_exclude)
    rank: int | None = None
    energy: float | None = None
    compression: float | None = None
    module_ranks: dict[str, int] = dataclasses.field(default_factory=dict)
    sparse_density: float = 0.0
    round_to: int = 8
    min_rank: int = 8
    embeddings: tuple[str, ...] = ()
    embedding_rank: int | None = None
    embedding_compression: float | None = None

    def validate(self) -> None:
        rules = [n for n in ("rank", "energy", "compression") if getattr(self, n) is not None]
        if len(rules) > 1:
            raise ConfigError(f"LowRankConfig: give one of rank, energy, compression; got {rules}.")
        if not rules and not self.module_ranks and not self.embeddings:
            raise ConfigError("LowRankConfig: give rank, energy, compression or module_ranks (or embeddings).")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"LowRankConfig.rank must be >= 1, got {self.rank}.")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ConfigError(f"LowRankConfig.energy must be in (0, 1], got {self.energy}.")
        if self.compression is not None and not 0.0 < self.compression < 1.0:
            raise ConfigError(f"LowRankConfig.compression must be in (0, 1), got {self.compression}.")
        for key, r in self.module_ranks.items():
            try:
                re.compile(key)
            except re.error as exc:
                raise ConfigError(
                    f"LowRankConfig.module_ranks key {quote(key)} is not a valid pattern: {exc}."
                ) from None
            if r < 1:
                raise ConfigError(f"LowRankConfig.module_ranks[{quote(key)}] must be >= 1, got {r}.")
        if not 0.0 <= self.sparse_density < 1.0:
            raise ConfigError(f"LowRankConfig.sparse_density must be in [0, 1), got {self.sparse_density}.")
        if self.embedding_rank is not None and self.embedding_rank < 1:
            raise ConfigError(f"LowRankConfig.embedding_rank must be >= 1, got {self.embedding_rank}.")
        if self.embedding_compression is not None and not 0.0 < self.embedding_compression < 1.0:
            raise ConfigError(
                f"LowRankConfig.embedding_compression must be in (0, 1), got {self.embedding_compression}."
            )
        if self.embeddings and self.embedding_rank is not None and self.embedding_compression is not None:
            raise ConfigError(
                "LowRankConfig.embedding_rank and LowRankConfig.embedding_compression are both set: with embeddings, "
                "give one of embedding_rank or embedding_compression."
            )
        if self.embeddings and self.embedding_rank is None and self.embedding_compression is None:
            raise ConfigError(
                f"LowRankConfig.embeddings names {list(self.embeddings)}: with embeddings, give one of embedding_rank "
                "or embedding_compression (the tables' rank, or the fraction of their values the factors keep)."
            )
        for key in ("round_to", "min_rank"):
            if getattr(self, key) < 1:
                raise ConfigError(f"LowRankConfig.{key} must be >= 1, got {getattr(self, key)}.")

    def rank_rule_for(self, name: str) -> int | None:
        """The explicit rank of module ``name`` (``module_ranks``, then ``rank``), or None when a spectrum rule
        (energy, compression) decides."""
        if name in self.module_ranks:  # an exact name wins over any pattern that also matches it
            return self.module_ranks[name]
        for pattern, r in self.module_ranks.items():
            if re.fullmatch(pattern, name):
                return r
        return self.rank
