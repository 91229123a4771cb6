"""FedAvg, FedProx and the centralized baseline, with Byzantine parties and robust aggregation.

FedAvg (McMahan et al. 2017), each round:

1. sample parties (a fraction or a count of all parties);
2. every sampled party starts from the global weights w and trains locally -> w_k;
3. Byzantine parties among them replace w_k with their attack's output (``trainer.attack``);
4. w <- aggregate(w_1..w_k): by default the sample-weighted mean sum_k n_k w_k / sum_k n_k,
   or a robust aggregator (``trainer.aggregator``: median, trimmed mean, Krum, ...).

FedProx (Li et al. 2020) is FedAvg whose local objective adds (mu/2)||w - w_global||^2.
The centralized baseline is FedAvg with a single party holding all the pooled training data:
one round is then ``local_epochs`` passes of minibatch training over everything.

With the plain mean and no model attack, workers pre-combine their parties' uploads (one
reply per worker per round); otherwise every upload comes back to be attacked and aggregated.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clusters import Executor
from clusters.base import PartyFn
from trainers.aggregators import Aggregator, AggregatorError, Mean, build_aggregator
from trainers.attacks import Adversary, LabelFlipping, build_adversary, byzantine_parties
from trainers.availability import AVAILABILITY_METRICS, Availability
from trainers.base import (
    BYTES_PER_VALUE,
    LOCAL_TRAINING,
    TRAINERS,
    FederatedData,
    Federation,
    Invalid,
    PartyData,
    Reporter,
    RunState,
    Trainer,
    TrainResult,
    derive_seed,
    party_sizes,
)
from trainers.config import FedProxConfig, TrainerConfig
from trainers.ledger import ROBUSTNESS_METRICS, Ledger
from trainers.local import LocalTraining, PartyUpdate, RoundPayload
from trainers.models import ModelConfig, ModelSpec, build_model, get_flat, layer_slices, set_flat

__all__ = [
    "TRAINERS",
    "Centralized",
    "FedAvg",
    "FedProx",
    "FedAvgState",
    "FedProxConfig",
    "TrainerConfig",
    "evaluate",
    "local_task",
    "stack_uploads",
]

_SAMPLE_STREAM = 2
_INIT_STREAM = 3


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on (x, y)."""
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        target = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
        loss = F.cross_entropy(logits, target).item()
        acc = (logits.argmax(1) == target).float().mean().item()
    return acc, loss


def local_task(
    cfg: TrainerConfig,
    spec: ModelSpec,
    seed: int,
    byzantine: frozenset[int] = frozenset(),
    prox_mu: float = 0.0,
):
    """The party function every active party runs: local training, on flipped labels for the
    Byzantine parties under the label_flip attack."""
    task = LocalTraining(
        model=spec,
        seed=seed,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        optimizer=cfg.optimizer,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        prox_mu=prox_mu,
    )
    if cfg.attack.name == "label_flip" and byzantine:
        return LabelFlipping(task, byzantine, spec.n_classes)
    return task


def _enough(aggregator: Aggregator, n: int) -> bool:
    """Whether ``n`` uploads can be aggregated (fewer, after dropouts: the model stays)."""
    try:
        aggregator.check(n)
    except AggregatorError:
        return False
    return True


def stack_uploads(updates: list[PartyUpdate]) -> tuple[np.ndarray, np.ndarray]:
    """The uploaded weights as rows of a float64 matrix, and the sample counts."""
    counts = np.array([u.n_samples for u in updates], dtype=np.float64)
    uploads = np.stack([u.weighted_sum for u in updates]) / counts[:, None]
    return uploads, counts


