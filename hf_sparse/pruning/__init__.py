"""Weight pruning: config, criteria, schedules and the model transform."""

from .apply import Pruner, model_parameter_counts, prune_, select_modules, sparsity_report
from .config import DEFAULT_EXCLUDE, PruningConfig
from .criteria import CRITERIA, magnitude_scores, masks_from_scores
from .schedules import SCHEDULES, cubic_sparsity, oneshot_sparsity, sparsity_at

__all__ = [
    "PruningConfig",
    "DEFAULT_EXCLUDE",
    "Pruner",
    "prune_",
    "select_modules",
    "sparsity_report",
    "model_parameter_counts",
    "CRITERIA",
    "magnitude_scores",
    "masks_from_scores",
    "SCHEDULES",
    "cubic_sparsity",
    "oneshot_sparsity",
    "sparsity_at",
]
