"""Every relative link of ``README.md``, ``docs/*.md`` and ``examples/README.md`` leads somewhere: the file or folder
exists, and an ``#anchor`` is a heading of the target page (GitHub's anchors: lower case, punctuation dropped, spaces
as ``-``, ``-1``, ``-2`` ... for repeated headings)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(`{3,})")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]


def _prose(text: str, *, inline_code: bool = False) -> str:
    """The text outside code fences, and outside inline code unless ``inline_code`` (links there are not links)."""
    out, fence = [], None
    for line in text.split("\n"):
        match = FENCE.match(line.strip())
        if match and (fence is None or match.group(1) == fence):
            fence = None if fence else match.group(1)
            out.append("")
            continue
        out.append("" if fence else line if inline_code else re.sub(r"`[^`\n]*`", "", line))
    return "\n".join(out)


def slug(heading: str) -> str:
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in _prose(path.read_text(encoding="utf-8"), inline_code=True).split("\n"):
        match = re.match(r"#{1,6} (.+?)\s*#*\s*$", line)
        if match is None:
            continue
        base = slug(match.group(1))
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    raw = path.read_text(encoding="utf-8")
    found.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", raw))
    return found


def links(path: Path) -> list[str]:
    return LINK.findall(_prose(path.read_text(encoding="utf-8")))


def test_the_slugs_are_githubs():
    assert slug("Quickstart: your own model on your own data") == "quickstart-your-own-model-on-your-own-data"
    assert slug("Methods, `apply_` and your own method") == "methods-apply_-and-your-own-method"
    assert slug("Earlier results on AMD EPYC Zen 2 (AVX2 + FMA), against fp32") == (
        "earlier-results-on-amd-epyc-zen-2-avx2--fma-against-fp32"
    )
    assert slug("`hf_sparse.data`") == "hf_sparsedata"


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for path in doc_files():
        for target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            file_part, _, anchor = target.partition("#")
            where = (path.parent / unquote(file_part)).resolve() if file_part else path
            if not where.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
                continue
            if ROOT not in where.parents and where != ROOT:
                broken.append(f"{path.relative_to(ROOT)}: {target} (outside the repository)")
                continue
            if anchor and (where.suffix != ".md" or unquote(anchor) not in anchors(where)):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme_or_another_page():
    linked = set()
    for path in doc_files():
        for target in links(path):
            file_part = target.partition("#")[0]
            if file_part:
                linked.add((path.parent / unquote(file_part)).resolve())
    orphans = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not orphans, f"pages no other page links to: {orphans}"
