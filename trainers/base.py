"""What trainers receive and return, and the one contract every trainer keeps.

Trainers never import Ray, MLflow, Optuna or OmegaConf: they get their data, a typed config,
a seed, an executor for per-party work and a reporter for metrics, and return a result.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
from torch import nn

from clusters import Executor
from clusters.base import PartyTable
from trainers.registry import Registry

if TYPE_CHECKING:
    from trainers.config import TrainerConfig
    from trainers.models import ModelConfig

__all__ = [
    "BYTES_PER_VALUE",
    "TRAINERS",
    "Budget",
    "Federation",
    "FederatedData",
    "Invalid",
    "PartyData",
    "PartyRows",
    "Reporter",
    "RunState",
    "StopTraining",
    "TeacherRef",
    "LOCAL_TRAINING",
    "TrainResult",
    "Trainer",
    "derive_seed",
    "party_sizes",
]

LOCAL_TRAINING = frozenset(
    {"rounds", "local_epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay"}
)
"""The trainer keys of a party's local training, rounds of it (see :attr:`Trainer.reads`)."""

BYTES_PER_VALUE = 4
"""Bytes one float32 value takes on the wire: what communication is counted in."""


@dataclass(frozen=True)
class PartyData:
    """One party's local samples: features (float32) and integer labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


class PartyRows(PartyTable):
    """Every party's samples as consecutive rows of one pair of arrays: party ``ids[i]``
    holds rows ``offsets[i]:offsets[i + 1]``. A party's :class:`PartyData` is a view of its
    rows, made when asked for; the arrays are shipped to workers once, whole (the layout of
    an Arrow table's slices, and what Ray's object store hands to every actor without a copy).

    Args:
        x: features, float32, one row per sample, C-contiguous.
        y: integer labels, aligned with ``x``.
        offsets: ``len(ids) + 1`` row boundaries, ascending, from 0 to ``len(y)``.
        ids: the parties' ids, ascending.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, offsets: np.ndarray, ids: np.ndarray) -> None:
        self.x, self.y = x, y
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.ids = np.asarray(ids, dtype=np.int64)

    @classmethod
    def gather(cls, x: np.ndarray, y: np.ndarray, parts: Sequence[np.ndarray]) -> PartyRows:
        """The parties holding ``x[parts[i]]`` (party id ``i``; empty parts hold nothing and
        are left out), their rows copied once into party order."""
        sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        rows = np.concatenate(parts) if len(parts) else np.zeros(0, dtype=np.int64)
        return cls.cut(x, y, rows, sizes)

    @classmethod
    def cut(cls, x: np.ndarray, y: np.ndarray, rows: np.ndarray, sizes: np.ndarray) -> PartyRows:
        """:meth:`gather` of parts given as consecutive runs of ``rows``, ``sizes[i]`` for
        party ``i``."""
        ids = np.flatnonzero(sizes)
        offsets = np.concatenate([[0], np.cumsum(sizes[ids])]).astype(np.int64)
        return cls(np.ascontiguousarray(x[rows]), y[rows], offsets, ids)

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def adopt(self, stored: PartyTable) -> None:
        """Reads ``stored``'s arrays from now on: the same values, kept elsewhere (Ray's
        object store, read in place and read-only), so that the data is in memory once."""
        assert isinstance(stored, PartyRows) and stored.x.shape == self.x.shape
        self.x, self.y = stored.x, stored.y

    def __getitem__(self, party_id: int) -> PartyData:
        i = self.position(party_id)
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return PartyData(self.x[a:b], self.y[a:b])


@dataclass(frozen=True)
class FederatedData:
    """The partitioned training data and the held-out test split."""

    parties: Mapping[int, PartyData]
    """Each party's samples by id: a :class:`PartyRows` when prepared from a data set."""
    x_test: np.ndarray
    y_test: np.ndarray
    n_features: int
    n_classes: int
    image: tuple[int, int, int] | None = None
    """(channels, height, width) when every sample is an image, flattened (the image models
    read it)."""

    def pooled(self) -> PartyData:
        """All parties' samples in one, in party-id order (the centralized baseline's data)."""
        if isinstance(self.parties, PartyRows):
            return PartyData(self.parties.x, self.parties.y)
        ids = sorted(self.parties)
        return PartyData(
            np.concatenate([self.parties[i].x for i in ids]),
            np.concatenate([self.parties[i].y for i in ids]),
        )


