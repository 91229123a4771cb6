"""One experiment end to end: config -> data -> parties on an executor -> trainer -> MLflow.

:func:`run` is the code path of both the Python API and ``fedsweep run``, and of every sweep
trial. A run that fails after it started is closed as FAILED and raised as :class:`RunFailed`,
which carries the run's id (or, recorded, its record); one stopped on purpose by its progress
callback (a pruned trial) is closed as FINISHED and returned with ``stopped`` set.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clusters import Executor, InProcessExecutor, ResourceError, WorkerLost
from orchestrator import signals
from orchestrator.checkpoints import Checkpoint, Checkpoints, Files
from orchestrator.config import (
    ExecutorKind,
    ExperimentConfig,
    ModelFormat,
    RuntimeConfig,
    flatten,
    load_config,
    to_dict,
    to_yaml,
)
from orchestrator.data import USER_DATA, Prepared, prepare, training_rows, write_partitions
from orchestrator.errors import ConfigError
from orchestrator.timings import Timings
from orchestrator.validation import validate
from trainers import TRAINERS
from trainers.base import Invalid, PartyRows, StopTraining, Trainer, TrainResult
from trainers.cache import CACHE
from trainers.graph.data import GraphData
from trainers.local import warm_up
from trainers.models import ModelSpec, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from orchestrator.tracking import RunRecord, Tracker

__all__ = [
    "LOCAL_WORK",
    "ActorsLost",
    "RunFailed",
    "RunResult",
    "RunStopped",
    "choose_executor",
    "make_executor",
    "run",
]

ProgressFn = Callable[[int, Mapping[str, float]], None]
_CHECKPOINT = "checkpoint/model.pt"


@dataclass
class RunResult:
    """What one experiment produced."""

    run_id: str | None
    """MLflow run id (None when tracking is off, or the run was only recorded)."""
    metrics: dict[str, float]
    """The last round's metrics, plus wall_time_s."""
    history: list[dict[str, float]] = field(default_factory=list)
    """One metrics dict per round, with a ``round`` key."""
    model_uri: str | None = None
    """``models:/<model id>`` when the model was logged as an MLflow model, or
    ``runs:/<run id>/checkpoint/model.pt`` for a checkpoint."""
    record: RunRecord | None = None
    """With ``tracking.deferred``: the run's record, written by whoever receives it."""
    model_path: str | None = None
    """The checkpoint's artifact path, when one was logged."""
    stopped: str | None = None
    """Why the run stopped before its last round (a pruned trial); None: it ran to the end."""
    headline: tuple[str, ...] = ()
    """The final metrics worth a summary line (the trainer's choice)."""
    resumed_from: int | None = None
    """The round of the checkpoint the run resumed from (None: it started afresh)."""
    checkpoints: int = 0
    """Checkpoints written."""
    restarts: int = 0
    """Actors that died and were replaced (their rounds run again from a checkpoint)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per phase of the run (see :mod:`orchestrator.timings`)."""

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "metrics": self.metrics}


class RunFailed(Exception):
    """A run that started and then failed; its MLflow run is closed as FAILED.

    Attributes:
        cause: the exception that ended it.
        run_id: its MLflow run (None when untracked or only recorded).
        record: its record, when the run was recorded (``tracking.deferred``).
    """

    def __init__(self, cause: Exception, run_id: str | None, record: RunRecord | None) -> None:
        self.cause, self.run_id, self.record = cause, run_id, record
        super().__init__(f"{type(cause).__name__}: {cause}")


LOCAL_WORK = 500_000
"""The most sample passes (:meth:`trainers.Trainer.sample_steps`) a run with
``runtime.executor: auto`` trains in this process: about 20 s of the quickstart's MLP on 2
cores, which is where Ray's start (some 10 s here, with its workers' imports) and its second
core start to pay."""


