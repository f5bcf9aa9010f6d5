"""PruningCallback: gradual, iterative and dynamic (RigL) pruning inside the stock ``transformers.Trainer``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from ..distributed.sync import all_reduce_, broadcast_, is_distributed
from ..errors import ConfigError, PruningStateError
from ..nn.linear_like import linear_layout, stored_layout
from ..pruning.apply import Pruner
from ..pruning.config import PruningConfig
from ..pruning.schedules import (
    LR_REWIND_SHAPES,
    is_rigl_update,
    lr_rewind_steps,
    ramp_end_step,
    resolve_end_step,
    rewound_lr_factor,
    rigl_regrow_fraction,
    sparsity_at,
)
from ..trainer_callbacks import attach_callbacks

__all__ = ["PruningCallback", "attach_callbacks", "MASKS_FILE", "SCORES_FILE"]

logger = logging.getLogger(__name__)

#: File written into each Trainer checkpoint folder with the pruning masks (safetensors, bool tensors).
MASKS_FILE = "hf_sparse_pruning_masks.safetensors"
#: File written next to it with the gradient criterion's accumulated scores (movement, taylor), so resuming
#: continues the accumulation instead of restarting it.
SCORES_FILE = "hf_sparse_pruning_scores.safetensors"


class PruningCallback(TrainerCallback, ExportableState):
    """Prunes a model while the stock :class:`transformers.Trainer` trains it.

    - Follows ``config.schedule`` (cubic from ``initial_sparsity`` to ``sparsity`` between ``start_step`` and
      ``end_step``, masks recomputed every ``update_every`` optimizer steps; one-shot; iterative stages; or RigL
      drop-and-regrow every ``update_every`` steps at constant sparsity).
    - Feeds every backward pass's gradient, before it is masked, to the Pruner: gradient criteria (``movement``,
      ``taylor``) accumulate their scores from it, and RigL reads the dense gradient of its update steps. A gradient
      criterion cannot rank anything before the first training step: a schedule that prunes at step 0 with it
      raises :class:`~hf_sparse.errors.ConfigError` when training starts.
    - Keeps pruned weights exactly zero: their gradients are zeroed before each optimizer step and the weights are
      re-masked right after it, so Adam moments and weight decay cannot revive them. Masks change only on optimizer
      steps, so gradient accumulation is respected.
    - Writes its masks into every Trainer checkpoint (``hf_sparse_pruning_masks.safetensors``) and restores them on
      ``trainer.train(resume_from_checkpoint=...)``; the schedule position is the Trainer's ``global_step``.
    - Adds ``sparsity`` (measured over the pruned layers) and ``target_sparsity`` to the Trainer's logs.
    - Multi-process (DDP) runs: the gradient hooks see each process's local gradient, so gradient scores (movement,
      taylor) and RigL's gradients are averaged over the processes before masks are chosen from them, and a
      calibration criterion's masks and reconstructed weights are rank 0's; every replica keeps the same masks.
      Only the process that saves (``args.should_save``) writes mask files.

    - ``end_fraction``: the ramp's end is set from the Trainer's ``max_steps`` when training starts. A schedule that
      ends after the run's last step (``end_step > max_steps``) is reported with a warning naming both numbers and
      the sparsity the run will end at.
    - ``lr_rewind``: the Trainer's learning-rate schedule (a ``LambdaLR``, ``lr_scheduler_type`` ``linear`` or
      ``cosine``) is rewound to its peak at the end of the ramp, or after every mask update, and decays to zero from
      there (see :class:`~hf_sparse.PruningConfig`). The rewinding is a function of the step, so it continues
      unchanged after ``trainer.train(resume_from_checkpoint=...)``.
    - ``criterion="obert"``: the Fisher is accumulated from every backward pass's gradient until the last mask
      update, then freed; a schedule that prunes at step 0 computes it from ``calibration_samples`` labelled
      examples of the training data first.

    Logging integrations chosen with ``report_to`` run before callbacks passed to ``Trainer(callbacks=...)``; to
    have them record the sparsity too, add the callback with :func:`attach_callbacks`.

    - ``criterion="wanda"`` / ``"sparsegpt"`` (one-shot): the calibration data are the first
      ``config.calibration_samples`` examples of the Trainer's training dataloader (labels dropped); the mask is
      chosen at ``start_step`` and kept while the model fine-tunes.
    - ``granularity="head"`` / ``"neuron"``: whole units are masked during training and, when training ends,
      removed physically (:func:`~hf_sparse.pruning.units.shrink_masked_units_`), so the model the Trainer holds
      afterwards is smaller and saves as such; ``shrink=False`` keeps the masked full-size model.

    Args:
        config: A :class:`~hf_sparse.PruningConfig` (or its dict form).
        masks: Keep-masks to start from (``{module name: bool tensor}``, e.g. ``Pruner.masks`` after a one-shot
            prune with calibration data): installed when training starts, and with ``schedule="oneshot"`` kept
            as they are instead of recomputed.
        shrink: Remove masked heads / neurons physically at the end of training (structured granularities).

    Example:
        >>> cb = PruningCallback(PruningConfig(sparsity=0.8, start_step=0, end_step=1000, update_every=50))
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
        >>> trainer.train()
    """

    def __init__(
        self,
        config: PruningConfig | Mapping[str, Any],
        *,
        masks: Mapping[str, torch.Tensor] | None = None,
        shrink: bool = True,
    ):
        self.config = config if isinstance(config, PruningConfig) else PruningConfig.from_dict(config)
        #: The config as given (``config`` is this with ``end_fraction`` resolved once training starts).
        self.given_config = self.config
        if self.config.granularity == "layer":
            raise ConfigError(
                "PruningCallback cannot drop whole layers during training (the optimizer holds their parameters): "
                "use hf_sparse.prune_(model, PruningConfig(granularity='layer', ...)) before creating the Trainer."
            )
        self.initial_masks = dict(masks) if masks is not None else None
        self.shrink = shrink
        #: What :func:`~hf_sparse.pruning.units.shrink_masked_units_` removed at the end of training.
        self.shrunk: dict | None = None
        self.pruner: Pruner | None = None
        self.restored_from: str | None = None
        self._hooks: list = []
        #: (scheduler, its original lr lambdas) while learning-rate rewinding is installed.
        self._lr_original: tuple[Any, list] | None = None

    # -- ExportableState: recorded in trainer_state.json so a checkpoint says how it was pruned -------------------
    def state(self) -> dict:
        return {
            "args": {"config": self.config.to_dict()},
            "attributes": {"restored_from": self.restored_from},
        }

    # -- Trainer events -------------------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs["model"]
        self.config = resolve_end_step(self.given_config, state.max_steps)
        self._warn_if_run_too_short(state.max_steps)
        self.pruner = Pruner(model, self.config)
        self.pruner.gradual = self.config.schedule != "oneshot"
        criterion = self.pruner.criterion
        if criterion.needs_calibration:
            self.pruner.calibration = _calibration_batches(
                kwargs.get("train_dataloader"), self.config.calibration_samples, model
            )
        elif (
            criterion.gradients_from_calibration
            and state.global_step == 0
            and sparsity_at(self.config, 0) > 0
            and not (self.initial_masks is not None and self.config.schedule == "oneshot")
        ):
            # Pruning before any training step: the gradients come from labelled training examples.
            self.pruner.calibration = _calibration_batches(
                kwargs.get("train_dataloader"), self.config.calibration_samples, model, keep_labels=True
            )
        if state.global_step > 0:
            self._restore(args, state)
        elif self.initial_masks is not None:
            self.pruner.load_state_dict(self.initial_masks, target_sparsity=self.config.sparsity)
        self._update(state.global_step)
        self.pruner.calibration = None if criterion.gradients_from_calibration else self.pruner.calibration
        self._stop_scores_when_done(state.global_step)
        self.pruner.track_dense_grads = is_rigl_update(self.config, state.global_step + 1)
        self._register_grad_hooks()
        self._install_lr_rewind(args, state, kwargs.get("lr_scheduler"))

    def on_optimizer_step(self, args, state, control, **kwargs):
        # Adam moments and weight decay move pruned weights off zero; put them back before anything reads them.
        if self.pruner is not None:
            self.pruner.apply_masks()

    def on_step_end(self, args, state, control, **kwargs):
        self._update(state.global_step)
        self._stop_scores_when_done(state.global_step)
        # Record the dense gradient only during the steps that end in a RigL update (it costs a weight's memory).
        self.pruner.clear_dense_grads()
        self.pruner.track_dense_grads = is_rigl_update(self.config, state.global_step + 1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pruner is None or logs is None or "loss" not in logs:
            return
        extra = {
            "sparsity": round(self.pruner.sparsity(), 6),
            "target_sparsity": round(self.pruner.target_sparsity, 6),
        }
        logs.update(extra)
        # Trainer appended this log entry to log_history before calling callbacks; keep the history complete.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)

    def on_save(self, args, state, control, **kwargs):
        if self.pruner is None or not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            logger.warning("PruningCallback: checkpoint folder %s not found; masks not saved with it.", folder)
            return
        save_file(
            self.pruner.state_dict(),
            os.path.join(folder, MASKS_FILE),
            metadata={
                "format": "pt",
                "hf_sparse_config": self.config.to_json(indent=None),
                "target_sparsity": repr(self.pruner.target_sparsity),
                "global_step": str(state.global_step),
            },
        )
        if self.pruner.score_state:
            save_file(
                {n: t.detach().to("cpu").contiguous() for n, t in self.pruner.score_state.items()},
                os.path.join(folder, SCORES_FILE),
                metadata={
                    "format": "pt",
                    "criterion": self.config.criterion,
                    "grad_steps": json.dumps(self.pruner.grad_steps),
                },
            )

    def on_train_end(self, args, state, control, **kwargs):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self._lr_original is not None:
            scheduler, original = self._lr_original
            scheduler.lr_lambdas = original
            self._lr_original = None
        if self.pruner is not None:
            self.pruner.track_dense_grads = False
            self.pruner.clear_dense_grads()
            self.pruner.apply_masks()
            if self.pruner.units and self.shrink and self.pruner.masks:
                from ..pruning.units import shrink_masked_units_

                self.shrunk = shrink_masked_units_(self.pruner.model)
                logger.info("PruningCallback: removed masked units physically: %s", self.shrunk)

    # -- helpers --------------------------------------------------------------------------------------------------
    def _warn_if_run_too_short(self, max_steps: int) -> None:
        """Warn when the run ends before the schedule reaches its sparsity (``end_step`` beyond ``max_steps``)."""
        cfg = self.config
        if max_steps <= 0 or (self.initial_masks is not None and cfg.schedule == "oneshot"):
            return
        reached = sparsity_at(cfg, max_steps)
        if reached >= cfg.sparsity:
            return
        key = "start_step" if cfg.schedule in ("oneshot", "rigl") else "end_step"
        logger.warning(
            "PruningCallback: PruningConfig.%s=%d is beyond this run's %d optimizer steps: the run ends at sparsity "
            "%.4g instead of the target %.4g. Set PruningConfig.end_fraction (e.g. 0.5: the ramp ends halfway "
            "through the run, whatever its length) or %s <= %d.",
            key,
            getattr(cfg, key),
            max_steps,
            reached,
            cfg.sparsity,
            key,
            max_steps,
        )

    def _stop_scores_when_done(self, step: int) -> None:
        """Once no mask update remains, stop feeding a criterion with a large accumulator (obert) and free it."""
        if self.pruner.criterion.transient_state and step >= ramp_end_step(self.config):
            self.pruner.collect_scores = False
            self.pruner.clear_scores()

    def _install_lr_rewind(self, args: TrainingArguments, state: TrainerState, scheduler: Any) -> None:
        """Replace the lr lambdas of the Trainer's scheduler by rewound ones (``config.lr_rewind``)."""
        if self.config.lr_rewind == "none":
            return
        inner = scheduler
        while inner is not None and not isinstance(inner, torch.optim.lr_scheduler.LambdaLR):
            inner = getattr(inner, "scheduler", None)  # accelerate's AcceleratedScheduler wraps it
        if inner is None:
            raise ConfigError(
                f"PruningConfig.lr_rewind={self.config.lr_rewind!r} rewrites the Trainer's learning-rate schedule, "
                f"which must be a torch LambdaLR (TrainingArguments.lr_scheduler_type 'linear' or 'cosine'); got "
                f"{type(scheduler).__name__}."
            )
        shape = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
        if shape not in LR_REWIND_SHAPES:
            raise ConfigError(
                f"PruningConfig.lr_rewind={self.config.lr_rewind!r} restarts a decaying learning-rate schedule: "
                f"TrainingArguments.lr_scheduler_type must be one of {sorted(LR_REWIND_SHAPES)}, got {shape!r}."
            )
        rewinds = lr_rewind_steps(self.config, state.max_steps)
        if not rewinds:
            return
        original = list(inner.lr_lambdas)
        inner.lr_lambdas = [_rewound_lambda(fn, rewinds, state.max_steps, shape) for fn in original]
        self._lr_original = (inner, original)
        # The next step's learning rate follows the rewound schedule at once (it matters on resume after a rewind).
        lrs = [base * fn(inner.last_epoch) for fn, base in zip(inner.lr_lambdas, inner.base_lrs)]
        for group, lr in zip(inner.optimizer.param_groups, lrs):
            group["lr"] = lr
        inner._last_lr = lrs
        logger.info("PruningCallback: learning rate rewound to its peak after steps %s", rewinds[:10])

    def _update(self, step: int) -> None:
        target = sparsity_at(self.config, step)
        if self.initial_masks is not None and self.config.schedule == "oneshot":
            return  # the given masks are the one-shot result
        if target != self.pruner.target_sparsity and target > 0:
            self._sync_scores(self.pruner.score_state)
            self.pruner.prune_to(target)
            if self.pruner.criterion.needs_calibration and is_distributed():
                # Each rank calibrated on its own shard of the data: rank 0's masks and reconstructed weights win.
                broadcast_([*self.pruner.masks.values(), *(m.weight.data for m in self.pruner.modules.values())])
        elif is_rigl_update(self.config, step) and self.pruner.masks:
            fraction = rigl_regrow_fraction(
                step,
                fraction=self.config.regrow_fraction,
                start_step=self.config.start_step,
                end_step=self.config.end_step,
            )
            self._sync_scores(self.pruner.dense_grads)
            self.pruner.regrow(fraction)

    def _sync_scores(self, accumulators: dict[str, torch.Tensor]) -> None:
        """Average gradient accumulators over the ranks of a multi-process run before masks are chosen from them.

        The gradient hooks see each rank's local gradient (DDP averages it only afterwards); movement and taylor
        scores and RigL's summed gradients are linear in it, so their mean over ranks is exactly what the averaged
        gradient would have given, and every rank then chooses the same masks from the same numbers.
        """
        if accumulators and is_distributed():
            all_reduce_([accumulators[name] for name in sorted(accumulators)], "mean")

    def _register_grad_hooks(self) -> None:
        # Zero pruned weights' gradients as they are produced: before gradient clipping measures them and before
        # the optimizer folds them into its moments.
        for h in self._hooks:
            h.remove()
        self._hooks = []
        pruner = self.pruner
        for name, module in pruner.modules.items():

            def hook(grad: torch.Tensor, name: str = name, module: torch.nn.Module = module) -> torch.Tensor:
                # Scores and RigL see the dense gradient: a pruned weight's gradient says whether to regrow it. Both
                # and the masks are (out, in); a Conv1D's gradient is stored (in, out), so it is seen transposed.
                pruner.observe_gradient(name, linear_layout(module, grad))
                mask = pruner.masks.get(name)
                return grad if mask is None else grad * stored_layout(module, mask).to(grad.dtype)

            self._hooks.append(module.weight.register_hook(hook))

    def _restore(self, args: TrainingArguments, state: TrainerState) -> None:
        """Reinstall the masks of the checkpoint being resumed (its weights are already loaded)."""
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        path = os.path.join(folder, MASKS_FILE)
        target = sparsity_at(self.config, state.global_step)
        self._restore_scores(folder, state.global_step)
        if os.path.isfile(path):
            try:
                masks = load_file(path)
            except Exception as exc:  # safetensors raises several types for corrupt files
                raise PruningStateError(f"Cannot read pruning masks from {path}: {exc}") from exc
            self.pruner.load_state_dict(masks, target_sparsity=None)
            # The masks must describe the weights that were loaded: every pruned weight is zero.
            derived = self.pruner.masks_from_zeros()
            consistent = all(bool((derived[n] | ~m).all()) for n, m in self.pruner.masks.items())
            if consistent:
                self.pruner.target_sparsity = target
                self.restored_from = path
                return
            logger.warning(
                "PruningCallback: masks in %s do not match the resumed weights (was the checkpoint resumed from "
                "another folder?); reading the masks off the weights instead.",
                path,
            )
        else:
            logger.warning(
                "PruningCallback: no %s in %s; reading the masks off the resumed weights (zeros = pruned).",
                MASKS_FILE,
                folder,
            )
        if target > 0:
            self.pruner.masks = self.pruner.masks_from_zeros()
            self.pruner.target_sparsity = target
        self.restored_from = "weights"

    def _restore_scores(self, folder: str, step: int = 0) -> None:
        path = os.path.join(folder, SCORES_FILE)
        if not self.pruner.criterion.needs_gradients:
            return
        if self.pruner.criterion.transient_state and step >= ramp_end_step(self.config):
            return  # freed after the last mask update: nothing was saved, nothing is needed
        if not os.path.isfile(path):
            logger.warning(
                "PruningCallback: no %s in %s; the %s scores restart from zero.",
                SCORES_FILE,
                folder,
                self.config.criterion,
            )
            return
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
            scores = load_file(path)
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise PruningStateError(f"Cannot read pruning scores from {path}: {exc}") from exc
        unknown = sorted(set(scores) - set(self.pruner.modules))
        if unknown:
            raise PruningStateError(
                f"Saved pruning scores in {path} name modules this config does not prune: {unknown[:5]}."
            )
        self.pruner.score_state = {n: t.to(self.pruner.modules[n].weight.device) for n, t in scores.items()}
        steps = json.loads(meta.get("grad_steps", "{}"))
        self.pruner.grad_steps = {n: int(steps.get(n, 1)) for n in scores}


