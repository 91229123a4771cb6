"""The Ray executor: a pool of actors, each hosting many virtual parties.

Each actor holds its parties' data (shipped once) and their state across rounds, and answers
one call per round for all of its parties, combining their results before replying. The
actors start, and run the trainer's warm-up, as soon as the executor is made, so that their
start overlaps whatever the driver does next (loading and partitioning data).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from clusters.base import (
    Executor,
    PartyFn,
    PartyHost,
    PartyTable,
    R,
    Reduce,
    ResourceError,
    ServiceError,
    _position,
    assign_workers,
    connect_timeout,
)
from clusters.lab import LocalRay
from clusters.tasks import WorkerLost

# A Ray kept running here by `fedsweep ray up` is joined rather than a new one started. Ray
# reads its token settings when it is imported, so they are set before: to that Ray's token,
# unless this process names a Ray (RAY_ADDRESS) or a token of its own.
_LOCAL = None if os.environ.get("RAY_ADDRESS") else LocalRay.find()
if _LOCAL is not None and not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(
    os.environ
):
    os.environ.update(_LOCAL.env)

import numpy as np  # noqa: E402
import ray  # noqa: E402

__all__ = ["RayExecutor", "ensure_ray"]


def _reachable(address: str, timeout: float | None = None) -> None:
    """Raises ServiceError when nothing listens at a ``host:port`` (or ``ray://host:port``)
    Ray address within ``timeout`` (default :func:`~clusters.base.connect_timeout`);
    ``auto`` and the like pass."""
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    wait = connect_timeout() if timeout is None else timeout
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=wait).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ServiceError(
            "cluster", address, f"no Ray answers within {wait:g} s ({reason.lower()})"
        ) from None


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Starts a local Ray, or joins a cluster, unless this process is already connected.

    Args:
        address: ``"auto"``, ``"host:port"`` or ``"ray://host:port"`` to join; ``None``: the
            Ray already running here (``RAY_ADDRESS``, or ``fedsweep ray up``'s), else a new
            local one.
        num_cpus: CPUs for a new local Ray (default: all of this machine's).

    Returns:
        True when this call connected, False when Ray was already up.
    """
    if address:
        _reachable(address)
    if ray.is_initialized():
        return False
    if not address:
        address = _running_local_ray()
        if address:
            _reachable(address)
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # A Ray of this machine alone: keep its traffic on the loopback interface.
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
    return True


def _running_local_ray() -> str | None:
    """A Ray already running on this machine to join rather than start one: the one Ray's
    own ``RAY_ADDRESS`` names, else the one ``fedsweep ray up`` keeps, when this process
    holds its token (see the module's import)."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    if _LOCAL is None or os.environ.get("RAY_AUTH_TOKEN_PATH") != str(_LOCAL.token_path):
        return None
    return _LOCAL.address


def refuse_unplaceable(
    count: int, cpus: float, gpus: float, *, what: tuple[str, str], keys: tuple[str, str, str]
) -> None:
    """Raises ResourceError for ``count`` tasks or actors of ``cpus`` CPUs and ``gpus`` GPUs
    each that this Ray could never place (Ray would wait for them forever): one larger than
    every node, or more than the cluster holds. Judged on the nodes alive now (a cluster
    that scales up later is not foreseen).

    Args:
        what: the noun in the message, singular and plural ("actor", "actors").
        keys: the config keys to blame: for the count, the CPUs and the GPUs of one.
    """
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for kind, need, key in (("CPU", cpus, keys[1]), ("GPU", gpus, keys[2])):
        if not need:
            continue
        largest = max((n.get(kind, 0.0) for n in nodes), default=0.0)
        total = sum(n.get(kind, 0.0) for n in nodes)
        unit = f"{need:g} {kind}{'s' if need > 1 else ''}"
        if need > largest:
            raise ResourceError(
                key,
                f"{'an' if what[0][0] in 'aeiou' else 'a'} {what[0]} of {unit} fits no node of this Ray (the largest has {largest:g})",
            )
        if count * need > total + 1e-9:
            raise ResourceError(
                keys[0] if kind == "CPU" else key,
                f"{count} {what[1]} of {unit} need {count * need:g} {kind}s; this Ray has {total:g}",
            )


class RayExecutor(Executor):
    """Runs parties on a pool of Ray actors.

    Args:
        address: Ray address to join (``auto``, ``ray://host:port``); ``None`` starts or reuses
            a local Ray.
        num_workers: actors in the pool; default one per CPU the cluster has.
        num_cpus: CPUs for a local Ray started here (default: all).
        cpus_per_worker: CPUs each actor reserves.
        worker_init: run once in each actor as it starts (imports, warm-up).
        gpus_per_worker: GPUs each actor reserves (fractions share a GPU).
        device: where party tensors live on the actors (``cpu``, ``cuda``, ``auto``).
    """

    def __init__(
        self,
        address: str | None = None,
        num_workers: int | None = None,
        num_cpus: int | None = None,
        cpus_per_worker: float = 1.0,
        worker_init: Callable[[], None] | None = None,
        gpus_per_worker: float = 0.0,
        device: str = "cpu",
    ) -> None:
        ensure_ray(address, num_cpus)
        if num_workers is None:
            cpus = ray.cluster_resources().get("CPU", 1.0)
            num_workers = max(1, int(cpus // cpus_per_worker))
        refuse_unplaceable(
            num_workers,
            cpus_per_worker,
            gpus_per_worker,
            what=("actor", "actors"),
            keys=("runtime.num_workers", "runtime.cpus_per_worker", "runtime.gpus_per_worker"),
        )
        self._host_cls = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(PartyHost)
        self._host_args = (worker_init, device)
        # actor handles: their methods are called as .remote(), which nothing types
        self._hosts: list[Any] = [
            self._host_cls.remote(*self._host_args) for _ in range(num_workers)
        ]
        self._loads: list[tuple[Any, ...]] = []
        """Each actor's arguments to :meth:`PartyHost.load` (its parties' data, in the object
        store): what a replacement is shipped."""
        self._owner = _Owners(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        self._pending: list[ray.ObjectRef] = []

    @property
    def num_workers(self) -> int:
        return len(self._hosts)

    def load(self, parties: Mapping[int, Any], sizes: Mapping[int, int] | None = None) -> None:
        if isinstance(parties, PartyTable):
            # one object in the store, read in place by every actor; each hosts its share
            ids, work = parties.ids, parties.sizes()
            self._owner = _Owners(ids, assign_workers(ids, work, self.num_workers))
            table = ray.put(parties)
            self._loads = [(table, self._owner.hosted_by(w)) for w in range(self.num_workers)]
            parties.adopt(ray.get(table))  # the driver reads the store's copy too
        else:
            ids = np.fromiter(parties, dtype=np.int64, count=len(parties))
            work = np.array([1 if sizes is None else sizes.get(p, 1) for p in ids.tolist()])
            self._owner = _Owners(ids, assign_workers(ids, work, self.num_workers))
            batches: list[dict[int, Any]] = [{} for _ in self._hosts]
            for pid, data in parties.items():
                batches[self._owner[pid]][pid] = data
            self._loads = [(ray.put(b),) for b in batches]
        # Not awaited here: actor calls run in order, so the next map() sees the data, and the
        # driver goes on while the actors start. Every host loads, so old parties are dropped.
        self._pending += [h.load.remote(*args) for h, args in zip(self._hosts, self._loads)]

    def _run(
        self,
        fn: PartyFn[R],
        party_ids: Sequence[int],
        payload: Any,
        reduce: Reduce[R] | None,
    ) -> list[R] | R | None:
        self._settle()
        if not party_ids:
            return None if reduce is not None else []
        groups = self._owner.groups(party_ids)
        payload_ref = ray.put(payload)
        workers = sorted(groups)
        replies = self._get(
            [self._hosts[w].run.remote(fn, groups[w], payload_ref, reduce) for w in workers]
        )
        if reduce is not None:
            acc = replies[0]
            for part in replies[1:]:
                acc = reduce(acc, part)
            return acc
        by_party: dict[int, R] = {}
        for w, results in zip(workers, replies):
            by_party.update(zip(groups[w], results))
        return [by_party[p] for p in party_ids]

    def where(self) -> dict[str, str]:
        return {"executor": "ray", "ray_address": ray.get_runtime_context().gcs_address}

    def devices(self) -> list[str]:
        self._settle()
        return list(self._get([h.device_name.remote() for h in self._hosts]))

    def party_states(self) -> dict[int, dict[str, Any]]:
        self._settle()
        out: dict[int, dict[str, Any]] = {}
        for part in self._get([h.states.remote() for h in self._hosts]):
            out.update(part)
        return out

    def restore_party_states(self, states: Mapping[int, dict[str, Any]]) -> None:
        self._settle()
        batches: list[dict[int, dict[str, Any]]] = [{} for _ in self._hosts]
        for pid, state in states.items():
            batches[self._owner[pid]][pid] = state
        self._get([h.restore.remote(b) for h, b in zip(self._hosts, batches)])

    def _get(self, refs: list[Any]) -> list[Any]:
        """The actors' answers; when one died, every dead actor is replaced and WorkerLost
        raised (the caller restores the parties' state and runs the lost work again)."""
        try:
            return list(ray.get(refs))
        except ray.exceptions.RayActorError as exc:
            lost = self._replace_dead()
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WorkerLost(
                f"{len(lost)} of {len(self._hosts)} actors died ({cause[:160]}); replaced, "
                "their parties shipped again with fresh state"
            ) from None

    def _replace_dead(self) -> list[int]:
        """Replaces every actor that no longer answers with a new one holding its parties'
        data (their state starts afresh: the caller restores it); returns their indices."""
        dead = []
        for i, host in enumerate(self._hosts):
            try:
                ray.get(host.__ray_ready__.remote(), timeout=30)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                dead.append(i)
        for i in dead:
            try:
                ray.kill(self._hosts[i])
            except Exception:  # noqa: BLE001 - dead already
                pass
            self._hosts[i] = self._host_cls.remote(*self._host_args)
        # what was pending went to the dead or is done; the replacements load their parties
        self._pending = [self._hosts[i].load.remote(*self._loads[i]) for i in dead if self._loads]
        return dead

    def _settle(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self._get(pending)

    def close(self) -> None:
        for h in self._hosts:
            ray.kill(h)
        self._hosts = []


class _Owners:
    """Which actor hosts each party: two aligned arrays, ``ids`` ascending (a million
    parties cost two arrays, not a dict)."""

    def __init__(self, ids: np.ndarray, workers: np.ndarray) -> None:
        order = np.argsort(ids, kind="stable")
        self.ids, self.workers = ids[order], workers[order]

    def __getitem__(self, party_id: int) -> int:
        i = _position(self.ids, party_id)
        if i < 0:
            raise KeyError(f"parties never loaded: [{party_id}]")
        return int(self.workers[i])

    def hosted_by(self, worker: int) -> np.ndarray:
        return self.ids[self.workers == worker]

    def groups(self, party_ids: Sequence[int]) -> dict[int, list[int]]:
        """The given parties by the actor that hosts them, each in the order given.

        Raises:
            KeyError: parties never loaded.
        """
        asked = np.asarray(party_ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.ids, asked), max(0, len(self.ids) - 1))
        found = (self.ids[at] == asked) if len(self.ids) else np.zeros(len(asked), dtype=bool)
        if not found.all():
            raise KeyError(f"parties never loaded: {asked[~found][:5].tolist()}")
        groups: dict[int, list[int]] = {}
        for pid, w in zip(asked.tolist(), self.workers[at].tolist()):
            groups.setdefault(w, []).append(pid)
        return groups
