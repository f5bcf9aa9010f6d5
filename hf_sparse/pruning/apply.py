"""Weight pruning as a model transform: module selection, masks, and the ``apply_`` handler for PruningConfig."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import ConfigError, PruningStateError
from ..registry import METHODS
from .config import PruningConfig
from .criteria import CRITERIA, masks_from_scores

__all__ = ["select_modules", "match_linears", "match_embeddings", "Pruner", "prune_"]


def _matches(name: str, pattern: str) -> bool:
    """``pattern`` fully matches ``name``, or equals one of its dot-separated components."""
    return pattern in name.split(".") or re.fullmatch(pattern, name) is not None


def match_linears(
    model: nn.Module, target_modules, exclude_modules, *, who: str = "PruningConfig"
) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules of ``model`` matching one of ``target_modules`` (or all, when it is empty) and none
    of ``exclude_modules``, by qualified name, in model order; exclusion takes precedence.

    Raises:
        ConfigError: when nothing is selected (the message, which starts with ``who``, lists the Linear layers).
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen = {
        n: m
        for n, m in linears.items()
        if (not target_modules or any(_matches(n, p) for p in target_modules))
        and not any(_matches(n, p) for p in exclude_modules)
    }
    if not chosen:
        sample = list(linears)[:8]
        raise ConfigError(
            f"{who} selects no nn.Linear module (target_modules={list(target_modules)}, "
            f"exclude_modules={list(exclude_modules)}). The model's Linear layers include: {sample}."
        )
    return chosen


def match_embeddings(model: nn.Module, patterns, *, who: str = "PruningConfig") -> dict[str, nn.Embedding]:
    """The ``nn.Embedding`` modules of ``model`` named by ``patterns`` (components or full-name regexes).

    Raises:
        ConfigError: a pattern matches no embedding (a typo must not silently prune less), or an embedding is tied
            to the model's output layer (pruning it would prune the LM head too, through the shared tensor).
    """
    embeddings = {n: m for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    chosen: dict[str, nn.Embedding] = {}
    for pattern in patterns:
        found = {n: m for n, m in embeddings.items() if _matches(n, pattern)}
        if not found:
            raise ConfigError(
                f"{who}.embeddings: {pattern!r} matches no nn.Embedding; the model's embeddings are "
                f"{list(embeddings)}."
            )
        chosen.update(found)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in chosen.items():
        if output is not None and getattr(output, "weight", None) is module.weight:
            raise ConfigError(
                f"{who}.embeddings: {name!r} shares its weight with the output layer (tied embeddings); prune "
                "untied models only, or leave it out."
            )
    return chosen


def select_modules(model: nn.Module, config: PruningConfig) -> dict[str, nn.Module]:
    """The modules of ``model`` that ``config`` prunes: the ``nn.Linear`` layers of :func:`match_linears`, then the
    ``nn.Embedding`` tables named by ``config.embeddings`` (see :func:`match_embeddings`).

    Raises:
        ConfigError: when no Linear layer is selected (the message lists the model's Linear layers), or a name in
            ``config.embeddings`` matches no embedding.
    """
    chosen: dict[str, nn.Module] = dict(match_linears(model, config.target_modules, config.exclude_modules))
    chosen.update(match_embeddings(model, config.embeddings))
    return chosen


class Pruner:
    """Holds the keep-masks of the selected layers of one model and enforces them.

    Masks are boolean tensors (True = keep) on the weights' device. Pruned weights are set to exactly zero in place;
    nothing is wrapped or patched, so the model saves and loads as the plain architecture it is.

    Args:
        model: The model to prune.
        config: Which layers, which criterion, which scope.
    """

    def __init__(self, model: nn.Module, config: PruningConfig):
        self.config = config
        self.modules = select_modules(model, config)
        self.masks: dict[str, torch.Tensor] = {}
        self.target_sparsity = 0.0

    # -- masks ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Recompute the masks for ``sparsity`` from the current weights and zero the pruned weights.

        Weights pruned before stay pruned (they rank lowest), so masks are monotone while sparsity grows.
        """
        criterion = CRITERIA.get(self.config.criterion)
        scores = {n: criterion(m.weight) for n, m in self.modules.items()}
        self.masks = masks_from_scores(scores, sparsity, self.config.scope, previous=self.masks or None)
        self.target_sparsity = float(sparsity)
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Set every pruned weight to exactly zero."""
        for name, mask in self.masks.items():
            weight = self.modules[name].weight
            weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights (so clipping and optimizer moments ignore them)."""
        for name, mask in self.masks.items():
            grad = self.modules[name].weight.grad
            if grad is not None:
                grad.mul_(mask.to(device=grad.device, dtype=grad.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Masks as CPU bool tensors, keyed by module name (safetensors-ready)."""
        return {n: m.detach().to("cpu", torch.bool).contiguous() for n, m in self.masks.items()}

    def load_state_dict(self, masks: Mapping[str, torch.Tensor], target_sparsity: float | None = None) -> None:
        """Install saved masks after checking names, shapes and dtype, then enforce them.

        Raises:
            PruningStateError: a mask names a module that is not selected, or has the wrong shape or dtype.
        """
        unknown = sorted(set(masks) - set(self.modules))
        if unknown:
            raise PruningStateError(
                f"Saved masks name modules this config does not prune: {unknown[:5]}. Was the checkpoint written "
                "for a different model or PruningConfig?"
            )
        for name, mask in masks.items():
            weight = self.modules[name].weight
            if mask.dtype != torch.bool or tuple(mask.shape) != tuple(weight.shape):
                raise PruningStateError(
                    f"Saved mask for {name!r} has dtype {mask.dtype} and shape {tuple(mask.shape)}; expected "
                    f"torch.bool and {tuple(weight.shape)}."
                )
        self.masks = {n: m.to(self.modules[n].weight.device) for n, m in masks.items()}
        if target_sparsity is not None:
            self.target_sparsity = float(target_sparsity)
        self.apply_masks()

    def masks_from_zeros(self) -> dict[str, torch.Tensor]:
        """Masks read off the weights (a weight that is exactly zero counts as pruned)."""
        return {n: (m.weight.detach() != 0) for n, m in self.modules.items()}

    # -- reporting ------------------------------------------------------------------------------------------------
    def sparsity(self) -> float:
        """Fraction of exactly-zero weights over all selected layers (measured on the weights)."""
        zeros = total = 0
        for m in self.modules.values():
            zeros += int((m.weight.detach() == 0).sum())
            total += m.weight.numel()
        return zeros / max(total, 1)

    def report(self) -> dict:
        """Per-layer and overall sparsity, measured on the weights. JSON-ready."""
        return sparsity_report(self.modules, target_sparsity=self.target_sparsity)


def sparsity_report(modules: Mapping[str, nn.Module], target_sparsity: float | None = None) -> dict:
    """Zeros and non-zeros of the ``weight`` of each module in ``modules``, measured, plus totals."""
    layers = {}
    zeros = total = 0
    for name, m in modules.items():
        w = m.weight.detach()
        z = int((w == 0).sum())
        layers[name] = {
            "shape": list(w.shape),
            "numel": w.numel(),
            "nonzero": w.numel() - z,
            "sparsity": z / w.numel(),
        }
        zeros += z
        total += w.numel()
    return {
        "target_sparsity": target_sparsity,
        "sparsity": zeros / max(total, 1),
        "pruned_params": zeros,
        "prunable_params": total,
        "layers": layers,
    }


def prune_(model: nn.Module, config: PruningConfig) -> dict:
    """One-shot pruning of ``model`` in place to ``config.sparsity`` (the schedule fields are ignored).

    Returns:
        The sparsity report (see :meth:`Pruner.report`) with model-wide parameter counts added.
    """
    pruner = Pruner(model, config)
    pruner.prune_to(config.sparsity)
    report = pruner.report()
    report.update(model_parameter_counts(model))
    return report


def model_parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and non-zero parameter counts of a model (shared tensors counted once)."""
    total = nonzero = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        nonzero += int((p.detach() != 0).sum())
    return {"total_params": total, "nonzero_params": nonzero}


METHODS.register(PruningConfig.config_type, prune_)