def choose_executor(runtime: RuntimeConfig, work: float | None) -> ExecutorKind:
    """Where a run's parties go: what ``runtime.executor`` says, or for ``auto``, Ray when an
    address, actors or GPU shares are asked for, or the work (sample passes; None: unknown)
    is more than :data:`LOCAL_WORK`; else this process."""
    if runtime.executor != ExecutorKind.auto:
        return runtime.executor
    asks_ray = runtime.address or runtime.num_workers is not None or runtime.gpus_per_worker
    if asks_ray or work is None or work > LOCAL_WORK:
        return ExecutorKind.ray
    return ExecutorKind.local


def make_executor(runtime: RuntimeConfig, work: float | None = None) -> Executor:
    """The executor the runtime config asks for (see :func:`choose_executor`); a Ray pool
    starts warming up at once."""
    try:
        if choose_executor(runtime, work) == ExecutorKind.local:
            return InProcessExecutor(device=str(runtime.device))
        from clusters import RayExecutor

        return RayExecutor(
            address=runtime.address,
            num_workers=runtime.num_workers,
            num_cpus=runtime.num_cpus,
            worker_init=warm_up,
            gpus_per_worker=runtime.gpus_per_worker,
            device=str(runtime.device),
        )
    except ResourceError as exc:
        raise ConfigError(exc.key, exc.problem) from None
    except RuntimeError as exc:  # cuda asked of an in-process run where no GPU is visible
        if "sees no GPU" not in str(exc):
            raise
        raise ConfigError("runtime.device", str(exc)) from None


