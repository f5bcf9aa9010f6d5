"""load_user_data: every source kind, every task's normalised columns, column detection, splits, limits, label
names, and every bad-data case as a DataError naming the file, the column and the row."""

from __future__ import annotations

import gzip
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

from hf_sparse.data import USER_TASKS, UserData, load_user_data
from hf_sparse.errors import ConfigError, DataError


def _reviews(n: int = 40, classes=("neg", "pos")) -> pd.DataFrame:
    return pd.DataFrame(
        {"review": [f"review number {i}" for i in range(n)], "label": [classes[i % len(classes)] for i in range(n)]}
    )


def _csv(path: Path, frame: pd.DataFrame, **kw) -> Path:
    frame.to_csv(path, index=False, **kw)
    return path


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _error(match_parts, call) -> DataError:
    with pytest.raises(DataError) as info:
        call()
    text = str(info.value)
    for part in match_parts:
        assert part in text, (part, text)
    return info.value


# -- sources ------------------------------------------------------------------------------------------------------


def test_csv_with_column_mapping_makes_three_stratified_splits(tmp_path):
    frame = _reviews(100, ("bad", "good", "great", "meh")).rename(columns={"label": "stars"})
    path = _csv(tmp_path / "reviews.csv", frame)
    data = load_user_data(path, columns={"text": "review", "label": "stars"})
    assert isinstance(data, UserData) and data.task == "text-classification"
    assert list(data.splits) == ["train", "validation", "test"]
    assert [len(data.splits[s]) for s in data.splits] == [80, 10, 10]
    assert data.label_names == ("bad", "good", "great", "meh")
    assert data.columns == {"text": "review", "label": "stars"}
    assert data.source == "reviews.csv"
    features = data.splits["train"].features
    assert features == Features({"text": Value("string"), "label": ClassLabel(names=["bad", "good", "great", "meh"])})
    row = data.splits["test"][0]
    assert row["text"].startswith("review number") and isinstance(row["label"], int)
    # every text once, across the three splits
    texts = [t for s in data.splits.values() for t in s["text"]]
    assert sorted(texts) == sorted(f"review number {i}" for i in range(100))
    # the label of each text kept through the split
    frame = frame.set_index("review")["stars"]
    for split in data.splits.values():
        for example in split.select(range(5)):
            assert data.label_names[example["label"]] == frame[example["text"]]


def test_tsv_with_sentence_pairs_detected_case_insensitively(tmp_path):
    frame = pd.DataFrame(
        {
            "Sentence1": [f"premise {i}" for i in range(30)],
            "SENTENCE2": [f"hypothesis {i}" for i in range(30)],
            "Label": [i % 3 for i in range(30)],
        }
    )
    data = load_user_data(_csv(tmp_path / "pairs.tsv", frame, sep="\t"))
    assert data.columns == {"text": "Sentence1", "label": "Label", "text_pair": "SENTENCE2"}
    assert data.label_names == ("0", "1", "2")
    assert data.splits["train"].column_names == ["text", "text_pair", "label"]
    row = data.splits["train"][0]
    assert row["text"].replace("premise", "hypothesis") == row["text_pair"]
    assert data.label_names[row["label"]] == str(int(row["text"].split()[1]) % 3)


def test_integer_labels_sorted_numerically_and_remapped(tmp_path):
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(40)], "label": [[2, 10, 33][i % 3] for i in range(40)]})
    data = load_user_data(_csv(tmp_path / "a.csv", frame))
    assert data.label_names == ("2", "10", "33")
    train = data.splits["train"]
    for text, label in zip(train["text"], train["label"]):
        assert data.label_names[label] == str([2, 10, 33][int(text[1:]) % 3])


