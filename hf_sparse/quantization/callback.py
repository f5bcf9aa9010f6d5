"""QATCallback: quantisation-aware training inside the stock ``Trainer``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..distributed.sync import is_distributed, sync_observers_
from ..errors import ConfigError
from ..quantization.apply import _qat_modules, convert_, prepare_qat_, quantizers, set_weight_bits
from ..quantization.config import QuantizationConfig

__all__ = ["QATCallback"]

logger = logging.getLogger(__name__)


class QATCallback(TrainerCallback):
    """Quantisation-aware training with the stock ``Trainer``: prepare, train with fake quantisation, convert.

    - ``on_init_end`` (end of ``Trainer.__init__``, before the optimizer exists): :func:`prepare_qat_` on the
      Trainer's model, unless it is already prepared. With ``average_bits``, the per-layer bit widths are chosen
      first by :func:`~hf_sparse.quantization.choose_bits` on ``sensitivity_batches`` batches of the training
      data (the loss increase of each layer quantised alone), so sensitive layers keep 8 bits.
    - ``on_step_begin``: the weight bit widths of the ``bit_schedule`` for this step; from
      ``freeze_observers_step`` on, static activation ranges stop moving.
    - ``on_step_end``, in a multi-process (DDP) run: the static activation ranges, which each process observed on its
      own batches, are merged over the processes (min/max, or the mean of moving averages), so every replica uses
      the same quantisation parameters.
    - ``on_train_end``: with ``convert_at_end=True``, :func:`convert_` turns the model into integer layers (what
      ``save_pretrained`` then writes); otherwise call ``convert_(model)`` yourself after training.

    To let the float model teach its quantised self, put a ``DistillationCallback(teacher=None)`` in the same list:
    its snapshot of the model is taken with the fake quantisers off.

    Args:
        config: a :class:`~hf_sparse.quantization.QuantizationConfig` (or its dict form).
        convert_at_end: convert when training ends.
        loss_fn: for ``average_bits``: ``loss_fn(model, batch) -> float`` (default: the model's own loss on the
            batch).
    """

    def __init__(
        self,
        config: QuantizationConfig | Mapping[str, Any],
        *,
        convert_at_end: bool = False,
        loss_fn: Callable[[nn.Module, Mapping[str, Any]], float] | None = None,
    ):
        self.config = config if isinstance(config, QuantizationConfig) else QuantizationConfig.from_dict(config)
        self.convert_at_end = convert_at_end
        self.loss_fn = loss_fn
        self.module_bits: dict[str, int] | None = None
        self.converted: dict[str, str] | None = None
        self._model: nn.Module | None = None

    # -- preparation ----------------------------------------------------------------------------------------------
    def _prepare(self, model: nn.Module, batches: Iterable[Mapping[str, Any]] | None) -> None:
        if _qat_modules(model):
            self._model = model
            return
        config = self.config
        if config.average_bits is not None and not config.module_bits:
            if batches is None:
                raise ConfigError(
                    "QATCallback: average_bits needs training batches for the sensitivity scan; build the Trainer "
                    "with train_dataset=, or give module_bits."
                )
            from ..quantization.sensitivity import choose_bits

            self.module_bits = choose_bits(model, config, batches, loss_fn=self.loss_fn)
            config = config.replace(module_bits=self.module_bits)
            self.config = config
        prepare_qat_(model, config)
        self._model = model

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs.get("model")
        if model is None:
            raise ConfigError("QATCallback needs the Trainer's model at on_init_end; build the Trainer with model=.")
        batches = None
        if self.config.average_bits is not None and not self.config.module_bits:
            loader = kwargs.get("train_dataloader")
            batches = _sample_batches(loader, self.config.sensitivity_batches) if loader is not None else None
        if batches is None and self.config.average_bits is not None and not self.config.module_bits:
            return  # the Trainer gives its data loader at on_train_begin; prepare there
        self._prepare(model, batches)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs.get("model")
        if model is None:
            return
        if not _qat_modules(model):
            if is_distributed():
                # Here the Trainer has already wrapped the model in DDP: layers swapped now would bring parameters
                # (learned scales) DDP never averages, and each rank would scan only its own shard of the data.
                raise ConfigError(
                    "QATCallback: in a multi-process run the model must be prepared before the Trainer wraps it in "
                    "DDP, i.e. at on_init_end: pass the callback to Trainer(callbacks=[...]), and with average_bits "
                    "run hf_sparse.choose_bits(model, config, batches) once beforehand and give "
                    "config.replace(module_bits=...) (the sensitivity scan needs the data, which on_init_end lacks)."
                )
            loader = kwargs.get("train_dataloader")
            batches = _sample_batches(loader, self.config.sensitivity_batches) if loader is not None else None
            self._prepare(model, batches)
            optimizer = kwargs.get("optimizer")
            if optimizer is not None:
                _add_missing_params(optimizer, model)
        set_weight_bits(model, state.global_step)

    # -- training -------------------------------------------------------------------------------------------------
    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs.get("model") or self._model
        if model is None:
            return
        set_weight_bits(model, state.global_step)
        freeze = self.config.freeze_observers_step
        if freeze >= 0 and state.global_step >= freeze:
            for q in quantizers(model, "activation").values():
                q.observing = False

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # Each process observed only its own batches: merge the activation ranges, so every replica quantises
        # with the same scales (and checkpoints, written after this event, hold the merged ones).
        model = kwargs.get("model") or self._model
        if model is not None and is_distributed():
            sync_observers_(model)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = kwargs.get("model") or self._model
        if self.convert_at_end and model is not None and _qat_modules(model):
            set_weight_bits(model, max(state.global_step, self.config.schedule_end_step))
            self.converted = convert_(model)
            logger.info("QATCallback: converted %d layers to integer storage.", len(self.converted))


def _sample_batches(loader, count: int) -> list[dict]:
    out = []
    for batch in loader:
        out.append(dict(batch))
        if len(out) >= count:
            break
    return out


def _add_missing_params(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Learned step sizes created after the optimizer: give them their own parameter group (no weight decay)."""
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [p for p in model.parameters() if p.requires_grad and id(p) not in known]
    if missing:
        optimizer.add_param_group({"params": missing, "weight_decay": 0.0})
        logger.info("QATCallback: added %d learned quantisation parameters to the optimizer.", len(missing))
