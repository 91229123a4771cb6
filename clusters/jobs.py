"""Ray's job submission, behind the few calls the job API makes (Ray lives in clusters/)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

__all__ = ["ClusterError", "RayJobClient"]


class ClusterError(RuntimeError):
    """A cluster that cannot be reached, or that refused a request: one line, the address
    named."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RayJobClient:
    """A Ray cluster's job server.

    Args:
        address: its dashboard, ``http://head:8265``.

    Raises:
        ClusterError: the address is malformed or nothing answers there.
    """

    def __init__(self, address: str) -> None:
        if not address.startswith(("http://", "https://")):
            raise ClusterError(
                f"{address}: a cluster is its dashboard's address, http://<head>:8265"
            )
        from ray.job_submission import JobSubmissionClient

        self.address = address
        try:
            self._client = JobSubmissionClient(address)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ClusterError(f"{address}: {_first_line(exc)}") from None

    def submit(
        self, entrypoint: str, runtime_env: Mapping[str, Any], agent_timeout: float = 90.0
    ) -> str:
        """Submits a job; returns its id. A head that has just started answers before its job
        agent is up: the submission is retried for up to ``agent_timeout`` seconds."""
        deadline = time.monotonic() + agent_timeout
        while True:
            try:
                return str(
                    self._client.submit_job(entrypoint=entrypoint, runtime_env=dict(runtime_env))
                )
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise ClusterError(f"{self.address}: {_first_line(exc)}") from None
                time.sleep(2)

    def status(self, job_id: str) -> str:
        """The job's status name (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
        try:
            return str(self._client.get_job_status(job_id).value)
        except RuntimeError as exc:
            raise ClusterError(f"{self.address}: job {job_id}: {_first_line(exc)}") from None

    def logs(self, job_id: str) -> str:
        try:
            return str(self._client.get_job_logs(job_id))
        except RuntimeError as exc:
            raise ClusterError(f"{self.address}: job {job_id}: {_first_line(exc)}") from None

    def stop(self, job_id: str) -> None:
        try:
            self._client.stop_job(job_id)
        except RuntimeError as exc:
            raise ClusterError(f"{self.address}: job {job_id}: {_first_line(exc)}") from None
