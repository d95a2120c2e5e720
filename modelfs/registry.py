"""A named registry of plug-ins (codecs, formats, update types, merge strategies).

Built-ins register at import; third-party packages add theirs through a Python entry-point
group, loaded once, on the first lookup that misses or the first listing.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from modelfs.errors import ModelfsError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, group: str, noun: str, key: Callable[[T], str],
                 missing: Callable[[str, list[str]], str] | None = None,
                 replace: bool = False) -> None:
        self.group = group
        self._noun = noun
        self._key = key
        self._missing = missing or (lambda name, known: f"unknown {noun} {name!r}; known: {', '.join(known)}")
        self._replace = replace  # formats: a plug-in may take over a built-in's name
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, item: T) -> T:
        name = self._key(item)
        if not self._replace and self._items.get(name, item) is not item:
            raise ModelfsError(f"{self._noun} {name!r} registered twice")
        self._items[name] = item
        return item

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in entry_points(group=self.group):
            obj: Any = ep.load()
            self.register(obj() if isinstance(obj, type) else obj)

    def all(self) -> dict[str, T]:
        self._load()
        return dict(self._items)

    def get(self, name: str) -> T:
        item = self._items.get(name)
        if item is None:
            self._load()
            item = self._items.get(name)
            if item is None:
                raise ModelfsError(self._missing(name, sorted(self._items)))
        return item
