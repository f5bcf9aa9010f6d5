"""Every sub-package of hf_sparse is listed in pyproject.toml's packages (a wheel ships only those)."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_packaged():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "hf_sparse").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found, "no packages found"
    assert not found - listed, f"sub-packages missing from pyproject.toml's packages: {sorted(found - listed)}"
