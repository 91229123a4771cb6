"""What trainers receive and return, and the one contract every trainer keeps.

Trainers never import Ray, MLflow, Optuna or OmegaConf: they get their data, a typed config,
a seed, an executor for per-party work and a reporter for metrics, and return a result.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from torch import nn

from clusters import Executor
from trainers.registry import Registry

__all__ = [
    "TRAINERS",
    "DataMismatch",
    "FederatedData",
    "PartyData",
    "Reporter",
    "StopTraining",
    "TrainResult",
    "Trainer",
    "derive_seed",
]


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


class DataMismatch(ValueError):
    """Data a trainer cannot use (a binary-only defense on ten classes): a config error."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


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


class Trainer(abc.ABC):
    """A learning algorithm: a round loop over parties run through an executor."""

    metrics: tuple[str, ...] = ()
    """The names of the metrics the trainer reports every round."""
    vertical = False
    """Whether it trains a vertical federation (partition.name=vertical, VerticalData)."""
    checkpointable = True
    """Whether the final model rebuilds from the experiment's ModelSpec (a light checkpoint);
    a federation of per-party models (vertical FL) is logged as an MLflow model only."""

    def check(self, data: FederatedData) -> None:  # noqa: B027 - optional hook
        """Raises :class:`DataMismatch` for data this trainer cannot use, before any run."""

    @abc.abstractmethod
    def fit(
        self, data: FederatedData, executor: Executor, reporter: Reporter, seed: int
    ) -> TrainResult:
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


TRAINERS: Registry[type[Trainer]] = Registry("trainer")
"""Every trainer by name; each algorithm's module registers its own."""
