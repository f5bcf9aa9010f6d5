"""Pruning criteria (importance scores) and mask selection. Pure tensor maths, no modules."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import torch

from ..errors import ConfigError, quote
from ..registry import Registry

__all__ = [
    "CRITERIA",
    "Criterion",
    "MagnitudeCriterion",
    "MovementCriterion",
    "TaylorCriterion",
    "RandomCriterion",
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
    the values ``PruningConfig.criterion`` accepts.
    """

    #: True when :meth:`scores` is meaningless without gradients accumulated during training.
    needs_gradients: bool = False
    #: True for one-shot methods that read calibration inputs and choose masks themselves (Wanda, SparseGPT): the
    #: :class:`~hf_sparse.Pruner` hands them to :func:`~hf_sparse.pruning.oneshot.calibrated_prune_`.
    needs_calibration: bool = False

    def accumulate(self, state: torch.Tensor | None, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor | None:
        """Fold one backward pass into the accumulator (``None`` the first time). Weight-only criteria keep none.

        Shapes:
            state, weight, grad: the weight's shape (state float32). Returns: the new state.
        """
        return None

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
