"""``docs/api.md`` is what the docstrings say now: regenerated in memory and compared with the committed file."""

from __future__ import annotations

import difflib
from pathlib import Path

from hf_sparse.testing.apidoc import COMMAND, render

API = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_the_api_reference_is_up_to_date():
    expected = render()
    actual = API.read_text(encoding="utf-8") if API.is_file() else ""
    if actual != expected:
        lines = difflib.unified_diff(actual.splitlines(True), expected.splitlines(True), "committed", "generated")
        diff = "".join(list(lines)[:60])
        raise AssertionError(f"docs/api.md is out of date: run `{COMMAND}` and commit the file.\n{diff}")


def test_the_api_reference_is_deterministic():
    assert render() == render()
    text = render()
    assert " at 0x" not in text and str(Path.home()) + "/" not in text
    assert "```python" not in text  # signatures are not runnable blocks
