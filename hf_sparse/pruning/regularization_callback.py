"""RegularizationCallback: L1, group lasso, DropConnect and hard-concrete gates inside the stock ``Trainer``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..errors import ConfigError
from ..pruning.regularization import RegularizationConfig, RegularizationHandle, attach_regularization

__all__ = ["RegularizationCallback"]

logger = logging.getLogger(__name__)


class RegularizationCallback(TrainerCallback):
    """Trains a model with the penalties, DropConnect and gates of a :class:`~hf_sparse.RegularizationConfig`.

    - ``on_init_end`` (the end of ``Trainer.__init__``, before the optimizer exists) attaches them with
      :func:`~hf_sparse.pruning.regularization.attach_regularization`, so the gates' parameters are in the
      optimizer the Trainer creates. Pass the callback to ``Trainer(callbacks=[...])``; adding it to an existing
      Trainer with ``add_callback`` is fine too, as long as it happens before ``train()`` (it then attaches in
      ``on_train_begin`` only if there are no gates: an optimizer created without them would never train them).
    - The penalty is added to the model's loss by a forward hook, so the logged ``loss`` includes it; ``on_log``
      adds ``reg_penalty`` (its value with the current weights) and, with gates, ``gate_density`` (the expected
      fraction of gated weights kept) to the logs. Add the callback with :func:`~hf_sparse.attach_callbacks` for
      the ``report_to`` loggers to see these keys.
    - ``on_train_end`` removes the DropConnect parametrizations (the trained weights stay). The gates stay
      attached, so ``trainer.evaluate()`` afterwards sees the deterministic gates, unless ``finalize_gates=True``:
      then they are finalized (closed heads and neurons removed physically, the rest folded into the weights, see
      :meth:`~hf_sparse.pruning.regularization.RegularizationHandle.finalize_`) and the report is kept in
      :attr:`finalize_report`. Finalize yourself later with ``callback.handle.finalize_()``.

    Gates are part of the model's state dict, so Trainer checkpoints save them and
    ``train(resume_from_checkpoint=...)`` restores them. While DropConnect is on, the selected weights are saved
    under ``<module>.parametrizations.weight.original``; save the final model after training (when it is removed).

    DropConnect cannot be combined with :class:`~hf_sparse.PruningCallback` on the same layers (its masks act on
    ``module.weight``, which DropConnect recomputes at every access): the Pruner refuses parametrized weights.

    Args:
        config: A :class:`~hf_sparse.RegularizationConfig` (or its dict form).
        finalize_gates: Finalize the gates at the end of training.

    Example:
        >>> cb = RegularizationCallback(RegularizationConfig(gates=("head", "neuron"), gate_penalty=1.0,
        ...                                                  gate_target_density=0.5, gate_lr_multiplier=100))
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
        >>> trainer.train()
        >>> report = cb.handle.finalize_()
    """

    def __init__(self, config: RegularizationConfig | Mapping[str, Any], *, finalize_gates: bool = False):
        self.config = config if isinstance(config, RegularizationConfig) else RegularizationConfig.from_dict(config)
        self.finalize_gates = bool(finalize_gates)
        self.handle: RegularizationHandle | None = None
        self.finalize_report: dict[str, Any] | None = None

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs.get("model")
        if model is None:
            raise ConfigError(
                "RegularizationCallback needs the Trainer's model at on_init_end; build the Trainer with model= "
                "(or model_init=)."
            )
        self.handle = attach_regularization(model, self.config)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs.get("model")
        if self.handle is not None and model is self.handle.model and self.handle.attached:
            self.handle.add_dropconnect()  # a second train() after on_train_end removed it
            return
        if self.config.gates:
            where = "was added after the Trainer was built" if self.handle is None else "saw another model at init"
            raise ConfigError(
                f"RegularizationCallback {where}: the gates would be created after the Trainer's optimizer and never "
                "trained. Pass the callback to Trainer(callbacks=[...]) with model= (not model_init=, which builds "
                "a new model in train())."
            )
        if self.handle is not None and self.handle.attached:
            self.handle.remove()
        self.handle = attach_regularization(model, self.config)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if self.handle is None or not self.handle.attached or logs is None or "loss" not in logs:
            return
        stats = self.handle.stats()
        extra = {"reg_penalty": round(stats["reg_penalty"], 8)}
        if "gate_density" in stats:
            extra["gate_density"] = round(stats["gate_density"], 6)
        logs.update(extra)
        # Trainer appended this entry to log_history before calling callbacks; keep the history complete.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.handle is None or not self.handle.attached:
            return
        self.handle.remove_dropconnect()
        if self.finalize_gates and self.handle.gates:
            self.finalize_report = self.handle.finalize_()
            logger.info(
                "RegularizationCallback: gates finalized, parameters %d -> %d.",
                self.finalize_report["params_before"],
                self.finalize_report["params_after"],
            )
