"""The ``task: lm`` recipe: the packaged one loads and round-trips; wrong keys, types and values are refused with a
RecipeError naming the key (and its line); the pure parts of the job (pieces, NLL) on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from hf_sparse.cli import main
from hf_sparse.errors import RecipeError
from hf_sparse.lm import LmRecipe, load_lm_recipe, sequence_nll, split_into_pieces
from hf_sparse.recipes import packaged_recipes

VALID = """\
task: lm
name: small
model: {name: smollm2-135m}
data: {eval_documents: 1, train_documents: 2, seed: 3}
attention: {pattern: window, window: 64, global_positions: [0, 1]}
finetune: {steps: 2, learning_rate: 5e-5, batch_size: 1, seq_len: 128}
eval: {lengths: [128, 256]}
checkpoint: {verify: true, latency_rounds: 1}
"""


def _write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def _error(tmp_path, text: str) -> str:
    with pytest.raises(RecipeError) as err:
        load_lm_recipe(_write(tmp_path, text))
    return str(err.value)


def test_packaged_recipe_is_a_window_of_256_with_4_sinks_evaluated_at_2048():
    recipe = load_lm_recipe(packaged_recipes()["smollm2-windowed"])
    assert recipe.task == "lm" and recipe.model.name == "smollm2-135m"
    assert recipe.attention.pattern == "window" and recipe.attention.window == 256
    assert recipe.attention.global_positions == (0, 1, 2, 3)
    assert recipe.eval.longest == 2048
    assert LmRecipe.from_dict(recipe.to_dict()) == recipe
    assert LmRecipe.from_dict(yaml.safe_load(yaml.safe_dump(recipe.to_dict()))) == recipe


def test_valid_recipe_reads_every_section(tmp_path):
    recipe = load_lm_recipe(_write(tmp_path, VALID))
    assert recipe.data.train_documents == 2 and recipe.data.seed == 3
    assert recipe.finetune.learning_rate == pytest.approx(5e-5)  # written 5e-5: read as a float
    assert recipe.eval.lengths == (128, 256) and recipe.eval.longest == 256
    assert recipe.attention.global_positions == (0, 1)


def test_zero_fine_tuning_steps_are_allowed(tmp_path):
    recipe = load_lm_recipe(_write(tmp_path, VALID.replace("steps: 2", "steps: 0")))
    assert recipe.finetune.steps == 0


@pytest.mark.parametrize(
    "old, new, names, marker",
    [
        ("name: small\n", "name: small\nfinetun: {steps: 1}\n", ("finetun", "did you mean 'finetune'"), "finetun:"),
        ("steps: 2,", "stepz: 2,", ("finetune.stepz", "steps"), "stepz"),
        ("window: 64,", "windw: 64,", ("attention.windw",), "windw"),
        ("lengths: [128, 256]", "length: 256", ("eval.length",), "length:"),
    ],
)
def test_unknown_keys_are_refused_with_their_place_and_line(tmp_path, old, new, names, marker):
    text = VALID.replace(old, new)
    message = _error(tmp_path, text)
    assert "Unknown key" in message
    for name in names:
        assert name in message
    line = next(i for i, row in enumerate(text.splitlines(), 1) if marker in row)
    assert f"line {line}" in message, message


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("steps: 2", "steps: -1", "finetune.steps"),
        ("steps: 2", "steps: ten", "finetune.steps"),
        ("learning_rate: 5e-5", "learning_rate: 0", "finetune.learning_rate"),
        ("seq_len: 128", "seq_len: 1", "finetune.seq_len"),
        ("batch_size: 1", "batch_size: 0", "finetune.batch_size"),
        ("steps: 2", "steps: 2, lr_scheduler: cosine", "finetune.lr_scheduler"),
        ("lengths: [128, 256]", "lengths: []", "eval.lengths"),
        ("lengths: [128, 256]", "lengths: [1]", "eval.lengths"),
        ("lengths: [128, 256]", "lengths: [256, 256]", "eval.lengths"),
        ("lengths: [128, 256]", "lengths: 256", "eval.lengths"),
        ("eval_documents: 1", "eval_documents: 0", "data.eval_documents"),
        ("train_documents: 2", "train_documents: 0", "data.train_documents"),
        ("seed: 3", "seed: -1", "data.seed"),
        ("latency_rounds: 1", "latency_rounds: -1", "checkpoint.latency_rounds"),
        ("verify: true", "verify: maybe", "checkpoint.verify"),
        ("window: 64", "window: -5", "attention.window"),
        ("{pattern: window, window: 64, global_positions: [0, 1]}", "{pattern: lowrank}", "attention.pattern"),
        ("pattern: window", "pattern: window, causal: true", "attention.causal"),
        ("name: small", "name: a/b", "name"),
        ("name: small", "name: small\nthreads: 0", "threads"),
        ("model: {name: smollm2-135m}", "model: {name: ''}", "model.name"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path, old, new, key):
    assert old in VALID
    message = _error(tmp_path, VALID.replace(old, new, 1))
    assert key in message, message
    assert "recipe.yaml" in message


def test_other_recipe_kinds_and_broken_files_are_refused(tmp_path):
    assert "run it with `hf-sparse compress" in _error(tmp_path, VALID.replace("task: lm", "task: recsys"))
    assert "task is 'classify'" in _error(tmp_path, VALID.replace("task: lm", "task: classify"))
    assert "duplicate key 'name'" in _error(tmp_path, VALID + "name: again\n")
    assert "a recipe is a mapping" in _error(tmp_path, "- 1\n- 2\n")
    assert "not valid YAML" in _error(tmp_path, "task: [lm\n")
    with pytest.raises(RecipeError, match="No recipe file"):
        load_lm_recipe(tmp_path / "missing.yaml")


def test_cli_refuses_an_unknown_recipe(tmp_path, capsys):
    assert main(["lm", "no-such-recipe", "-o", str(tmp_path / "out")]) == 2
    assert "neither a file nor a packaged recipe" in capsys.readouterr().err
    assert main(["lm", str(_write(tmp_path, VALID.replace("steps: 2", "steps: -1"))), "-o", str(tmp_path)]) == 2
    assert "finetune.steps" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


def test_pieces_never_span_two_documents():
    docs = [{"ids": torch.arange(10).unsqueeze(0)}, {"ids": torch.arange(100, 107).unsqueeze(0)}]
    pieces = split_into_pieces(docs, 4)
    assert [p.tolist() for p in pieces] == [[0, 1, 2, 3], [4, 5, 6, 7], [100, 101, 102, 103]]
    assert split_into_pieces(docs, 11) == []


def test_sequence_nll_of_uniform_logits_is_log_vocab_per_token():
    vocab, length = 7, 5
    nll, tokens = sequence_nll(torch.zeros(1, length, vocab), torch.randint(0, vocab, (1, length)))
    assert tokens == length - 1
    assert math.exp(nll / tokens) == pytest.approx(vocab)
    # A model sure of every next token: zero loss; the first position is never scored.
    ids = torch.tensor([[3, 1, 4, 1]])
    logits = torch.full((1, 4, vocab), -1e4)
    logits[0, torch.arange(3), ids[0, 1:]] = 0.0
    logits[0, 3, 0] = 0.0
    assert sequence_nll(logits, ids)[0] == pytest.approx(0.0, abs=1e-6)


def _report(perplexities: dict[str, float], dense_control: bool) -> dict:
    """The smallest report ``render_lm_markdown`` reads: one length, the given pooled perplexities."""
    ft = {
        "steps": 3,
        "tokens_seen": 384,
        "pieces": 9,
        "losses": [3.0, 2.9, 2.8],
        "train_loss": 2.9,
        "train_s": 1.0,
        "weight_change": {"relative_l2": 1e-3, "tensors_changed": 2, "tensors": 2},
    }
    if dense_control:
        ft["dense_control"] = {**ft}
    return {
        "name": "r",
        "recipe": "r.yaml",
        "model": {"hub_id": "m", "parameters": 1e6},
        "attention": {"config": {"pattern": "window", "window": 8, "global_positions": [0]}, "layers": [0, 1]},
        "attention_path": {"cpu_kernel_refuses": []},
        "data": {"seed": 0, "eval_documents": [{"title": "T", "tokens": 64}], "train_documents": 2, "train_tokens": 9},
        "eval": {"lengths": [32]},
        "perplexity": {k: {"32": {"perplexity": v, "tokens": 31}} for k, v in perplexities.items()},
        "correctness": None,
        "finetune": ft,
        "checkpoint": {},
        "latency": None,
        "machine": {"cpu": "c", "cores": 2},
        "timings": {"total_s": 1.0},
    }


def test_markdown_measures_the_pattern_against_the_dense_control_after_fine_tuning():
    from hf_sparse.lm import render_lm_markdown

    md = render_lm_markdown(
        _report({"dense": 20.0, "windowed_before": 22.0, "windowed_after": 16.5, "dense_finetuned": 15.0}, True)
    )
    assert (
        "| 32 | 31 | 20.000 | 22.000 (+10.0% vs dense) | 16.500 (-17.5% vs dense) | 15.000 (-25.0% vs dense) |" in md
    )
    assert "+10.0% before, +10.0% after at 32 tokens" in md  # 16.5 against the control's 15.0, not the dense 20.0
    md = render_lm_markdown(_report({"dense": 20.0, "windowed_before": 22.0, "windowed_after": 21.0}, False))
    assert "No dense control was fine-tuned" in md and "dense control, after" not in md


def test_markdown_gives_the_latency_against_the_best_dense_configuration_and_the_machine():
    from hf_sparse.jobs.report import machine_label
    from hf_sparse.lm import render_lm_markdown

    report = _report({"dense": 20.0, "windowed_before": 22.0}, False)
    report["machine"] = {"cpu": "AMD EPYC", "uarch": "AMD Zen 4 (Genoa)", "cores": 2, "isa_flags": ["avx512_bf16"]}
    dense = {"fp32": 2.0, "bf16": 1.0, "torch-dynamic-int8": 0.8}
    report["latency"] = {
        "length": 32,
        "threads": 1,
        "rounds": 3,
        "ours_s": 1.0,
        "sdpa_full_s": 2.0,
        "speedup": 2.0,
        "speedup_min": 1.9,
        "speedup_max": 2.1,
        "dense_baselines_s": dense,
        "best_dense": "torch-dynamic-int8",
        "best_dense_s": 0.8,
        "ratio_vs_best_dense": 0.8,
        "ratio_vs_fp32": 2.0,
        "skipped_baselines": {"onnxruntime-dynamic-int8": "torch.onnx.export(dynamo=False) failed"},
    }
    md = render_lm_markdown(report)
    assert "**1.00 s vs 2.00 s, 2.00x**" in md  # against fp32 sdpa, as before
    assert (
        f"Against the best dense configuration of this machine ({machine_label(report['machine'])}), the same "
        "weights with sdpa full attention in torch-dynamic-int8: **1.00 s vs 0.80 s, 0.80x** (vs fp32: 2.00x)."
    ) in md
    row = "| pattern (hf_sparse attention) | 1000.00 | 2000.00 | 1000.00 | 800.00 | torch-dynamic-int8 | 0.80x | 2.00x"
    assert row in md
    assert "Not timed: `onnxruntime-dynamic-int8`: torch.onnx.export(dynamo=False) failed." in md
