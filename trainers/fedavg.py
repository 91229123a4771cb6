"""FedAvg, FedProx and the centralized baseline.

FedAvg (McMahan et al. 2017), each round:

1. sample parties (a fraction or a count of all parties);
2. every sampled party starts from the global weights w and trains locally -> w_k;
3. w <- sum_k n_k w_k / sum_k n_k (sample-weighted average of the uploads).

FedProx (Li et al. 2020) is FedAvg whose local objective adds (mu/2)||w - w_global||^2.
The centralized baseline is FedAvg with a single party holding all the pooled training data:
one round is then ``local_epochs`` passes of minibatch training over everything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clusters import Executor
from trainers.base import FederatedData, PartyData, Reporter, Trainer, TrainResult, derive_seed
from trainers.local import LocalTraining, PartyUpdate, RoundPayload
from trainers.models import ModelConfig, ModelSpec, build_model, get_flat, set_flat
from trainers.registry import Registry

__all__ = [
    "TRAINERS",
    "Centralized",
    "FedAvg",
    "FedProx",
    "FedProxConfig",
    "TrainerConfig",
    "evaluate",
]

_SAMPLE_STREAM = 2
_INIT_STREAM = 3
_BYTES_PER_PARAM = 4  # float32 on the wire


@dataclass
class FedProxConfig:
    """FedProx's addition to FedAvg."""

    mu: float = 0.01
    """Proximal coefficient: weight of (mu/2)||w - w_global||^2 in each party's local loss."""


@dataclass
class TrainerConfig:
    """How training runs: rounds, party sampling and each party's local optimisation."""

    name: str = "fedavg"
    """One of the registered trainers: centralized, fedavg, fedprox."""
    rounds: int = 20
    """Communication rounds (for centralized: rounds of ``local_epochs`` epochs each)."""
    fraction: float = 1.0
    """Fraction of parties sampled each round, in (0, 1]."""
    parties_per_round: Optional[int] = None  # noqa: UP045 - OmegaConf needs typing.Optional
    """Parties sampled each round; overrides ``fraction`` when set."""
    local_epochs: int = 1
    """Passes over its own data each sampled party makes per round."""
    batch_size: int = 32
    """Local minibatch size."""
    optimizer: str = "sgd"
    """Local optimizer: sgd or adam."""
    lr: float = 0.05
    """Local learning rate."""
    momentum: float = 0.0
    """SGD momentum (reset every round: it is local optimizer state)."""
    weight_decay: float = 0.0
    """L2 weight decay of the local optimizer."""
    fedprox: FedProxConfig = field(default_factory=FedProxConfig)
    """FedProx settings (read by the fedprox trainer only)."""


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on (x, y)."""
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        target = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
        loss = F.cross_entropy(logits, target).item()
        acc = (logits.argmax(1) == target).float().mean().item()
    return acc, loss


class FedAvg(Trainer):
    """Sample-weighted federated averaging.

    Args:
        config: rounds, sampling and local training settings.
        model: the model to train.
    """

    communicates = True
    """Whether parties download and upload the model (False: bytes communicated stay 0)."""
    metrics = (
        "train_loss",
        "test_accuracy",
        "test_loss",
        "parties",
        "bytes_communicated",
        "bytes_cumulative",
        "round_time_s",
    )
    """What :meth:`fit` reports every round (searches may optimise any of them)."""

    def __init__(self, config: TrainerConfig, model: ModelConfig) -> None:
        self.config = config
        self.model_config = model

    def prox_mu(self) -> float:
        """Weight of the proximal term in the local loss (0: plain FedAvg)."""
        return 0.0

    def parties(self, data: FederatedData) -> dict[int, PartyData]:
        """The parties that take part in training."""
        return data.parties

    def sample(self, party_ids: list[int], round_: int, seed: int) -> list[int]:
        """The parties that train in ``round_``, reproducible from the seed."""
        cfg = self.config
        k = cfg.parties_per_round or max(1, round(cfg.fraction * len(party_ids)))
        k = min(k, len(party_ids))
        if k == len(party_ids):
            return list(party_ids)
        rng = np.random.default_rng(derive_seed(seed, _SAMPLE_STREAM, round_))
        return sorted(rng.choice(party_ids, size=k, replace=False).tolist())

    def aggregate(self, weights: np.ndarray, update: PartyUpdate) -> np.ndarray:
        """The new global weights from the round's combined uploads."""
        return update.average()

    def fit(
        self, data: FederatedData, executor: Executor, reporter: Reporter, seed: int
    ) -> TrainResult:
        cfg = self.config
        spec = ModelSpec.from_config(self.model_config, data.n_features, data.n_classes)
        model = build_model(spec, seed=derive_seed(seed, _INIT_STREAM))
        weights = get_flat(model)
        parties = self.parties(data)
        executor.load(parties, sizes={pid: len(p) for pid, p in parties.items()})
        task = LocalTraining(
            model=spec,
            seed=seed,
            epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            optimizer=cfg.optimizer,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            prox_mu=self.prox_mu(),
        )
        ids = sorted(parties)
        model_bytes = weights.size * _BYTES_PER_PARAM
        history: list[dict[str, float]] = []
        total_bytes = 0
        for r in range(cfg.rounds):
            start = time.perf_counter()
            chosen = self.sample(ids, r, seed)
            update = executor.map(task, chosen, RoundPayload(r, weights), reduce=PartyUpdate.merge)
            weights = self.aggregate(weights, update)
            set_flat(model, weights)
            acc, loss = evaluate(model, data.x_test, data.y_test)
            sent = 2 * len(chosen) * model_bytes if self.communicates else 0
            total_bytes += sent
            metrics = {
                "train_loss": update.loss_sum / update.n_samples,
                "test_accuracy": acc,
                "test_loss": loss,
                "parties": float(len(chosen)),
                "bytes_communicated": float(sent),
                "bytes_cumulative": float(total_bytes),
                "round_time_s": time.perf_counter() - start,
            }
            history.append({"round": float(r), **metrics})
            reporter.report(r, metrics)
        return TrainResult(model, history)


class FedProx(FedAvg):
    """FedAvg with FedProx's proximal term in every party's local loss."""

    def prox_mu(self) -> float:
        return self.config.fedprox.mu


class Centralized(FedAvg):
    """The non-federated baseline: one party holding all the pooled training data."""

    communicates = False

    def parties(self, data: FederatedData) -> dict[int, PartyData]:
        return {0: data.pooled()}


TRAINERS: Registry[type[Trainer]] = Registry("trainer")
TRAINERS.register("fedavg")(FedAvg)
TRAINERS.register("fedprox")(FedProx)
TRAINERS.register("centralized")(Centralized)
