"""``factorize_``: replace a model's Linear layers by low-rank (``U V``) or low-rank + sparse layers, in place."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..formats.lowrank import LowRank, LowRankSparse
from ..nn.replace import replace_module
from ..nn.sparse_linear import SparseLinear
from .config import LowRankConfig
from .ranks import factor_params, rank_for_compression, rank_for_energy, round_rank

__all__ = ["factorize_", "choose_rank"]


def choose_rank(name: str, weight: torch.Tensor, config: LowRankConfig, singular_values=None) -> int:
    """The rank ``config`` gives the Linear layer ``name`` with this ``weight`` (see :class:`LowRankConfig`).

    Raises:
        ConfigError: an explicit rank exceeds the layer's largest rank.
    """
    rows, cols = weight.shape
    full = min(rows, cols)
    explicit = config.rank_rule_for(name)
    if explicit is not None:
        if explicit > full:
            raise ConfigError(f"LowRankConfig: rank {explicit} for {name} exceeds its largest rank {full}.")
        return explicit
    if config.energy is not None:
        s = singular_values if singular_values is not None else torch.linalg.svdvals(weight.detach().double())
        return round_rank(rank_for_energy(s, config.energy), config.round_to, config.min_rank, full)
    return round_rank(rank_for_compression(rows, cols, config.compression), config.round_to, config.min_rank, full)


def factorize_(model: nn.Module, config: LowRankConfig, *, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Factorise the Linear layers (and GPT-2's ``Conv1D``) ``config`` selects by truncated SVD, in place: each
    becomes a :class:`~hf_sparse.SparseLinear` over a ``lowrank`` (or ``lowrank_sparse``) weight, which runs as two
    thin matmuls, trains (gradients reach both factors), and saves / loads through ``from_pretrained`` with its rank
    in ``config.json``.

    Returns:
        Per layer: ``rank``, ``params`` (dense) and ``stored`` (factorised) values, ``relative_error``
        (``||W - U V||_F / ||W||_F``), ``format``, or ``kept_dense`` with the reason.

    Raises:
        ConfigError: no Linear layer matches, or an explicit rank is out of range for a layer.
    """
    from ..nn.description import sparse_config_for
    from ..nn.linear_like import linear_weight
    from ..nn.lowrank_embedding import LowRankEmbedding
    from ..nn.matching import match_embeddings, match_linears

    has_linear_rule = config.rank is not None or config.energy is not None or config.compression is not None
    layers = (
        match_linears(model, config.target_modules, config.exclude_modules, who="LowRankConfig")
        if has_linear_rule or config.module_ranks
        else {}
    )
    report: dict[str, dict[str, Any]] = {}
    for name, table in match_embeddings(model, config.embeddings, who="LowRankConfig").items():
        vocab, dim = table.weight.shape
        if config.embedding_rank is not None:
            rank = min(config.embedding_rank, vocab, dim)
        else:
            rank = round_rank(
                rank_for_compression(vocab, dim, config.embedding_compression), config.round_to, 1, min(vocab, dim)
            )
        new = LowRankEmbedding.from_embedding(table, rank).to(table.weight.device)
        with torch.no_grad():
            err = float((new.dense_weight() - table.weight).norm() / table.weight.norm().clamp(min=1e-30))
        report[name] = {
            "rank": rank,
            "params": vocab * dim,
            "stored": factor_params(vocab, dim, rank),
            "relative_error": err,
            "format": "lowrank",
        }
        replace_module(model, name, new)
    for name, linear in tqdm(list(layers.items()), desc="Factorising", disable=not progress):
        if config.rank_rule_for(name) is None and not has_linear_rule:
            continue  # only module_ranks were given, and none names this layer
        weight = linear_weight(linear).detach()  # (out, in); a Conv1D (GPT-2) stores its weight transposed
        rows, cols = weight.shape
        with torch.no_grad():
            s = torch.linalg.svdvals(weight.double())
        rank = choose_rank(name, weight, config, s)
        dense_params = rows * cols
        stored = factor_params(rows, cols, rank) + int(round(config.sparse_density * dense_params))
        entry: dict[str, Any] = {"rank": rank, "params": dense_params, "stored": stored}
        if stored >= dense_params:
            entry["kept_dense"] = (
                f"rank {rank} factors ({stored} values) are not smaller than the {rows}x{cols} weight"
            )
            report[name] = entry
            continue
        with torch.no_grad():
            if config.sparse_density > 0:
                fmt = LowRankSparse.from_dense(weight, rank=rank, density=config.sparse_density)
            else:
                fmt = LowRank.from_dense(weight, rank=rank)
            entry["relative_error"] = float((fmt.to_dense() - weight).norm() / weight.norm().clamp(min=1e-30))
        entry["energy_kept"] = float(s[:rank].square().sum() / s.square().sum().clamp(min=1e-30))
        entry["format"] = fmt.name
        new = SparseLinear(fmt, linear.bias, trainable=True).to(weight.device)
        replace_module(model, name, new)
        report[name] = entry
    config_obj = getattr(model, "config", None)
    if config_obj is not None and hasattr(config_obj, "to_dict") and any("format" in e for e in report.values()):
        config_obj.quantization_config = sparse_config_for(model)  # what from_pretrained rebuilds
    return report
