"""Multi-process (DDP) training: gradient communication hooks, measured traffic, and consistency helpers.

- :func:`register_comm_hook` / :class:`CommHookCallback`: choose how the stock Trainer's DDP model exchanges
  gradients (``"allreduce"``, ``"topk"`` sparsified with error feedback, ``"powersgd"``) and log the bytes each
  process sends per optimizer step.
- :func:`~hf_sparse.distributed.topk.topk_hook` with :class:`TopKState`: the top-k hook itself, for any DDP model.
- :class:`CommCounter`: bytes handed to ``torch.distributed`` collectives, counted the same way for every hook.
- :mod:`~hf_sparse.distributed.sync`: what the compression callbacks use to keep masks, scores and quantisation
  ranges identical on every rank.

The names load on first use: the compression callbacks only need :mod:`~hf_sparse.distributed.sync`, and
:mod:`~hf_sparse.distributed.callback` imports ``transformers``' Trainer stack (peft, bitsandbytes: seconds).
"""

from __future__ import annotations

from .._import_hooks import lazy_attributes

_LAZY = {
    "CommHookCallback": ".callback",
    "build_hook": ".callback",
    "register_comm_hook": ".callback",
    "register_hook": ".callback",
    "CommHookConfig": ".config",
    "CommCounter": ".counting",
    "is_distributed": ".sync",
    "process_rank": ".sync",
    "world_size": ".sync",
    "TopKState": ".topk",
    "allreduce_mean_hook": ".topk",
    "topk_hook": ".topk",
}

__all__ = [
    "CommHookCallback",
    "CommHookConfig",
    "CommCounter",
    "TopKState",
    "allreduce_mean_hook",
    "build_hook",
    "is_distributed",
    "process_rank",
    "register_comm_hook",
    "register_hook",
    "topk_hook",
    "world_size",
]


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
