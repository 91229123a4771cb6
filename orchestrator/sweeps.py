"""Sweeps: an Optuna study whose trials run on Ray, each trial an MLflow run nested under the
study's run.

The driver asks Optuna for a trial, turns its parameters into config overrides, and runs the
trial as a task (``run_trial``) on a worker; the worker reports each round's objective to
the study's storage, which decides pruning, and records its own MLflow run; the driver tells
Optuna the outcome. The storage is the only coordinator: re-running the same command resumes
the study, reuses its parent run and closes what a killed driver left open.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clusters import InProcessExecutor, TaskHandle, TaskRunner, WorkerLost
from orchestrator.config import ExperimentConfig, flatten, load_config, to_dict, to_yaml
from orchestrator.errors import ConfigError
from orchestrator.runner import run
from search_spaces import Objective, Space, SpaceError, load_space
from trainers import TRAINERS
from trainers.base import StopTraining

__all__ = ["SweepResult", "TrialOutcome", "TrialSpec", "check_space", "run_trial", "sweep"]

COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"
_IDENTITY_PARAMS = ("trainer.name", "data.name", "model.name", "partition.name", "seed")
_PARENT_ATTR = "mlflow_parent_run_id"
_DEFAULT_TRIALS = 20
_INTERRUPTED_ATTR = "fedsweep_interrupted"


@dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs to run one trial (it crosses the process boundary)."""

    config: dict
    overrides: tuple[str, ...]
    params: dict
    study: str
    storage: str
    trial_id: int
    number: int
    attempt: int
    parent_run_id: str | None
    objectives: tuple[Objective, ...]
    pruner: Mapping[str, Any] | None
    """The space's pruner, rebuilt on the worker (None: no pruning)."""
    trial_actors: int = 0
    cpus: float = 1.0
    """CPUs the trial reserved."""
    summaries: tuple[Objective, ...] = ()
    """Metrics the study's report tabulates, reduced over the trial's rounds."""
    curves: tuple[str, ...] = ()
    """Metrics whose per-round series the study's report plots (y first, then the x's)."""


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial ended as."""

    number: int
    state: str
    values: tuple[float, ...] | None = None
    run_id: str | None = None
    model_uri: str | None = None
    error: str | None = None
    record: Any = None
    """The trial's MLflow run, recorded, for the driver to write (deferred tracking)."""
    summary: dict[str, float] | None = None
    """The report's metrics for this trial (None without a report)."""
    series: dict[str, list[float]] | None = None
    """The report's curves for this trial: metric -> values at the rounds that report y."""


@dataclass
class SweepResult:
    """The study's outcome, as ``fedsweep sweep --json`` prints it."""

    study: str
    parent_run_id: str | None
    n_complete: int
    n_failed: int
    n_pruned: int
    best: Any = None
    registered: list[dict] = field(default_factory=list)
    report: Any = None
    """With a space ``report``: the results table (see :mod:`orchestrator.grid_report`)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent running trials and finishing the study (plots, table, registry)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "parent_run_id": self.parent_run_id,
            "n_complete": self.n_complete,
            "n_failed": self.n_failed,
            "n_pruned": self.n_pruned,
            "best": self.best,
        }


# ------------------------------------------------------------------ storage, sampler, pruner


def make_storage(url: str) -> Any:
    """An Optuna storage from a URL: ``journal:///path`` (or a ``*.journal`` path) is a journal
    file; anything else (sqlite://, postgresql://) is an RDB storage."""
    import optuna

    if url.startswith("journal://") or url.endswith(".journal"):
        path = url.removeprefix("journal://")
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(path))
    return optuna.storages.RDBStorage(url)


def _construct(kind: str, classes: Mapping[str, Any], name: str, opts: dict) -> Any:
    try:
        return classes[name](**opts)
    except TypeError as exc:
        raise SpaceError(kind, f"bad option for {name}: {exc}") from None


def _sampler(space: Space, seed: int | None) -> Any:
    import optuna

    opts = {k: v for k, v in space.sampler.items() if k != "name"}
    opts.setdefault("seed", seed)
    name = space.sampler["name"]
    if name == "grid":
        opts = {"search_space": grid_of(space), "seed": opts["seed"]}
    classes = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "grid": _grid_sampler_class(),
    }
    return _construct("sampler", classes, name, opts)


