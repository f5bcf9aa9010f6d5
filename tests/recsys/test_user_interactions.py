"""The recommender job on the user's own interactions file: column mapping, time order, the id mapping saved with every
model, the report and card naming the data, and bad data refused before any training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hf_sparse.cli import main
from hf_sparse.errors import DataError, FormatError, RecipeError
from hf_sparse.recsys import ITEM_IDS_FILE, interactions_from_frame, load_interactions, load_item_ids
from hf_sparse.recsys.compress import load_recsys_recipe

TINY = """
model: {hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 1, intermediate_size: 32, max_len: 10}
dense: {epochs: 1}
finetune: {epochs: 1}
latency_rounds: 0
"""


def interactions_frame(users: int = 30, items: int = 40, seed: int = 0) -> pd.DataFrame:
    """A shop's log: customers ``c<k>`` buying products ``sku-<k>`` at shuffled times (rows not in time order),
    one customer with only two purchases and one row logged twice."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        n = 2 if u == 7 else int(rng.integers(4, 12))
        times = rng.choice(10_000, size=n, replace=False)
        rows += [(f"c{u}", f"sku-{int(rng.integers(0, items))}", int(t)) for t in times]
    frame = pd.DataFrame(rows, columns=["customer", "product", "ts"]).sample(frac=1.0, random_state=seed)
    return pd.concat([frame, frame.iloc[[3]]], ignore_index=True)  # a double-logged event


def write_recipe(tmp_path, data: str, runs: str, extra: str = "") -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"task: recsys\nname: shop\n{data}\n{TINY}{extra}runs:\n{runs}")
    return str(path)


