"""Every script under ``examples/`` runs end to end, in seconds: each on tiny inputs given by its own flags (a small
random model written here, a few steps, seeded subsets of the data), in a fresh process as a user would start it.

A new example must be added to :data:`RUNS` (the test listing ``examples/*.py`` fails until it is)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme_quickstart import ROOT, write_user_files

pytestmark = pytest.mark.real  # the packaged MiniLM tokenizer, SmolLM2 tokenizer, speeches and MovieLens

EXAMPLES = ROOT / "examples"
CLASSIFIER = "--model my-model --data reviews.csv --text-column review --label-column rating"
QUICK = "--max-steps 3 --limit 30 --batch-size 8"

#: Each example's quick arguments, and a line its output must hold.
RUNS: dict[str, tuple[str, str]] = {
    "prune_with_trainer.py": (f"{CLASSIFIER} {QUICK} --output pruned", "reloaded with the same predictions: True"),
    "distil_student.py": (f"{CLASSIFIER} {QUICK} --output student", "reloaded with the same predictions: True"),
    "quantize_and_reload.py": (f"{CLASSIFIER} {QUICK} --output int8", "reloaded with the same logits: True"),
    "run_recipe.py": (
        "--model my-model --data reviews.csv --column text=review --column label=rating --max-steps 2 --limit 30 "
        "--latency-rounds 2 --output job",
        '"selection": true',
    ),
    "prune_causal_lm.py": (
        "--model tiny-llm --limit 10 --samples 4 --seq-len 32 --eval-tokens 256 --output pruned-lm",
        "reloaded with the same logits: True",
    ),
    "recommender_embeddings.py": (
        "--limit 60 --epochs 1 --finetune-epochs 1 --max-steps 3 --output rec",
        "reloaded with the same top 10 for every user: True",
    ),
}


def test_every_example_is_run_here():
    found = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert found == sorted(RUNS), f"examples without a quick run in tests/test_examples.py (or gone): {found}"


def test_every_example_says_what_it_does_and_how_long_it_takes():
    listed = (EXAMPLES / "README.md").read_text()
    for name in RUNS:
        assert f"]({name})" in listed, f"{name} is not in the table of examples/README.md"
        text = (EXAMPLES / name).read_text()
        assert text.startswith('"""') and "What it does" in text and "Time on the real" in text, name
        assert "argparse" in text and 'if __name__ == "__main__":' in text, name


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("examples")
    write_user_files(folder, layers=6)  # the default recipe's students drop layers 0, 2 and 4
    _write_tiny_llm(folder / "tiny-llm")
    return folder


def _write_tiny_llm(folder: Path) -> None:
    """A random 2-layer Llama with SmolLM2's tokenizer (read from the packaged GGUF file)."""
    from transformers import AutoTokenizer

    from hf_sparse.data import smollm2_gguf_path
    from hf_sparse.testing import tiny_causal_lm

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = tiny_causal_lm(vocab_size=len(tokenizer), tie_word_embeddings=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_example_runs(name, workdir):
    args, expected = RUNS[name]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(EXAMPLES / name), *args.split()]
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert expected in done.stdout, f"{name}: {expected!r} not in its output:\n{done.stdout[-3000:]}"
