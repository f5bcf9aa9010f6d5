"""Weight pruning as a model transform: module selection, masks, and the ``apply_`` handler for PruningConfig."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, PruningStateError, quote
from ..nn.linear_like import linear_layout, linear_weight
from ..nn.matching import _matches, match_embeddings, match_linears  # noqa: F401  (_matches: re-exported)
from .config import PruningConfig
from .criteria import CRITERIA, Criterion
from .granularity import STRUCTURED_GRANULARITIES, granular_masks
from .oneshot import calibrated_prune_
from .stats import model_parameter_counts, sparsity_report
from .units import drop_scored_layers_, shrink_masked_units_, unit_masks, unit_modules

__all__ = ["select_modules", "match_linears", "match_embeddings", "Pruner", "prune_"]

logger = logging.getLogger(__name__)


def select_modules(model: nn.Module, config: PruningConfig) -> dict[str, nn.Module]:
    """The modules of ``model`` that ``config`` prunes: the Linear-like layers of :func:`match_linears` (``nn.Linear``
    and GPT-2's ``Conv1D``), then the ``nn.Embedding`` tables named by ``config.embeddings`` (see
    :func:`match_embeddings`).

    With ``granularity="embedding_row"`` only the embedding tables are selected (rows of a Linear weight are
    output neurons, which structured pruning removes).

    Raises:
        ConfigError: when no Linear layer is selected (the message lists the model's Linear layers), or a name in
            ``config.embeddings`` matches no embedding.
    """
    if config.granularity == "embedding_row":
        return dict(match_embeddings(model, config.embeddings))
    chosen: dict[str, nn.Module] = dict(match_linears(model, config.target_modules, config.exclude_modules))
    chosen.update(match_embeddings(model, config.embeddings))
    return chosen


class _FunctionCriterion(Criterion):
    """Adapter for a plain ``fn(weight) -> scores`` registered in CRITERIA (the registry's original form)."""

    def __init__(self, fn):
        self.fn = fn

    def scores(self, weight, *, state=None, steps=0, name="", seed=0):
        return self.fn(weight)


class Pruner:
    """Holds the keep-masks of the selected layers of one model, the criterion's score accumulators, and enforces
    the masks.

    Masks are boolean tensors (True = keep) on the weights' device, in the ``(out_features, in_features)``
    orientation of :func:`~hf_sparse.nn.linear_like.linear_weight` (a ``Conv1D``, which stores its weight
    transposed, is masked through a transposed view), so block and N:M groups run along the input dimension of every
    layer. Pruned weights are set to exactly zero in place; nothing is wrapped or patched, so the model saves and
    loads as the plain architecture it is.

    Gradient criteria (``movement``, ``taylor``) need :meth:`observe_gradient` to be called with each backward
    pass's unmasked gradient (:class:`~hf_sparse.PruningCallback` does it from a gradient hook); RigL regrowth
    (:meth:`regrow`) reads the dense gradient recorded the same way while :attr:`track_dense_grads` is set.

    Args:
        model: The model to prune.
        config: Which layers, which criterion, granularity and scope.
    """

    def __init__(self, model: nn.Module, config: PruningConfig):
        self.config = config
        self.model = model
        #: Heads, neurons or layers for the structured granularities (see :mod:`~hf_sparse.pruning.units`).
        self.units: list = []
        if config.granularity in STRUCTURED_GRANULARITIES:
            self.modules, self.units = unit_modules(model, config.granularity)
        else:
            self.modules = select_modules(model, config)
        parametrized = [n for n, m in self.modules.items() if parametrize.is_parametrized(m, "weight")]
        if parametrized:
            # The masks act on ``module.weight``, which a parametrization (DropConnect) recomputes on every access.
            raise ConfigError(
                f"PruningConfig selects layers whose weight is parametrized (e.g. RegularizationConfig.dropconnect): "
                f"{parametrized[:3]}. Exclude them from one of the two (target_modules / exclude_modules), or remove "
                "the parametrization first."
            )
        unknown = sorted(set(config.layer_sparsity) - set(self.modules))
        if unknown:
            raise ConfigError(
                f"PruningConfig.layer_sparsity names modules that are not pruned: {unknown[:5]}. Pruned modules "
                f"include: {list(self.modules)[:8]}."
            )
        #: Calibration batches (dicts for ``model(**batch)``) of the ``wanda`` / ``sparsegpt`` criteria.
        self.calibration: list | None = None
        self.masks: dict[str, torch.Tensor] = {}
        self.target_sparsity = 0.0
        registered = CRITERIA.get(config.criterion)
        criterion = registered if isinstance(registered, Criterion) else _FunctionCriterion(registered)
        self.criterion: Criterion = criterion.configured(config)
        #: True when masks are updated several times during training (a gradual schedule in the callback), False
        #: for one-shot pruning; criteria that update the kept weights (obert) may do so only in one of the two.
        self.gradual = False
        #: When False, :meth:`observe_gradient` does not feed the criterion (no mask update left to rank for).
        self.collect_scores = True
        #: Per-module accumulator of the criterion (fp32, the weight's shape) and the number of backward passes in it.
        self.score_state: dict[str, torch.Tensor] = {}
        self.grad_steps: dict[str, int] = {}
        #: When True, :meth:`observe_gradient` also sums the dense gradients into :attr:`dense_grads` (RigL).
        self.track_dense_grads = False
        self.dense_grads: dict[str, torch.Tensor] = {}

    # -- gradients ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def observe_gradient(self, name: str, grad: torch.Tensor) -> None:
        """Fold one backward pass's gradient of module ``name``'s weight (before masking) into the accumulators.

        Shapes:
            grad: ``(out_features, in_features)``, as :meth:`weight` (a ``Conv1D`` parameter's gradient transposed,
            see :func:`~hf_sparse.nn.linear_like.linear_layout`).
        """
        if self.criterion.needs_gradients and self.collect_scores:
            weight = self.weight(name)
            self.score_state[name] = self.criterion.accumulate(self.score_state.get(name), weight, grad)
            self.grad_steps[name] = self.grad_steps.get(name, 0) + 1
        if self.track_dense_grads:
            g = grad.detach().float()
            # Micro-batches of one accumulated step add up to the step's gradient.
            self.dense_grads[name] = g.clone() if name not in self.dense_grads else self.dense_grads[name].add_(g)

    def observe_calibration_gradients(self) -> int:
        """Feed the criterion the loss gradients of the labelled :attr:`calibration` batches (split into pieces of
        ``config.fisher_batch_size`` examples, one gradient each), as training would: the one-shot path of criteria
        with ``gradients_from_calibration`` (obert). Returns the number of gradients.

        Raises:
            ConfigError: no calibration batches, or batches without labels (the model returns no loss).
        """
        from .calibration import loss_gradients

        if not self.calibration:
            raise ConfigError(
                f"PruningConfig.criterion={quote(self.config.criterion)} needs gradients: pass labelled calibration "
                "batches (prune_(model, config, calibration=batches), each a dict with the model's inputs and labels)."
            )
        count = 0
        for grads in loss_gradients(
            self.model, self.calibration, self.modules, micro_batch=self.config.fisher_batch_size
        ):
            for name, grad in grads.items():
                self.observe_gradient(name, grad)
            count += 1
        return count

    def clear_scores(self) -> None:
        """Forget the criterion's accumulators."""
        self.score_state = {}
        self.grad_steps = {}

    def clear_dense_grads(self) -> None:
        """Forget the dense gradients recorded for RigL."""
        self.dense_grads = {}

    def weight(self, name: str) -> torch.Tensor:
        """The weight of pruned module ``name`` in the orientation masks and scores have: ``(out, in)`` for Linear-like
        layers (a view of the parameter for a ``Conv1D``), ``(num, dim)`` for embeddings."""
        return linear_weight(self.modules[name])

    # -- masks ----------------------------------------------------------------------------------------------------
    def compute_scores(self) -> dict[str, torch.Tensor]:
        """The criterion's scores of every selected module's weight.

        Raises:
            ConfigError: a gradient criterion has seen no gradient for some module yet.
        """
        if self.criterion.needs_gradients:
            missing = [n for n in self.modules if n not in self.score_state]
            if missing and self.criterion.gradients_from_calibration and self.calibration:
                self.observe_calibration_gradients()
                missing = [n for n in self.modules if n not in self.score_state]
            if missing:
                raise ConfigError(
                    f"PruningConfig.criterion={quote(self.config.criterion)} ranks weights by gradients "
                    "accumulated during "
                    f"training, but none were seen for {missing[:3]}{' ...' if len(missing) > 3 else ''}. Use it with "
                    "PruningCallback and a schedule whose first mask update comes after at least one training step "
                    "(start_step >= 1, or cubic from initial_sparsity=0), or pass precomputed scores "
                    "(prune_(model, config, scores={name: tensor})). For one-shot pruning without training use "
                    "criterion='magnitude'"
                    + (
                        ", or pass labelled calibration batches (prune_(model, config, calibration=batches))."
                        if self.criterion.gradients_from_calibration
                        else "."
                    )
                )
        return {
            n: self.criterion.scores(
                self.weight(n),
                state=self.score_state.get(n),
                steps=self.grad_steps.get(n, 0),
                name=n,
                seed=self.config.seed,
            )
            for n in self.modules
        }

    def _check_scores(self, scores: Mapping[str, torch.Tensor]) -> None:
        unknown = sorted(set(scores) - set(self.modules))
        missing = sorted(set(self.modules) - set(scores))
        if unknown or missing:
            raise ConfigError(
                f"scores must have one entry per pruned module; unknown: {unknown[:5]}, missing: {missing[:5]}."
            )
        for name, s in scores.items():
            if tuple(s.shape) != tuple(self.weight(name).shape):
                raise ConfigError(
                    f"scores[{quote(name)}] has shape {tuple(s.shape)}, expected the weight's "
                    f"{tuple(self.weight(name).shape)} (out_features, in_features)."
                )

    @torch.no_grad()
    def prune_to(self, sparsity: float, scores: Mapping[str, torch.Tensor] | None = None) -> None:
        """Recompute the masks for ``sparsity`` at the config's granularity and zero the pruned weights.

        Weights (or blocks, rows) pruned before stay pruned (they rank lowest), so masks are monotone while
        sparsity grows.

        Args:
            sparsity: Target fraction of zeros.
            scores: Importance scores per module name (higher = keep), instead of the config's criterion.

        Raises:
            ConfigError: a gradient criterion without gradients and no ``scores``; ``scores`` that do not match
                the modules; a layer whose shape does not fit the granularity.
        """
        cfg = self.config
        if self.criterion.needs_calibration and scores is None:
            self._prune_calibrated(sparsity)
            return
        if cfg.granularity == "layer":
            raise ConfigError(
                "PruningConfig.granularity='layer' removes encoder layers from the model, which cannot happen while "
                "an optimizer holds their parameters: prune layers one-shot with hf_sparse.prune_(model, config) "
                "before creating the Trainer."
            )
        if scores is None:
            scores = self.compute_scores()
        else:
            self._check_scores(scores)
        previous = self.masks or None
        if self.units:
            self.masks = unit_masks(scores, self.units, sparsity, scope=cfg.scope, previous=previous)
        else:
            options = dict(
                granularity=cfg.granularity,
                block=tuple(cfg.block),
                n=cfg.n,
                m=cfg.m,
                reduce=cfg.group_reduce,
            )
            named = cfg.layer_sparsity
            rest = {n: s for n, s in scores.items() if n not in named}
            masks = granular_masks(rest, sparsity, scope=cfg.scope, previous=previous, **options) if rest else {}
            for name, final in named.items():
                # Each named layer follows the schedule in proportion to its own final sparsity.
                layer_target = sparsity * final / cfg.sparsity if cfg.sparsity else 0.0
                prev = {name: previous[name]} if previous and name in previous else None
                masks.update(
                    granular_masks({name: scores[name]}, layer_target, scope="layer", previous=prev, **options)
                )
            self.masks = masks
        if type(self.criterion).update_weights is not Criterion.update_weights:
            for name, keep in self.masks.items():
                self.criterion.update_weights(
                    self.weight(name),
                    keep,
                    state=self.score_state.get(name),
                    steps=self.grad_steps.get(name, 0),
                    name=name,
                    gradual=self.gradual,
                )
        if self.criterion.reset_after_update:
            self.clear_scores()
        self.target_sparsity = float(sparsity)
        self.apply_masks()

    def _prune_calibrated(self, sparsity: float) -> None:
        cfg = self.config
        if not self.calibration:
            raise ConfigError(
                f"PruningConfig.criterion={quote(cfg.criterion)} needs calibration data: pass "
                "prune_(model, config, calibration=batches) (a few hundred examples as model-input dicts), or use "
                "PruningCallback, which takes config.calibration_samples examples from the training data."
            )
        if cfg.layer_sparsity:
            raise ConfigError(f"PruningConfig.layer_sparsity is not supported with criterion={quote(cfg.criterion)}.")
        self.masks = calibrated_prune_(
            self.model,
            self.modules,
            self.calibration,
            cfg.criterion,
            sparsity,
            granularity=cfg.granularity,
            block=tuple(cfg.block),
            nm=(cfg.n, cfg.m),
        )
        self.target_sparsity = float(sparsity)
        self.apply_masks()

    @torch.no_grad()
    def regrow(self, fraction: float) -> dict[str, int]:
        """One RigL update (Evci et al. 2020): in every layer, drop the ``floor(fraction * kept)`` kept weights with
        the lowest ``|w|`` and regrow as many previously pruned positions with the largest ``|dL/dw|`` of the dense
        gradient in :attr:`dense_grads`. Regrown weights start at exactly zero; every layer keeps its number of
        non-zeros, so the sparsity is unchanged. Positions dropped in this update are not regrown in it.

        Layers without a recorded gradient (frozen or unused in the step) are left as they are.

        Returns:
            ``{"dropped": ..., "regrown": ...}`` counts over all layers (equal).
        """
        moved = 0
        for name, mask in self.masks.items():
            grad = self.dense_grads.get(name)
            if grad is None:
                logger.debug("RigL: no gradient recorded for %s; its mask is unchanged.", name)
                continue
            weight = self.weight(name)
            flat_mask = mask.reshape(-1)
            kept = int(flat_mask.sum())
            k = min(int(fraction * kept), flat_mask.numel() - kept)
            if k <= 0:
                continue
            w = weight.detach().float().reshape(-1).abs().masked_fill(~flat_mask, float("inf"))
            drop = torch.topk(w, k, largest=False, sorted=False).indices
            g = grad.to(w.device).reshape(-1).abs().masked_fill(flat_mask, float("-inf"))
            grow = torch.topk(g, k, largest=True, sorted=False).indices
            new = flat_mask.clone()
            new[drop] = False
            new[grow] = True
            regrown = torch.zeros_like(flat_mask)
            regrown[grow] = True
            # Regrown connections start from zero, as in RigL (through a mask: a Conv1D's weight is a transposed view).
            weight.masked_fill_(regrown.reshape(mask.shape).to(weight.device), 0.0)
            self.masks[name] = new.reshape(mask.shape)
            moved += k
        self.apply_masks()
        return {"dropped": moved, "regrown": moved}

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Set every pruned weight to exactly zero."""
        for name, mask in self.masks.items():
            weight = self.weight(name)
            weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights (so clipping and optimizer moments ignore them)."""
        for name, mask in self.masks.items():
            module = self.modules[name]
            if module.weight.grad is not None:
                grad = linear_layout(module, module.weight.grad)
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
            weight = self.weight(name)
            if mask.dtype != torch.bool or tuple(mask.shape) != tuple(weight.shape):
                raise PruningStateError(
                    f"Saved mask for {quote(name)} has dtype {mask.dtype} and shape {tuple(mask.shape)}; expected "
                    f"torch.bool and {tuple(weight.shape)}."
                )
        self.masks = {n: m.to(self.weight(n).device) for n, m in masks.items()}
        if target_sparsity is not None:
            self.target_sparsity = float(target_sparsity)
        self.apply_masks()

    def masks_from_zeros(self) -> dict[str, torch.Tensor]:
        """Masks read off the weights (a weight that is exactly zero counts as pruned)."""
        return {n: (self.weight(n).detach() != 0) for n in self.modules}

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


def prune_(
    model: nn.Module,
    config: PruningConfig,
    *,
    scores: Mapping[str, torch.Tensor] | None = None,
    calibration=None,
    shrink: bool = True,
) -> dict:
    """One-shot pruning of ``model`` in place to ``config.sparsity`` (the schedule fields are ignored).

    With ``granularity="head"`` or ``"neuron"`` the dropped units are then removed physically (``shrink=True``)
    so the model is a smaller dense one; ``"layer"`` drops the encoder layers with the lowest mean weight score.

    Args:
        model: The model to prune.
        config: What to prune and how.
        scores: Importance scores per pruned module name (higher = keep), used instead of ``config.criterion``.
            Gradient criteria (``movement``, ``taylor``) need them here: one-shot pruning sees no gradient.
        calibration: Model-input dicts (an iterable of batches) for ``criterion="wanda"`` / ``"sparsegpt"``.
        shrink: Remove pruned heads / neurons physically (structured granularities only).

    Raises:
        ConfigError: a gradient criterion without ``scores`` (use :class:`~hf_sparse.PruningCallback`), or a layer
            whose shape does not fit ``config.granularity``.

    Returns:
        The sparsity report (see :meth:`Pruner.report`) with model-wide parameter counts added.
    """
    pruner = Pruner(model, config)
    if config.granularity == "layer":
        scores = scores or pruner.compute_scores()
        pruner._check_scores(scores)
        report = {"dropped_layers": drop_scored_layers_(model, scores, pruner.units, config.sparsity)}
        report.update(model_parameter_counts(model))
        return report
    if calibration is not None:
        pruner.calibration = list(calibration)
    pruner.prune_to(config.sparsity, scores=scores)
    report = pruner.report()
    if pruner.units and shrink:
        report["shrunk"] = shrink_masked_units_(model)
    report.update(model_parameter_counts(model))
    return report
