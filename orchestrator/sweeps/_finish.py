"""The study's parent run, and the study's finish: best trials, tables, plots, the registry."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from orchestrator.config import ExperimentConfig, ModelFormat, flatten, to_dict, to_yaml
from orchestrator.study_report import Best
from orchestrator.sweeps._optuna import INTERRUPTED
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
    "parent_run",
    "tallies",
]

PARENT_ATTR = "mlflow_parent_run_id"
"""Study user attribute naming the study's parent MLflow run."""
_FOUNDER_WAIT_S = 60.0
"""How long a driver that did not create the study waits for its creator's parent run."""


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
    """What the study's finish needs that no trial's result changes, done on a thread of its
    own while the trials run, so the finish does not pay for it after the last trial: the
    plotting and importance modules imported (matplotlib, scikit-learn under Optuna's fANOVA),
    and, when the best model will be packaged as an MLflow model, MLflow's PyTorch flavour
    imported and PyTorch's export traced once (its first trace costs about a second).

    Nothing here touches a random generator or the study: a trial in this process trains as
    it would without it. Whatever fails here is left for the finish to do (or fail) itself.

    Args:
        package: whether the finish will package a checkpoint as an MLflow model.
        importances: whether the finish will plot the parameters' importances (fANOVA:
            scikit-learn), which it does not for a one-parameter space.
    """

    def __init__(self, package: bool, importances: bool = True) -> None:
        self.package, self.importances = package, importances
        self._thread = threading.Thread(target=self._run, name="fedsweep-finish-ahead", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        """Starts the work (once; later calls do nothing). The driver calls it when its first
        trial is told: by then a trial in this process has imported what it needs, so the
        two threads never import at once, and the first trial is not slowed."""
        with self._lock:
            if not self._thread.is_alive() and self._thread.ident is None:
                self._thread.start()

    def _run(self) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot  # noqa: F401
            import optuna.visualization.matplotlib  # noqa: F401

            if self.importances:
                import optuna.importance  # noqa: F401 - fANOVA: scikit-learn

            if self.package:
                import mlflow.pytorch  # noqa: F401
                import torch

                # skip_init: a module with no initialisation, so no draw from torch's global
                # generator, which a trial training in this process may be using
                layer = torch.nn.utils.skip_init(torch.nn.Linear, 2, 2)
                torch.export.export(layer, (torch.zeros(1, 2),))
        except Exception:  # noqa: BLE001 - the finish does it itself
            pass

    def wait(self) -> None:
        """Returns once the work is done, if it started (the finish runs after it, never
        beside it)."""
        with self._lock:
            started = self._thread.ident is not None
        if started:
            self._thread.join()


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
) -> SweepResult:
    """Sums the study up: the best trial(s); with a parent run, the trial table, the plots,
    the report, and the best models made MLflow models and registered. ``step`` is told the
    name of each step as it begins (a progress bar shows it)."""
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
        _log_summary(study, space, tracker, entries, counts, step)
        if report is not None:
            step("report")
            report.log(tracker)
        step("best model")
        registered = _register(tracker, entries, base, name)
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


def _register(
    tracker: MlflowTracker, entries: list[Best], base: ExperimentConfig, name: str
) -> list[dict[str, object]]:
    """Each best trial's model, as an MLflow model in its run, in the Model Registry."""
    registered: list[dict[str, object]] = []
    model_name = base.sweep.register_as or f"{name}-best"
    for entry in entries:
        marks = {"study": name, "trial": str(entry.get("number"))}
        existing = tracker.model_versions(model_name, marks)
        if existing:  # registered already (a resumed study, or another driver's finish)
            registered.append(
                {"name": model_name, "version": existing[0], "trial": entry.get("number")}
            )
            continue
        uri = entry["model_uri"]
        if isinstance(uri, str) and uri.endswith("checkpoint/model.pt"):
            uri = entry["model_uri"] = _package_checkpoint(
                tracker, uri, str(entry["run_id"]), base.tracking.model_format
            )
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


def _package_checkpoint(
    tracker: MlflowTracker, uri: str, run_id: str, model_format: ModelFormat
) -> str:
    """Turns a best trial's checkpoint into an MLflow model logged in that trial's run."""
    import numpy as np

    from trainers.models import load_checkpoint

    model, spec = load_checkpoint(tracker.read_bytes(uri))
    example = np.zeros((2, spec.n_features), dtype=np.float32)
    fmt = str(model_format) if model_format in (ModelFormat.pt2, ModelFormat.pickle) else "pt2"
    return tracker.log_model(model, example, serialization=fmt, run_id=run_id)
