"""Hostile recipes: names that would become paths outside the output folder, YAML alias bombs, deep nesting, huge
numbers and strings, bytes that are not UTF-8 text, control characters, tags that would run code.

Every case is generated (a hostile value at every key whose value names a file or folder, in every recipe format:
``compress``, staged, ``sweep``, ``lm``, ``recsys``; each bomb in every format), written to a file and read by the
loader of its format. Each must be refused with a :class:`~hf_sparse.errors.RecipeError` (never another exception,
never a traceback) whose message names the file, the key (and its line, where the file has one), and stays short
however large the hostile value; reading it must not use more than a few megabytes.

Complements ``test_recipe_corpus.py`` (mistakes a user makes); this file is what an attacker, or a corrupted file,
tries. The generator of documents and lines is shared with it.
"""

from __future__ import annotations

import copy
import dataclasses
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from test_recipe_corpus import PACKAGED, _dump, _dumped_line, _set

from hf_sparse.cli import main
from hf_sparse.errors import RecipeError
from hf_sparse.lm import load_lm_recipe
from hf_sparse.recipe_yaml import MAX_RECIPE_BYTES
from hf_sparse.recipes import DEFAULT_RECIPE, load_recipe
from hf_sparse.recsys.compress import load_recsys_recipe

Format = Literal["compress", "candidates", "staged", "sweep", "lm", "recsys"]

#: The packaged recipe each format starts from (a valid document; one thing is changed per case).
BASE: dict[str, str] = {
    "compress": "minilm-magnitude-pruning",
    "candidates": DEFAULT_RECIPE,
    "staged": "minilm-3layer-sparse-int8",
    "sweep": "minilm-pruning-sweep",
    "lm": "smollm2-windowed",
    "recsys": "movielens-sasrec",
    "distill": "minilm-distill-pruned",
}

LOADERS: dict[str, Callable[[Path], Any]] = {
    "compress": load_recipe,
    "candidates": load_recipe,
    "staged": load_recipe,
    "sweep": load_recipe,  # `hf-sparse sweep` reads its recipe with load_recipe
    "lm": load_lm_recipe,
    "recsys": load_recsys_recipe,
}

#: The longest message a case may produce (the values are quoted bounded; a 900 KB name must not make 900 KB).
MESSAGE_CAP = 1500
#: The most memory reading one hostile recipe may allocate (tracemalloc peak). The files are at most 1 MiB.
MEMORY_CAP = 48 * 2**20


@dataclasses.dataclass(frozen=True)
class Hostile:
    category: str
    name: str
    fmt: Format
    document: dict | str | bytes
    expect: tuple[str, ...]  # fragments of the message (the key, and what is wrong)
    line: int | None = None  # the 1-based line the message must give

    def write(self, folder: Path) -> Path:
        path = folder / "recipe.yaml"
        if isinstance(self.document, bytes):
            path.write_bytes(self.document)
        else:
            path.write_text(self.document if isinstance(self.document, str) else _dump(self.document), "utf-8")
        return path


def _base(key: str) -> dict:
    return copy.deepcopy(PACKAGED[BASE[key]])


def _text(key: str) -> str:
    return _dump(_base(key))