class FedAvg(Trainer[FederatedData, "FedAvgState"]):
    """Federated averaging, with optional Byzantine parties and a robust aggregator.

    Args:
        config: rounds, sampling, local training, aggregator and attack settings.
        model: the model to train.
    """

    communicates = True
    """Whether parties download and upload the model (False: bytes communicated stay 0)."""
    tracks_parties = True
    """Whether the Byzantine and participation metrics apply (not to a single pooled party)."""
    reads = LOCAL_TRAINING | {
        "fraction",
        "parties_per_round",
        "aggregator",
        "attack",
        "dropout",
        "stragglers",
    }
    unused = {"fedprox": "set trainer.name=fedprox for the proximal term"}
    devices = ("cpu", "cuda")
    metrics: tuple[str, ...] = (
        "train_loss",
        "test_accuracy",
        "test_loss",
        "parties",
        "bytes_communicated",
        "bytes_cumulative",
        "round_time_s",
        "time_train_s",
        "time_aggregate_s",
        *ROBUSTNESS_METRICS,
        *AVAILABILITY_METRICS,
    )
    """What :meth:`fit` reports every round (searches may optimise any of them)."""

    @classmethod
    def party_count(cls, federation: Federation) -> int:
        """How many parties train (the centralized baseline pools them into one)."""
        return federation.parties

    @classmethod
    def validate(cls, config: TrainerConfig, model: ModelConfig, federation: Federation) -> None:
        parties = cls.party_count(federation)
        per_round = min(
            config.parties_per_round or max(1, round(config.fraction * parties)), parties
        )
        try:
            build_aggregator(config.aggregator, config.attack.fraction).check(per_round)
        except AggregatorError as exc:
            raise Invalid("trainer.aggregator", f"{exc} (uploads per round: {per_round})") from None

    def prox_mu(self) -> float:
        """Weight of the proximal term in the local loss (0: plain FedAvg)."""
        return 0.0

    def parties(self, data: FederatedData) -> Mapping[int, PartyData]:
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

    def begin(self, data: FederatedData, executor: Executor, seed: int) -> FedAvgState:
        cfg = self.config
        spec = ModelSpec.from_config(self.model_config, data.n_features, data.n_classes)
        model = build_model(spec, seed=derive_seed(seed, _INIT_STREAM))
        parties = self.parties(data)
        sizes = party_sizes(parties)
        executor.load(parties, sizes=sizes)
        ids = sorted(parties)
        ledger = Ledger(ids, byzantine_parties(ids, cfg.attack, seed))
        adversary = build_adversary(cfg.attack, seed)
        aggregator = build_aggregator(cfg.aggregator, cfg.attack.fraction, layer_slices(model))
        weights = get_flat(model)
        self._run = _FedAvgRun(
            data=data,
            seed=seed,
            model=model,
            ids=ids,
            sizes=sizes,
            byzantine=ledger.byzantine,
            adversary=adversary,
            aggregator=aggregator,
            task=local_task(cfg, spec, seed, ledger.byzantine, self.prox_mu()),
            # The plain mean of honest-or-data-poisoned uploads can be summed on the workers.
            on_workers=isinstance(aggregator, Mean)
            and (adversary is None or adversary.attack.data_attack),
            model_bytes=weights.size * BYTES_PER_VALUE,
            availability=Availability(cfg, sizes, seed),
        )
        return FedAvgState(weights=weights, ledger=ledger)

    def done(self, state: FedAvgState) -> bool:
        return state.round >= self.config.rounds

    def advance(self, state: FedAvgState, executor: Executor) -> tuple[int, dict[str, float]]:
        run, r, ledger = self._run, state.round, state.ledger
        start = time.perf_counter()
        chosen = self.sample(run.ids, r, run.seed)
        answers = run.availability.answers(r, chosen)
        asked, answering = chosen, answers.answered
        payload = RoundPayload(r, state.weights)
        weights, influence = state.weights, np.zeros(0)
        loss_sum, n_samples, aggregate_s = 0.0, 0, 0.0
        if run.on_workers:
            update = (
                executor.map(run.task, answering, payload, reduce=PartyUpdate.merge)
                if answering
                else None
            )
            trained = time.perf_counter()
            garbage = set(update.discarded) if update is not None else set()
            chosen = [p for p in answering if p not in garbage]
            if update is not None and update.n_samples > 0:
                weights = update.average()
                aggregate_s = time.perf_counter() - trained
                counts = np.array([run.sizes[p] for p in chosen], dtype=np.float64)
                influence = counts / counts.sum()
                loss_sum, n_samples = update.loss_sum, update.n_samples
        else:
            updates = executor.map(run.task, answering, payload) if answering else []
            trained = time.perf_counter()
            kept = [(p, u) for p, u in zip(answering, updates) if not u.discarded]
            chosen = [p for p, _ in kept]
            if kept:
                uploads, counts = stack_uploads([u for _, u in kept])
                if run.adversary is not None:
                    uploads = run.adversary(uploads, ledger.mask(chosen), state.weights, r)
                good = np.isfinite(uploads).all(axis=1)  # an attack may send garbage too
                chosen = [p for p, g in zip(chosen, good) if g]
                uploads, counts = uploads[good], counts[good]
                loss_sum = sum(u.loss_sum for (_, u), g in zip(kept, good) if g)
                n_samples = int(counts.sum())
            if chosen and _enough(run.aggregator, len(chosen)):
                begin = time.perf_counter()
                result = run.aggregator(uploads, counts, state.weights)
                aggregate_s = time.perf_counter() - begin
                weights = result.vector.astype(np.float32)
                influence = result.influence
        if not len(influence):  # nothing (or too little) to aggregate: the model stays
            influence = np.zeros(len(chosen))
        state.weights = weights
        set_flat(run.model, weights)
        acc, loss = evaluate(run.model, run.data.x_test, run.data.y_test)
        # every party asked downloads the model; the ones that answer upload theirs
        uploaded = len(asked) - answers.dropped
        sent = (len(asked) + uploaded) * run.model_bytes if self.communicates else 0
        state.total_bytes += sent
        metrics = {
            "train_loss": loss_sum / n_samples if n_samples else float("nan"),
            "test_accuracy": acc,
            "test_loss": loss,
            "parties": float(len(chosen)),
            "bytes_communicated": float(sent),
            "bytes_cumulative": float(state.total_bytes),
            "round_time_s": time.perf_counter() - start,
            "time_train_s": trained - start,
            "time_aggregate_s": aggregate_s,
        }
        if self.tracks_parties:
            metrics.update(ledger.record(chosen, influence))
            metrics.update(
                dropped=float(answers.dropped),
                straggled=float(answers.straggled),
                discarded=float(len(answering) - len(chosen)),
            )
        return r, metrics

    def end(self, state: FedAvgState, executor: Executor, reporter: Reporter) -> TrainResult:
        set_flat(self._run.model, state.weights)
        tables = {"participation": state.ledger.table()} if self.tracks_parties else {}
        return TrainResult(self._run.model, state.history, tables)