def test_json_records_columns_and_jsonl_and_gzip_read_alike(tmp_path):
    rows = [{"text": f"t {i}", "label": ["a", "b"][i % 2]} for i in range(20)]
    (tmp_path / "records.json").write_text(json.dumps(rows))
    (tmp_path / "columns.json").write_text(
        json.dumps({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]})
    )
    (tmp_path / "nested.json").write_text(json.dumps({"version": 2, "data": rows}))
    _jsonl(tmp_path / "lines.jsonl", rows)
    (tmp_path / "lines_in.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with gzip.open(tmp_path / "lines.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))
    _csv(tmp_path / "table.csv.gz", pd.DataFrame(rows), compression="gzip")
    results = [
        load_user_data(tmp_path / name, seed=3)
        for name in (
            "records.json",
            "columns.json",
            "nested.json",
            "lines.jsonl",
            "lines_in.json",
            "lines.jsonl.gz",
            "table.csv.gz",
        )
    ]
    for data in results:
        assert data.label_names == ("a", "b")
        assert data.splits["test"]["text"] == results[0].splits["test"]["text"]
        assert data.splits["test"]["label"] == results[0].splits["test"]["label"]


def test_parquet_written_by_datasets_keeps_the_class_label_names(tmp_path):
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "neutral", "positive"])})
    ds = Dataset.from_dict(
        {"sentence": [f"s{i}" for i in range(30)], "label": [i % 2 * 2 for i in range(30)]}, features=features
    )
    ds.to_parquet(tmp_path / "d.parquet")
    data = load_user_data(tmp_path / "d.parquet")
    # the ClassLabel's names, not the distinct values: "neutral" is a class even with no example
    assert data.label_names == ("negative", "neutral", "positive")
    assert set(data.splits["train"]["label"]) == {0, 2}
    # a plain parquet file (pandas): sorted distinct values
    pd.DataFrame({"content": ["x y", "z w"] * 10, "category": ["b", "a"] * 10}).to_parquet(tmp_path / "p.parquet")
    plain = load_user_data(tmp_path / "p.parquet")
    assert plain.label_names == ("a", "b") and plain.columns == {"text": "content", "label": "category"}


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    features = Features({"text": Value("string"), "label": ClassLabel(names=["no", "yes"])})
    ds = Dataset.from_dict(
        {"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}, features=features
    )
    ds.save_to_disk(tmp_path / "one")
    one = load_user_data(tmp_path / "one")
    assert one.label_names == ("no", "yes") and sum(len(s) for s in one.splits.values()) == 20
    dd = DatasetDict(train=ds, dev=ds.select(range(4)), unsupervised=ds.select(range(3)))
    dd.save_to_disk(tmp_path / "dict")
    loaded = load_user_data(tmp_path / "dict")
    assert len(loaded.splits["validation"]) == 4  # "dev" is the validation split, used as given
    assert len(loaded.splits["test"]) == 2 and len(loaded.splits["train"]) == 18  # test carved from train
    assert loaded.source == "dict"


def test_dataset_and_dataset_dict_objects(tmp_path):
    ds = Dataset.from_dict({"text": [f"t{i}" for i in range(20)], "label": [bool(i % 2) for i in range(20)]})
    data = load_user_data(ds)
    assert data.label_names == ("False", "True") and data.source == "a Dataset object"
    dd = DatasetDict(train=ds, validation=ds.select(range(5)), test=ds.select(range(5, 12)))
    given = load_user_data(dd)
    assert [len(given.splits[s]) for s in ("train", "validation", "test")] == [20, 5, 7]
    assert given.splits["test"]["text"] == [f"t{i}" for i in range(5, 12)]


def test_split_file_mapping_with_aliases_and_a_folder_of_split_files(tmp_path, hf_caches):
    _csv(tmp_path / "train.csv", _reviews(30))
    _csv(tmp_path / "dev.csv", _reviews(6))
    data = load_user_data({"train": tmp_path / "train.csv", "dev": str(tmp_path / "dev.csv")})
    assert len(data.splits["validation"]) == 6 and len(data.splits["train"]) + len(data.splits["test"]) == 30
    assert "train: train.csv" in data.source and "validation: dev.csv" in data.source
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("train.csv", "dev.csv"):
        shutil.copy(tmp_path / name, folder / name)
    _csv(folder / "test.csv", _reviews(8))
    from_folder = load_user_data(folder)
    assert [len(from_folder.splits[s]) for s in ("train", "validation", "test")] == [30, 6, 8]
    sharded = tmp_path / "sharded" / "data"
    sharded.mkdir(parents=True)
    for shard in range(2):
        _reviews(10).iloc[shard * 5 : shard * 5 + 5].to_parquet(sharded / f"train-0000{shard}-of-00002.parquet")
    _reviews(4).to_parquet(sharded / "test-00000-of-00001.parquet")
    from_shards = load_user_data(tmp_path / "sharded", columns={"text": "review"})
    assert len(from_shards.splits["test"]) == 4
    assert len(from_shards.splits["train"]) + len(from_shards.splits["validation"]) == 10
    with pytest.raises(ConfigError, match="unknown split 'holdout'"):
        load_user_data({"train": tmp_path / "train.csv", "holdout": tmp_path / "dev.csv"})


def _hub_snapshot(root: Path, repo: str, files: dict[str, str]) -> None:
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / ("datasets--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    for name, text in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(text)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)


@pytest.fixture
def hf_caches(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    hub, prepared = tmp_path / "hub", tmp_path / "datasets"
    hub.mkdir()
    prepared.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(prepared))
    # as in a session with the Hub online: load_user_data itself must keep the Hub offline
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub must not be contacted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return hub, prepared


def test_hub_id_from_a_snapshot_in_the_hub_cache(hf_caches):
    hub, _ = hf_caches
    lines = "".join(f"row {i},{['x', 'y'][i % 2]}\n" for i in range(20))
    _hub_snapshot(
        hub,
        "someone/reviews",
        {"data/train.csv": "text,label\n" + lines, "data/test.csv": "text,label\nrow a,x\nrow b,y\n"},
    )
    import datasets.config
    import huggingface_hub.constants

    data = load_user_data("someone/reviews")
    assert datasets.config.HF_HUB_OFFLINE is False and huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored
    assert data.source == "someone/reviews" and data.label_names == ("x", "y")
    assert data.splits["test"]["text"] == ["row a", "row b"]  # the snapshot's test split, as given
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 20


def test_hub_id_from_the_prepared_datasets_cache(hf_caches, tmp_path):
    import datasets

    _, prepared = hf_caches
    _csv(tmp_path / "train.csv", _reviews(20))
    # datasets' own prepared-Arrow layout, as load_dataset("someone/movies") leaves it: <owner>___<name>/<config>/...
    datasets.load_dataset("csv", data_files={"train": str(tmp_path / "train.csv")}, cache_dir=str(tmp_path / "build"))
    built = next((tmp_path / "build").rglob("dataset_info.json")).parent
    target = prepared / "someone___movies" / "default" / "0.0.0" / built.name
    target.mkdir(parents=True)
    for file in built.iterdir():
        if file.suffix in (".json", ".arrow"):
            shutil.copy(file, target / file.name.replace("csv-", "movies-"))
    data = load_user_data("someone/movies")
    assert data.label_names == ("neg", "pos") and sum(len(s) for s in data.splits.values()) == 20


def test_hub_id_not_in_the_cache_fails_at_once_without_the_network(hf_caches):
    start = time.monotonic()
    error = _error(["someone/absent", "not in the local Hugging Face cache"], lambda: load_user_data("someone/absent"))
    assert error.source == "someone/absent"
    assert time.monotonic() - start < 10  # no retries or timeouts (they take 30 s and more)
    _error(["no-such-file.csv", "no such file"], lambda: load_user_data("no-such-file.csv"))


# -- tasks --------------------------------------------------------------------------------------------------------


def test_token_classification_string_tags_o_first_and_length_checks(tmp_path):
    rows = [{"words": ["Ada", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]} for _ in range(12)]
    rows += [{"words": ["Hi"], "tags": ["O"]}] * 8
    data = load_user_data(_jsonl(tmp_path / "ner.jsonl", rows), task="token-classification")
    assert data.label_names == ("O", "B-LOC", "B-PER")
    assert data.columns == {"tokens": "words", "tags": "tags"}
    assert data.splits["train"].features == Features(
        {"tokens": List(Value("string")), "tags": List(ClassLabel(names=["O", "B-LOC", "B-PER"]))}
    )
    long = [r for r in data.splits["train"] if len(r["tokens"]) == 4][0]
    assert long == {"tokens": ["Ada", "lives", "in", "Paris"], "tags": [2, 0, 0, 1]}


def test_token_classification_int_tags_with_a_class_label_and_from_csv_strings(tmp_path):
    features = Features({"tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=["O", "B-X", "I-X"]))})
    ds = Dataset.from_dict({"tokens": [["a", "b"]] * 10, "ner_tags": [[1, 2], [0, 0]] * 5}, features=features)
    data = load_user_data(ds, task="token-classification")
    assert data.label_names == ("O", "B-X", "I-X")
    assert sorted(map(tuple, data.splits["train"]["tags"]))[-1] == (1, 2)
    frame = pd.DataFrame({"tokens": ["Ada went home", "Bo sat"] * 6, "tags": ["PER O O", "PER O"] * 6})
    from_csv = load_user_data(_csv(tmp_path / "ner.csv", frame), task="token-classification")
    assert from_csv.label_names == ("O", "PER")
    assert {tuple(t) for t in from_csv.splits["train"]["tokens"]} == {("Ada", "went", "home"), ("Bo", "sat")}
    assert {tuple(t) for t in from_csv.splits["train"]["tags"]} == {(1, 0, 0), (1, 0)}


def test_language_model_text_from_txt_lines_and_from_a_table(tmp_path):
    (tmp_path / "corpus.txt").write_text("first line\n\n  \nsecond line\n" * 10)
    data = load_user_data(tmp_path / "corpus.txt", task="causal-lm")
    assert sum(len(s) for s in data.splits.values()) == 20 and data.label_names is None
    assert set(data.splits["train"]["text"]) <= {"first line", "second line"}
    assert data.splits["train"].features == Features({"text": Value("string")})
    masked = load_user_data(_csv(tmp_path / "r.csv", _reviews(20)), task="masked-lm", columns={"text": "review"})
    assert masked.columns == {"text": "review"} and set(masked.splits["test"].column_names) == {"text"}


def test_recsys_interactions_with_times_or_in_row_order(tmp_path):
    frame = pd.DataFrame(
        {
            "userId": [3, 1, 3, 2],
            "movie_id": [10, 11, 12, 10],
            "time": ["2024-01-01", "2024-01-02T10:00:00", "2024-01-03", "2024-01-04"],
        }
    )
    data = load_user_data(_csv(tmp_path / "i.csv", frame), task="recsys")
    assert list(data.splits) == ["train"] and data.label_names is None
    assert data.columns == {"user": "userId", "item": "movie_id", "timestamp": "time"}
    train = data.splits["train"]
    assert train["user"] == ["3", "1", "3", "2"] and train["item"] == ["10", "11", "12", "10"]
    assert train["timestamp"][0] == pd.Timestamp("2024-01-01", tz="UTC").timestamp()
    assert train["timestamp"][1] - train["timestamp"][0] == 86400 + 36000
    rows = [{"user": "u1", "item": "i1"}, {"user": "u2", "item": "i1"}, {"user": "u1", "item": "i2"}]
    ordered = load_user_data(_jsonl(tmp_path / "i.jsonl", rows), task="recsys").splits["train"]
    assert ordered["timestamp"] == [0.0, 1.0, 2.0]
    assert ordered.features["timestamp"] == Value("float64")
    us_dates = pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "ts": ["05/01/2024 12:00", "05/02/2024 12:00"]})
    parsed = load_user_data(_csv(tmp_path / "us.csv", us_dates), task="recsys").splits["train"]["timestamp"]
    assert parsed[1] - parsed[0] == 86400
    frame.loc[2, "time"] = "soon"
    _error(
        ["bad.csv", "column 'time'", "row 3", "'soon' is not a date-time"],
        lambda: load_user_data(_csv(tmp_path / "bad.csv", frame), task="recsys"),
    )
    frame.loc[2, "time"] = "2024-01-03"
    frame.loc[1, "userId"] = None
    _error(
        ["nouser.csv", "column 'userId'", "row 2", "missing"],
        lambda: load_user_data(_csv(tmp_path / "nouser.csv", frame), task="recsys"),
    )


# -- splits, limits, label names ----------------------------------------------------------------------------------


def test_made_splits_are_stratified_seeded_and_disjoint(tmp_path):
    frame = pd.DataFrame(
        {"text": [f"t{i}" for i in range(1000)], "label": ["rare" if i % 10 == 0 else "common" for i in range(1000)]}
    )
    path = _csv(tmp_path / "a.csv", frame)
    data = load_user_data(path, seed=1, validation_fraction=0.2, test_fraction=0.1)
    sizes = {s: len(d) for s, d in data.splits.items()}
    assert sizes == {"train": 700, "validation": 200, "test": 100}
    rare = data.label_names.index("rare")
    for split, ds in data.splits.items():
        assert Counter(ds["label"])[rare] == sizes[split] // 10, split  # exactly the 1-in-10 share in every split
    again = load_user_data(path, seed=1, validation_fraction=0.2, test_fraction=0.1)
    other = load_user_data(path, seed=2, validation_fraction=0.2, test_fraction=0.1)
    assert again.splits["test"]["text"] == data.splits["test"]["text"]
    assert other.splits["test"]["text"] != data.splits["test"]["text"]
    all_texts = [t for ds in data.splits.values() for t in ds["text"]]
    assert len(set(all_texts)) == 1000 == len(all_texts)


def test_limits_take_seeded_stratified_subsets(tmp_path):
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(400)], "label": ["a", "b", "b", "b"] * 100})
    path = _csv(tmp_path / "a.csv", frame)
    data = load_user_data(path, limits={"train": 40, "dev": 8, "test": None})
    assert [len(data.splits[s]) for s in ("train", "validation", "test")] == [40, 8, 40]
    assert Counter(data.splits["train"]["label"]) == {0: 10, 1: 30}
    assert load_user_data(path, limits={"train": 40}).splits["train"]["text"] == data.splits["train"]["text"]
    assert load_user_data(path, limits={"train": 40}, seed=5).splits["train"]["text"] != data.splits["train"]["text"]
    for bad in ({"train": 1}, {"train": 0}, {"train": "10"}, {"holdout": 10}, [10]):
        with pytest.raises(ConfigError):
            load_user_data(path, limits=bad)
    rows = [{"user": f"u{i % 5}", "item": f"i{i}"} for i in range(50)]
    recsys = load_user_data(_jsonl(tmp_path / "r.jsonl", rows), task="recsys", limits={"train": 10})
    times = recsys.splits["train"]["timestamp"]
    assert len(times) == 10 and times == sorted(times)  # a subset of rows, in their order


