"""Experiment configs: typed schemas, loading, overrides and validation.

The only module that imports omegaconf. A config file is plain YAML (read with a safe loader,
so no tag can build an object or run code), merged onto the typed schema, then the dotted
``key=value`` overrides; paths are made absolute there and then, and the result is validated.
Every problem becomes one :class:`ConfigError` naming the key.

A sweep builds each trial's config once, in its driver, with :func:`configure`: the base
config with the trial's values set on it, typed and validated; the worker parses nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import glob
import os
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.errors import ConfigError
from orchestrator.secrets import MASK, reads_environment, redact
from orchestrator.validation import validate
from orchestrator.vision import VISION_DATASETS
from trainers.config import TrainerConfig
from trainers.models import ModelConfig
from trainers.rules import Choice, at_least, between, file_path, is_path, one_of, positive

__all__ = [
    "ClassAssignment",
    "ConfigError",
    "DataConfig",
    "Device",
    "ExecutorKind",
    "ExperimentConfig",
    "ModelFormat",
    "PartitionConfig",
    "RuntimeConfig",
    "SweepConfig",
    "TrackingConfig",
    "TrialModels",
    "VerticalConfig",
    "VerticalSplit",
    "configure",
    "flatten",
    "load_config",
    "to_dict",
    "to_yaml",
]


class VerticalSplit(Choice):
    """How features are dealt to the parties of a vertical federation."""

    even = "even"
    columns = "columns"
    random = "random"
    image = "image"


class ClassAssignment(Choice):
    """Which labels a pathological party holds (Flower Datasets' class_assignment_mode)."""

    random = "random"
    deterministic = "deterministic"
    first_deterministic = "first_deterministic"


class Device(Choice):
    """Where party tensors and models live."""

    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


class ExecutorKind(Choice):
    """Where the parties run."""

    auto = "auto"
    local = "local"
    ray = "ray"


class ModelFormat(Choice):
    """How a run's final model is logged."""

    pt2 = "pt2"
    pickle = "pickle"
    checkpoint = "checkpoint"


class TrialModels(Choice):
    """What a sweep's trials log of their models."""

    checkpoint = "checkpoint"
    mlflow = "mlflow"


@dataclass
class DataConfig:
    """Where the samples come from."""

    name: str = field(default="digits", metadata=one_of("dataset"))
    """digits, breast_cancer, wine (bundled with scikit-learn), synthetic, synthetic_images,
    parquet (a file), hf (a Hugging Face data set) or torchvision (one under data.root);
    graphs (for the graph trainers): graph (two Parquet tables), sbm (a stochastic block
    model) or planetoid (PyG's, from data.root)."""
    path: Optional[str] = field(default=None, metadata=file_path(or_name=True))  # noqa: UP045 - OmegaConf needs typing.Optional
    """parquet: the file to read. hf: a directory written by ``save_to_disk``, local data
    files (``.parquet``, ``.csv``, ``.json``, ``.jsonl``; a glob is fine) or a hub id (read
    only where the machine reaches the hub)."""
    split: str = "train"
    """hf: the split that trains (and, without test_split, gives the test share too)."""
    test_split: Optional[str] = None  # noqa: UP045
    """hf: the split that tests (default: test_fraction of data.split, drawn at random)."""
    label: str = "label"
    """Label column (parquet, hf)."""
    features: Optional[list[str]] = None  # noqa: UP045
    """Feature columns (parquet, hf; default: every numeric column, fixed-length numeric
    list and image column but the label and partition.by). Image and list columns become
    one feature per value."""
    n_samples: int = field(default=2000, metadata=at_least(10))
    """Synthetic: number of samples."""
    n_features: int = field(default=20, metadata=at_least(1))
    """Synthetic: number of features."""
    n_informative: int = field(default=10, metadata=at_least(1))
    """Synthetic: informative features."""
    n_redundant: int = field(default=2, metadata=at_least(0))
    """Synthetic: redundant (linear combinations of informative) features."""
    n_classes: int = field(default=4, metadata=at_least(2))
    """Synthetic: number of classes."""
    random_state: Optional[int] = None  # noqa: UP045
    """Synthetic: generator seed (default: the run's seed)."""
    image_side: int = field(default=8, metadata=at_least(4))
    """synthetic_images: side of the square single-channel images."""
    image_noise: float = field(default=1.5, metadata=at_least(0))
    """synthetic_images: standard deviation of the pixel noise."""
    nodes: Optional[str] = field(default=None, metadata=file_path())  # noqa: UP045
    """graph: the nodes' Parquet file (``node``, the label column, optional ``split``, the
    feature columns)."""
    edges: Optional[str] = field(default=None, metadata=file_path())  # noqa: UP045
    """graph: the edges' Parquet file (``src``, ``dst``: node ids; made undirected)."""
    root: Optional[str] = field(default=None, metadata=file_path())  # noqa: UP045
    """planetoid: PyG's data directory (PyG downloads into it when the files are missing).
    torchvision: the root the data set lies under, in torchvision's own layout."""
    dataset: str = "Cora"
    """planetoid: Cora, CiteSeer or PubMed. torchvision: MNIST, FashionMNIST, KMNIST,
    EMNIST, CIFAR10, CIFAR100 or SVHN (the training set trains, the test set tests)."""
    variant: Optional[str] = None  # noqa: UP045
    """torchvision: EMNIST's split (byclass, bymerge, balanced (default), letters, digits,
    mnist); CIFAR100's labels (fine (default) or coarse)."""
    download: bool = False
    """torchvision: fetch missing files into data.root with torchvision (needs torchvision
    and the internet)."""
    p_in: float = field(default=0.05, metadata=between(0, 1))
    """sbm: edge probability within a community (n_samples nodes, n_classes communities,
    n_features features)."""
    p_out: float = field(default=0.005, metadata=between(0, 1))
    """sbm: edge probability across communities."""
    feature_noise: float = field(default=1.0, metadata=at_least(0))
    """sbm: standard deviation of the noise on each community's mean features."""
    test_fraction: float = field(default=0.2, metadata=between(0, 1, low_open=True, high_open=True))
    """Share of the samples held out for testing, in (0, 1)."""
    shuffle_split: bool = True
    """Draw the test split at random; false takes the last rows as the test split."""
    positive: Optional[list[int]] = None  # noqa: UP045
    """Make the task binary: these label values become class 1, every other class 0 (e.g.
    [0] for digit 0 against the rest)."""
    standardize: bool = True
    """Scale features to zero mean and unit variance (statistics of the training split)."""

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.n_informative + self.n_redundant > self.n_features:
            yield "n_informative", "n_informative + n_redundant must not exceed n_features"
        if self.name == "parquet":
            if not self.path:
                yield "path", "required when data.name is parquet"
            elif not Path(self.path).is_file():
                yield "path", f"no such file: {self.path}"
        if self.name != "hf":
            if self.split != "train":
                yield "split", "read by data.name=hf only"
            if self.test_split is not None:
                yield "test_split", "read by data.name=hf only"
        if self.name != "torchvision":
            if self.variant is not None:
                yield "variant", "read by data.name=torchvision only"
            if self.download:
                yield "download", "read by data.name=torchvision only"
        if self.name == "hf" and self.test_split == self.split:
            yield "test_split", f"is the training split ({self.split}): name another split"
        if self.name == "torchvision" and self.dataset not in VISION_DATASETS:
            yield "dataset", f"torchvision reads {', '.join(VISION_DATASETS)}; got {self.dataset!r}"
        if self.name == "hf" and not self.path:
            yield (
                "path",
                "required when data.name is hf (a save_to_disk directory, files or a hub id)",
            )
        if self.name == "torchvision" and not self.root:
            yield "root", "required when data.name is torchvision (the data set's directory)"
        if self.name == "graph":
            for key in ("nodes", "edges"):
                path = getattr(self, key)
                if not path:
                    yield key, "required when data.name is graph"
                elif not Path(path).is_file():
                    yield key, f"no such file: {path}"
        if self.name == "planetoid" and not self.root:
            yield "root", "required when data.name is planetoid (PyG's data directory)"


@dataclass
class VerticalConfig:
    """partition.name=vertical: which features each party holds, and which samples."""

    split: VerticalSplit = VerticalSplit.even
    """even (contiguous column blocks of near-equal size), columns (the lists below), random
    (a seeded shuffle of the columns, then even blocks) or image (square images cut into
    num_parties vertical strips: digits' left and right halves)."""
    columns: Optional[list[list[str]]] = None  # noqa: UP045
    """split=columns: each party's feature names, the active party (party 0) first."""
    aligned: float = field(default=1.0, metadata=between(0, 1, low_open=True))
    """Share of the training samples every party holds (aligned); the rest are dealt out to
    the parties as their own unaligned samples, featuring only their columns."""


@dataclass
class GraphSplitConfig:
    """How a graph is split into the global test graph and the clients' subgraphs."""

    test_share: float = field(default=0.3, metadata=between(0, 1, low_open=True, high_open=True))
    """Share of the nodes held out as the global test graph (FedEgo: 0.3)."""
    local_test: float = field(default=0.2, metadata=between(0, 1, low_open=True, high_open=True))
    """Share of each client's nodes held out as its local test nodes."""
    resolution: float = field(default=1.0, metadata=positive())
    """louvain: the modularity resolution (larger: more, smaller communities)."""
    sample_rate: float = field(default=0.5, metadata=between(0, 1, low_open=True))
    """label_skew: nodes each client draws, as a share of all nodes (FedEgo: 0.5 on Cora)."""
    major_rate: float = field(default=0.8, metadata=between(0, 1))
    """label_skew: share of a client's nodes drawn from its major labels."""
    major_labels: int = field(default=3, metadata=at_least(1))
    """label_skew: how many labels are each client's major labels."""


@dataclass
class PartitionConfig:
    """How the training split is cut into parties."""

    name: str = field(default="iid", metadata=one_of("partitioner"))
    """Across samples: iid; label skew: dirichlet, shards, pathological (k labels per
    party), inner_dirichlet (fixed sizes, Dirichlet labels); size skew: linear, square,
    exponential, quantity_skew (Dirichlet sizes); natural (one party per value of
    partition.by). Across features: vertical (party 0 is the active party, holding the
    labels). For a graph: louvain (communities), random_nodes or label_skew (FedEgo's)."""
    num_parties: int = field(default=10, metadata=at_least(1))
    """Number of parties (natural: how many of the column's values become parties, drawn
    from the seed when the column holds more)."""
    alpha: float = field(default=0.5, metadata=positive())
    """Dirichlet concentration (dirichlet, inner_dirichlet: of each party's labels;
    quantity_skew: of the parties' sizes): small values skew more."""
    labels_per_party: int = field(default=2, metadata=at_least(1))
    """shards, pathological: labels each party holds."""
    class_assignment: ClassAssignment = ClassAssignment.random
    """pathological: which labels a party holds: random, deterministic (party i: labels i
    to i+k-1, cyclically) or first_deterministic (label i mod C, then random ones)."""
    by: Optional[str] = None  # noqa: UP045
    """natural: the column whose values are the parties (writer, user, hospital)."""
    sizes: Optional[list[int]] = None  # noqa: UP045
    """inner_dirichlet: each party's sample count (default: equal shares)."""
    min_samples: int = field(default=1, metadata=at_least(1))
    """dirichlet, quantity_skew: redraw until every party holds at least this many samples."""
    vertical: VerticalConfig = field(default_factory=VerticalConfig)
    """partition.name=vertical: the feature split and the sample alignment."""
    graph: GraphSplitConfig = field(default_factory=GraphSplitConfig)
    """A graph's split: the global test share, each client's local test share, and the
    settings of the louvain and label_skew partitioners."""
    output_dir: Optional[str] = field(default=None, metadata=file_path())  # noqa: UP045
    """Write each party's samples to <output_dir>/party_<id>.parquet for inspection."""

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.by is not None and self.name != "natural":
            yield "by", f"read by the natural partitioner, not {self.name}"
        if self.by is None and self.name == "natural":
            yield "by", "natural needs the column whose values are the parties"
        if self.sizes is not None:
            if self.name != "inner_dirichlet":
                yield "sizes", f"read by the inner_dirichlet partitioner, not {self.name}"
            elif any(s < 0 for s in self.sizes):
                yield "sizes", "must be sample counts, 0 or more"
        if self.class_assignment != ClassAssignment.random and self.name != "pathological":
            yield "class_assignment", f"read by the pathological partitioner, not {self.name}"


@dataclass
class RuntimeConfig:
    """Where the parties run."""

    executor: ExecutorKind = ExecutorKind.auto
    """ray (an actor pool), local (everything in this process) or auto: local when the run's
    work is small enough that starting Ray would dominate it (under about half a million
    sample passes, some 20 s of training on 2 cores), else Ray; Ray whenever ``address``,
    ``num_workers`` or ``gpus_per_worker`` asks for it."""
    address: Optional[str] = None  # noqa: UP045
    """Ray cluster to join: auto or ray://host:port. Default: start a local Ray."""
    num_workers: Optional[int] = field(default=None, metadata=at_least(1))  # noqa: UP045
    """Actors in the pool (default: one per CPU)."""
    num_cpus: Optional[int] = field(default=None, metadata=at_least(1))  # noqa: UP045
    """CPUs of a local Ray started by fedsweep (default: all)."""
    device: Device = Device.cpu
    """Where party tensors and models live: cpu, cuda, or auto (cuda where the worker has a
    GPU). Runs are bit-for-bit reproducible on cpu only."""
    gpus_per_worker: float = field(default=0.0, metadata=at_least(0))
    """GPUs each actor of the pool reserves on Ray (fractions share one GPU)."""
    checkpoint_every: Optional[int] = field(default=None, metadata=at_least(0))  # noqa: UP045
    """Rounds between checkpoints of the whole run (its model, its parties' state, every
    random stream, its history): 0 never; default: whenever the rounds since the last one
    took 20 times what that checkpoint cost (so that checkpoints take under 5%)."""
    checkpoint_dir: Optional[str] = field(default=None, metadata=file_path())  # noqa: UP045
    """Where the checkpoints of an untracked run go (a tracked run keeps them with its MLflow
    run's artifacts)."""
    max_actor_restarts: int = field(default=3, metadata=at_least(0))
    """Actors that may die in a run (each replaced and its work run again from the last
    checkpoint) before the run fails, resumable."""


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
    model_format: ModelFormat = ModelFormat.checkpoint
    """How the model is logged: checkpoint (the default), architecture and weights as one
    artifact (checkpoint/model.pt, milliseconds to write; ``orchestrator.load_model``
    loads it), or also as an MLflow model (``mlflow.pytorch.load_model``) serialized as pt2
    (a traced graph, safe to load; seconds to export) or pickle. A trainer whose model has no
    checkpoint form (the vertical ones) logs an MLflow pickle model for checkpoint, in a run
    that writes as it goes (a sweep trial's recorded run then logs no model)."""
    flush_every: int = field(default=20, metadata=at_least(1))
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

    trials: Optional[int] = field(default=None, metadata=at_least(1))  # noqa: UP045
    """Finished trials the study should hold; re-running the command resumes up to this
    (default: the whole grid for a grid sampler, else 20)."""
    parallel: Optional[int] = field(default=None, metadata=at_least(1))  # noqa: UP045
    """Trials running at once (default: as many as the CPUs allow)."""
    executor: ExecutorKind = ExecutorKind.auto
    """Where trials run: ray (Ray tasks, ``parallel`` at once), local (one at a time, in
    this process), or auto: local when ``parallel`` is 1 or the whole study's work is small
    (what ``runtime.executor: auto`` runs here, for every trial together), and nothing asks
    for Ray
    (an address or ``RAY_ADDRESS``, ``parallel`` above 1, ``trial_actors``,
    ``gpus_per_trial``, ``cpus_per_trial`` other than 1); else Ray."""
    study: Optional[str] = None  # noqa: UP045
    """Optuna study name (default: <config file>-<space file>)."""
    storage: Optional[str] = None  # noqa: UP045
    """Optuna storage URL (default: a journal file beside the MLflow store)."""
    register_as: Optional[str] = None  # noqa: UP045
    """Model Registry name for the best trial's model (default: <study>-best)."""
    max_retries: int = field(default=2, metadata=at_least(0))
    """Reruns of a trial whose worker process died."""
    trial_actors: int = field(default=0, metadata=at_least(0))
    """0: a trial simulates its parties in its own worker; N: it gets its own pool of N actors."""
    cpus_per_trial: float = field(default=1.0, metadata=positive())
    """CPUs each trial reserves on Ray."""
    gpus_per_trial: float = field(default=0.0, metadata=at_least(0))
    """GPUs each trial reserves on Ray (fractions share one GPU); with
    runtime.device=cuda or auto its parties then train there."""
    trial_plots: bool = False
    """Log per-trial plots (the parent run holds the study's plots either way)."""
    trial_models: TrialModels = TrialModels.checkpoint
    """checkpoint: each trial records its run, with checkpoint/model.pt, for the driver to
    write when it ends, and only the best trials become MLflow models (in their own runs) and
    are registered; mlflow: every trial writes its run live and logs its model as
    tracking.model_format says (pt2 or pickle for an MLflow model)."""


@dataclass
class ExperimentConfig:
    """One experiment: data, partition, model, trainer, runtime, tracking and seed."""

    seed: int = field(default=0, metadata=at_least(0))
    """Root of every random choice in the run."""
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def load_config(
    source: str | os.PathLike[str] | ExperimentConfig | dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    allow_env: bool | None = None,
) -> ExperimentConfig:
    """Builds a validated config from a YAML file (or a dict or config) plus overrides.

    Relative paths (``data.path``, ``partition.output_dir``, ...) are made absolute against
    the working directory now, so that the config means the same in any other process.

    Args:
        source: path of a YAML file, a nested dict, an ExperimentConfig, or None for defaults.
        overrides: ``dotted.key=value`` strings, applied in order.
        allow_env: whether ``${oc.env:NAME}`` may read the environment (default: only when
            ``FEDSWEEP_ALLOW_ENV=1``, which ``--allow-env`` sets); such values are logged as
            the interpolation, never as what it read (see :mod:`orchestrator.secrets`).

    Raises:
        ConfigError: naming the offending key and the problem.
    """
    if isinstance(source, ExperimentConfig):
        base: Any = OmegaConf.structured(source)
    elif isinstance(source, dict):
        base = source
    elif source is None:
        base = {}
    else:
        base = _read_yaml(Path(source))
    if isinstance(base, dict):
        _screen(base, ExperimentConfig, "")
    from_env: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(item, "an override must look like dotted.key=value")
        try:  # OmegaConf reads the value as YAML: a broken one is the key's error
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", None) or "not valid YAML")
            raise ConfigError(key, f"malformed value {value!r}: {problem}") from None
        _screen_override(key, parsed)
        if isinstance(parsed, str) and reads_environment(parsed):
            from_env[key] = parsed
    if isinstance(base, dict):
        from_env.update(_environment_reads(base))
    if from_env:
        allowed = os.environ.get("FEDSWEEP_ALLOW_ENV") == "1" if allow_env is None else allow_env
        if not allowed:
            raise ConfigError(
                next(iter(from_env)),
                "reads an environment variable (${oc.env:...}); pass --allow-env to allow it",
            )
    try:
        merged = OmegaConf.merge(_schema(), base)
        cfg = OmegaConf.merge(merged, OmegaConf.from_dotlist([o.strip() for o in overrides]))
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise _translate(exc) from None
    assert isinstance(obj, ExperimentConfig)
    _resolve_paths(obj)
    validate(obj)
    if from_env:  # kept beside the fields (deep copies keep it): what to log instead
        obj.__dict__["_from_env"] = from_env
    return obj


def _environment_reads(raw: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted key -> the interpolation text, for every value of raw data that reads the
    environment (a list holding one counts as a whole)."""
    found: dict[str, str] = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            found.update(_environment_reads(v, key + "."))
        elif reads_environment(v):
            found[key] = v if isinstance(v, str) else MASK
    return found


_INT64 = 2**63
"""Integers are refused from this magnitude up: no setting needs one, and NumPy, PyTorch and
Ray all fail on them, later and worse."""


def _screen(raw: Any, hint: Any, key: str) -> None:
    """Checks raw YAML data against the schema type ``hint`` where OmegaConf would take it
    wrongly or fail with no key: a mapping or list where the other is asked (its merge
    raises a bare TypeError), a bool field given anything but a bool (OmegaConf reads 2 as
    true), and integers too large for any setting (a float field's merge overflows).
    Everything else (strings to numbers, choices, interpolations) OmegaConf checks."""
    if isinstance(raw, int) and not isinstance(raw, bool) and abs(raw) >= _INT64:
        raise ConfigError(key or "<config>", f"out of range: {raw} (integers must be below 2^63)")
    if raw is None or (isinstance(raw, str) and "${" in raw):
        return  # null where it is allowed, and interpolations, are OmegaConf's to check
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            _screen(raw, inner[0], key)
        return
    if dataclasses.is_dataclass(hint):
        if not isinstance(raw, Mapping):
            raise ConfigError(
                key or "<config>", f"wrong type: expected a mapping, got {_shown(raw)}"
            )
        hints = _hints(typing.cast(type, hint))
        for name, value in raw.items():
            if not isinstance(name, str):
                raise ConfigError(f"{key}.{name}" if key else str(name), "keys must be names")
            if name in hints:
                _screen(value, hints[name], f"{key}.{name}" if key else name)
        return
    if isinstance(raw, Mapping) or (isinstance(raw, list) and origin is not list):
        raise ConfigError(key, f"wrong type: expected {_type_name(hint)}, got {_shown(raw)}")
    if origin is list:
        if not isinstance(raw, list):
            raise ConfigError(key, f"wrong type: expected a list, got {_shown(raw)}")
        for i, value in enumerate(raw):
            _screen(value, args[0], f"{key}[{i}]")
    elif hint is bool and not isinstance(raw, bool):
        raise ConfigError(key, f"wrong type: expected true or false, got {_shown(raw)}")


def _screen_override(key: str, raw: Any) -> None:
    """:func:`_screen` for one ``dotted.key=value`` override, where its key is a field."""
    hint: Any = ExperimentConfig
    for part in key.split("."):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) is typing.Union and len(inner) == 1:
            hint = inner[0]
        hints = _hints(hint) if isinstance(hint, type) else {}
        if part not in hints:
            return  # an unknown key or an index: OmegaConf names it
        hint = hints[part]
    _screen(raw, hint, key)


def _type_name(hint: Any) -> str:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "a name"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _shown(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def configure(cfg: ExperimentConfig, values: Mapping[str, Any]) -> ExperimentConfig:
    """A copy of ``cfg`` with ``values`` (dotted key -> value) set, typed and validated.

    What a search draws is data, not text: each value is checked against its field's type
    (an int where a float is asked is a float; a choice is given by its name) and nothing is
    parsed. A value for a whole section (a preset's ``trainer.distill.assistant: {...}``) is
    merged onto that section's schema.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or one validation refuses.
    """
    out = copy.deepcopy(cfg)
    for dotted, value in values.items():
        *parents, name = dotted.split(".")
        node: object = out
        for i, part in enumerate(parents):
            hints = _hints(_kind(node))
            if part not in hints:
                raise ConfigError(".".join(parents[: i + 1]), "unknown key")
            child = getattr(node, part)
            if child is None:  # an unset optional section: start from its defaults
                child = _dataclass_of(hints[part])()
                setattr(node, part, child)
            node = child
        hints = _hints(_kind(node))
        if name not in hints:
            raise ConfigError(dotted, "unknown key")
        setattr(node, name, _typed_value(value, hints[name], dotted))
    _resolve_paths(out)
    validate(out)
    return out


def _kind(node: object) -> type:
    return type(node)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    if not dataclasses.is_dataclass(cls):
        return {}
    return typing.get_type_hints(cls)


def _dataclass_of(hint: Any) -> type:
    for arg in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(arg):
            return typing.cast(type, arg)
    raise TypeError(f"{hint} is not a section")


def _typed_value(value: Any, hint: Any, key: str) -> Any:
    """``value`` as a field of type ``hint`` holds it, or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed_value(value, inner, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"wrong type: expected a list, got {value!r}")
        return [_typed_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _member(hint, value, key)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"wrong type: expected a mapping, got {value!r}")
        try:
            obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(hint), dict(value)))
        except OmegaConfBaseException as exc:
            inner = _translate(exc)
            raise ConfigError(f"{key}.{inner.key}", inner.problem) from None
        return obj
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(key, f"wrong type: expected {name}, got {value!r}")


def _member(kind: type[enum.Enum], value: Any, key: str) -> enum.Enum:
    if isinstance(value, kind):
        return value
    if isinstance(value, str) and value in kind.__members__:
        return kind[value]
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ConfigError(key, _not_a_member(kind, value))


def _not_a_member(kind: type[enum.Enum], value: Any) -> str:
    if issubclass(kind, enum.IntEnum):
        return f"must be one of {_members(kind)}, got {value}"
    return f"unknown name {value!r}; valid: {_members(kind)}"


def _members(kind: type[enum.Enum]) -> str:
    if issubclass(kind, enum.IntEnum):
        return ", ".join(f"{m.value} ({m.name})" for m in kind)
    return ", ".join(sorted(kind.__members__))


def _resolve_paths(cfg: Any) -> None:
    """Makes every relative path field (``path()`` in its metadata) absolute, in place."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _resolve_paths(value)
        elif is_path(f.metadata) and isinstance(value, str) and value:
            where = Path(value).expanduser()
            if f.metadata["path"] == "or_name" and not (where.exists() or glob.glob(str(where))):
                continue  # a name, not a path: a hub id
            if not where.is_absolute():
                where = where.resolve()
            setattr(cfg, f.name, str(where))


@functools.lru_cache(maxsize=1)
def _schema() -> DictConfig:
    # Building the typed schema costs milliseconds; merge() copies it rather than mutating it.
    return OmegaConf.structured(ExperimentConfig)


def _read_yaml(path: Path) -> dict[str, Any]:
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


_ENUM_VALUE = re.compile(r"Invalid value '(.*)', expected one of \[")


def _translate(exc: OmegaConfBaseException) -> ConfigError:
    key = getattr(exc, "full_key", None) or "<config>"
    msg = str(getattr(exc, "msg", "") or exc).strip().splitlines()[0]
    name = type(exc).__name__
    if name in ("ConfigKeyError", "ConfigAttributeError") and "not in" in msg:
        return ConfigError(key, "unknown key")
    if name == "ValidationError":
        kind = _field_type(getattr(exc, "object_type", None), getattr(exc, "key", None))
        found = _ENUM_VALUE.match(msg)
        if found and isinstance(kind, type) and issubclass(kind, enum.Enum):
            return ConfigError(key, _not_a_member(kind, found.group(1)))
        return ConfigError(key, f"wrong type: {msg}")
    if name == "InterpolationResolutionError" or "Interpolation" in name:
        return ConfigError(key, f"cannot resolve interpolation: {msg}")
    return ConfigError(key, msg)


def _field_type(owner: Any, name: Any) -> Any:
    hints = _hints(owner) if isinstance(owner, type) else {}
    hint = hints.get(str(name))
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 else hint


def to_yaml(cfg: ExperimentConfig | dict[str, Any], *, logged: bool = False) -> str:
    """The resolved config as YAML (libyaml's emitter where PyYAML has it: every run writes
    its config.yaml, and the pure-Python emitter takes ~8 ms of a trial for it); ``logged``:
    as it may be logged (see :func:`to_dict`). A dict is taken as :func:`to_dict` made it."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    plain = cfg if isinstance(cfg, dict) else to_dict(cfg, logged=logged)
    return yaml.dump(plain, Dumper=dumper, sort_keys=False)


def to_dict(cfg: Any, *, logged: bool = False) -> dict[str, Any]:
    """The resolved config as a plain nested dict: choices as their values, interpolations
    resolved on loading. ``logged``: fit to be logged, with what was read from the
    environment as its interpolation and secrets masked (:func:`orchestrator.secrets.redact`)."""
    plain: dict[str, Any] = _plain(dataclasses.asdict(cfg))
    if not logged:
        return plain
    for dotted, text in getattr(cfg, "_from_env", {}).items():
        *parents, name = dotted.split(".")
        node: Any = plain
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and name in node:
            node[name] = text
    return redact(plain)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat
