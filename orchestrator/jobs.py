"""Submitting experiments and sweeps as jobs, to a Ray cluster or a local background process.

A job is the ``fedsweep run`` or ``fedsweep sweep`` command line, run elsewhere: through Ray's
job submission (the working directory shipped as the runtime environment) when a cluster's
dashboard address is given, else as a detached process here. Either way its last line of
output is the command's JSON result, which :meth:`Job.result` reads. A small record of every
job is kept in ``.fedsweep/jobs/`` so ``fedsweep status / logs / cancel`` find it later.
"""

from __future__ import annotations

import abc
import enum
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Job", "JobError", "JobStatus", "get_job", "submit"]

JOBS_DIR = Path(".fedsweep") / "jobs"
_EXCLUDES = [
    ".git",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    "*.journal",
    ".fedsweep",
    "__pycache__",
    "*.egg-info",
]


class JobStatus(str, enum.Enum):
    """Where a job stands (the names Ray's job submission uses)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)


class JobError(RuntimeError):
    """A job that cannot be found, or whose result is not there."""


class Job(abc.ABC):
    """A submitted run or sweep."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    @abc.abstractmethod
    def status(self) -> JobStatus:
        """The job's current status."""

    @abc.abstractmethod
    def logs(self) -> str:
        """Everything the job printed so far."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stops the job (a sweep stops cleanly and can be resumed)."""

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> JobStatus:
        """Blocks until the job finishes or ``timeout`` seconds pass; returns its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if status.finished or (deadline is not None and time.monotonic() >= deadline):
                return status
            time.sleep(poll)

    def result(self) -> dict[str, Any]:
        """The command's JSON result (``{"run_id", "metrics"}`` or the sweep's summary)."""
        status = self.status()
        if status != JobStatus.SUCCEEDED:
            raise JobError(f"job {self.job_id} is {status.value}, it has no result")
        for line in reversed(self.logs().strip().splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise JobError(f"job {self.job_id} printed no JSON result")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.job_id!r})"


def _command(
    config: str, space: str | None, overrides: Sequence[str], flags: Sequence[str]
) -> list[str]:
    if space is None:
        return ["run", config, *overrides, "--quiet", "--json"]
    return ["sweep", config, *overrides, "--space", space, *flags, "--quiet", "--json"]


def submit(
    config: str | os.PathLike,
    space: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    cluster: str | None = None,
    *,
    trials: int | None = None,
    parallel: int | None = None,
    study: str | None = None,
    storage: str | None = None,
    working_dir: str | os.PathLike = ".",
) -> Job:
    """Starts ``fedsweep run`` (or ``sweep`` when a space is given) as a job.

    Args:
        config: experiment YAML, relative to ``working_dir`` for cluster jobs.
        space: search-space YAML: submit a sweep instead of a single run.
        overrides: ``dotted.key=value`` overrides.
        cluster: a Ray dashboard address (``http://head:8265``) to submit through Ray's job
            submission; None runs the job in a local background process.
        trials, parallel, study, storage: the sweep's options.
        working_dir: shipped to the cluster as the job's runtime environment.

    Raises:
        ConfigError, SpaceError: the config or space is refused before anything is submitted.
    """
    # Bad input fails here, in one line, rather than in a job somewhere else later.
    from orchestrator.config import load_config
    from search_spaces import load_space

    load_config(Path(working_dir) / config, list(overrides))
    if space is not None:
        load_space(Path(working_dir) / space)
    flags: list[str] = []
    for name, value in (
        ("--trials", trials),
        ("--parallel", parallel),
        ("--study", study),
        ("--storage", storage),
    ):
        if value is not None:
            flags += [name, str(value)]
    args = _command(str(config), None if space is None else str(space), list(overrides), flags)
    if cluster:
        return RayJob.start(cluster, args, Path(working_dir))
    return LocalJob.start(args, Path(working_dir))


def get_job(job_id: str, cluster: str | None = None) -> Job:
    """The job with this id: a local one, or one submitted to ``cluster`` (or the cluster its
    record names)."""
    record = JOBS_DIR / job_id / "job.json"
    if record.exists():
        meta = json.loads(record.read_text())
        if meta["kind"] == "local":
            return LocalJob(job_id)
        cluster = cluster or meta["cluster"]
    if cluster:
        return RayJob(job_id, cluster)
    raise JobError(f"no job {job_id!r} here; for a cluster job pass its --cluster address")


class LocalJob(Job):
    """A job in a detached local process; its output and exit code are kept on disk."""

    @classmethod
    def start(cls, args: list[str], working_dir: Path) -> LocalJob:
        job_id = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        folder = (JOBS_DIR / job_id).resolve()
        folder.mkdir(parents=True)
        cli = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "orchestrator.cli", *args])
        # The shell records the exit code, so a later `fedsweep status` (another process) knows it.
        script = f"{cli} > {shlex.quote(str(folder / 'out.log'))} 2>&1; echo $? > {shlex.quote(str(folder / 'exit_code'))}"
        proc = subprocess.Popen(
            ["/bin/sh", "-c", script],
            cwd=working_dir,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        meta = {"kind": "local", "pid": proc.pid, "args": args, "cwd": str(working_dir.resolve())}
        (folder / "job.json").write_text(json.dumps(meta))
        job = cls(job_id)
        job._proc = proc
        return job

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.folder = (JOBS_DIR / job_id).resolve()
        if not (self.folder / "job.json").exists():
            raise JobError(f"no local job {job_id!r}")
        self.meta = json.loads((self.folder / "job.json").read_text())
        self._proc: subprocess.Popen | None = None

    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        try:
            os.kill(self.meta["pid"], 0)
        except ProcessLookupError:
            return False
        return True

    def status(self) -> JobStatus:
        code_file = self.folder / "exit_code"
        if code_file.exists() and code_file.read_text().strip():
            if (self.folder / "cancelled").exists():
                return JobStatus.STOPPED
            return JobStatus.SUCCEEDED if code_file.read_text().strip() == "0" else JobStatus.FAILED
        if self._alive():
            return JobStatus.RUNNING
        return JobStatus.STOPPED if (self.folder / "cancelled").exists() else JobStatus.FAILED

    def logs(self) -> str:
        path = self.folder / "out.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cancel(self) -> None:
        if self.status().finished:
            return
        (self.folder / "cancelled").touch()
        import psutil

        try:
            shell = psutil.Process(self.meta["pid"])
            # SIGINT to the command only (not to the Ray processes it started, which share its
            # process group): a sweep then closes its runs and can be resumed, as after Ctrl-C.
            for child in shell.children():
                child.send_signal(signal.SIGINT)
        except psutil.NoSuchProcess:
            return
        if self.wait(timeout=60, poll=0.5) == JobStatus.RUNNING:
            os.killpg(self.meta["pid"], signal.SIGKILL)
            self.wait(timeout=10, poll=0.2)


class RayJob(Job):
    """A job submitted through Ray's job submission API."""

    @classmethod
    def start(cls, cluster: str, args: list[str], working_dir: Path) -> RayJob:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(cluster)
        entrypoint = " ".join(shlex.quote(a) for a in ["python", "-m", "orchestrator.cli", *args])
        runtime_env = {"working_dir": str(working_dir.resolve()), "excludes": _EXCLUDES}
        deadline = time.monotonic() + 90
        while True:
            try:
                job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
                break
            except RuntimeError as exc:
                # A head that has just started answers before its job agent is up.
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(2)
        folder = JOBS_DIR / job_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "job.json").write_text(
            json.dumps({"kind": "ray", "cluster": cluster, "args": args})
        )
        return cls(job_id, cluster, client)

    def __init__(self, job_id: str, cluster: str, client: Any = None) -> None:
        super().__init__(job_id)
        if client is None:
            from ray.job_submission import JobSubmissionClient

            client = JobSubmissionClient(cluster)
        self.cluster, self._client = cluster, client

    def status(self) -> JobStatus:
        return JobStatus(str(self._client.get_job_status(self.job_id).value))

    def logs(self) -> str:
        return self._client.get_job_logs(self.job_id)

    def cancel(self) -> None:
        self._client.stop_job(self.job_id)
