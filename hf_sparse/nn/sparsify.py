"""``sparsify_``: store a pruned model's Linear layers in sparse formats where that is predicted faster."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, FormatError, quote
from ..formats import FORMATS
from ..ops.choose import FormatChoice, check_numerics, choose_format
from .linear_like import linear_weight
from .matching import DEFAULT_EXCLUDE, match_embeddings, match_linears
from .replace import replace_module
from .sparse_embedding import SparseEmbedding
from .sparse_linear import SparseLinear

__all__ = ["sparsify_", "LayerDecision", "SparsifyDecisions", "OBJECTIVES", "SIZE_CANDIDATES"]

logger = logging.getLogger(__name__)

#: What ``sparsify_(format="auto")`` optimises: each layer's predicted time, or its stored bytes.
OBJECTIVES = ("latency", "size")
#: The lossless formats ``objective="size"`` compares, by the name it reports: (format, parameters).
SIZE_CANDIDATES: dict[str, tuple[str, dict]] = {
    "bitmask": ("bitmask", {}),
    "csr": ("csr", {}),
    "nm2:4": ("nm", {"n": 2, "m": 4}),
    "bsr16": ("bsr", {"block": (16, 16)}),
    "bsr32": ("bsr", {"block": (32, 32)}),
}


@dataclass(frozen=True)
class LayerDecision:
    """What ``sparsify_`` did with one Linear layer and why."""

    name: str
    sparsity: float
    choice: FormatChoice

    @property
    def converted(self) -> bool:
        return self.choice.is_sparse


class SparsifyDecisions(dict):
    """``sparsify_``'s result: a :class:`LayerDecision` per selected layer (a plain dict of them), and ``summary``,
    the line it logged: how many layers were stored sparse, how many pruned ones stayed dense and why."""

    summary: str = ""
    objective: str = "latency"


def _dense_bytes(weight: torch.Tensor) -> int:
    return weight.numel() * weight.element_size()


def _bitmask_bytes(keep: torch.Tensor, weight: torch.Tensor) -> int:
    """Bytes of the weight as a bitmask (one bit per position, the kept values): what ``objective="size"`` stores
    at most, a sparsity ``1/32`` or more below dense for float32."""
    rows, cols = keep.shape
    return rows * ((cols + 7) // 8) + int(keep.sum()) * weight.element_size()


def _smallest_format(weight: torch.Tensor, mask: torch.Tensor | None):
    """The lossless storage of ``weight`` in the fewest bytes among :data:`SIZE_CANDIDATES`, built, with the
    bytes of each in the reasons; ``(FormatChoice("dense"), None)`` when none is smaller than the dense weight."""
    from ..formats import to_format

    dense = _dense_bytes(weight)
    reasons = [f"dense: {dense:,} bytes"]
    built: dict[str, tuple[int, object]] = {}
    for name, (fmt, params) in SIZE_CANDIDATES.items():
        try:
            stored = to_format(fmt, weight, mask, **params)
        except FormatError as exc:
            reasons.append(f"{name}: not applicable ({str(exc).splitlines()[0][:80]})")
            continue
        built[name] = (stored.nbytes, stored)
        reasons.append(f"{name}: {stored.nbytes:,} bytes ({stored.nbytes / dense:.0%} of dense)")
    best = min(built, key=lambda k: built[k][0], default=None)
    if best is None or built[best][0] >= dense:
        return FormatChoice(
            "dense", {}, {}, (*reasons, "kept dense: no format stores it in fewer bytes"), "dense"
        ), None
    size, stored = built[best]
    fmt, params = SIZE_CANDIDATES[best]
    verdict = f"chose {best}: the fewest bytes, {size / dense:.0%} of dense"
    return FormatChoice(fmt, dict(params), {}, (*reasons, verdict), best), stored


def sparsify_(
    model: nn.Module,
    *,
    format: str = "auto",
    batch_hint: int = 16,
    min_sparsity: float = 0.3,
    target_modules: Iterable[str] = (),
    exclude_modules: Iterable[str] = DEFAULT_EXCLUDE,
    embeddings: Iterable[str] = (),
    masks: Mapping[str, torch.Tensor] | None = None,
    trainable: bool = True,
    margin: float = 0.9,
    progress: bool = True,
    activation: str | None = None,
    numerics: str | Iterable[str] = "keep",
    objective: str = "latency",
    **format_params,
) -> SparsifyDecisions:
    """Replace pruned ``nn.Linear`` layers (and GPT-2's ``Conv1D``) of ``model``, in place, by :class:`SparseLinear`
    layers computing the same function.

    With ``format="auto"`` and ``objective="latency"`` (the default) each layer gets the format
    :func:`~hf_sparse.ops.choose_format` predicts fastest for ``batch_hint`` tokens per call on this machine, and
    stays dense when no format is predicted at least ``1 / margin`` times faster — at moderate sparsity (50%) that is
    often every layer, and the saved checkpoint is then as large as the dense one; the logged summary says so.
    ``objective="size"`` stores every layer of at least ``min_sparsity`` in the format of the fewest bytes
    (:data:`SIZE_CANDIDATES`: a bitmask, CSR, 2:4, blocks; lossless, whatever it costs in time). A named
    ``format`` (``"csr"``, ``"bsr"``, ``"nm"``, ``"hybrid"``, ...) is used for every selected layer, with
    ``format_params`` (e.g. ``block=(16, 16)``).

    Args:
        model: Any model with ``nn.Linear`` layers (a transformers model, typically after pruning).
        min_sparsity: layers with a smaller fraction of zeros (or of False in ``masks``) stay dense.
        target_modules / exclude_modules: module-name components or full-name regexes; exclusion wins. By default
            task heads, the pooler and embeddings are left alone, as in pruning.
        embeddings: ``nn.Embedding`` tables (names or regexes, as ``PruningConfig.embeddings``) to store as
            :class:`SparseEmbedding` (CSR rows) when at least ``min_sparsity`` of their entries are zero.
        masks: keep-masks by module name (e.g. ``Pruner.masks``), ``(out_features, in_features)`` (for a ``Conv1D``
            the transpose of its stored weight); default: the weights' non-zeros.
        trainable: whether the sparse values keep taking gradients (sparse fine-tuning).
        activation: ``"dynamic"``: int8 weights with per-token int8 inputs (the arithmetic of torch's dynamic int8
            Linear, on our integer kernels). With ``format="auto"`` every selected layer becomes ``qbsr`` in the
            faster of 1 x 4 and 16 x 4 blocks on this machine (16 x 4 with every block stored is the dense int8
            layout, so ``min_sparsity`` does not apply: a layer with few zeros is stored dense in int8); with a named
            format (``"qbsr"``, ``"qcsr"``, ``"qnm"``) it is that format's ``activation``.
        numerics: with ``format="auto"``, the arithmetic each layer may take: ``"keep"`` (the default: the layer's
            own dtype), or ``"fastest"`` / a list among ``"keep"``, ``"bfloat16"`` (where the CPU has native bf16)
            and ``"int8"`` (int8 weights, per-token int8 inputs). Each selected layer then gets the option predicted
            fastest on this machine, dense or sparse, in any allowed arithmetic, so the model is not slower than
            itself dense in the fastest of them: a layer no sparse format speeds up stays dense in the fastest dtype
            (stored as ``"full"`` for bf16, as every 16 x 4 block of ``qbsr`` for int8). ``min_sparsity`` then only
            keeps sparse formats off. Arithmetic other than the layer's own changes its results slightly, as a cast
            or dynamic quantisation does: evaluate the converted model.
        objective: with ``format="auto"``: ``"latency"`` (the format predicted fastest, or dense) or ``"size"``
            (the fewest stored bytes; needs ``activation=None`` and ``numerics="keep"``).

    Returns:
        A :class:`SparsifyDecisions`: per selected layer, a :class:`LayerDecision` with the choice and its reasons;
        its ``summary`` is the line logged (layers stored sparse, pruned layers kept dense and why).

    Raises:
        ConfigError: nothing matches, or bad arguments. FormatError: a forced format cannot store a layer.
    """
    if activation not in (None, "dynamic"):
        raise ConfigError(f"sparsify_: activation must be None or 'dynamic', got {quote(activation)}.")
    if objective not in OBJECTIVES:
        raise ConfigError(f"sparsify_: objective must be one of {list(OBJECTIVES)}, got {quote(objective)}.")
    allowed = check_numerics(numerics, "sparsify_")
    across = allowed != ("keep",)
    if objective == "size" and (format != "auto" or activation is not None or across):
        raise ConfigError(
            "sparsify_: objective='size' chooses the format itself among lossless ones: it needs format='auto', "
            "activation=None and numerics='keep'."
        )
    if across and (format != "auto" or activation is not None):
        raise ConfigError(
            "sparsify_: numerics other than 'keep' need format='auto' and no activation (numerics=['int8'] is "
            "activation='dynamic' chosen automatically)."
        )
    if format != "auto":
        FORMATS.get(format)
        if activation is not None:
            format_params["activation"] = activation
    elif format_params:
        raise ConfigError(f"sparsify_: format parameters {sorted(format_params)} need a named format, not 'auto'.")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ConfigError(f"sparsify_: min_sparsity must be in [0, 1], got {min_sparsity}.")
    target_modules, exclude_modules = tuple(target_modules), tuple(exclude_modules)
    masks = dict(masks or {})
    chosen = match_linears(model, target_modules, exclude_modules, who="sparsify_")
    tables = match_embeddings(model, tuple(embeddings), who="sparsify_")
    unknown = sorted(set(masks) - set(chosen) - set(tables))
    if unknown:
        raise ConfigError(f"sparsify_: masks given for modules it does not convert: {unknown[:5]}.")

    from tqdm.auto import tqdm

    decisions = SparsifyDecisions()
    decisions.objective = objective
    kept_bytes = {}  # pruned layers kept dense by the latency objective: (dense bytes, bitmask bytes)
    for name, linear in tqdm(chosen.items(), desc="sparsify", disable=not progress, leave=False):
        weight = linear_weight(linear).detach().contiguous()  # (out, in); a Conv1D's is stored transposed
        mask = masks.get(name)
        if mask is not None and tuple(mask.shape) != tuple(weight.shape):
            raise ConfigError(
                f"sparsify_: masks[{quote(name)}] has shape {tuple(mask.shape)}; the layer's weight is "
                f"{tuple(weight.shape)} (out_features, in_features; a Conv1D's stored weight is the transpose)."
            )
        keep = mask if mask is not None else weight != 0
        sparsity = 1.0 - float(keep.float().mean())
        if sparsity < min_sparsity and not (format == "auto" and (activation or across)):
            reason = f"sparsity {sparsity:.1%} is below min_sparsity {min_sparsity:.0%}: kept dense"
            decisions[name] = LayerDecision(name, sparsity, FormatChoice("dense", {}, {}, (reason,)))
            continue
        stored = None
        if format == "auto" and objective == "size":
            choice, stored = _smallest_format(weight, mask)
        elif format == "auto" and across:
            choice = choose_format(
                weight, mask, batch_hint=batch_hint, device=weight.device, margin=margin, numerics=allowed
            )
            if sparsity < min_sparsity and choice.is_sparse and choice.format not in ("full", "qbsr"):
                choice = choose_format(  # below min_sparsity: only the dense options of each arithmetic
                    weight,
                    torch.ones_like(weight, dtype=torch.bool),
                    batch_hint=batch_hint,
                    device=weight.device,
                    margin=margin,
                    numerics=allowed,
                )
        elif format == "auto":
            choice = choose_format(
                weight, mask, batch_hint=batch_hint, device=weight.device, margin=margin, activation=activation
            )
        else:
            choice = FormatChoice(format, dict(format_params), {}, (f"format {format!r} requested",))
        if choice.is_sparse:
            if stored is None:
                try:
                    stored = choice.build(weight, mask)
                except FormatError as exc:
                    raise FormatError(f"sparsify_: cannot store {name} as {choice.format}: {exc}") from None
            replace_module(model, name, SparseLinear(stored, linear.bias, trainable=trainable))
        elif format == "auto" and objective == "latency" and activation is None and not across:
            kept_bytes[name] = (_dense_bytes(weight), _bitmask_bytes(keep, weight))
        decisions[name] = LayerDecision(name, sparsity, choice)
    for name, table in tables.items():
        mask = masks.get(name)
        keep = mask if mask is not None else table.weight.detach() != 0
        sparsity = 1.0 - float(keep.float().mean())
        if sparsity < min_sparsity:
            reason = f"sparsity {sparsity:.1%} is below min_sparsity {min_sparsity:.0%}: kept dense"
            decisions[name] = LayerDecision(name, sparsity, FormatChoice("dense", {}, {}, (reason,)))
            continue
        try:
            sparse_table = SparseEmbedding.from_embedding(table, mask, trainable=trainable)
        except FormatError as exc:
            raise FormatError(f"sparsify_: cannot store embedding {name}: {exc}") from None
        replace_module(model, name, sparse_table)
        reason = "embedding table: rows stored in CSR (lookups gather each token's stored entries)"
        decisions[name] = LayerDecision(name, sparsity, FormatChoice("csr", {}, {}, (reason,)))
    converted = sum(d.converted for d in decisions.values())
    config = getattr(model, "config", None)
    if converted and config is not None and hasattr(config, "to_dict"):
        # What save_pretrained writes to config.json, so that from_pretrained can rebuild the sparse modules.
        from .description import sparse_config_for  # imported here: it imports transformers

        config.quantization_config = sparse_config_for(model)
    decisions.summary = _summary(decisions, kept_bytes, objective, batch_hint, min_sparsity)
    if kept_bytes:  # the checkpoint keeps these pruned layers at their dense size: say so, and how to change it
        logger.warning(decisions.summary)
    else:
        logger.info(decisions.summary)
    return decisions


def _summary(decisions, kept_bytes: dict, objective: str, batch_hint: int, min_sparsity: float) -> str:
    """The line ``sparsify_`` logs: layers stored sparse (by format), pruned layers kept dense and why."""
    from collections import Counter

    from ..machine import _cpu_model

    total = len(decisions)
    stored = Counter(d.choice.chosen or d.choice.format for d in decisions.values() if d.converted)
    formats = ", ".join(f"{n} {f}" for f, n in stored.most_common())
    below = sum(1 for d in decisions.values() if not d.converted and d.sparsity < min_sparsity)
    line = f"sparsify_ ({objective}): {sum(stored.values())} of {total} selected layers stored sparse"
    line += f" ({formats})" if formats else ""
    if below:
        line += f"; {below} below min_sparsity {min_sparsity:.0%} kept dense"
    if kept_bytes:
        dense = sum(d for d, _ in kept_bytes.values())
        smaller = sum(min(d, b) for d, b in kept_bytes.values())
        line += (
            f"; {len(kept_bytes)} of {total} pruned layers kept dense: no sparse format is predicted faster at "
            f"batch_hint={batch_hint} on {_cpu_model()}; pass objective='size' to store them sparse (about "
            f"{smaller / max(dense, 1):.0%} of their {dense:,} dense bytes)"
        )
    elif objective == "size":
        kept = sum(1 for d in decisions.values() if not d.converted and d.sparsity >= min_sparsity)
        if kept:
            line += f"; {kept} kept dense: no format stores them in fewer bytes"
    return line
