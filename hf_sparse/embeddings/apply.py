"""``compress_embeddings_``: replace a model's embedding tables by compressed ones, in place."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..formats import FORMATS, QR, TT, Hashed, Hot, LowRank, RowMap, SparseFormat, index_dtype
from ..formats.tt import tt_factors
from ..nn.compressed_embedding import CompressedEmbedding
from ..nn.replace import replace_module
from .config import EmbeddingCompressionConfig, TableCompression
from .fit import fit_format_

__all__ = ["compress_embeddings_", "finalize_embeddings_", "build_table", "size_for"]


def size_for(spec: TableCompression, rows: int, cols: int) -> dict[str, Any]:
    """The method's size parameters for a ``rows x cols`` table: its own field, else the largest size whose bytes
    fit in ``spec.compression`` of the float32 table.

    Raises:
        ConfigError: the budget is too small for the method (e.g. QR needs at least ``2 sqrt(rows)`` rows).
    """
    budget = None if spec.compression is None else spec.compression * rows * cols * 4
    where = f"method {spec.method!r} at compression {spec.compression}"

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: {what} does not fit a {rows} x {cols} table's budget of {budget:.0f} bytes.")

    if spec.method == "qrow":
        return {"bits": spec.bits}
    if spec.method == "hashed":
        buckets = spec.buckets or int(budget // (cols * 4))
        need(buckets >= 1, "one bucket")
        return {"buckets": buckets, "num_hashes": spec.num_hashes, "seed": spec.seed}
    if spec.method == "qr":
        if spec.collisions is not None:
            return {"collisions": spec.collisions, "op": spec.op}
        row_bytes = (cols // 2 if spec.op == "concat" else cols) * 4
        total_rows = int(budget // row_bytes)
        # The fewest collisions (remainder rows) whose two tables fit: quotient rows ceil(V / m) + m <= budget.
        m0 = max(1, math.ceil(rows / max(total_rows - 1, 1)))
        for m in range(m0, rows + 1):
            if math.ceil(rows / m) + m <= total_rows:
                return {"collisions": m, "op": spec.op}
            if m * m > rows:
                break
        need(False, f"the smallest QR pair ({2 * math.isqrt(rows)} rows)")
    if spec.method == "tt":
        vocab, dims = tt_factors(rows, cols)
        if spec.tt_rank is not None:
            return {"rank": spec.tt_rank, "vocab_factors": vocab, "dim_factors": dims}

        def params(r: int) -> int:
            return vocab[0] * dims[0] * r + r * vocab[1] * dims[1] * r + r * vocab[2] * dims[2]

        r = 1
        while params(r + 1) * 4 <= budget and r < 4096:
            r += 1
        need(params(r) * 4 <= budget, "rank 1")
        return {"rank": r, "vocab_factors": vocab, "dim_factors": dims}
    if spec.method == "rowmap":
        if spec.keep_rows is not None:
            return {"keep": min(spec.keep_rows, rows), "shared": spec.shared_rows}
        index_bytes = torch.empty(0, dtype=index_dtype(rows)).element_size()
        keep = int((budget - rows * index_bytes) // (cols * 4)) - spec.shared_rows
        need(keep >= 0, "the remap index")
        return {"keep": min(keep, rows), "shared": spec.shared_rows}
    if spec.method == "lowrank":
        rank = spec.rank or int(budget // (4 * (rows + cols)))
        need(rank >= 1, "rank 1")
        return {"rank": min(rank, rows, cols)}
    raise ConfigError(f"unknown method {spec.method!r}")  # pragma: no cover - the config's Literal rejects it


def _random_format(spec: TableCompression, shape, size: dict, std: float, generator: torch.Generator) -> SparseFormat:
    """A fresh table of the method's shape whose rows have about ``std`` per entry (training from scratch)."""
    rows, cols = shape

    def randn(*s, scale=1.0):
        return torch.randn(*s, generator=generator) * scale

    if spec.method == "hashed":
        fmt = Hashed.empty(shape, size["buckets"], size["num_hashes"], seed=size["seed"])
        fmt.values = randn(size["buckets"], cols, scale=std / math.sqrt(size["num_hashes"]))
        return fmt
    if spec.method == "qr":
        (qs, rs) = QR.table_shapes(shape, size["collisions"], size["op"])
        if size["op"] == "mult":
            return QR(randn(*qs, scale=std), 1.0 + randn(*rs, scale=0.01), shape, "mult")
        scale = std / math.sqrt(2) if size["op"] == "add" else std
        return QR(randn(*qs, scale=scale), randn(*rs, scale=scale), shape, size["op"])
    if spec.method == "tt":
        vocab, dims, r = size["vocab_factors"], size["dim_factors"], size["rank"]
        ranks = [1, r, r, 1]
        # Each entry is a sum of r^2 products of three core entries: per-core scale (std^2 / r^2)^(1/6).
        scale = (std**2 / (r * r)) ** (1.0 / 6.0)
        return TT([randn(ranks[k], vocab[k], dims[k], ranks[k + 1], scale=scale) for k in range(3)], shape)
    if spec.method == "rowmap":
        fmt = RowMap.from_dense(randn(rows, cols, scale=std), keep=size["keep"], shared=size["shared"])
        return fmt
    if spec.method == "lowrank":
        r = size["rank"]
        scale = (std**2 / r) ** 0.25
        return LowRank(randn(rows, r, scale=scale), randn(r, cols, scale=scale), shape, r)
    raise ConfigError(f"init 'random' is not defined for method {spec.method!r}.")


