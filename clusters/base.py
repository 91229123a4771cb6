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
import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import numpy as np

R = TypeVar("R")
S = TypeVar("S")

__all__ = [
    "Executor",
    "PartyContext",
    "PartyFn",
    "PartyHost",
    "PartyTable",
    "Reduce",
    "ResourceError",
    "assign_parties",
    "assign_workers",
    "resolve_device",
    "run_parties",
]


@dataclass
class PartyContext:
    """What a party's work sees on the worker that hosts it."""

    party_id: int
    """The party's global id."""
    data: Any
    """Whatever was shipped for this party by :meth:`Executor.load` (read-only by convention)."""
    state: dict[str, Any]
    """The party's own state: it persists across calls, and an executor can hand it back
    and restore it (checkpoints, a replaced worker). Plain picklable records only."""
    cache: dict[Any, Any] = field(default_factory=dict)
    """Scratch shared by all parties of one worker (models, buffers); never party state."""
    device: str = "cpu"
    """Where the party's tensors and models live on this worker (``cpu`` or ``cuda``)."""
    scratch: dict[str, Any] = field(default_factory=dict)
    """What the party derives from its data (tensors, designs) and keeps for speed: never
    saved, rebuilt wherever the party runs."""

    def get(self, kind: type[S]) -> S | None:
        """The party's state record of type ``kind`` (one per type), or None."""
        value = self.state.get(kind.__name__)
        return value if isinstance(value, kind) else None

    def put(self, value: object) -> None:
        """Keeps ``value`` as the party's state record of its type."""
        self.state[type(value).__name__] = value

    def pop(self, kind: type[S]) -> S | None:
        """Removes and returns the party's record of type ``kind`` (None when absent)."""
        value = self.state.pop(kind.__name__, None)
        return value if isinstance(value, kind) else None


PartyFn = Callable[[PartyContext, Any], R]
Reduce = Callable[[R, R], R]


class PartyTable(Mapping[int, Any]):
    """Many parties' data held as slices of one shared table: a mapping from party id to
    that party's data which an executor ships whole, once, rather than party by party (Ray:
    one object in the store that every actor reads without a copy), and whose parties'
    records are made only when asked for.

    Subclasses give :attr:`ids` and make one party's record (:meth:`__getitem__`)."""

    ids: np.ndarray
    """Every party's id, ascending (int64)."""

    @abc.abstractmethod
    def sizes(self) -> np.ndarray:
        """Each party's sample count, aligned with :attr:`ids`."""

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids.tolist())

    def __contains__(self, party_id: object) -> bool:
        return isinstance(party_id, (int, np.integer)) and _position(self.ids, party_id) >= 0

    def adopt(self, stored: PartyTable) -> None:  # noqa: B027 - an optional hook
        """Reads ``stored``'s copy of the same data from now on (an executor's shipped copy,
        read in place), so that the data is in memory once. By default: keeps its own."""

    def position(self, party_id: int) -> int:
        """The party's row in :attr:`ids`.

        Raises:
            KeyError: no such party.
        """
        i = _position(self.ids, party_id)
        if i < 0:
            raise KeyError(party_id)
        return i


def _position(ids: np.ndarray, party_id: Any) -> int:
    """Where ``party_id`` sits in the ascending ``ids`` (-1: absent)."""
    i = int(np.searchsorted(ids, party_id))
    return i if i < len(ids) and ids[i] == party_id else -1


