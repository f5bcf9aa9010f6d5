"""Registering a gradient communication hook on the stock ``Trainer``'s DDP model, and measuring what it sends.

The Trainer wraps its model in ``DistributedDataParallel`` inside ``train()`` (``Trainer._prepare_for_training``
calls ``accelerator.prepare``), after ``__init__`` and just before the ``on_train_begin`` event, and keeps the
wrapper in ``trainer.model_wrapped``; callbacks receive only the unwrapped model. DDP takes a hook until the first
backward pass. So :class:`CommHookCallback` holds a (weak) reference to its Trainer and registers the hook on
``trainer.model_wrapped`` at ``on_train_begin``: the first moment the wrapper exists, and before any gradient.
:func:`register_comm_hook` builds the callback and adds it to a Trainer in one call.

Under ``accelerate launch`` (or ``torchrun``) this is all it takes; in a single process the callback warns and does
nothing, so the same script runs both ways.
"""

from __future__ import annotations

import logging
import statistics
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..errors import ConfigError
from ..trainer_callbacks import attach_callbacks
from .config import HOOK_OPTIONS, CommHookConfig
from .counting import CommCounter
from .sync import is_distributed
from .topk import TopKState, allreduce_mean_hook, topk_hook

__all__ = ["CommHookCallback", "register_comm_hook", "register_hook", "build_hook"]

logger = logging.getLogger(__name__)


def build_hook(config: CommHookConfig, process_group: dist.ProcessGroup | None = None) -> tuple[Any, Callable]:
    """The (state, hook) pair of ``config`` for ``DistributedDataParallel.register_comm_hook``."""
    warmup = config.effective_warmup_steps
    if config.hook == "allreduce":
        return process_group, allreduce_mean_hook
    if config.hook == "topk":
        state = TopKState(
            config.ratio, warmup_steps=warmup, error_feedback=config.error_feedback, process_group=process_group
        )
        return state, topk_hook
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd

    state = powersgd.PowerSGDState(
        process_group=process_group,
        matrix_approximation_rank=config.rank,
        start_powerSGD_iter=warmup,
        min_compression_rate=config.min_compression_rate,
        use_error_feedback=config.error_feedback,
        warm_start=True,
        random_seed=config.seed,
    )
    return state, powersgd.powerSGD_hook


def register_hook(ddp_model: DistributedDataParallel, config: CommHookConfig | Mapping[str, Any]) -> Any:
    """Register ``config``'s hook on a ``DistributedDataParallel`` model (before its first backward pass); returns
    the hook's state (e.g. :class:`~hf_sparse.distributed.topk.TopKState`, with its residuals).

    Raises:
        ConfigError: ``ddp_model`` is not a DDP model, or it already has a communication hook.
    """
    config = config if isinstance(config, CommHookConfig) else CommHookConfig.from_dict(config)
    if not isinstance(ddp_model, DistributedDataParallel):
        raise ConfigError(
            f"Communication hooks apply to torch DistributedDataParallel models; got {type(ddp_model).__name__}. "
            "(FSDP and DeepSpeed exchange gradients their own way; a single-process model exchanges nothing.)"
        )
    if config.hook == "powersgd":
        _check_powersgd_buckets(ddp_model)
    state, hook = build_hook(config, ddp_model.process_group)
    try:
        ddp_model.register_comm_hook(state, hook)
    except RuntimeError as exc:
        raise ConfigError(
            "This DDP model already has a communication hook (DDP takes one, and only before the first backward "
            "pass); remove the other one, e.g. accelerate's DistributedDataParallelKwargs(comm_hook=...). "
            f"torch said: {exc}"
        ) from None
    logger.info("DDP communication hook %r registered.", config.hook)
    return state


