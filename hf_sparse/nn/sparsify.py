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

__all__ = ["sparsify_", "LayerDecision"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerDecision:
    """What ``sparsify_`` did with one Linear layer and why."""

    name: str
    sparsity: float
    choice: FormatChoice

    @property
    def converted(self) -> bool:
        return self.choice.is_sparse


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
    **format_params,
) -> dict[str, LayerDecision]:
    """Replace pruned ``nn.Linear`` layers (and GPT-2's ``Conv1D``) of ``model``, in place, by :class:`SparseLinear`
    layers computing the same function.

    With ``format="auto"`` each layer gets the format :func:`~hf_sparse.ops.choose_format` predicts fastest for
    ``batch_hint`` tokens per call on this machine, and stays dense when no format is predicted at least
    ``1 / margin`` times faster. A named ``format`` (``"csr"``, ``"bsr"``, ``"nm"``, ``"hybrid"``, ...) is used for
    every selected layer, with ``format_params`` (e.g. ``block=(16, 16)``).

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

    Returns:
        Per selected layer, a :class:`LayerDecision` with the choice and its reasons.

    Raises:
        ConfigError: nothing matches, or bad arguments. FormatError: a forced format cannot store a layer.
    """
    if activation not in (None, "dynamic"):
        raise ConfigError(f"sparsify_: activation must be None or 'dynamic', got {quote(activation)}.")
    allowed = check_numerics(numerics, "sparsify_")
    across = allowed != ("keep",)
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

    decisions: dict[str, LayerDecision] = {}
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
        if format == "auto" and across:
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
            try:
                stored = choice.build(weight, mask)
            except FormatError as exc:
                raise FormatError(f"sparsify_: cannot store {name} as {choice.format}: {exc}") from None
            replace_module(model, name, SparseLinear(stored, linear.bias, trainable=trainable))
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
    logger.info("sparsify_: %d of %d selected layers stored sparse", converted, len(decisions))
    return decisions
