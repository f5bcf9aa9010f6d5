"""A generated corpus of broken recipes: every one must be refused before any training, by ``load_recipe`` or by
``preflight``, with a :class:`~hf_sparse.errors.RecipeError` whose message names the offending key (its dotted
place in the file, and its line when the loader can find it) or, for a bad combination, the keys involved.

The cases are generated, not written out: the wrong-type, unknown-key and impossible-value cases come from walking
the dataclass fields of :class:`~hf_sparse.recipes.Recipe` (and of :class:`~hf_sparse.recsys.compress.RecsysRecipe`)
recursively, so a field added to any section is covered the day it is added. Each case starts from a packaged recipe
that holds the section it breaks (or a small valid section where no packaged recipe has one), changes one thing,
and is written to a temporary file. ``test_every_base_document_is_valid`` checks that the starting points are sound,
so a case fails for the reason it was built for.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Union

import pytest
import yaml

from hf_sparse import compress as compress_module
from hf_sparse.cli import main
from hf_sparse.compress import preflight, run_compress
from hf_sparse.config import BaseConfig, anchor_message
from hf_sparse.errors import RecipeError
from hf_sparse.recipe_yaml import _RecipeLoader
from hf_sparse.recipes import DEFAULT_RECIPE, Recipe, load_recipe, packaged_recipes
from hf_sparse.recsys.compress import RecsysRecipe, load_recsys_recipe

RECSYS_RECIPE = "movielens-sasrec"
LoaderName = Literal["recipe", "recsys"]
Stage = Literal["load", "preflight"]

#: Valid sections for the recipe sections no packaged recipe holds (added to the default recipe).
EXTRA_SECTIONS: dict[str, dict[str, Any]] = {
    "regularization": {
        "l1": 1.0e-5,
        "group_lasso": 1.0e-4,
        "dropconnect": 0.1,
        "gates": ["head", "neuron"],
        "gate_penalty": 0.1,
        "gate_target_density": 0.5,
    },
    "guard": {"stages": [0.5, 0.8], "steps_per_stage": 10, "validation_examples": 64},
}

#: The key, by field name, of the configs inside free-keyed mappings (``embeddings.tables.<key>``, recsys
#: ``runs.<key>``): the one the packaged recipes use, so the case changes that entry.
MAPPING_SAMPLE_KEY = {"tables": "word_embeddings", "runs": "int8"}

#: Where ``-1`` is a valid setting (by declaring class and field), the negative probe uses ``-2`` instead.
NEGATIVE_PROBE = {"TrainSection.max_steps": -2, "QuantizationConfig.freeze_observers_step": -2}
NEGATIVE_ITEM_PROBE = {"DistillationConfig.layer_map": -2}


# -- documents ----------------------------------------------------------------------------------------------------
def _read(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass


#: The flat packaged recipe most cases start from (the default job compares candidates instead).
FLAT_RECIPE = "minilm-magnitude-pruning"


def _packaged_documents() -> dict[str, dict[str, Any]]:
    docs = {name: _read(path) for name, path in packaged_recipes().items()}
    # The flat pruning recipe first: sections it holds are broken in it.
    return {FLAT_RECIPE: docs.pop(FLAT_RECIPE), **docs}


PACKAGED = _packaged_documents()


#: The ``task:`` values ``load_recipe`` reads (the other packaged recipes have loaders of their own).
CLASSIFICATION_TASKS = (None, "classification", "text-classification", "token-classification", "masked-lm")


def _base_for(section: str, loader: LoaderName = "recipe") -> dict[str, Any]:
    """A valid document that holds ``section`` (top-level key): the first packaged recipe with it, else the default
    recipe with a small valid section added."""
    if loader == "recsys":
        return copy.deepcopy(PACKAGED[RECSYS_RECIPE])
    for doc in PACKAGED.values():
        if doc.get("task") in CLASSIFICATION_TASKS and section in doc:
            return copy.deepcopy(doc)
    doc = copy.deepcopy(PACKAGED[FLAT_RECIPE])
    if section in EXTRA_SECTIONS:
        doc[section] = copy.deepcopy(EXTRA_SECTIONS[section])
    return doc


def _parts(path: str) -> list[str]:
    return re.findall(r"[^.\[\]]+|\[\d+\]", path)


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``doc`` with the value at dotted ``path`` (``a.b``, ``a[0].b``) replaced; mappings and lists on the way are
    created where missing."""
    parts = _parts(path)
    node: Any = doc
    for i, part in enumerate(parts):
        key: Any = int(part[1:-1]) if part.startswith("[") else part
        if i == len(parts) - 1:
            node[key] = value
            break
        want = list if parts[i + 1].startswith("[") else dict
        present = key < len(node) if isinstance(node, list) else key in node
        if not present or not isinstance(node[key], want):
            new: Any = [{}] if want is list else {}
            if isinstance(node, list) and not present:
                node.append(new)
            else:
                node[key] = new
        node = node[key]
    return doc


#: libyaml's emitter when PyYAML has it (the same output, several times faster: the corpus writes ~2000 files).
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_DUMPER, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _dumped_line(text: str, path: str) -> int | None:
    """1-based line of dotted ``path`` in block-style YAML written by :func:`_dump`, found by indentation alone
    (an oracle independent of the loader's node tree). ``[i]`` is the i-th item of the list under its key (PyYAML
    writes a mapping's list items at the key's indentation, ``- `` first)."""
    # "- key: value" opens a list item: read it as "  key: value", one level deeper
    lines = [re.sub(r"^(\s*)- ", r"\1  ", line) for line in text.splitlines()]
    items = [re.match(r"\s*- ", line) is not None for line in text.splitlines()]
    at, depth, inclusive = -1, 0, False
    for part in _parts(path):
        start = at if inclusive else at + 1
        if part.startswith("["):
            # an item's keys sit one level under the list's key, as a mapping's would: depth stays
            level = "  " * depth
            starts = [i for i in range(start, len(lines)) if items[i] and lines[i].startswith(level)]
            starts = [i for i in starts if not lines[i].startswith(level + "  ")]
            if int(part[1:-1]) >= len(starts):
                return None
            at, inclusive = starts[int(part[1:-1])], True
            continue
        prefix = "  " * depth + part + ":"
        found = next((i for i in range(start, len(lines)) if lines[i].startswith(prefix)), None)
        if found is None:
            return None
        at, depth, inclusive = found, depth + 1, False
    return at + 1


