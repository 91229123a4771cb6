"""The executor contract: where per-party work runs.

A trainer describes what one party computes in a round as a picklable callable
``fn(ctx, payload) -> result``. An executor hosts the parties (their data is shipped to it
once, their state persists between calls), runs ``fn`` for a chosen subset of them and hands
back either every result or, when the trainer supplies an associative ``reduce``, one result
already combined. Workers combine their own parties' results before returning, so a round
costs one call per worker, not one per party.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

R = TypeVar("R")

__all__ = ["Executor", "PartyContext", "PartyFn", "Reduce", "assign_parties", "run_parties"]


@dataclass
class PartyContext:
    """What a party's work sees on the worker that hosts it."""

    party_id: int
    """The party's global id."""
    data: Any
    """Whatever was shipped for this party by :meth:`Executor.load` (read-only by convention)."""
    state: dict[str, Any]
    """The party's own state; it persists across calls on the same executor."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Scratch shared by all parties of one worker (models, buffers); never party state."""


PartyFn = Callable[[PartyContext, Any], R]
Reduce = Callable[[R, R], R]


class Executor(abc.ABC, Generic[R]):
    """Runs per-party work, in this process or spread over workers.

    Contract:
        * :meth:`load` ships each party's data once, replacing whatever parties were loaded
          before (so one executor can serve several runs); later calls refer to parties by id.
        * :meth:`map` runs ``fn(ctx, payload)`` for every id in ``party_ids``. With ``reduce``
          it returns the combination of all results (``reduce`` must be associative and the
          combination must not depend on how parties are grouped); without, it returns the
          results in the order of ``party_ids``.
        * An exception raised by ``fn`` propagates to the caller of :meth:`map`.
        * :meth:`close` releases the workers; the executor is unusable afterwards.
    """

    @property
    @abc.abstractmethod
    def num_workers(self) -> int:
        """How many workers share the parties."""

    @abc.abstractmethod
    def load(self, parties: Mapping[int, Any], sizes: Mapping[int, int] | None = None) -> None:
        """Ships each party's data to the worker that will host it.

        Args:
            parties: party id -> the data that party holds.
            sizes: optional party id -> work estimate (e.g. sample count) for load balancing.
        """

    @abc.abstractmethod
    def map(
        self,
        fn: PartyFn[R],
        party_ids: Sequence[int],
        payload: Any = None,
        reduce: Reduce[R] | None = None,
    ) -> list[R] | R:
        """Runs ``fn`` for the given parties; see the class docstring."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Releases the workers."""

    def __enter__(self) -> Executor[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def assign_parties(sizes: Mapping[int, int], num_workers: int) -> dict[int, int]:
    """Assigns parties to workers, largest first onto the least-loaded worker.

    Deterministic: ties break by party id and worker index.
    """
    loads = [0] * num_workers
    owner: dict[int, int] = {}
    for pid in sorted(sizes, key=lambda p: (-sizes[p], p)):
        w = min(range(num_workers), key=lambda i: (loads[i], i))
        owner[pid] = w
        loads[w] += max(1, sizes[pid])
    return owner


def run_parties(
    fn: PartyFn[R],
    contexts: Iterable[PartyContext],
    payload: Any,
    reduce: Reduce[R] | None,
) -> list[R] | R | None:
    """Runs ``fn`` over contexts in order, combining with ``reduce`` when given.

    This is the loop every worker runs; executors differ only in where it runs.
    """
    if reduce is None:
        return [fn(ctx, payload) for ctx in contexts]
    acc: R | None = None
    for ctx in contexts:
        result = fn(ctx, payload)
        acc = result if acc is None else reduce(acc, result)
    return acc