class Executor(abc.ABC):
    """Runs per-party work, in this process or spread over workers.

    Contract:
        * :meth:`load` ships each party's data once, replacing whatever parties were loaded
          before (so one executor can serve several runs); later calls refer to parties by id.
        * :meth:`map` runs ``fn(ctx, payload)`` for every id in ``party_ids``. With ``reduce``
          it returns the combination of all results (``reduce`` must be associative and the
          combination must not depend on how parties are grouped; None for no party);
          without, it returns the results in the order of ``party_ids``.
        * An exception raised by ``fn`` propagates to the caller of :meth:`map`.
        * :meth:`close` releases the workers; the executor is unusable afterwards.
    """

    @property
    @abc.abstractmethod
    def num_workers(self) -> int:
        """How many workers share the parties."""

    @abc.abstractmethod
    def load(self, parties: Mapping[int, Any], sizes: Mapping[int, int] | None = None) -> None:
        """Ships each party's data to the worker that will host it (a :class:`PartyTable`
        goes whole, once, and each worker hosts its share of it).

        Args:
            parties: party id -> the data that party holds.
            sizes: optional party id -> work estimate (e.g. sample count) for load balancing.
        """

    @overload
    def map(
        self, fn: PartyFn[R], party_ids: Sequence[int], payload: Any = None, reduce: None = None
    ) -> list[R]: ...

    @overload
    def map(
        self, fn: PartyFn[R], party_ids: Sequence[int], payload: Any, reduce: Reduce[R]
    ) -> R | None: ...

    def map(
        self,
        fn: PartyFn[R],
        party_ids: Sequence[int],
        payload: Any = None,
        reduce: Reduce[R] | None = None,
    ) -> list[R] | R | None:
        """Runs ``fn`` for the given parties; see the class docstring."""
        return self._run(fn, party_ids, payload, reduce)

    @abc.abstractmethod
    def _run(
        self,
        fn: PartyFn[R],
        party_ids: Sequence[int],
        payload: Any,
        reduce: Reduce[R] | None,
    ) -> list[R] | R | None:
        """:meth:`map`'s work, where the executor runs it."""

    @abc.abstractmethod
    def party_states(self) -> dict[int, dict[str, Any]]:
        """Every loaded party's own state (what persists between its calls), by party id:
        what a checkpoint keeps of the parties."""

    @abc.abstractmethod
    def restore_party_states(self, states: Mapping[int, dict[str, Any]]) -> None:
        """Puts the loaded parties back in these states (parties not named start afresh)."""

    def where(self) -> dict[str, str]:
        """Where the executor runs, for a run's tags: ``executor`` (``local`` or ``ray``)
        and, on Ray, the ``ray_address`` of the cluster joined."""
        return {"executor": "local"}

    @abc.abstractmethod
    def devices(self) -> list[str]:
        """Where each worker's party tensors live, as :meth:`PartyHost.device_name` says (what a
        run records: a ``cuda`` asked of a worker that has no GPU is refused, so this is the
        device that was used)."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Releases the workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def assign_parties(sizes: Mapping[int, int], num_workers: int) -> dict[int, int]:
    """Assigns parties to workers, largest first onto the least-loaded worker.

    Deterministic: ties break by party id and worker index.
    """
    ids = np.fromiter(sizes, dtype=np.int64, count=len(sizes))
    work = np.fromiter(sizes.values(), dtype=np.int64, count=len(sizes))
    return dict(zip(ids.tolist(), assign_workers(ids, work, num_workers).tolist()))


def assign_workers(ids: np.ndarray, sizes: np.ndarray, num_workers: int) -> np.ndarray:
    """:func:`assign_parties` on arrays: the worker of each party, aligned with ``ids``.

    Parties of equal size (the common case) are dealt round-robin in id order, which is what
    the greedy rule does with them, without a loop over a million parties.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    work = np.maximum(1, sizes)  # what a party adds to its worker's load
    ids = np.asarray(ids, dtype=np.int64)
    order = np.lexsort((ids, -sizes))  # largest first, ties by party id
    owner = np.empty(len(ids), dtype=np.int64)
    if len(ids) == 0:
        return owner
    if sizes.min() == sizes.max():
        owner[order] = np.arange(len(ids)) % num_workers
        return owner
    heap = [(0, w) for w in range(num_workers)]  # (load, worker): least loaded, lowest index
    for i, size in zip(order.tolist(), work[order].tolist()):
        load, w = heap[0]
        owner[i] = w
        heapq.heapreplace(heap, (load + size, w))
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


class ServiceError(RuntimeError):
    """A service a command needs does not answer: the tracking server, the Optuna storage,
    the Ray cluster. One line, ``<service> error: <address>: <problem>``; exit 2 when it is
    found before anything started (``started`` False), 1 when it went away during the work.

    The address is shown as given: callers pass it with any password masked.
    """

    def __init__(self, service: str, address: str, problem: str, started: bool = False) -> None:
        self.service, self.address, self.problem, self.started = service, address, problem, started
        super().__init__(f"{service} error: {address}: {problem}")

    @property
    def exit_code(self) -> int:
        return 1 if self.started else 2


def connect_timeout() -> float:
    """Seconds a command waits for each service it needs to answer before it starts
    (``FEDSWEEP_CONNECT_TIMEOUT_S``, default 10): nothing answering is then one line, not a
    hang in a client's retries."""
    import os

    raw = os.environ.get("FEDSWEEP_CONNECT_TIMEOUT_S", "")
    try:
        value = float(raw) if raw else 10.0
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ServiceError(
            "config",
            "FEDSWEEP_CONNECT_TIMEOUT_S",
            f"must be a positive number of seconds, got {raw!r}",
        )
    return value


