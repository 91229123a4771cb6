"""The sweep's driver: launch trials while there is room, collect them as they end, hand them
to the writer, and shut down cleanly whatever stops it.

Read :func:`sweep` first, then :class:`_Driver`'s ``run`` (the loop), ``_launch`` (one
trial out), ``_collect`` (trials back) and ``stop`` (what any exit leaves behind).

The storage is the only coordinator. Re-running the same command resumes the study, reuses
its parent run and closes what a killed driver left open; several drivers on one study (one
per machine of a lab) share it:

- the driver that creates the study creates its parent run; the others wait for it;
- every driver counts the study's trials in the storage, not its own, and a trial asked
  beyond the target (two drivers asking at once) is handed back uncounted;
- every driver beats a heartbeat into the study; the RUNNING trials of a driver whose
  heartbeat stopped are failed (uncounted) and queued again with the same parameters;
- the last driver out finishes the study (tables, plots, the registered model).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from clusters import InProcessTaskRunner, ResourceError, TaskHandle, TaskRunner, WorkerLost
from orchestrator import process, signals
from orchestrator.config import (
    ExecutorKind,
    ExperimentConfig,
    TrialModels,
    configure,
    load_config,
)
from orchestrator.data import check_data
from orchestrator.errors import ConfigError
from orchestrator.study_report import importances
from orchestrator.sweeps._finish import (
    FinishAhead,
    SweepResult,
    Tallies,
    finish,
    package_early,
    parent_run,
    tallies,
)
from orchestrator.sweeps._optuna import (
    INTERRUPTED,
    StudyStore,
    absolute_sqlite,
    default_storage,
    make_pruner,
    make_sampler,
    make_storage,
    require_storage,
)
from orchestrator.sweeps._peers import Peers
from orchestrator.sweeps._space import check_space
from orchestrator.sweeps._trial import (
    ParamValue,
    TrialOutcome,
    TrialSpec,
    run_trial,
    warm_worker,
)
from orchestrator.sweeps._writer import Writer
from orchestrator.timings import Timings
from orchestrator.tracking import (
    MlflowTracker,
    RunStatus,
    require_store,
    resolve_tracking_uri,
)
from search_spaces import Objective, Space, SpaceError, load_space

__all__ = ["ProgressFn", "sweep"]

ProgressFn = Callable[[Mapping[str, object]], None]
_IDENTITY_PARAMS = ("trainer.name", "data.name", "model.name", "partition.name", "seed")
_DEFAULT_TRIALS = 20
_RECOVER_S = 5.0
"""How often a driver looks for dead drivers' trials."""
_SURPLUS = "fedsweep_surplus"


