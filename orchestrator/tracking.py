"""MLflow tracking: the only module that imports mlflow.

One contract, :class:`Tracker`, with two implementations: :class:`MlflowTracker` follows one
MLflow run from creation to its end status, writing as it goes (metrics buffered and written
in batches: a write per value costs milliseconds on SQLite); :class:`RecordingTracker` keeps
everything in a :class:`RunRecord` that someone else writes later, at once
(:func:`write_record`): a sweep's trial hands its record to the driver.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

# MLflow's per-download progress bars would fill every trial's log (teachers, checkpoints),
# and its "View run at" links every sweep's stdout (whose last line is the JSON result).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# A tracking server that goes away during a run: MLflow retries each request with back-off,
# by default 7 times up to two minutes apart, each waiting 120 s for an answer (a hang of
# many minutes). Bounded here to 6 retries 0, 2, 4, 8, 16 and 32 s apart (about a minute: a
# server restarted after a short outage is back within it), each waiting 30 s, unless the
# user set MLflow's own variables.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "6")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

import mlflow  # noqa: E402
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.secrets import redact, redact_text
from trainers.cache import CACHE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_TRACKING_URI",
    "MlflowTracker",
    "RecordingTracker",
    "RunFiles",
    "RunRecord",
    "RunStatus",
    "Tracker",
    "fetch_checkpoint",
    "load_model",
    "require_store",
    "resolve_tracking_uri",
    "write_record",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_MAX_PARAMS, _MAX_METRICS, _MAX_PARAM_LEN = 100, 1000, 6000


class RunStatus(str, enum.Enum):
    """Where an MLflow run stands (MLflow's own names)."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


@runtime_checkable
class Tracker(Protocol):
    """What a run logs to, from start to end.

    Contract:
        * :meth:`start` opens the run with its params and tags; every other call comes after
          it and before :meth:`end`, which closes the run with its status (and the error that
          ended it, kept as the ``error`` tag and ``error.txt``).
        * Metrics are per step; :meth:`flush` makes the buffered ones durable (the live
          tracker writes in batches; a recording keeps everything until it is written).
        * Artifacts are logged under a relative path: text, a figure (PNG), an Arrow table
          (Parquet) or raw bytes.
        * :attr:`run_id` is the MLflow run's id once it exists (a recording has none until it
          is written).
        * :attr:`record` is what a recording holds, for whoever writes it (None for a tracker
          that writes as it goes).
    """

    run_id: str | None

    @property
    def record(self) -> RunRecord | None: ...

    def start(
        self,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_name: str | None = None,
        parent_run_id: str | None = None,
    ) -> None: ...

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def flush(self) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_text(self, text: str, path: str) -> None: ...

    def log_figure(self, fig: Figure, path: str) -> None: ...

    def log_table(self, table: pa.Table, path: str) -> None: ...

    def log_bytes(self, data: bytes, path: str) -> None: ...

    def end(
        self, status: RunStatus = RunStatus.FINISHED, error: BaseException | None = None
    ) -> None: ...


def resolve_tracking_uri(uri: str | None) -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db`` here."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def require_store(uri: str, timeout: float | None = None) -> None:
    """That the tracking store can be reached before a command starts anything. For an
    http(s) tracking URI, checks that an MLflow server answers there, within ``timeout``
    seconds (default :func:`clusters.connect_timeout`; MLflow's own client would retry for
    minutes first); for a SQLite store, that its directory can be made and written.

    Raises:
        ServiceError: no server answers at an http(s) URI (``tracking error: ...``).
        ConfigError: on ``tracking.uri``, a SQLite store that cannot be made.
    """
    from clusters import ServiceError, connect_timeout
    from orchestrator.errors import ConfigError

    if uri.startswith("sqlite:///"):  # a directory that cannot be made is one line too
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                "tracking.uri", f"cannot open {uri}: {exc.strerror or exc} ({folder})"
            ) from None
        if not os.access(folder, os.W_OK):
            raise ConfigError("tracking.uri", f"cannot open {uri}: {folder} is not writable")
        return
    if not uri.startswith(("http://", "https://")):
        return
    wait = connect_timeout() if timeout is None else timeout
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    bare = parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host).geturl()
    try:  # the health endpoint needs no credentials: the probe sends none
        with urllib.request.urlopen(bare.rstrip("/") + "/health", timeout=wait) as answer:
            if answer.status == 200:
                return
            problem = f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        problem = (
            getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        ).lower()
    raise ServiceError(
        "tracking", redact_text(uri), f"no MLflow server answers within {wait:g} s ({problem})"
    )


