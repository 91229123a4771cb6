"""The study's parent run, and the study's finish: best trials, tables, plots, the registry."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from orchestrator import process
from orchestrator.config import ExperimentConfig, ModelFormat, flatten, to_dict, to_yaml
from orchestrator.study_report import Best
from orchestrator.sweeps._optuna import INTERRUPTED
from orchestrator.sweeps._packager import PackageFailed, Packager, package_checkpoint
from search_spaces import Space

if TYPE_CHECKING:
    from orchestrator.grid_report import ResultsTable
    from orchestrator.tracking import MlflowTracker

__all__ = [
    "PARENT_ATTR",
    "FinishAhead",
    "SweepResult",
    "Tallies",
    "finish",
    "package_early",
    "parent_run",
    "tallies",
]

PARENT_ATTR = "mlflow_parent_run_id"
"""Study user attribute naming the study's parent MLflow run."""
_FOUNDER_WAIT_S = 60.0
"""How long a driver that did not create the study waits for its creator's parent run."""
PACKAGER_MIN_S = 15.0
"""Trials still to run for this long (by the first trial's time) give the best model's
packaging a process of its own: its start (about 4 s of CPU at a low priority) then has time
to be done before the last trial."""


@dataclass
class SweepResult:
    """The study's outcome, as ``fedsweep sweep --json`` prints it."""

    study: str
    parent_run_id: str | None
    n_complete: int
    n_failed: int
    n_pruned: int
    best: Best | list[Best] | None = None
    """The best trial; for a multi-objective study, the Pareto trials."""
    registered: list[dict[str, object]] = field(default_factory=list)
    report: ResultsTable | None = None
    """With a space ``report``: the results table (see :mod:`orchestrator.grid_report`)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent running trials and finishing the study (plots, table, registry)."""

    def to_json(self) -> dict[str, object]:
        return {
            "study": self.study,
            "parent_run_id": self.parent_run_id,
            "n_complete": self.n_complete,
            "n_failed": self.n_failed,
            "n_pruned": self.n_pruned,
            "best": self.best,
        }