def test_label_names_given(tmp_path):
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": ["pos", "neg"] * 10})
    path = _csv(tmp_path / "a.csv", frame)
    data = load_user_data(path, label_names=["neg", "neutral", "pos"])
    assert data.label_names == ("neg", "neutral", "pos")
    assert set(data.splits["train"]["label"]) == {0, 2}
    ints = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": [0, 2] * 10})
    as_ids = load_user_data(_csv(tmp_path / "i.csv", ints), label_names=["neg", "neutral", "pos"])
    assert set(as_ids.splits["train"]["label"]) == {0, 2}
    error = _error(
        ["a.csv", "column 'label'", "row 1", "'pos'", "not one of the label names"],
        lambda: load_user_data(path, label_names=["neg", "other"]),
    )
    assert (error.source, error.column, error.row) == (str(path), "label", 1)
    _error(
        ["i.csv", "row 2", "label id 2 is outside"],
        lambda: load_user_data(tmp_path / "i.csv", label_names=["neg", "pos"]),
    )
    stars = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": [5, 1, 2] * 6 + [4, 4]})
    by_name = load_user_data(_csv(tmp_path / "s.csv", stars), label_names=["1", "2", "3", "4", "5"])
    assert by_name.label_names == ("1", "2", "3", "4", "5")
    train = by_name.splits["train"]
    assert all(
        by_name.label_names[label] == str(stars.label[int(t[1:])]) for t, label in zip(train["text"], train["label"])
    )
    _error(
        ["s.csv", "row 1", "label '5' is not one of the label names"],
        lambda: load_user_data(tmp_path / "s.csv", label_names=["1", "2"]),
    )
    for bad in ("neg", ["neg"], ["a", "a"], ["a", ""]):
        with pytest.raises(ConfigError):
            load_user_data(path, label_names=bad)