def test_a_csv_of_interactions_runs_the_whole_job(tmp_path):
    frame = interactions_frame()
    frame.to_csv(tmp_path / "events.csv", index=False)
    recipe = write_recipe(
        tmp_path,
        f"data: {{dataset: {tmp_path / 'events.csv'}, columns: {{user: customer, item: product, timestamp: ts}}}}",
        "  int8: {method: qrow, bits: 8}\n  hashed: {method: hashed, compression: 0.5, init: random}\n",
    )
    out = tmp_path / "out"
    # `hf-sparse compress` runs a `task: recsys` recipe as `hf-sparse recsys` does
    assert main(["compress", recipe, "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    data = report["data"]
    kept = frame.drop_duplicates()
    kept = kept[kept["customer"] != "c7"]
    assert data["dataset"] == "events.csv"
    assert data["columns"] == {"user": "customer", "item": "product", "timestamp": "ts"}
    assert data["read"]["rows"] == len(frame) and data["read"]["duplicates"] == 1
    assert data["read"]["short_users"] == 1 and data["read"]["short_user_rows"] == 2
    assert (data["users"], data["items"], data["interactions"]) == (29, kept["product"].nunique(), len(kept))
    assert [r["name"] for r in report["runs"]] == ["dense", "dense-continued", "int8", "hashed"]
    assert all(r["round_trip"]["identical_top10"] for r in report["runs"][1:])
    md = (out / "report.md").read_text()
    assert "SASRec on events.csv" in md and f"{len(kept)} interactions of 29 users" in md
    assert "1 repeated (user, item, timestamp) row" in md and "1 user with fewer than 3 interactions" in md

    # Every saved model carries the id mapping (natural order of the shop's own ids) and a card naming the data.
    expected = [None, *sorted(kept["product"].unique(), key=lambda s: int(s.split("-")[1]))]
    for name in ("dense", "dense-continued", "int8", "hashed"):
        assert load_item_ids(out / name) == expected
        card = (out / name / "README.md").read_text()
        assert "events.csv" in card and f"{len(kept)} interactions of 29 users" in card
    assert json.loads((out / "int8" / ITEM_IDS_FILE).read_text())["columns"]["item"] == "product"
    # each customer's held-out items are their last two purchases in time, not in file row order
    got = load_interactions(
        tmp_path / "events.csv", columns={"user": "customer", "item": "product", "timestamp": "ts"}
    )
    for u, user in enumerate(got.user_ids):
        bought = kept[kept["customer"] == user].sort_values("ts")["product"].tolist()
        assert [got.item_ids[got.splits.valid_targets[u] - 1], got.item_ids[got.splits.test_targets[u] - 1]] == bought[
            -2:
        ]

    # The card's usage example runs as written on the saved model and answers in the shop's own ids; a second
    # reload ranks identically.
    card = (out / "int8" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    code = code.replace("path/to/this/folder", str(out / "int8")).replace('"item-a", "item-b"', '"sku-3", "sku-5"')
    first, second = {}, {}
    exec(code, first)
    exec(code, second)
    assert len(first["top10"]) == 10 and set(first["top10"]) <= set(expected[1:])
    assert first["top10"] == second["top10"] and torch.equal(first["scores"], second["scores"])


def test_a_parquet_file_with_mapped_columns_and_no_timestamp_uses_row_order(tmp_path):
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(100, 130), 6)
    frame = pd.DataFrame({"uid": users, "pid": rng.integers(1, 41, size=len(users)), "rating": 5})
    frame.to_parquet(tmp_path / "log.parquet")
    got = load_interactions({"train": str(tmp_path / "log.parquet")}, columns={"user": "uid", "item": "pid"})
    assert got.columns == {"user": "uid", "item": "pid"} and "timestamp" not in got.columns
    assert "ordered by file row" in got.describe()
    # the first user's history is its rows in file order, in the model's item ids (integer ids in numeric order)
    first = [got.item_ids.index(str(i)) + 1 for i in frame["pid"][:6]]
    assert got.user_ids[0] == "100" and got.splits.train[0] + (got.splits.valid_targets[0],) == tuple(first[:5])
    assert got.splits.test_targets[0] == first[5]
    assert list(got.item_ids) == sorted(got.item_ids, key=int)

    # The job through `files:` with the `users` limit and an item-count threshold.
    recipe = write_recipe(
        tmp_path,
        f"data: {{files: {{train: {tmp_path / 'log.parquet'}}}, columns: {{user: uid, item: pid}}, "
        "min_item_count: 3}",
        "  int8: {method: qrow, bits: 8}\n",
        extra="users: 12\nverify: true\n",
    )
    out = tmp_path / "out"
    assert main(["recsys", recipe, "--output", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())["data"]
    counts = frame["pid"].value_counts()
    assert data["users"] == 12 and data["min_item_count"] == 3
    assert data["read"]["rare_items"] == int((counts < 3).sum())
    assert data["items"] == data["read"]["items"] <= int((counts >= 3).sum())
    assert len(load_item_ids(out / "int8")) == data["items"] + 1


def test_history_order_is_time_then_row_and_repeated_rows_are_dropped():
    frame = pd.DataFrame(
        {
            "user": ["b", "a", "a", "a", "a", "a", "b", "b"],
            "item": ["x10", "x9", "x10", "x2", "x9", "x2", "x2", "x9"],
            "timestamp": [5.0, 3.0, 1.0, 3.0, 3.0, 2.0, 1.0, 9.0],
        }
    )
    got = interactions_from_frame(frame, source="log")
    assert got.item_ids == ("x2", "x9", "x10") and got.user_ids == ("b", "a")  # users by first appearance
    # a: x10@1, x2@2, then the two rows at time 3 in row order (x9, x2); the second (a, x9, 3) row is a repeat
    assert got.splits.train[1] + (got.splits.valid_targets[1], got.splits.test_targets[1]) == (3, 1, 2, 1)
    assert got.splits.train[0] + (got.splits.valid_targets[0], got.splits.test_targets[0]) == (1, 3, 2)
    assert got.counts["duplicates"] == 1 and got.counts["interactions"] == 7
    # the same item again at another time is kept (a repeat purchase is a real next item)
    assert got.splits.test_targets[1] == got.splits.train[1][1]


def test_data_problems_are_typed_errors_before_any_training(tmp_path):
    few = pd.DataFrame({"user": ["a", "a", "b", "b", "b"], "item": ["1", "2", "1", "2", "3"], "timestamp": range(5)})
    with pytest.raises(DataError, match="no user has at least 6 interactions.*most any of the 2 users has is 3") as e:
        interactions_from_frame(few, source="few.csv", columns={"user": "who"}, min_interactions=6)
    assert e.value.source == "few.csv" and e.value.column == "who"
    one = pd.DataFrame({"user": ["a"] * 4, "item": ["7"] * 4, "timestamp": range(4)})
    with pytest.raises(DataError, match="one item '7'.*at least 2 distinct items") as e:
        interactions_from_frame(one, source="one.csv", columns={"item": "sku"})
    assert e.value.column == "sku"
    rare = pd.DataFrame({"user": ["a"] * 4 + ["b"] * 4, "item": list("1234") + list("1256"), "timestamp": range(8)})
    with pytest.raises(DataError, match="lower data.min_item_count"):
        interactions_from_frame(rare, source="rare.csv", min_item_count=2)
    with pytest.raises(DataError, match="nothing to learn"):
        interactions_from_frame(few, source="few.csv")  # users of 3 interactions have one training item each

    # A missing column is the loader's DataError (naming the file and the columns it has), before any model exists.
    (tmp_path / "events.csv").write_text("customer,product\na,1\na,2\na,3\n")
    recipe = load_recsys_recipe(
        write_recipe(
            tmp_path,
            f"data: {{dataset: {tmp_path / 'events.csv'}, columns: {{user: customer, item: sku}}}}",
            "  int8: {method: qrow, bits: 8}\n",
        )
    )
    from hf_sparse.recsys.compress import run_recsys

    with pytest.raises(DataError, match="sku") as e:
        run_recsys(recipe, tmp_path / "out")
    assert "events.csv" in str(e.value) and "customer" in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "data, message",
    [
        ("{files: {train: a.csv, test: b.csv}}", r"data.files.test: the recommender reads one table"),
        ("{files: {}}", r"data.files: the recommender reads one table, files: \{train: FILE\}"),
        ("{dataset: a.csv, files: {train: b.csv}}", "give one of them"),
        ("{dataset: a.csv, columns: {customer: c}}", "unknown roles"),
        ("{columns: {user: c}}", "fixed columns"),
        ("{dataset: a.csv, min_interactions: 2}", "min_interactions must be >= 3"),
        ("{dataset: a.csv, min_item_count: 0}", "min_item_count must be >= 1"),
        ("{dataset: ' '}", "must name the data"),
        ("{dataset: a.csv, colour: red}", "colour"),
    ],
)
def test_bad_data_sections(tmp_path, data, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"task: recsys\ndata: {data}\n")
    with pytest.raises(RecipeError, match=message):
        load_recsys_recipe(path)


def test_a_missing_or_malformed_id_mapping_is_a_format_error(tmp_path):
    with pytest.raises(FormatError, match="not a recommender saved by hf-sparse recsys"):
        load_item_ids(tmp_path)
    (tmp_path / ITEM_IDS_FILE).write_text(json.dumps({"num_items": 2, "item_ids": ["a", "b", "c"]}))
    with pytest.raises(FormatError, match="null .padding. then one string per item"):
        load_item_ids(tmp_path)


def test_the_packaged_recipe_still_reads_movielens():
    recipe = load_recsys_recipe(Path(__file__).parents[2] / "recipes" / "movielens-sasrec.yaml")
    assert recipe.data.uses_movielens and recipe.data.source() == "movielens-100k"


@pytest.mark.real
def test_movielens_through_the_data_section_gives_the_same_splits():
    from hf_sparse.recsys import movielens_splits

    got = load_interactions("movielens-100k")
    assert got.splits == movielens_splits()
    assert got.item_ids == tuple(str(i) for i in range(1, 1683)) and got.counts["interactions"] == 100_000


def test_a_run_whose_table_cannot_fit_a_small_catalogue_fails_before_training(tmp_path):
    interactions_frame().to_csv(tmp_path / "events.csv", index=False)
    recipe = load_recsys_recipe(
        write_recipe(
            tmp_path,
            f"data: {{dataset: {tmp_path / 'events.csv'}, columns: {{user: customer, item: product, timestamp: ts}}}}",
            "  int8: {method: qrow, bits: 8}\n  qr: {method: qr, compression: 0.125}\n",
        )
    )
    from hf_sparse.errors import ConfigError
    from hf_sparse.recsys.compress import run_recsys

    with pytest.raises(ConfigError, match=r"runs.qr: .*smallest QR pair.*item table is \d+ x 16"):
        run_recsys(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()
