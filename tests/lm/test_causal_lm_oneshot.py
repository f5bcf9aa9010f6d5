"""The ``task: causal-lm`` job on tiny random decoders (Llama, GPT-2) saved with a tiny word-level tokenizer, on
generated text files: every method at 50% unstructured and 2:4, exact sparsity, LM head untouched, perplexity,
reload, report keys, and the typed errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from hf_sparse.errors import ConfigError, DataError, RecipeError
from hf_sparse.lm.oneshot import check_causal_decoder, run_causal_lm
from hf_sparse.lm.oneshot_config import CausalLmRecipe, OneShotRun, load_causal_lm_recipe
from hf_sparse.lm.oneshot_data import calibration_offsets, covered_tokens, eval_windows
from hf_sparse.nn.roles import UnsupportedFamilyError
from hf_sparse.testing.families import tiny_model

WORDS = [f"w{i}" for i in range(100)]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _save_tiny(family: str, folder: Path) -> Path:
    model = tiny_model(family, seed=0)
    model.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return _save_tiny("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    return _save_tiny("gpt2", tmp_path_factory.mktemp("gpt2"))


def _lines(n: int, seed: int) -> list[str]:
    # A Markov chain over the words: text with structure a model could learn (the model here is random).
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = rng.randrange(len(WORDS))
        words = []
        for _ in range(rng.randint(8, 20)):
            words.append(WORDS[w])
            w = (w * 7 + rng.choice((1, 2, 3))) % len(WORDS)
        out.append(" ".join(words))
    return out


def _recipe(model: Path, data: dict, runs: list[dict], **extra) -> CausalLmRecipe:
    doc = {
        "task": "causal-lm",
        "name": "tiny",
        "threads": 1,
        "model": {"name": str(model)},
        "data": {"seq_len": 32, "calibration_samples": 8, "eval_tokens": 128, "seed": 0, **data},
        "runs": runs,
        **extra,
    }
    return CausalLmRecipe.from_dict(doc)


ALL_RUNS = [
    {"method": m, **amount}
    for m in ("sparsegpt", "wanda", "magnitude")
    for amount in ({"sparsity": 0.5}, {"pattern": "2:4"})
]


def _check_weights(folder: Path, dense_folder: Path, structure: str, layers: int) -> None:
    """The reloaded checkpoint's pruned layers hold exactly 50% zeros (and 2 of every 4 with 2:4); the LM head and
    the embeddings are the dense model's."""
    from transformers import AutoModelForCausalLM

    from hf_sparse.nn.linear_like import is_linear_like, linear_weight
    from hf_sparse.nn.sparse_linear import SparseLinear

    pruned = AutoModelForCausalLM.from_pretrained(folder)
    dense = AutoModelForCausalLM.from_pretrained(dense_folder)
    dense_modules = dict(dense.named_modules())
    checked = 0
    for name, module in pruned.named_modules():
        if isinstance(module, SparseLinear):
            w = module.dense_weight()
        elif is_linear_like(module):
            w = linear_weight(module).detach()
        else:
            continue
        if name.split(".")[-1] == "lm_head":
            assert torch.equal(w, linear_weight(dense_modules[name]).detach())
            continue
        checked += 1
        assert (w == 0).sum().item() == w.numel() // 2, name
        if structure == "2:4":
            assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all(), name
    assert checked == layers  # every Linear of the blocks
    emb = pruned.get_input_embeddings().weight
    assert torch.equal(emb, dense.get_input_embeddings().weight)


def test_every_method_50_and_2of4_on_llama_txt(tiny_llama, tmp_path):
    data_file = tmp_path / "text.txt"
    data_file.write_text("\n".join(_lines(120, 0)) + "\n")
    recipe = _recipe(tiny_llama, {"dataset": str(data_file), "test_fraction": 0.25}, ALL_RUNS)
    report = run_causal_lm(recipe, tmp_path / "out", recipe_source="inline")

    assert {"dense", "runs", "data", "model", "memory", "machine", "timings", "summary"} <= set(report)
    assert [r["name"] for r in report["runs"]] == [
        "sparsegpt-50",
        "sparsegpt-2of4",
        "wanda-50",
        "wanda-2of4",
        "magnitude-50",
        "magnitude-2of4",
    ]
    assert report["data"]["calibration_sequences"] == 8 and report["data"]["eval_windows"] == 4
    assert torch.isfinite(torch.tensor(report["dense"]["perplexity"]))
    for run in report["runs"]:
        assert torch.isfinite(torch.tensor(run["perplexity"])), run["name"]
        assert run["relative_change"] == pytest.approx(run["perplexity"] / report["dense"]["perplexity"] - 1)
        assert run["sparsity"] == 0.5 and run["min_layer_sparsity"] == run["max_layer_sparsity"] == 0.5
        assert run["unpruned_unchanged"] and len(run["layers"]) == 14
        assert run["pattern_holds"] is (True if run["structure"] == "2:4" else None)
        assert run["round_trip"]["identical_logits"], run["name"]
        assert run["checkpoint_bytes"] > 0
        assert (run["calibration"] is None) == (run["method"] == "magnitude")
        folder = tmp_path / "out" / run["name"]
        assert (folder / "tokenizer.json").is_file() and (folder / "hf_sparse_recipe.yaml").is_file()
        card = (folder / "README.md").read_text()
        assert "pipeline_tag: text-generation" in card and "No accuracy" not in card
        assert f"| this model | {run['perplexity']:.4f} |" in card and "| dense model (the same weights" in card
        _check_weights(folder, tiny_llama, run["structure"], 14)
    # the methods differ: calibrated reconstruction moves the surviving weights, Wanda and magnitude keep them
    ppl = {r["name"]: r["perplexity"] for r in report["runs"]}
    assert len(set(ppl.values())) == len(ppl)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["runs"][0]["perplexity"] == report["runs"][0]["perplexity"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "sparsegpt-2of4" in md and "identical logits" in md
    assert yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())["task"] == "causal-lm"


def test_gpt2_jsonl_with_column_mapping_and_split_files(tiny_gpt2, tmp_path):
    train, test = tmp_path / "calib.jsonl", tmp_path / "heldout.jsonl"
    train.write_text("".join(json.dumps({"body": t, "id": i}) + "\n" for i, t in enumerate(_lines(60, 1))))
    test.write_text("".join(json.dumps({"body": t, "id": i}) + "\n" for i, t in enumerate(_lines(30, 2))))
    recipe = _recipe(
        tiny_gpt2,
        {"files": {"train": str(train), "test": str(test)}, "columns": {"text": "body"}},
        [{"method": "sparsegpt", "sparsity": 0.5}, {"method": "wanda", "pattern": "2:4"}],
    )
    report = run_causal_lm(recipe, tmp_path / "out")
    assert report["data"]["calibration_documents"] == 60 and report["data"]["held_out_documents"] == 30
    for run in report["runs"]:
        assert run["sparsity"] == 0.5 and run["unpruned_unchanged"] and len(run["layers"]) == 8
        assert run["round_trip"]["identical_logits"]
        _check_weights(tmp_path / "out" / run["name"], tiny_gpt2, run["structure"], 8)


def test_calibration_offsets_are_seeded_and_eval_windows_do_not_overlap():
    a = calibration_offsets(1000, 16, 32, seed=3, source="x")
    assert a == calibration_offsets(1000, 16, 32, seed=3, source="x") != calibration_offsets(1000, 16, 32, 4, "x")
    assert all(0 <= s <= 1000 - 32 for s in a)
    assert covered_tokens([0, 10, 100], 20) == 30 + 20
    stream = torch.arange(100)
    w = eval_windows(stream, 16, 64, "x")
    assert w.shape == (4, 16) and torch.equal(w.reshape(-1), stream[:64])
    assert eval_windows(stream, 16, 10_000, "x").shape == (6, 16)  # all there is
    with pytest.raises(DataError, match="fewer than one perplexity window"):
        eval_windows(stream[:10], 16, 64, "held.txt")
    with pytest.raises(DataError, match="fewer than one calibration sequence"):
        calibration_offsets(10, 4, 16, 0, "calib.txt")


def test_missing_text_column_is_a_data_error_naming_file_and_column(tiny_llama, tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps({"body": t}) + "\n" for t in _lines(20, 0)))
    recipe = _recipe(tiny_llama, {"dataset": str(path), "columns": {"text": "content_text"}}, ALL_RUNS[:1])
    with pytest.raises(DataError, match="notes.jsonl") as info:
        run_causal_lm(recipe, tmp_path / "out")
    assert info.value.column == "content_text"
    assert not (tmp_path / "out" / "report.json").exists()