# -- the field walk -----------------------------------------------------------------------------------------------
def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return tp, optional
    return tp, False


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseConfig)


@dataclasses.dataclass(frozen=True)
class Place:
    """Where a config class sits in the document (``prefix`` is ``""`` for the root, else ends with ``.``)."""

    prefix: str
    cls: type[BaseConfig]
    repeat: bool  # the class was met at an earlier place (``dense`` then ``pruned``; a section inside ``stages``)


@dataclasses.dataclass(frozen=True)
class Leaf:
    path: str  # dotted place in the document
    annotation: Any  # the field's annotation (Optional stripped)
    optional: bool
    section: str  # top-level key
    declared: str  # ``Class.field`` of the class that declares the field
    repeat: bool  # the field (of the class that declares it) was met at an earlier place: already broken there


def _walk(cls: type[BaseConfig], prefix: str = "", seen: set | None = None) -> Iterator[Place | Leaf]:
    """Every place a config class is reached from ``cls``, and every field under it: nested configs, optional ones,
    lists of configs (item ``[0]``) and mappings of them (``MAPPING_SAMPLE_KEY``)."""
    seen = set() if seen is None else seen
    yield Place(prefix, cls, cls in seen)
    seen.add(cls)
    hints = cls._field_types()
    for f in dataclasses.fields(cls):
        tp, optional = _strip_optional(hints[f.name])
        path = prefix + f.name
        # a field inherited from a class met before (StageQuantizationSection's from QuantizationConfig) is a repeat
        declared = next(c for c in reversed(cls.__mro__) if f.name in getattr(c, "__dataclass_fields__", {}))
        yield Leaf(path, tp, optional, _parts(path)[0], f"{declared.__name__}.{f.name}", (declared, f.name) in seen)
        seen.add((declared, f.name))
        if _is_config(tp):
            yield from _walk(tp, path + ".", seen)
        elif typing.get_origin(tp) is tuple and _is_config(typing.get_args(tp)[0]):
            yield from _walk(typing.get_args(tp)[0], f"{path}[0].", seen)
        elif typing.get_origin(tp) is dict and _is_config(typing.get_args(tp)[1]):
            yield from _walk(typing.get_args(tp)[1], f"{path}.{MAPPING_SAMPLE_KEY.get(f.name, 'sample')}.", seen)


def _leaves(cls: type[BaseConfig]) -> list[Leaf]:
    return [x for x in _walk(cls) if isinstance(x, Leaf)]


def _places(cls: type[BaseConfig]) -> list[Place]:
    return [x for x in _walk(cls) if isinstance(x, Place)]


def _wrong_values(tp: Any, optional: bool) -> list[tuple[str, Any]]:
    """``(kind, value)`` pairs of the wrong type for annotation ``tp``."""
    origin = typing.get_origin(tp)
    out: list[tuple[str, Any]] = []
    if origin is Literal:
        allowed = typing.get_args(tp)
        out = [("unlisted-str", "no-such-choice"), ("list", [allowed[0]])]
        if not any(isinstance(a, int) for a in allowed):
            out.append(("int", 3))
    elif origin is tuple:
        item = typing.get_args(tp)[0]
        bad_item = "x" if item in (int, float) else 5
        out = [("str", "abc"), ("mapping", {"a": 1}), ("bad-item", [bad_item])]
    elif origin is dict:
        value_tp = typing.get_args(tp)[1]
        out = [("list", [1, 2]), ("str", "abc"), ("bad-value", {"k": [] if _is_config(value_tp) else "x"})]
    elif _is_config(tp):
        out = [("list", [1, 2]), ("str", "on"), ("number", 3)]
    elif tp is float:
        out = [("str", "high"), ("list", [0.5]), ("bool", True), ("mapping", {"value": 0.5})]
    elif tp is int:
        out = [("str", "many"), ("float", 2.5), ("bool", True), ("list", [1])]
    elif tp is bool:
        out = [("str", "maybe"), ("int", 1), ("list", [True])]  # 'yes'/'no' are booleans in YAML 1.1
    elif tp is str:
        out = [("int", 5), ("bool", True), ("list", ["a"]), ("mapping", {"a": 1})]
    elif _is_name_or_names(tp):
        out = [("int", 5), ("list-of-int", [5])]  # one leaf of this family: two kinds, both tried
    else:  # a new kind of annotation: the corpus must learn it
        raise AssertionError(f"no wrong values known for {tp!r}")
    if not optional:
        out.append(("null", None))
    return out


def _is_name_or_names(tp: Any) -> bool:
    """``str | tuple[str, ...]``: a name or a list of names (e.g. ``checkpoint.numerics``)."""
    args = typing.get_args(tp) if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union else ()
    return len(args) == 2 and str in args and any(typing.get_origin(a) is tuple for a in args)


def _family(tp: Any) -> str:
    """The type family of an annotation, as :func:`_wrong_values` tells them apart."""
    if _is_name_or_names(tp):
        return "name-or-list"
    origin = typing.get_origin(tp)
    if origin in (Literal, tuple, dict):
        return {Literal: "choice", tuple: "list", dict: "mapping"}[origin]
    return "section" if _is_config(tp) else tp.__name__


def _typo(name: str, taken: list[str]) -> str:
    """A near-miss misspelling of ``name`` that is not another field: a letter dropped, or doubled if short."""
    candidates = [name + name[-1]] if len(name) <= 2 else []
    for i in [len(name) // 2, *range(1, len(name))]:
        candidates.append(name[:i] + name[i + 1 :])
    candidates += [name[:i] + name[i] + name[i:] for i in range(len(name))]
    return next(c for c in candidates if c not in taken and c and not c.endswith("_") and "__" not in c)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseConfig):
        return value.to_dict(header=False)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# -- cases --------------------------------------------------------------------------------------------------------
Document = dict | str | bytes | Callable[[Path], dict | str]


