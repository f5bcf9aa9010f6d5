"""Multi-process (DDP) training: gradient communication hooks, measured traffic, and consistency helpers.

- :func:`register_comm_hook` / :class:`CommHookCallback`: choose how the stock Trainer's DDP model exchanges
  gradients (``"allreduce"``, ``"topk"`` sparsified with error feedback, ``"powersgd"``) and log the bytes each
  process sends per optimizer step.
- :func:`~hf_sparse.distributed.topk.topk_hook` with :class:`TopKState`: the top-k hook itself, for any DDP model.
- :class:`CommCounter`: bytes handed to ``torch.distributed`` collectives, counted the same way for every hook.
- :mod:`~hf_sparse.distributed.sync`: what the compression callbacks use to keep masks, scores and quantisation
  ranges identical on every rank.
"""

from .callback import CommHookCallback, build_hook, register_comm_hook, register_hook
from .config import CommHookConfig
from .counting import CommCounter
from .sync import is_distributed, process_rank, world_size
from .topk import TopKState, allreduce_mean_hook, topk_hook

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
