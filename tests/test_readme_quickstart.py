"""The README's quickstart runs as written: its marked blocks (``<!-- ci: run ... -->`` before the fence) run in
order, in one folder holding a small ``my-model/`` and ``reviews.csv`` like the ones the text describes."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"<!-- ci: run[^>]*-->\n```(bash|python)\n(.*?)```", re.S)

pytestmark = pytest.mark.real  # the tokenizer is the packaged MiniLM's


def marked_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in MARK.finditer(text)]


def _write_user_files(folder: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hf_sparse.data import minilm_l6_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_l6_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    model = BertModel(config)
    model.save_pretrained(folder / "my-model")
    tokenizer.save_pretrained(folder / "my-model")
    rng = random.Random(0)
    words = {
        "good": ["great", "wonderful", "moving", "sharp", "funny"],
        "okay": ["fine", "uneven", "watchable", "modest", "average"],
        "bad": ["dull", "awful", "tedious", "clumsy", "boring"],
    }
    with open(folder / "reviews.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "rating"])
        for i in range(150):
            rating = ("good", "okay", "bad")[i % 3]
            picked = rng.sample(words[rating], 2)
            writer.writerow([f"A {picked[0]} film, {picked[1]} from start to end.", rating])


def test_the_quickstart_blocks_are_marked():
    blocks = marked_blocks((ROOT / "README.md").read_text())
    assert [kind for kind, _ in blocks] == ["bash", "python"]
    assert "hf-sparse compress --model my-model --data reviews.csv" in blocks[0][1]


def test_the_readme_quickstart_runs_as_written(tmp_path):
    _write_user_files(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["HF_HUB_OFFLINE"] = "1"
    for kind, code in marked_blocks((ROOT / "README.md").read_text()):
        command = ["bash", "-e", "-c", code] if kind == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{kind} block failed:\n{code}\n{done.stderr[-3000:]}"
        if kind == "python":
            assert "test accuracy" in done.stdout

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["labels"] == ["bad", "good", "okay"]
    (run,) = report["runs"]
    assert run["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert "test_macro_f1" in run and "test_macro_f1" in report["dense"]
    assert run["round_trip"]["identical_predictions"]
    recipe = (tmp_path / "out" / "recipe.yaml").read_text()
    assert "reviews.csv" in recipe and "my-model" in recipe
    assert (tmp_path / "my-model-sparse" / "config.json").is_file()
