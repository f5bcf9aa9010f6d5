"""Sequential recommendation on transformers: a SASRec-style next-item model (``SASRecForNextItem``), leave-one-out
splits of interaction logs, full-ranking HR@k / NDCG@k, and training with the stock ``Trainer``.

``import hf_sparse`` registers ``SASRecConfig`` and ``SASRecForNextItem`` with ``AutoConfig`` / ``AutoModel`` as
soon as transformers' auto classes are imported (:mod:`hf_sparse.recsys.auto`), so
``AutoModel.from_pretrained(folder)`` loads a saved recommender::

    splits = movielens_splits()
    model = sasrec_for_movielens(seed=42)
    train_recommender(model, splits, "out")
    evaluate_ranking(model, splits, split="test")  # {"hr@10": ..., "ndcg@10": ..., "users": 943}

To train on your own interactions (one row per user, item and, optionally, timestamp), read them with
``load_interactions("events.csv", columns={"user": "customer", "item": "product"})``; a saved model's
``hf_sparse_item_ids.json`` (:func:`load_item_ids`) maps its item ids back to yours.
"""

from .._import_hooks import lazy_attributes
from .auto import register_auto_config

register_auto_config()

#: Names imported when first used (data loading and training import datasets and the Trainer).
_LAZY = {
    "SASRecConfig": ".config",
    **dict.fromkeys(("SASRecForNextItem", "SASRecOutput", "SASRecPreTrainedModel"), ".modeling"),
    **dict.fromkeys(
        (
            "ITEM_IDS_FILE",
            "Interactions",
            "LeaveOneOutSplits",
            "NextItemCollator",
            "NextItemDataset",
            "item_frequencies",
            "interactions_from_frame",
            "leave_one_out_split",
            "load_interactions",
            "load_item_ids",
            "movielens_splits",
        ),
        ".data",
    ),
    **dict.fromkeys(("evaluate_ranking", "hit_rate_and_ndcg", "target_ranks"), ".metrics"),
    **dict.fromkeys(("MOVIELENS_DEFAULTS", "movielens_config", "sasrec_for_movielens", "train_recommender"), ".train"),
}


__getattr__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = [
    "SASRecConfig",
    "SASRecForNextItem",
    "SASRecOutput",
    "SASRecPreTrainedModel",
    "ITEM_IDS_FILE",
    "Interactions",
    "interactions_from_frame",
    "load_interactions",
    "load_item_ids",
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
