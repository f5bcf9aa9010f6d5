"""CommHookConfig: which gradient communication a data-parallel (DDP) run uses, and its options."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..config import BaseConfig, register_config
from ..errors import ConfigError, quote

__all__ = ["CommHookConfig", "HOOK_OPTIONS"]

#: The options each hook reads; giving another hook's option is an error (it would be silently ignored).
HOOK_OPTIONS = {
    "allreduce": (),
    "topk": ("ratio", "warmup_steps", "error_feedback"),
    "powersgd": ("rank", "warmup_steps", "error_feedback", "min_compression_rate", "seed"),
}


@register_config("ddp_comm_hook")
@dataclasses.dataclass(frozen=True)
class CommHookConfig(BaseConfig):
    """How DDP exchanges gradients between processes.

    Args:
        hook: ``"allreduce"`` (averaging all-reduce, as DDP does without a hook, in Python so it can be measured),
            ``"topk"`` (top-k sparsified gradients with error feedback,
            :func:`~hf_sparse.distributed.topk.topk_hook`) or ``"powersgd"`` (torch's PowerSGD hook, low-rank
            gradients; Vogels et al. 2019).
        ratio: ``topk``: fraction of each bucket's entries sent per step, in (0, 1].
        warmup_steps: ``topk``: optimizer steps of plain all-reduce before sparsifying (default 0). ``powersgd``:
            its ``start_powerSGD_iter`` (default 2; with error feedback torch needs at least 2, because DDP
            rebuilds its buckets after the first step).
        error_feedback: keep what was not sent and add it to the next step's gradient (``topk``, ``powersgd``).
        rank: ``powersgd``: rank of the gradient approximation (``matrix_approximation_rank``), >= 1.
        min_compression_rate: ``powersgd``: a matrix is compressed only when that divides its size by at least
            this much (torch's default, 2).
        seed: ``powersgd``: seed of its random initial matrices (the same on every rank).
        count_bytes: measure the bytes each process sends per optimizer step
            (:class:`~hf_sparse.distributed.CommCounter`) and add ``comm_bytes_per_step`` to the Trainer's logs.

    Raises:
        ConfigError: a value out of range, or an option given that the chosen hook does not read.
    """

    hook: Literal["allreduce", "topk", "powersgd"] = "allreduce"
    ratio: float = 0.01
    warmup_steps: int | None = None
    error_feedback: bool = True
    rank: int = 4
    min_compression_rate: float = 2.0
    seed: int = 0
    count_bytes: bool = True

    def validate(self) -> None:
        name = type(self).__name__
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"{name}.ratio must be a fraction in (0, 1], got {self.ratio}.")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"{name}.warmup_steps must be >= 0, got {self.warmup_steps}.")
        if self.rank < 1:
            raise ConfigError(f"{name}.rank must be >= 1, got {self.rank}.")
        if self.min_compression_rate < 1.0:
            raise ConfigError(f"{name}.min_compression_rate must be >= 1, got {self.min_compression_rate}.")
        if self.hook == "powersgd" and self.error_feedback and self.warmup_steps is not None and self.warmup_steps < 2:
            raise ConfigError(
                f"{name}.warmup_steps must be >= 2 for hook='powersgd' with error_feedback (DDP rebuilds its gradient "
                f"buckets after the first step, and PowerSGD's error feedback is kept per bucket), got "
                f"{self.warmup_steps}."
            )
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for option in ("ratio", "warmup_steps", "error_feedback", "rank", "min_compression_rate", "seed"):
            if option not in HOOK_OPTIONS[self.hook] and getattr(self, option) != defaults[option]:
                readers = [h for h, opts in HOOK_OPTIONS.items() if option in opts]
                raise ConfigError(
                    f"{name}.{option} applies to hook={' or '.join(map(repr, readers))}, not hook={quote(self.hook)}; "
                    f"the options of {quote(self.hook)} are: {list(HOOK_OPTIONS[self.hook]) or 'none'}."
                )

    @property
    def effective_warmup_steps(self) -> int:
        """``warmup_steps``, or the hook's default when it is not set (``topk`` 0, ``powersgd`` 2)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return 2 if self.hook == "powersgd" else 0