def test_too_little_text_is_a_data_error_naming_the_file(tiny_llama, tmp_path):
    train, test = tmp_path / "calib.txt", tmp_path / "heldout.txt"
    train.write_text("\n".join(_lines(40, 0)) + "\n")
    test.write_text("w1 w2 w3\n")
    recipe = _recipe(tiny_llama, {"files": {"train": str(train), "test": str(test)}}, ALL_RUNS[:1])
    with pytest.raises(DataError, match="held out"):
        run_causal_lm(recipe, tmp_path / "out")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"runs": [{"method": "obs", "sparsity": 0.5}]}, "runs\\[0\\].method"),
        ({"runs": [{"method": "wanda"}]}, "sparsity .* or pattern"),
        ({"runs": [{"method": "wanda", "sparsity": 0.5, "pattern": "2:4"}]}, "exactly one"),
        ({"runs": [{"method": "wanda", "pattern": "4:2"}]}, "1 <= n < m"),
        ({"runs": [{"method": "wanda", "pattern": "half"}]}, "'n:m'"),
        ({"runs": [{"method": "wanda", "sparsity": 1.0}]}, "sparsity must be in \\(0, 1\\)"),
        ({"runs": [{"method": "wanda", "sparsity": 0.5}, {"method": "wanda", "sparsity": 0.5}]}, "named"),
        ({"runs": [{"method": "wanda", "sparsity": 0.5, "name": "../x"}]}, "not a usable name"),
        ({"runs": [{"method": "wanda", "sparsity": 0.5, "name": "report.json"}]}, "not a usable name"),
        ({"runs": []}, "at least one run"),
        ({"data": {"seq_len": 1}}, "data.seq_len"),
        ({"data": {"test_fraction": 0}}, "data.test_fraction"),
        ({"data": {"columns": {"label": "y"}}}, "one column, 'text'"),
        ({"data": {"files": {"dev": "a.txt"}}}, "data.files"),
        ({"data": {"calibration_samples": 0}}, "data.calibration_samples"),
        ({"data": {"sequence_len": 5}}, "Unknown key 'data.sequence_len'"),
        ({"checkpoint": {"save": False, "verify": True}}, "checkpoint.verify"),
        ({"checkpoint": {"format": "zip"}}, "checkpoint.format"),
    ],
)
def test_bad_recipe_values_are_recipe_errors_with_the_key_and_line(tmp_path, change, message):
    doc = {"task": "causal-lm", "model": {"name": "smollm2-135m"}, "runs": [{"method": "wanda", "sparsity": 0.5}]}
    doc.update(change)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(RecipeError, match=message) as info:
        load_causal_lm_recipe(path)
    assert str(path) in str(info.value)


def test_recipe_of_another_task_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("task: lm\n")
    with pytest.raises(RecipeError, match="task: causal-lm"):
        load_causal_lm_recipe(path)


def test_packaged_recipe_loads_and_names_the_runs():
    root = Path(__file__).resolve().parents[2]
    recipe = load_causal_lm_recipe(root / "recipes" / "smollm2-oneshot.yaml")
    assert recipe.model.name == "smollm2-135m" and recipe.data.dataset == "convention-speeches"
    assert {r.label for r in recipe.runs} >= {"sparsegpt-50", "sparsegpt-2of4", "wanda-50", "magnitude-2of4"}


def test_run_labels_and_targets():
    assert OneShotRun(method="wanda", pattern="2:4").label == "wanda-2of4"
    assert OneShotRun(method="magnitude", sparsity=0.7).target_sparsity == 0.7
    assert OneShotRun(method="sparsegpt", pattern="4:8").target_sparsity == 0.5


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_non_decoder_is_refused_naming_its_family(tmp_path, family):
    folder = tmp_path / family
    tiny_model(family).save_pretrained(folder)
    recipe = _recipe(folder, {"dataset": str(tmp_path / "unused.txt")}, ALL_RUNS[:1])
    with pytest.raises(UnsupportedFamilyError, match="BERT" if family == "bert" else "T5") as info:
        run_causal_lm(recipe, tmp_path / "out")
    assert "causal-lm" in str(info.value)
    assert not (tmp_path / "out" / "report.json").exists()


def test_decoder_with_a_classification_head_is_refused():
    from transformers import LlamaConfig

    config = LlamaConfig(architectures=["LlamaForSequenceClassification"])
    with pytest.raises(UnsupportedFamilyError, match="LlamaForSequenceClassification"):
        check_causal_decoder(config, "my-classifier")


def test_seq_len_beyond_the_model_positions_is_a_config_error(tiny_llama, tmp_path):
    recipe = _recipe(tiny_llama, {"dataset": str(tmp_path / "unused.txt"), "seq_len": 4096}, ALL_RUNS[:1])
    with pytest.raises(ConfigError, match="positions"):
        run_causal_lm(recipe, tmp_path / "out")