@dataclass
class FedAvgState(RunState):
    """FedAvg's state between rounds."""

    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    """The global model, flat."""
    ledger: Ledger = field(default_factory=lambda: Ledger([], frozenset()))
    """Who is Byzantine, and how often each party was aggregated."""
    total_bytes: int = 0


@dataclass
class _FedAvgRun:
    """What stays the same for a whole run (rebuilt by :meth:`FedAvg.begin`)."""

    data: FederatedData
    seed: int
    model: nn.Module
    ids: list[int]
    sizes: dict[int, int]
    byzantine: frozenset[int]
    adversary: Adversary | None
    aggregator: Aggregator
    task: PartyFn[PartyUpdate]
    on_workers: bool
    model_bytes: int
    availability: Availability


class FedProx(FedAvg):
    """FedAvg with FedProx's proximal term in every party's local loss."""

    reads = FedAvg.reads | {"fedprox"}
    unused = {k: v for k, v in FedAvg.unused.items() if k != "fedprox"}

    def prox_mu(self) -> float:
        return self.config.fedprox.mu


class Centralized(FedAvg):
    """The non-federated baseline: one party holding all the pooled training data."""

    communicates = False
    tracks_parties = False
    reads = LOCAL_TRAINING
    unused = {
        key: "the centralized baseline is one party holding all the data"
        for key in FedAvg.reads - LOCAL_TRAINING
    }
    metrics = tuple(m for m in FedAvg.metrics if m not in ROBUSTNESS_METRICS + AVAILABILITY_METRICS)

    @classmethod
    def party_count(cls, federation: Federation) -> int:
        return 1

    def parties(self, data: FederatedData) -> Mapping[int, PartyData]:
        return {0: data.pooled()}


TRAINERS.register("fedavg")(FedAvg)
TRAINERS.register("fedprox")(FedProx)
TRAINERS.register("centralized")(Centralized)