def _calibration_batches(dataloader, samples: int, model, *, keep_labels: bool = False) -> list[dict]:
    """The first ``samples`` examples of ``dataloader`` as model-input dicts on the model's device, without labels
    (with them for ``keep_labels``: gradient criteria need the loss).

    An encoder-decoder model (T5) whose batches carry no ``decoder_input_ids`` gets them from the labels, as its
    forward pass in training does: without labels it has no decoder input, and its decoder layers need calibrating
    too.
    """
    if dataloader is None:
        raise ConfigError(
            "PruningCallback: a calibration criterion (wanda, sparsegpt, or obert pruning at step 0) takes its "
            "calibration data from the Trainer's training dataloader, and none was given."
        )
    device = next(model.parameters()).device
    derive = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    seq2seq = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False)) and derive is not None
    dropped = () if keep_labels else ("labels", "label", "label_ids")
    batches, seen = [], 0
    for batch in dataloader:
        labels = batch.get("labels")
        if seq2seq and not keep_labels and "decoder_input_ids" not in batch and isinstance(labels, torch.Tensor):
            batch = {**batch, "decoder_input_ids": derive(labels=labels)}
        batch = {k: v.to(device) for k, v in batch.items() if k not in dropped}
        batch = {k: v for k, v in batch.items() if k != "length"}
        n = int(next(iter(batch.values())).shape[0])
        if seen + n > samples:
            batch = {k: v[: samples - seen] for k, v in batch.items()}
            n = samples - seen
        batches.append(batch)
        seen += n
        if seen >= samples:
            break
    return batches


def _rewound_lambda(original, rewinds: list[int], max_steps: int, shape: str):
    """An lr lambda that follows ``original`` until the first rewind and :func:`rewound_lr_factor` from then on.

    A plain function (not an object): ``LambdaLR.state_dict`` then saves nothing for it, so Trainer checkpoints stay
    loadable, and a resumed run installs it again from the config.
    """

    def factor(step: int) -> float:
        rewound = rewound_lr_factor(step, rewinds, max_steps, shape)
        return original(step) if rewound is None else rewound

    return factor
