"""One trial: what crosses to the worker, what comes back, and what the worker does.

The driver builds the trial's experiment once (the base config with the trial's values set,
typed and validated) and ships it in a :class:`TrialSpec`; the worker runs it, reporting each
round's objective to the study for pruning, and answers with a :class:`TrialOutcome`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from optuna.trial import TrialState

from clusters import Executor, InProcessExecutor, where_am_i
from orchestrator.checkpoints import Checkpoints
from orchestrator.config import ExperimentConfig
from orchestrator.runner import RunFailed, run
from orchestrator.tracking import RunRecord
from search_spaces import Objective, Strategy
from trainers.base import StopTraining

__all__ = ["ParamValue", "TrialOutcome", "TrialSpec", "run_trial", "warm_worker"]

ParamValue = bool | int | float | str | None
"""A value Optuna suggests."""


@dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs to run one trial."""

    config: ExperimentConfig
    """The trial's experiment, built and validated by the driver."""
    params: Mapping[str, ParamValue]
    """The trial's parameters as Optuna suggested them (tagged on its run)."""
    study: str
    storage: str
    trial_id: int
    number: int
    attempt: int
    parent_run_id: str | None
    objectives: tuple[Objective, ...]
    pruner: Strategy | None
    """The space's pruner, rebuilt on the worker (None: no pruning)."""
    trial_actors: int = 0
    cpus: float | None = 1.0
    """CPUs the trial reserved; None: it has this process to itself (trials run one at a time
    in the driver), so PyTorch keeps the process's threads."""
    summaries: tuple[Objective, ...] = ()
    """Metrics the study's report tabulates, reduced over the trial's rounds."""
    curves: tuple[str, ...] = ()
    """Metrics whose per-round series the study's report plots (y first, then the x's)."""
    checkpoints_of: int | None = None
    """The trial whose checkpoints this one resumes from: itself (a retried attempt), or
    the trial a killed driver left, that this one runs again (default: this trial)."""


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial ended as."""

    number: int
    state: TrialState
    values: tuple[float, ...] | None = None
    run_id: str | None = None
    model_uri: str | None = None
    error: str | None = None
    record: RunRecord | None = None
    """The trial's MLflow run, recorded, for the driver to write (deferred tracking)."""
    model_path: str | None = None
    """The checkpoint's artifact path in the trial's run."""
    summary: Mapping[str, float] | None = None
    """The report's metrics for this trial (None without a report)."""
    series: Mapping[str, list[float]] | None = None
    """The report's curves for this trial: metric -> values at the rounds that report y."""


class _Pruning:
    """Reports each round's objective to the study and stops the run when it is pruned."""

    def __init__(self, spec: TrialSpec) -> None:
        import optuna

        from orchestrator.sweeps._optuna import StudyStore, make_pruner, make_storage

        self.objective = spec.objectives[0]
        self.history: list[Mapping[str, float]] = []
        self.trial = None
        if spec.pruner is not None:
            study = optuna.load_study(
                study_name=spec.study,
                storage=make_storage(spec.storage, connections=2),
                pruner=make_pruner(spec.pruner),
            )
            self.trial = StudyStore.open_trial(study, spec.trial_id)

    def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
        self.history.append(metrics)
        if self.trial is None:
            return
        with warnings.catch_warnings():
            # a retried trial's resumed rounds, or rounds run again after a lost actor, were
            # reported already: Optuna keeps the first value, which is the same
            warnings.filterwarnings("ignore", message=r".*is already reported")
            self.trial.report(self.objective.value(self.history), step)
        if self.trial.should_prune():
            raise StopTraining(f"pruned after round {step}")


def run_trial(spec: TrialSpec) -> TrialOutcome:
    """Runs one trial: its experiment, nested under the study's run, reporting each round's
    objective to the study for pruning."""
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # As many torch threads as CPUs the trial reserved: parallel trials must not oversubscribe.
    # (Restored after: an in-process runner must not change its caller's setting.)
    threads = torch.get_num_threads()
    if spec.cpus is not None:
        torch.set_num_threads(max(1, int(spec.cpus)))
    try:
        return _run_trial(spec)
    finally:
        torch.set_num_threads(threads)


def _run_trial(spec: TrialSpec) -> TrialOutcome:
    place = where_am_i()
    tags = {
        "fedsweep.node": place["node"],
        "fedsweep.worker": place["worker"],
        **({"fedsweep.gpus": place["gpus"]} if place["gpus"] else {}),
        "fedsweep.study": spec.study,
        "fedsweep.trial": str(spec.number),
        "fedsweep.attempt": str(spec.attempt),
        **{f"fedsweep.param.{k}": str(v) for k, v in spec.params.items()},
    }
    executor: Executor
    if spec.trial_actors:
        from clusters import RayExecutor

        runtime = spec.config.runtime
        executor = RayExecutor(num_workers=spec.trial_actors, device=str(runtime.device))
    else:
        executor = InProcessExecutor(device=str(spec.config.runtime.device))
    files, fresh = None, True
    if spec.parent_run_id is not None and spec.config.runtime.checkpoint_every != 0:
        from orchestrator.tracking import RunFiles

        # Under the study's run, where the trial's next attempt (on any node) resumes from.
        uri = spec.config.tracking.uri or ""
        owner = spec.number if spec.checkpoints_of is None else spec.checkpoints_of
        files = RunFiles(uri, spec.parent_run_id, f"trials/{owner}/checkpoints")
        fresh = spec.attempt == 0 and spec.checkpoints_of is None
    try:
        result = run(
            spec.config,
            progress=_Pruning(spec),
            executor=executor,
            tags=tags,
            parent_run_id=spec.parent_run_id,
            checkpoints=None if files is None else Checkpoints(files, fresh=fresh),
        )
    except RunFailed as exc:  # a failing trial is a result: recorded, and the sweep goes on
        return TrialOutcome(
            spec.number, TrialState.FAIL, run_id=exc.run_id, error=str(exc), record=exc.record
        )
    finally:
        executor.close()
    if result.stopped is not None:
        return TrialOutcome(
            spec.number,
            TrialState.PRUNED,
            run_id=result.run_id,
            error=result.stopped,
            record=result.record,
        )
    try:
        values = tuple(o.value(result.history) for o in spec.objectives)
        summary = {o.metric: o.value(result.history) for o in spec.summaries}
    except KeyError as exc:
        return TrialOutcome(
            spec.number, TrialState.FAIL, run_id=result.run_id, error=str(exc), record=result.record
        )
    return TrialOutcome(
        spec.number,
        TrialState.COMPLETE,
        values,
        result.run_id,
        result.model_uri,
        record=result.record,
        model_path=result.model_path,
        summary=summary or None,
        series=_series(result.history, spec.curves) if spec.curves else None,
    )


def _series(
    history: list[dict[str, float]], keys: tuple[str, ...], points: int = 300
) -> dict[str, list[float]]:
    """The curves' metrics at the rounds that report all of them, thinned to ``points``."""
    rows = [h for h in history if all(k in h for k in keys)]
    if len(rows) > points:
        rows = [rows[round(i * (len(rows) - 1) / (points - 1))] for i in range(points)]
    return {k: [float(h[k]) for h in rows] for k in keys}


def warm_worker() -> int:
    """A trial worker's start, paid while the driver opens the study: this module's imports
    (the runner, PyTorch) and every trainer's. Returns the worker's process id."""
    import os

    import trainers  # noqa: F401 - registers every trainer

    return os.getpid()