def sweep(
    config: str | os.PathLike[str] | ExperimentConfig | dict[str, object],
    space: str | os.PathLike[str] | Space,
    overrides: Sequence[str] = (),
    *,
    trials: int | None = None,
    parallel: int | None = None,
    study: str | None = None,
    storage: str | None = None,
    address: str | None = None,
    runner: TaskRunner | None = None,
    progress: ProgressFn | None = None,
    timings: Timings | None = None,
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
        address: Ray address to join; None: the trials run where ``sweep.executor`` says
            (auto: here when the study is small, else on the Ray running here or a new one).
        runner: where trials run (default: as ``sweep.executor`` says); tests may pass one.
        progress: called with the tallies after every finished trial, then with each step
            of the finish (``phase``: plots, best model...).
        timings: where the phases' times go (start, first trial, the rest, the finish); they
            are also in the result and the parent run's metrics.

    Raises:
        ConfigError, SpaceError: before any trial or MLflow run exists.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t = timings if timings is not None else Timings()
    with t.phase("config and space"):
        plan = _Plan.make(config, space, overrides, trials, study, storage)
    with t.phase("storage"):
        opened = make_storage(plan.storage)  # an unreachable storage is refused first
    sc = plan.base.sweep
    if runner is None and _trials_here(plan, address, parallel):
        runner = InProcessTaskRunner()
    if runner is None:  # then Ray: a request it cannot satisfy is refused before any run
        from clusters import RayTaskRunner

        with t.phase("ray start"):
            try:
                runner = RayTaskRunner(
                    address, cpus_per_task=sc.cpus_per_trial, gpus_per_task=sc.gpus_per_trial
                )
            except ResourceError as exc:
                raise ConfigError(exc.key, exc.problem) from None
            signals.reinstall()  # Ray took SIGTERM over
    # A trial with its own actor pool also needs a CPU for each of its actors.
    width = parallel or sc.parallel or max(1, runner.capacity // (1 + sc.trial_actors))
    warming = runner.warm(warm_worker, width)  # the workers import while the study opens
    driver: _Driver | None = None
    try:
        with t.phase("study and parent run"):
            st, founder = _open_study(plan, opened)
            tracker = (
                parent_run(
                    st, plan.base, plan.space, plan.study, plan.tracking_uri, plan.storage, founder
                )
                if plan.base.tracking.enabled
                else None
            )
        ahead = (
            FinishAhead(
                package=sc.trial_models == TrialModels.checkpoint,
                importances=importances(plan.space),
                trials_here=isinstance(runner, InProcessTaskRunner),
            )
            if tracker is not None
            else None
        )
        driver = _Driver(plan, st, tracker, progress, ahead)
        started = time.perf_counter()
        driver.recover()
        driver.run(runner, width)
    except BaseException as exc:
        if driver is not None:
            driver.stop(exc)
            if driver.ahead is not None:
                driver.ahead.close()
        _stop_running(runner, warming)  # a warm-up still importing is stopped, not left behind
        raise
    trials_done = time.perf_counter()
    first = driver.first_told if driver.first_told is not None else trials_done
    t.add("first trial", first - started)
    t.add("trials", trials_done - first)
    last_out = driver.peers.leave()
    # Only the last driver out sums the study up; the others report it as it stands.
    try:
        if ahead is not None:
            driver.show("preparing the finish")
            ahead.wait()
        result = finish(
            st,
            plan.space,
            tracker if last_out else None,
            plan.base,
            plan.study,
            driver.show,
            ahead.packager if ahead is not None else None,
        )
    except BaseException as exc:  # stopped (or failed) while summing up: the trials are told
        if tracker is not None and last_out:
            killed = isinstance(exc, KeyboardInterrupt)
            tracker.end(RunStatus.KILLED if killed else RunStatus.FAILED, exc)
        raise
    finally:
        if ahead is not None:
            ahead.close()
    t.add("finish", time.perf_counter() - trials_done)
    if tracker is not None:
        result.parent_run_id = tracker.run_id
        if last_out:
            tracker.log_metrics(0, t.metrics())
            tracker.end(RunStatus.FINISHED)
    result.timings = {
        **t.phases,
        "trials_s": trials_done - started,
        "finish_s": time.perf_counter() - trials_done,
    }
    return result


def _trials_here(plan: _Plan, address: str | None, parallel: int | None) -> bool:
    """Whether the trials run in this process (see ``sweep.executor``)."""
    from orchestrator.data import training_rows
    from orchestrator.runner import LOCAL_WORK
    from trainers import TRAINERS

    sc = plan.base.sweep
    if sc.executor != ExecutorKind.auto:
        return sc.executor == ExecutorKind.local
    # RAY_ADDRESS: Ray's own way to name a cluster (a Ray job's entrypoint runs with it)
    wants_ray = bool(address or os.environ.get("RAY_ADDRESS") or sc.trial_actors)
    wants_ray |= (parallel or sc.parallel or 1) > 1
    # a trial's resources are asked of Ray (and refused there when no node has them)
    if wants_ray or sc.gpus_per_trial or sc.cpus_per_trial != 1.0:
        return False
    if (parallel or sc.parallel) == 1:  # one trial at a time: Ray would add its start, no speed
        return True
    cfg = plan.trial_base
    rows = training_rows(cfg)
    if rows is None:
        return False
    trainer = TRAINERS.get(cfg.trainer.name)(cfg.trainer, cfg.model)
    return plan.target * trainer.sample_steps(rows) <= LOCAL_WORK


def _open_study(plan: _Plan, storage: optuna.storages.BaseStorage) -> tuple[optuna.Study, bool]:
    """The study, and whether this driver created it (then it makes the parent run)."""
    sampler, pruner = make_sampler(plan.space, plan.base.seed), make_pruner(plan.space.pruner)
    try:
        st = optuna.create_study(
            study_name=plan.study,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            directions=[optuna.study.StudyDirection[d.upper()] for d in plan.space.directions],
        )
        founder = True
    except optuna.exceptions.DuplicatedStudyError:
        st = optuna.load_study(
            study_name=plan.study, storage=storage, sampler=sampler, pruner=pruner
        )
        founder = False
    if [d.name.lower() for d in st.directions] != plan.space.directions:
        raise SpaceError("objective", f"study {plan.study!r} exists with other directions")
    return st, founder


@dataclass(frozen=True)
class _Plan:
    """What the sweep was asked for, resolved and checked."""

    base: ExperimentConfig
    """The base experiment, as the parent run records it."""
    trial_base: ExperimentConfig
    """The base every trial's config is made from (its tracking set for a trial)."""
    space: Space
    study: str
    storage: str
    tracking_uri: str
    target: int
    """Finished trials the study should hold."""

    @classmethod
    def make(
        cls,
        config: str | os.PathLike[str] | ExperimentConfig | dict[str, object],
        space: str | os.PathLike[str] | Space,
        overrides: Sequence[str],
        trials: int | None,
        study: str | None,
        storage: str | None,
    ) -> _Plan:
        base = load_config(config, list(overrides))
        parsed = space if isinstance(space, Space) else load_space(space)
        check_space(parsed, base)
        check_data(base)
        sc = base.sweep
        grid = parsed.grid_size() if parsed.sampler.name == "grid" else None
        target = trials or sc.trials or grid or _DEFAULT_TRIALS
        if grid is not None:
            target = min(target, grid)
        tracking_uri = absolute_sqlite(resolve_tracking_uri(base.tracking.uri))
        require_store(tracking_uri)
        searched = parsed.config_keys()
        values: dict[str, object] = {
            "tracking.uri": tracking_uri,
            "tracking.plots": sc.trial_plots,
            # A trial's run logs what tells it apart (the parent holds the whole base
            # config), and the partition only when the search can change it.
            "tracking.params": [*_IDENTITY_PARAMS, *searched],
            "tracking.partition": any(
                k == "seed" or k.startswith(("data.", "partition.")) for k in searched
            ),
            "runtime.executor": "local",
        }
        if sc.trial_models == TrialModels.checkpoint:
            values["tracking.model_format"] = "checkpoint"
            # With a local store, trials record their runs and the driver writes them while
            # the next one trains. A tracking server serves the artifacts: each trial writes
            # its run there itself, so no checkpoint travels through the driver.
            values["tracking.deferred"] = not tracking_uri.startswith(("http://", "https://"))
        storage_url = storage or sc.storage or default_storage(tracking_uri)
        require_storage(storage_url)
        return cls(
            base,
            configure(base, values),
            parsed,
            study or sc.study or _default_study_name(config, space),
            storage_url,
            tracking_uri,
            target,
        )


class _Driver:
    """Runs a study's trials on a task runner; see the module docstring."""

    def __init__(
        self,
        plan: _Plan,
        study: optuna.Study,
        tracker: MlflowTracker | None,
        progress: ProgressFn | None,
        ahead: FinishAhead | None = None,
    ) -> None:
        self.plan, self.study, self.tracker, self.progress = plan, study, tracker, progress
        self.ahead = ahead
        """The finish's preparation, started once the first trial is told."""
        self.phase: str | None = None
        """The finish's step, once the trials are done (None: the trials)."""
        self.store = StudyStore(study)
        self.peers = Peers(study, self.store)
        self.runner: TaskRunner | None = None
        self.running: dict[TaskHandle, TrialSpec] = {}
        self.asked: int | None = None
        """A trial asked for and not launched yet (RUNNING in the study)."""
        self.tallies: Tallies = tallies(study)
        self.best = _best_value(study)
        self._lock = threading.Lock()
        self.first_told: float | None = None
        """When this driver's first trial was told (perf_counter)."""
        self.started = time.perf_counter()
        """When :meth:`run` began."""
        self.width = 1
        """Trials at once."""
        self._packaged_early = False
        self._recovered = 0.0
        self.writer = Writer(self.store, plan.tracking_uri, self._told)
        sp = plan.space
        self.summaries = (
            tuple(Objective(m, reduce=sp.report.reduce) for m in sp.report.metrics)
            if sp.report
            else ()
        )

    # ---------------------------------------------------------------- other drivers

    def recover(self) -> None:
        """Closes what dead drivers left: their RUNNING trials become FAIL (marked
        interrupted, so they do not count) and are queued again with the same parameters;
        with no other driver alive, child runs still RUNNING under the parent are closed as
        KILLED."""
        self._recovered = time.monotonic()
        dead, others_alive = self.peers.orphans()
        for t in dead:
            if (
                self.store.fail_interrupted(StudyStore.trial_id(t))
                and "grid_id" not in t.system_attrs  # a grid gives its point again itself
            ):
                self.study.enqueue_trial(t.params, user_attrs={"fedsweep_rerun_of": t.number})
        idle = not self.running and not self.writer.pending  # (a run being written is RUNNING)
        if self.tracker is not None and not others_alive and idle:
            # A trial told finished has a worker that ended (or is ending) its run itself:
            # only what a dead driver's trials left open is closed.
            ended = [
                t.number for t in self.store.trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
            ]
            self.tracker.close_children(
                RunStatus.KILLED, "the sweep's driver stopped before this trial ended", keep=ended
            )

    # ---------------------------------------------------------------- the loop

    def run(self, runner: TaskRunner, width: int) -> None:
        """Keeps up to ``width`` trials running until the study holds its target."""
        self.runner, self.width = runner, max(1, width)
        self.started = time.perf_counter()
        self._report()
        target = self.plan.target
        # Trials one after another in this process, with a pruner: each starts once the one
        # before is told, so that the pruner always weighs it (its write would otherwise race
        # the next trial's first rounds).
        tell_first = isinstance(runner, InProcessTaskRunner) and self.plan.space.prunes
        while True:
            if time.monotonic() - self._recovered > _RECOVER_S:
                self.recover()
            while len(self.running) < width and self._accounted() < target:
                if tell_first:
                    self.writer.join()
                if not self._launch():
                    break
            if self.running:
                self._collect(timeout=1.0)
                continue
            self.writer.join()
            if tallies(self.study).finished >= target:
                return
            # Another driver's trials make up the rest: wait for them (or for its death).
            self.peers.wait(1.0)

    def _accounted(self) -> int:
        """Trials of the study that count toward its target: finished, or running here or in
        another driver (asked and not handed back)."""
        return sum(1 for t in self.store.trials() if _counts(t))

    def _launch(self) -> bool:
        """Asks for a trial and launches it; False when it came out beyond the target (asked
        at once with another driver's) and was handed back."""
        trial = self.study.ask()
        self.asked = StudyStore.trial_id(trial)  # RUNNING in the study until launched
        self.peers.claim(trial)
        rank = sum(1 for t in self.store.trials() if t.number < trial.number and _counts(t))
        if rank >= self.plan.target:
            self._hand_back(trial)
            return False
        params = self.plan.space.suggest(trial)
        try:
            cfg = configure(self.plan.trial_base, self.plan.space.config_values(params))
        except ConfigError as exc:  # this combination of values is refused: the trial fails
            spec = self._spec(trial, params, self.plan.trial_base)
            self.writer.put(spec, TrialOutcome(trial.number, TrialState.FAIL, error=str(exc)))
            self.asked = None
            return True
        self._submit(self._spec(trial, params, cfg))
        self.asked = None
        return True

    def _hand_back(self, trial: optuna.Trial) -> None:
        """A surplus trial: FAIL, uncounted, its enqueued parameters queued again."""
        trial_id = StudyStore.trial_id(trial)
        self.store.set_attrs(trial_id, {_SURPLUS: True})
        frozen = self.store.trial(trial_id)
        self.store.fail_interrupted(trial_id)
        if "fixed_params" in frozen.system_attrs:  # it came from the queue: put it back
            self.study.enqueue_trial(frozen.system_attrs["fixed_params"])
        self.asked = None

    def _spec(
        self, trial: optuna.Trial, params: Mapping[str, ParamValue], cfg: ExperimentConfig
    ) -> TrialSpec:
        plan, sc = self.plan, self.plan.base.sweep
        return TrialSpec(
            config=cfg,
            params=params,
            study=plan.study,
            storage=plan.storage,
            trial_id=StudyStore.trial_id(trial),
            number=trial.number,
            attempt=0,
            parent_run_id=self.tracker.run_id if self.tracker else None,
            objectives=plan.space.objectives,
            pruner=plan.space.pruner if plan.space.prunes else None,
            trial_actors=sc.trial_actors,
            # one trial at a time in this process: it may use all of the process's threads
            cpus=None if isinstance(self.runner, InProcessTaskRunner) else sc.cpus_per_trial,
            summaries=self.summaries,
            curves=plan.space.report.curves if plan.space.report else (),
            checkpoints_of=trial.user_attrs.get("fedsweep_rerun_of"),
        )

    def _submit(self, spec: TrialSpec) -> None:
        assert self.runner is not None
        self.running[self.runner.submit(run_trial, spec)] = spec

    def _collect(self, timeout: float) -> None:
        assert self.runner is not None
        for handle in self.runner.wait(list(self.running), timeout=timeout):
            spec = self.running.pop(handle)
            outcome = self._outcome(handle, spec)
            if outcome is not None:
                self.writer.put(spec, outcome)

    def _outcome(self, handle: TaskHandle, spec: TrialSpec) -> TrialOutcome | None:
        """The trial's outcome; None when its worker died and it was launched again."""
        assert self.runner is not None
        try:
            outcome: TrialOutcome = self.runner.result(handle)
            return outcome
        except WorkerLost as exc:
            if self.tracker is not None:
                self.tracker.close_children(
                    RunStatus.FAILED, f"worker lost: {exc}", trial=spec.number
                )
            if spec.attempt < self.plan.base.sweep.max_retries:
                self._submit(replace(spec, attempt=spec.attempt + 1))
                return None
            error = f"worker lost {spec.attempt + 1} times: {exc}"
            return TrialOutcome(spec.number, TrialState.FAIL, error=error)
        except Exception as exc:  # the task itself broke, outside the trial's own handling
            return TrialOutcome(spec.number, TrialState.FAIL, error=f"{type(exc).__name__}: {exc}")

    def _told(self, outcome: TrialOutcome) -> None:
        """On the writer's thread, once a trial is told to the study."""
        with self._lock:
            self.tallies = tallies(self.study)  # every driver's trials
            if outcome.state == TrialState.COMPLETE and outcome.values:
                self.best = _better(self.best, outcome.values, self.plan.space)
            left = self.plan.target - self.tallies.finished
        if self.first_told is None:
            self.first_told = time.perf_counter()
            # What the first trial imported and built lives as long as the process: its
            # objects (some 700,000 with PyTorch, MLflow and Optuna) leave the collector's
            # full passes, each of which had cost about 0.15 s.
            process.freeze()
            if self.ahead is not None:  # told the others' time, as this one took
                self.ahead.start((self.first_told - self.started) * left / self.width)
        self._report()
        packager = self.ahead.packager if self.ahead is not None else None
        if (
            packager is not None
            and not self._packaged_early
            and self.tracker is not None
            and not self.plan.space.multi_objective
            and 0 < left <= self.width  # the last trials are training
        ):
            self._packaged_early = True
            package_early(packager, self.tracker, self.study, self.plan.base)

    def show(self, phase: str) -> None:
        """Reports the step the sweep has reached after its trials (the finish's)."""
        self.phase = phase
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            best = self.best
            shown = len(best) if isinstance(best, list) else best  # multi-objective: front size
            t = self.tallies
            self.progress(
                {
                    "complete": t.complete,
                    "pruned": t.pruned,
                    "failed": t.failed,
                    "finished": t.finished,
                    "running": len(self.running),
                    "target": self.plan.target,
                    "best": shown,
                    "phase": self.phase,
                }
            )

    # ---------------------------------------------------------------- shutting down

    def stop(self, exc: BaseException) -> None:
        """What any exit but the normal one leaves: running trials stopped, finished ones
        written, unfinished ones FAIL (marked interrupted), every run closed."""
        if self.runner is not None:
            _stop_running(self.runner, self.running)
        self.writer.join()  # the trials that did finish are written and told
        unfinished = [s.trial_id for s in self.running.values()]
        if self.asked is not None:
            unfinished.append(self.asked)  # asked for, stopped before it was launched
        for trial_id in unfinished:
            self.store.fail_interrupted(trial_id)
        last_out = self.peers.leave()
        if self.tracker is not None:
            killed = isinstance(exc, KeyboardInterrupt)
            status = RunStatus.KILLED if killed else RunStatus.FAILED
            reason = "the sweep was interrupted" if killed else f"the sweep's driver failed: {exc}"
            for spec in self.running.values():
                self.tracker.close_children(status, reason, trial=spec.number)
            if last_out:
                self.tracker.close_children(status, reason)
                self.tracker.end(status, exc)


def _counts(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts toward the study's target."""
    if t.state == TrialState.WAITING or t.user_attrs.get(INTERRUPTED):
        return False
    return True


def _stop_running(runner: TaskRunner, running: Iterable[TaskHandle]) -> None:
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


def _best_value(study: optuna.Study) -> float | list[tuple[float, ...]] | None:
    try:
        if len(study.directions) > 1:
            return [tuple(t.values) for t in study.best_trials]
        return study.best_value
    except ValueError:  # no complete trial yet
        return None


def _better(
    best: float | list[tuple[float, ...]] | None, values: Sequence[float], space: Space
) -> float | list[tuple[float, ...]]:
    """The best value so far, for the progress line; for a multi-objective study, the Pareto
    front's values (its size is shown)."""
    if space.multi_objective:
        sign = [1.0 if o.direction == "maximize" else -1.0 for o in space.objectives]

        def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
            pairs = [(s * x, s * y) for s, x, y in zip(sign, a, b)]
            return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

        front = list(best) if isinstance(best, list) else []
        if any(dominates(f, values) for f in front):
            return front
        return [f for f in front if not dominates(values, f)] + [tuple(values)]
    value = values[0]
    if best is None or isinstance(best, list):
        return value
    return max(best, value) if space.objectives[0].direction == "maximize" else min(best, value)


def _default_study_name(config: object, space: object) -> str:
    left = Path(config).stem if isinstance(config, (str, os.PathLike)) else "experiment"
    right = Path(space).stem if isinstance(space, (str, os.PathLike)) else "space"
    return f"{left}-{right}"
