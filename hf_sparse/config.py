"""Base class of every hf_sparse configuration.

Configs are frozen, typed, versioned dataclasses. They validate on construction (types from the annotations, values
from each class's ``validate``), round-trip through plain dicts and JSON, and reject unknown keys with the key's
name and the allowed ones. Nested configs are validated the same way, and errors name the dotted path of the key
(``pruning.sparsity``) so a problem in a recipe can be found in the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

from .errors import ConfigError, quote
from .registry import CONFIGS

__all__ = ["BaseConfig", "register_config", "check_seed", "check_name", "anchor_message", "NAME_PATTERN"]

#: Seeds reach numpy (``np.random.seed``), which takes integers in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1

C = TypeVar("C", bound="BaseConfig")
_HEADER_KEYS = ("config_type", "version")


def register_config(name: str):
    """Class decorator: give a config class its ``config_type`` name and register it in :data:`CONFIGS`."""

    def _wrap(cls: type[C]) -> type[C]:
        cls.config_type = name
        CONFIGS.register(name, cls)
        return cls

    return _wrap


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"mapping of {_type_name(k)} to {_type_name(v)}"
    if isinstance(tp, type) and issubclass(tp, BaseConfig):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def check_seed(value: int, where: str) -> None:
    """Raise ConfigError unless ``value`` is a seed every RNG takes (numpy's range, [0, 2**32 - 1])."""
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{where} must be an integer in [0, 2**32 - 1] (numpy's seed range), got {value}.")


#: A name that becomes a file or folder name (a recipe's ``name``, a stage, a run): one path component of a portable
#: alphabet. The first character is a letter or digit, so a name is never ``.``, ``..``, hidden or an option.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

#: Names Windows reserves in every folder (with any extension), refused everywhere so an output folder copies there.
_RESERVED_NAMES = frozenset(
    ["con", "prn", "aux", "nul", "clock$"] + [f"{d}{i}" for d in ("com", "lpt") for i in range(10)]
)


def check_name(value: str, where: str, *, taken: tuple[str, ...] = ()) -> None:
    """Raise ConfigError unless ``value`` can name a file or folder inside an output folder: one path component of
    :data:`NAME_PATTERN` (letters, digits, ``.``, ``_``, ``-``; 1 to 100 characters, starting with a letter or
    digit), without ``..``, not ending in ``.``, not a name Windows reserves, and not one of ``taken`` (names the job
    writes itself)."""
    text = value if isinstance(value, str) else None
    why = None
    if text is None or not NAME_PATTERN.fullmatch(text):
        why = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
    elif ".." in text or text.endswith("."):
        why = "without '..' and not ending in '.'"
    elif text.split(".", 1)[0].lower() in _RESERVED_NAMES:
        why = "not a reserved device name (CON, NUL, COM1 ...)"
    elif text in taken:
        why = f"other than the names the job writes itself ({', '.join(taken)})"
    if why is not None:
        raise ConfigError(
            f"{where}: {quote(value)} is not a usable name: it names a file or folder inside the output folder, so it "
            f"must be one path component, {why}."
        )


def _key_text(key: Any) -> str:
    """A key as written into ``Unknown key '...'``: itself when short and printable (the form the loaders find the
    key's line from), else a bounded repr (a key may be a megabyte long or hold control characters)."""
    text = str(key) if isinstance(key, (str, int, float, bool)) or key is None else quote(key)
    return text if len(text) <= 100 and text.isprintable() and "'" not in text else quote(text, 100)


#: How alike (difflib's ratio) an unknown key and an allowed one must be for the allowed one to be suggested.
_SUGGEST_CUTOFF = 0.8


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with one letter changed, added, dropped, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        swapped = len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
        return len(diff) == 1 or swapped
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def _did_you_mean(key: Any, allowed: list[str]) -> str:
    """`` (did you mean 'x'?)`` where an allowed key is a near-miss of ``key`` (difflib ratio at least
    :data:`_SUGGEST_CUTOFF`, or one edit away), else nothing: a far-fetched hint (``task`` -> ``stages``) misleads
    more than none."""
    if not isinstance(key, str) or len(key) > 100:
        return ""
    lowered = {name.lower(): name for name in allowed if isinstance(name, str)}
    close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=_SUGGEST_CUTOFF)
    if not close:
        close = [name for name in lowered if _one_edit_apart(key.lower(), name)][:1]
    return f" (did you mean '{lowered[close[0]]}'?)" if close else ""


def _in_section(message: str, target: type[BaseConfig], path: str) -> str:
    """A ``validate()`` message of a config nested at ``path`` (``"pruning."``), anchored at its place in the
    document: class-name references (``PruningConfig.sparsity``, ``LowRankConfig:``) become dotted paths
    (``pruning.sparsity``, ``lowrank:``), a message that starts with the section's usual key or with a bare field
    name gets the path in front, and any other message is prefixed with ``in <section>:``.
    """
    section = path[:-1]
    names = sorted(
        {
            c.__name__
            for c in target.__mro__
            if isinstance(c, type) and issubclass(c, BaseConfig) and c is not BaseConfig
        },
        key=len,
        reverse=True,
    )
    message = re.sub(
        r"\b(?:" + "|".join(map(re.escape, names)) + r")\b(\.)?",
        lambda m: path if m.group(1) else section,
        message,
    )
    anchored = (section + " ", section + ":", section + ".", section + "[")
    if message == section or message.startswith(anchored):
        return message
    # A section class that names itself by its usual key (``quantization.calibration_samples``, ``overrides.rank``)
    # may sit elsewhere (``stages[0].quantization``, ``overrides[1]``): the leading key becomes the real place.
    usual = re.sub(r"\[\d+\]$", "", section.rsplit(".", 1)[-1])
    if usual != section and re.match(rf"{re.escape(usual)}(?=[ :.\[])", message):
        return section + message[len(usual) :]
    head = re.match(r"([A-Za-z_]\w*)(?=[ .\[:])", message)
    if head and head.group(1) in target.field_names():
        return path + message
    return f"in {section}: {message}"


def anchor_message(config: BaseConfig, message: str) -> str:
    """``message`` about a part of ``config`` with each class-name reference to a config nested in it
    (``PruningConfig.embeddings``, ``DistillationConfig.layer_map``) replaced by that config's dotted place
    (``pruning.embeddings``, ``distillation.layer_map``), so an error raised by code that only sees the nested
    config (a model transform, a preflight check) names the key of the file. Classes nested at more than one place
    (``TrainSection`` is both ``dense`` and ``pruned``; a ``PruningConfig`` in ``pruning`` and in a stage) are left
    as they are.
    """
    places: dict[str, set[str]] = {}

    def walk(cfg: BaseConfig, path: str) -> None:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if isinstance(value, dict):
                items = [(f".{key}", item) for key, item in value.items()]
            elif isinstance(value, tuple):
                items = [(f"[{i}]", item) for i, item in enumerate(value)]
            else:
                items = [("", value)]
            for suffix, item in items:
                if isinstance(item, BaseConfig):
                    place = path + f.name + suffix
                    for c in type(item).__mro__:
                        if isinstance(c, type) and issubclass(c, BaseConfig) and c is not BaseConfig:
                            places.setdefault(c.__name__, set()).add(place)
                    walk(item, place + ".")

    walk(config, "")
    unique = {name: paths.pop() for name, paths in places.items() if len(paths) == 1}
    if not unique:
        return message
    names = "|".join(map(re.escape, sorted(unique, key=len, reverse=True)))
    return re.sub(rf"\b({names})\b", lambda m: unique[m.group(1)], message)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form (lists -> tuples, dicts -> configs).

    Raises ConfigError naming ``where`` and the expected type or allowed values.
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise ConfigError(f"{where} must be one of {list(allowed)}, got {quote(value)}.")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where} must be {_type_name(tp)}, got null.")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {quote(value)}.")
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a {_type_name(tp)}, got {quote(value)}.")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a {_type_name(tp)}, got {quote(value)}.")
        k_tp, v_tp = typing.get_args(tp)
        return {_coerce(k, k_tp, f"{where} key"): _coerce(v, v_tp, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, BaseConfig):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return tp._from_mapping(value, path=f"{where}.")
        raise ConfigError(f"{where} must be a {_type_name(tp)}, got {quote(value)}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # NaN passes every range check written as ``if x < lo: raise`` and inf means nothing in a config: both
            # are refused here, once, for every float field.
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(f"{where} must be a finite number, got {quote(value)}.")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a programming error in a config class, not user input
        raise TypeError(f"Unsupported annotation {quote(tp)} for {where}.")
    raise ConfigError(f"{where} must be of type {_type_name(tp)}, got {quote(value)} ({type(value).__name__}).")


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Frozen, typed, versioned configuration.

    Subclasses are ``@dataclasses.dataclass(frozen=True)`` classes with annotated fields, decorated with
    :func:`register_config` to get a ``config_type`` name. They override :meth:`validate` for value checks (raise
    :class:`~hf_sparse.errors.ConfigError` naming the field and its allowed values) and bump :attr:`version` when a
    field changes meaning; :meth:`_migrate` then upgrades dicts written by older versions.
    """

    config_type: ClassVar[str] = ""
    version: ClassVar[int] = 1

    # -- construction and validation ------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        hints = self._field_types()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _coerce(value, hints[f.name], f"{type(self).__name__}.{f.name}"))
        self.validate()

    def validate(self) -> None:
        """Value checks beyond types. Override in subclasses; raise ConfigError naming the field."""

    @classmethod
    def _field_types(cls) -> dict[str, Any]:
        cache = cls.__dict__.get("_hints_cache")
        if cache is None:
            cache = typing.get_type_hints(cls)
            type.__setattr__(cls, "_hints_cache", cache)
        return cache

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    # -- dict / JSON round trip -----------------------------------------------------------------------------------
    def to_dict(self, *, header: bool = True) -> dict[str, Any]:
        """Plain-data form (lists, dicts, numbers, strings) that :meth:`from_dict` reads back.

        Args:
            header: include ``config_type`` and ``version`` (nested configs are written without them).
        """
        out: dict[str, Any] = {"config_type": self.config_type, "version": self.version} if header else {}
        for f in dataclasses.fields(self):
            out[f.name] = _to_plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build a config from :meth:`to_dict` output (or a recipe section).

        Called on :class:`BaseConfig` itself, the class is chosen by the ``config_type`` key through the registry.

        Raises:
            ConfigError: unknown keys, missing required keys, wrong types, a version newer than this library's, or
                a ``config_type`` that names another class.
        """
        return cls._from_mapping(data, path="")

    @classmethod
    def _from_mapping(cls: type[C], data: Mapping[str, Any], *, path: str) -> C:
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{path.rstrip('.') or cls.__name__} must be a mapping of keys to values, got {quote(data)}."
            )
        data = dict(data)
        ctype = data.pop("config_type", None)
        target: type[BaseConfig] = cls
        if ctype is not None:
            if cls is BaseConfig:
                target = CONFIGS.get(ctype)
            elif ctype != cls.config_type:
                raise ConfigError(
                    f"{path}config_type is {quote(ctype)}, but {cls.__name__} expects {quote(cls.config_type)}."
                )
        elif cls is BaseConfig:
            raise ConfigError(f"{path}config_type is missing; registered types: {list(CONFIGS)}.")
        version = data.pop("version", target.version)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigError(f"{path}version must be a positive integer, got {quote(version)}.")
        if version > target.version:
            raise ConfigError(
                f"{path}version is {version}, but this hf_sparse reads {target.__name__} up to version "
                f"{target.version}. Upgrade hf_sparse to read this config."
            )
        if version < target.version:
            data = target._migrate(data, version)
        allowed = target.field_names()
        unknown = [k for k in data if k not in allowed]
        if unknown:
            raise ConfigError(
                f"Unknown key '{path}{_key_text(unknown[0])}' for {target.__name__}"
                f"{_did_you_mean(unknown[0], allowed)}. Allowed keys: {sorted(allowed)}."
            )
        hints = target._field_types()
        kwargs = {k: _coerce(v, hints[k], f"{path}{k}") for k, v in data.items()}
        missing = [
            f.name
            for f in dataclasses.fields(target)
            if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        ]
        if missing:
            raise ConfigError(f"Missing required key '{path}{missing[0]}' for {target.__name__}.")
        try:
            return target(**kwargs)  # type: ignore[return-value]
        except ConfigError as exc:
            if path:
                raise ConfigError(_in_section(str(exc), target, path)) from None
            raise

    @classmethod
    def _migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Upgrade a dict written by an older ``version`` of this config. The base has nothing to migrate."""
        return data

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), indent=kwargs.pop("indent", 2), sort_keys=False, **kwargs)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        return cls.from_json(Path(path).read_text())

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied and validated (configs never change in place)."""
        unknown = [k for k in changes if k not in self.field_names()]
        if unknown:
            raise ConfigError(
                f"Unknown key {quote(unknown[0])} for {type(self).__name__}"
                f"{_did_you_mean(unknown[0], self.field_names())}. Allowed keys: {sorted(self.field_names())}."
            )
        return dataclasses.replace(self, **changes)


def _to_plain(value: Any) -> Any:
    if isinstance(value, BaseConfig):
        return value.to_dict(header=False)
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value