def _make_pruner(spec: Mapping[str, Any]) -> Any:
    import optuna

    classes = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    opts = {k: v for k, v in spec.items() if k != "name"}
    return _construct("pruner", classes, spec["name"], opts)


def grid_of(space: Space) -> dict[str, list]:
    return {p.key: p.grid() for p in space.params}


def _grid_size(space: Space) -> int:
    size = 1
    for values in grid_of(space).values():
        size *= len(values)
    return size


@functools.lru_cache(maxsize=1)
def _grid_sampler_class() -> type:
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler without its ``study.stop()`` once the grid is exhausted,
        which is only legal inside ``study.optimize``; the driver caps the trials instead."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return GridSampler


# ------------------------------------------------------------------ checking a space


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def check_space(space: Space, cfg: ExperimentConfig) -> None:
    """Fails before any trial runs if the space names an unknown key or metric, or a value the
    config would refuse (every bound, every choice and every preset is tried on the config)."""
    known = TRAINERS.get(cfg.trainer.name).metrics + ("wall_time_s",)
    trainers = {cfg.trainer.name}
    for p in space.params:
        for values in p.sets.values():
            trainers.add(values.get("trainer.name", cfg.trainer.name))
    if len(trainers) > 1:  # presets switch trainers: a metric must be reported by all of them
        known = tuple(m for m in known if all(m in TRAINERS.get(t).metrics for t in trainers))
    metrics = [(f"objective[{i}].metric", o.metric) for i, o in enumerate(space.objectives)]
    if space.report is not None:
        metrics += [("report.metrics", m) for m in space.report.metrics]
        metrics += [("report.curves", m) for m in space.report.curves]
    for where, metric in metrics:
        if metric not in known:
            raise SpaceError(
                where,
                f"unknown metric {metric!r}; {', '.join(sorted(trainers))} report: "
                f"{', '.join(known)}",
            )
    base = to_dict(cfg)
    for p in space.params:
        if p.type == "preset":
            trials = [(f"params.{p.key}.{name}", values) for name, values in p.sets.items()]
        else:
            samples = list(p.choices) if p.type == "categorical" else [p.low, p.high]
            if p.type == "int":
                samples = [int(v) for v in samples]
            trials = [(f"params.{p.key}", {p.target: v}) for v in samples]
        for where, values in trials:
            try:
                load_config(base, [_override(k, v) for k, v in values.items()])
            except ConfigError as exc:
                problem = "unknown config key" if exc.problem == "unknown key" else exc.problem
                raise SpaceError(
                    where, f"{exc.key}={values.get(exc.key, '')!r}: {problem}"
                ) from None


# ------------------------------------------------------------------ one trial, on a worker


def run_trial(spec: TrialSpec) -> TrialOutcome:
    """Runs one trial: the experiment with the trial's overrides, nested under the study's run,
    reporting each round's objective to the study for pruning."""
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # As many torch threads as CPUs the trial reserved: parallel trials must not oversubscribe.
    torch.set_num_threads(max(1, int(spec.cpus)))
    trial = None
    if spec.pruner is not None:
        study = optuna.load_study(
            study_name=spec.study,
            storage=make_storage(spec.storage),
            pruner=_make_pruner(spec.pruner),
        )
        trial = optuna.trial.Trial(study, spec.trial_id)
    history: list[dict[str, float]] = []
    objective = spec.objectives[0]

    def progress(step: int, metrics: Mapping[str, float]) -> None:
        history.append(dict(metrics))
        if trial is not None:
            trial.report(objective.value(history), step)
            if trial.should_prune():
                raise StopTraining(f"pruned after round {step}")

    if spec.trial_actors:
        from clusters import RayExecutor

        executor: Any = RayExecutor(num_workers=spec.trial_actors)
    else:
        executor = InProcessExecutor()
    tags = {
        "fedsweep.study": spec.study,
        "fedsweep.trial": str(spec.number),
        "fedsweep.attempt": str(spec.attempt),
        **{f"fedsweep.param.{k}": str(v) for k, v in spec.params.items()},
    }
    try:
        result = run(
            spec.config,
            spec.overrides,
            progress=progress,
            executor=executor,
            tags=tags,
            parent_run_id=spec.parent_run_id,
        )
    except StopTraining as exc:
        return TrialOutcome(
            spec.number,
            PRUNED,
            run_id=getattr(exc, "run_id", None),
            error=str(exc),
            record=getattr(exc, "record", None),
        )
    except Exception as exc:  # a failing trial is a result: recorded, and the sweep goes on
        return TrialOutcome(
            spec.number,
            FAIL,
            run_id=getattr(exc, "run_id", None),
            error=f"{type(exc).__name__}: {exc}",
            record=getattr(exc, "record", None),
        )
    finally:
        executor.close()
    try:
        values = tuple(o.value(result.history) for o in spec.objectives)
        summary = {o.metric: o.value(result.history) for o in spec.summaries}
    except KeyError as exc:
        return TrialOutcome(
            spec.number, FAIL, run_id=result.run_id, error=str(exc), record=result.record
        )
    return TrialOutcome(
        spec.number,
        COMPLETE,
        values,
        result.run_id,
        result.model_uri,
        record=result.record,
        summary=summary or None,
        series=_series(result.history, spec.curves) if spec.curves else None,
    )


