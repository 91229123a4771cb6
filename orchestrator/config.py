"""Experiment configs: typed schemas, loading, overrides and validation.

The only module that imports omegaconf. A config file is plain YAML (read with a safe loader,
so no tag can build an object or run code), merged onto the typed schema, then the dotted
``key=value`` overrides. Every problem becomes one :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.errors import ConfigError
from orchestrator.validation import validate
from trainers.config import TrainerConfig
from trainers.models import ModelConfig

__all__ = [
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "PartitionConfig",
    "RuntimeConfig",
    "SweepConfig",
    "TrackingConfig",
    "VerticalConfig",
    "flatten",
    "load_config",
    "to_dict",
    "to_yaml",
]


@dataclass
class DataConfig:
    """Where the samples come from."""

    name: str = "digits"
    """digits, breast_cancer, wine (bundled with scikit-learn), synthetic, synthetic_images,
    or parquet."""
    path: Optional[str] = None  # noqa: UP045 - OmegaConf needs typing.Optional
    """Parquet file to read (data.name=parquet)."""
    label: str = "label"
    """Label column of the Parquet file."""
    features: Optional[list[str]] = None  # noqa: UP045
    """Feature columns of the Parquet file (default: every numeric column but the label)."""
    n_samples: int = 2000
    """Synthetic: number of samples."""
    n_features: int = 20
    """Synthetic: number of features."""
    n_informative: int = 10
    """Synthetic: informative features."""
    n_redundant: int = 2
    """Synthetic: redundant (linear combinations of informative) features."""
    n_classes: int = 4
    """Synthetic: number of classes."""
    random_state: Optional[int] = None  # noqa: UP045
    """Synthetic: generator seed (default: the run's seed)."""
    image_side: int = 8
    """synthetic_images: side of the square single-channel images."""
    image_noise: float = 1.5
    """synthetic_images: standard deviation of the pixel noise."""
    test_fraction: float = 0.2
    """Share of the samples held out for testing, in (0, 1)."""
    shuffle_split: bool = True
    """Draw the test split at random; false takes the last rows as the test split."""
    positive: Optional[list[int]] = None  # noqa: UP045
    """Make the task binary: these label values become class 1, every other class 0 (e.g.
    [0] for digit 0 against the rest)."""
    standardize: bool = True
    """Scale features to zero mean and unit variance (statistics of the training split)."""


@dataclass
class VerticalConfig:
    """partition.name=vertical: which features each party holds, and which samples."""

    split: str = "even"
    """even (contiguous column blocks of near-equal size), columns (the lists below), random
    (a seeded shuffle of the columns, then even blocks) or image (square images cut into
    num_parties vertical strips: digits' left and right halves)."""
    columns: Optional[list[list[str]]] = None  # noqa: UP045
    """split=columns: each party's feature names, the active party (party 0) first."""
    aligned: float = 1.0
    """Share of the training samples every party holds (aligned); the rest are dealt out to
    the parties as their own unaligned samples, featuring only their columns."""


@dataclass
class PartitionConfig:
    """How the training split is cut into parties."""

    name: str = "iid"
    """iid, dirichlet (label skew) or shards (a few labels per party), across samples; or
    vertical, across features (party 0 is the active party, holding the labels)."""
    num_parties: int = 10
    """Number of parties."""
    alpha: float = 0.5
    """Dirichlet concentration: small values give each party few labels."""
    labels_per_party: int = 2
    """Shards: label shards each party receives."""
    min_samples: int = 1
    """Dirichlet: redraw until every party holds at least this many samples."""
    vertical: VerticalConfig = field(default_factory=VerticalConfig)
    """partition.name=vertical: the feature split and the sample alignment."""
    output_dir: Optional[str] = None  # noqa: UP045
    """Write each party's samples to <output_dir>/party_<id>.parquet for inspection."""


@dataclass
class RuntimeConfig:
    """Where the parties run."""

    executor: str = "ray"
    """ray (an actor pool) or local (everything in this process)."""
    address: Optional[str] = None  # noqa: UP045
    """Ray cluster to join: auto or ray://host:port. Default: start a local Ray."""
    num_workers: Optional[int] = None  # noqa: UP045
    """Actors in the pool (default: one per CPU)."""
    num_cpus: Optional[int] = None  # noqa: UP045
    """CPUs of a local Ray started by fedsweep (default: all)."""


@dataclass
class TrackingConfig:
    """Where results are recorded."""

    enabled: bool = True
    """Log the run to MLflow."""
    uri: Optional[str] = None  # noqa: UP045
    """Tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."""
    experiment: str = "fedsweep"
    """MLflow experiment name."""
    run_name: Optional[str] = None  # noqa: UP045
    """MLflow run name (default: MLflow picks one)."""
    log_model: bool = True
    """Log the final model with mlflow.pytorch.log_model."""
    model_format: str = "pt2"
    """How the model is logged: an MLflow model serialized as pt2 (a traced graph, safe to
    load) or pickle (faster); or checkpoint, architecture and weights as one artifact
    (checkpoint/model.pt, milliseconds to write: what sweep trials use by default)."""
    flush_every: int = 20
    """Rounds of metrics buffered before one batched write."""
    plots: bool = True
    """Log the learning curve and the partition's label histogram with the run."""
    params: Optional[list[str]] = None  # noqa: UP045
    """Config keys logged as params (default: the whole flattened config). Sweep trials log
    their searched keys and a few identifying ones; the parent run holds the rest."""
    partition: bool = True
    """Log the partition's statistics (partition/stats.parquet, and its plot with plots)."""
    deferred: bool = False
    """Record the run in memory and hand it back (RunResult.record) instead of writing it as
    it goes: sweeps use this so the driver writes a trial while the next one trains."""


@dataclass
class SweepConfig:
    """How ``fedsweep sweep`` runs its trials (the command's flags override these)."""

    trials: Optional[int] = None  # noqa: UP045
    """Finished trials the study should hold; re-running the command resumes up to this
    (default: the whole grid for a grid sampler, else 20)."""
    parallel: Optional[int] = None  # noqa: UP045
    """Trials running at once (default: as many as the CPUs allow)."""
    study: Optional[str] = None  # noqa: UP045
    """Optuna study name (default: <config file>-<space file>)."""
    storage: Optional[str] = None  # noqa: UP045
    """Optuna storage URL (default: a journal file beside the MLflow store)."""
    register_as: Optional[str] = None  # noqa: UP045
    """Model Registry name for the best trial's model (default: <study>-best)."""
    max_retries: int = 2
    """Reruns of a trial whose worker process died."""
    trial_actors: int = 0
    """0: a trial simulates its parties in its own worker; N: it gets its own pool of N actors."""
    cpus_per_trial: float = 1.0
    """CPUs each trial reserves on Ray."""
    trial_plots: bool = False
    """Log per-trial plots (the parent run holds the study's plots either way)."""
    trial_models: str = "checkpoint"
    """checkpoint: each trial records its run, with checkpoint/model.pt, for the driver to
    write when it ends, and only the best trials become MLflow models (in their own runs) and
    are registered; mlflow: every trial writes its run live and logs an MLflow model in
    tracking.model_format."""


@dataclass
class ExperimentConfig:
    """One experiment: data, partition, model, trainer, runtime, tracking and seed."""

    seed: int = 0
    """Root of every random choice in the run."""
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def load_config(
    source: str | os.PathLike | ExperimentConfig | dict | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> ExperimentConfig:
    """Builds a validated config from a YAML file (or a dict or config) plus overrides.

    Args:
        source: path of a YAML file, a nested dict, an ExperimentConfig, or None for defaults.
        overrides: ``dotted.key=value`` strings, applied in order.

    Raises:
        ConfigError: naming the offending key and the problem.
    """
    schema = _schema()
    if isinstance(source, ExperimentConfig):
        base: Any = OmegaConf.structured(source)
    elif isinstance(source, dict):
        base = source
    elif source is None:
        base = {}
    else:
        base = _read_yaml(Path(source))
    try:
        for item in overrides:
            key, sep, _ = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(item, "an override must look like dotted.key=value")
        if isinstance(source, dict):
            fast = _fast(base, overrides)
            if fast is not None:
                validate(fast)
                return fast
        merged = _merged(base) if isinstance(source, dict) else OmegaConf.merge(schema, base)
        cfg = OmegaConf.merge(merged, OmegaConf.from_dotlist([o.strip() for o in overrides]))
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise _translate(exc) from None
    assert isinstance(obj, ExperimentConfig)
    validate(obj)
    return obj


def _fast(base: dict, overrides: list[str] | tuple[str, ...]) -> ExperimentConfig | None:
    """A dict config plus overrides without OmegaConf, or None where this cannot decide.

    A sweep's worker loads the same base for every trial with other overrides; merging them
    onto the typed schema deep-copies the whole tree each time (tens of ms). Here the base is
    converted once (cached), copied as plain dataclasses, and each override that sets an
    existing scalar field to a value of its type is assigned directly. Anything else (an
    unknown key, a list or a section, a value of another type, an interpolation) returns None
    and takes the OmegaConf path, which gives the same result or the precise error.
    """
    try:
        key = json.dumps(base, sort_keys=True)
    except (TypeError, ValueError):
        return None
    cfg = copy.deepcopy(_template_json(key))
    for item in overrides:
        dotted, _, raw = item.partition("=")
        *path, name = dotted.strip().split(".")
        node: Any = cfg
        for part in path:
            node = getattr(node, part, None)
        if not dataclasses.is_dataclass(node) or "${" in raw:
            return None
        hint = _field_types(type(node)).get(name)
        ok, value = _coerce(_parse_value(raw.strip()), hint)
        if not ok:
            return None
        setattr(node, name, value)
    return cfg


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)  # what a sweep sends (json.dumps of each value)
    except ValueError:
        return yaml.safe_load(raw) if raw else raw


@functools.lru_cache(maxsize=64)
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(True, value as the field holds it) for a scalar of the field's type, else (False, _)."""
    if hint is None:
        return False, None
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return True, None
        rest = [a for a in args if a is not type(None)]
        return _coerce(value, rest[0]) if len(rest) == 1 else (False, None)
    if isinstance(value, bool):
        return (True, value) if hint is bool else (False, None)
    if hint is float and isinstance(value, (int, float)):
        return True, float(value)
    if hint in (int, str) and type(value) is hint:
        return True, value
    return False, None


@functools.lru_cache(maxsize=8)
def _template_json(key: str) -> ExperimentConfig:
    obj = OmegaConf.to_object(_merged_json(key))
    assert isinstance(obj, ExperimentConfig)
    return obj


def _merged(base: dict) -> DictConfig:
    """The schema merged with a dict config, cached: a sweep's worker loads the same base for
    every trial with other overrides, and merging onto the whole schema costs ~12 ms."""
    try:
        key = json.dumps(base, sort_keys=True)
    except (TypeError, ValueError):  # not plain data: merge it afresh
        return OmegaConf.merge(_schema(), base)
    return _merged_json(key)


@functools.lru_cache(maxsize=8)
def _merged_json(key: str) -> DictConfig:
    # merge() returns new objects, so the cached config is never mutated by a later merge
    return OmegaConf.merge(_schema(), json.loads(key))


@functools.lru_cache(maxsize=1)
def _schema() -> DictConfig:
    # Building the typed schema costs milliseconds; merge() copies it rather than mutating it.
    return OmegaConf.structured(ExperimentConfig)


def _read_yaml(path: Path) -> dict:
    key = str(path)
    if not path.exists():
        raise ConfigError(key, "no such file")
    if not path.is_file():
        raise ConfigError(key, "not a file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read: {exc.__class__.__name__}: {exc}") from None
    try:
        data = yaml.safe_load(text)  # safe: tags cannot construct objects or call code
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(key, f"malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(key, f"the top level must be a mapping, not {type(data).__name__}")
    return data


def _translate(exc: OmegaConfBaseException) -> ConfigError:
    key = getattr(exc, "full_key", None) or "<config>"
    msg = str(getattr(exc, "msg", "") or exc).strip().splitlines()[0]
    name = type(exc).__name__
    if name in ("ConfigKeyError", "ConfigAttributeError") and "not in" in msg:
        return ConfigError(key, "unknown key")
    if name == "ValidationError":
        return ConfigError(key, f"wrong type: {msg}")
    if name == "InterpolationResolutionError" or "Interpolation" in name:
        return ConfigError(key, f"cannot resolve interpolation: {msg}")
    return ConfigError(key, msg)


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def to_dict(cfg: ExperimentConfig) -> dict:
    """The resolved config as a plain nested dict (interpolations were resolved on loading)."""
    return dataclasses.asdict(cfg)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat
