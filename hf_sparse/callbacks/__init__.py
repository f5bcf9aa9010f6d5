"""TrainerCallbacks: the only part of hf_sparse that knows the Trainer's order of events."""

from .distillation import DistillationCallback
from .lowrank import LowRankCallback
from .pruning import MASKS_FILE, PruningCallback, attach_callbacks
from .quantization import QATCallback
from .regularization import RegularizationCallback

__all__ = [
    "DistillationCallback",
    "LowRankCallback",
    "PruningCallback",
    "QATCallback",
    "RegularizationCallback",
    "attach_callbacks",
    "MASKS_FILE",
]