def _check_powersgd_buckets(ddp_model: DistributedDataParallel) -> None:
    """torch's PowerSGD hook waits for its P and Q all-reduces *inside* the callbacks of earlier collectives. On
    gloo those callbacks run on the process group's few worker threads: with several gradient buckets in flight,
    every worker ends up waiting for a collective that no free worker can run, and training hangs (seen here with
    two buckets). One bucket avoids it."""
    if dist.get_backend(ddp_model.process_group) != "gloo":
        return
    grad_bytes = sum(p.numel() * p.element_size() for p in ddp_model.parameters() if p.requires_grad)
    one_bucket = (
        not getattr(ddp_model, "bucket_bytes_cap_default", True)
        and not getattr(ddp_model, "bucket_bytes_cap_list", None)
        and grad_bytes <= getattr(ddp_model, "bucket_bytes_cap", 0)
    )
    if not one_bucket:
        need_mb = -(-grad_bytes // 2**20)
        raise ConfigError(
            "hook='powersgd' on the gloo backend (CPU) needs all gradients in one DDP bucket: torch's PowerSGD hook "
            "waits on collectives inside the callbacks of others, which deadlocks gloo's worker threads when "
            f"several buckets are in flight. Set TrainingArguments(ddp_bucket_cap_mb={need_mb}) (this model's "
            f"gradients: {grad_bytes / 2**20:.1f} MiB), or DistributedDataParallel(bucket_cap_mb={need_mb})."
        )


class CommHookCallback(TrainerCallback):
    """Registers a gradient communication hook on the Trainer's DDP model and measures its traffic.

    - ``on_train_begin``: :func:`register_hook` on ``trainer.model_wrapped`` (the DDP wrapper the Trainer built in
      ``train()``); a second ``train()`` on the same wrapper keeps the hook it has. Outside a multi-process run it
      logs a warning and does nothing.
    - With ``count_bytes`` (default), from ``on_step_begin`` to ``on_pre_optimizer_step`` (the forward and backward
      passes of one optimizer step, where the hooks communicate) a :class:`~hf_sparse.distributed.CommCounter`
      counts the bytes this process sends; :attr:`bytes_per_step` keeps one number per step and ``on_log`` adds
      their mean since the last log as ``comm_bytes_per_step``.

    Args:
        trainer: The Trainer (held by weak reference).
        config: A :class:`~hf_sparse.distributed.CommHookConfig`, its dict form, or a hook name; ``options``
            build one instead (``ratio=0.01``...).

    Example:
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds)
        >>> cb = register_comm_hook(trainer, "topk", ratio=0.01)
        >>> trainer.train()   # accelerate launch --multi_gpu --num_processes 2 train.py (use_cpu=True on CPUs)
        >>> cb.bytes_per_step[-1]
    """

    def __init__(self, trainer, config: CommHookConfig | Mapping[str, Any] | str | None = None, **options: Any):
        self.config = _config(config, options)
        self._trainer = weakref.ref(trainer)
        #: The hook's state once registered (TopKState, PowerSGDState, or the process group for all-reduce).
        self.hook_state: Any = None
        #: Bytes this process sent in each optimizer step (counted steps only).
        self.bytes_per_step: list[int] = []
        self._since_log: list[int] = []
        self._counter = CommCounter()
        self._wrapper: weakref.ref | None = None
        self._warned = False

    @property
    def registered(self) -> bool:
        return self._wrapper is not None and self._wrapper() is not None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        trainer = self._trainer()
        if trainer is None:
            raise ConfigError("CommHookCallback: its Trainer no longer exists; create the callback for this Trainer.")
        if not is_distributed():
            if not self._warned:
                logger.warning(
                    "CommHookCallback(%r): not a multi-process run (no process group of more than one process); "
                    "gradients are not exchanged and no hook is registered.",
                    self.config.hook,
                )
                self._warned = True
            return
        wrapped = trainer.model_wrapped
        if self._wrapper is not None and self._wrapper() is wrapped:
            return  # a second train() on the same wrapper: DDP keeps the hook it has
        self.hook_state = register_hook(wrapped, self.config)
        self._wrapper = weakref.ref(wrapped)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.config.count_bytes and self.registered:
            self._counter.reset()
            self._counter.start()

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw):
        # DDP has waited for every bucket's future before backward() returned: the step's traffic is complete.
        if self._counter.running:
            n = self._counter.stop()
            self.bytes_per_step.append(n)
            self._since_log.append(n)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if logs is None or "loss" not in logs or not self._since_log:
            return
        extra = {"comm_bytes_per_step": float(statistics.fmean(self._since_log))}
        self._since_log = []
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._counter.stop()


def _config(config, options: Mapping[str, Any]) -> CommHookConfig:
    if isinstance(config, CommHookConfig):
        if options:
            raise ConfigError("CommHookCallback: give a CommHookConfig or keyword options, not both.")
        return config
    if isinstance(config, Mapping):
        if options:
            raise ConfigError("CommHookCallback: give a config mapping or keyword options, not both.")
        return CommHookConfig.from_dict(config)
    hook = "allreduce" if config is None else config
    if not isinstance(hook, str) or hook not in HOOK_OPTIONS:
        raise ConfigError(f"Unknown communication hook {hook!r}; choose one of {list(HOOK_OPTIONS)}.")
    allowed = set(HOOK_OPTIONS[hook]) | {"count_bytes"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"Options {unknown} do not apply to hook {hook!r}; its options are: {sorted(allowed)}.")
    return CommHookConfig.from_dict({"hook": hook, **options})


def register_comm_hook(trainer, hook: str | CommHookConfig = "allreduce", **options: Any) -> CommHookCallback:
    """Add a :class:`CommHookCallback` to ``trainer`` (ahead of the ``report_to`` loggers, so they record
    ``comm_bytes_per_step``); the hook is registered when ``trainer.train()`` has wrapped the model.

    Args:
        trainer: A ``transformers.Trainer`` not yet trained.
        hook: ``"allreduce"``, ``"topk"``, ``"powersgd"`` or a :class:`~hf_sparse.distributed.CommHookConfig`.
        options: The hook's options (see :class:`~hf_sparse.distributed.CommHookConfig`), e.g. ``ratio=0.01``.

    Returns:
        The callback (its :attr:`~CommHookCallback.bytes_per_step` and ``hook_state`` are filled while training).

    Raises:
        ConfigError: an unknown hook, an option the hook does not read, or a value out of range.
    """
    callback = CommHookCallback(trainer, hook, **options)
    attach_callbacks(trainer, callback)
    return callback
