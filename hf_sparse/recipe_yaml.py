"""The bounded YAML reading of recipe files: the safe loader with its limits (size, depth, aliases, nodes, number
length, control characters, duplicate keys), and validation of a read document into a config class with errors
that name the file, the line and the key. Every recipe kind (classification, causal LM, recommender) reads through
here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .config import BaseConfig
from .errors import ConfigError, RecipeError, quote

__all__ = [
    "read_recipe_yaml",
    "validate_recipe_document",
    "recipe_task",
    "parse_recipe_text",
    "load_task_recipe",
    "resolve_paths",
    "bounded_message",
    "MAX_RECIPE_BYTES",
    "MAX_RECIPE_DEPTH",
    "MAX_RECIPE_ALIASES",
    "MAX_RECIPE_NODES",
    "MAX_NUMBER_CHARS",
    "MAX_MESSAGE_CHARS",
]


#: Bounds of what a recipe file may hold. Recipes are a few kilobytes of hand-written settings; each bound is far
#: above any real one and far below what would cost noticeable memory or time (or blow Python's recursion limit).
MAX_RECIPE_BYTES = 1 << 20
#: Nesting of mappings and lists, counted along the document as aliases expand it.
MAX_RECIPE_DEPTH = 32
#: Alias uses (``*name``) in one file.
MAX_RECIPE_ALIASES = 64
#: Values in the document with every alias expanded (what the configs walk and an error message could show).
MAX_RECIPE_NODES = 20_000
#: Characters of an integer or float scalar (a seed needs 10; Python refuses ints of more than 4300 digits anyway).
MAX_NUMBER_CHARS = 64
#: The longest error message a recipe can cause: the tail is cut (values are quoted bounded already; this is the
#: guarantee for whatever text a parser or a check adds).
MAX_MESSAGE_CHARS = 4000

#: Characters YAML refuses, and a recipe never needs: C0 controls but tab, newline and carriage return; DEL; C1.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ufffe\uffff]")


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-5`` as a float (YAML 1.1 wants ``5.0e-5``; people write ``5e-5``), refuses
    a key written twice in one mapping (plain YAML keeps the last one and silently drops the first), and bounds what
    a small file can expand into: nesting depth, alias uses, the size of the document with aliases expanded (a
    "billion laughs" file of under 1 KB is refused while it is composed, before any value is built), and the length
    of numbers (a 5000-digit integer would raise a bare ValueError in ``int``)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_RECIPE_ALIASES:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"more than {MAX_RECIPE_ALIASES} aliases (*name); each copies what it refers to, and a recipe "
                    "needs few: write the values out",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_RECIPE_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_RECIPE_DEPTH} levels deep (no recipe setting is)",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            # e.g. a timestamp with month 13: the constructor's own error, placed at the value's line
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({type(exc).__name__}: {quote(str(exc))})", node.start_mark
            ) from None

    def _number_scalar(self, node) -> str:
        value = self.construct_scalar(node)
        if len(value) > MAX_NUMBER_CHARS:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"a number of {len(value)} characters (at most {MAX_NUMBER_CHARS}); no recipe setting needs it",
                node.start_mark,
            )
        return value

    def construct_yaml_int(self, node):
        self._number_scalar(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node):
        self._number_scalar(node)
        return super().construct_yaml_float(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], yaml.Node] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # merge keys (<<) may be overridden on purpose
                first = seen.setdefault((key_node.tag, key_node.value), key_node)
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {quote(key_node.value)} (first on line {first.start_mark.line + 1}); "
                        "each key may appear once",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


_RecipeLoader.add_constructor("tag:yaml.org,2002:int", _RecipeLoader.construct_yaml_int)
_RecipeLoader.add_constructor("tag:yaml.org,2002:float", _RecipeLoader.construct_yaml_float)
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a composed document that aliases make huge, deep or cyclic once expanded (the configs walk every
    value as if it were written out). Iterative, with each shared node measured once: a billion-laughs file costs
    a few hundred steps here."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) with aliases expanded
    open_ = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]

    def children(node):
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return list(node.value) if isinstance(node, yaml.SequenceNode) else []

    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            kids = [done[id(c)] for c in children(node)]
            size = 1 + sum(k[0] for k in kids)
            depth = 1 + max((k[1] for k in kids), default=0)
            done[key] = (size, depth)
            if size > MAX_RECIPE_NODES or depth > MAX_RECIPE_DEPTH:
                what = (
                    f"expands (through aliases) to more than {MAX_RECIPE_NODES} values"
                    if size > MAX_RECIPE_NODES
                    else f"expands (through aliases) to more than {MAX_RECIPE_DEPTH} levels of nesting"
                )
                raise yaml.composer.ComposerError(None, None, f"this value {what}", node.start_mark)
            continue
        if key in done:
            continue
        if key in open_:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to a value that contains it (a cycle)", node.start_mark
            )
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children(node))


def bounded_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to ``limit`` characters (what a recipe's error can show is bounded, whatever produced it)."""
    return message if len(message) <= limit else message[: limit - 40] + f" ... [{len(message) - limit + 40} more]"