class _Reporter:
    """Fans a trainer's per-round metrics out to the history, MLflow and a progress callback.

    A step reported once is not reported again: rounds run again after a rollback, and those
    a resumed run repeats after its checkpoint, were logged already (with the same values).
    """

    def __init__(
        self, tracker: Tracker | None, progress: ProgressFn | None, seen: set[int] | None = None
    ) -> None:
        self.tracker = tracker
        self.progress = progress
        self.history: list[dict[str, float]] = []
        self.seen: set[int] = set(seen or ())
        self.writing = 0.0
        """Seconds spent handing metrics to the tracker (its batched writes included)."""
        self.first: float | None = None
        """When the first step was reported (perf_counter)."""

    def report(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        if step in self.seen:
            return
        self.seen.add(step)
        self.history.append({"round": float(step), **metrics})
        if self.tracker is not None:
            start = time.perf_counter()
            self.tracker.log_metrics(step, metrics)
            self.writing += time.perf_counter() - start
        if self.progress is not None:
            self.progress(step, metrics)


def run(
    config: str | os.PathLike[str] | ExperimentConfig | dict[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    progress: ProgressFn | None = None,
    executor: Executor | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    resume: str | None = None,
    checkpoints: Checkpoints | None = None,
    on_start: Callable[[str], None] | None = None,
    timings: Timings | None = None,
) -> RunResult:
    """Runs one experiment and records it in MLflow.

    Args:
        config: a YAML path, a nested dict or an ExperimentConfig (used as it is, without
            parsing, when there are no overrides).
        overrides: ``dotted.key=value`` strings applied on top.
        progress: called after every round with (round, metrics); it may raise
            :class:`trainers.StopTraining` to stop the run early.
        executor: run parties here instead of the executor ``runtime`` asks for (the caller
            keeps ownership and closes it).
        tags: extra MLflow tags.
        parent_run_id: nest the run under this MLflow run.
        resume: continue this run (an MLflow run id; for an untracked run, its checkpoint
            directory) from its last checkpoint, into the same MLflow run. Its config may
            differ in its budget only (and where it runs, and what it logs).
        checkpoints: where the run's checkpoints go (default: its MLflow artifacts, or
            ``runtime.checkpoint_dir``); one already there is resumed from (a sweep's retried
            trial).
        on_start: called with the MLflow run's id once it exists (a command line prints it:
            what a run killed with SIGKILL is resumed by).
        timings: where the phases' times go (``fedsweep run --profile`` passes one holding
            the imports already); they are also in the result and the run's metrics.

    Raises:
        ConfigError: bad config or data, or a resume that cannot be; raised before any
            MLflow run exists (or is reopened).
        RunFailed: the run failed after it started (its MLflow run is FAILED).
    """
    t = timings if timings is not None else Timings()
    with t.phase("config"):
        if isinstance(config, ExperimentConfig) and not overrides:
            cfg = config
            validate(cfg)
        else:
            cfg = load_config(config, list(overrides))
        if cfg.tracking.enabled and parent_run_id is None:  # a sweep's trial: its driver asked
            from orchestrator.tracking import require_store, resolve_tracking_uri

            require_store(resolve_tracking_uri(cfg.tracking.uri))
        store, restored = _checkpoints(cfg, resume, checkpoints)
        trainer = TRAINERS.get(cfg.trainer.name)(cfg.trainer, cfg.model)
        lineage = _load_teacher(cfg, trainer)
    # A user's data file is read (and refused, when bad) before anything starts; generated
    # and bundled data load while the Ray actors warm up.
    with t.phase("data"):
        early = prepare(cfg) if cfg.data.name in USER_DATA else None
    own_executor = executor is None
    if executor is None:
        with t.phase("executor start"):
            rows = training_rows(cfg) if early is None else _training_rows(early)
            executor = make_executor(
                cfg.runtime, None if rows is None else trainer.sample_steps(rows)
            )
            signals.reinstall()  # Ray took SIGTERM over
    try:
        with t.phase("data"):
            prepared = early if early is not None else prepare(cfg)
            try:
                trainer.check(prepared.data)
            except Invalid as exc:
                raise ConfigError(exc.key, exc.problem) from None
            if cfg.partition.output_dir:
                write_partitions(prepared, cfg.partition.output_dir)
        return _run_tracked(
            cfg,
            trainer,
            prepared,
            executor,
            progress,
            {**lineage, **(tags or {})},
            parent_run_id,
            _Resume(resume, store, restored),
            on_start,
            t,
        )
    finally:
        if own_executor:
            with t.phase("executor close"):
                executor.close()


def _training_rows(prepared: Prepared) -> int | None:
    parties = getattr(prepared.data, "parties", None)
    return len(parties.y) if isinstance(parties, PartyRows) else None


def _load_teacher(cfg: ExperimentConfig, trainer: Trainer[Any, Any]) -> dict[str, str]:
    """Hands a trainer the teacher it asks for, from MLflow; returns the lineage tags."""
    ref = trainer.teacher_uri()
    if ref is None:
        return {}
    from orchestrator.tracking import fetch_checkpoint

    where = ref.tracking_uri or cfg.tracking.uri
    try:
        # fetched once per process: a sweep's trials on one worker share it
        data, lineage = CACHE.get(
            "runner.teacher", (ref.uri, where), lambda: fetch_checkpoint(ref.uri, where)
        )
    except ValueError as exc:
        raise ConfigError(ref.key, str(exc)) from None
    trainer.teacher, _ = load_checkpoint(data)
    return dict(lineage)


def _start_tracker(
    cfg: ExperimentConfig,
    prepared: Prepared,
    tags: Mapping[str, str],
    parent_run_id: str | None,
) -> Tracker:
    from orchestrator.tracking import MlflowTracker, RecordingTracker

    t = cfg.tracking
    tracker: Tracker
    if t.deferred:
        tracker = RecordingTracker(t.experiment)
    else:
        tracker = MlflowTracker(t.uri, t.experiment, t.flush_every)
    logged = to_dict(cfg, logged=True)  # once: a trial's run spent 3 ms on each
    tracker.start(
        _params(cfg, logged),
        {**_run_tags(cfg), **tags},
        run_name=t.run_name,
        parent_run_id=parent_run_id,
    )
    tracker.log_text(to_yaml(logged), "config.yaml")
    if t.partition:
        tracker.log_table(prepared.stats, "partition/stats.parquet")
        if t.plots and "label_0" in prepared.stats.column_names:
            from orchestrator import plots

            tracker.log_figure(
                plots.label_histogram(prepared.stats), "partition/label_histogram.png"
            )
            if isinstance(prepared.data, GraphData):
                drawing = plots.graph_partition(prepared.data)
                if drawing is not None:
                    tracker.log_figure(drawing, "partition/graph.png")
    return tracker


@dataclass
class _Resume:
    """Where a run's checkpoints go, and the one it resumes from (if any)."""

    run_id: str | None
    """The MLflow run to reopen (``--resume``)."""
    store: Checkpoints | None
    checkpoint: Checkpoint | None


def _checkpoints(
    cfg: ExperimentConfig, resume: str | None, store: Checkpoints | None
) -> tuple[Checkpoints | None, Checkpoint | None]:
    """The run's checkpoint store and the checkpoint to resume from, checked against the
    config (a ConfigError before anything starts)."""
    from orchestrator.checkpoints import Directory, refuse_difference

    files: Files | None = None
    if store is None and resume is not None:
        if cfg.tracking.enabled:
            from orchestrator.tracking import MlflowTracker, RunFiles

            if not MlflowTracker(cfg.tracking.uri, cfg.tracking.experiment).exists(resume):
                raise ConfigError("--resume", f"no run {resume!r} in {cfg.tracking.uri}")
            files = RunFiles(cfg.tracking.uri or "", resume)
        else:
            if not Path(resume).is_dir():
                raise ConfigError("--resume", f"{resume}: no checkpoint directory there")
            files = Directory(resume)
    elif store is None and not cfg.tracking.enabled and cfg.runtime.checkpoint_dir:
        files = Directory(cfg.runtime.checkpoint_dir)
    if files is not None:
        store = Checkpoints(files)
    restored = store.latest() if store is not None else None
    if resume is not None and restored is None:
        raise ConfigError("--resume", f"run {resume!r} has no checkpoint to resume from")
    if restored is not None:
        refuse_difference(restored.config, cfg)
    return store, restored


class _Rounds:
    """The round loop, as :meth:`trainers.Trainer.fit` runs it, plus what a run that survives
    needs: checkpoints every few rounds, a resume from one, and a rollback to the last one
    when an actor dies (the executor replaces it; its parties' state comes back from the
    checkpoint, and the rounds since are run again, bit for bit, unreported twice)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        trainer: Trainer[Any, Any],
        executor: Executor,
        reporter: _Reporter,
        store: Checkpoints | None,
        flush: Callable[[], None],
    ) -> None:
        self.cfg, self.trainer, self.executor, self.reporter = cfg, trainer, executor, reporter
        self.store, self.flush = store, flush
        self.every = cfg.runtime.checkpoint_every
        self.saved_at = time.perf_counter()
        self.cost = 0.0
        self.snapshot = b""
        self.checkpoints = 0
        self.restarts = 0
        self.saving = 0.0
        """Seconds spent keeping snapshots and writing checkpoints."""

    def run(self, data: Any, resumed: Checkpoint | None) -> TrainResult:
        state = self.trainer.begin(data, self.executor, self.cfg.seed)
        if resumed is not None:
            state = resumed.state
            self.executor.restore_party_states(resumed.parties)
        self._keep(state, durable=False)
        self.cost = 0.0  # that one waited for the actors to start: not what a checkpoint costs
        self.saving = 0.0  # and is part of the first round
        while not self.trainer.done(state):
            try:
                out = self.trainer.advance(state, self.executor)
                if out is not None:
                    self.trainer.record(state, *out, self.reporter)
                if self._due(state.round):
                    self._keep(state, durable=self.store is not None)
            except WorkerLost as exc:
                state = self._lost(exc)
        return self.trainer.end(state, self.executor, self.reporter)

    def _due(self, round_: int) -> bool:
        if self.every == 0:
            return False
        if self.every is not None:
            return round_ % self.every == 0
        # auto: when the rounds since the last checkpoint took 20 times what it cost
        return time.perf_counter() - self.saved_at >= max(20 * self.cost, 1.0)

    def _keep(self, state: Any, durable: bool) -> None:
        """Snapshots the state in memory (the rollback point when an actor dies) and, when
        durable, writes it as a checkpoint (the point a resume starts from)."""
        start = time.perf_counter()
        checkpoint = Checkpoint(state.round, to_dict(self.cfg), state, self.executor.party_states())
        self.snapshot = checkpoint.to_bytes()
        if durable and self.store is not None:
            self.flush()  # the metrics logged so far are durable before the checkpoint is
            self.store.save(checkpoint)
            self.checkpoints += 1
        self.cost = time.perf_counter() - start
        self.saving += self.cost
        self.saved_at = time.perf_counter()

    def _lost(self, exc: WorkerLost) -> Any:
        """Counts a lost actor (the executor replaced it) and rolls back to the last
        snapshot; the state to go on from."""
        while True:
            self.restarts += 1
            limit = self.cfg.runtime.max_actor_restarts
            if self.restarts > limit:
                raise ActorsLost(
                    f"{exc}; {self.restarts} lost in this run, more than "
                    f"runtime.max_actor_restarts={limit}"
                ) from None
            checkpoint = Checkpoint.from_bytes(self.snapshot)
            try:
                self.executor.restore_party_states(checkpoint.parties)
            except WorkerLost as again:
                exc = again
                continue
            return checkpoint.state


class RunStopped(KeyboardInterrupt):
    """A run stopped by Ctrl-C or a signal; its MLflow run is KILLED, its last checkpoint
    usable.

    Attributes:
        run_id: its MLflow run (to resume), None when untracked.
        exit_code: 130 for Ctrl-C, 128 + the signal's number for a signal.
    """

    def __init__(self, cause: KeyboardInterrupt, run_id: str | None) -> None:
        self.run_id = run_id
        self.exit_code = int(getattr(cause, "exit_code", 130))
        super().__init__(str(cause) or "interrupted")


class ActorsLost(RuntimeError):
    """More actors died than a run may lose; it stays resumable from its last checkpoint."""


def _run_tracked(
    cfg: ExperimentConfig,
    trainer: Trainer[Any, Any],
    prepared: Prepared,
    executor: Executor,
    progress: ProgressFn | None,
    extra_tags: Mapping[str, str],
    parent_run_id: str | None,
    resume: _Resume,
    on_start: Callable[[str], None] | None,
    t: Timings,
) -> RunResult:
    from orchestrator.tracking import RunStatus

    with t.phase("tracking start"):
        tracker, seen, store = _open_run(cfg, prepared, extra_tags, parent_run_id, resume)
    if on_start is not None and tracker is not None and tracker.run_id is not None:
        on_start(tracker.run_id)
    record = tracker.record if tracker is not None else None
    reporter = _Reporter(tracker, progress, seen)
    rounds = _Rounds(
        cfg, trainer, executor, reporter, store, tracker.flush if tracker else lambda: None
    )
    start = time.perf_counter()
    try:
        try:
            result: TrainResult = rounds.run(prepared.data, resume.checkpoint)
        finally:
            _time_rounds(t, start, reporter, rounds)
    except StopTraining as exc:  # stopped on purpose (a pruned trial): not a failure
        reason = str(exc) or "stopped"
        if tracker is not None:
            tracker.set_tags({"stopped_early": reason, **_where(executor)})
            tracker.log_metrics(len(reporter.history), t.metrics())
            tracker.end(RunStatus.FINISHED)
        last = reporter.history[-1] if reporter.history else {}
        return RunResult(
            tracker.run_id if tracker else None,
            {k: v for k, v in last.items() if k != "round"},
            reporter.history,
            record=record,
            stopped=reason,
            headline=trainer.headline,
            resumed_from=resume.checkpoint.round if resume.checkpoint is not None else None,
            checkpoints=rounds.checkpoints,
            restarts=rounds.restarts,
            timings=t.phases,
        )
    except Exception as exc:
        if tracker is not None:
            tracker.end(RunStatus.FAILED, exc)
        raise RunFailed(exc, tracker.run_id if tracker else None, record) from exc
    except KeyboardInterrupt as exc:  # Ctrl-C, a signal: the run was killed
        if tracker is not None:
            tracker.end(RunStatus.KILLED, exc)
        raise RunStopped(exc, tracker.run_id if tracker else None) from exc
    except BaseException as exc:
        if tracker is not None:
            tracker.end(RunStatus.KILLED, exc)
        raise
    metrics = {**result.final_metrics, "wall_time_s": time.perf_counter() - start}
    model_uri = model_path = None
    if tracker is not None:
        try:
            tracker.log_metrics(len(result.history), {"wall_time_s": metrics["wall_time_s"]})
            tracker.set_tags(_where(executor))
            if cfg.tracking.plots:
                with t.phase("plots"):
                    _phase(progress, "plots")
                    _log_plots(tracker, cfg, trainer, result)
            if result.tables:
                import pyarrow as pa

                with t.phase("tables"):
                    for name, rows in result.tables.items():
                        if rows:
                            tracker.log_table(pa.Table.from_pylist(rows), f"tables/{name}.parquet")
            if cfg.tracking.log_model:
                with t.phase("model"):
                    _phase(progress, "model")
                    model_uri, model_path = _log_model(tracker, cfg, trainer, result, prepared)
            _phase(progress, "closing the run")
            tracker.log_metrics(len(result.history), t.metrics())
        except Exception as exc:
            tracker.end(RunStatus.FAILED, exc)
            raise RunFailed(exc, tracker.run_id, record) from exc
        except BaseException as exc:
            tracker.end(RunStatus.KILLED, exc)
            raise
        with t.phase("run end"):
            tracker.end(RunStatus.FINISHED)
    return RunResult(
        tracker.run_id if tracker else None,
        metrics,
        result.history,
        model_uri,
        record,
        model_path,
        headline=trainer.headline,
        resumed_from=resume.checkpoint.round if resume.checkpoint is not None else None,
        checkpoints=rounds.checkpoints,
        restarts=rounds.restarts,
        timings=t.phases,
    )


def _open_run(
    cfg: ExperimentConfig,
    prepared: Prepared,
    extra_tags: Mapping[str, str],
    parent_run_id: str | None,
    resume: _Resume,
) -> tuple[Tracker | None, set[int], Checkpoints | None]:
    """The run's tracker (a new MLflow run, or the one resumed), the steps it has logged
    already, and where its checkpoints go."""
    from orchestrator.tracking import MlflowTracker, RunFiles

    tracker: Tracker | None = None
    seen: set[int] = set()
    if resume.run_id is not None and cfg.tracking.enabled:  # back into the same MLflow run
        live = MlflowTracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.flush_every)
        live.resume(resume.run_id)
        assert resume.checkpoint is not None
        keys = sorted({k for row in resume.checkpoint.state.history for k in row if k != "round"})
        seen = live.logged_steps(keys)  # logged before the crash: not again
        live.set_tags({"fedsweep.resumed_from_round": str(resume.checkpoint.round)})
        tracker = live
    elif cfg.tracking.enabled:
        tracker = _start_tracker(cfg, prepared, extra_tags, parent_run_id)
        if resume.checkpoint is not None:  # a retried trial: a new run, with the whole history
            tracker.set_tags({"fedsweep.resumed_from_round": str(resume.checkpoint.round)})
            for row in resume.checkpoint.state.history:
                step = int(row["round"])
                tracker.log_metrics(step, {k: v for k, v in row.items() if k != "round"})
                seen.add(step)
    store = resume.store
    if store is None and isinstance(tracker, MlflowTracker) and cfg.runtime.checkpoint_every != 0:
        assert tracker.run_id is not None
        store = Checkpoints(RunFiles(cfg.tracking.uri or "", tracker.run_id), fresh=True)
    return tracker, seen, store


def _where(executor: Executor) -> dict[str, str]:
    """Tags saying where the parties ran and the device their tensors lived on (what was
    used, not what was asked for); none when the workers cannot say (an actor lost after
    the last round must not fail a finished run)."""
    try:
        where = {f"fedsweep.{k}": v for k, v in executor.where().items()}
        return {**where, "fedsweep.device": ", ".join(sorted(set(executor.devices())))}
    except Exception:  # noqa: BLE001 - best effort: the run's results stand without them
        return {}


def _time_rounds(t: Timings, start: float, reporter: _Reporter, rounds: _Rounds) -> None:
    """Splits the round loop's time: the first round (it waits for the workers to start),
    the metrics handed to the tracker, the checkpoints, and the rest."""
    total = time.perf_counter() - start
    first = (reporter.first - start) if reporter.first is not None else total
    t.add("first round", first)
    t.add("metric writes", reporter.writing)
    t.add("checkpoints", rounds.saving)
    t.add("rounds", max(0.0, total - first - reporter.writing - rounds.saving))


def _phase(progress: ProgressFn | None, name: str) -> None:
    """Tells a progress display that has a ``phase`` hook what the run does after its rounds."""
    hook = getattr(progress, "phase", None)
    if callable(hook):
        hook(name)


def _log_model(
    tracker: Tracker,
    cfg: ExperimentConfig,
    trainer: Trainer[Any, Any],
    result: TrainResult,
    prepared: Prepared,
) -> tuple[str | None, str | None]:
    """Logs the final model; returns its URI (None: a checkpoint of a recorded run, whose URI
    exists once it is written, or one the trainer cannot make) and its checkpoint's path."""
    data = prepared.data
    image = getattr(data, "image", None)  # a vertical or graph federation has none
    spec = ModelSpec.from_config(cfg.model, data.n_features, data.n_classes, image)
    path = _CHECKPOINT if trainer.checkpointable else None
    if path is not None:
        # The architecture and weights (milliseconds), so that any run's model can be
        # reloaded as a fedsweep module, e.g. as a distillation teacher (run:<id>).
        tracker.log_bytes(save_checkpoint(result.model, spec), path)
    serialization = str(cfg.tracking.model_format)
    if cfg.tracking.model_format == ModelFormat.checkpoint:
        if path is not None or tracker.record is not None:
            # a recorded run's checkpoint has its URI once the run is written
            return (f"runs:/{tracker.run_id}/{path}" if tracker.run_id else None), path
        serialization = "pickle"  # no checkpoint form: an MLflow model, the faster kind
    from orchestrator.tracking import MlflowTracker

    assert isinstance(tracker, MlflowTracker), "an MLflow model needs a live run"
    uri = tracker.log_model(result.model, prepared.data.x_test[:5], serialization=serialization)
    return uri, path


def _log_plots(
    tracker: Tracker, cfg: ExperimentConfig, trainer: Trainer[Any, Any], result: TrainResult
) -> None:
    from orchestrator.plots import RUN_PLOTS

    title = f"{cfg.trainer.name} on {cfg.data.name}"
    for name in trainer.plots():
        path, draw = RUN_PLOTS.get(name)
        fig = draw(result, title)
        if fig is not None:
            tracker.log_figure(fig, path)


def _params(cfg: ExperimentConfig, logged: dict[str, Any]) -> dict[str, Any]:
    """The run's params: ``logged`` (the config as logged) flattened, or the keys
    ``tracking.params`` names."""
    flat = flatten(logged)
    keys = cfg.tracking.params
    return flat if keys is None else {k: flat[k] for k in keys if k in flat}


def _run_tags(cfg: ExperimentConfig) -> dict[str, str]:
    from orchestrator import __version__

    tags = {
        "trainer": cfg.trainer.name,
        "dataset": cfg.data.name,
        "model": cfg.model.name,
        "seed": str(cfg.seed),
        "fedsweep_version": __version__,
    }
    commit = CACHE.get("runner.git_commit", None, _git_commit)
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags


def _git_commit() -> str | None:
    """The commit checked out here (asked once per process: sweep trials would ask each time)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
