"""One registry type for everything hf_sparse looks up by name: config classes, methods, formats, backends.

Classes are always resolved through a registry, never from an import path written in a file, so a config or a
recipe can only name things this package (or a plugin that registered them) knows about.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError, quote

__all__ = ["Registry", "CONFIGS"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping that rejects duplicate names.

    Args:
        kind: What the registry holds, used in error messages (e.g. ``"config type"``).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name``; usable directly or as a decorator.

        Raises:
            ConfigError: if ``name`` is already registered (names are global: pick another one).
        """

        def _do(item: T) -> T:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"A {self.kind} name must be a non-empty string, got {quote(name)}.")
            if name in self._items:
                raise ConfigError(
                    f"A {self.kind} named {quote(name)} is already registered ({quote(self._items[name])}); "
                    "choose a different name."
                )
            self._items[name] = item
            return item

        return _do(obj) if obj is not None else _do

    def get(self, name: str) -> T:
        """Look ``name`` up.

        Raises:
            ConfigError: naming the unknown entry and listing the registered ones.
        """
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"Unknown {self.kind} {quote(name)}. Registered: {sorted(self._items) or 'none'}."
            ) from None

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plugin's or a test's clean-up).

        Raises:
            ConfigError: naming the unknown entry.
        """
        self.get(name)
        del self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())


#: Config classes by their ``config_type`` name (what ``to_dict`` writes and ``from_dict`` reads).
CONFIGS: Registry[type] = Registry("config type")