# -- names that become paths ------------------------------------------------------------------------------------------
#: Values that must never be accepted as a file or folder name: escapes, absolute paths, separators of any platform,
#: NUL and control characters, empty and dot names, reserved device names, look-alikes of '/' and '.', and sizes.
PATH_NAMES: dict[str, str] = {
    "dotdot": "..",
    "dot": ".",
    "empty": "",
    "space": " ",
    "up-one": "../x",
    "up-victim": "../victim",
    "up-deep": "../../../../../../etc/passwd",
    "up-trailing": "a/../../b",
    "abs-etc": "/etc/passwd",
    "abs-tmp": "/tmp/hf-sparse-escape",
    "abs-root": "/",
    "slash-inside": "a/b",
    "slash-trailing": "run/",
    "backslash": "a\\b",
    "backslash-up": "..\\..\\x",
    "windows-drive": "C:\\Windows",
    "unc": "\\\\server\\share",
    "nul": "a\0b",
    "newline": "a\nb",
    "tab": "a\tb",
    "escape": "a\x1b[31mb",
    "home": "~",
    "home-sub": "~/x",
    "hidden": ".hidden",
    "dash": "-rf",
    "trailing-dot": "name.",
    "inner-dotdot": "a..b",
    "con": "CON",
    "nul-device": "nul.txt",
    "com1": "com1",
    "lpt9": "LPT9.log",
    "long-101": "a" * 101,
    "long-100k": "b" * 100_000,
    "fullwidth-solidus": "a\uff0fb",
    "division-slash": "a\u2215b",
    "one-dot-leader": "\u2024\u2024",
    "fullwidth-dots": "\uff0e\uff0e",
    "rtl-override": "a\u202eb",
    "zero-width": "a\u200bb",
    "accented": "caf\u00e9",
    "colon": "a:b",
    "star": "*",
    "pipe": "a|b",
    "dollar": "$HOME",
    "percent-dotdot": "%2e%2e",
}

#: The keys whose value names something in the output folder, per format: (dotted key as the message gives it,
#: path of the value in the document, the base document).
NAME_KEYS: list[tuple[str, Format, str, str]] = [
    # (case label, format, dotted key in the message, base)
    ("name", "compress", "name", "compress"),
    ("name", "staged", "name", "staged"),
    ("stages[0].name", "staged", "stages[0].name", "staged"),
    ("candidates[1].name", "candidates", "candidates[1].name", "candidates"),
    ("name", "sweep", "name", "sweep"),
    ("name", "lm", "name", "lm"),
    ("name", "recsys", "name", "recsys"),
]

#: Names a job writes itself: a recipe naming its run after one would overwrite it.
TAKEN: dict[Format, tuple[str, ...]] = {
    "compress": ("dense", "trainer", "plots", "report.json", "report.md", "recipe.yaml", "teacher-cache"),
    "lm": ("trainer", "report.json", "report.md", "recipe.yaml"),
    "recsys": ("dense", "dense-continued", "trainer", "report.json"),
}


def _path_name_cases():
    for key, fmt, dotted, base in NAME_KEYS:
        for label, value in PATH_NAMES.items():
            doc = _set(_base(base), key, value)
            text = _dump(doc)
            yield Hostile("path-name", f"{fmt}-{key}-{label}", fmt, text, (dotted,), _dumped_line(text, key))
    # recsys run names are the keys of `runs`
    for label, value in PATH_NAMES.items():
        doc = _base("recsys")
        doc["runs"] = {value: {"method": "qrow", "bits": 8}, **doc["runs"]}
        text = _dump(doc)
        yield Hostile("path-name", f"recsys-runs-key-{label}", "recsys", text, ("runs",), _dumped_line(text, "runs"))
    # distillation.cache_dir: a folder the job writes, so inside the output folder (plain names, '/' between)
    for label, value in PATH_NAMES.items():
        if label in ("slash-inside", "slash-trailing"):
            continue  # a relative path of plain names is a valid cache folder (slash-trailing: its empty part fails)
        doc = _set(_base("distill"), "distillation.cache_dir", value)
        text = _dump(doc)
        yield Hostile(
            "path-name",
            f"compress-cache_dir-{label}",
            "compress",
            text,
            ("distillation.cache_dir",),
            _dumped_line(text, "distillation.cache_dir"),
        )
    for fmt, names in TAKEN.items():
        for value in names:
            key = "name"
            base = "staged" if fmt == "compress" else fmt
            doc = _set(_base(base), key, value)
            if fmt == "recsys":
                doc["runs"] = {value: {"method": "qrow", "bits": 8}}
                key = "runs"
            text = _dump(doc)
            yield Hostile(
                "path-name", f"{fmt}-taken-{value}", fmt, text, (key, "writes itself"), _dumped_line(text, key)
            )


