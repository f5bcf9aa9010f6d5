"""Adding hf_sparse's callbacks to a stock ``transformers.Trainer`` where the keys they log reach every logger."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import TrainerCallback

__all__ = ["attach_callbacks"]


def attach_callbacks(trainer, *callbacks: TrainerCallback) -> None:
    """Add ``callbacks`` to ``trainer`` right after its flow callback, before the ``report_to`` loggers.

    ``Trainer(callbacks=[...])`` puts user callbacks after the logging integrations, so keys a callback adds to the
    logs (``sparsity``) reach only the console. Inserting them first lets TensorBoard, W&B etc. record them too.
    """
    # Only Trainer's public add/remove methods are used: take the callbacks after the flow callback off, add ours,
    # put the others back in their order.
    later = list(trainer.callback_handler.callbacks[1:])
    for cb in later:
        trainer.remove_callback(cb)
    for cb in (*callbacks, *later):
        trainer.add_callback(cb)