@dataclasses.dataclass(frozen=True)
class Case:
    """One broken recipe.

    Args:
        category: what kind of mistake.
        name: readable test id (unique).
        document: the recipe: a mapping (dumped as block YAML), raw text or bytes, or a function of ``tmp_path``
            returning either (for cases that need files beside the recipe).
        expect: fragments the error message must hold (the key's dotted place, or the keys involved).
        stage: ``"load"``: ``load_recipe`` refuses it; ``"preflight"``: it loads, and ``preflight`` refuses it.
        key: the dotted place of the offending key, whose line the load error must give (when it is in the file).
        loader: ``"recipe"`` (load_recipe + preflight) or ``"recsys"`` (load_recsys_recipe).
        xfail: why the library does not refuse it yet (a strict xfail: it fails once fixed, so the mark goes).
        wrong: for a wrong-type case, the family of the field's type and the kind of value written.
    """

    category: str
    name: str
    document: Document
    expect: tuple[str, ...]
    stage: Stage = "load"
    key: str | None = None
    loader: LoaderName = "recipe"
    xfail: str | None = None
    wrong: tuple[str, str] | None = None  # wrong-type cases: (family of the field's type, kind of wrong value)

    def write(self, folder: Path) -> Path:
        doc = self.document(folder) if callable(self.document) else self.document
        path = folder / "recipe.yaml"
        if isinstance(doc, bytes):
            path.write_bytes(doc)
        else:
            path.write_text(doc if isinstance(doc, str) else _dump(doc))
        return path


def _type_cases(root: type[BaseConfig], loader: LoaderName) -> Iterator[Case]:
    """Two wrong types per field (the kinds rotate from field to field, so every kind is tried on every type of
    field across the walk), and null where the field is not optional; one wrong type at a repeated field's place."""
    for i, leaf in enumerate(_leaves(root)):
        kinds = _wrong_values(leaf.annotation, leaf.optional)
        typed = [k for k in kinds if k[0] != "null"]
        chosen = [typed[i % len(typed)]] if leaf.repeat else [typed[i % len(typed)], typed[(i + 1) % len(typed)]]
        if not leaf.repeat:
            chosen += [k for k in kinds if k[0] == "null"]
        for kind, value in chosen:
            doc = _set(_base_for(leaf.section, loader), leaf.path, value)
            # the error is about the first item of a list, or the value under key 'k' of a mapping
            key = {"bad-item": f"{leaf.path}[0]", "bad-value": f"{leaf.path}.k"}.get(kind, leaf.path)
            yield Case(
                "wrong-type" if loader == "recipe" else "recsys",
                f"{loader}-type-{leaf.path}-{kind}",
                doc,
                (key,),
                key=key,
                loader=loader,
                wrong=(_family(leaf.annotation), kind),
            )


def _unknown_key_cases(root: type[BaseConfig], loader: LoaderName) -> Iterator[Case]:
    category = "unknown-key" if loader == "recipe" else "recsys"
    for place in _places(root):
        prefix, cls = place.prefix, place.cls
        section = _parts(prefix)[0] if prefix else ""
        fields = cls.field_names()
        defaults = {
            f.name: f.default
            if f.default is not dataclasses.MISSING
            else None
            if f.default_factory is dataclasses.MISSING
            else f.default_factory()
            for f in dataclasses.fields(cls)
        }
        bogus = _set(_base_for(section, loader), prefix + "colour", "red")
        yield Case(
            category,
            f"{loader}-unknown-{prefix or 'top.'}colour",
            bogus,
            (f"'{prefix}colour'",),
            key=prefix + "colour",
            loader=loader,
        )
        for field in [] if place.repeat else fields:  # misspelt fields: once per class
            typo = _typo(field, fields)
            doc = _set(_base_for(section or field, loader), prefix + typo, _plain(defaults[field]))
            yield Case(
                category,
                f"{loader}-typo-{prefix}{typo}",
                doc,
                (f"Unknown key '{prefix}{typo}'", f"did you mean '{field}'"),
                key=prefix + typo,
                loader=loader,
            )


def _probe_cases(root: type[BaseConfig], loader: LoaderName) -> Iterator[Case]:
    """Numbers no setting can take: NaN and infinities for every float, a negative number for every number (and
    every list of numbers), each written into an otherwise valid document. A field met again at another place
    (``pruned`` after ``dense``, sections inside ``stages``) was probed at the first: its checks are the same."""
    category = "impossible-value" if loader == "recipe" else "recsys"
    for leaf in _leaves(root):
        if leaf.repeat:
            continue
        tp = leaf.annotation
        probes: list[tuple[str, Any, str]] = []
        if tp is float:
            probes += [("nan", math.nan, leaf.path), ("inf", math.inf, leaf.path), ("-inf", -math.inf, leaf.path)]
        if tp in (int, float):
            probes.append(("negative", NEGATIVE_PROBE.get(leaf.declared, -1), leaf.path))
        if typing.get_origin(tp) is tuple and typing.get_args(tp)[0] in (int, float):
            probes.append(("negative-item", [NEGATIVE_ITEM_PROBE.get(leaf.declared, -1)], leaf.path))
            if typing.get_args(tp)[0] is float:
                probes.append(("nan-item", [math.nan], f"{leaf.path}[0]"))
        if typing.get_origin(tp) is dict and typing.get_args(tp)[1] in (int, float):
            probes.append(("negative-value", {"query": -1}, leaf.path))
        for kind, value, key in probes:
            yield Case(
                category,
                f"{loader}-{kind}-{leaf.path}",
                _set(_base_for(leaf.section, loader), leaf.path, value),
                (key,),
                key=key,
                loader=loader,
            )