def read_recipe_yaml(path: str | Path) -> tuple[Any, Any]:
    """The YAML document of a recipe file and its node tree (which keeps each key's line, for error messages),
    read with the recipes' loader: ``5e-5`` is a float, a key written twice is refused, and the file's size, its
    nesting, its aliases and its numbers are bounded (see :data:`MAX_RECIPE_BYTES` and the limits after it). Every
    recipe format (``compress``, ``sweep``, ``lm``, ``recsys``) is read through here.

    Raises:
        RecipeError: the file cannot be read, is too large, is not UTF-8 text, holds control characters, is not
            YAML or exceeds a bound (the message gives the file and, where there is one, the line).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror or type(exc).__name__}).") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(
            f"{path}: larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a few kilobytes of settings (is this "
            "the right file?)."
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"{path}, line {line}: not a UTF-8 text file (byte {exc.start} cannot be decoded); save the recipe as "
            "UTF-8."
        ) from None
    control = _CONTROL.search(text)
    if control is not None:
        line = text.count("\n", 0, control.start()) + 1
        column = control.start() - (text.rfind("\n", 0, control.start()) + 1) + 1
        raise RecipeError(
            f"{path}, line {line}: control character U+{ord(control.group()):04X} at column {column}; a recipe is "
            "plain text (write it as an escape inside double quotes if a value really needs it)."
        )
    loader = _RecipeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_expansion(root)
        data: Any = None if root is None else loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        raise RecipeError(bounded_message(f"{where}: not valid YAML: {exc}")) from None
    except RecursionError:  # not reachable within the bounds above; kept so no recipe ever gives a traceback
        raise RecipeError(f"{path}: nested too deeply to read.") from None
    finally:
        loader.dispose()
    return data, root


def load_task_recipe(path: str | Path, cls: type[BaseConfig], task: str, keys: str) -> Any:
    """Read and validate the recipe file ``path`` of a job with a loader of its own (``task: lm``, ``causal-lm``):
    the recipes' dialect and bounds, a ``task:`` other than ``task`` refused with the command that runs it, the
    errors anchored at the key's line.

    Args:
        cls: The job's recipe class.
        task: The ``task:`` value the class reads.
        keys: The top-level keys an error message suggests (``"task: lm, model:, data: ..."``).

    Raises:
        RecipeError: the file is missing or not YAML, is another kind of recipe, or a key or value is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"No recipe file {quote(str(path))}.")
    data, root = read_recipe_yaml(path)
    if isinstance(data, dict) and data.get("task") is not None and recipe_task(data) != task:
        raise RecipeError(
            f"{path}: task is {quote(data.get('task'))}, but this loader reads `task: {task}` recipes; run it with "
            f"`hf-sparse compress {path}`, which picks the job from its task."
        )
    if isinstance(data, dict):
        data.pop("version", None)
    # relative paths: against the recipe file's folder, as every recipe's
    return resolve_paths(validate_recipe_document(cls, data, root, path, keys), path.resolve().parent)


def parse_recipe_text(text: str) -> Any:
    """A recipe's YAML text read in the recipes' dialect (``5e-5`` is a float, a key written twice is an error), for
    text the package wrote itself (a starter recipe); files go through :func:`read_recipe_yaml` and its bounds."""
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def recipe_task(data: Any) -> str | None:
    """The ``task:`` of a read recipe document (``lm``, ``recsys``), or None (a classification recipe)."""
    task = data.get("task") if isinstance(data, dict) else None
    return task if isinstance(task, str) else None


def validate_recipe_document(cls: type[BaseConfig], data: Any, root: Any, path: str | Path, kind: str):
    """``cls.from_dict(data)`` of a document :func:`read_recipe_yaml` read from ``path``, with any ConfigError
    turned into a RecipeError that names the file, the line of the key (when the file holds it) and the key.

    Args:
        kind: What the mapping holds, for the message when the document is not a mapping.
    """
    if not isinstance(data, dict):
        raise RecipeError(
            f"{path}: a recipe is a mapping of sections and settings ({kind}), got a {type(data).__name__}: "
            f"{quote(data, 60)}."
        )
    try:
        return cls.from_dict(data)
    except ConfigError as exc:
        line = _key_line(root, str(exc))
        where = f"{path}, line {line}" if line is not None else str(path)
        raise RecipeError(bounded_message(f"{where}: {exc}")) from None
    except RecursionError:  # not reachable within the loader's bounds; no recipe ever gives a traceback
        raise RecipeError(f"{path}: nested too deeply to validate.") from None


