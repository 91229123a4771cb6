"""Submitting experiments and sweeps as jobs, to a Ray cluster or a local background process.

A job is the ``fedsweep run`` or ``fedsweep sweep`` command line, run elsewhere: through Ray's
job submission (the working directory shipped as the runtime environment) when a cluster's
dashboard address is given, else as a detached process here. Either way its last line of
output is the command's JSON result, which :meth:`Job.result` reads. A small record of every
job is kept in ``.fedsweep/jobs/`` under the working directory, so ``fedsweep status / logs /
cancel`` run there find it later.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from clusters.jobs import RayJobClient

__all__ = ["Job", "JobError", "JobStatus", "get_job", "jobs_dir", "submit"]
_EXCLUDES = [
    ".git",
    "mlruns",
    "mlartifacts",
    "mlflow.db*",
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
    """A job that cannot be found, or whose result is not there; a cluster that cannot be
    reached."""


def jobs_dir() -> Path:
    """Where job records are kept: ``.fedsweep/jobs`` in the working directory (now)."""
    return Path.cwd() / ".fedsweep" / "jobs"


def _read_record(path: Path) -> dict[str, Any]:
    """A job record, or JobError naming the file when it is unreadable or incomplete."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise JobError(f"{path}: unreadable job record ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("kind") not in ("local", "ray"):
        raise JobError(f"{path}: not a job record (no kind)")
    needed = ("pid",) if meta["kind"] == "local" else ("cluster",)
    missing = [k for k in needed if k not in meta]
    if missing:
        raise JobError(f"{path}: incomplete job record (no {', '.join(missing)})")
    return meta


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
    def cancel(self, timeout: float = 120.0) -> JobStatus:
        """Stops the job (a sweep stops cleanly and can be resumed), waiting up to
        ``timeout`` seconds for it to end; returns its status then."""

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
    allow_env: bool | None = None,
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
        allow_env: let the config read environment variables (the job's command gets
            ``--allow-env``); default: as ``FEDSWEEP_ALLOW_ENV`` says.

    Raises:
        ConfigError, SpaceError: the config or space is refused before anything is submitted.
        JobError: the cluster cannot be reached.
    """
    # Bad input fails here, in one line, rather than in a job somewhere else later.
    from orchestrator.config import load_config
    from orchestrator.data import check_data
    from orchestrator.errors import ConfigError
    from orchestrator.sweeps import check_space
    from search_spaces import load_space

    if allow_env is None:
        allow_env = os.environ.get("FEDSWEEP_ALLOW_ENV") == "1"
    cfg = load_config(Path(working_dir) / config, list(overrides), allow_env=allow_env)
    check_data(cfg)
    for flag, count in (("--trials", trials), ("--parallel", parallel)):
        if count is not None and count < 1:
            raise ConfigError(flag, f"must be >= 1, got {count}")
    if space is not None:
        check_space(load_space(Path(working_dir) / space), cfg)
    flags: list[str] = []
    for name, value in (
        ("--trials", trials),
        ("--parallel", parallel),
        ("--study", study),
        ("--storage", storage),
    ):
        if value is not None:
            flags += [name, str(value)]
    if allow_env:
        flags.append("--allow-env")
    args = _command(str(config), None if space is None else str(space), list(overrides), flags)
    if cluster:
        return RayJob.start(cluster, args, Path(working_dir))
    return LocalJob.start(args, Path(working_dir))


def get_job(job_id: str, cluster: str | None = None) -> Job:
    """The job with this id: a local one, or one submitted to ``cluster`` (or the cluster its
    record names)."""
    record = jobs_dir() / job_id / "job.json"
    if record.exists():
        meta = _read_record(record)
        if meta["kind"] == "local":
            return LocalJob(job_id)
        cluster = cluster or meta["cluster"]
    if cluster:
        return RayJob(job_id, cluster)
    raise JobError(f"no job {job_id!r} here; for a cluster job pass its --cluster address")


_LAUNCHER = r"""
import json, signal, subprocess, sys
command, folder = json.loads(sys.argv[1])
child, early = None, []
def forward(signum, frame):
    if child is None:
        early.append(signum)  # before the command started: it gets it once it has
    else:
        child.send_signal(signum)
stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
for sig in stops:
    signal.signal(sig, forward)
