"""The sweep's writer: finished trials' recorded MLflow runs written, then told to Optuna, on
a thread of its own, so that the next trial trains meanwhile."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import replace

from optuna.trial import TrialState

from orchestrator.sweeps._optuna import StudyStore
from orchestrator.sweeps._trial import TrialOutcome, TrialSpec
from orchestrator.tracking import write_record

__all__ = ["Writer", "tell"]


class Writer:
    """Writes finished trials' recorded MLflow runs, then tells Optuna, on a thread of its own,
    so the next trial trains meanwhile. A trial counts as finished in the study only once its
    run is written: a driver killed in between leaves it RUNNING, to be re-run on resume."""

    def __init__(
        self, store: StudyStore, tracking_uri: str, told: Callable[[TrialOutcome], None]
    ) -> None:
        self.store, self.uri, self.told = store, tracking_uri, told
        self.queue: queue.Queue[tuple[TrialSpec, TrialOutcome]] = queue.Queue()
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
                outcome = self._write(spec, outcome)
                tell(self.store, spec, outcome)
                with self._lock:
                    self.pending -= 1
                self.told(outcome)
            finally:
                self.queue.task_done()

    def _write(self, spec: TrialSpec, outcome: TrialOutcome) -> TrialOutcome:
        if outcome.record is None:
            return outcome
        try:
            run_id = write_record(outcome.record, self.uri)
        except Exception as exc:  # noqa: BLE001 - recorded on the trial, the sweep goes on
            return TrialOutcome(
                spec.number, TrialState.FAIL, error=f"writing its MLflow run failed: {exc}"
            )
        path = outcome.record.model_path
        model_uri = f"runs:/{run_id}/{path}" if path else outcome.model_uri
        return replace(outcome, run_id=run_id, model_uri=model_uri, record=None)


def tell(store: StudyStore, spec: TrialSpec, outcome: TrialOutcome) -> None:
    # Each storage write is an append under a file lock (journal) or a transaction (RDB):
    # only what is needed later is written.
    attrs: dict[str, object] = {}
    if outcome.run_id:
        attrs["mlflow_run_id"] = outcome.run_id
    if outcome.model_uri:
        attrs["model_uri"] = outcome.model_uri
    if outcome.error:
        attrs["error"] = outcome.error[:2000]
    if outcome.summary:
        attrs["summary"] = dict(outcome.summary)
    if outcome.series:
        attrs["series"] = dict(outcome.series)
    if spec.attempt:
        attrs["attempts"] = spec.attempt + 1
    store.set_attrs(spec.trial_id, attrs)
    store.tell(spec.number, outcome.state, outcome.values or ())