# -- YAML bombs -------------------------------------------------------------------------------------------------------
def _laughs(levels: int = 9, width: int = 9, mapping: bool = False) -> str:
    """The billion-laughs document: each level refers ``width`` times to the one before (``width ** levels``
    values once expanded, from about 1 KB)."""
    lines = ['l0: &l0 "lol"']
    for i in range(1, levels + 1):
        refs = ", ".join(f"k{j}: *l{i - 1}" if mapping else f"*l{i - 1}" for j in range(width))
        lines.append(f"l{i}: &l{i} {{{refs}}}" if mapping else f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


def _bomb_documents() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Bodies of YAML bombs, as text put under a key, and the words the refusal must use."""
    many = "\n".join("  - *a" for _ in range(200))
    chain = ["d0: &d0 [x]"] + [f"d{i}: &d{i} [*d{i - 1}, *d{i - 1}]" for i in range(1, 25)]  # 2**24 values
    deep_chain = ["e0: &e0 [x]"] + [f"e{i}: &e{i} [[[[[[*e{i - 1}]]]]]]" for i in range(1, 12)]
    merge = ["m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8}"] + [
        f"m{i}: &m{i} {{<<: [*m{i - 1}], x{i}: [*m{i - 1}, *m{i - 1}, *m{i - 1}, *m{i - 1}, *m{i - 1}]}}"
        for i in range(1, 8)
    ]
    return {
        "billion-laughs": (_laughs(), ("more than", "aliases")),  # 81 aliases: refused by their count
        "laughs-list": (_laughs(levels=7), ("expands",)),  # 63 aliases, 9**7 values
        "laughs-map": (_laughs(levels=7, mapping=True), ("expands",)),
        "laughs-small": (_laughs(levels=6, width=6), ("expands",)),
        "many-aliases": ("a: &a [1]\nb:\n" + many + "\n", ("aliases",)),
        "doubling-chain": ("\n".join(chain) + "\n", ("expands",)),
        "alias-depth": ("\n".join(deep_chain) + "\n", ("levels",)),
        "merge-fan-out": ("\n".join(merge) + "\n", ("expands",)),
        "recursive-list": ("r: &r [1, *r]\n", ("cycle",)),
        "recursive-map": ("r: &r {a: 1, b: *r}\n", ("cycle",)),
    }


#: Where the bomb is put: as an unknown top-level key, or as the value of a real key of the format (its line is
#: the one of the last anchor that overflows; the refusal happens while composing, before any key is checked).
BOMB_PLACES: dict[Format, tuple[str, ...]] = {
    "compress": ("bomb", "model"),
    "staged": ("bomb", "stages"),
    "candidates": ("bomb", "candidates"),
    "sweep": ("bomb", "sweep"),
    "lm": ("bomb", "attention"),
    "recsys": ("bomb", "runs"),
}


def _bomb_cases():
    for fmt, places in BOMB_PLACES.items():
        for place in places:
            for label, (body, words) in _bomb_documents().items():
                doc = _base(fmt)
                doc.pop(place, None)
                indented = "".join("  " + line + "\n" for line in body.splitlines())
                text = _dump(doc) + f"{place}:\n{indented}"
                yield Hostile("alias-bomb", f"{fmt}-{place}-{label}", fmt, text, ("not valid YAML", *words))


# -- nesting ----------------------------------------------------------------------------------------------------------
def _nesting_cases():
    for fmt in ("compress", "lm", "recsys", "staged"):
        base = _text(fmt)
        for depth in (40, 200, 1000, 100_000):
            flow = "[" * depth + "1" + "]" * depth
            yield Hostile("deep-nesting", f"{fmt}-flow-list-{depth}", fmt, base + f"deep: {flow}\n", ("nested",))
        for depth in (40, 500):
            block = "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "v: 1\n"
            yield Hostile("deep-nesting", f"{fmt}-block-map-{depth}", fmt, base + "deep:\n" + block, ("nested",))
        flow_map = "{a: " * 300 + "1" + "}" * 300
        yield Hostile("deep-nesting", f"{fmt}-flow-map-300", fmt, base + f"deep: {flow_map}\n", ("nested",))


# -- numbers ----------------------------------------------------------------------------------------------------------
HUGE_NUMBERS: dict[str, str] = {
    "int-5000-digits": "1" * 5000,
    "negative-int-5000": "-" + "9" * 5000,
    "int-underscores": "1_" * 3000 + "1",
    "hex-5000": "0x" + "f" * 5000,
    "octal-5000": "0" + "7" * 5000,
    "sexagesimal": ":".join(["59"] * 2000),
    "float-5000": "1." + "5" * 5000,
    "exponent-5000": "1e" + "9" * 5000,
}
NUMBER_KEYS: dict[Format, tuple[str, ...]] = {
    "compress": ("data.seed", "model.max_length", "pruning.sparsity"),
    "lm": ("seed",),
    "recsys": ("users",),
}


def _number_cases():
    for fmt, keys in NUMBER_KEYS.items():
        for key in keys:
            for label, literal in HUGE_NUMBERS.items():
                doc = _set(_base(fmt), key, "@@NUMBER@@")
                text = _dump(doc)
                line = _dumped_line(text, key)
                text = text.replace("'@@NUMBER@@'", literal)
                yield Hostile("huge-number", f"{fmt}-{key}-{label}", fmt, text, ("characters",), line)


# -- bytes that are not UTF-8 text, control characters ----------------------------------------------------------------
def _encoding_cases():
    for fmt in ("compress", "lm", "recsys"):
        text = _text(fmt)
        lines = text.splitlines(keepends=True)
        at = 2  # the third line
        head = "".join(lines[:at]).encode()
        tail = "".join(lines[at:]).encode()
        for label, junk in {
            "latin1": "caf\xe9".encode("latin-1"),
            "lone-ff": b"\xff",
            "lone-continuation": b"\x80",
            "overlong-slash": b"\xc0\xaf",
            "surrogate": b"\xed\xa0\x80",
            "truncated": b"\xe2\x82",
            "beyond-unicode": b"\xf4\x90\x80\x80",
        }.items():
            doc = head + b"junk: " + junk + b"\n" + tail
            yield Hostile("non-utf8", f"{fmt}-{label}", fmt, doc, ("not a UTF-8 text file",), at + 1)
        yield Hostile("non-utf8", f"{fmt}-utf16", fmt, text.encode("utf-16"), ("not a UTF-8 text file",), None)
        for label, char in {
            "nul": "\x00",
            "bell": "\x07",
            "backspace": "\x08",
            "vertical-tab": "\x0b",
            "form-feed": "\x0c",
            "escape": "\x1b",
            "delete": "\x7f",
            "c1-csi": "\x9b",
            "noncharacter": "\ufffe",
        }.items():
            doc = "".join(lines[:at]) + f"junk: a{char}b\n" + "".join(lines[at:])
            yield Hostile("control-char", f"{fmt}-{label}", fmt, doc, ("control character",), at + 1)


# -- huge strings and files -------------------------------------------------------------------------------------------
def _huge_cases():
    big = "z" * 300_000  # 300 KB: a thousand times the message cap, and quick for the pure-Python scanner
    for fmt, key, expect in [
        ("compress", "name", "name"),
        ("compress", "pruning.criterion", "pruning.criterion"),
        ("compress", "checkpoint.format", "checkpoint.format"),
        ("compress", "sparsities", "sparsities"),
        ("staged", "stages[0].name", "stages[0].name"),
        ("candidates", "candidates[0].name", "candidates[0].name"),
        ("candidates", "selection.objective", "selection.objective"),
        ("lm", "name", "name"),
        ("lm", "attention.pattern", "attention.pattern"),
        ("recsys", "name", "name"),
        ("recsys", "model.hidden_size", "model.hidden_size"),
    ]:
        doc = _set(_base(fmt), key, big)
        text = _dump(doc)
        yield Hostile("huge-string", f"{fmt}-{key}", fmt, text, (expect,), _dumped_line(text, key))
    for fmt in ("compress", "lm", "recsys"):
        # an explicit key ("? "): a plain one longer than 1024 characters is refused by the YAML scanner already
        yield Hostile("huge-string", f"{fmt}-unknown-key", fmt, _text(fmt) + f"? {big}\n: 1\n", ("Unknown key",))
        yield Hostile("huge-string", f"{fmt}-plain-long-key", fmt, _text(fmt) + f"{big}: 1\n", ("not valid YAML",))
        many = "[" + ", ".join(["x"] * 15_000) + "]"
        key = {"compress": "sparsities", "lm": "eval.lengths", "recsys": "model.max_len"}[fmt]
        doc = _set(_base(fmt), key, "@@LIST@@")
        text = _dump(doc)
        line = _dumped_line(text, key)
        yield Hostile("huge-string", f"{fmt}-long-list", fmt, text.replace("'@@LIST@@'", many), (key,), line)
        yield Hostile(
            "huge-string", f"{fmt}-file-over-limit", fmt, _text(fmt) + "#" * (MAX_RECIPE_BYTES + 1), ("larger than",)
        )


# -- tags that would build Python objects, other YAML tricks ----------------------------------------------------------
def _tag_cases():
    tricks = {
        "python-apply": ('!!python/object/apply:os.system ["echo pwned"]', ("python/object/apply",)),
        "python-name": ("!!python/name:os.system", ("python/name",)),
        "python-module": ("!!python/module:os", ("python/module",)),
        "python-object-new": ("!!python/object/new:subprocess.Popen [[ls]]", ("python/object/new",)),
        "bad-timestamp": ("2001-13-45", ("cannot read this value",)),
    }
    for fmt in ("compress", "lm", "recsys"):
        for label, (value, expect) in tricks.items():
            key = {"compress": "model.name", "lm": "model.name", "recsys": "name"}[fmt]
            doc = _set(_base(fmt), key, "@@TAG@@")
            text = _dump(doc)
            line = _dumped_line(text, key)
            yield Hostile("yaml-tag", f"{fmt}-{label}", fmt, text.replace("'@@TAG@@'", value), expect, line)


def _all() -> list[Hostile]:
    cases = [
        *_path_name_cases(),
        *_bomb_cases(),
        *_nesting_cases(),
        *_number_cases(),
        *_encoding_cases(),
        *_huge_cases(),
        *_tag_cases(),
    ]
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), sorted({n for n in names if names.count(n) > 1})
    return cases


CASES = _all()


def test_the_hostile_corpus_covers_every_format_and_category():
    per = {}
    for case in CASES:
        per[case.category] = per.get(case.category, 0) + 1
    assert len(CASES) >= 300, per
    assert set(per) == {
        "path-name",
        "alias-bomb",
        "deep-nesting",
        "huge-number",
        "non-utf8",
        "control-char",
        "huge-string",
        "yaml-tag",
    }
    assert {c.fmt for c in CASES if c.category == "path-name"} == set(LOADERS)
    assert {c.fmt for c in CASES if c.category == "alias-bomb"} == set(LOADERS)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.category}-{c.name}")
def test_hostile_recipe_is_refused_naming_the_key(case: Hostile, tmp_path):
    path = case.write(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(RecipeError) as err:  # a RecipeError, never another exception type
            LOADERS[case.fmt](path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert len(message) < MESSAGE_CAP, f"{len(message)} characters: {message[:300]}..."
    assert str(path) in message, message
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in: {message}"
    if case.line is not None:
        assert f"{path}, line {case.line}:" in message, f"line {case.line} not in: {message}"
    assert peak < MEMORY_CAP, f"reading it allocated {peak / 2**20:.0f} MiB"


def _one_per_category() -> list[Hostile]:
    seen: dict[tuple[str, str], Hostile] = {}
    for case in CASES:
        seen.setdefault((case.category, case.fmt), case)
    return list(seen.values())


@pytest.mark.parametrize("case", _one_per_category(), ids=lambda c: f"{c.category}-{c.name}")
def test_cli_reports_a_hostile_recipe_without_a_traceback(case: Hostile, tmp_path, capsys):
    path = case.write(tmp_path)
    out = tmp_path / "out"
    command = {"lm": "lm", "recsys": "recsys", "sweep": "sweep"}.get(case.fmt, "compress")
    for argv in (["validate", str(path), "--no-model"], [command, str(path), "--output", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err and len(err) < MESSAGE_CAP + 100, err[:300]
    assert not out.exists() or not any(out.iterdir())