#: Values outside each setting's range, beyond the generated probes (path, value).
OUT_OF_RANGE: list[tuple[str, Any]] = [
    ("version", 2),
    ("version", "1"),
    ("pruning.version", 0),
    ("model.name", ""),
    ("model.name", "   "),
    ("model.max_length", 4),
    ("data.dataset", ""),
    ("data.files", {"test": "t.csv"}),
    ("data.validation_fraction", 1.0),
    ("data.validation_fraction", 0.0),
    ("data.test_fraction", 1.5),
    ("data.train_limit", 1),
    ("data.test_limit", 0),
    ("data.seed", 2**32),
    ("dense.learning_rate", 0.0),
    ("dense.epochs", 0),
    ("dense.max_steps", 0),
    ("dense.batch_size", 0),
    ("dense.gradient_accumulation_steps", 0),
    ("dense.warmup_fraction", 1.0),
    ("pruned.logging_steps", 0),
    ("pruned.seed", 2**32),
    ("pruning.sparsity", 1.0),
    ("pruning.sparsity", 1.5),
    ("pruning.initial_sparsity", 0.9),
    ("pruning.criterion", "magnitud"),
    ("pruning.granularity", "rows"),
    ("pruning.schedule", "linear"),
    ("pruning.block", [4]),
    ("pruning.block", [0, 4]),
    ("pruning.block", []),
    ("pruning.n", 5),
    ("pruning.m", 0),
    ("pruning.update_every", 0),
    ("pruning.stages", 0),
    ("pruning.regrow_fraction", 1.5),
    ("pruning.calibration_samples", 0),
    ("pruning.target_modules", ["("]),
    ("pruning.exclude_modules", ["[a-"]),
    ("pruning.layer_sparsity", {"bert.encoder.layer.0.attention.self.query": 1.0}),
    ("sparsities", [1.0]),
    ("sparsities", [0.5, 1.2]),
    ("checkpoint.format", "zip"),
    ("checkpoint.batch_hint", 0),
    ("checkpoint.min_sparsity", 1.5),
    ("sweep.criteria", []),
    ("sweep.criteria", ["magnitud"]),
    ("sweep.granularities", []),
    ("sweep.granularities", ["head"]),
    ("sweep.sparsities", []),
    ("sweep.sparsities", [1.0]),
    ("structured.heads_fraction", 1.0),
    ("structured.neurons_fraction", 1.5),
    ("structured.min_heads_per_layer", 0),
    ("structured.layers_to_drop", [1, 1]),
    ("structured.criterion", "l2"),
    ("regularization.dropconnect", 1.0),
    ("regularization.groups", ["layer"]),
    ("regularization.gates", ["head", "head"]),
    ("regularization.gate_init_keep", 1.0),
    ("regularization.gate_temperature", 0.0),
    ("regularization.gate_limits", [0.1, 1.1]),
    ("regularization.gate_limits", [-0.1, 1.1, 2.0]),
    ("regularization.gate_target_density", 1.5),
    ("regularization.gate_lr_multiplier", 0.0),
    ("guard.stages", []),
    ("guard.stages", [0.8, 0.5]),
    ("guard.stages", [0.5, 1.0]),
    ("guard.validation_examples", 1),
    ("sensitivity.sparsities", []),
    ("sensitivity.sparsities", [1.0]),
    ("sensitivity.validation_examples", 0),
    ("distillation.alpha", 1.5),
    ("distillation.temperature", 0.0),
    ("distillation.student_from", "teacher"),
    ("distillation.teacher", ""),
    ("distillation.hidden_loss", "l1"),
    ("quantization.weight.bits", 3),
    ("quantization.weight.bits", 2),
    ("quantization.weight.group_size", 0),
    ("quantization.weight.percentile", 50.0),
    ("quantization.weight.averaging_constant", 0.0),
    ("quantization.weight.granularity", "row"),
    ("quantization.embedding.bits", 16),
    ("quantization.module_bits", {"query": 6}),
    ("quantization.bit_schedule", [8, 9]),
    ("quantization.calibration_samples", 0),
    ("quantization.sensitivity_batches", 0),
    ("quantization.min_sparsity", 1.5),
    ("quantization.mode", "int8"),
    ("quantization.convert_format", "coo"),
    ("attention.pattern", "sparse"),
    ("attention.block_q", 0),
    ("attention.block_q", 512),
    ("attention.block", 0),
    ("attention.dilation", 0),
    ("attention.rank", 0),
    ("attention.top_k", 0),
    ("attention.layer_windows", {"0": -1}),
    ("attention.layer_windows", {"(": 16}),
    ("lowrank.rank", 0),
    ("lowrank.energy", 1.5),
    ("lowrank.compression", 1.0),
    ("lowrank.sparse_density", 1.0),
    ("lowrank.schedule_end", 0.0),
    ("lowrank.round_to", 0),
    ("lowrank.min_rank", 0),
    ("lowrank.prox_every", 0),
    ("lowrank.update_every", 0),
    ("lowrank.embedding_compression", 1.0),
    ("lowrank.embedding_rank", 0),
    ("lowrank.module_ranks", {"query": 0}),
    ("lowrank.module_ranks", {"(": 8}),
    ("lowrank.mode", "slowly"),
    ("embeddings.tables", {}),
    ("embeddings.tables", {"(": {"method": "qrow"}}),
    ("embeddings.tables.word_embeddings.bits", 3),
    ("embeddings.tables.word_embeddings.method", "zip"),
    ("embeddings.tables.word_embeddings.compression", 1.0),
    ("embeddings.tables.word_embeddings.fit_lr", 0.0),
    ("embeddings.tables.word_embeddings.num_hashes", 0),
    ("embeddings.tables.word_embeddings.shared_rows", 0),
    ("embeddings.tables.word_embeddings.hot_bits", 16),
    ("embeddings.tables.word_embeddings.op", "xor"),
]


def _out_of_range_cases() -> Iterator[Case]:
    for path, value in OUT_OF_RANGE:
        doc = _set(_base_for(_parts(path)[0]), path, value)
        shown = re.sub(r"[^\w.\-\[\]]", "_", repr(value))[:24]
        yield Case("impossible-value", f"range-{path}={shown}", doc, (path,), key=path)


def _with(name: str, **changes: Any) -> dict[str, Any]:
    """The packaged recipe ``name`` with top-level ``changes`` (a None value removes the key)."""
    doc = copy.deepcopy(PACKAGED[name])
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


#: Cases preflight refuses, but with a message that does not name the recipe key yet.
PREFLIGHT_GAPS: dict[str, str] = {}
#: Cases nothing refuses yet (the library part that should is named in the reason).
UNREFUSED: dict[str, str] = {}


def _combination_cases() -> Iterator[Case]:
    """Settings each valid alone that cannot go together: (name, document, keys the message names, stage)."""
    low = "minilm-lowrank-half"
    table: list[tuple[str, dict[str, Any], tuple[str, ...], Stage]] = [
        ("lowrank-with-sparsity", _with(low, sparsities=[0.5]), ("lowrank", "sparsities"), "load"),
        ("lowrank-with-pruning-sparsity", _with(low, sparsities=None), ("lowrank", "sparsities"), "load"),
        (
            "lowrank-gradual-with-embeddings",
            _with(low, lowrank={"rank": 8, "mode": "gradual", "embeddings": ["word_embeddings"], "embedding_rank": 8}),
            ("lowrank", "mode", "embeddings"),
            "load",
        ),
        (
            "lowrank-oneshot-nuclear",
            _with(low, lowrank={"rank": 8, "nuclear_weight": 0.1}),
            ("lowrank.nuclear_weight", "gradual"),
            "load",
        ),
        (
            "lowrank-two-rank-rules",
            _with(low, lowrank={"rank": 8, "energy": 0.9}),
            ("lowrank", "rank", "energy"),
            "load",
        ),
        ("lowrank-no-rank-rule", _with(low, lowrank={"round_to": 8}), ("lowrank", "rank", "compression"), "load"),
        (
            "lowrank-embeddings-without-size",
            _with(low, lowrank={"rank": 8, "embeddings": ["word_embeddings"]}),
            ("lowrank", "embedding_rank", "embedding_compression"),
            "load",
        ),
        (
            "lowrank-embeddings-two-sizes",
            _with(
                low,
                lowrank={
                    "rank": 8,
                    "embeddings": ["word_embeddings"],
                    "embedding_rank": 8,
                    "embedding_compression": 0.5,
                },
            ),
            ("lowrank", "embedding_rank", "embedding_compression"),
            "load",
        ),
        (
            "sensitivity-lowrank-without-compression",
            _with(low, lowrank={"rank": 8}, sensitivity={"sparsities": [0.5]}),
            ("lowrank.compression", "sensitivity"),
            "load",
        ),
        ("zero-sparsity-alone", _with(FLAT_RECIPE, sparsities=[0.0, 0.5]), ("sparsities",), "load"),
        (
            "distillation-cache-with-attention",
            _with("minilm-distill-pruned", distillation={"alpha": 0.5, "attention_weight": 1.0}),
            ("distillation", "cache", "attention_weight"),
            "load",
        ),
        (
            "distillation-cache-dir-with-attention",
            _with(
                "minilm-distill-pruned", distillation={"cache": False, "cache_dir": "/tmp/x", "attention_weight": 1.0}
            ),
            ("distillation", "cache_dir", "attention_weight"),
            "load",
        ),
        (
            "distillation-every-term-off",
            _with("minilm-distill-pruned", distillation={"alpha": 0.0}),
            ("distillation", "alpha"),
            "load",
        ),
        (
            "nm-sparsity-mismatch",
            _with(FLAT_RECIPE, sparsities=None, pruning={"granularity": "nm", "n": 2, "m": 4, "sparsity": 0.7}),
            ("pruning.sparsity", "granularity", "n=2", "m=4"),
            "load",
        ),
        (
            "wanda-with-cubic",
            _with(FLAT_RECIPE, pruning={"criterion": "wanda", "schedule": "cubic"}),
            ("pruning.criterion", "schedule"),
            "load",
        ),
        (
            "sparsegpt-with-embeddings",
            _with(
                FLAT_RECIPE,
                pruning={"criterion": "sparsegpt", "schedule": "oneshot", "embeddings": ["word_embeddings"]},
            ),
            ("pruning.criterion", "pruning.embeddings"),
            "load",
        ),
        (
            "layer-sparsity-with-nm",
            _with(FLAT_RECIPE, sparsities=None, pruning={"granularity": "nm", "layer_sparsity": {"query": 0.5}}),
            ("pruning.layer_sparsity", "nm"),
            "load",
        ),
        (
            "rigl-with-blocks",
            _with(FLAT_RECIPE, pruning={"schedule": "rigl", "granularity": "block", "end_step": 100}),
            ("pruning.schedule", "granularity"),
            "load",
        ),
        (
            "embedding-rows-without-embeddings",
            _with(FLAT_RECIPE, pruning={"granularity": "embedding_row"}),
            ("pruning.granularity", "pruning.embeddings"),
            "load",
        ),
        (
            "head-granularity-with-wanda",
            _with(FLAT_RECIPE, pruning={"granularity": "head", "criterion": "wanda", "schedule": "oneshot"}),
            ("pruning.criterion", "granularity"),
            "load",
        ),
        (
            "end-before-start",
            _with(FLAT_RECIPE, pruning={"start_step": 100, "end_step": 10}),
            ("pruning.end_step", "start_step"),
            "load",
        ),
        (
            "epochs-and-steps-both-off",
            _with(FLAT_RECIPE, dense={"epochs": 0, "max_steps": -1}),
            ("dense", "epochs", "max_steps"),
            "load",
        ),
        (
            "fractions-sum-to-one",
            _with(FLAT_RECIPE, data={"validation_fraction": 0.5, "test_fraction": 0.5}),
            ("data.validation_fraction", "test_fraction"),
            "load",
        ),
        (
            "bit-schedule-ends-elsewhere",
            _with("minilm-qat-int8", quantization={"weight": {"bits": 4}, "bit_schedule": [8, 8]}),
            ("quantization.bit_schedule", "weight.bits"),
            "load",
        ),
        (
            "bit-schedule-increasing",
            _with("minilm-qat-int8", quantization={"weight": {"bits": 8}, "bit_schedule": [4, 8]}),
            ("quantization.bit_schedule",),
            "load",
        ),
        (
            "bit-schedule-end-before-start",
            _with(
                "minilm-qat-int8",
                quantization={"bit_schedule": [8], "schedule_start_step": 10, "schedule_end_step": 5},
            ),
            ("quantization", "schedule_start_step", "schedule_end_step"),
            "load",
        ),
        (
            "csr-with-asymmetric-weights",
            _with("minilm-qat-int8", quantization={"weight": {"symmetric": False}, "convert_format": "csr"}),
            ("quantization.convert_format", "weight.symmetric"),
            "load",
        ),
        (
            "static-activations-symmetric",
            _with("minilm-qat-int8", quantization={"activation": "static", "activation_scheme": {"symmetric": True}}),
            ("quantization.activation_scheme.symmetric",),
            "load",
        ),
        (
            "average-bits-outside-candidates",
            _with("minilm-qat-int8", quantization={"average_bits": 6.0, "bit_candidates": [8]}),
            ("quantization.average_bits",),
            "load",
        ),
        (
            "gate-penalty-without-gates",
            _with(FLAT_RECIPE, regularization={"gate_penalty": 0.1}),
            ("regularization.gate_penalty", "regularization.gates"),
            "load",
        ),
        (
            "group-lasso-without-groups",
            _with(FLAT_RECIPE, regularization={"group_lasso": 0.1, "groups": []}),
            ("regularization.group_lasso", "regularization.groups"),
            "load",
        ),
        (
            "lowrank-attention-causal",
            _with("minilm-window32", attention={"pattern": "lowrank", "causal": True}),
            ("attention", "lowrank", "causal"),
            "load",
        ),
        (
            "qrow-from-random",
            _with(
                "minilm-embedding-int4",
                embeddings={"tables": {"word_embeddings": {"method": "qrow", "init": "random"}}},
            ),
            ("embeddings.tables.word_embeddings", "qrow", "init"),
            "load",
        ),
        (
            "qat-with-qr",
            _with(
                "minilm-embedding-int4",
                embeddings={"tables": {"word_embeddings": {"method": "qr", "compression": 0.1, "qat": True}}},
            ),
            ("embeddings.tables.word_embeddings.qat", "qrow"),
            "load",
        ),
        (
            "hashed-without-size",
            _with("minilm-embedding-int4", embeddings={"tables": {"word_embeddings": {"method": "hashed"}}}),
            ("embeddings.tables.word_embeddings", "buckets", "compression"),
            "load",
        ),
        ("recsys-recipe-to-load-recipe", copy.deepcopy(PACKAGED[RECSYS_RECIPE]), ("recsys",), "load"),
        # -- refused by preflight, against the model --------------------------------------------------------------
        (
            "embeddings-table-names-no-embedding",
            _with("minilm-embedding-int4", embeddings={"tables": {"no_such_table": {"method": "qrow"}}}),
            ("embeddings.tables", "no_such_table"),
            "preflight",
        ),
        (
            "layer-sparsity-names-no-module",
            _with(FLAT_RECIPE, pruning={"layer_sparsity": {"bert.encoder.layer.9.output.dense": 0.5}}),
            ("pruning.layer_sparsity", "bert.encoder.layer.9.output.dense"),
            "preflight",
        ),
        (
            "pruning-targets-nothing",
            _with(FLAT_RECIPE, pruning={"target_modules": ["no_such_layer"]}),
            ("pruning", "target_modules"),
            "preflight",
        ),
        (
            "pruning-embeddings-names-no-embedding",
            _with(FLAT_RECIPE, pruning={"embeddings": ["word_embedings"]}),
            ("pruning.embeddings", "word_embedings"),
            "preflight",
        ),
        (
            "layers-to-drop-out-of-range",
            _with("minilm-structured", structured={"layers_to_drop": [6]}),
            ("structured.layers_to_drop",),
            "preflight",
        ),
        (
            "layers-to-drop-every-layer",
            _with("minilm-structured", structured={"layers_to_drop": [0, 1, 2, 3, 4, 5]}),
            ("structured.layers_to_drop",),
            "preflight",
        ),
        (
            "layer-map-wrong-length",
            _with("minilm-distill-3layer", distillation={"alpha": 0.7, "hidden_weight": 1.0, "layer_map": [1, 3]}),
            ("distillation.layer_map",),
            "preflight",
        ),
        (
            "layer-map-beyond-the-teacher",
            _with("minilm-distill-3layer", distillation={"alpha": 0.7, "hidden_weight": 1.0, "layer_map": [1, 3, 9]}),
            ("distillation.layer_map",),
            "preflight",
        ),
        (
            "lowrank-module-ranks-name-nothing",
            _with(low, lowrank={"compression": 0.5, "module_ranks": {"no_such_layer": 8}}),
            ("lowrank.module_ranks", "no_such_layer"),
            "preflight",
        ),
        (
            "lowrank-targets-nothing",
            _with(low, lowrank={"compression": 0.5, "target_modules": ["no_such_layer"]}),
            ("lowrank", "target_modules"),
            "preflight",
        ),
        (
            "lowrank-embeddings-name-nothing",
            _with("minilm-lowrank-embedding", lowrank={"embeddings": ["tokens"], "embedding_rank": 8}),
            ("lowrank.embeddings", "tokens"),
            "preflight",
        ),
        (
            "model-folder-missing",
            _with(FLAT_RECIPE, model={"name": "/no/such/model"}),
            ("model.name",),
            "preflight",
        ),
        (
            "pruning-block-does-not-divide",
            _with(FLAT_RECIPE, pruning={"granularity": "block", "block": [5, 5]}),
            ("pruning.block",),
            "preflight",
        ),
        (
            "quantization-targets-nothing",
            _with("minilm-qat-int8", quantization={"target_modules": ["no_such_layer"]}),
            ("quantization", "target_modules"),
            "preflight",
        ),
        (
            "quantization-embeddings-name-nothing",
            _with("minilm-qat-int8", quantization={"embedding": {"bits": 4}, "embedding_modules": ["tokens"]}),
            ("quantization", "tokens"),
            "preflight",
        ),
        (
            "regularization-targets-nothing",
            _with(FLAT_RECIPE, regularization={"l1": 1.0e-5, "target_modules": ["no_such_layer"]}),
            ("regularization", "target_modules"),
            "preflight",
        ),
        (
            "attention-layers-beyond-the-model",
            _with("minilm-window32", attention={"pattern": "window", "window": 32, "layers": [9]}),
            ("attention.layers",),
            "preflight",
        ),
        (
            "max-length-beyond-the-positions",
            _with(FLAT_RECIPE, model={"name": "minilm-l6", "max_length": 1024}),
            ("model.max_length",),
            "preflight",
        ),
        ("sparsities-empty", _with(FLAT_RECIPE, sparsities=[]), ("sparsities",), "load"),
        ("sparsities-repeated", _with(FLAT_RECIPE, sparsities=[0.5, 0.5]), ("sparsities",), "load"),
        ("sparsities-same-percent", _with(FLAT_RECIPE, sparsities=[0.5, 0.504]), ("sparsities",), "load"),
    ]
    for name, doc, expect, stage in table:
        xfail = PREFLIGHT_GAPS.get(name) or UNREFUSED.get(name)
        yield Case("combination", name, doc, expect, stage=stage, xfail=xfail)


def _teacher_folder(tmp_path: Path, **config: Any) -> str:
    from transformers import BertConfig

    folder = tmp_path / "teacher"
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=30522)
    BertConfig(**{**tiny, **config}).save_pretrained(folder)
    return str(folder)


def _teacher(make_teacher: Callable[[Path], str], **distillation: Any) -> Callable[[Path], dict]:
    def build(tmp_path: Path) -> dict:
        section = {"alpha": 0.7, "teacher": make_teacher(tmp_path), **distillation}
        return _with("minilm-distill-pruned", distillation=section)

    return build


def _teacher_cases() -> Iterator[Case]:
    def empty_folder(tmp_path: Path) -> str:
        (tmp_path / "empty").mkdir()
        return str(tmp_path / "empty")

    def not_a_model(tmp_path: Path) -> str:
        (tmp_path / "notes").mkdir()
        (tmp_path / "notes" / "config.json").write_text("{not json")
        return str(tmp_path / "notes")

    table: list[tuple[str, Callable[[Path], dict], tuple[str, ...], str | None]] = [
        ("missing-folder", _teacher(lambda p: "/no/such/folder"), ("distillation.teacher", "/no/such/folder"), None),
        ("missing-hub-id", _teacher(lambda p: "nobody/no-such-model-here"), ("distillation.teacher",), None),
        ("folder-without-config", _teacher(empty_folder), ("distillation.teacher",), None),
        ("folder-with-broken-config", _teacher(not_a_model), ("distillation.teacher",), None),
        (
            "other-vocabulary",
            _teacher(lambda p: _teacher_folder(p, vocab_size=1000)),
            ("distillation.teacher", "vocabulary", "1000"),
            None,
        ),
        (
            "three-labels",
            _teacher(lambda p: _teacher_folder(p, num_labels=3)),
            ("distillation.teacher", "labels", "3"),
            None,
        ),
        (
            "shallow-teacher-layer-map",
            _teacher(lambda p: _teacher_folder(p), hidden_weight=1.0, layer_map=[0, 1, 2, 3, 4, 5]),
            ("distillation.layer_map",),
            None,
        ),
    ]
    for name, build, expect, xfail in table:
        yield Case("teacher", f"teacher-{name}", build, expect, stage="preflight", xfail=xfail)


MALFORMED: list[tuple[str, str | bytes, tuple[str, ...]]] = [
    ("tab-indent", "pruning:\n\tsparsity: 0.5\n", ("not valid YAML", "line 2")),
    ("unclosed-bracket", "sparsities: [0.5, 0.8\npruning:\n  sparsity: 0.5\n", ("not valid YAML",)),
    ("unclosed-brace", "pruning: {sparsity: 0.5\n", ("not valid YAML",)),
    ("unclosed-quote", 'name: "minilm\n', ("not valid YAML",)),
    ("bad-indent", "pruning:\n  sparsity: 0.5\n end_step: 3\n", ("not valid YAML", "line 3")),
    ("value-after-value", "pruning: sparsity: 0.5\n", ("not valid YAML", "line 1")),
    ("list-at-top", "- pruning\n- dense\n", ("mapping",)),
    ("scalar-at-top", "just some words\n", ("mapping",)),
    ("number-at-top", "42\n", ("mapping",)),
    ("empty-file", "", ("empty",)),
    ("only-comments", "# nothing here yet\n\n", ("empty",)),
    (
        "duplicate-top-key",
        "pruning:\n  sparsity: 0.5\nsparsities: [0.5]\npruning:\n  end_step: 3\n",
        ("duplicate", "pruning", "line 4"),
    ),
    (
        "duplicate-nested-key",
        "pruning:\n  end_step: 30\n  update_every: 5\n  end_step: 40\n",
        ("duplicate", "end_step", "line 4"),
    ),
    ("python-tag", "name: !!python/object/apply:os.system [ls]\n", ("not valid YAML",)),
    ("two-documents", "name: a\n---\nname: b\n", ("not valid YAML",)),
    ("not-utf8", b"name: caf\xe9\n", ("UTF-8",)),
    ("section-is-a-string", "pruning: magnitude\n", ("pruning",)),
    ("section-left-empty", "pruning:\nsparsities: [0.5]\n", ("pruning",)),
]


def _malformed_cases() -> Iterator[Case]:
    for name, text, expect in MALFORMED:
        yield Case("malformed-yaml", f"yaml-{name}", text, expect)
    for name, text, expect in MALFORMED[:8] + MALFORMED[11:15]:
        yield Case("recsys", f"recsys-yaml-{name}", text, expect, loader="recsys")


def _recsys_cases() -> Iterator[Case]:
    """The recommender recipe's own sections, through ``load_recsys_recipe``."""
    yield from _type_cases(RecsysRecipe, "recsys")
    yield from _unknown_key_cases(RecsysRecipe, "recsys")
    yield from _probe_cases(RecsysRecipe, "recsys")
    for path, value in [
        ("model.hidden_size", 0),
        ("model.num_attention_heads", 3),
        ("model.max_len", 1),
        ("model.dropout", 1.0),
        ("dense.epochs", 0),
        ("finetune.learning_rate", 0.0),
        ("finetune.batch_size", 0),
        ("users", 1),
        ("runs.int8.bits", 3),
        ("runs.int8.method", "zip"),
        ("runs.dense", {"method": "qrow"}),
        ("runs.a/b", {"method": "qrow"}),
        ("task", "classify"),
    ]:
        doc = _set(_base_for("", "recsys"), path, value)
        key = "runs" if path in ("runs.dense", "runs.a/b") else path
        yield Case("recsys", f"recsys-range-{path}={value!r}", doc, (key,), key=key, loader="recsys")


def _all_cases() -> list[Case]:
    cases = [
        *_type_cases(Recipe, "recipe"),
        *_unknown_key_cases(Recipe, "recipe"),
        *_probe_cases(Recipe, "recipe"),
        *_out_of_range_cases(),
        *_combination_cases(),
        *_teacher_cases(),
        *_malformed_cases(),
        *_recsys_cases(),
    ]
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"case names must be unique: {duplicates}"
    return cases


CASES = _all_cases()


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks)


# -- the tests ----------------------------------------------------------------------------------------------------
def _load(case: Case, path: Path) -> None:
    if case.loader == "recsys":
        load_recsys_recipe(path)
        return
    try:
        recipe = load_recipe(path)
    except RecipeError:
        assert case.stage == "load", "refused by load_recipe, but only preflight (which knows the model) should"
        raise
    assert case.stage == "preflight", "load_recipe accepted it"
    preflight(recipe)


def test_the_corpus_is_large_and_covers_every_category():
    counted = [c for c in CASES if c.xfail is None]
    per_category = {cat: sum(c.category == cat for c in counted) for cat in {c.category for c in CASES}}
    assert len(counted) >= 200, per_category
    assert set(per_category) == {
        "wrong-type",
        "unknown-key",
        "impossible-value",
        "combination",
        "teacher",
        "malformed-yaml",
        "recsys",
    }
    assert min(per_category.values()) >= 5, per_category
    # every leaf field of the recipe is broken by a wrong type, each kind of wrong value is tried on each family of
    # field type somewhere, and every config class gets an unknown key
    typed = {re.sub(r"(\[0\]|\.k)$", "", c.key) for c in CASES if c.category == "wrong-type" and c.key}
    assert {leaf.path for leaf in _leaves(Recipe)} <= typed
    tried = {c.wrong for c in CASES if c.category == "wrong-type"}
    wanted = {
        (_family(leaf.annotation), kind)
        for leaf in _leaves(Recipe)
        for kind, _ in _wrong_values(leaf.annotation, True)
    }
    assert wanted <= tried, sorted(wanted - tried)
    assert {f"{p.prefix}colour" for p in _places(Recipe)} <= {c.key for c in CASES if c.category == "unknown-key"}