def build_table(
    weight: torch.Tensor, spec: TableCompression, frequencies: torch.Tensor | None = None
) -> tuple[SparseFormat, dict[str, Any]]:
    """The compressed table ``spec`` makes of ``weight`` (rows: ids), and a report entry.

    Args:
        weight: the trained (rows, cols) table (``init="fit"``), or any table of the right shape and scale
            (``init="random"`` reads only its shape and standard deviation).
        frequencies: per-id counts (rows,): which ids are hot, which rows ``rowmap`` keeps, and the weights of
            the fitted reconstruction error.
    """
    rows, cols = weight.shape
    w = weight.detach().float()
    if frequencies is not None:
        frequencies = torch.as_tensor(frequencies, dtype=torch.float64).to(w.device)
        if frequencies.shape != (rows,):
            raise ConfigError(f"frequencies must have one count per row ({rows}), got {tuple(frequencies.shape)}.")
    importance = frequencies if frequencies is not None else w.norm(dim=1).double()
    hot_ids = None
    cold_spec = spec
    if spec.hot_rows:
        if spec.hot_rows >= rows:
            raise ConfigError(f"hot_rows={spec.hot_rows} leaves no row of the {rows} to compress.")
        hot_ids = torch.sort(torch.argsort(importance, descending=True, stable=True)[: spec.hot_rows]).values
        if spec.compression is not None:
            hot_bytes = (
                spec.hot_rows * (cols * 4 if spec.hot_bits == 32 else cols * spec.hot_bits // 8 + 4)
                + 4 * spec.hot_rows
            )
            left = spec.compression * rows * cols * 4 - hot_bytes
            if left <= 0:
                raise ConfigError(
                    f"hot_rows={spec.hot_rows} at {spec.hot_bits} bits use the whole budget of compression "
                    f"{spec.compression}; lower hot_rows or hot_bits."
                )
            cold_spec = spec.replace(compression=min(left / ((rows - spec.hot_rows) * cols * 4), 0.999))
    is_hot = torch.zeros(rows, dtype=torch.bool, device=w.device)
    if hot_ids is not None:
        is_hot[hot_ids] = True
    cold_w = w[~is_hot]
    size = size_for(cold_spec, int(cold_w.shape[0]), cols)
    cold_importance = importance[~is_hot]
    if spec.init == "random":
        g = torch.Generator().manual_seed(spec.seed)
        cold = _random_format(cold_spec, tuple(cold_w.shape), size, float(w.std()), g)
    elif spec.method == "rowmap":
        cold = RowMap.from_dense(cold_w, importance=cold_importance, **size)
    elif spec.method == "qrow":
        cold = FORMATS.get("qrow").from_dense(cold_w, **size)
    else:
        cold = FORMATS.get(spec.method).from_dense(cold_w, **size)
    if hot_ids is None:
        fmt = cold
    else:
        hot_w = w[is_hot]
        if spec.hot_bits in (4, 8):
            hot = FORMATS.get("qrow").from_dense(hot_w, bits=spec.hot_bits)
        else:
            hot = RowMap.from_dense(hot_w, keep=int(hot_w.shape[0]), shared=0)
        fmt = Hot(hot_ids.to(torch.int32), hot, cold, (rows, cols))
    if spec.init == "fit" and spec.fit_steps and spec.method != "qrow":
        fit_weights = None if frequencies is None else frequencies + 1.0
        fit_format_(fmt, w, steps=spec.fit_steps, lr=spec.fit_lr, row_weights=fit_weights)
    with torch.no_grad():
        dense = fmt.to_dense().float()
        error = float((dense - w).norm() / w.norm().clamp(min=1e-30))
    entry = {
        "method": spec.method,
        "format": fmt.name,
        "shape": [rows, cols],
        "size": size,
        "hot_rows": spec.hot_rows,
        "bytes": fmt.nbytes,
        "dense_bytes": rows * cols * 4,
        "memory_ratio": fmt.nbytes / (rows * cols * 4),
        "relative_error": error if spec.init == "fit" else None,
        "init": spec.init,
    }
    return fmt, entry


def compress_embeddings_(
    model: nn.Module,
    config: EmbeddingCompressionConfig,
    *,
    frequencies: Mapping[str, torch.Tensor] | torch.Tensor | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Replace the ``nn.Embedding`` tables ``config`` names by :class:`~hf_sparse.nn.CompressedEmbedding` (or
    :class:`~hf_sparse.nn.lowrank_embedding.LowRankEmbedding` for ``lowrank`` without hot rows), in place. The
    new tables train (except quantised parts), and save / load through ``from_pretrained`` with their format in
    ``config.json``.

    Args:
        frequencies: per-id counts of each table (a dict by module name or pattern key, or one tensor for all):
            hot rows, the rows ``rowmap`` keeps, and the fit's weights.

    Returns:
        Per table: method, format, size parameters, bytes vs the float32 table (``memory_ratio``), the fitted
        relative error.

    Raises:
        ConfigError: a key names no embedding, a table is tied to the output layer, or a budget is too small.
    """
    from ..nn.description import sparse_config_for
    from ..nn.lowrank_embedding import LowRankEmbedding
    from ..nn.matching import match_embeddings

    chosen: dict[str, tuple[nn.Embedding, TableCompression, Any]] = {}
    for key, spec in config.tables.items():
        for name, table in match_embeddings(model, [key], who="EmbeddingCompressionConfig").items():
            if name in chosen:
                continue  # an earlier key (exact names first in the user's order) already took it
            if isinstance(frequencies, Mapping):
                freq = frequencies.get(name, frequencies.get(key))
            else:
                freq = frequencies
            chosen[name] = (table, spec, freq)
    report = {}
    for name, (table, spec, freq) in tqdm(list(chosen.items()), desc="Compressing embeddings", disable=not progress):
        if table.max_norm is not None or table.sparse:
            raise ConfigError(f"{name}: max_norm and sparse=True embeddings are not compressed; keep them dense.")
        if spec.qat:
            replace_module(model, name, _qat_table(name, table, spec))
            rows, cols = table.weight.shape
            report[name] = {
                "method": "qrow",
                "format": "qdense",
                "qat": True,
                "shape": [rows, cols],
                "size": {"bits": spec.bits},
                "hot_rows": 0,
                # codes, a float32 scale and an int8 zero point per row, once finalized
                "bytes": rows * (cols * spec.bits // 8 + 5),
                "dense_bytes": rows * cols * 4,
                "memory_ratio": (cols * spec.bits // 8 + 5) / (cols * 4),
                "relative_error": None,
                "init": "fit",
            }
            continue
        fmt, entry = build_table(table.weight, spec, freq)
        device = table.weight.device
        if isinstance(fmt, LowRank):
            new = LowRankEmbedding(fmt, table.padding_idx).to(device)
        else:
            new = CompressedEmbedding(fmt, table.padding_idx).to(device)
        replace_module(model, name, new)
        report[name] = entry
    config_obj = getattr(model, "config", None)
    if config_obj is not None and hasattr(config_obj, "to_dict") and report:
        config_obj.quantization_config = sparse_config_for(model)
    return report


def _qat_table(name: str, table: nn.Embedding, spec: TableCompression) -> nn.Module:
    from ..formats.schemes import QuantScheme
    from ..nn.qat import QATEmbedding
    from ..quantization.config import QuantizationConfig

    scheme = QuantScheme(bits=spec.bits, granularity="channel", symmetric=False)
    module = QATEmbedding(table, scheme)
    # What convert_ reads to store the table (only its embedding scheme applies).
    module.hf_sparse_quantization = QuantizationConfig(embedding=scheme, embedding_modules=(name,))
    return module


def finalize_embeddings_(model: nn.Module) -> dict[str, str]:
    """Store every table trained with embedding QAT (``qat: true``) as integer codes, in place (the QAT layers of
    Linear weights, if any, are converted too: see :func:`~hf_sparse.quantization.convert_`).

    Returns:
        The storage format of each converted module, by name (empty when there was nothing to convert).
    """
    from ..nn.qat import QATEmbedding
    from ..quantization.apply import convert_

    if not any(isinstance(m, QATEmbedding) for m in model.modules()):
        return {}
    out = convert_(model)
    config_obj = getattr(model, "config", None)
    if config_obj is not None and hasattr(config_obj, "to_dict"):
        from ..nn.description import sparse_config_for

        config_obj.quantization_config = sparse_config_for(model)
    return out
