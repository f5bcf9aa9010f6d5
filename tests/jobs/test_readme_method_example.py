"""The README's example of a method of one's own runs as written (in a fresh process: it registers a method)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### Methods, `apply_` and your own method"


def test_the_readme_method_example_runs_as_written():
    text = README.read_text()
    assert SECTION in text
    section = text[text.index(SECTION) :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("```", start)]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "{'scaled': 'classifier'}"
