"""Task runners: run independent jobs (sweep trials) a few at a time, here or on Ray.

A task is a picklable function and its arguments. The runner reports a task whose worker
died (a killed process, a lost node) as :class:`WorkerLost`, distinct from an exception the
function raised, so that callers can retry the one and record the other.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "InProcessTaskRunner",
    "RayTaskRunner",
    "TaskHandle",
    "TaskRunner",
    "WorkerLost",
    "where_am_i",
]


def where_am_i() -> dict[str, str]:
    """Where the calling task runs: ``node`` (the Ray node's id, or ``local``), ``worker``
    (host and process id) and ``gpus`` (the GPU ids Ray gave it, comma-separated)."""
    import os
    import socket
    import sys

    node, gpus = "local", ""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            context = ray.get_runtime_context()
            node = context.get_node_id()
            gpus = ",".join(map(str, context.get_accelerator_ids().get("GPU", [])))
    return {"node": node, "worker": f"{socket.gethostname()}:{os.getpid()}", "gpus": gpus}


class WorkerLost(RuntimeError):
    """The process running a task died before it answered."""


@dataclass(eq=False)
class TaskHandle:
    """A submitted task."""

    ref: Any = None
    outcome: tuple[bool, Any] | None = field(default=None, repr=False)


class TaskRunner(abc.ABC):
    """Runs tasks; at most ``capacity`` at a time make sense."""

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """How many tasks can run at once."""

    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any) -> TaskHandle:
        """Starts ``fn(*args)``."""

    @abc.abstractmethod
    def wait(self, handles: Sequence[TaskHandle], timeout: float) -> list[TaskHandle]:
        """The handles among ``handles`` that finished, waiting up to ``timeout`` seconds for one."""

    @abc.abstractmethod
    def result(self, handle: TaskHandle) -> Any:
        """The task's return value; raises its exception, or WorkerLost."""

    def cancel(self, handle: TaskHandle, force: bool = True) -> None:  # noqa: B027
        """Stops a running task: interrupts it, or with ``force`` kills its worker."""

    def warm(self, fn: Callable[[], Any], count: int) -> list[TaskHandle]:
        """Starts ``count`` workers on ``fn`` (imports, first-use costs) while the caller
        prepares the first tasks; a task submitted later queues behind them on a worker they
        warmed. Here: nothing (a task runs in this process, whose imports are done)."""
        return []

    def close(self) -> None:  # noqa: B027
        """Releases the runner's resources."""


class InProcessTaskRunner(TaskRunner):
    """Runs each task to completion when it is submitted: one at a time, in this process."""

    @property
    def capacity(self) -> int:
        return 1

    def submit(self, fn: Callable[..., Any], *args: Any) -> TaskHandle:
        try:
            outcome = (True, fn(*args))
        except Exception as exc:  # handed back by result(), as a remote runner would
            outcome = (False, exc)
        return TaskHandle(outcome=outcome)

    def wait(self, handles: Sequence[TaskHandle], timeout: float) -> list[TaskHandle]:
        return list(handles)

    def result(self, handle: TaskHandle) -> Any:
        assert handle.outcome is not None
        ok, value = handle.outcome
        if not ok:
            raise value
        return value


class RayTaskRunner(TaskRunner):
    """Runs tasks as Ray tasks, each reserving ``cpus_per_task`` CPUs.

    Ray notices a dead worker through the raylet's own health checks of its processes and
    fails the task; that becomes :class:`WorkerLost` here.

    Args:
        address: Ray address to join; None starts or reuses a local Ray.
        cpus_per_task: CPUs each task reserves.
        num_cpus: CPUs for a local Ray started here.
        gpus_per_task: GPUs each task reserves (fractions share a GPU).
    """

    def __init__(
        self,
        address: str | None = None,
        cpus_per_task: float = 1.0,
        num_cpus: int | None = None,
        gpus_per_task: float = 0.0,
    ) -> None:
        # through ray_executor, which names the token of a Ray kept up here before Ray loads
        from clusters import ray_executor
        from clusters.ray_executor import ensure_ray

        ray = ray_executor.ray
        self._ray = ray
        ensure_ray(address, num_cpus)
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        # trials queue for each other, but one that fits no node would wait forever
        from clusters.ray_executor import refuse_unplaceable

        refuse_unplaceable(
            1,
            cpus_per_task,
            gpus_per_task,
            what=("trial", "trials"),
            keys=("sweep.parallel", "sweep.cpus_per_trial", "sweep.gpus_per_trial"),
        )
        self._remote: dict[Callable, Any] = {}

    @property
    def capacity(self) -> int:
        resources = self._ray.cluster_resources()
        width = int(resources.get("CPU", 1.0) // self.cpus_per_task)
        if self.gpus_per_task:
            width = min(width, int(resources.get("GPU", 0.0) // self.gpus_per_task))
        return max(1, width)

    def submit(self, fn: Callable[..., Any], *args: Any) -> TaskHandle:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(
                num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=0
            )(fn)
        return TaskHandle(ref=remote.remote(*args))

    def warm(self, fn: Callable[[], Any], count: int) -> list[TaskHandle]:
        return [self.submit(fn) for _ in range(count)]

    def wait(self, handles: Sequence[TaskHandle], timeout: float) -> list[TaskHandle]:
        if not handles:
            time.sleep(min(timeout, 0.05))
            return []
        by_ref = {h.ref: h for h in handles}
        done, _ = self._ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        if done:  # collect every other one that is also finished
            done, _ = self._ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
        return [by_ref[r] for r in done]

    def result(self, handle: TaskHandle) -> Any:
        ex = self._ray.exceptions
        try:
            return self._ray.get(handle.ref)
        except (
            ex.WorkerCrashedError,
            ex.NodeDiedError,
            ex.ObjectLostError,
            ex.TaskCancelledError,
        ) as exc:
            raise WorkerLost(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        except ex.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            raise cause from None

    def cancel(self, handle: TaskHandle, force: bool = True) -> None:
        try:
            self._ray.cancel(handle.ref, force=force)
        except Exception:  # noqa: BLE001 - already finished or gone: nothing left to stop
            pass
