"""The README's quickstart runs as written, and the harness every code block of the docs runs in.

Markers. The line right before a code fence in ``README.md`` or ``docs/*.md`` may be an HTML comment (GitHub does
not show it) that tells CI what to do with the block:

- ``<!-- ci: run -->``: run the block (``tests/test_docs_blocks.py`` runs every such ``python`` block);
- ``<!-- ci: run (tests/some_test.py) -->``: the named test runs it, in its own way (the quickstart's two blocks
  below run here, one after the other in one folder; the README's method example in
  ``tests/jobs/test_readme_method_example.py``);
- ``<!-- ci: skip (the reason) -->``: the block cannot run on a CPU-only CI machine (a CUDA GPU, the Hub, several
  processes); the reason is required and shown to the reader of the source;
- a ``run`` marker spanning several lines holds hidden set-up code after its first line, up to the closing
  ``-->``: it runs before the block, in the block's namespace. It defines what the text says the reader already
  has (``model``, ``args``, ``train`` ...), small and random (a tiny BERT, a tiny Llama, a few training steps), so
  that a block shows only what it is about and still runs as written.

Every ``python`` block carries a marker: ``tests/test_docs_blocks.py`` fails on one without.

Files. Each block runs in a fresh folder of its own holding what the quickstart describes: ``my-model/`` (a small
random BERT encoder written by ``save_pretrained``, with the packaged MiniLM's tokenizer) and ``reviews.csv`` (150
reviews: a ``review`` column, a ``rating`` column with the values ``bad``, ``good``, ``okay``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = "tests/test_readme_quickstart.py"
FENCE = re.compile(r"^(`{3,})(\S*)\s*$")
MARKER = re.compile(r"<!-- ci: (run|skip)\b\s*(?:\((.*?)\))?\s*(-->)?\s*$")

pytestmark = pytest.mark.real  # the tokenizer is the packaged MiniLM's


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file and its CI marker (``action`` None: no marker)."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    action: str | None = None
    note: str = ""
    setup: str = ""
    setup_line: int = 0  # 1-based line of the set-up code's first line

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def run_by(self) -> str | None:
        """The test file that runs this block itself (a ``tests/...py`` note), else None."""
        return self.note if re.fullmatch(r"tests/[\w/]+\.py", self.note) else None


def doc_files() -> list[Path]:
    """The Markdown files whose blocks CI checks: the README and every page under ``docs/``."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _marker_before(lines: list[str], fence: int) -> tuple[str | None, str, str, int]:
    """The marker ending on the line before ``lines[fence]``: (action, note, set-up code, set-up's first line)."""
    end = fence - 1
    if end < 0 or not lines[end].rstrip().endswith("-->"):
        return None, "", "", 0
    start = end
    while start >= 0 and "<!--" not in lines[start]:
        start -= 1
    if start < 0:
        return None, "", "", 0
    match = MARKER.match(lines[start].strip())
    if match is None:
        return None, "", "", 0
    action, note, closed = match.group(1), (match.group(2) or "").strip(), match.group(3)
    if closed:
        return action, note, "", 0
    if lines[end].strip() != "-->":
        raise ValueError(f"line {end + 1}: a multi-line ci marker ends with a line holding only '-->'")
    return action, note, "\n".join(lines[start + 1 : end]) + "\n", start + 2


def parse_blocks(path: Path) -> list[Block]:
    """Every fenced code block of ``path`` with its marker."""
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        ticks, language = match.groups()
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != ticks:
            j += 1
        action, note, setup, setup_line = _marker_before(lines, i)
        code = "\n".join(lines[i + 1 : j]) + "\n"
        blocks.append(Block(path, i + 1, language, code, action, note, setup, setup_line))
        i = j + 1
    return blocks


def write_user_files(folder: Path, layers: int = 2) -> None:
    """Write ``my-model/`` (a random BERT encoder of ``layers`` layers, hidden size 32, with the packaged MiniLM's
    tokenizer) and ``reviews.csv`` into ``folder``: the files the quickstart's text describes."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hf_sparse.data import minilm_l6_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_l6_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
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


def quickstart_blocks() -> list[Block]:
    return [b for b in parse_blocks(ROOT / "README.md") if b.run_by == THIS]


def test_the_quickstart_blocks_are_marked():
    blocks = quickstart_blocks()
    assert [b.language for b in blocks] == ["bash", "python"]
    assert "hf-sparse compress --model my-model --data reviews.csv" in blocks[0].code


def test_the_readme_quickstart_runs_as_written(tmp_path):
    write_user_files(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["HF_HUB_OFFLINE"] = "1"
    for block in quickstart_blocks():
        kind, code = block.language, block.code
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
