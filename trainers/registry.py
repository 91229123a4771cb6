"""A typed name -> implementation registry that refuses duplicates and lists known names.

Every registry is also known by its kind (``Registry.of("aggregator")``), so that a config
field can name the registry its value must come from (see :mod:`trainers.rules`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError"]


class UnknownNameError(KeyError):
    """A name that no implementation was registered under."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, known
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(known)}")

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to implementations of one kind (models, trainers, partitioners...).

    Args:
        kind: what is registered, used in error messages ("model", "trainer"); one registry
            per kind.
    """

    _kinds: ClassVar[dict[str, Registry[Any]]] = {}

    def __init__(self, kind: str) -> None:
        if kind in Registry._kinds:
            raise ValueError(f"a {kind} registry exists already")
        self.kind = kind
        self._items: dict[str, T] = {}
        Registry._kinds[kind] = self

    @classmethod
    def of(cls, kind: str) -> Registry[Any]:
        """The registry of ``kind`` (KeyError when none was made)."""
        return cls._kinds[kind]

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a second use of a name is an error."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
