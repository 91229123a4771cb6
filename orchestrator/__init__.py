"""The control plane: configs, data, runs, tracking, the job API and the CLI.

The public names below are imported on first use, so that a command pays only for what it
touches (a run without a sweep never imports Optuna; an untracked one never imports MLflow).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("fedsweep")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

if TYPE_CHECKING:
    from orchestrator.config import ExperimentConfig, load_config
    from orchestrator.errors import ConfigError
    from orchestrator.jobs import Job, JobStatus, get_job, submit
    from orchestrator.runner import RunFailed, RunResult, run
    from orchestrator.sweeps import SweepResult, sweep
    from orchestrator.tracking import load_model

_WHERE = {
    "ExperimentConfig": "orchestrator.config",
    "load_config": "orchestrator.config",
    "ConfigError": "orchestrator.errors",
    "Job": "orchestrator.jobs",
    "JobStatus": "orchestrator.jobs",
    "get_job": "orchestrator.jobs",
    "submit": "orchestrator.jobs",
    "RunFailed": "orchestrator.runner",
    "RunResult": "orchestrator.runner",
    "run": "orchestrator.runner",
    "SweepResult": "orchestrator.sweeps",
    "sweep": "orchestrator.sweeps",
    "load_model": "orchestrator.tracking",
}

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "Job",
    "JobStatus",
    "RunFailed",
    "RunResult",
    "SweepResult",
    "__version__",
    "get_job",
    "load_config",
    "load_model",
    "run",
    "submit",
    "sweep",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