# -- bad data -----------------------------------------------------------------------------------------------------


def test_missing_ambiguous_and_unknown_columns_name_the_columns_and_the_key(tmp_path):
    path = _csv(tmp_path / "r.csv", _reviews(10).rename(columns={"review": "body"}))
    error = _error(
        ["r.csv", "no text column", "'body'", "'label'", "columns={'text': ...}", "data.columns.text"],
        lambda: load_user_data(path),
    )
    assert error.column is None and error.row is None
    _error(
        ["r.csv", "column 'txt'", "no column named 'txt'", "'body'"],
        lambda: load_user_data(path, columns={"text": "txt"}),
    )
    both = _csv(tmp_path / "b.csv", _reviews(10).assign(text="x"))
    _error(
        ["b.csv", "more than one column could be the text", "'review'", "'text'", "columns={'text': ...}"],
        lambda: load_user_data(both),
    )
    _csv(tmp_path / "train.csv", _reviews(10))
    _csv(tmp_path / "test.csv", _reviews(10).rename(columns={"label": "y"}))
    _error(
        ["test.csv", "column 'label'", "test split"],
        lambda: load_user_data(
            {"train": tmp_path / "train.csv", "test": tmp_path / "test.csv"},
            columns={"text": "review", "label": "label"},
        ),
    )
    with pytest.raises(ConfigError, match="no role 'label'"):
        load_user_data(path, task="causal-lm", columns={"label": "label"})
    with pytest.raises(ConfigError, match="'review' is given for two roles"):
        load_user_data(path, columns={"text": "review", "text_pair": "review"})
    with pytest.raises(ConfigError, match="task must be one of"):
        load_user_data(path, task="regression")