def _series(history: list[dict[str, float]], keys: tuple[str, ...], points: int = 300) -> dict:
    """The curves' metrics at the rounds that report all of them, thinned to ``points``."""
    rows = [h for h in history if all(k in h for k in keys)]
    if len(rows) > points:
        rows = [rows[round(i * (len(rows) - 1) / (points - 1))] for i in range(points)]
    return {k: [float(h[k]) for h in rows] for k in keys}


# ------------------------------------------------------------------ the driver


ProgressFn = Callable[[Mapping[str, Any]], None]


def sweep(
    config: str | os.PathLike | ExperimentConfig | dict,
    space: str | os.PathLike | Space,
    overrides: Sequence[str] = (),
    *,
    trials: int | None = None,
    parallel: int | None = None,
    study: str | None = None,
    storage: str | None = None,
    address: str | None = None,
    runner: TaskRunner | None = None,
    progress: ProgressFn | None = None,
) -> SweepResult:
    """Runs (or resumes) an Optuna study over ``space`` and returns its outcome.

    Args:
        config: the base experiment (YAML path, dict or ExperimentConfig).
        space: a search-space YAML path or a parsed Space.
        overrides: ``dotted.key=value`` applied to the base config.
        trials: finished trials the study should hold (default ``sweep.trials``, else the
            whole grid for a grid sampler, else 20).
        parallel: trials at once (default ``sweep.parallel``, else what the CPUs allow).
        study: study name (default ``sweep.study``, else ``<config>-<space>``).
        storage: Optuna storage URL (default: ``<dir of the MLflow store>/optuna.journal``).
        address: Ray address to join; None starts or reuses a local Ray.
        runner: where trials run (default: Ray tasks); tests may pass an in-process runner.
        progress: called with the tallies after every finished trial.

    Raises:
        ConfigError, SpaceError: before any trial or MLflow run exists.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = _absolute_paths(load_config(config, list(overrides)))
    parsed = space if isinstance(space, Space) else load_space(space)
    check_space(parsed, base)
    sc = base.sweep
    grid = _grid_size(parsed) if parsed.sampler["name"] == "grid" else None
    target = trials or sc.trials or grid or _DEFAULT_TRIALS
    if grid is not None:
        target = min(target, grid)
    study_name = study or sc.study or _default_study_name(config, space)
    tracking_uri = _tracking_uri(base.tracking.uri)
    storage_url = storage or sc.storage or _default_storage(tracking_uri)
    trial_cfg = to_dict(base)
    trial_cfg["tracking"].update(uri=tracking_uri, plots=sc.trial_plots)
    if sc.trial_models == "checkpoint":
        # Trials record their runs and the driver writes them while the next trial trains.
        trial_cfg["tracking"].update(model_format="checkpoint", deferred=True)
    # A trial's run logs what tells it apart (the parent holds the whole base config), and the
    # partition only when the search can change it.
    searched = parsed.config_keys()
    trial_cfg["tracking"]["params"] = [*_IDENTITY_PARAMS, *searched]
    trial_cfg["tracking"]["partition"] = any(
        k == "seed" or k.startswith(("data.", "partition.")) for k in searched
    )
    trial_cfg["runtime"]["executor"] = "local"

    st = optuna.create_study(
        study_name=study_name,
        storage=make_storage(storage_url),
        directions=parsed.directions,
        sampler=_sampler(parsed, base.seed),
        pruner=_make_pruner(parsed.pruner),
        load_if_exists=True,
    )
    if [d.name.lower() for d in st.directions] != parsed.directions:
        raise SpaceError("objective", f"study {study_name!r} exists with other directions")

    tracker = (
        _parent_tracker(st, base, parsed, study_name, tracking_uri, storage_url)
        if base.tracking.enabled
        else None
    )
    parent_run_id = tracker.run_id if tracker else None
    _recover(st, tracker)
    if runner is None:
        from clusters import RayTaskRunner

        runner = RayTaskRunner(address, cpus_per_task=sc.cpus_per_trial)
    # A trial with its own actor pool also needs a CPU for each of its actors.
    width = parallel or sc.parallel or max(1, runner.capacity // (1 + sc.trial_actors))
    tallies = _tallies(st)
    best = _best_value(st)
    running: dict[TaskHandle, TrialSpec] = {}
    prune = space_prunes(parsed)
    summaries = (
        tuple(Objective(m, reduce=parsed.report.reduce) for m in parsed.report.metrics)
        if parsed.report
        else ()
    )

    def report() -> None:
        if progress is not None:
            shown = len(best) if isinstance(best, list) else best  # multi-objective: front size
            progress({**tallies, "running": len(running), "target": target, "best": shown})

    def launch(spec: TrialSpec) -> None:
        running[runner.submit(run_trial, spec)] = spec

    lock = threading.Lock()

    def told(outcome: TrialOutcome) -> None:  # on the writer's thread, once a trial is told
        nonlocal best
        with lock:
            key = {COMPLETE: "complete", PRUNED: "pruned"}.get(outcome.state, "failed")
            tallies[key] += 1
            tallies["finished"] += 1
            if outcome.state == COMPLETE and outcome.values:
                best = _better(best, outcome.values, parsed)
        report()

    writer = _Writer(st, tracking_uri, told)
    asked: int | None = None
    report()
    started = time.perf_counter()
    try:
        while True:
            while (
                len(running) < width
                and tallies["finished"] + writer.pending + len(running) < target
            ):
                trial = st.ask()
                asked = trial._trial_id  # RUNNING in the study until launched and tracked
                params = parsed.suggest(trial)
                launch(
                    TrialSpec(
                        config=trial_cfg,
                        overrides=tuple(
                            _override(k, v) for k, v in parsed.config_values(params).items()
                        ),
                        params=params,
                        study=study_name,
                        storage=storage_url,
                        trial_id=trial._trial_id,
                        number=trial.number,
                        attempt=0,
                        parent_run_id=parent_run_id,
                        objectives=parsed.objectives,
                        pruner=dict(parsed.pruner) if prune else None,
                        trial_actors=sc.trial_actors,
                        cpus=sc.cpus_per_trial,
                        summaries=summaries,
                        curves=parsed.report.curves if parsed.report else (),
                    )
                )
                asked = None
            if not running:
                writer.join()
                if tallies["finished"] + len(running) >= target:
                    break
                continue
            for handle in runner.wait(list(running), timeout=1.0):
                spec = running.pop(handle)
                try:
                    outcome = runner.result(handle)
                except WorkerLost as exc:
                    _close_trial_runs(tracker, spec.number, "FAILED", f"worker lost: {exc}")
                    if spec.attempt < sc.max_retries:
                        launch(replace(spec, attempt=spec.attempt + 1))
                        continue
                    outcome = TrialOutcome(
                        spec.number, FAIL, error=f"worker lost {spec.attempt + 1} times: {exc}"
                    )
                except Exception as exc:  # the task itself broke, outside the trial's own handling
                    outcome = TrialOutcome(spec.number, FAIL, error=f"{type(exc).__name__}: {exc}")
                writer.put(spec, outcome)
    except KeyboardInterrupt as exc:
        _stop_running(runner, running)
        writer.join()  # the trials that did finish are written and told
        for spec in running.values():
            _fail_interrupted(st, spec.trial_id)
        if asked is not None and asked not in {s.trial_id for s in running.values()}:
            _fail_interrupted(st, asked)  # asked for, interrupted before it was launched
        if tracker is not None:
            tracker.close_children("KILLED", "the sweep was interrupted")
            tracker.end("KILLED", exc)
        raise
    except BaseException as exc:
        _stop_running(runner, running)
        writer.join()
        if asked is not None and asked not in {s.trial_id for s in running.values()}:
            _fail_interrupted(st, asked)
        if tracker is not None:
            tracker.close_children("FAILED", f"the sweep's driver failed: {exc}")
            tracker.end("FAILED", exc)
        raise
    trials_done = time.perf_counter()
    result = _finish(st, parsed, tracker, base, study_name)
    if tracker is not None:
        tracker.end("FINISHED")
    result.timings = {
        "trials_s": trials_done - started,
        "finish_s": time.perf_counter() - trials_done,
    }
    return result


class _Writer:
    """Writes finished trials' recorded MLflow runs, then tells Optuna, on a thread of its own,
    so the next trial trains meanwhile. A trial counts as finished in the study only once its
    run is written: a driver killed in between leaves it RUNNING, to be re-run on resume."""

    def __init__(self, study: Any, tracking_uri: str, told: Callable[[TrialOutcome], None]) -> None:
        self.study, self.uri, self.told = study, tracking_uri, told
        self.queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.pending = 0
        """Trials handed over and not yet told."""
        # One thread: two writers on one SQLite store mostly wait on each other's locks.
        threading.Thread(target=self._loop, name="fedsweep-writer", daemon=True).start()

    def put(self, spec: TrialSpec, outcome: TrialOutcome) -> None:
        with self._lock:
            self.pending += 1
        self.queue.put((spec, outcome))

    def join(self) -> None:
        self.queue.join()

    def _loop(self) -> None:
        while True:
            spec, outcome = self.queue.get()
            try:
                if outcome.record is not None:
                    from orchestrator.tracking import write_record

                    try:
                        run_id = write_record(outcome.record, self.uri)
                        path = outcome.record.model_path
                        model_uri = f"runs:/{run_id}/{path}" if path else outcome.model_uri
                        outcome = replace(outcome, run_id=run_id, model_uri=model_uri, record=None)
                    except Exception as exc:  # noqa: BLE001 - recorded on the trial, sweep goes on
                        outcome = TrialOutcome(
                            spec.number, FAIL, error=f"writing its MLflow run failed: {exc}"
                        )
                _tell(self.study, spec, outcome)
                with self._lock:
                    self.pending -= 1
                self.told(outcome)
            finally:
                self.queue.task_done()


def _stop_running(runner: TaskRunner, running: Mapping[TaskHandle, TrialSpec]) -> None:
    """Stops the running trials and waits (briefly) for them to be gone, so that none of them
    writes after the driver has closed the study's runs. Trials that already ended are left
    alone (cancelling a task as it completes trips Ray); the others are interrupted, and their
    workers killed if they do not stop within a few seconds."""
    handles = list(running)
    done = runner.wait(handles, timeout=0) if handles else []
    handles = [h for h in handles if h not in done]
    for force, grace in ((False, 5.0), (True, 10.0)):
        for handle in handles:
            runner.cancel(handle, force=force)
        deadline = time.monotonic() + grace
        while handles and time.monotonic() < deadline:
            finished = runner.wait(handles, timeout=0.5)
            handles = [h for h in handles if h not in finished]
        if not handles:
            return


def space_prunes(space: Space) -> bool:
    return space.pruner["name"] != "none" and not space.multi_objective


def _tallies(st: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    counts = {"complete": 0, "pruned": 0, "failed": 0}
    for t in st.get_trials(deepcopy=False):
        if t.user_attrs.get(_INTERRUPTED_ATTR):
            continue
        if t.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif t.state == TrialState.PRUNED:
            counts["pruned"] += 1
        elif t.state == TrialState.FAIL:
            counts["failed"] += 1
    counts["finished"] = counts["complete"] + counts["pruned"] + counts["failed"]
    return counts


def _best_value(st: Any) -> Any:
    try:
        if len(st.directions) > 1:
            return [tuple(t.values) for t in st.best_trials]
        return st.best_value
    except ValueError:  # no complete trial yet
        return None


def _better(best: Any, values: Sequence[float], space: Space) -> Any:
    """The best value so far, for the progress line; for a multi-objective study, the Pareto
    front's values (its size is shown)."""
    if space.multi_objective:
        sign = [1.0 if o.direction == "maximize" else -1.0 for o in space.objectives]

        def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
            pairs = [(s * x, s * y) for s, x, y in zip(sign, a, b)]
            return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

        front = list(best or [])
        if any(dominates(f, values) for f in front):
            return front
        return [f for f in front if not dominates(values, f)] + [tuple(values)]
    value = values[0]
    if best is None:
        return value
    return max(best, value) if space.objectives[0].direction == "maximize" else min(best, value)


