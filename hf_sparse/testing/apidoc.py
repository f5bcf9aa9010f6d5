"""Writes the API reference, ``docs/api.md``, from the docstrings: every public name of ``hf_sparse`` and of its main
subpackages, with its signature and the first paragraph of its docstring. A maintenance tool, beside the test helpers
(``tests/test_docs_api.py`` fails when the committed file is not what it writes).

    python -m hf_sparse.testing.apidoc docs/api.md           # write (or rewrite) the file
    python -m hf_sparse.testing.apidoc --check docs/api.md   # exit 1 when the file is not what would be written

The output depends only on the code: names in a fixed order (grouped by kind, then sorted), default values written
without memory addresses or the user's home folder, sets sorted, registries and other mutable objects named by their
type and never listed.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MODULES", "COMMAND", "render", "main"]

#: The command that regenerates the file (named in the file and in the test's message).
COMMAND = "python -m hf_sparse.testing.apidoc docs/api.md"

#: The modules documented, in this order; each lists its ``__all__``.
MODULES = (
    "hf_sparse",
    "hf_sparse.data",
    "hf_sparse.pruning",
    "hf_sparse.distillation",
    "hf_sparse.quantization",
    "hf_sparse.lowrank",
    "hf_sparse.embeddings",
    "hf_sparse.attention",
    "hf_sparse.nn",
    "hf_sparse.ops",
    "hf_sparse.formats",
    "hf_sparse.recsys",
    "hf_sparse.integrations.peft",
    "hf_sparse.integrations.hub",
    "hf_sparse.testing",
)

#: The kinds of names, in the order a module's section lists them.
KINDS = ("Subpackages", "Functions", "Trainer callbacks", "Configs", "Modules", "Classes", "Errors", "Constants")

_LONG = 100  # a signature longer than this is written one parameter per line
_SHORT_VALUE = 80  # a default value or constant longer than this is written `...`


# -- text -----------------------------------------------------------------------------------------------------------
def _rst_to_markdown(text: str) -> str:
    """Docstring markup as Markdown: ````code```` -> `code`, ``:func:`~a.b.c``` -> `c`, ``:class:`a.b``` -> `a.b`."""
    text = re.sub(r":[a-z]+:`~?[^`<]*<([^>`]+)>`", lambda m: f"`{m.group(1).split('.')[-1]}`", text)
    text = re.sub(r":[a-z]+:`~([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", text)
    text = re.sub(r":[a-z]+:`([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    paragraph = inspect.cleandoc(doc).split("\n\n")[0].strip()
    if paragraph.endswith("::"):  # a paragraph that introduces a literal block
        paragraph = paragraph[:-1]
    return _rst_to_markdown(paragraph)


def _own_doc(obj: Any) -> str | None:
    """The docstring ``obj`` itself defines (not one inherited, not the one ``dataclasses`` makes up)."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        if doc and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
            return None
        return doc
    if inspect.isroutine(obj) or inspect.ismodule(obj):
        return obj.__doc__
    return None


def _clean(text: str) -> str:
    """A repr without memory addresses or the user's home folder."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
    home = str(Path.home())
    return text.replace(home, "~") if home not in ("/", "") else text


# -- values and signatures ------------------------------------------------------------------------------------------
def _value(value: Any) -> str:
    """A deterministic, short repr of a default value or constant."""
    if isinstance(value, (set, frozenset)):
        items = sorted(_value(v) for v in value)
        text = f"{type(value).__name__}({{{', '.join(items)}}})" if items else f"{type(value).__name__}()"
    elif isinstance(value, tuple) and not hasattr(value, "_fields"):
        items = [_value(v) for v in value]
        text = f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    elif isinstance(value, list):
        text = f"[{', '.join(_value(v) for v in value)}]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{_value(k)}: {_value(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, enum.Enum):
        text = f"{type(value).__name__}.{value.name}"
    elif inspect.isclass(value) or inspect.isroutine(value):
        text = getattr(value, "__qualname__", getattr(value, "__name__", type(value).__name__))
    elif value is None or isinstance(value, (bool, int, float, str, bytes, Path)):
        text = repr(value)
    elif type(value).__repr__ is object.__repr__:
        text = f"<{type(value).__name__}>"
    else:
        text = repr(value)
    text = _clean(text)
    return text if len(text) <= _SHORT_VALUE else "..."


def _annotation(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    return _clean(inspect.formatannotation(annotation))


def _dataclass_factories(obj: Any) -> dict[str, Callable[[], Any]]:
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        return {
            f.name: f.default_factory for f in dataclasses.fields(obj) if f.default_factory is not dataclasses.MISSING
        }
    return {}


def _read_signature(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _parameters(obj: Any) -> list[str] | None:
    """The parameters of ``obj``'s signature as text, or None when it has none Python can read."""
    signature = _read_signature(obj)
    if signature is None:
        return None
    factories = _dataclass_factories(obj)
    out: list[str] = []
    kinds = [p.kind for p in signature.parameters.values()]
    for i, p in enumerate(signature.parameters.values()):
        if p.kind is p.KEYWORD_ONLY and inspect.Parameter.VAR_POSITIONAL not in kinds and "*" not in out:
            out.append("*")
        text = {p.VAR_POSITIONAL: f"*{p.name}", p.VAR_KEYWORD: f"**{p.name}"}.get(p.kind, p.name)
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.name in factories:
            try:
                default = _value(factories[p.name]())
            except Exception:  # a factory that needs more than a call: name it
                default = "<factory>"
            text += f" = {default}"
        elif p.default is not p.empty:
            text += f" = {_value(p.default)}" if p.annotation is not p.empty else f"={_value(p.default)}"
        out.append(text)
        if p.kind is p.POSITIONAL_ONLY and (i + 1 == len(kinds) or kinds[i + 1] is not p.POSITIONAL_ONLY):
            out.append("/")
    return out