def test_empty_files_and_splits(tmp_path):
    (tmp_path / "zero.csv").write_text("")
    _error(["zero.csv", "empty"], lambda: load_user_data(tmp_path / "zero.csv"))
    (tmp_path / "header.csv").write_text("text,label\n")
    _error(["header.csv", "no data rows"], lambda: load_user_data(tmp_path / "header.csv"))
    (tmp_path / "blank.txt").write_text("\n  \n")
    _error(["blank.txt", "no data rows"], lambda: load_user_data(tmp_path / "blank.txt", task="causal-lm"))
    (tmp_path / "e.jsonl").write_text("")
    _error(["e.jsonl", "empty"], lambda: load_user_data(tmp_path / "e.jsonl"))
    _csv(tmp_path / "tiny.csv", _reviews(2))
    _error(["tiny.csv", "too few"], lambda: load_user_data(tmp_path / "tiny.csv"))


def test_missing_and_empty_text_and_labels_name_the_row(tmp_path):
    frame = _reviews(10)
    frame.loc[6, "review"] = None
    path = _csv(tmp_path / "nan.csv", frame)
    error = _error(
        ["nan.csv", "column 'review'", "row 7", "missing"], lambda: load_user_data(path, columns={"text": "review"})
    )
    assert (error.source, error.column, error.row) == (str(path), "review", 7)
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(10)]
    rows[3]["text"] = "   "
    _error(
        ["blank.jsonl", "column 'text'", "row 4", "empty"],
        lambda: load_user_data(_jsonl(tmp_path / "blank.jsonl", rows)),
    )
    rows[3]["text"] = None
    _error(
        ["none.jsonl", "column 'text'", "row 4", "missing"],
        lambda: load_user_data(_jsonl(tmp_path / "none.jsonl", rows)),
    )
    rows[3]["text"] = "fine"
    rows[8]["label"] = float("nan")
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(rows))  # json.dumps writes NaN, which json.loads reads back
    _error(["nan.json", "column 'label'", "row 9", "missing"], lambda: load_user_data(path))
    frame = _reviews(10)
    frame.loc[4, "label"] = None
    _error(
        ["nolabel.csv", "column 'label'", "row 5"],
        lambda: load_user_data(_csv(tmp_path / "nolabel.csv", frame), columns={"text": "review"}),
    )


