"""``EmbeddingCompressionConfig``: which embedding tables to compress, and how, per table."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from ..config import BaseConfig, check_seed, register_config
from ..errors import ConfigError, quote

__all__ = ["TableCompression", "EmbeddingCompressionConfig", "METHODS"]

#: method -> the storage format it produces.
METHODS = {
    "qrow": "qrow",
    "hashed": "hashed",
    "qr": "qr",
    "tt": "tt",
    "rowmap": "rowmap",
    "lowrank": "lowrank",
}


@register_config("embedding_table")
@dataclasses.dataclass(frozen=True)
class TableCompression(BaseConfig):
    """How one embedding table is compressed.

    The method's size comes from its own field when given, else from ``compression`` (the fraction of the float32
    table's bytes the compressed table may use, e.g. ``0.125`` for "memory / 8", hot rows included).

    Args:
        method: ``qrow`` (row-wise ``bits``-bit codes, float16 scale and bias per row, fused C++ lookup),
            ``hashed`` (hashing trick, ``num_hashes`` hash functions into ``buckets`` shared rows), ``qr``
            (quotient-remainder, ``collisions`` remainder rows, combined by ``op``), ``tt`` (tensor train of rank
            ``tt_rank``), ``rowmap`` (row pruning: ``keep_rows`` ids keep a row, the others share ``shared_rows``),
            ``lowrank`` (``rank`` factors).
        compression: target bytes as a fraction of the float32 table (sizes every method but ``qrow``).
        hot_rows: frequency-aware: the ``hot_rows`` most frequent ids (needs frequencies; else the largest-norm
            rows) keep their own rows at ``hot_bits`` (32: float32, trained; 8 or 4: ``qrow`` codes, frozen) and only
            the other ids are compressed by ``method``.
        init: ``"fit"``: start from the trained table (each method's closed form — SVD, TT-SVD, quantisation,
            bucket means — then ``fit_steps`` Adam steps on the frequency-weighted reconstruction error);
            ``"random"``: a fresh table of the method's shape at the dense table's scale (training from scratch).
        qat: with ``qrow``: embedding QAT instead — the table stays float and trains with fake-quantised rows
            (``bits`` codes, one scale and zero point per row, straight-through gradients); after training
            :func:`~hf_sparse.embeddings.finalize_embeddings_` stores it as integer codes (``qdense``: a float32
            scale and int8 zero point per row) that dequantise to exactly what the last training step used.
        seed: hash functions and random initialisation.
    """

    method: Literal["qrow", "hashed", "qr", "tt", "rowmap", "lowrank"] = "qrow"
    compression: float | None = None
    bits: int = 4
    buckets: int | None = None
    num_hashes: int = 2
    collisions: int | None = None
    op: Literal["add", "mult", "concat"] = "mult"
    tt_rank: int | None = None
    keep_rows: int | None = None
    shared_rows: int = 1
    rank: int | None = None
    hot_rows: int = 0
    hot_bits: Literal[4, 8, 32] = 32
    init: Literal["fit", "random"] = "fit"
    qat: bool = False
    fit_steps: int = 200
    fit_lr: float = 0.01
    seed: int = 0

    def validate(self) -> None:
        name = type(self).__name__
        size_field = {
            "hashed": "buckets",
            "qr": "collisions",
            "tt": "tt_rank",
            "rowmap": "keep_rows",
            "lowrank": "rank",
        }.get(self.method)
        if size_field is not None and getattr(self, size_field) is None and self.compression is None:
            raise ConfigError(f"{name}.method {quote(self.method)} needs {size_field} or compression.")
        if self.compression is not None and not 0.0 < self.compression < 1.0:
            raise ConfigError(f"{name}.compression must be in (0, 1), got {self.compression}.")
        if self.bits not in (2, 4, 8):
            raise ConfigError(f"{name}.bits must be 2, 4 or 8, got {self.bits}.")
        for key in ("buckets", "collisions", "tt_rank", "keep_rows", "rank", "num_hashes", "shared_rows"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{name}.{key} must be >= 1, got {value}.")
        for key in ("hot_rows", "fit_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{name}.{key} must be >= 0, got {getattr(self, key)}.")
        if self.fit_lr <= 0:
            raise ConfigError(f"{name}.fit_lr must be > 0, got {self.fit_lr}.")
        check_seed(self.seed, f"{name}.seed")
        if self.qat and (self.method != "qrow" or self.hot_rows):
            raise ConfigError(
                f"{name}.qat applies to method 'qrow' without hot_rows (row-wise codes for the whole table), got "
                f"method {quote(self.method)} and hot_rows {self.hot_rows}."
            )
        if self.method == "qrow" and self.init == "random":
            raise ConfigError(f"{name}.method 'qrow' quantises a trained table; init 'random' needs a float method.")


@register_config("embeddings")
@dataclasses.dataclass(frozen=True)
class EmbeddingCompressionConfig(BaseConfig):
    """Compressed embedding tables, per table.

    Args:
        tables: a component of a module's name (``word_embeddings``) or a regular expression of the full name ->
            how the ``nn.Embedding`` tables it names are compressed (:class:`TableCompression`). Tied tables (an
            embedding shared with an output layer) are refused.
    """

    tables: dict[str, TableCompression] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        if not self.tables:
            raise ConfigError(
                f"{type(self).__name__}.tables is empty: name at least one embedding table, e.g. "
                "{word_embeddings: {method: qr}}."
            )
        for key in self.tables:
            try:
                re.compile(key)
            except re.error as exc:
                raise ConfigError(
                    f"{type(self).__name__}.tables key {quote(key)} is not a valid pattern: {exc}."
                ) from None
