"""One experiment end to end: config -> data -> parties on an executor -> trainer -> MLflow.

:func:`run` is the code path of both the Python API and ``fedsweep run``.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from clusters import Executor, InProcessExecutor
from orchestrator import plots
from orchestrator.config import (
    ExperimentConfig,
    RuntimeConfig,
    flatten,
    load_config,
    to_dict,
    to_yaml,
)
from orchestrator.data import Prepared, prepare, write_partitions
from orchestrator.errors import ConfigError
from trainers import TRAINERS
from trainers.base import DataMismatch, StopTraining, TrainResult
from trainers.local import warm_up
from trainers.models import ModelSpec, load_checkpoint, save_checkpoint

__all__ = ["RunResult", "make_executor", "run"]

ProgressFn = Callable[[int, Mapping[str, float]], None]


@dataclass
class RunResult:
    """What one experiment produced."""

    run_id: str | None
    """MLflow run id (None when tracking is off)."""
    metrics: dict[str, float]
    """The last round's metrics."""
    history: list[dict[str, float]] = field(default_factory=list)
    """One metrics dict per round, with a ``round`` key."""
    model_uri: str | None = None
    """``models:/<model id>`` when the model was logged as an MLflow model, or
    ``runs:/<run id>/checkpoint/model.pt`` for a checkpoint."""
    record: Any = None
    """With ``tracking.deferred``: the run's RunRecord, written by whoever receives it."""

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "metrics": self.metrics}


def make_executor(runtime: RuntimeConfig) -> Executor:
    """The executor the runtime config asks for; a Ray pool starts warming up at once."""
    if runtime.executor == "local":
        return InProcessExecutor()
    from clusters import RayExecutor

    return RayExecutor(
        address=runtime.address,
        num_workers=runtime.num_workers,
        num_cpus=runtime.num_cpus,
        worker_init=warm_up,
    )