def test_mixed_types_and_bad_label_values_name_the_row(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(10)]
    rows[5]["label"] = "pos"
    error = _error(
        ["mixed.jsonl", "column 'label'", "row 6", "mixed types", "'pos'"],
        lambda: load_user_data(_jsonl(tmp_path / "mixed.jsonl", rows)),
    )
    assert error.row == 6
    rows[5]["label"] = 0.5
    _error(["half.jsonl", "row 6", "not whole"], lambda: load_user_data(_jsonl(tmp_path / "half.jsonl", rows)))
    rows[5]["label"] = [1]
    _error(["list.jsonl", "row 6"], lambda: load_user_data(_jsonl(tmp_path / "list.jsonl", rows)))
    rows[5]["label"] = 1
    rows[2]["text"] = 42
    _error(
        ["num.jsonl", "column 'text'", "row 3", "mixed types"],
        lambda: load_user_data(_jsonl(tmp_path / "num.jsonl", rows)),
    )
    stars = pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": ["5", "4"] * 3 + ["five", "3", "2", "1"]})
    _error(
        ["stars.csv", "column 'label'", "row 7", "mixed types: 'five' among integer values"],
        lambda: load_user_data(_csv(tmp_path / "stars.csv", stars)),
    )
    rows[5]["label"], rows[2]["text"] = 10**30, "fine"
    _error(["huge.jsonl", "row 6", "too large"], lambda: load_user_data(_jsonl(tmp_path / "huge.jsonl", rows)))
    rows[5]["label"] = 1
    blank = [{"text": f"t{i}", "label": ["a", "b", " "][i % 3]} for i in range(9)]
    _error(
        ["blank_label.jsonl", "column 'label'", "row 3", "the label is empty"],
        lambda: load_user_data(_jsonl(tmp_path / "blank_label.jsonl", blank)),
    )
    numbers = [{"text": i, "label": i % 2} for i in range(10)]
    _error(
        ["ints.jsonl", "column 'text'", "row 1", "holds integer values", "not text"],
        lambda: load_user_data(_jsonl(tmp_path / "ints.jsonl", numbers)),
    )


