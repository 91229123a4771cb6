"""Sweeps: an Optuna study whose trials run on Ray, each trial an MLflow run nested under the
study's run.

- :mod:`._driver`: the driver (launch, collect, shut down) and :func:`sweep`;
- :mod:`._trial`: one trial, what crosses to its worker and back, and what the worker does;
- :mod:`._writer`: finished trials' runs written and told to Optuna, off the driver's loop;
- :mod:`._peers`: the heartbeat of each driver on a study, and the trials of dead ones;
- :mod:`._space`: a space checked against the experiment before anything runs;
- :mod:`._finish`: the parent run and the study's finish (best trials, plots, registry);
- :mod:`._optuna`: storages, samplers and pruners, and the one class that reaches past
  Optuna's public API.
"""

from orchestrator.sweeps._driver import sweep
from orchestrator.sweeps._finish import SweepResult
from orchestrator.sweeps._optuna import make_storage
from orchestrator.sweeps._space import check_space
from orchestrator.sweeps._trial import TrialOutcome, TrialSpec, run_trial

__all__ = [
    "SweepResult",
    "TrialOutcome",
    "TrialSpec",
    "check_space",
    "make_storage",
    "run_trial",
    "sweep",
]