class ResourceError(ValueError):
    """A request for resources the cluster cannot satisfy (it would wait forever)."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


def resolve_device(device: str) -> str:
    """``cpu`` or ``cuda`` for a requested device (``auto``: cuda when a GPU is visible here).

    Raises:
        RuntimeError: cuda is asked where no GPU is visible.
    """
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "auto":
        return "cpu"
    raise RuntimeError("runtime.device is cuda but this worker sees no GPU")


class PartyHost:
    """What every worker is, wherever it runs: it hosts a set of parties (their data and their
    state) and runs their work. Both executors are made of these: one in-process, one inside
    each Ray actor.

    A party exists here as a record (:class:`PartyContext`) only from its first work on: a
    million hosted parties cost nothing until they are sampled. Once more than ``max_live``
    records are held, those without state are dropped after each call (their scratch is
    rebuilt when they are sampled again); a party's state is never dropped.

    Args:
        worker_init: run once, before the first party's work (imports, warm-up).
        device: ``cpu``, ``cuda``, or ``auto`` (cuda when this worker sees a GPU).
        max_live: party records kept between calls before the stateless ones are dropped.
    """

    def __init__(
        self,
        worker_init: Callable[[], None] | None = None,
        device: str = "cpu",
        max_live: int = 10_000,
    ) -> None:
        self._data: Mapping[int, Any] = {}
        self._hosted: np.ndarray = np.zeros(0, dtype=np.int64)
        self._live: dict[int, PartyContext] = {}
        self._cache: dict[Any, Any] = {}
        self._max_live = max_live
        self.device = resolve_device(device)
        if worker_init is not None:
            worker_init()

    def load(self, parties: Mapping[int, Any], ids: Sequence[int] | None = None) -> int:
        """Hosts these parties from now on (with ``ids``: only those of ``parties``), with
        fresh state; returns how many."""
        self._data = parties
        hosted = parties.ids if ids is None and isinstance(parties, PartyTable) else ids
        if hosted is None:
            hosted = np.fromiter(parties, dtype=np.int64, count=len(parties))
        self._hosted = np.sort(np.asarray(hosted, dtype=np.int64))
        self._live.clear()
        return len(self._hosted)

    @property
    def live(self) -> int:
        """How many party records this worker holds now (see the class docstring)."""
        return len(self._live)

    def states(self, party_ids: Sequence[int] | None = None) -> dict[int, dict[str, Any]]:
        """The hosted parties' own state (those that have any), by party id."""
        ids = self._live if party_ids is None else party_ids
        return {p: self._live[p].state for p in ids if p in self._live and self._live[p].state}

    def restore(self, states: Mapping[int, dict[str, Any]]) -> None:
        """Gives the hosted parties these states (the others start afresh)."""
        self._live.clear()
        for pid, state in states.items():
            if state and self.hosts(pid):
                self._context(pid).state = dict(state)

    def hosts(self, party_id: int) -> bool:
        return _position(self._hosted, party_id) >= 0

    def device_name(self) -> str:
        """This worker's device: ``cpu``, or ``cuda`` with the GPU's name, and the GPUs this
        process was given (``CUDA_VISIBLE_DEVICES``, which Ray sets for a GPU share)."""
        import os

        given = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = f" [visible GPUs {given}]" if given else ""
        if self.device != "cuda":
            return f"cpu{shown}"
        import torch

        return f"cuda ({torch.cuda.get_device_name(0)}){shown}"

    def run(
        self, fn: PartyFn[R], party_ids: Sequence[int], payload: Any, reduce: Reduce[R] | None
    ) -> list[R] | R | None:
        """Runs ``fn`` for the given hosted parties (see :func:`run_parties`)."""
        missing = [p for p in party_ids if not self.hosts(p)]
        if missing:
            raise KeyError(f"parties never loaded: {missing[:5]}")
        try:
            return run_parties(fn, (self._context(p) for p in party_ids), payload, reduce)
        finally:
            if len(self._live) > self._max_live:
                keep = set(party_ids)
                self._live = {p: c for p, c in self._live.items() if c.state or p in keep}

    def _context(self, party_id: int) -> PartyContext:
        """The party's record, made on its first use."""
        ctx = self._live.get(party_id)
        if ctx is None:
            data = self._data[party_id]
            ctx = self._live[party_id] = PartyContext(party_id, data, {}, self._cache, self.device)
        return ctx

    def clear(self) -> None:
        self._data, self._hosted = {}, np.zeros(0, dtype=np.int64)
        self._live.clear()
        self._cache.clear()
