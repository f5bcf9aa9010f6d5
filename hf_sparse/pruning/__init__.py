"""Weight pruning: config, criteria, granularities, schedules and the model transform."""

from .apply import Pruner, prune_, select_modules
from .calibration import InputStats, collect_input_stats
from .config import DEFAULT_EXCLUDE, PruningConfig
from .criteria import (
    CRITERIA,
    Criterion,
    magnitude_scores,
    masks_from_scores,
    movement_update,
    random_scores,
    taylor_update,
)
from .granularity import GRANULARITIES, block_masks, embedding_row_masks, granular_masks, nm_masks
from .guard import GuardResult, guarded_prune_
from .oneshot import calibrated_prune_, sparsegpt_prune_, wanda_prune_
from .regularization import (
    DropConnect,
    HardConcreteGate,
    RegularizationConfig,
    RegularizationHandle,
    attach_regularization,
    hard_concrete_deterministic,
    hard_concrete_log_alpha,
    hard_concrete_prob_nonzero,
    hard_concrete_sample,
)
from .schedules import (
    SCHEDULES,
    cubic_sparsity,
    is_rigl_update,
    iterative_sparsity,
    iterative_stage_steps,
    oneshot_sparsity,
    rigl_regrow_fraction,
    sparsity_at,
)
from .sensitivity import SensitivityScan, allocate_sparsity, sensitivity_scan
from .stats import model_parameter_counts, sparsity_report
from .structured import (
    StructuredPruningConfig,
    drop_layers_,
    head_importance,
    prune_heads_,
    prune_neurons_,
    structured_prune_,
    taylor_scores,
)
from .units import drop_scored_layers_, shrink_masked_units_, unit_masks, unit_modules

__all__ = [
    "PruningConfig",
    "DEFAULT_EXCLUDE",
    "Pruner",
    "prune_",
    "select_modules",
    "sparsity_report",
    "model_parameter_counts",
    "CRITERIA",
    "Criterion",
    "magnitude_scores",
    "movement_update",
    "taylor_update",
    "random_scores",
    "masks_from_scores",
    "GRANULARITIES",
    "granular_masks",
    "block_masks",
    "nm_masks",
    "embedding_row_masks",
    "SCHEDULES",
    "cubic_sparsity",
    "oneshot_sparsity",
    "iterative_sparsity",
    "iterative_stage_steps",
    "rigl_regrow_fraction",
    "is_rigl_update",
    "sparsity_at",
    "wanda_prune_",
    "sparsegpt_prune_",
    "collect_input_stats",
    "InputStats",
    "StructuredPruningConfig",
    "structured_prune_",
    "prune_heads_",
    "prune_neurons_",
    "drop_layers_",
    "head_importance",
    "taylor_scores",
    "calibrated_prune_",
    "shrink_masked_units_",
    "unit_masks",
    "unit_modules",
    "drop_scored_layers_",
    "guarded_prune_",
    "GuardResult",
    "sensitivity_scan",
    "allocate_sparsity",
    "SensitivityScan",
    "RegularizationConfig",
    "RegularizationHandle",
    "attach_regularization",
    "HardConcreteGate",
    "DropConnect",
    "hard_concrete_sample",
    "hard_concrete_deterministic",
    "hard_concrete_prob_nonzero",
    "hard_concrete_log_alpha",
]
