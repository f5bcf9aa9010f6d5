"""LowRankCallback: nuclear-norm regularisation and a gradual rank schedule inside the stock ``Trainer``, ending in
a factorised model."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..distributed.sync import broadcast_, is_distributed
from ..errors import ConfigError, PruningStateError
from ..lowrank.apply import choose_rank, factorize_
from ..lowrank.config import LowRankConfig
from ..lowrank.proximal import project_rank_, singular_value_threshold_
from ..nn.linear_like import linear_weight
from ..pruning.schedules import cubic_sparsity

__all__ = ["LowRankCallback", "LOWRANK_STATE_FILE"]

#: Written into each Trainer checkpoint folder: the rank schedule's targets and current ranks, so a resumed run
#: continues the same schedule (targets chosen by an energy rule cannot be recomputed from projected weights).
LOWRANK_STATE_FILE = "hf_sparse_lowrank_state.json"

logger = logging.getLogger(__name__)


class LowRankCallback(TrainerCallback):
    """Lowers the rank of a model's Linear layers while it fine-tunes, then factorises them.

    - ``nuclear_weight`` (λ > 0): every ``prox_every`` optimizer steps, each selected weight takes the proximal step
      of ``λ ||W||_*``: singular-value thresholding ``W <- U max(S - λ·lr·prox_every, 0) V^T`` (lr: the current
      learning rate), which drives small singular values to zero, so the spectrum the ranks are cut from is
      already concentrated.
    - Rank schedule: from ``start_step`` to ``end_step`` each layer's allowed rank falls from its full rank to its
      target (:class:`~hf_sparse.LowRankConfig`'s rules, evaluated on the weights when training begins) along the
      cubic schedule of gradual pruning, updated every ``update_every`` steps; at each update the weight is
      projected onto its current rank (its best approximation of that rank), so the training between updates
      repairs the loss; after the ramp the projections go on at the same interval, so the rank training adds back
      between them is removed before the final factorisation.
    - ``on_train_end``: :func:`~hf_sparse.lowrank.factorize_` with the final ranks (``factorize=True``): the
      model's layers become two-factor layers that save and load; :attr:`report` holds its per-layer report.
    - Resume: each Trainer checkpoint gets ``hf_sparse_lowrank_state.json`` (targets, full and current ranks, the
      ramp); ``trainer.train(resume_from_checkpoint=...)`` reads it back, so the resumed run follows the same
      schedule and ends with the same weights as an uninterrupted one.
    - Multi-process (DDP) runs: the target ranks and the weights after each proximal step or projection are rank
      0's (SVDs are not bitwise reproducible across machines), so the replicas stay identical.

    Args:
        config: which layers and target ranks (a :class:`~hf_sparse.LowRankConfig`).
        nuclear_weight: λ of the nuclear-norm penalty (0: none).
        prox_every: optimizer steps between proximal steps.
        start_step, end_step: the rank schedule's ramp (``end_step`` 0: the end of training).
        end_fraction: instead of ``end_step``, the fraction of the run's optimizer steps by which ranks reach their
            targets.
        update_every: steps between rank projections.
        factorize: factorise at the end of training.
    """

    def __init__(
        self,
        config: LowRankConfig,
        *,
        nuclear_weight: float = 0.0,
        prox_every: int = 50,
        start_step: int = 0,
        end_step: int = 0,
        update_every: int = 50,
        end_fraction: float | None = None,
        factorize: bool = True,
    ):
        if not isinstance(config, LowRankConfig):
            raise ConfigError(f"LowRankCallback needs a LowRankConfig, got {type(config).__name__}.")
        if nuclear_weight < 0 or prox_every < 1 or update_every < 1 or start_step < 0 or end_step < 0:
            raise ConfigError(
                "LowRankCallback: nuclear_weight must be >= 0, prox_every and update_every >= 1, steps >= 0."
            )
        self.config, self.nuclear_weight, self.prox_every = config, float(nuclear_weight), int(prox_every)
        self.start_step, self.end_step, self.update_every = int(start_step), int(end_step), int(update_every)
        if end_fraction is not None and not 0.0 < end_fraction <= 1.0:
            raise ConfigError(f"LowRankCallback: end_fraction must be in (0, 1], got {end_fraction}.")
        self.end_fraction = end_fraction
        self.factorize = bool(factorize)
        self.restored_from: str | None = None
        self.targets: dict[str, int] = {}
        self.full: dict[str, int] = {}
        self.current: dict[str, int] = {}
        self.report: dict[str, dict[str, Any]] | None = None

    def _layers(self, model) -> dict:
        from ..nn.matching import match_linears

        return match_linears(model, self.config.target_modules, self.config.exclude_modules, who="LowRankConfig")

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs["model"]
        layers = self._layers(model)
        self.full = {n: min(m.weight.shape) for n, m in layers.items()}  # a rank: the same for a transposed weight
        if state.global_step > 0 and self._restore(args, state, layers):
            return
        self.targets = {n: choose_rank(n, linear_weight(m), self.config) for n, m in layers.items()}
        if is_distributed():
            # An energy rule reads singular values; rank 0's choice is every rank's, so the factorised replicas
            # end with the same shapes.
            chosen = torch.tensor([self.targets[n] for n in layers], dtype=torch.int64)
            broadcast_([chosen])
            self.targets = dict(zip(layers, chosen.tolist()))
        self.current = dict(self.full)
        if self.end_fraction is not None:
            self.end_step = max(int(round(self.end_fraction * state.max_steps)), self.start_step)
        elif not self.end_step:
            self.end_step = max(state.max_steps, self.start_step)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not args.should_save or not self.targets:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            logger.warning("LowRankCallback: checkpoint folder %s not found; rank state not saved with it.", folder)
            return
        payload = {
            "config": self.config.to_dict(),
            "global_step": state.global_step,
            "start_step": self.start_step,
            "end_step": self.end_step,
            "targets": self.targets,
            "full": self.full,
            "current": self.current,
        }
        path = os.path.join(folder, LOWRANK_STATE_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(path + ".tmp", path)

    def _restore(self, args: TrainingArguments, state: TrainerState, layers: dict) -> bool:
        """Read the schedule of the checkpoint being resumed; False (with a warning) when it has none."""
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        path = os.path.join(folder, LOWRANK_STATE_FILE)
        if not os.path.isfile(path):
            logger.warning(
                "LowRankCallback: no %s in %s; the targets are recomputed from the resumed (already projected) "
                "weights, which an energy rule reads differently.",
                LOWRANK_STATE_FILE,
                folder,
            )
            return False
        try:
            with open(path) as f:
                saved = json.load(f)
            targets = {str(n): int(r) for n, r in saved["targets"].items()}
            current = {str(n): int(r) for n, r in saved["current"].items()}
            start, end = int(saved["start_step"]), int(saved["end_step"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PruningStateError(f"Cannot read the low-rank schedule state from {path}: {exc}") from None
        if set(targets) != set(layers) or set(current) != set(layers):
            raise PruningStateError(
                f"The low-rank state in {path} names other layers than this config selects "
                f"(saved {sorted(set(targets) ^ set(layers))[:5]} differ); resume with the config that wrote it."
            )
        bad = [n for n, r in targets.items() if not 1 <= r <= self.full[n] or not 1 <= current[n] <= self.full[n]]
        if bad:
            raise PruningStateError(f"The low-rank state in {path} has ranks out of range for layers {bad[:5]}.")
        self.targets, self.current, self.start_step, self.end_step = targets, current, start, end
        self.restored_from = path
        return True

    def rank_at(self, name: str, step: int) -> int:
        """The rank layer ``name`` is allowed after ``step`` optimizer steps: its full rank before the ramp, its
        target after it, the cubic schedule between."""
        full, target = self.full[name], self.targets[name]
        fraction = cubic_sparsity(step, initial=0.0, final=1.0, start_step=self.start_step, end_step=self.end_step)
        return max(target, int(round(full - fraction * (full - target))))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs["model"]
        step = state.global_step
        layers = self._layers(model)
        changed = {}
        if self.nuclear_weight > 0 and step % self.prox_every == 0:
            scheduler = kwargs.get("lr_scheduler")
            lr = scheduler.get_last_lr()[0] if scheduler is not None else args.learning_rate
            tau = self.nuclear_weight * lr * self.prox_every
            for name, m in layers.items():
                singular_value_threshold_(m.weight.data, tau)
                changed[name] = m.weight.data
        if step > self.start_step and (step - self.start_step) % self.update_every == 0:
            # Projected at every update, also after the ramp: training between updates lets the rank grow back.
            for name, m in layers.items():
                rank = self.rank_at(name, step)
                if rank < self.full[name]:
                    project_rank_(m.weight.data, rank)
                    self.current[name] = rank
                    changed[name] = m.weight.data
        if changed and is_distributed():
            # SVDs of the same weights agree across processes only as far as LAPACK is deterministic (it is not
            # across thread counts or CPU kinds); DDP never re-syncs weights, so rank 0's result is kept by all.
            broadcast_([changed[n] for n in layers if n in changed])

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not self.factorize:
            return
        model = kwargs["model"]
        final = self.config.replace(rank=None, energy=None, compression=None, module_ranks=dict(self.targets))
        self.report = factorize_(model, final, progress=False)
        logger.info("LowRankCallback: factorised %d layers", sum("format" in e for e in self.report.values()))