def _tell(st: Any, spec: TrialSpec, outcome: TrialOutcome) -> None:
    from optuna.trial import TrialState

    # Each storage write is an append under a file lock (journal) or a transaction (RDB):
    # only what is needed later is written.
    storage = st._storage
    if outcome.run_id:
        storage.set_trial_user_attr(spec.trial_id, "mlflow_run_id", outcome.run_id)
    if outcome.model_uri:
        storage.set_trial_user_attr(spec.trial_id, "model_uri", outcome.model_uri)
    if outcome.error:
        storage.set_trial_user_attr(spec.trial_id, "error", outcome.error[:2000])
    if outcome.summary:
        storage.set_trial_user_attr(spec.trial_id, "summary", outcome.summary)
    if outcome.series:
        storage.set_trial_user_attr(spec.trial_id, "series", outcome.series)
    if spec.attempt:
        storage.set_trial_user_attr(spec.trial_id, "attempts", spec.attempt + 1)
    if outcome.state == COMPLETE:
        st.tell(spec.number, list(outcome.values or ()))
    elif outcome.state == PRUNED:
        st.tell(spec.number, state=TrialState.PRUNED)
    else:
        st.tell(spec.number, state=TrialState.FAIL)


def _fail_interrupted(st: Any, trial_id: int) -> None:
    from optuna.trial import TrialState

    st._storage.set_trial_user_attr(trial_id, _INTERRUPTED_ATTR, True)
    st._storage.set_trial_state_values(trial_id, TrialState.FAIL)


def _recover(st: Any, tracker: Any) -> None:
    """Closes what a killed driver left: its RUNNING trials become FAIL (marked interrupted,
    so they do not count) and are queued again with the same parameters; child runs still
    RUNNING under the parent are closed as KILLED."""
    from optuna.trial import TrialState

    for t in st.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        _fail_interrupted(st, t._trial_id)
        st.enqueue_trial(t.params, user_attrs={"fedsweep_rerun_of": t.number})
    if tracker is not None:
        tracker.close_children("KILLED", "the sweep's driver stopped before this trial ended")


def _close_trial_runs(tracker: Any, number: int, status: str, reason: str) -> None:
    if tracker is not None:
        tracker.close_children(status, reason, trial=number)


def _parent_tracker(st, base, space, study_name, tracking_uri, storage_url):
    from orchestrator.tracking import MlflowTracker

    tracker = MlflowTracker(tracking_uri, base.tracking.experiment, base.tracking.flush_every)
    previous = st.user_attrs.get(_PARENT_ATTR)
    if previous and tracker.resume(previous):
        return tracker
    tracker.start(
        {**flatten(to_dict(base)), "sweep.storage_url": storage_url},
        {
            "fedsweep.study": study_name,
            "fedsweep.kind": "sweep",
            "trainer": base.trainer.name,
            "dataset": base.data.name,
        },
        run_name=study_name,
    )
    st.set_user_attr(_PARENT_ATTR, tracker.run_id)
    tracker.log_text(to_yaml(base), "config.yaml")
    tracker.log_text(_space_yaml(space), "space.yaml")
    return tracker


def _space_yaml(space: Space) -> str:
    import yaml

    return yaml.safe_dump(
        {
            "objective": [vars(o) for o in space.objectives],
            "params": {
                p.key: {
                    k: v
                    for k, v in vars(p).items()
                    if k != "key" and v not in (None, (), {}, False)
                }
                for p in space.params
            },
            "sampler": dict(space.sampler),
            "pruner": dict(space.pruner),
            **({"report": vars(space.report)} if space.report else {}),
        },
        sort_keys=False,
    ).replace("!!python/tuple", "")


def _finish(
    st: Any, space: Space, tracker: Any, base: ExperimentConfig, study_name: str
) -> SweepResult:
    from optuna.trial import TrialState

    tallies = _tallies(st)
    complete = [t for t in st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best_trials = (st.best_trials if space.multi_objective else [st.best_trial]) if complete else []
    entries = [
        {
            "number": t.number,
            "values": list(t.values),
            "params": t.params,
            "run_id": t.user_attrs.get("mlflow_run_id"),
            "model_uri": t.user_attrs.get("model_uri"),
        }
        for t in best_trials
    ]
    registered: list[dict] = []
    from orchestrator.grid_report import build_report

    report = build_report(st, space)
    if tracker is not None:
        from orchestrator import study_report

        metrics = {f"n_{k}": float(v) for k, v in tallies.items()}
        if entries and not space.multi_objective:
            metrics["best_value"] = entries[0]["values"][0]
            metrics[f"best_{space.objectives[0].metric}"] = entries[0]["values"][0]
        tracker.log_metrics(len(st.trials), metrics)
        tracker.flush()
        tracker.log_text(json.dumps(entries, indent=2, default=str), "best.json")
        if entries and not space.multi_objective:
            tracker.set_tags({f"best.{k}": str(v) for k, v in entries[0]["params"].items()})
        study_report.log_trials_table(st, tracker)
        if space.multi_objective and entries:
            study_report.log_pareto_table(entries, space, tracker)
        study_report.log_plots(st, space, tracker)
        if report is not None:
            report.log(tracker)
        name = base.sweep.register_as or f"{study_name}-best"
        for entry in entries:
            if entry["model_uri"] and entry["model_uri"].endswith("checkpoint/model.pt"):
                entry["model_uri"] = _package_checkpoint(tracker, entry, base.tracking.model_format)
            if entry["model_uri"]:
                lineage = tracker.run_tags(entry["run_id"], "lineage.")  # a student's teacher
                version = tracker.register_model(
                    entry["model_uri"],
                    name,
                    {
                        "study": study_name,
                        "trial": str(entry["number"]),
                        "run_id": str(entry["run_id"]),
                        **lineage,
                    },
                )
                registered.append({"name": name, "version": version, "trial": entry["number"]})
    best: Any
    if space.multi_objective:
        best = entries
    else:
        best = {k: v for k, v in entries[0].items() if k != "number"} if entries else None
    return SweepResult(
        study_name,
        tracker.run_id if tracker else None,
        tallies["complete"],
        tallies["failed"],
        tallies["pruned"],
        best,
        registered,
        report,
    )


def _package_checkpoint(tracker: Any, entry: dict, model_format: str) -> str:
    """Turns a best trial's checkpoint into an MLflow model logged in that trial's run."""
    import numpy as np

    from trainers.models import load_checkpoint

    model, spec = load_checkpoint(tracker.read_bytes(entry["model_uri"]))
    example = np.zeros((2, spec.n_features), dtype=np.float32)
    fmt = model_format if model_format in ("pt2", "pickle") else "pt2"
    return tracker.log_model(model, example, serialization=fmt, run_id=entry["run_id"])


def _absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Makes relative file paths absolute, so that workers in other directories find them."""
    if cfg.data.path and not Path(cfg.data.path).is_absolute():
        cfg.data.path = str(Path(cfg.data.path).resolve())
    cache = cfg.trainer.decentralized.cache_dir
    if cache and not Path(cache).is_absolute():
        cfg.trainer.decentralized.cache_dir = str(Path(cache).resolve())
    return cfg


def _tracking_uri(uri: str | None) -> str:
    from orchestrator.tracking import resolve_tracking_uri

    resolved = resolve_tracking_uri(uri)
    if resolved.startswith("sqlite:///") and not resolved.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(resolved.removeprefix("sqlite:///")).resolve())
    return resolved


def _default_storage(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
    else:
        folder = Path.cwd()
    return f"journal://{folder / 'optuna.journal'}"


def _default_study_name(config: Any, space: Any) -> str:
    left = Path(config).stem if isinstance(config, (str, os.PathLike)) else "experiment"
    right = Path(space).stem if isinstance(space, (str, os.PathLike)) else "space"
    return f"{left}-{right}"