def test_one_class_and_labels_unseen_in_train(tmp_path):
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": ["same"] * 10})
    _error(
        ["one.csv", "column 'label'", "'same'", "at least two classes"],
        lambda: load_user_data(_csv(tmp_path / "one.csv", frame)),
    )
    _csv(tmp_path / "train.csv", _reviews(10))
    test = _reviews(4)
    test.loc[2, "label"] = "meh"
    _csv(tmp_path / "test.csv", test)
    error = _error(
        ["test.csv", "column 'label'", "row 3", "'meh'", "test split never appears in train", "'neg'"],
        lambda: load_user_data({"train": tmp_path / "train.csv", "test": tmp_path / "test.csv"}),
    )
    assert (error.column, error.row) == ("label", 3)
    features = Features({"text": Value("string"), "label": ClassLabel(names=["a", "b"])})
    ds = Dataset.from_dict({"text": ["x", "y"] * 5, "label": [0, 1] * 5}, features=features)
    no_labels = Dataset.from_dict({"text": ["x", "y"], "label": [-1, -1]}, features=features)
    _error(["split 'test'", "row 1", "-1", "no label"], lambda: load_user_data(DatasetDict(train=ds, test=no_labels)))


def test_token_and_tag_problems_name_the_row(tmp_path):
    good = {"tokens": ["a", "b"], "tags": ["O", "X"]}
    rows = [good] * 6 + [{"tokens": ["a", "b", "c"], "tags": ["O", "X"]}]
    error = _error(
        ["len.jsonl", "column 'tags'", "row 7", "2 tags for 3 tokens"],
        lambda: load_user_data(_jsonl(tmp_path / "len.jsonl", rows), task="token-classification"),
    )
    assert error.row == 7
    rows = [good] * 3 + [{"tokens": ["a", 5], "tags": ["O", "X"]}] + [good] * 3
    _error(
        ["tok.jsonl", "column 'tokens'", "row 4", "mixed types", "5"],
        lambda: load_user_data(_jsonl(tmp_path / "tok.jsonl", rows), task="token-classification"),
    )
    rows = [good] * 3 + [{"tokens": "a b", "tags": ["O", "X"]}] + [good] * 3
    _error(
        ["str.jsonl", "column 'tokens'", "row 4", "must be a list"],
        lambda: load_user_data(_jsonl(tmp_path / "str.jsonl", rows), task="token-classification"),
    )
    rows = [good] * 3 + [{"tokens": ["a", "b"], "tags": ["O", None]}] + [good] * 3
    _error(
        ["null.jsonl", "column 'tags'", "row 4", "null"],
        lambda: load_user_data(_jsonl(tmp_path / "null.jsonl", rows), task="token-classification"),
    )
    rows = [good] * 3 + [{"tokens": [], "tags": []}]
    _error(
        ["empty.jsonl", "row 4", "empty"],
        lambda: load_user_data(_jsonl(tmp_path / "empty.jsonl", rows), task="token-classification"),
    )
    rows = [good] * 4 + [{"tokens": ["a", "b"], "tags": ["O", "Y"]}]
    path = _jsonl(tmp_path / "unknown.jsonl", rows)
    _error(
        ["unknown.jsonl", "column 'tags'", "row 5", "'Y' is not one of the label names"],
        lambda: load_user_data(path, task="token-classification", label_names=["O", "X"]),
    )
    named = load_user_data(path, task="token-classification", label_names=["X", "Y", "O"])
    assert named.label_names == ("X", "Y", "O") and sorted(map(tuple, named.splits["train"]["tags"]))[0] == (2, 0)
    all_o = [{"tokens": ["a", "b"], "tags": ["O", "O"]}] * 5
    _error(
        ["allo.jsonl", "column 'tags'", "'O'", "at least two classes"],
        lambda: load_user_data(_jsonl(tmp_path / "allo.jsonl", all_o), task="token-classification"),
    )