def party_sizes(parties: Mapping[int, PartyData]) -> dict[int, int]:
    """Each party's sample count, by id (of a :class:`PartyTable` without making a record of
    every party)."""
    if isinstance(parties, PartyTable):
        return dict(zip(parties.ids.tolist(), parties.sizes().tolist()))
    return {pid: len(p) for pid, p in parties.items()}


class Reporter(Protocol):
    """Receives a trainer's metrics, one call per round.

    A reporter may raise :class:`StopTraining` to end training early (a pruned trial); trainers
    let it propagate.
    """

    def report(self, step: int, metrics: Mapping[str, float]) -> None: ...


class Invalid(ValueError):
    """Settings or data a trainer cannot use, named by their config key: a config error."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


@dataclass(frozen=True)
class Federation:
    """What a trainer's :meth:`Trainer.validate` sees of the experiment beyond its own
    section and model."""

    parties: int
    """partition.num_parties."""
    vertical: bool
    """Whether the partition splits features (partition.name=vertical)."""


@dataclass(frozen=True)
class Budget:
    """How far a run goes, for a progress bar: ``total`` in ``unit``; each report is one step,
    or, with a ``counter``, the report's value of that metric is the position reached (reports
    without it are not steps)."""

    total: float
    unit: str = "round"
    counter: str | None = None
    shown: tuple[tuple[str, str, str], ...] = (
        ("acc", "test_accuracy", ".4f"),
        ("loss", "train_loss", ".4f"),
    )
    """(label, metric, format) of the values shown beside the bar."""


class StopTraining(Exception):
    """Raised by a reporter to stop a trainer before its last round."""


@dataclass
class TrainResult:
    """What a trainer hands back."""

    model: nn.Module
    """The final (global) model."""
    history: list[dict[str, float]] = field(default_factory=list)
    """One metrics dict per round, with a ``round`` key."""
    tables: dict[str, list[dict]] = field(default_factory=dict)
    """Records that are not per-round numbers (committee membership, participation per
    party), as rows; the orchestrator stores each as ``tables/<name>.parquet``."""

    @property
    def final_metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.history[-1].items() if k != "round"} if self.history else {}


class DataShape(Protocol):
    """What every federation's data tells: the width of a sample and the classes."""

    @property
    def n_features(self) -> int: ...

    @property
    def n_classes(self) -> int: ...


D = TypeVar("D", bound=DataShape)


@dataclass
class RunState:
    """What a trainer carries from one round to the next, on the driver: with the parties'
    own state (kept by the executor), all a checkpoint needs to resume a run exactly. Plain
    data only: numbers, arrays, lists, generators, torch state dicts.

    Each trainer extends it with its own fields."""

    round: int = 0
    """Rounds done (and reported)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """One metrics dict per round, with a ``round`` key."""


S = TypeVar("S", bound=RunState)


@dataclass(frozen=True)
class TeacherRef:
    """Where a trainer's teacher model is, and which config key said so (for errors)."""

    uri: str
    tracking_uri: str | None
    key: str


