"""The one per-process cache.

Some values are expensive to compute, the same for every run in a process that asks with the
same key, and safe to share: a sweep's worker runs many trials and would otherwise recompute
them each time (a decentralized problem's optimum F*, a vertical run's undefended utility, a
bundled data set, a teacher fetched from MLflow, the experiment id of a tracking store). They
live here, under a namespace each, and nowhere else; :meth:`ProcessCache.clear` empties them
(tests do, between cases that must not share).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["CACHE", "ProcessCache"]

T = TypeVar("T")


class ProcessCache:
    """Values keyed by (namespace, key), computed once per process."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, Hashable], Any] = {}

    def get(self, namespace: str, key: Hashable, compute: Callable[[], T]) -> T:
        """The cached value, or ``compute()`` stored under the key (an exception stores
        nothing)."""
        slot = (namespace, key)
        if slot not in self._values:
            self._values[slot] = compute()
        value: T = self._values[slot]
        return value

    def __contains__(self, slot: tuple[str, Hashable]) -> bool:
        return slot in self._values

    def clear(self, namespace: str | None = None) -> None:
        """Forgets every value, or those of one namespace."""
        if namespace is None:
            self._values.clear()
        else:
            self._values = {k: v for k, v in self._values.items() if k[0] != namespace}


CACHE = ProcessCache()
"""This process's cache."""
