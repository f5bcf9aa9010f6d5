"""Configuration of weight pruning."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from ..config import BaseConfig, check_seed, register_config
from ..errors import ConfigError, quote
from ..nn.matching import DEFAULT_EXCLUDE
from .criteria import CRITERIA
from .granularity import GRANULARITIES, STRUCTURED_GRANULARITIES

__all__ = ["PruningConfig", "DEFAULT_EXCLUDE"]


@register_config("pruning")
@dataclasses.dataclass(frozen=True)
class PruningConfig(BaseConfig):
    """Weight pruning of ``nn.Linear`` layers (and named ``nn.Embedding`` tables) with keep-masks.

    Args:
        sparsity: Final fraction of the selected weights set to zero, in [0, 1). With ``granularity="nm"`` it must
            be ``1 - n / m``.
        criterion: How weights are ranked, one of the names registered in
            :data:`~hf_sparse.pruning.criteria.CRITERIA`: ``"magnitude"`` keeps the largest ``|w|``;
            ``"movement"`` (Sanh et al. 2020) keeps weights moving away from zero during fine-tuning;
            ``"taylor"`` keeps the largest ``|mean_t w * dL/dw|``; ``"random"`` is the seeded ablation baseline;
            ``"obert"`` (the Optimal BERT Surgeon, Kurtic et al. 2022) keeps the largest second-order saliency
            ``w² / (2 [F⁻¹]_qq)`` from a block-diagonal empirical Fisher ``F`` (see ``obert_block`` and the
            ``fisher_*`` fields; unstructured granularity only). ``movement``, ``taylor`` and ``obert`` rank on
            gradients accumulated by :class:`~hf_sparse.PruningCallback`, so their first mask update must come after
            at least one training step (``start_step >= 1``, or a cubic schedule starting from
            ``initial_sparsity=0``); one-shot :func:`~hf_sparse.pruning.prune_` needs them passed as ``scores=``,
            except ``obert``, which computes its Fisher from labelled calibration batches
            (``prune_(model, config, calibration=batches)``; the callback takes ``calibration_samples`` examples of
            the training data, labels included, when it prunes at step 0). Otherwise a
            :class:`~hf_sparse.errors.ConfigError` says so.
        scope: ``"global"`` ranks all selected weights (or blocks, or embedding rows) together, scores compared as
            they are (layers end with different sparsities); ``"layer"`` prunes every selected layer to the same
            sparsity. Ignored by ``granularity="nm"``.
        target_modules: Regular expressions over qualified module names (``re.fullmatch``; a plain word such as
            ``"query"`` also matches as the last name component). Empty means every ``nn.Linear``.
        exclude_modules: Names (components) or regular expressions never pruned. Exclusion wins over
            ``target_modules``. Defaults to task heads, poolers and embeddings (:data:`DEFAULT_EXCLUDE`).
        embeddings: ``nn.Embedding`` modules pruned together with the selected Linear layers (ranked with them
            under ``scope="global"``), by name component or full-name regex, e.g. ``["word_embeddings"]``: in
            MiniLM/BERT the word-embedding table is half the parameters, so a checkpoint cannot get much below half
            its dense size without it. ``exclude_modules`` does not apply to embeddings named here (naming them is
            explicit); a name that matches no ``nn.Embedding`` is an error. Tied input/output embeddings cannot be
            pruned this way.
        schedule: ``"cubic"`` — gradual pruning of Zhu & Gupta (2017) from ``initial_sparsity`` at ``start_step``
            to ``sparsity`` at ``end_step``, masks recomputed every ``update_every`` optimizer steps;
            ``"oneshot"`` — prune to ``sparsity`` at ``start_step`` and keep the mask fixed;
            ``"iterative"`` — prune / fine-tune cycles: ``stages`` equal sparsity increments, the first at
            ``start_step``, the last (reaching ``sparsity``) at ``end_step``, evenly spaced;
            ``"rigl"`` — dynamic sparse training (Evci et al. 2020): prune to ``sparsity`` at ``start_step``, then
            every ``update_every`` steps until ``end_step`` drop a cosine-decayed fraction ``regrow_fraction`` of
            each layer's kept weights with the lowest ``|w|`` and regrow as many pruned positions with the largest
            ``|dL/dw|`` (starting at zero); the sparsity stays constant. Needs the callback and
            ``granularity="unstructured"``.
        initial_sparsity: Sparsity at ``start_step`` for the cubic and iterative schedules.
        start_step: Optimizer step at which pruning starts.
        end_step: Optimizer step at which the final sparsity is reached (cubic, iterative) or after which the mask
            stops changing (rigl). A run with fewer optimizer steps never reaches it: the callback warns when
            training starts, naming the sparsity the run will end at.
        end_fraction: Instead of ``end_step``, the fraction of the run's optimizer steps (the Trainer's
            ``max_steps``, read when training starts) at which the ramp ends, in (0, 1]: ``end_step =
            max(round(end_fraction * max_steps), start_step)``. As ``LowRankCallback(end_fraction=...)``. Not with
            ``end_step`` (give one) nor ``schedule="oneshot"``.
        update_every: Steps between mask updates (cubic, rigl).
        granularity: What is kept or dropped together: ``"unstructured"`` (single weights), ``"block"``
            (``block``-shaped tiles), ``"nm"`` (``n`` of every ``m`` consecutive weights along the input
            dimension of each row) or ``"embedding_row"`` (whole rows of the tables named in ``embeddings``; Linear
            layers are then not pruned). Removing whole heads, neurons or layers is
            ``StructuredPruningConfig``'s job.
        block: ``(rows, cols)`` of a block for ``granularity="block"``; every selected weight's shape must be
            divisible by it.
        n: Weights kept per group for ``granularity="nm"``.
        m: Group length for ``granularity="nm"``; every selected layer's input size must be a multiple of it.
        group_reduce: How a block's or row's score is made from its weights' scores: ``"sum"`` or ``"l2"``.
        seed: Seed of the ``"random"`` criterion (each layer draws from its own stream derived from it).
        stages: Number of prune / fine-tune cycles of the ``"iterative"`` schedule.
        regrow_fraction: Fraction of each layer's kept weights dropped and regrown at the first ``"rigl"`` update
            (cosine-decayed to zero at ``end_step``), in [0, 1].
        layer_sparsity: Final sparsity of individual layers, by exact module name (e.g. the output of
            :func:`~hf_sparse.pruning.allocate_sparsity` after a sensitivity scan); layers not named get
            ``sparsity``. Each named layer is pruned on its own (``scope`` applies to the others) and follows the
            schedule in proportion: at a step where the schedule asks for ``s``, a layer with final sparsity ``t``
            is at ``s * t / sparsity``. Not with ``granularity="nm"``.
        calibration_samples: Examples of calibration data the ``"wanda"`` and ``"sparsegpt"`` criteria read
            (:class:`~hf_sparse.PruningCallback` takes them from the start of the training data), and ``"obert"``
            when it prunes at step 0.
        obert_block: ``B`` of ``criterion="obert"``: weights per Fisher block, consecutive in a row of the
            ``(out, in)`` weight (a shorter last block where ``B`` does not divide ``in``). The accumulated Fisher
            holds ``B`` float32 values per pruned weight (1.4 GB for MiniLM-L6's encoder at ``B = 32``), and is
            dropped once no mask update remains.
        obert_damp: Dampening ``λ`` of ``F = λ I + (1/m) sum g gᵀ``, > 0 (the paper's 1e-7 by default).
        obert_relative_damp: ``λ`` as this fraction of the mean of each layer's Fisher diagonal instead (at least
            ``obert_damp``), e.g. 0.01: mean squared gradients differ by orders of magnitude between layers, models
            and training phases (about 3e-9 to 6e-8 for the fine-tuned MiniLM-L6, where 1e-7 dominates the
            Fisher and the ranking falls back towards magnitude). Null: ``obert_damp`` alone.
        obert_update: Apply the exact multi-weight OBS update to the kept weights of a block when others of it are
            pruned (``dw = -F⁻¹[:, Q] (F⁻¹[Q, Q])⁻¹ w_Q``). ``null`` (default): on for one-shot pruning
            (:func:`~hf_sparse.pruning.prune_`, ``schedule="oneshot"``), off for gradual schedules, whose Fisher
            comes from few training gradients and whose fine-tuning between updates repairs the loss anyway.
        fisher_decay: Per-gradient decay of the accumulated Fisher, in (0, 1]: 1 (default) averages the gradients
            equally; below 1 weighs gradient ``k`` steps old by ``fisher_decay^k`` (an exponential moving average,
            normalised by the sum of the weights).
        fisher_reset: Clear the Fisher after each mask update (default), so each update ranks with the gradients
            of the backward passes since the previous one (``update_every`` times the gradient accumulation
            steps); false keeps accumulating across updates (use with ``fisher_decay`` < 1).
        fisher_batch_size: Examples per gradient when the Fisher comes from calibration batches (one-shot):
            each calibration batch is split into pieces of this size, each giving one gradient.
        lr_rewind: Learning-rate rewinding (Renda et al. 2020) in :class:`~hf_sparse.PruningCallback`, for the
            Trainer's ``linear`` or ``cosine`` schedules: ``"none"`` (default) leaves the schedule alone; ``"end"``
            sends the learning rate back to its peak when the ramp ends (``end_step``; ``start_step`` for one-shot)
            and decays it to zero over the remaining steps with the schedule's shape; ``"each_update"`` does so
            after every mask update, decaying to zero at the next update (after the last one, at the run's end).
    """

    sparsity: float = 0.5
    criterion: str = "magnitude"
    scope: Literal["global", "layer"] = "global"
    target_modules: tuple[str, ...] = ()
    exclude_modules: tuple[str, ...] = DEFAULT_EXCLUDE
    embeddings: tuple[str, ...] = ()
    schedule: Literal["cubic", "oneshot", "iterative", "rigl"] = "cubic"
    initial_sparsity: float = 0.0
    start_step: int = 0
    end_step: int = 0
    update_every: int = 10
    granularity: str = "unstructured"
    block: tuple[int, ...] = (4, 4)
    n: int = 2
    m: int = 4
    group_reduce: Literal["sum", "l2"] = "sum"
    seed: int = 0
    stages: int = 1
    regrow_fraction: float = 0.3
    layer_sparsity: dict[str, float] = dataclasses.field(default_factory=dict)
    calibration_samples: int = 256
    end_fraction: float | None = None
    obert_block: int = 32
    obert_damp: float = 1e-7
    obert_relative_damp: float | None = None
    obert_update: bool | None = None
    fisher_decay: float = 1.0
    fisher_reset: bool = True
    fisher_batch_size: int = 1
    lr_rewind: Literal["none", "end", "each_update"] = "none"

    def validate(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"PruningConfig.sparsity must be in [0, 1), got {self.sparsity}.")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"PruningConfig.criterion must be one of {list(CRITERIA)}, got {quote(self.criterion)}.")
        allowed = [*GRANULARITIES, *STRUCTURED_GRANULARITIES]
        if self.granularity not in allowed:
            raise ConfigError(f"PruningConfig.granularity must be one of {allowed}, got {quote(self.granularity)}.")
        if self.criterion == "obert" and self.granularity != "unstructured":
            raise ConfigError(
                f"PruningConfig.criterion='obert' scores single weights (the saliency of a group of weights is not"
                f" the sum of theirs): use granularity='unstructured', got {quote(self.granularity)}."
            )
        if self.obert_block < 1:
            raise ConfigError(f"PruningConfig.obert_block must be >= 1, got {self.obert_block}.")
        if not self.obert_damp > 0:
            raise ConfigError(f"PruningConfig.obert_damp must be > 0, got {self.obert_damp}.")
        if self.obert_relative_damp is not None and not 0 < self.obert_relative_damp < 10:
            raise ConfigError(
                f"PruningConfig.obert_relative_damp must be in (0, 10) or null, got {self.obert_relative_damp}."
            )
        if not 0.0 < self.fisher_decay <= 1.0:
            raise ConfigError(f"PruningConfig.fisher_decay must be in (0, 1], got {self.fisher_decay}.")
        if self.fisher_batch_size < 1:
            raise ConfigError(f"PruningConfig.fisher_batch_size must be >= 1, got {self.fisher_batch_size}.")
        if self.end_fraction is not None:
            if not 0.0 < self.end_fraction <= 1.0:
                raise ConfigError(f"PruningConfig.end_fraction must be in (0, 1], got {self.end_fraction}.")
            if self.end_step:
                raise ConfigError(
                    f"PruningConfig.end_step ({self.end_step}) and end_fraction ({self.end_fraction}) are both set: "
                    "give one (end_fraction sets end_step from the run's length)."
                )
            if self.schedule == "oneshot":
                raise ConfigError(
                    "PruningConfig.end_fraction ends a ramp, and schedule='oneshot' has none: leave end_fraction "
                    "unset (start_step says when one-shot pruning happens)."
                )
        calibrated = getattr(CRITERIA.get(self.criterion), "needs_calibration", False)
        if calibrated:
            if self.schedule != "oneshot":
                raise ConfigError(
                    f"PruningConfig.criterion={quote(self.criterion)} prunes once from calibration data: use "
                    f"schedule='oneshot' (got {quote(self.schedule)}); fine-tuning afterwards keeps its mask."
                )
            if self.granularity not in ("unstructured", "block", "nm"):
                raise ConfigError(
                    f"PruningConfig.criterion={self.criterion!r} works with granularity 'unstructured', 'block' or "
                    f"'nm', got {quote(self.granularity)}."
                )
            if self.embeddings:
                raise ConfigError(
                    f"PruningConfig.criterion={self.criterion!r} prunes nn.Linear layers from their inputs; it cannot "
                    "prune embedding tables: leave PruningConfig.embeddings empty."
                )
        if self.calibration_samples < 1:
            raise ConfigError(f"PruningConfig.calibration_samples must be >= 1, got {self.calibration_samples}.")
        if self.granularity in STRUCTURED_GRANULARITIES:
            if self.criterion not in ("magnitude", "movement", "taylor", "random"):
                raise ConfigError(
                    f"PruningConfig.granularity={quote(self.granularity)} ranks whole units by the criterion's scores "
                    f"summed over their weights: criterion must be magnitude, movement, taylor or random, got "
                    f"{quote(self.criterion)}."
                )
            if self.schedule == "rigl" or self.embeddings or self.layer_sparsity:
                raise ConfigError(
                    f"PruningConfig.granularity={quote(self.granularity)} does not combine with schedule='rigl', "
                    "embeddings or layer_sparsity."
                )
        for name, value in self.layer_sparsity.items():
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"PruningConfig.layer_sparsity[{quote(name)}] must be in [0, 1), got {value}.")
        if self.layer_sparsity and self.granularity == "nm":
            raise ConfigError("PruningConfig.layer_sparsity cannot be used with granularity='nm' (N:M fixes it).")
        if self.layer_sparsity and self.sparsity == 0:
            raise ConfigError("PruningConfig.layer_sparsity needs sparsity > 0 (it scales the schedule).")
        if len(self.block) != 2 or min(self.block) < 1:
            raise ConfigError(
                f"PruningConfig.block must be two positive integers (rows, cols), got {list(self.block)}."
            )
        if self.m < 1:
            raise ConfigError(f"PruningConfig.m (the N:M group length) must be >= 1, got {self.m}.")
        if not 1 <= self.n <= self.m:
            raise ConfigError(
                f"PruningConfig.n (weights kept of every m) must satisfy 1 <= n <= m, got n={self.n}, m={self.m}."
            )
        if self.granularity == "nm" and abs(self.sparsity - (1.0 - self.n / self.m)) > 1e-6:
            raise ConfigError(
                f"PruningConfig.sparsity is {self.sparsity} but granularity='nm' with n={self.n}, m={self.m} fixes "
                f"it at 1 - n/m = {1.0 - self.n / self.m:g}. Set sparsity={1.0 - self.n / self.m:g} or change n/m."
            )
        if self.granularity == "embedding_row" and not self.embeddings:
            raise ConfigError(
                "PruningConfig.granularity='embedding_row' prunes rows of the tables named in "
                "PruningConfig.embeddings, which is empty; name the nn.Embedding modules to prune."
            )
        if not 0.0 <= self.initial_sparsity <= self.sparsity:
            raise ConfigError(
                f"PruningConfig.initial_sparsity must be in [0, sparsity={self.sparsity}], "
                f"got {self.initial_sparsity}."
            )
        if self.start_step < 0:
            raise ConfigError(f"PruningConfig.start_step must be >= 0, got {self.start_step}.")
        if self.schedule != "oneshot" and self.end_fraction is None and self.end_step < self.start_step:
            raise ConfigError(f"PruningConfig.end_step ({self.end_step}) must be >= start_step ({self.start_step}).")
        if self.update_every < 1:
            raise ConfigError(f"PruningConfig.update_every must be >= 1, got {self.update_every}.")
        if self.stages < 1:
            raise ConfigError(f"PruningConfig.stages must be >= 1, got {self.stages}.")
        check_seed(self.seed, "PruningConfig.seed")
        if not 0.0 <= self.regrow_fraction <= 1.0:
            raise ConfigError(f"PruningConfig.regrow_fraction must be in [0, 1], got {self.regrow_fraction}.")
        if self.schedule == "rigl" and self.granularity != "unstructured":
            raise ConfigError(
                f"PruningConfig.schedule='rigl' regrows single weights and needs granularity='unstructured', got "
                f"{quote(self.granularity)}."
            )
        for key in ("target_modules", "exclude_modules", "embeddings"):
            for pattern in getattr(self, key):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(
                        f"PruningConfig.{key} has an invalid regular expression {quote(pattern)}: {exc}."
                    ) from None
