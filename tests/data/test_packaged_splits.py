"""The packaged data sets' splits: one seeded three-way split for Rotten Tomatoes and the convention speeches."""

from __future__ import annotations

import pytest
from datasets import Dataset

from hf_sparse.data.rotten_tomatoes import load_rotten_tomatoes, split_three_ways
from hf_sparse.data.speeches import load_convention_speeches
from hf_sparse.errors import ConfigError


@pytest.mark.parametrize("loader", [load_rotten_tomatoes, load_convention_speeches])
@pytest.mark.parametrize("validation, test", [(0.0, 0.1), (0.1, 1.0), (0.5, 0.5), (-0.1, 0.2)])
def test_bad_fractions_are_refused_before_any_data_is_read(loader, validation, test):
    with pytest.raises(ConfigError, match="validation_fraction and test_fraction"):
        loader(validation_fraction=validation, test_fraction=test)


def test_three_way_split_is_seeded_disjoint_and_stratified():
    data = Dataset.from_dict({"text": [f"t{i}" for i in range(200)], "label": [i % 4 == 0 for i in range(200)]})
    data = data.class_encode_column("label")
    splits = split_three_ways(data, seed=3, validation_fraction=0.2, test_fraction=0.1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 140, "validation": 40, "test": 20}
    texts = [set(v["text"]) for v in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert sum(splits["test"]["label"]) == 5 and sum(splits["validation"]["label"]) == 10  # a quarter each
    again = split_three_ways(data, seed=3, validation_fraction=0.2, test_fraction=0.1)
    assert again["test"]["text"] == splits["test"]["text"]
    plain = split_three_ways(data, seed=3, validation_fraction=0.2, test_fraction=0.1, stratify=None)
    assert len(plain["validation"]) == 40
