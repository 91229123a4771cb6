"""What trainers receive and return, and the one contract every trainer keeps.

Trainers never import Ray, MLflow, Optuna or OmegaConf: they get their data, a typed config,
a seed, an executor for per-party work and a reporter for metrics, and return a result.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np
from torch import nn

from clusters import Executor
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
    "Reporter",
    "StopTraining",
    "TeacherRef",
    "TrainResult",
    "Trainer",
    "derive_seed",
]

BYTES_PER_VALUE = 4
"""Bytes one float32 value takes on the wire: what communication is counted in."""


@dataclass(frozen=True)
class PartyData:
    """One party's local samples: features (float32) and integer labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class FederatedData:
    """The partitioned training data and the held-out test split."""

    parties: dict[int, PartyData]
    x_test: np.ndarray
    y_test: np.ndarray
    n_features: int
    n_classes: int

    def pooled(self) -> PartyData:
        """All parties' samples in one, in party-id order (the centralized baseline's data)."""
        ids = sorted(self.parties)
        return PartyData(
            np.concatenate([self.parties[i].x for i in ids]),
            np.concatenate([self.parties[i].y for i in ids]),
        )


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


@dataclass(frozen=True)
class TeacherRef:
    """Where a trainer's teacher model is, and which config key said so (for errors)."""

    uri: str
    tracking_uri: str | None
    key: str


class Trainer(abc.ABC, Generic[D]):
    """A learning algorithm: a round loop over parties run through an executor.

    A trainer answers for itself: :meth:`validate` checks its settings before anything runs,
    :meth:`check` the data once it is loaded; it declares the metrics it reports, the plots
    that show them, its budget and the metrics a run's summary line shows.

    Args:
        config: the trainer section.
        model: the model section (what the trainer trains).
    """

    metrics: tuple[str, ...] = ()
    """The names of the metrics the trainer reports every round."""
    vertical = False
    """Whether it trains a vertical federation (partition.name=vertical, VerticalData)."""
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

    @classmethod  # noqa: B027 - an optional hook: most trainers need no check of their own
    def validate(cls, config: TrainerConfig, model: ModelConfig, federation: Federation) -> None:
        """Raises :class:`Invalid` for settings this trainer cannot work with."""

    def check(self, data: D) -> None:
        """Raises :class:`Invalid` for data this trainer cannot use, before any run. By
        default: the model must read the data's features."""
        from trainers.models import check_input

        problem = check_input(self.model_config, data.n_features)
        if problem:
            raise Invalid("model.name", problem)

    def plots(self) -> tuple[str, ...]:
        """The figures a run of this trainer logs (names of the orchestrator's plots)."""
        return ("learning_curve",)

    def budget(self) -> Budget:
        """How far a run goes (rounds by default)."""
        return Budget(self.config.rounds)

    def teacher_uri(self) -> TeacherRef | None:
        """A teacher to fetch before :meth:`fit`, which the caller hands over as
        :attr:`teacher`; None: no teacher needed."""
        return None

    @abc.abstractmethod
    def fit(self, data: D, executor: Executor, reporter: Reporter, seed: int) -> TrainResult:
        """Trains and returns the final model and the per-round history.

        Args:
            data: the parties' data and the test split.
            executor: runs per-party work; the trainer loads the parties into it.
            reporter: receives each round's metrics.
            seed: the run's seed; every random choice derives from it.
        """


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one purpose (``keys``: stream id, round, party...) of a run's seed.

    Independent of call order, so a party's randomness in a round is the same wherever and
    whenever it runs.
    """
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


TRAINERS: Registry[type[Trainer[Any]]] = Registry("trainer")
"""Every trainer by name; each algorithm's module registers its own."""
