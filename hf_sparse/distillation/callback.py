"""DistillationCallback: knowledge distillation from a teacher inside the stock ``Trainer``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch.nn as nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..distillation.apply import Distiller
from ..distillation.config import DistillationConfig
from ..distillation.students import teacher_snapshot
from ..errors import ConfigError

__all__ = ["DistillationCallback"]

logger = logging.getLogger(__name__)


class DistillationCallback(TrainerCallback):
    """Trains the Trainer's model as the student of ``teacher`` (a :class:`~hf_sparse.distillation.Distiller`).

    - ``on_init_end`` (end of ``Trainer.__init__``, before the optimizer exists) attaches the distiller: its
      learned width projections (only when student and teacher widths differ) become part of the model as
      ``hf_sparse_distill_projections``, so the optimizer trains them and Trainer checkpoints hold them.
    - Each training forward runs the teacher (eval mode, no gradients) on the same batch, or reads its outputs from
      the cache (``DistillationConfig.cache_dir``), and the model's loss becomes the distillation loss. Evaluation
      is untouched. ``on_log`` adds the mean of each term (``distill_task``, ``distill_kd``, ``distill_hidden``...).
    - ``on_epoch_end`` writes new teacher outputs to the cache; ``on_train_end`` removes the hooks and the
      projections (the saved model is a plain student) and writes the cache.

    It composes with :class:`~hf_sparse.PruningCallback` (the student is pruned while it learns from the dense
    teacher) and :class:`~hf_sparse.RegularizationCallback` (penalties are added after the distillation mix).
    The Trainer must let the model compute its loss: ``label_smoothing_factor`` and ``compute_loss_func`` replace
    it, and are refused.

    Args:
        teacher: The teacher model, or ``None`` for a frozen snapshot of the Trainer's model taken at
            ``on_init_end`` (the float model teaching itself once quantised: attach quantisation after this
            callback's ``on_init_end``, or pass ``teacher_snapshot(model)`` taken beforehand).
        config: A :class:`~hf_sparse.DistillationConfig` or its dict form; keyword arguments build one instead.

    Example:
        >>> student = student_from_teacher(teacher, keep_every=2)
        >>> cb = DistillationCallback(teacher, DistillationConfig(alpha=0.9, temperature=2.0, hidden_weight=1.0))
        >>> Trainer(model=student, args=args, train_dataset=ds, callbacks=[cb]).train()
    """

    def __init__(
        self,
        teacher: nn.Module | None,
        config: DistillationConfig | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        if config is not None and kwargs:
            raise ConfigError("DistillationCallback: give a config or keyword arguments, not both.")
        if config is None:
            config = DistillationConfig(**kwargs)
        self.config = config if isinstance(config, DistillationConfig) else DistillationConfig.from_dict(config)
        self.teacher = teacher
        self.distiller: Distiller | None = None

    def _build(self, model: nn.Module) -> None:
        teacher = self.teacher if self.teacher is not None else teacher_snapshot(model)
        self.distiller = Distiller(model, teacher, self.config).attach()

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs.get("model")
        if model is None:
            raise ConfigError(
                "DistillationCallback needs the Trainer's model at on_init_end; build the Trainer with model=."
            )
        self._build(model)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if args.label_smoothing_factor:
            raise ConfigError(
                "DistillationCallback: TrainingArguments.label_smoothing_factor makes the Trainer compute the loss "
                "from the logits and ignore the distillation loss; set it to 0 (the teacher's soft labels already "
                "smooth the targets)."
            )
        model = kwargs.get("model")
        d = self.distiller
        if d is None or model is not d.student:
            if d is not None:
                d.detach()
            if self.teacher is None:
                raise ConfigError(
                    "DistillationCallback(teacher=None) snapshots the model at on_init_end; it was added after the "
                    "Trainer was built. Pass it to Trainer(callbacks=[...]) or give teacher=teacher_snapshot(model)."
                )
            self._build(model)
            if len(self.distiller.projections):
                self.distiller.detach()
                raise ConfigError(
                    "DistillationCallback was added after the Trainer was built, but student and teacher widths "
                    "differ: the learned projections would miss the optimizer. Pass the callback to "
                    "Trainer(callbacks=[...])."
                )
        elif not d.attached:
            d.attach()  # a second train() after on_train_end detached it
        self.distiller.gradient_accumulation_steps = max(1, args.gradient_accumulation_steps)
        self.distiller.sync_device()

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if self.distiller is None or logs is None or "loss" not in logs:
            return
        extra = {k: round(v, 6) for k, v in self.distiller.pop_means().items()}
        if self.distiller.cache is not None:
            extra["teacher_cache_hits"] = self.distiller.cache.hits
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.distiller is not None and self.distiller.cache is not None:
            self.distiller.cache.flush()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.distiller is not None and self.distiller.attached:
            self.distiller.detach()
            logger.info(
                "DistillationCallback: %d teacher forward passes%s.",
                self.distiller.teacher_calls,
                f", {self.distiller.cache.hits} examples from the cache" if self.distiller.cache is not None else "",
            )