class _Reporter:
    """Fans a trainer's per-round metrics out to history, MLflow and a progress callback."""

    def __init__(self, tracker: Any | None, progress: ProgressFn | None) -> None:
        self.tracker = tracker
        self.progress = progress

    def report(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(step, metrics)
        if self.progress is not None:
            self.progress(step, metrics)


def run(
    config: str | os.PathLike | ExperimentConfig | dict | None = None,
    overrides: Sequence[str] = (),
    *,
    progress: ProgressFn | None = None,
    executor: Executor | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> RunResult:
    """Runs one experiment and records it in MLflow.

    Args:
        config: a YAML path, a nested dict or an ExperimentConfig.
        overrides: ``dotted.key=value`` strings applied on top.
        progress: called after every round with (round, metrics).
        executor: run parties here instead of the executor ``runtime`` asks for (the caller
            keeps ownership and closes it).
        tags: extra MLflow tags.
        parent_run_id: nest the run under this MLflow run.

    Raises:
        ConfigError: bad config or data; raised before any MLflow run exists.
    """
    cfg = load_config(config, list(overrides))
    trainer = TRAINERS.get(cfg.trainer.name)(cfg.trainer, cfg.model)
    lineage = _load_teacher(cfg, trainer)
    own_executor = executor is None
    if executor is None:
        executor = make_executor(cfg.runtime)  # Ray actors warm up while the data loads
    try:
        prepared = prepare(cfg)
        try:
            trainer.check(prepared.data)
        except DataMismatch as exc:
            raise ConfigError(exc.key, exc.problem) from None
        if cfg.partition.output_dir:
            write_partitions(prepared, cfg.partition.output_dir)
        return _run_tracked(
            cfg, trainer, prepared, executor, progress, {**lineage, **(tags or {})}, parent_run_id
        )
    finally:
        if own_executor:
            executor.close()


def _load_teacher(cfg: ExperimentConfig, trainer: Any) -> dict[str, str]:
    """Hands a distillation trainer its teacher from MLflow; returns the lineage tags."""
    if cfg.trainer.name != "distill" or cfg.trainer.distill.teacher.source != "mlflow":
        return {}
    teacher = cfg.trainer.distill.teacher
    try:
        data, lineage = _fetch_cached(teacher.uri, teacher.tracking_uri or cfg.tracking.uri)
    except ValueError as exc:
        raise ConfigError("trainer.distill.teacher.uri", str(exc)) from None
    trainer.teacher, _ = load_checkpoint(data)
    return dict(lineage)


@functools.lru_cache(maxsize=4)
def _fetch_cached(ref: str, uri: str | None) -> tuple[bytes, tuple]:
    """A teacher is fetched once per process: a sweep's trials on one worker share it."""
    from orchestrator.tracking import fetch_checkpoint

    data, lineage = fetch_checkpoint(ref, uri)
    return data, tuple(lineage.items())


def _run_tracked(
    cfg: ExperimentConfig,
    trainer: Any,
    prepared: Prepared,
    executor: Executor,
    progress: ProgressFn | None,
    extra_tags: Mapping[str, str] | None,
    parent_run_id: str | None,
) -> RunResult:
    tracker = None
    if cfg.tracking.enabled:
        from orchestrator.tracking import MlflowTracker, RecordingTracker

        cls = RecordingTracker if cfg.tracking.deferred else MlflowTracker
        tracker = cls(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.flush_every)
        tracker.start(
            _params(cfg),
            {**_run_tags(cfg), **(extra_tags or {})},
            run_name=cfg.tracking.run_name,
            parent_run_id=parent_run_id,
        )
        tracker.log_text(to_yaml(cfg), "config.yaml")
        if cfg.tracking.partition:
            tracker.log_table(prepared.stats, "partition/stats.parquet")
        if (
            cfg.tracking.partition
            and cfg.tracking.plots
            and "label_0" in prepared.stats.column_names
        ):
            tracker.log_figure(
                plots.label_histogram(prepared.stats), "partition/label_histogram.png"
            )
    start = time.perf_counter()
    try:
        result: TrainResult = trainer.fit(
            prepared.data, executor, _Reporter(tracker, progress), cfg.seed
        )
    except StopTraining as exc:
        if tracker is not None:  # stopped on purpose (a pruned trial): not a failure
            exc.run_id = tracker.run_id  # type: ignore[attr-defined]
            exc.record = getattr(tracker, "record", None)  # type: ignore[attr-defined]
            tracker.set_tags({"stopped_early": str(exc) or "yes"})
            tracker.end("FINISHED")
        raise
    except KeyboardInterrupt as exc:
        if tracker is not None:
            tracker.end("KILLED", exc)
        raise
    except BaseException as exc:
        if tracker is not None:
            exc.run_id = tracker.run_id  # type: ignore[attr-defined]
            exc.record = getattr(tracker, "record", None)  # type: ignore[attr-defined]
            tracker.end("FAILED", exc)
        raise
    metrics = {**result.final_metrics, "wall_time_s": time.perf_counter() - start}
    model_uri = None
    if tracker is not None:
        try:
            tracker.log_metrics(len(result.history), {"wall_time_s": metrics["wall_time_s"]})
            if cfg.tracking.plots:
                _log_plots(tracker, cfg, result)
            for name, rows in result.tables.items():
                if rows:
                    tracker.log_table(pa.Table.from_pylist(rows), f"tables/{name}.parquet")
            if cfg.tracking.log_model:
                model_uri = _log_model(tracker, cfg, trainer, result, prepared)
        except BaseException as exc:
            tracker.end("FAILED", exc)
            raise
        tracker.end("FINISHED")
    return RunResult(
        tracker.run_id if tracker else None,
        metrics,
        result.history,
        model_uri,
        getattr(tracker, "record", None),
    )


def _log_model(
    tracker: Any, cfg: ExperimentConfig, trainer: Any, result: TrainResult, prepared: Prepared
) -> str | None:
    """Logs the final model; returns its URI (None: a checkpoint the trainer cannot make)."""
    spec = ModelSpec.from_config(cfg.model, prepared.data.n_features, prepared.data.n_classes)
    if cfg.tracking.model_format == "checkpoint":
        if not trainer.checkpointable:  # a federation of party models: no light checkpoint
            return None
        return tracker.log_bytes(save_checkpoint(result.model, spec), "checkpoint/model.pt")
    uri = tracker.log_model(
        result.model, prepared.data.x_test[:5], serialization=cfg.tracking.model_format
    )
    # The architecture and weights too (milliseconds), so that any run's model can be
    # reloaded as a fedsweep module, e.g. as a distillation teacher (run:<id>).
    if trainer.checkpointable:
        tracker.log_bytes(save_checkpoint(result.model, spec), "checkpoint/model.pt")
    return uri


def _log_plots(tracker: Any, cfg: ExperimentConfig, result: TrainResult) -> None:
    title = f"{cfg.trainer.name} on {cfg.data.name}"
    if any("ssl_cross_loss" in h for h in result.history):  # pretraining, then fine-tuning
        tracker.log_figure(plots.ssl_losses(result.history, title), "pretraining.png")
        result = TrainResult(
            result.model, [h for h in result.history if "test_accuracy" in h], result.tables
        )
    if result.history and any(k.endswith("_auc") and k != "test_auc" for k in result.history[0]):
        tracker.log_figure(plots.privacy_curve(result.history, title), "privacy_curve.png")
    elif result.history and "suboptimality" in result.history[0]:
        tracker.log_figure(plots.convergence(result.history, title), "convergence.png")
    elif result.history:
        tracker.log_figure(plots.learning_curve(result.history, title), "learning_curve.png")
    if "edges" in result.tables:
        net = result.tables.get("network", [{}])[0]
        name = f"{net.get('graph', '')}, {net.get('nodes', '')} nodes, gap {net.get('spectral_gap', 0):.4f}"
        tracker.log_figure(
            plots.network(result.tables["edges"], cfg.partition.num_parties, name), "network.png"
        )


def _params(cfg: ExperimentConfig) -> dict[str, Any]:
    flat = flatten(to_dict(cfg))
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
    commit = _git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The commit checked out here, asked once per process (sweep trials would ask each time)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
