"""Where work runs: the executor contract, an in-process executor and a Ray executor.

``RayExecutor`` is imported lazily so that code that never touches Ray does not pay for
importing it.
"""

from __future__ import annotations

from typing import Any

from clusters.base import (
    Executor,
    PartyContext,
    ResourceError,
    ServiceError,
    assign_parties,
    connect_timeout,
)
from clusters.inprocess import InProcessExecutor
from clusters.tasks import InProcessTaskRunner, TaskHandle, TaskRunner, WorkerLost, where_am_i

__all__ = [
    "Executor",
    "InProcessExecutor",
    "InProcessTaskRunner",
    "PartyContext",
    "RayExecutor",
    "RayTaskRunner",
    "ResourceError",
    "ServiceError",
    "connect_timeout",
    "TaskHandle",
    "TaskRunner",
    "WorkerLost",
    "assign_parties",
    "release_ray",
    "where_am_i",
]


def release_ray() -> None:
    """Disconnects this process from Ray if it is connected (its workers' last log lines
    are flushed first); a no-op where Ray was never imported."""
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":
        from clusters.ray_executor import RayExecutor

        return RayExecutor
    if name == "RayTaskRunner":
        from clusters.tasks import RayTaskRunner

        return RayTaskRunner
    raise AttributeError(name)
