"""Pruning criteria (importance scores) and mask selection. Pure tensor maths, no modules."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import torch

from ..errors import ConfigError, quote
from ..registry import Registry
from .obert import fisher_inverse, fisher_update, obert_scores, obs_update

__all__ = [
    "CRITERIA",
    "Criterion",
    "MagnitudeCriterion",
    "MovementCriterion",
    "TaylorCriterion",
    "RandomCriterion",
    "ObertCriterion",
    "magnitude_scores",
    "movement_update",
    "taylor_update",
    "random_scores",
    "masks_from_scores",
]


class Criterion:
    """How weights are ranked for pruning (higher score = more important = kept).

    One interface for criteria that look only at the weights and for criteria that look at gradients seen during
    training. A gradient criterion keeps one fp32 accumulator per pruned module (owned by the
    :class:`~hf_sparse.Pruner`): :meth:`accumulate` folds in the weight and the *unmasked* gradient of every
    backward pass, and :meth:`scores` turns the accumulator into scores. Weight-only criteria ignore the
    accumulator.

    Subclass, set :attr:`needs_gradients`, implement :meth:`scores` (and :meth:`accumulate`), and register an
    instance in :data:`CRITERIA`: ``CRITERIA.register("name", MyCriterion())``. The names registered there are
    the values ``PruningConfig.criterion`` accepts. A criterion with settings of its own returns a configured copy
    from :meth:`configured`; one that moves the kept weights when others are pruned (OBS) overrides
    :meth:`update_weights`.
    """

    #: True when :meth:`scores` is meaningless without gradients accumulated during training.
    needs_gradients: bool = False
    #: True for one-shot methods that read calibration inputs and choose masks themselves (Wanda, SparseGPT): the
    #: :class:`~hf_sparse.Pruner` hands them to :func:`~hf_sparse.pruning.oneshot.calibrated_prune_`.
    needs_calibration: bool = False
    #: True when, without training, the accumulator can be built from the loss gradients of labelled calibration
    #: batches (the Pruner then runs them through the model when its ``calibration`` is set).
    gradients_from_calibration: bool = False
    #: True when the accumulator only serves the next mask update: the Pruner clears it after each one.
    reset_after_update: bool = False
    #: True when the accumulator is too large to keep once no mask update remains: the
    #: :class:`~hf_sparse.PruningCallback` then frees it and stops accumulating (nor saves it in checkpoints).
    transient_state: bool = False

    def configured(self, config) -> Criterion:
        """The criterion with the settings of ``config`` (a :class:`~hf_sparse.PruningConfig`); itself by default."""
        return self

    def accumulate(self, state: torch.Tensor | None, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor | None:
        """Fold one backward pass into the accumulator (``None`` the first time). Weight-only criteria keep none.

        Shapes:
            weight, grad: the weight's shape. state: the weight's shape for the built-in first-order criteria (any
            shape the criterion chooses; float32). Returns: the new state.
        """
        return None

    def update_weights(
        self,
        weight: torch.Tensor,
        keep: torch.Tensor,
        *,
        state: torch.Tensor | None = None,
        steps: int = 0,
        name: str = "",
        gradual: bool = False,
    ) -> None:
        """Adjust the kept weights, in place, for the weights that ``keep`` is about to drop (called before the mask
        is applied; weights dropped earlier are already zero). Nothing by default.

        Args:
            weight: The module's weight, ``(out, in)`` (a view of the parameter).
            keep: The new keep-mask.
            state, steps: The accumulator and its number of backward passes.
            name: Qualified module name.
            gradual: True when the mask update is one of several during training (not one-shot pruning).
        """

    def scores(
        self,
        weight: torch.Tensor,
        *,
        state: torch.Tensor | None = None,
        steps: int = 0,
        name: str = "",
        seed: int = 0,
    ) -> torch.Tensor:
        """Importance of each weight.

        Args:
            weight: The module's current weight.
            state: The accumulator built by :meth:`accumulate` (None if no gradient was seen).
            steps: Number of backward passes folded into ``state``.
            name: Qualified module name (lets seeded criteria give each layer its own stream).
            seed: The config's seed.

        Shapes:
            weight: any shape. Returns: the same shape, float32.
        """
        raise NotImplementedError

    def __call__(self, weight: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.scores(weight, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


#: criterion name -> :class:`Criterion` instance. ``PruningConfig.criterion`` accepts exactly these names.
CRITERIA: Registry[Criterion] = Registry("pruning criterion")


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """``|w|`` in fp32.

    Shapes:
        weight: any shape. Returns: the same shape, float32.
    """
    return weight.detach().abs().float()


def movement_update(state: torch.Tensor | None, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """One step of movement scores (Sanh et al. 2020): ``S <- S - w * dL/dw``.

    ``-w * g > 0`` when gradient descent pushes ``w`` away from zero, so weights growing in magnitude during
    fine-tuning gain score and are kept; weights shrinking towards zero lose it.

    Shapes:
        state, weight, grad: the same shape. Returns: float32, that shape.
    """
    step = -(weight.detach().float() * grad.detach().float())
    return step if state is None else state.add_(step)


def taylor_update(state: torch.Tensor | None, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """One step of the first-order Taylor accumulator: ``T <- T + w * dL/dw`` (signed; the score is ``|T| / steps``).

    Shapes:
        state, weight, grad: the same shape. Returns: float32, that shape.
    """
    step = weight.detach().float() * grad.detach().float()
    return step if state is None else state.add_(step)


def random_scores(weight: torch.Tensor, *, seed: int = 0, name: str = "") -> torch.Tensor:
    """Uniform random scores, reproducible from ``seed`` and the module ``name`` (each layer its own stream).

    Shapes:
        weight: any shape. Returns: the same shape, float32, on the weight's device.
    """
    generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    return torch.rand(weight.shape, generator=generator).to(weight.device)


class MagnitudeCriterion(Criterion):
    """``|w|``: keep the largest weights (Han et al. 2015; Zhu & Gupta 2017)."""

    def scores(self, weight, *, state=None, steps=0, name="", seed=0):
        return magnitude_scores(weight)


class MovementCriterion(Criterion):
    """Movement pruning (Sanh et al. 2020): ``S = -sum_t w_t * dL/dw_t`` accumulated during fine-tuning.

    Valid only inside training (:class:`~hf_sparse.PruningCallback`), after at least one backward pass; before that
    the Pruner raises :class:`~hf_sparse.errors.ConfigError` rather than rank weights on nothing.
    """

    needs_gradients = True

    def accumulate(self, state, weight, grad):
        return movement_update(state, weight, grad)

    def scores(self, weight, *, state=None, steps=0, name="", seed=0):
        if state is None:
            raise ValueError("movement scores need accumulated gradients")
        return state.float()


class TaylorCriterion(Criterion):
    """First-order Taylor importance: ``|mean_t w_t * dL/dw_t|``, the estimated loss change when a weight is zeroed
    (Molchanov et al. 2017), accumulated over the backward passes seen in training.

    The running mean (``|sum| / steps``) ranks exactly like ``|sum|`` while every layer has seen the same number of
    passes, and keeps the scale independent of how long it was accumulated. Needs gradients, as movement does.
    """

    needs_gradients = True

    def accumulate(self, state, weight, grad):
        return taylor_update(state, weight, grad)

    def scores(self, weight, *, state=None, steps=0, name="", seed=0):
        if state is None:
            raise ValueError("taylor scores need accumulated gradients")
        return state.float().abs() / max(int(steps), 1)


class RandomCriterion(Criterion):
    """Seeded uniform random scores: the ablation baseline every criterion should beat."""

    def scores(self, weight, *, state=None, steps=0, name="", seed=0):
        return random_scores(weight, seed=seed, name=name)


class ObertCriterion(Criterion):
    """The Optimal BERT Surgeon (Kurtic et al. 2022): second-order scores ``w_q² / (2 [F⁻¹]_qq)`` from a
    block-diagonal empirical Fisher ``F`` (blocks of ``block`` consecutive weights of a row, dampened by ``damp``),
    and optionally the exact multi-weight OBS update of the kept weights of each block when others are pruned. The
    maths is in :mod:`hf_sparse.pruning.obert`.

    The Fisher is accumulated from the gradients seen in training (one per backward pass) or, without training, from
    the loss gradients of labelled calibration batches (``fisher_batch_size`` examples per gradient). ``decay`` < 1
    makes the sum an exponential moving one; ``reset`` clears it after each mask update, so each update ranks with
    the gradients seen since the previous one.

    Args:
        block: Weights per Fisher block (``PruningConfig.obert_block``).
        damp: Dampening added to the Fisher's diagonal (``obert_damp``).
        relative_damp: Dampening as a fraction of the mean Fisher diagonal of each layer (``obert_relative_damp``).
        decay: Per-gradient decay of the accumulated Fisher (``fisher_decay``; 1 = a plain mean).
        update: Apply the OBS weight update: True, False, or None for "one-shot pruning only" (``obert_update``).
        reset: Clear the Fisher after each mask update (``fisher_reset``).
    """

    needs_gradients = True
    gradients_from_calibration = True
    transient_state = True

    def __init__(
        self,
        block: int = 32,
        damp: float = 1e-7,
        decay: float = 1.0,
        update: bool | None = None,
        reset: bool = True,
        relative_damp: float | None = None,
    ):
        self.block, self.damp, self.decay, self.update = int(block), float(damp), float(decay), update
        self.reset_after_update = bool(reset)
        self.relative_damp = relative_damp

    def configured(self, config) -> ObertCriterion:
        return ObertCriterion(
            block=config.obert_block,
            damp=config.obert_damp,
            decay=config.fisher_decay,
            update=config.obert_update,
            reset=config.fisher_reset,
            relative_damp=config.obert_relative_damp,
        )

    def accumulate(self, state, weight, grad):
        return fisher_update(state, grad, block=self.block, decay=self.decay)

    def _inverse(self, weight: torch.Tensor, state: torch.Tensor, steps: int) -> torch.Tensor:
        # Weights already pruned (exactly zero) leave the quadratic model: F⁻¹ is the kept weights' own.
        return fisher_inverse(
            state,
            steps,
            shape=tuple(weight.shape),
            block=self.block,
            damp=self.damp,
            decay=self.decay,
            keep=weight.detach() != 0,
            relative_damp=self.relative_damp,
        )

    def scores(self, weight, *, state=None, steps=0, name="", seed=0):
        if state is None:
            raise ValueError("obert scores need accumulated gradients")
        return obert_scores(weight, self._inverse(weight, state, steps), self.block)

    def update_weights(self, weight, keep, *, state=None, steps=0, name="", gradual=False):
        wanted = self.update if self.update is not None else not gradual
        if not wanted or state is None or steps < 1:
            return
        new = obs_update(weight, self._inverse(weight, state, steps), keep.to(weight.device), self.block)
        weight.copy_(new.to(device=weight.device, dtype=weight.dtype))

    def __repr__(self) -> str:
        return (
            f"ObertCriterion(block={self.block}, damp={self.damp:g}, decay={self.decay:g}, update={self.update}, "
            f"reset={self.reset_after_update})"
        )


class CalibrationCriterion(Criterion):
    """Wanda (Sun et al. 2023, ``|W_ij| * ||X_j||``) or SparseGPT (Frantar & Alistarh 2023, OBS with weight
    reconstruction): one-shot criteria that need a few hundred calibration examples. The masks come from
    :func:`~hf_sparse.pruning.oneshot.calibrated_prune_`; :meth:`scores` is the weight-only fallback (magnitude)
    for code that asks for per-weight scores."""

    needs_calibration = True

    def __init__(self, method: str):
        self.method = method

    def scores(self, weight, *, state=None, steps=0, name="", seed=0):
        return magnitude_scores(weight)


CRITERIA.register("magnitude", MagnitudeCriterion())
CRITERIA.register("movement", MovementCriterion())
CRITERIA.register("taylor", TaylorCriterion())
CRITERIA.register("random", RandomCriterion())
CRITERIA.register("wanda", CalibrationCriterion("wanda"))
CRITERIA.register("sparsegpt", CalibrationCriterion("sparsegpt"))
CRITERIA.register("obert", ObertCriterion())


def _lowest_k_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask over ``flat`` that drops exactly its ``k`` lowest entries."""
    n = flat.numel()
    if k <= n // 2:
        keep = torch.ones_like(flat, dtype=torch.bool)
        if k > 0:
            keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
        return keep
    # Selecting the smaller side is cheaper: at 80-90% sparsity, find the kept entries instead.
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if n - k > 0:
        keep[torch.topk(flat, n - k, largest=True, sorted=False).indices] = True
    return keep


