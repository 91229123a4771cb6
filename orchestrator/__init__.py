"""The control plane: configs, data, runs, tracking, the job API and the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedsweep")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

from orchestrator.config import ExperimentConfig, load_config  # noqa: E402
from orchestrator.errors import ConfigError  # noqa: E402
from orchestrator.jobs import Job, JobStatus, get_job, submit  # noqa: E402
from orchestrator.runner import RunFailed, RunResult, run  # noqa: E402
from orchestrator.sweeps import SweepResult, sweep  # noqa: E402

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
    "run",
    "submit",
    "sweep",
]