def test_unreadable_files_name_the_file(tmp_path, hf_caches):
    (tmp_path / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    _error(["sheet.xlsx", "cannot read this file format", ".csv"], lambda: load_user_data(tmp_path / "sheet.xlsx"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": \n')
    error = _error(["bad.jsonl", "row 2", "line 2 is not valid JSON"], lambda: load_user_data(tmp_path / "bad.jsonl"))
    assert error.row == 2
    (tmp_path / "bad.json").write_text('[{"text": "a"},')
    _error(["bad.json", "not valid JSON"], lambda: load_user_data(tmp_path / "bad.json"))
    (tmp_path / "ragged.csv").write_text("text,label\na,1\nb,2,3\n")
    _error(["ragged.csv", "not a well-formed CSV", "line 3"], lambda: load_user_data(tmp_path / "ragged.csv"))
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    _error(["latin.csv", "not UTF-8"], lambda: load_user_data(tmp_path / "latin.csv"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    _error(["bad.parquet", "not a readable parquet"], lambda: load_user_data(tmp_path / "bad.parquet"))
    (tmp_path / "scalars.jsonl").write_text("1\n2\n")
    _error(["scalars.jsonl", "row 1", "not an object"], lambda: load_user_data(tmp_path / "scalars.jsonl"))
    (tmp_path / "plain").mkdir()
    _error(["plain", "save_to_disk"], lambda: load_user_data(tmp_path / "plain"))


def test_data_error_is_a_config_error_with_its_place():
    error = DataError("bad value", source="f.csv", column="text", row=3)
    assert isinstance(error, ConfigError) and isinstance(error, ValueError)
    assert str(error) == "f.csv, column 'text', row 3: bad value"
    assert (error.source, error.column, error.row) == ("f.csv", "text", 3)
    assert str(DataError("plain")) == "plain" and DataError("plain").row is None
    assert USER_TASKS == ("text-classification", "token-classification", "causal-lm", "masked-lm", "recsys")
