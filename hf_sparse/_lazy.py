"""Module attributes that load on first use (PEP 562), so that importing a package stays cheap until one of its
heavier names is needed."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    module_name: str, table: Mapping[str, str], public: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of the package ``module_name``: ``table`` maps each lazy name to the
    relative module that defines it (``".plan"``). A name is imported on first access and then stored in the
    package's namespace, so later accesses cost nothing."""
    import sys

    names = frozenset(public) | frozenset(table)

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], module_name), name)
        setattr(sys.modules[module_name], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[module_name])) | names)

    return __getattr__, __dir__
