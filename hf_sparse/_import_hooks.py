"""Run a function once a module has been imported (a post-import hook), or now if it already has been.

``import hf_sparse`` must stay cheap, yet ``from_pretrained`` of a saved sparse checkpoint must find hf_sparse's
quantizer and attention function in transformers' registries. transformers resolves both inside
``transformers.modeling_utils`` (``PreTrainedModel.from_pretrained``), so registering right after that module is
imported — or at once, if it already is — is early enough for every load, and free when no model is ever loaded.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

__all__ = ["when_imported", "lazy_attributes"]

_HOOKS: dict[str, list[Callable[[ModuleType], None]]] = {}
_LOCK = threading.RLock()


class _Loader(importlib.abc.Loader):
    """Delegates to the module's own loader, then runs the hooks registered for it."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        with _LOCK:
            hooks = _HOOKS.pop(module.__name__, [])
        for hook in hooks:
            hook(module)

    def __getattr__(self, name: str):  # get_source, get_filename, is_package ... of the real loader
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds hooked modules through the rest of ``sys.meta_path`` and wraps their loaders."""

    def __init__(self) -> None:
        self._busy = threading.local()

    def find_spec(self, fullname, path, target=None):
        if fullname not in _HOOKS or getattr(self._busy, "name", None) == fullname:
            return None
        self._busy.name = fullname
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.name = None
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader)
        return spec


_FINDER = _Finder()


def when_imported(name: str, hook: Callable[[ModuleType], None]) -> None:
    """Call ``hook(module)`` once the module ``name`` is imported (now, if it already is)."""
    with _LOCK:
        module = sys.modules.get(name)
        if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
            _HOOKS.setdefault(name, []).append(hook)
            if _FINDER not in sys.meta_path:
                sys.meta_path.insert(0, _FINDER)
            return
    hook(module)


def lazy_attributes(package: str, names: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that imports a public name on first use and keeps it in ``namespace``.

    Args:
        package: The package the relative module names are relative to (the module's ``__name__``).
        names: Attribute -> ``".module"`` (the attribute of that name in it; the module itself when the attribute is
            the module's own name) or ``".module:other"`` (its attribute ``other``).
        namespace: The module's ``globals()``, where each imported value is kept.
    """

    def __getattr__(name: str) -> Any:
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name, _, attribute = target.partition(":")
        module = importlib.import_module(module_name, package)
        value = module if not attribute and module_name == f".{name}" else getattr(module, attribute or name)
        namespace[name] = value
        return value

    return __getattr__