def _signature(qualified: str, obj: Any) -> str:
    params = _parameters(obj)
    if params is None:
        return f"{qualified}(...)"
    signature = _read_signature(obj)
    returns = ""
    if not inspect.isclass(obj) and signature.return_annotation is not signature.empty:
        returns = f" -> {_annotation(signature.return_annotation)}"
    one_line = f"{qualified}({', '.join(params)}){returns}"
    if len(one_line) <= _LONG:
        return one_line
    return qualified + "(\n" + "".join(f"    {p},\n" for p in params) + ")" + returns


# -- kinds ----------------------------------------------------------------------------------------------------------
def _kind(obj: Any) -> str:
    if inspect.ismodule(obj):
        return "Subpackages"
    if inspect.isclass(obj):
        from ..config import BaseConfig

        if issubclass(obj, BaseException):
            return "Errors"
        if issubclass(obj, BaseConfig):
            return "Configs"
        if _is_subclass(obj, "transformers", "TrainerCallback"):
            return "Trainer callbacks"
        if _is_subclass(obj, "torch.nn", "Module"):
            return "Modules"
        return "Classes"
    if inspect.isroutine(obj):
        return "Functions"
    return "Constants"


def _is_subclass(cls: type, module: str, name: str) -> bool:
    base = getattr(sys.modules.get(module), name, None)
    return isinstance(base, type) and issubclass(cls, base)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


# -- rendering ------------------------------------------------------------------------------------------------------
def _entry(qualified: str, obj: Any, kind: str) -> list[str]:
    lines = [f"#### `{qualified}`", ""]
    if kind == "Subpackages":
        pass
    elif kind == "Errors":
        bases = ", ".join(b.__name__ for b in obj.__bases__)
        lines += ["```text", f"class {qualified}({bases})", "```", ""]
    elif kind == "Constants":
        shown = _value(obj)
        simple = isinstance(obj, (bool, int, float, str, tuple, frozenset, type(None))) or (
            isinstance(obj, dict) and all(isinstance(v, (bool, int, float, str)) for v in obj.values())
        )
        simple = simple and not qualified.rsplit(".", 1)[-1].startswith("__")  # no version number: it changes
        text = f"{qualified}: {type(obj).__name__}" + (f" = {shown}" if simple and shown != "..." else "")
        lines += ["```text", text, "```", ""]
    else:
        prefix = "class " if inspect.isclass(obj) else ""
        lines += ["```text", prefix + _signature(qualified, obj), "```", ""]
    paragraph = _first_paragraph(_own_doc(obj))
    if paragraph:
        lines += [paragraph, ""]
    return lines


def render() -> str:
    """The text of ``docs/api.md``."""
    seen: dict[int, str] = {}  # id(object) -> the qualified name it is documented under
    sections: list[list[str]] = []
    contents: list[str] = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        by_kind: dict[str, list[tuple[str, Any]]] = {kind: [] for kind in KINDS}
        also: list[tuple[str, str]] = []
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            qualified = f"{module_name}.{name}"
            key = id(obj)
            simple_value = isinstance(obj, (bool, int, float, str, type(None)))
            if key in seen and not simple_value:
                also.append((name, seen[key]))
                continue
            if not simple_value:
                seen[key] = qualified
            by_kind[_kind(obj)].append((name, obj))
        heading = f"`{module_name}`"
        contents.append(f"- [{heading}](#{_anchor(heading)})")
        lines = [f"## {heading}", ""]
        intro = _first_paragraph(module.__doc__)
        if intro:
            lines += [intro, ""]
        for kind in KINDS:
            entries = sorted(by_kind[kind], key=lambda item: (item[0].lower(), item[0]))
            if not entries:
                continue
            lines += [f"### {kind} (`{module_name}`)", ""]
            for name, obj in entries:
                lines += _entry(f"{module_name}.{name}", obj, kind)
        if also:
            links = ", ".join(f"[`{name}`](#{_anchor(f'`{where}`')})" for name, where in sorted(also))
            lines += [f"Also here, documented above: {links}.", ""]
        sections.append(lines)
    head = [
        f"<!-- Generated from the docstrings by `{COMMAND}`; do not edit by hand. -->",
        "",
        "# API reference",
        "",
        "Every public name of `hf_sparse` and of its main subpackages: its signature and the first paragraph of its",
        "docstring (`help(name)` shows the rest). A name that several modules export is documented once, under the",
        "first of them here. How the pieces fit together: the [README](../README.md#concepts) and the how-to",
        "pages next to this one.",
        "",
        *contents,
        "",
    ]
    text = "\n".join(head + [line for lines in sections for line in lines])
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    if len(paths) != 1:
        print(f"usage: {COMMAND.replace(' docs/api.md', '')} [--check] PATH", file=sys.stderr)
        return 2
    path = Path(paths[0])
    text = render()
    if check:
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            print(f"{path} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