def test_every_base_document_is_valid(tmp_path):
    """The starting point of every case loads and passes preflight, so each case fails for its own change."""
    sections = {leaf.section for leaf in _leaves(Recipe)}
    for section in sorted(sections):
        path = tmp_path / f"{section}.yaml"
        path.write_text(_dump(_base_for(section)))
        preflight(load_recipe(path))
    path = tmp_path / "recsys.yaml"
    path.write_text(_dump(_base_for("", "recsys")))
    load_recsys_recipe(path)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_broken_recipe_is_refused_naming_the_key(case: Case, tmp_path):
    path = case.write(tmp_path)
    with pytest.raises(RecipeError) as err:
        _load(case, path)
    message = str(err.value)
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in the message: {message}"
    if case.stage == "load":
        assert str(path) in message, message
    if case.stage == "load" and case.loader == "recipe" and case.key is not None and isinstance(case.document, dict):
        line = _dumped_line(path.read_text(), case.key)
        if line is not None:
            assert f"{path}, line {line}:" in message, f"line {line} of {case.key} not in: {message}"


def _samples() -> list[Case]:
    """One case of each category and stage (xfails aside), for the end-to-end check."""
    seen: dict[tuple[str, str], Case] = {}
    for case in CASES:
        if case.loader == "recipe" and case.xfail is None:
            seen.setdefault((case.category, case.stage), case)
    return list(seen.values())


@pytest.mark.parametrize("case", _samples(), ids=lambda c: f"{c.category}-{c.stage}-{c.name}")
def test_compress_refuses_before_any_training(case: Case, tmp_path, monkeypatch, capsys):
    """``hf-sparse compress`` (and ``run_compress`` for recipes that load) stop before the data is read."""

    def training_started(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(compress_module, "prepare_data", training_started)
    monkeypatch.setattr(compress_module, "finetune", training_started)
    path = case.write(tmp_path)
    out = tmp_path / "out"
    assert main(["compress", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "hf-sparse compress: error:" in err and all(f in err for f in case.expect), err
    if case.stage == "preflight":
        with pytest.raises(RecipeError):
            run_compress(load_recipe(path), out)
    assert not (out / "trainer").exists() and not (out / "dense").exists()


# -- the line of the offending key --------------------------------------------------------------------------------
LINES_RECIPE = """\
# a recipe with comments, flow mappings and lists
name: lines
model:
  name: minilm-l6
pruning:
  criterion: magnitude
  sparsity: {sparsity}
  block: [4, {block}]
  layer_sparsity:
    bert.encoder.layer.0.output.dense: 0.5
embeddings:
  tables:
    "bert\\\\.embeddings\\\\.word_embeddings": {{method: qrow, bits: {bits}}}
sparsities:
  - 0.5
  - {second}
dense: {{learning_rate: 5e-5, batch_size: {batch}}}
"""


@pytest.mark.parametrize(
    "change, line, fragment",
    [
        (dict(sparsity="1.5"), 7, "pruning.sparsity must be in [0, 1), got 1.5"),
        (dict(block="x"), 8, "pruning.block[1] must be of type int"),
        (dict(bits="3"), 13, r"embeddings.tables.bert\.embeddings\.word_embeddings.bits must be 2, 4 or 8"),
        (dict(second="1.5"), 14, "sparsities must each be in (0, 1)"),  # the message names no item: the list's key
        (dict(batch="0"), 17, "dense.batch_size must be >= 1, got 0"),
        (dict(batch="many"), 17, "dense.batch_size must be of type int"),
    ],
)
def test_load_errors_give_the_line_of_the_key(tmp_path, change, line, fragment):
    values = {**dict(sparsity="0.5", block="4", bits="4", second="0.8", batch="32"), **change}
    path = tmp_path / "r.yaml"
    path.write_text(LINES_RECIPE.format(**values))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}, line {line}: "), str(err.value)
    assert fragment in str(err.value)


def test_unknown_and_default_keys_point_at_their_line_or_section(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\n\npruning:\n  criterion: magnitude\n  sparsty: 0.5\n")
    with pytest.raises(RecipeError, match=r"r\.yaml, line 5: Unknown key 'pruning\.sparsty'.*did you mean 'sparsity'"):
        load_recipe(path)
    # initial_sparsity is checked against sparsity, which keeps its default: the line is the key that is written
    path.write_text("name: x\npruning:\n  criterion: magnitude\n  initial_sparsity: 0.9\n")
    with pytest.raises(RecipeError, match=r"line 4: pruning\.initial_sparsity"):
        load_recipe(path)
    # an error about a key the file does not hold points at the section
    path.write_text("name: x\ndata:\n  train_limit: 100\nlowrank: {mode: gradual}\nsparsities: [0.0]\n")
    with pytest.raises(RecipeError, match=r"line 4: lowrank"):
        load_recipe(path)


def test_anchor_message_names_the_recipe_key_of_a_nested_config():
    recipe = load_recipe("minilm-sparse-int8-kd")
    message = (
        "PruningConfig.embeddings: 'x' matches nothing; DistillationConfig.layer_map must; "
        "QuantizationConfig.weight.bits; TrainSection.seed; QuantScheme.bits; StructuredPruningConfig.heads_fraction"
    )
    assert anchor_message(recipe, message) == (
        "pruning.embeddings: 'x' matches nothing; distillation.layer_map must; quantization.weight.bits; "
        # dense and pruned are both TrainSections, weight and activation_scheme both QuantSchemes: left as they are
        "TrainSection.seed; QuantScheme.bits; StructuredPruningConfig.heads_fraction"
    )


def test_a_valid_empty_mapping_is_every_default_but_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("{}\n")
    assert load_recipe(path) == Recipe()
    path.write_text("\n# to do\n")
    with pytest.raises(RecipeError, match="empty") as err:
        load_recipe(path)
    assert "{}" in str(err.value) and DEFAULT_RECIPE in str(err.value)