class Trainer(abc.ABC, Generic[D, S]):
    """A learning algorithm: a fixed round loop over parties run through an executor, with
    four hooks (:meth:`begin`, :meth:`advance`, :meth:`done`, :meth:`end`) that
    :meth:`fit` runs in order, and that a caller may run itself to checkpoint, resume or
    roll a run back between rounds.

    Contract:
        * :meth:`begin` sets the run up (loads the parties into the executor, builds what
          stays the same for the whole run) and returns the state before round 0. It is
          cheap and deterministic: a resumed run calls it again, then swaps its state for the
          checkpoint's. Expensive one-off work belongs in a round, its result in the state.
        * :meth:`advance` runs one round, updates the state in place and returns what to
          report: ``(step, metrics)``.
        * every random choice derives from the seed and the state, so that a round run again
          from a restored state gives the same result, bit for bit.

    A trainer also answers for itself: :meth:`validate` checks its settings before anything
    runs, :meth:`check` the data once it is loaded; it declares the metrics it reports, the
    plots that show them, its budget and the metrics a run's summary line shows.

    Args:
        config: the trainer section.
        model: the model section (what the trainer trains).
    """

    metrics: tuple[str, ...] = ()
    """The names of the metrics the trainer reports every round."""
    vertical = False
    """Whether it trains a vertical federation (partition.name=vertical, VerticalData)."""
    graph = False
    """Whether it trains clients holding subgraphs of a graph (a graph data set and
    partitioner, :class:`trainers.graph.GraphData`)."""
    checkpointable = True
    """Whether the final model rebuilds from the experiment's ModelSpec (a light checkpoint);
    a federation of per-party models (vertical FL) is logged as an MLflow model only."""
    headline: tuple[str, ...] = ("test_accuracy", "test_loss", "train_loss")
    """The final metrics a run's summary line shows."""

    def __init__(self, config: TrainerConfig, model: ModelConfig) -> None:
        self.config = config
        self.model_config = model
        self.teacher: nn.Module | None = None
        """A trained teacher handed over by the caller (see :meth:`teacher_uri`)."""

    reads: ClassVar[frozenset[str]] = frozenset()
    """The keys of the ``trainer`` section this trainer reads, besides ``name``. A value
    other than the default anywhere else in the section is refused before anything runs:
    a setting either takes effect or is an error (``trainer.dropout`` and
    ``trainer.stragglers`` belong to the trainers whose parties are asked to work each
    round and may not answer)."""
    unused: ClassVar[Mapping[str, str]] = {}
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    """Where its parties' tensors and models can live (``runtime.device``): a trainer whose
    work is NumPy, or not yet moved, refuses ``cuda`` rather than run on the CPU anyway."""
    """Why the trainer does not read a key of its section, where a reason says more than
    the names of the trainers that do."""

    @classmethod  # noqa: B027 - an optional hook: most trainers need no check of their own
    def validate(cls, config: TrainerConfig, model: ModelConfig, federation: Federation) -> None:
        """Raises :class:`Invalid` for settings this trainer cannot work with."""

    def check(self, data: D) -> None:
        """Raises :class:`Invalid` for data this trainer cannot use, before any run. By
        default: the model must read the data's features."""
        from trainers.models import check_input

        problem = check_input(self.model_config, data.n_features, getattr(data, "image", None))
        if problem:
            raise Invalid("model.name", problem)

    def plots(self) -> tuple[str, ...]:
        """The figures a run of this trainer logs (names of the orchestrator's plots)."""
        return ("learning_curve",)

    def budget(self) -> Budget:
        """How far a run goes (rounds by default)."""
        return Budget(self.config.rounds)

    def sample_steps(self, n_train: int) -> float:
        """About how many times a run passes a training sample through its model, for
        ``n_train`` training rows: what ``runtime.executor: auto`` weighs against Ray's start.
        By default, each step of the budget is a pass over the share of the data its parties
        hold (``fraction``; all of it with ``parties_per_round``, whose share is unknown here)
        for ``local_epochs`` epochs."""
        c = self.config
        share = c.fraction if c.parties_per_round is None else 1.0
        return self.budget().total * c.local_epochs * share * n_train

    def teacher_uri(self) -> TeacherRef | None:
        """A teacher to fetch before :meth:`fit`, which the caller hands over as
        :attr:`teacher`; None: no teacher needed."""
        return None

    @abc.abstractmethod
    def begin(self, data: D, executor: Executor, seed: int) -> S:
        """Sets the run up and returns the state before its first round.

        Args:
            data: the parties' data and the test split.
            executor: runs per-party work; the trainer loads the parties into it.
            seed: the run's seed; every random choice derives from it.
        """

    @abc.abstractmethod
    def advance(self, state: S, executor: Executor) -> tuple[int, dict[str, float]] | None:
        """Runs the next round; returns its step and metrics (the state is updated), or
        None when the round ended the budget with nothing to report."""

    @abc.abstractmethod
    def done(self, state: S) -> bool:
        """Whether the run has used its budget."""

    @abc.abstractmethod
    def end(self, state: S, executor: Executor, reporter: Reporter) -> TrainResult:
        """The final model and the history (a closing summary may be reported here)."""

    def fit(self, data: D, executor: Executor, reporter: Reporter, seed: int) -> TrainResult:
        """Trains from round 0 to the end and returns the final model and the history."""
        state = self.begin(data, executor, seed)
        while not self.done(state):
            out = self.advance(state, executor)
            if out is not None:
                self.record(state, *out, reporter)
        return self.end(state, executor, reporter)

    @staticmethod
    def record(state: RunState, step: int, metrics: dict[str, float], reporter: Reporter) -> None:
        """Adds a round to the history and reports it."""
        state.history.append({"round": float(step), **metrics})
        state.round += 1
        reporter.report(step, metrics)


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one purpose (``keys``: stream id, round, party...) of a run's seed.

    Independent of call order, so a party's randomness in a round is the same wherever and
    whenever it runs.
    """
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


TRAINERS: Registry[type[Trainer[Any, Any]]] = Registry("trainer")
"""Every trainer by name; each algorithm's module registers its own."""
