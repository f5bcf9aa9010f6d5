"""Prune Once For All with ``hf-sparse compress``: an upstream ``task: masked-lm`` job prunes a bare pre-trained
encoder gradually on unlabelled text, distilling hidden states from the dense pre-trained encoder, and saves it; a
downstream text-classification job starts its runs from that folder (fresh head) and keeps exactly its zeros while
it fine-tunes with distillation from the fine-tuned dense model. Tiny random-config BERTs, a few steps each."""

from __future__ import annotations

import random

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, BertTokenizer

import hf_sparse.compress as compress_module
from hf_sparse.compress import preflight, run_compress
from hf_sparse.distillation.recipe import DistillationSection
from hf_sparse.errors import ConfigError, RecipeError
from hf_sparse.jobs.classification import check_data, prepare_data
from hf_sparse.recipes import load_recipe, packaged_recipes

WORDS = "good great fine bad awful poor movie film plot actor the a is was very not and today story".split()
POSITIVE, NEGATIVE = ("good", "great", "fine"), ("bad", "awful", "poor")
PRUNED = ("query", "key", "value", "dense")  # the encoder Linear layers BERT's default pruning selects


def _save_bert(folder, *, hidden=32, seed=0):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(folder)  # a bare encoder, as all-MiniLM-L6-v2: no masked-LM head
    return folder


def _sentences(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 10))) for _ in range(n)]


def _reviews_csv(path, n=80, seed=3):
    rng = random.Random(seed)
    rows = ["text,label"]
    for _ in range(n):
        label = rng.choice(("pos", "neg"))
        word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        rows.append(f"the {rng.choice(('movie', 'film', 'plot'))} was very {word},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _write(folder, name: str, document: dict):
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


CHECKPOINT = {"format": "dense", "latency_rounds": 0, "save_steps": 0}


def _upstream(encoder, corpus) -> dict:
    return {
        "name": "up",
        "task": "masked-lm",
        "model": {"name": str(encoder), "max_length": 24},
        "data": {"dataset": str(corpus), "seed": 1},
        "dense": {"max_steps": 2, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1},
        "pruned": {"max_steps": 8, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1, "seed": 7},
        "pruning": {
            "criterion": "magnitude",
            "scope": "global",
            "schedule": "cubic",
            "end_step": 4,
            "update_every": 1,
        },
        "sparsities": [0.5],
        "distillation": {
            "alpha": 0.0,
            "hidden_weight": 1.0,
            "teacher": str(encoder),
            "student_from": "pretrained",
            "cache": False,
            "compare": False,
        },
        "checkpoint": CHECKPOINT,
    }


def _downstream(encoder, data, start: str, **changes) -> dict:
    document = {
        "name": "down",
        "model": {"name": str(encoder), "max_length": 24},
        "data": {"dataset": str(data), "seed": 1},
        "dense": {"max_steps": 3, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1},
        "pruned": {"max_steps": 4, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1, "seed": 5},
        "pruning": {"criterion": "magnitude", "schedule": "oneshot", "start_step": 0},
        "sparsities": [0.5],
        "distillation": {"alpha": 0.5, "hidden_weight": 1.0, "compare": True, "student_from": start},
        "checkpoint": CHECKPOINT,
    }
    for key, value in changes.items():
        document[key] = {**document[key], **value} if isinstance(value, dict) else value
    return document


def _zeros(state: dict) -> dict[str, torch.Tensor]:
    """The zero positions of every pruned encoder Linear weight of a checkpoint, by name without the model prefix."""
    return {
        k.split("encoder.", 1)[1]: v == 0
        for k, v in state.items()
        if ".encoder.layer." in k and k.endswith(".weight") and k.split(".")[-2] in PRUNED and v.dim() == 2
    }


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """The upstream job's output: a 50%-sparse masked-LM encoder (and the bare encoder it came from)."""
    root = tmp_path_factory.mktemp("pofa")
    encoder = _save_bert(root / "encoder")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(_sentences(random.Random(0), 120)) + "\n")
    recipe = load_recipe(_write(root, "up", _upstream(encoder, corpus)))
    report = run_compress(recipe, root / "pofa-up")
    return {"root": root, "encoder": encoder, "report": report, "folder": root / "pofa-up" / "pruned-50-kd"}


def test_upstream_prunes_the_pretrained_encoder_with_hidden_state_distillation(upstream):
    report = upstream["report"]
    (run,) = report["runs"]
    assert report["task"] == "masked-lm" and run["name"] == "pruned-50-kd"
    assert run["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert run["distillation"]["kd"] and run["distillation"]["teacher_calls"] >= 8  # one per training step
    assert run["distillation"]["config"]["alpha"] == 0.0 and run["distillation"]["config"]["hidden_weight"] == 1.0
    assert run["test_perplexity"] > 1 and report["dense"]["fine_tuned"]  # a bare encoder: the dense MLM is trained
    state = load_file(upstream["folder"] / "model.safetensors")
    assert any(k.startswith("cls.predictions") for k in state)  # a masked-LM checkpoint, plain weights
    zeros = _zeros(state)
    assert len(zeros) == 12
    fraction = sum(int(z.sum()) for z in zeros.values()) / sum(z.numel() for z in zeros.values())
    assert fraction == pytest.approx(0.5, abs=1e-3)
    # the encoder moved from the pre-trained weights beyond the zeros: it trained, not only pruned
    original = load_file(upstream["encoder"] / "model.safetensors")
    q = "encoder.layer.0.attention.self.query.weight"
    kept = state[f"bert.{q}"] != 0
    assert not torch.equal(state[f"bert.{q}"][kept], original[q][kept])


def test_downstream_starts_from_the_pruned_encoder_and_keeps_its_zeros(upstream, tmp_path):
    data = _reviews_csv(tmp_path / "reviews.csv")
    start = upstream["folder"]
    # a relative student_from: read against the recipe file's folder
    (tmp_path / "models").symlink_to(start.parent, target_is_directory=True)
    path = _write(tmp_path, "down", _downstream(upstream["encoder"], data, "./models/pruned-50-kd"))
    recipe = load_recipe(path)
    assert recipe.distillation.student_from == str(start.resolve())
    report = run_compress(recipe, tmp_path / "out")

    upstream_zeros = _zeros(load_file(start / "model.safetensors"))
    assert [r["name"] for r in report["runs"]] == ["pruned-50-kd", "pruned-50"]  # with and without the teacher
    for run in report["runs"]:
        assert run["started_from"] == {"model": str(start.resolve()), "sparsity": 0.5, "zero_pattern_kept": True}
        saved = load_file(tmp_path / "out" / run["checkpoint"] / "model.safetensors")
        zeros = _zeros(saved)
        assert zeros.keys() == upstream_zeros.keys()
        for name, z in zeros.items():
            assert torch.equal(z, upstream_zeros[name]), name  # exactly the upstream's zero positions
        assert "classifier.weight" in saved
    kd = report["runs"][0]
    assert kd["distillation"]["kd"] and kd["distillation"]["teacher_calls"] > 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"started from `{start.resolve()}`" in md and "kept exactly" in md


def test_the_start_model_takes_what_it_lacks_from_the_pretrained_model(upstream, tmp_path):
    data = _reviews_csv(tmp_path / "reviews.csv")
    recipe = load_recipe(_write(tmp_path, "down", _downstream(upstream["encoder"], data, str(upstream["folder"]))))
    prepared = prepare_data(recipe)
    task = compress_module.ClassificationTask(recipe, prepared, None, tmp_path / "work")
    model = task.start_model(str(upstream["folder"]))
    pretrained = task.start_model("pretrained")
    state, reference = model.state_dict(), pretrained.state_dict()
    upstream_state = load_file(upstream["folder"] / "model.safetensors")
    for key in ("bert.pooler.dense.weight", "classifier.weight"):  # not in a masked-LM checkpoint
        assert torch.equal(state[key], reference[key])
    q = "bert.encoder.layer.1.attention.self.query.weight"
    assert torch.equal(state[q], upstream_state[q]) and not torch.equal(state[q], reference[q])


def _no_training(monkeypatch):
    def training_started(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(compress_module, "finetune", training_started)


def test_a_start_model_of_another_architecture_is_refused_naming_both(upstream, tmp_path, monkeypatch):
    _no_training(monkeypatch)
    wider = _save_bert(tmp_path / "wider", hidden=48)
    data = _reviews_csv(tmp_path / "reviews.csv")
    recipe = load_recipe(_write(tmp_path, "down", _downstream(wider, data, str(upstream["folder"]))))
    with pytest.raises(ConfigError) as err:
        run_compress(recipe, tmp_path / "out")
    message = str(err.value)
    assert "distillation.student_from" in message and str(upstream["folder"]) in message
    assert "hidden_size 32 vs 48" in message and str(wider) in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"sparsities": [0.6]}, r"is 50\.00% sparse .* target sparsity is 60\.00%"),
        ({"pruning": {"schedule": "cubic", "end_step": 2}}, "schedule 'cubic' \\(needs 'oneshot'\\)"),
        ({"pruning": {"criterion": "random"}}, "criterion 'random' \\(needs 'magnitude'\\)"),
        ({"pruning": {"scope": "layer"}}, "zeros are not the weights magnitude pruning with scope layer removes"),
    ],
)
def test_a_start_model_the_pruning_would_not_keep_is_refused_before_training(
    upstream, tmp_path, monkeypatch, changes, expected
):
    _no_training(monkeypatch)
    data = _reviews_csv(tmp_path / "reviews.csv")
    recipe = load_recipe(
        _write(tmp_path, "down", _downstream(upstream["encoder"], data, str(upstream["folder"]), **changes))
    )
    with pytest.raises(ConfigError, match=expected):
        run_compress(recipe, tmp_path / "out")
    with pytest.raises(ConfigError, match=expected):
        check_data(recipe)  # `hf-sparse validate` reads the same check


def test_a_missing_start_folder_names_the_job_to_run_first(tmp_path, monkeypatch, upstream):
    monkeypatch.chdir(tmp_path)
    assert "minilm-pofa-upstream" in packaged_recipes()
    data = _reviews_csv(tmp_path / "reviews.csv")
    document = _downstream(upstream["encoder"], data, "minilm-pofa-upstream/pruned-80-kd")
    recipe = load_recipe(_write(tmp_path / ".", "down", document))
    with pytest.raises(RecipeError) as err:
        preflight(recipe)
    message = str(err.value)
    assert "hf-sparse compress minilm-pofa-upstream --output minilm-pofa-upstream" in message
    assert "distillation.student_from" in message


def test_student_from_is_dense_pretrained_or_a_path():
    assert DistillationSection(student_from="./pofa/pruned-80-kd").start_model == "./pofa/pruned-80-kd"
    assert DistillationSection(student_from="pretrained").start_model is None
    for wrong in ("teacher", "pretrain", " ./x", ""):
        with pytest.raises(ConfigError, match="student_from must be dense or pretrained, or a model folder"):
            DistillationSection(student_from=wrong)


def test_masked_lm_distillation_refuses_the_teacher_cache(upstream, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_sentences(random.Random(1), 30)) + "\n")
    document = _upstream(upstream["encoder"], corpus)
    document["distillation"]["cache"] = True
    with pytest.raises(RecipeError, match="distillation.cache: a masked-lm batch is masked at random"):
        preflight(load_recipe(_write(tmp_path, "up", document)))