class MlflowTracker:
    """Creates one MLflow run and logs to it.

    Args:
        uri: tracking URI (see :func:`resolve_tracking_uri`).
        experiment: experiment name, created when missing.
        flush_every: steps of metrics buffered before a batched write.
    """

    def __init__(self, uri: str | None, experiment: str, flush_every: int = 20) -> None:
        self.uri = resolve_tracking_uri(uri)
        self.client: Any = _Watched(_client(self.uri), self.uri)
        self.experiment = experiment
        self.flush_every = flush_every
        self.run_id: str | None = None
        self.record: RunRecord | None = None  # written as it goes: nothing held back
        self._buffer: list[Metric] = []
        self._steps_buffered = 0

    def start(
        self,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_name: str | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        """Creates the run with its params and tags."""
        exp_id = _experiment_id(self.client, self.uri, self.experiment)
        all_tags = redact(tags)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(exp_id, tags=all_tags, run_name=run_name)
        self.run_id = run.info.run_id
        items = [Param(k, _param_value(v)) for k, v in redact(params).items()]
        for i in range(0, len(items), _MAX_PARAMS):
            self.client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS])

    def exists(self, run_id: str) -> bool:
        """Whether the store holds this run."""
        try:
            self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return False
        return True

    def resume(self, run_id: str) -> bool:
        """Reopens an existing run (a resumed sweep's parent); False when it is gone."""
        try:
            self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return False
        self.run_id = run_id
        self.client.update_run(run_id, status=RunStatus.RUNNING.value)
        return True

    def logged_steps(self, keys: list[str]) -> set[int]:
        """The steps at which any of these metrics was logged to the run so far."""
        steps: set[int] = set()
        for key in keys:
            steps.update(m.step for m in self.client.get_metric_history(self._run(), key))
        return steps

    def close_children(
        self,
        status: RunStatus,
        reason: str,
        trial: int | None = None,
        keep: Collection[int] = (),
    ) -> list[str]:
        """Ends this run's child runs that are still RUNNING (of one trial, or all of them but
        those of the trials in ``keep``)."""
        query = f"tags.mlflow.parentRunId = '{self._run()}' and attributes.status = 'RUNNING'"
        if trial is not None:
            query += f" and tags.`fedsweep.trial` = '{trial}'"
        exp_id = self.client.get_run(self._run()).info.experiment_id
        kept = {str(n) for n in keep}
        closed = []
        for r in self.client.search_runs([exp_id], query, max_results=1000):
            if r.data.tags.get("fedsweep.trial") in kept:
                continue
            self.client.set_tag(r.info.run_id, "error", reason)
            self.client.set_terminated(r.info.run_id, status=RunStatus(status).value)
            closed.append(r.info.run_id)
        return closed

    def run_tags(self, run_id: str, prefix: str = "") -> dict[str, str]:
        """The tags of a run (any run of the store) whose keys start with ``prefix``."""
        tags = self.client.get_run(run_id).data.tags
        return {k: v for k, v in tags.items() if k.startswith(prefix)}

    def register_model(self, model_uri: str, name: str, tags: Mapping[str, str]) -> str:
        """Registers a logged model under ``name``; returns the new version, created with its
        tags (so that another process searching by them finds it at once)."""
        mlflow.set_tracking_uri(self.uri)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            version = mlflow.register_model(
                model_uri, name, await_registration_for=60, tags=dict(tags)
            )
        return str(version.version)

    def model_versions(self, name: str, tags: Mapping[str, str]) -> list[str]:
        """Versions of the registered model ``name`` that carry all of ``tags``, lowest first
        (none when the model does not exist)."""
        try:
            found = self.client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            return []
        matching = [v for v in found if all(v.tags.get(k) == t for k, t in tags.items())]
        return sorted((str(v.version) for v in matching), key=int)

    def delete_model_version(self, name: str, version: str) -> None:
        self.client.delete_model_version(name, version)

    def delete_logged_model(self, model_uri: str) -> None:
        """Deletes a logged model (``models:/<model id>``)."""
        self.client.delete_logged_model(model_uri.removeprefix("models:/"))

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Buffers one step's metrics; writes when ``flush_every`` steps are buffered."""
        now = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._steps_buffered += 1
        if self._steps_buffered >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered metrics."""
        for i in range(0, len(self._buffer), _MAX_METRICS):
            self.client.log_batch(self._run(), metrics=self._buffer[i : i + _MAX_METRICS])
        self._buffer, self._steps_buffered = [], 0

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(
            self._run(), tags=[RunTag(k, str(v)) for k, v in redact(tags).items()]
        )

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self._run(), redact_text(text), path)

    def log_figure(self, fig: Figure, path: str) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(self._run(), fig, path)
        plt.close(fig)

    def log_bytes(self, data: bytes, path: str) -> None:
        """Logs raw bytes as the artifact ``path``."""
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(path).name
            local.write_bytes(data)
            parent = str(Path(path).parent)
            self.client.log_artifact(self._run(), str(local), None if parent == "." else parent)

    def read_bytes(self, uri: str) -> bytes:
        """The content of an artifact given by its ``runs:/<run id>/<path>`` URI."""
        run_id, _, path = uri.removeprefix("runs:/").partition("/")
        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, path, tmp)).read_bytes()

    def log_table(self, table: pa.Table, path: str) -> None:
        """Logs an Arrow table as a Parquet artifact at ``path``."""
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(path).name
            pq.write_table(table, local)
            parent = str(Path(path).parent)
            self.client.log_artifact(self._run(), str(local), None if parent == "." else parent)

    def log_model(
        self,
        model: Any,
        example: Any,
        name: str = "model",
        serialization: str = "pt2",
        run_id: str | None = None,
    ) -> str:
        """Logs a torch model with mlflow.pytorch; returns its URI (``models:/<model id>``).

        Args:
            model: the torch module.
            example: a small input batch (numpy); it fixes the signature and, for the pt2
                format, is what the graph is traced with.
            name: artifact name.
            serialization: ``pt2`` (a traced graph, safe to load) or ``pickle``.
            run_id: log into this run instead of the tracker's own (a finished one is fine).
        """
        import mlflow.pytorch
        import torch

        mlflow.set_tracking_uri(self.uri)
        # log_model works on the active run: resume ours for the call, then leave it open so
        # that end() sets its final status.
        target = run_id or self._run()
        info = self.client.get_run(target).info
        # Another process may be logging into the same finished run (two drivers finishing
        # a study): it shows RUNNING then, but its end time says it had ended.
        status = (
            info.status
            if info.end_time is None
            else (
                RunStatus.FINISHED.value if info.status == RunStatus.RUNNING.value else info.status
            )
        )
        with (
            mlflow.start_run(run_id=target, nested=mlflow.active_run() is not None),
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", message="No complete tensor found")
            logged = mlflow.pytorch.log_model(
                model,
                name=name,
                input_example=example,
                serialization_format=serialization,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
        self.client.update_run(target, status=status)  # start_run/end_run changed it
        return str(logged.model_uri)

    def end(
        self, status: RunStatus = RunStatus.FINISHED, error: BaseException | None = None
    ) -> None:
        """Flushes and closes the run: FINISHED, FAILED (with the error) or KILLED. A
        tracking server that stopped answering is not asked again: the run stays as the
        server last saw it (RUNNING), to continue with ``--resume`` once it is back."""
        if self.run_id is None or self.client.lost:
            return
        try:
            self.flush()
            if error is not None:
                message = f"{type(error).__name__}: {error}"
                self.set_tags({"error": message[:5000]})
                import traceback

                self.log_text(
                    "".join(traceback.format_exception(type(error), error, error.__traceback__)),
                    "error.txt",
                )
        finally:
            self.client.set_terminated(self.run_id, status=RunStatus(status).value)

    def _run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("the MLflow run has not been started")
        return self.run_id


def _lost(exc: BaseException) -> BaseException | None:
    """The connection failure behind an MLflow client error (MLflow raises its own exception
    while handling the one from ``requests``), or None for any other error."""
    import requests
    import urllib3

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, (requests.exceptions.RequestException, urllib3.exceptions.HTTPError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class _Watched:
    """An MlflowClient whose calls, when the tracking server stops answering (MLflow's own
    retries spent: ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``), raise one
    :class:`~clusters.ServiceError` line; every call after that fails at once rather than
    retrying again."""

    def __init__(self, client: MlflowClient, uri: str) -> None:
        self._client, self._uri, self.lost = client, uri, False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            from clusters import ServiceError

            if self.lost:
                raise ServiceError("tracking", redact_text(self._uri), "the server is gone", True)
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                cause = _lost(exc)
                if cause is None or not self._uri.startswith(("http://", "https://")):
                    raise
                self.lost = True
                retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
                reason = type(cause).__name__
                raise ServiceError(
                    "tracking",
                    redact_text(self._uri),
                    f"the server stopped answering ({reason}, after {retries} retries)",
                    True,
                ) from None

        return call


class RunFiles:
    """Files among a run's artifacts, under ``prefix`` (a :class:`orchestrator.checkpoints.Files`
    store: where a run's checkpoints go).

    Args:
        uri: the tracking URI.
        run_id: the run whose artifacts hold them (any run: a sweep's trials keep theirs
            under the study's parent run, where a retried attempt finds them).
        prefix: their folder among the run's artifacts.
    """

    def __init__(self, uri: str, run_id: str, prefix: str = "checkpoints") -> None:
        self.client: Any = _Watched(_client(resolve_tracking_uri(uri)), resolve_tracking_uri(uri))
        self.run_id, self.prefix = run_id, prefix

    def write(self, name: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / name
            local.write_bytes(data)
            self.client.log_artifact(self.run_id, str(local), self.prefix)

    def read(self, name: str) -> bytes | None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client.download_artifacts(self.run_id, f"{self.prefix}/{name}", tmp)
            except (MlflowException, OSError):
                return None
            return Path(path).read_bytes()


@dataclass
class RunRecord:
    """Everything one run would log, kept in memory to be written later, elsewhere, at once
    (a sweep's trial hands it to the driver, which writes it while the next trial trains)."""

    experiment: str
    run_name: str | None = None
    parent_run_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)
    """(key, value, timestamp in ms, step)."""
    files: dict[str, bytes] = field(default_factory=dict)
    """Artifact path -> content."""
    status: RunStatus = RunStatus.RUNNING
    start_ms: int = 0
    end_ms: int | None = None
    model_path: str | None = None
    """The artifact path of the model checkpoint, if one was logged."""


class RecordingTracker:
    """A :class:`Tracker` recording into a :class:`RunRecord` instead of writing.

    Models are logged as checkpoints only (an MLflow model needs a live run to log into).
    """

    def __init__(self, experiment: str) -> None:
        self.record: RunRecord = RunRecord(experiment)
        self.run_id: str | None = None

    def start(
        self,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_name: str | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        r = self.record
        r.params = {k: _param_value(v) for k, v in redact(params).items()}
        r.tags, r.run_name, r.parent_run_id = redact(tags), run_name, parent_run_id
        r.start_ms = int(time.time() * 1000)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        self.record.metrics += [(k, float(v), now, step) for k, v in metrics.items()]

    def flush(self) -> None:
        """Nothing to write yet: the record is written as a whole."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.record.tags.update({k: str(v) for k, v in redact(tags).items()})

    def log_text(self, text: str, path: str) -> None:
        self.record.files[path] = redact_text(text).encode()

    def log_figure(self, fig: Figure, path: str) -> None:
        import io

        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        self.record.files[path] = buffer.getvalue()

    def log_table(self, table: pa.Table, path: str) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.record.files[path] = sink.getvalue().to_pybytes()

    def log_bytes(self, data: bytes, path: str) -> None:
        self.record.files[path] = data
        self.record.model_path = path if path.startswith("checkpoint/") else self.record.model_path

    def end(
        self, status: RunStatus = RunStatus.FINISHED, error: BaseException | None = None
    ) -> None:
        if error is not None:
            import traceback

            self.record.tags["error"] = redact_text(f"{type(error).__name__}: {error}")[:5000]
            self.record.files["error.txt"] = redact_text(
                "".join(traceback.format_exception(type(error), error, error.__traceback__))
            ).encode()
        self.record.status = status
        self.record.end_ms = int(time.time() * 1000)


def _experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The experiment's id, created when missing; looked up once per process and store."""

    def look_up() -> str:
        with _store_lock(uri):
            exp = client.get_experiment_by_name(name)  # on a new store, this creates its tables
            found = exp.experiment_id if exp else client.create_experiment(name)
            _use_wal(uri)
        return str(found)

    return CACHE.get("tracking.experiment", (uri, name), look_up)


def _client(uri: str) -> MlflowClient:
    """An MLflow client of the store at ``uri`` (making one opens the store, and creates its
    tables when it is new: under the store's lock)."""
    with _store_lock(uri):
        return MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialises the first use of a SQLite store across processes: two drivers started at
    once in a fresh directory would otherwise both create its tables (an Alembic migration
    race that crashes one of them). Servers and other stores create their tables once
    themselves."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = Path(uri.removeprefix("sqlite:///") + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_model(ref: str, uri: str | None = None) -> Any:
    """A fedsweep run's model as a torch module, in eval mode: what ``tracking.model_format:
    checkpoint`` (the default) logs, and every run logs beside an MLflow model.

    Args:
        ref: ``run:<run id>``, ``runs:/<run id>/checkpoint/model.pt``, ``models:/<name>/<version>``
            or ``models:/<model id>`` (see :func:`fetch_checkpoint`).
        uri: the tracking URI (default: $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``).

    Raises:
        ValueError: the reference is malformed or points at nothing loadable.
    """
    from trainers.models import load_checkpoint

    data, _ = fetch_checkpoint(ref, uri)
    model, _ = load_checkpoint(data)
    return model.eval()


def fetch_checkpoint(ref: str, uri: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The fedsweep checkpoint a model reference points to, and lineage tags naming it.

    Args:
        ref: ``run:<run id>`` (the checkpoint every fedsweep run logs), ``runs:/<run id>/<path>``,
            ``models:/<name>/<version>`` (a registered version) or ``models:/<model id>`` (a
            logged model): the last two resolve to the run that produced them.
        uri: the tracking URI.

    Raises:
        ValueError: the reference is malformed or points at nothing loadable.
    """
    client = _client(resolve_tracking_uri(uri))
    lineage = {"lineage.teacher_uri": ref}
    path = "checkpoint/model.pt"
    try:
        if ref.startswith("run:"):
            run_id = ref[len("run:") :]
        elif ref.startswith("runs:/"):
            run_id, _, path = ref[len("runs:/") :].partition("/")
        elif ref.startswith("models:/"):
            name, _, version = ref[len("models:/") :].partition("/")
            if version:
                source = client.get_model_version(name, version).run_id
                lineage["lineage.teacher_model_name"] = name
                lineage["lineage.teacher_model_version"] = version
            else:
                source = client.get_logged_model(name).source_run_id
            if not source:
                raise ValueError(f"{ref}: the model names no run it came from")
            run_id = source
        else:
            raise ValueError(f"{ref!r} must start with run:, runs:/ or models:/")
        lineage["lineage.teacher_run_id"] = run_id
        with tempfile.TemporaryDirectory() as tmp:
            return Path(client.download_artifacts(run_id, path, tmp)).read_bytes(), lineage
    except MlflowException as exc:
        raise ValueError(f"{ref}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise ValueError(f"{ref}: no {path} in that run ({exc.__class__.__name__})") from None


def write_record(record: RunRecord, uri: str, extra_tags: Mapping[str, str] | None = None) -> str:
    """Writes a recorded run in a few transactions (create, one batch, end; on a SQL store:
    create, then one for the rest); returns its id."""
    uri = resolve_tracking_uri(uri)
    client = _client(uri)
    exp_id = _experiment_id(client, uri, record.experiment)
    tags = redact({**record.tags, **(extra_tags or {})})
    if record.parent_run_id:
        tags["mlflow.parentRunId"] = record.parent_run_id
    info = client.create_run(
        exp_id, start_time=record.start_ms or None, tags=tags, run_name=record.run_name
    ).info
    run_id = info.run_id
    params = [Param(k, v) for k, v in record.params.items()]
    metrics = [Metric(k, v, ts, step) for k, v, ts, step in record.metrics]
    if record.files:
        _write_artifacts(client, run_id, info.artifact_uri, record.files)
    status, end_ms = RunStatus(record.status).value, record.end_ms or int(time.time() * 1000)
    if _insert_new_run(client, run_id, params, metrics, status, end_ms):
        return run_id
    while params or metrics:
        chunk_p, params = params[:_MAX_PARAMS], params[_MAX_PARAMS:]
        room = _MAX_METRICS - len(chunk_p)
        chunk_m, metrics = metrics[:room], metrics[room:]
        client.log_batch(run_id, metrics=chunk_m, params=chunk_p)
    client.set_terminated(run_id, status=status, end_time=end_ms)
    return run_id


def _insert_new_run(
    client: MlflowClient,
    run_id: str,
    params: list[Param],
    metrics: list[Metric],
    status: str,
    end_ms: int,
) -> bool:
    """Writes a run just created here, its params, its whole metric history and its end, in
    one transaction on a SQL store; returns False (nothing written) for any other store.

    MLflow's ``log_batch`` makes an ORM object of every value and looks up each key's latest
    value before it inserts: about 40 ms for a trial's 510 values on SQLite, on the sweep's
    writer thread, taking the GIL from the next trial's training. A run nobody else has
    written to needs neither: its rows go in as two bulk inserts (values, and each key's
    latest by MLflow's own order: step, timestamp, value), in MLflow's own tables, with
    MLflow's own checks of each value and its rule for NaN and infinities."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if not isinstance(store, SqlAlchemyStore):
        return False
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun
    from mlflow.utils.validation import _validate_batch_log_data

    _validate_batch_log_data(metrics, params, [])
    rows: dict[tuple, dict[str, object]] = {}
    latest: dict[str, dict[str, object]] = {}
    for m in metrics:
        is_nan, value = store.sanitize_metric_value(m.value)
        row = {
            "run_uuid": run_id,
            "key": m.key,
            "value": value,
            "timestamp": m.timestamp,
            "step": m.step,
            "is_nan": is_nan,
        }
        rows.setdefault((m.key, m.timestamp, m.step, value, is_nan), row)
        best = latest.get(m.key)
        if best is None or (m.step, m.timestamp, value) > (
            best["step"],
            best["timestamp"],
            best["value"],
        ):
            latest[m.key] = row
    maker = store.ManagedSessionMaker
    writing = {"read_only": False} if "read_only" in inspect.signature(maker).parameters else {}
    with maker(**writing) as session:
        if params:
            values = [{"run_uuid": run_id, "key": p.key, "value": p.value} for p in params]
            session.execute(SqlParam.__table__.insert(), values)
        if rows:
            session.execute(SqlMetric.__table__.insert(), list(rows.values()))
            session.execute(SqlLatestMetric.__table__.insert(), list(latest.values()))
        ended = SqlRun.__table__.update().where(SqlRun.__table__.c.run_uuid == run_id)
        session.execute(ended.values(status=status, end_time=end_ms))
    return True


def _write_artifacts(
    client: MlflowClient, run_id: str, artifact_uri: str, files: Mapping[str, bytes]
) -> None:
    """Writes a run's files straight into its artifact directory when that is on this file
    system (the default store's ``mlruns``); elsewhere through MLflow's artifact repository.
    Asking MLflow for the repository costs a lookup of the run (~13 ms of a ~50 ms write)."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        root = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme else artifact_uri)
        for path, data in files.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for path, data in files.items():
            local = Path(tmp) / path
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
        client.log_artifacts(run_id, tmp)


def _use_wal(uri: str) -> None:
    """Puts a SQLite store in write-ahead-log mode (a setting the file keeps): commits get
    cheaper and parallel trials no longer block each other's writes while one reads."""
    if not uri.startswith("sqlite:///"):
        return
    import sqlite3

    path = uri.removeprefix("sqlite:///")
    if Path(path).exists():
        with sqlite3.connect(path, timeout=30) as con:
            con.execute("PRAGMA journal_mode=WAL")


def _param_value(v: Any) -> str:
    text = "None" if v is None else str(v)
    return text[:_MAX_PARAM_LEN]