#: The dotted key a ConfigError message is about: quoted in ``Unknown key 'pruning.sparsty'`` / ``Missing required
#: key ...``, else the message's first word (``pruning.sparsity must be ...``, ``in pruning: ...``, ``lowrank: ...``).
_QUOTED_KEY = re.compile(r"(?:Unknown|Missing required) key '([^']+)'")
_LEADING_KEY = re.compile(r"(?:in )?([A-Za-z_][\w\-]*(?:\.[^\s:,;'()]+|\[\d+\])*)")


def _key_line(node: yaml.Node | None, message: str) -> int | None:
    """1-based line, in the YAML document composed as ``node``, of the key a ConfigError ``message`` names (the
    deepest part of its dotted path that the document holds), or None when the message names no key of it."""
    quoted = _QUOTED_KEY.search(message)
    leading = _LEADING_KEY.match(message)
    dotted = quoted.group(1) if quoted else leading.group(1) if leading else None
    if not dotted:
        return None
    line, rest = None, dotted
    while rest and node is not None:
        if isinstance(node, yaml.MappingNode):
            # The longest key that starts the rest of the path: keys may hold dots (regexes in ``tables``).
            matches = [
                (key, value)
                for key, value in node.value
                if isinstance(key, yaml.ScalarNode)
                and (rest == key.value or rest.startswith((key.value + ".", key.value + "[")))
            ]
            if not matches:
                break
            key, node = max(matches, key=lambda kv: len(kv[0].value))
            line, rest = key.start_mark.line + 1, rest[len(key.value) :].removeprefix(".")
        elif isinstance(node, yaml.SequenceNode):
            index = re.match(r"\[(\d+)\]", rest)
            if index is None or int(index.group(1)) >= len(node.value):
                break
            node = node.value[int(index.group(1))]
            line, rest = node.start_mark.line + 1, rest[index.end() :].removeprefix(".")
        else:
            break
    return line


def _local_path(value: str, base: Path, *, must_exist: bool) -> str | None:
    """``value`` as an absolute path: as it is when absolute, else ``base / value`` (``~`` expanded). ``must_exist``:
    None unless that path exists (the value may be a Hub id or an alias instead)."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if must_exist and not path.exists():
        return None
    return str(path.resolve()) if path.exists() else str(path)


def resolve_paths(recipe: Any, base: str | Path) -> Any:
    """``recipe`` with its relative local paths made absolute against ``base``: ``data.files`` (always paths),
    ``data.dataset``, ``model.name`` and a model folder in ``distillation.student_from`` where ``base / value`` exists
    (otherwise they are a packaged name, an alias or a Hub id, or a folder relative to the working folder, and stay
    as written). Every recipe loader resolves against the recipe file's folder (the
    classification, causal-lm, lm and recsys recipes alike), so a recipe runs the same from any working folder, and
    the resolved recipe a job saves (``recipe.yaml``, absolute paths) runs from anywhere too.
    """
    base = Path(base)
    data, model = getattr(recipe, "data", None), getattr(recipe, "model", None)
    changes: dict = {}
    files = getattr(data, "files", None)
    dataset = getattr(data, "dataset", None)
    if files is not None:
        resolved = {split: _local_path(p, base, must_exist=False) for split, p in files.items()}
        if resolved != files:
            changes["data"] = data.replace(files=resolved)
    elif dataset is not None and dataset != type(data)().dataset:  # the section's default is a packaged data set
        found = _local_path(dataset, base, must_exist=True)
        if found is not None and found != dataset:
            changes["data"] = data.replace(dataset=found)
    distil = getattr(recipe, "distillation", None)
    start = getattr(distil, "start_model", None)  # distillation.student_from when it names a model folder
    if isinstance(start, str):
        found = _local_path(start, base, must_exist=True)
        if found is not None and found != start:
            changes["distillation"] = distil.replace(student_from=found)
    name = getattr(model, "name", None)
    if isinstance(name, str) and name not in _model_aliases():
        found = _local_path(name, base, must_exist=True)
        if found is not None and found != name:
            changes["model"] = model.replace(name=found)
    return recipe.replace(**changes) if changes else recipe


def _model_aliases() -> dict:
    from .data import MODEL_ALIASES

    return MODEL_ALIASES