def masks_from_scores(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    scope: str = "global",
    previous: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks that zero the lowest-scoring ``sparsity`` fraction of the weights.

    Exactly ``round(sparsity * n)`` entries are dropped (per layer for ``scope="layer"``, over all layers together
    for ``"global"``), ties broken arbitrarily. Entries already dropped in ``previous`` rank below everything else,
    so masks only grow while the sparsity does not decrease.

    Shapes:
        scores: name -> tensor of any shape. previous: name -> bool tensor of the same shape.
        Returns: name -> bool tensor of the same shape (True = keep).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}.")
    if scope not in ("global", "layer"):
        raise ConfigError(f"scope must be 'global' or 'layer', got {quote(scope)}.")
    ranked: dict[str, torch.Tensor] = {}
    for name, s in scores.items():
        s = s.detach().float().reshape(-1)
        if previous is not None and name in previous:
            s = s.masked_fill(~previous[name].reshape(-1), float("-inf"))
        ranked[name] = s
    if scope == "layer":
        return {
            name: _lowest_k_mask(s, round(sparsity * s.numel())).reshape(scores[name].shape)
            for name, s in ranked.items()
        }
    if not ranked:
        return {}
    flat = torch.cat(list(ranked.values()))
    keep = _lowest_k_mask(flat, round(sparsity * flat.numel()))
    out, offset = {}, 0
    for name, s in ranked.items():
        out[name] = keep[offset : offset + s.numel()].reshape(scores[name].shape)
        offset += s.numel()
    return out
