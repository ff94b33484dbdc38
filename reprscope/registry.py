"""A small decorator registry (after timm's ``_registry.py``).

Methods, datasets, backbones, heads, analyzers and checkpoint formats each register themselves with
metadata; ``reprscope list`` and the contract tests read the registries, so registering a unit is enough
to make it listed and tested.
"""
from __future__ import annotations

import fnmatch
import warnings
from typing import Any, Callable, Dict, Generic, Iterator, List, Optional, TypeVar

from .errors import unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object mapping filled by a decorator.

    Args:
        kind: what is registered ("method", "dataset", …), used in messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._meta: Dict[str, Dict[str, Any]] = {}

    def register(self, name: Optional[str] = None, **meta: Any) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name", key=value)``. Re-registering a name warns and overwrites."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or obj.__name__  # type: ignore[attr-defined]
            if key in self._items and self._items[key] is not obj:
                warnings.warn(f"{self.kind} '{key}' is registered twice; the later one wins", stacklevel=2)
            self._items[key] = obj
            self._meta[key] = dict(meta)
            return obj

        return deco

    def get(self, name: str) -> T:
        """The object registered under ``name``; an unknown name raises ReprscopeError listing the valid ones."""
        try:
            return self._items[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._items) from None

    def meta(self, name: str) -> Dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self, pattern: str = "*") -> List[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
