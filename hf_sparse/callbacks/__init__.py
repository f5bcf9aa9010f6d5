"""TrainerCallbacks: the only part of hf_sparse that knows the Trainer's order of events."""

from .pruning import MASKS_FILE, PruningCallback, attach_callbacks

__all__ = ["PruningCallback", "attach_callbacks", "MASKS_FILE"]
