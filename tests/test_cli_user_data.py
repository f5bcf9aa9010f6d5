"""`hf-sparse init` and `hf-sparse compress --model/--data/--task`: starter recipes, composed recipes, their errors."""

from __future__ import annotations

import pytest
import yaml

from hf_sparse.cli import _TASK_CHOICES, main
from hf_sparse.errors import ConfigError
from hf_sparse.jobs.starter import (
    STARTER_TASKS,
    canonical_task,
    compose_recipe,
    parse_columns,
    starter_recipe_text,
)
from hf_sparse.jobs.tasks import task_for


def test_task_names_and_aliases():
    assert _TASK_CHOICES == STARTER_TASKS
    assert canonical_task(None) == "text-classification"
    assert canonical_task("classification") == "text-classification"
    assert canonical_task("ner") == "token-classification"
    with pytest.raises(ConfigError, match="Unknown task 'sentiment'.*text-classification"):
        canonical_task("sentiment")


def test_columns_option_parses_roles_and_refuses_mistakes():
    assert parse_columns(["text=review", " label = stars "]) == {"text": "review", "label": "stars"}
    assert parse_columns(None) == {}
    with pytest.raises(ConfigError, match="ROLE=COLUMN"):
        parse_columns(["review"])
    with pytest.raises(ConfigError, match="unknown role 'txt'"):
        parse_columns(["txt=review"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_columns(["text=a", "text=b"])


@pytest.mark.parametrize("task", STARTER_TASKS)
def test_every_starter_recipe_is_a_valid_recipe_of_its_task(task, tmp_path):
    text = starter_recipe_text(task)
    assert "@MODEL@" not in text and "@DATA@" not in text
    assert text.count("#") >= 5  # commented
    doc = yaml.safe_load(text)
    assert canonical_task(doc.get("task")) == task
    path = tmp_path / f"{task}.yaml"
    path.write_text(text)
    job = "classification" if task in ("text-classification", "token-classification", "masked-lm") else task
    recipe = task_for(job if job != "classification" else task).load_recipe(path)
    assert recipe is not None


def test_starter_fills_in_model_and_data_as_quoted_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    odd = tmp_path / "my data #1: reviews.csv"
    odd.write_text("text,label\na,x\n")
    (tmp_path / "my-model").mkdir()
    doc = yaml.safe_load(starter_recipe_text("text-classification", model="my-model", data=odd.name))
    assert doc["model"]["name"] == str(tmp_path / "my-model")
    assert doc["data"]["dataset"] == str(odd)
    # a name that is not a local path (a Hub id, an alias) stays as written
    doc = yaml.safe_load(starter_recipe_text("text-classification", model="org/model", data="org/data"))
    assert doc["model"]["name"] == "org/model" and doc["data"]["dataset"] == "org/data"
    with pytest.raises(ConfigError, match="trains its own SASRec model"):
        starter_recipe_text("recsys", model="my-model")


def test_compose_keeps_the_recipe_and_replaces_model_data_columns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.csv").write_text("review,stars\na,1\n")
    doc = {"name": "mine", "model": {"name": "minilm-l6", "max_length": 64}, "data": {"files": {"train": "x.csv"}}}
    out = compose_recipe(doc, model="org/m", data="d.csv", columns={"text": "review"}, label_names=["1", "2"])
    assert out["name"] == "mine" and out["model"] == {"name": "org/m", "max_length": 64}
    assert out["data"] == {
        "dataset": str(tmp_path / "d.csv"),
        "columns": {"text": "review"},
        "label_names": ["1", "2"],
    }
    assert doc["data"] == {"files": {"train": "x.csv"}}  # the caller's document is not changed
    with pytest.raises(ConfigError, match="differs from the recipe's task 'text-classification'"):
        compose_recipe(doc, task="causal-lm", data="d.csv")
    with pytest.raises(ConfigError, match="takes no --model"):
        compose_recipe({"task": "recsys"}, model="m")
    # a starter is read in the recipes' YAML dialect: 5e-5 is a number, so the written recipe.yaml holds numbers
    starter = compose_recipe(None, task="text-classification", data="d.csv")
    assert starter["dense"]["learning_rate"] == 5e-5 and starter["data"]["dataset"] == str(tmp_path / "d.csv")


def test_init_prints_writes_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["init", "--task", "causal-lm"]) == 0
    assert "task: causal-lm" in capsys.readouterr().out
    target = tmp_path / "r.yaml"
    assert main(["init", "--task", "text-classification", "-o", str(target)]) == 0
    assert "task: text-classification" in target.read_text()
    assert main(["init", "-o", str(target)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["init", "--task", "masked-lm", "-o", str(target), "--force"]) == 0
    assert "task: masked-lm" in target.read_text()


def test_compress_with_a_task_other_than_the_recipes_is_refused_before_anything_runs(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\n")
    code = main(["compress", str(recipe), "--task", "causal-lm", "--data", "x.txt", "--output", str(tmp_path / "o")])
    assert code == 2 and "differs from the recipe's task" in capsys.readouterr().err


def test_the_summary_shows_every_metric_of_the_task_and_the_difference_in_its_unit():
    from hf_sparse.cli import _summary_lines

    metric = {"key": "test_accuracy", "name": "accuracy", "higher_is_better": True}
    metric["all"] = {"test_accuracy": "accuracy", "test_macro_f1": "macro F1"}
    report = {
        "metric": metric,
        "dense": {"test_accuracy": 0.8, "test_macro_f1": 0.75},
        "runs": [
            {
                "name": "pruned-50",
                "sparsity": 0.5,
                "test_accuracy": 0.79,
                "test_macro_f1": 0.7,
                "delta_vs_dense": -0.01,
                "checkpoint": "pruned-50",
            }
        ],
    }
    assert _summary_lines(report, "out") == [
        "dense: test accuracy 0.8000, test macro F1 0.7500",
        "pruned-50: sparsity 50.0%, test accuracy 0.7900, test macro F1 0.7000 (-1.00 points), saved to out/pruned-50",
    ]
    report["metric"] = {"key": "test_perplexity", "name": "masked-LM perplexity", "higher_is_better": False}
    report["dense"] = {"test_perplexity": 10.0}
    report["runs"][0].update(test_perplexity=12.5, delta_vs_dense=2.5)
    assert _summary_lines(report, "out")[1] == (
        "pruned-50: sparsity 50.0%, test masked-LM perplexity 12.5000 (+25.0%), saved to out/pruned-50"
    )


@pytest.mark.parametrize(
    "task, text",
    [
        ("causal-lm", "task: causal-lm\nmodel: {name: my-model}\ndata: {dataset: text.txt}\n"),
        ("recsys", "task: recsys\ndata: {files: {train: events.csv}}\n"),
        ("text-classification", "model: {name: my-model}\ndata: {dataset: text.txt}\n"),
    ],
)
def test_every_recipe_reads_relative_paths_against_its_own_folder(task, text, tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "my-model").mkdir(parents=True)
    (folder / "text.txt").write_text("hello\n")
    (folder / "recipe.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)  # another working folder
    recipe = task_for(task).load_recipe(folder / "recipe.yaml")
    if recipe.data.files is not None:
        assert recipe.data.files == {"train": str(folder / "events.csv")}  # a file path even before it exists
    else:
        assert recipe.data.dataset == str(folder / "text.txt")
        assert recipe.model.name == str(folder / "my-model")
    # a packaged name stays a name, also when a file of that name is in the folder
    (folder / "convention-speeches").write_text("")
    (folder / "plain.yaml").write_text("task: causal-lm\n")
    assert task_for("causal-lm").load_recipe(folder / "plain.yaml").data.dataset == "convention-speeches"
