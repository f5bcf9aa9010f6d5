"""The Trainer callbacks of every method, in one place for ``from hf_sparse.callbacks import ...``. Each lives in its
method's folder (``hf_sparse/pruning/callback.py``, ``hf_sparse/quantization/callback.py`` ...), beside the
method's config and transform; ``attach_callbacks`` adds them ahead of the logging integrations."""

from ..distillation.callback import DistillationCallback
from ..lowrank.callback import LowRankCallback
from ..pruning.callback import MASKS_FILE, PruningCallback
from ..pruning.regularization_callback import RegularizationCallback
from ..quantization.callback import QATCallback
from ..trainer_callbacks import attach_callbacks

__all__ = [
    "DistillationCallback",
    "LowRankCallback",
    "PruningCallback",
    "QATCallback",
    "RegularizationCallback",
    "attach_callbacks",
    "MASKS_FILE",
]