@dataclass
class Tallies:
    """Finished trials of a study by state (interrupted ones do not count)."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    def add(self, state: TrialState) -> None:
        if state == TrialState.COMPLETE:
            self.complete += 1
        elif state == TrialState.PRUNED:
            self.pruned += 1
        else:
            self.failed += 1


def tallies(study: optuna.Study) -> Tallies:
    out = Tallies()
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished() and not t.user_attrs.get(INTERRUPTED):
            out.add(t.state)
    return out


def parent_run(
    study: optuna.Study,
    base: ExperimentConfig,
    space: Space,
    name: str,
    tracking_uri: str,
    storage_url: str,
    founder: bool,
) -> MlflowTracker:
    """The study's parent run: the one the study names (resumed), or a new one.

    Several drivers may start on one study at once: the one that created the study
    (``founder``) creates the parent run, and the others wait for the study to name it.
    """
    from orchestrator.tracking import MlflowTracker

    tracker = MlflowTracker(tracking_uri, base.tracking.experiment, base.tracking.flush_every)
    if not founder and not study.get_trials(deepcopy=False):
        deadline = time.monotonic() + _FOUNDER_WAIT_S
        while PARENT_ATTR not in study.user_attrs and time.monotonic() < deadline:
            time.sleep(0.2)  # user_attrs reads the storage afresh
    previous = study.user_attrs.get(PARENT_ATTR)
    if previous and tracker.resume(previous):
        return tracker
    tracker.start(
        {**flatten(to_dict(base, logged=True)), "sweep.storage_url": storage_url},
        {
            "fedsweep.study": name,
            "fedsweep.kind": "sweep",
            "trainer": base.trainer.name,
            "dataset": base.data.name,
        },
        run_name=name,
    )
    assert tracker.run_id is not None
    study.set_user_attr(PARENT_ATTR, tracker.run_id)
    tracker.log_text(to_yaml(base, logged=True), "config.yaml")
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
            "sampler": space.sampler.as_dict(),
            "pruner": space.pruner.as_dict(),
            **({"report": vars(space.report)} if space.report else {}),
        },
        sort_keys=False,
    ).replace("!!python/tuple", "")


class FinishAhead:
    """What the study's finish needs that no trial's result changes, done while the trials
    run, so the finish does not pay for it after the last trial: the plotting and importance
    modules imported (matplotlib, scikit-learn under Optuna's fANOVA) on a thread of its own,
    and, when the best model will be packaged as an MLflow model, MLflow's PyTorch flavour
    imported and PyTorch's export traced once (its first trace costs about a second).

    Where the trials train in this process and will go on long enough, the packaging has a
    process of its own (:class:`~orchestrator.sweeps._packager.Packager`): its imports and
    trace would otherwise hold the interpreter's lock from the trial training beside them.

    Nothing here touches a random generator or the study: a trial in this process trains as
    it would without it. Whatever fails here is left for the finish to do (or fail) itself.

    Args:
        package: whether the finish will package a checkpoint as an MLflow model.
        importances: whether the finish will plot the parameters' importances (fANOVA:
            scikit-learn), which it does not for a one-parameter space.
        trials_here: whether the trials train in this process.
    """

    def __init__(self, package: bool, importances: bool = True, trials_here: bool = False):
        self.package, self.importances, self.trials_here = package, importances, trials_here
        self.packager: Packager | None = None
        self._thread = threading.Thread(target=self._run, name="fedsweep-finish-ahead", daemon=True)
        self._lock = threading.Lock()

    def start(self, seconds_left: float = 0.0) -> None:
        """Starts the work (once; later calls do nothing). The driver calls it when its first
        trial is told, with the time it expects the other trials to take: by then a trial
        in this process has imported what it needs, so the two threads never import at
        once, and the first trial is not slowed."""
        with self._lock:
            if self._thread.ident is not None:
                return
            if self.package and self.trials_here and seconds_left >= PACKAGER_MIN_S:
                try:
                    self.packager = Packager()
                except OSError:  # no process to be had: the thread prepares it instead
                    self.packager = None
            self._thread.start()

    def _run(self) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot  # noqa: F401
            import optuna.visualization.matplotlib  # noqa: F401

            if self.importances:
                import optuna.importance  # noqa: F401 - fANOVA: scikit-learn

            if self.package and self.packager is None:
                import mlflow.pytorch  # noqa: F401
                import torch

                # skip_init: a module with no initialisation, so no draw from torch's global
                # generator, which a trial training in this process may be using
                layer = torch.nn.utils.skip_init(torch.nn.Linear, 2, 2)
                torch.export.export(layer, (torch.zeros(1, 2),))
        except Exception:  # noqa: BLE001 - the finish does it itself
            pass
        process.freeze()  # the modules just imported live as long as the process

    def wait(self) -> None:
        """Returns once the thread's work is done, if it started (the finish runs after it,
        never beside it)."""
        with self._lock:
            started = self._thread.ident is not None
        if started:
            self._thread.join()

    def close(self) -> None:
        """Ends the packaging process, if there is one."""
        if self.packager is not None:
            self.packager.close()


def _entry(t: optuna.trial.FrozenTrial) -> Best:
    return {
        "number": t.number,
        "values": list(t.values),
        "params": t.params,
        "run_id": t.user_attrs.get("mlflow_run_id"),
        "model_uri": t.user_attrs.get("model_uri"),
    }


def finish(
    study: optuna.Study,
    space: Space,
    tracker: MlflowTracker | None,
    base: ExperimentConfig,
    name: str,
    step: Callable[[str], None] = lambda name: None,
    packager: Packager | None = None,
) -> SweepResult:
    """Sums the study up: the best trial(s); with a parent run, the trial table, the plots,
    the report, and the best models made MLflow models and registered. ``step`` is told the
    name of each step as it begins (a progress bar shows it). A ``packager`` packages the
    best models while the tables and plots are made."""
    from orchestrator.grid_report import build_report

    counts = tallies(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best_trials = (
        (study.best_trials if space.multi_objective else [study.best_trial]) if complete else []
    )
    entries = [_entry(t) for t in best_trials]
    registered: list[dict[str, object]] = []
    report = build_report(study, space)
    if tracker is not None:
        model_name = base.sweep.register_as or f"{name}-best"
        sent = _package_ahead(packager, tracker, entries, base, model_name, name)
        _log_summary(study, space, tracker, entries, counts, step)
        if report is not None:
            step("report")
            report.log(tracker)
        step("best model")
        registered = _register(tracker, entries, base, model_name, name, packager, sent)
    best: Best | list[Best] | None
    if space.multi_objective:
        best = entries
    else:
        best = None
        if entries:
            best = entries[0].copy()
            best.pop("number", None)
    return SweepResult(
        name,
        tracker.run_id if tracker else None,
        counts.complete,
        counts.failed,
        counts.pruned,
        best,
        registered,
        report,
    )


def _log_summary(
    study: optuna.Study,
    space: Space,
    tracker: MlflowTracker,
    entries: list[Best],
    counts: Tallies,
    step: Callable[[str], None],
) -> None:
    from orchestrator import study_report

    step("trial table")

    metrics = {
        "n_complete": float(counts.complete),
        "n_pruned": float(counts.pruned),
        "n_failed": float(counts.failed),
        "n_finished": float(counts.finished),
    }
    if entries and not space.multi_objective:
        value = entries[0]["values"][0]
        metrics["best_value"] = value
        metrics[f"best_{space.objectives[0].metric}"] = value
    tracker.log_metrics(len(study.trials), metrics)
    tracker.flush()
    tracker.log_text(json.dumps(entries, indent=2, default=str), "best.json")
    if entries and not space.multi_objective:
        tracker.set_tags({f"best.{k}": str(v) for k, v in entries[0]["params"].items()})
    study_report.log_trials_table(study, tracker)
    if space.multi_objective and entries:
        study_report.log_pareto_table(entries, space, tracker)
    step("plots")
    study_report.log_plots(study, space, tracker)


def _marks(name: str, entry: Best) -> dict[str, str]:
    return {"study": name, "trial": str(entry.get("number"))}


def _needs_package(uri: object) -> bool:
    """Whether a trial's model is a checkpoint, to be made an MLflow model."""
    return isinstance(uri, str) and uri.endswith("checkpoint/model.pt")


