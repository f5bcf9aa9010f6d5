"""Sequential recommendation on transformers: a SASRec-style next-item model (``SASRecForNextItem``), leave-one-out
splits of interaction logs, full-ranking HR@k / NDCG@k, and training with the stock ``Trainer``.

Importing this package registers ``SASRecConfig`` and ``SASRecForNextItem`` with ``AutoConfig`` / ``AutoModel``, so
``AutoModel.from_pretrained(folder)`` loads a saved recommender after ``import hf_sparse``::

    splits = movielens_splits()
    model = sasrec_for_movielens(seed=42)
    train_recommender(model, splits, "out")
    evaluate_ranking(model, splits, split="test")  # {"hr@10": ..., "ndcg@10": ..., "users": 943}
"""

from transformers import AutoConfig, AutoModel

from .config import SASRecConfig
from .data import (
    LeaveOneOutSplits,
    NextItemCollator,
    NextItemDataset,
    item_frequencies,
    leave_one_out_split,
    movielens_splits,
)
from .metrics import evaluate_ranking, hit_rate_and_ndcg, target_ranks
from .modeling import SASRecForNextItem, SASRecOutput, SASRecPreTrainedModel
from .train import MOVIELENS_DEFAULTS, movielens_config, sasrec_for_movielens, train_recommender

# transformers' public registries (exist_ok: re-importing, e.g. after importlib.reload, is not an error).
AutoConfig.register(SASRecConfig.model_type, SASRecConfig, exist_ok=True)
AutoModel.register(SASRecConfig, SASRecForNextItem, exist_ok=True)

__all__ = [
    "SASRecConfig",
    "SASRecForNextItem",
    "SASRecOutput",
    "SASRecPreTrainedModel",
    "LeaveOneOutSplits",
    "NextItemDataset",
    "NextItemCollator",
    "leave_one_out_split",
    "movielens_splits",
    "item_frequencies",
    "evaluate_ranking",
    "target_ranks",
    "hit_rate_and_ndcg",
    "MOVIELENS_DEFAULTS",
    "movielens_config",
    "sasrec_for_movielens",
    "train_recommender",
]