with open(folder + "/out.log", "wb") as out:  # the log exists: the signals are handed on
    # The command starts with the stop signals blocked (the mask is inherited) and unblocks
    # them once its handlers are in: one handed on while it imports waits, it does not kill it.
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)  # any that came meanwhile: forward()
    for signum in early:
        child.send_signal(signum)
    code = child.wait()
with open(folder + "/exit_code", "w") as f:
    f.write(str(128 - code if code < 0 else code))
"""
"""A local job's process: it runs the command, hands every stop signal on to it (so the job's
pid is the one to signal, as with any process), and records the exit code, so that a later
``fedsweep status`` (another process) knows it."""

_STOPPED = {str(128 + s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
"""Exit codes of a command stopped by a signal: the job is STOPPED, its runs KILLED."""


class LocalJob(Job):
    """A job in a detached local process; its output and exit code are kept on disk."""

    @classmethod
    def start(cls, args: list[str], working_dir: Path) -> LocalJob:
        job_id = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        folder = jobs_dir() / job_id
        folder.mkdir(parents=True)
        command = [sys.executable, "-m", "orchestrator.cli", *args]
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, json.dumps([command, str(folder)])],
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
        self.folder = jobs_dir() / job_id
        if not (self.folder / "job.json").exists():
            raise JobError(f"no local job {job_id!r}")
        self.meta = _read_record(self.folder / "job.json")
        self._proc: subprocess.Popen[bytes] | None = None

    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        import psutil

        try:
            # a shell that has exited but is not reaped yet is a zombie: not running
            return psutil.Process(self.meta["pid"]).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def status(self) -> JobStatus:
        code_file = self.folder / "exit_code"
        code = code_file.read_text().strip() if code_file.exists() else ""
        if code:
            if (self.folder / "cancelled").exists() or code in _STOPPED:
                return JobStatus.STOPPED
            return JobStatus.SUCCEEDED if code == "0" else JobStatus.FAILED
        if self._alive():
            return JobStatus.RUNNING
        return JobStatus.STOPPED if (self.folder / "cancelled").exists() else JobStatus.FAILED

    def logs(self) -> str:
        path = self.folder / "out.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cancel(self, timeout: float = 120.0) -> JobStatus:
        status = self.status()
        if status.finished:
            return status
        (self.folder / "cancelled").touch()
        import psutil

        try:
            # SIGINT to the job's process, which hands it to the command only (not to the Ray
            # processes it started, which share its group): a sweep then closes its runs and
            # can be resumed, as after Ctrl-C.
            psutil.Process(self.meta["pid"]).send_signal(signal.SIGINT)
        except psutil.NoSuchProcess:
            return self.status()
        status = self.wait(timeout=timeout, poll=0.2)
        if not status.finished:  # it did not stop in time: end the whole group
            try:
                os.killpg(self.meta["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
            status = self.wait(timeout=10, poll=0.2)
        return status


class RayJob(Job):
    """A job submitted through Ray's job submission API."""

    @classmethod
    def start(cls, cluster: str, args: list[str], working_dir: Path) -> RayJob:
        client = _client(cluster)
        entrypoint = " ".join(shlex.quote(a) for a in ["python", "-m", "orchestrator.cli", *args])
        runtime_env = {"working_dir": str(working_dir.resolve()), "excludes": _EXCLUDES}
        job_id = _call(lambda: client.submit(entrypoint, runtime_env))
        folder = jobs_dir() / job_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "job.json").write_text(
            json.dumps({"kind": "ray", "cluster": cluster, "args": args})
        )
        return cls(job_id, cluster, client)

    def __init__(self, job_id: str, cluster: str, client: RayJobClient | None = None) -> None:
        super().__init__(job_id)
        self.cluster = cluster
        self._client = client if client is not None else _client(cluster)

    def status(self) -> JobStatus:
        return JobStatus(_call(lambda: self._client.status(self.job_id)))

    def logs(self) -> str:
        return _call(lambda: self._client.logs(self.job_id))

    def cancel(self, timeout: float = 120.0) -> JobStatus:
        _call(lambda: self._client.stop(self.job_id))
        return self.wait(timeout=timeout, poll=0.5)


T = TypeVar("T")


def _client(cluster: str) -> RayJobClient:
    from clusters.jobs import RayJobClient

    return _call(lambda: RayJobClient(cluster))


def _call(fn: Callable[[], T]) -> T:
    """``fn()``, a cluster's refusal as JobError."""
    from clusters.jobs import ClusterError

    try:
        return fn()
    except ClusterError as exc:
        raise JobError(str(exc)) from None