def _package_ahead(
    packager: Packager | None,
    tracker: MlflowTracker,
    entries: list[Best],
    base: ExperimentConfig,
    model_name: str,
    name: str,
) -> set[int]:
    """Asks the packaging process for each best checkpoint not registered yet; returns the
    indexes of the entries asked for (their answers come in order)."""
    sent: set[int] = set()
    if packager is None:
        return sent
    fmt = _format(base.tracking.model_format)
    early, packager.early = packager.early, None
    for i, entry in enumerate(entries):
        if not _needs_package(entry["model_uri"]) or tracker.model_versions(
            model_name, _marks(name, entry)
        ):
            continue
        if early is not None and entry["model_uri"] == early:
            sent.add(i)  # asked for while the last trials ran: its answer comes first
            early = None
            continue
        if early is not None:  # the last trials found a better one: that model is dropped
            _drop_early(packager, tracker)
            early = None
        try:
            packager.submit(
                tracker.uri, tracker.experiment, str(entry["model_uri"]), str(entry["run_id"]), fmt
            )
        except PackageFailed:
            break
        sent.add(i)
    if early is not None:
        _drop_early(packager, tracker)
    return sent


def _drop_early(packager: Packager, tracker: MlflowTracker) -> None:
    """Waits for the model packaged early and deletes it: it is not the best trial's."""
    try:
        uri = packager.result()
    except PackageFailed:
        return
    tracker.delete_logged_model(uri)


def package_early(
    packager: Packager, tracker: MlflowTracker, study: optuna.Study, base: ExperimentConfig
) -> None:
    """Asks for the best trial's packaging now, while the last trials train: the finish
    then mostly finds it done (one objective only; a better last trial asks again)."""
    try:
        best = study.best_trial
    except ValueError:  # no complete trial yet
        return
    uri, run_id = best.user_attrs.get("model_uri"), best.user_attrs.get("mlflow_run_id")
    if not (_needs_package(uri) and run_id):
        return
    fmt = _format(base.tracking.model_format)
    try:
        packager.submit(tracker.uri, tracker.experiment, str(uri), str(run_id), fmt, early=True)
    except PackageFailed:
        pass


def _register(
    tracker: MlflowTracker,
    entries: list[Best],
    base: ExperimentConfig,
    model_name: str,
    name: str,
    packager: Packager | None = None,
    sent: Collection[int] = (),
) -> list[dict[str, object]]:
    """Each best trial's model, as an MLflow model in its run, in the Model Registry."""
    registered: list[dict[str, object]] = []
    fmt = _format(base.tracking.model_format)
    for i, entry in enumerate(entries):
        marks = _marks(name, entry)
        existing = tracker.model_versions(model_name, marks)
        if existing:  # registered already (a resumed study, or another driver's finish)
            registered.append(
                {"name": model_name, "version": existing[0], "trial": entry.get("number")}
            )
            continue
        if _needs_package(entry["model_uri"]):
            checkpoint, run_id = str(entry["model_uri"]), str(entry["run_id"])
            packaged: str | None = None
            if packager is not None and i in sent:
                try:
                    packaged = packager.result()
                except PackageFailed:  # packaged here instead
                    packaged = None
            entry["model_uri"] = packaged or package_checkpoint(tracker, checkpoint, run_id, fmt)
        uri = entry["model_uri"]
        if not isinstance(uri, str):
            continue
        lineage = tracker.run_tags(str(entry["run_id"]), "lineage.")  # a student's teacher
        version = tracker.register_model(
            uri, model_name, {**marks, "run_id": str(entry["run_id"]), **lineage}
        )
        # Two drivers finishing at once may both register: the lowest version stays.
        kept = tracker.model_versions(model_name, marks)[0]
        if kept != version:
            tracker.delete_model_version(model_name, version)
        registered.append({"name": model_name, "version": kept, "trial": entry.get("number")})
    return registered


def _format(model_format: ModelFormat) -> str:
    """The MLflow model a checkpoint becomes: pickle when asked for, else pt2."""
    return "pickle" if model_format == ModelFormat.pickle else "pt2"
