"""One registry helper for every pluggable component (model families, samplers, estimators,
algorithms, rewards).

A duplicate name bound to a different object raises; an unknown name lists the known ones and
suggests the closest, so a recipe typo fails with a useful message.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map with decorator registration.

    >>> SAMPLERS = Registry("sampler")
    >>> @SAMPLERS.register("llada")
    ... def llada_generate(...): ...
    >>> SAMPLERS.get("llada")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register `obj` under `name` (or use as a decorator when `obj` is None)."""

        def _add(item: T) -> T:
            known = self._items.get(name)
            if known is not None and known is not item:
                raise ValueError(f"{self.kind} name {name!r} is already registered to {known!r}")
            self._items[name] = item
            return item

        return _add if obj is None else _add(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        msg = f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items)) or '(none)'}"
        close = difflib.get_close_matches(name, list(self._items), n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        return msg

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())


__all__ = ["Registry"]
