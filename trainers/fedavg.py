"""FedAvg, FedProx and the centralized baseline, with Byzantine parties and robust aggregation.

FedAvg (McMahan et al. 2017), each round:

1. sample parties (a fraction or a count of all parties);
2. every sampled party starts from the global weights w and trains locally -> w_k;
3. Byzantine parties among them replace w_k with their attack's output (``trainer.attack``);
4. a <- aggregate(w_1..w_k): by default the sample-weighted mean sum_k n_k w_k / sum_k n_k,
   or a robust aggregator (``trainer.aggregator``: median, trimmed mean, Krum, ...);
5. w <- a, or a server optimizer's step along a - w (``trainer.server``: FedAvgM, FedAdagrad,
   FedAdam, FedYogi; see :mod:`trainers.server`).

With ``trainer.privacy`` (DP-FedAvg, :mod:`trainers.privacy`) the parties are Poisson-sampled
and step 4 is the clipped, noised mean of the updates; the server optimizer steps along it.

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
from trainers.aggregators import Aggregate, Aggregator, AggregatorError, Mean, build_aggregator
from trainers.attacks import (
    DISTILLATION_ONLY,
    Adversary,
    LabelFlipping,
    build_adversary,
    byzantine_parties,
)
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
from trainers.config import FedProxConfig, PrivacyMode, TrainerConfig
from trainers.ledger import ROBUSTNESS_METRICS, Ledger
from trainers.local import LocalTraining, PartyUpdate, RoundPayload
from trainers.models import ModelConfig, ModelSpec, build_model, get_flat, layer_slices, set_flat
from trainers.privacy import PRIVACY_METRICS, Privacy, PrivacyState
from trainers.server import ServerState, ServerStep, build_server_step

__all__ = [
    "TRAINERS",
    "Centralized",
    "FedAvg",
    "FedNova",
    "FedProx",
    "Scaffold",
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
    epochs_range: tuple[int, int] | None = None,
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
        epochs_range=epochs_range,
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
        "server",
        "privacy",
    }
    unused = {
        "fedprox": "set trainer.name=fedprox for the proximal term",
        "fednova": "set trainer.name=fednova for parties of different local work",
    }
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
        *PRIVACY_METRICS,
    )
    """What :meth:`fit` reports every round (searches may optimise any of them; the
    privacy metrics only with ``trainer.privacy``)."""

    @classmethod
    def party_count(cls, federation: Federation) -> int:
        """How many parties train (the centralized baseline pools them into one)."""
        return federation.parties

    @staticmethod
    def per_round(config: TrainerConfig, parties: int) -> int:
        """How many of ``parties`` a round samples (DP: how many it expects)."""
        return min(config.parties_per_round or max(1, round(config.fraction * parties)), parties)

    @classmethod
    def validate(cls, config: TrainerConfig, model: ModelConfig, federation: Federation) -> None:
        parties = cls.party_count(federation)
        if config.attack.name in DISTILLATION_ONLY:
            raise Invalid(
                "trainer.attack.name",
                f"{config.attack.name} is planted through dataset distillation: "
                "trainer.name=fed_condense",
            )
        per_round = cls.per_round(config, parties)
        try:
            build_aggregator(config.aggregator, config.attack.fraction).check(per_round)
        except AggregatorError as exc:
            raise Invalid("trainer.aggregator", f"{exc} (uploads per round: {per_round})") from None
        if config.privacy.mode != PrivacyMode.none:
            if config.aggregator.name not in ("mean", "uniform_mean"):
                raise Invalid(
                    "trainer.aggregator.name",
                    f"{config.aggregator.name} has no known sensitivity: with trainer.privacy "
                    "the clipped, noised mean takes the aggregator's place (leave it mean)",
                )
            Privacy(config.privacy, parties, per_round, 0)  # refuses what cannot be private

    def prox_mu(self) -> float:
        """Weight of the proximal term in the local loss (0: plain FedAvg)."""
        return 0.0

    def epochs_range(self) -> tuple[int, int] | None:
        """Each party's local epochs per round drawn from this range (None: local_epochs)."""
        return None

    own_average = False
    """Whether :meth:`combine` averages the uploads its own way, from each party's update
    (FedNova, SCAFFOLD): workers do not pre-sum them (and such a trainer reads neither the
    aggregator nor differential privacy, whose sums it replaces)."""

    copies = 1
    """Model-sized vectors each way per party and round (SCAFFOLD sends its variates too)."""

    def payload(self, state: FedAvgState) -> RoundPayload:
        """What every sampled party gets this round."""
        return RoundPayload(state.round, state.weights)

    def combine(
        self,
        uploads: np.ndarray,
        counts: np.ndarray,
        updates: list[PartyUpdate],
        state: FedAvgState,
    ) -> Aggregate:
        """The round's aggregate of the uploaded weights (one row each, ``updates`` their
        parties' updates), before the server's step: the configured aggregator's."""
        return self._run.aggregator(uploads, counts, state.weights)

    def parties(self, data: FederatedData) -> Mapping[int, PartyData]:
        """The parties that take part in training."""
        return data.parties

    def sample(self, party_ids: list[int], round_: int, seed: int) -> list[int]:
        """The parties that train in ``round_``, reproducible from the seed."""
        k = self.per_round(self.config, len(party_ids))
        if k == len(party_ids):
            return list(party_ids)
        rng = np.random.default_rng(derive_seed(seed, _SAMPLE_STREAM, round_))
        return sorted(rng.choice(party_ids, size=k, replace=False).tolist())

    def begin(self, data: FederatedData, executor: Executor, seed: int) -> FedAvgState:
        cfg = self.config
        spec = ModelSpec.from_config(self.model_config, data.n_features, data.n_classes, data.image)
        model = build_model(spec, seed=derive_seed(seed, _INIT_STREAM))
        parties = self.parties(data)
        sizes = party_sizes(parties)
        executor.load(parties, sizes=sizes)
        ids = sorted(parties)
        ledger = Ledger(ids, byzantine_parties(ids, cfg.attack, seed))
        adversary = build_adversary(cfg.attack, seed)
        aggregator = build_aggregator(cfg.aggregator, cfg.attack.fraction, layer_slices(model))
        weights = get_flat(model)
        privacy = None
        if cfg.privacy.mode != PrivacyMode.none:
            privacy = Privacy(cfg.privacy, len(ids), self.per_round(cfg, len(ids)), seed)
        self._run = _FedAvgRun(
            data=data,
            seed=seed,
            model=model,
            ids=ids,
            sizes=sizes,
            byzantine=ledger.byzantine,
            adversary=adversary,
            aggregator=aggregator,
            task=local_task(cfg, spec, seed, ledger.byzantine, self.prox_mu(), self.epochs_range()),
            # The plain mean of honest-or-data-poisoned uploads can be summed on the workers.
            on_workers=isinstance(aggregator, Mean)
            and privacy is None
            and not self.own_average
            and (adversary is None or adversary.attack.data_attack),
            model_bytes=weights.size * BYTES_PER_VALUE,
            availability=Availability(cfg, sizes, seed),
            server=build_server_step(cfg.server),
            privacy=privacy,
        )
        return FedAvgState(
            weights=weights,
            ledger=ledger,
            privacy=privacy.begin() if privacy is not None else PrivacyState(),
        )

    def done(self, state: FedAvgState) -> bool:
        return state.round >= self.config.rounds

    def advance(self, state: FedAvgState, executor: Executor) -> tuple[int, dict[str, float]]:
        run, r, ledger = self._run, state.round, state.ledger
        start = time.perf_counter()
        if run.privacy is not None:
            chosen = run.privacy.sample(run.ids, r)
        else:
            chosen = self.sample(run.ids, r, run.seed)
        answers = run.availability.answers(r, chosen)
        asked, answering = chosen, answers.answered
        payload = self.payload(state)
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
                weights = run.server(state.weights, update.average(), state.server)
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
                answered = [u for (_, u), g in zip(kept, good) if g]
                uploads, counts = uploads[good], counts[good]
                loss_sum = sum(u.loss_sum for (_, u), g in zip(kept, good) if g)
                n_samples = int(counts.sum())
            if run.privacy is not None:  # noise is released even when no one answered
                if not kept:
                    uploads = np.zeros((0, state.weights.size))
                begin = time.perf_counter()
                private = run.privacy.aggregate(uploads, chosen, state.weights, state.privacy, r)
                weights = run.server(state.weights, private, state.server)
                aggregate_s = time.perf_counter() - begin
                influence = np.full(len(chosen), 1.0 / run.privacy.expected)
            elif chosen and _enough(run.aggregator, len(chosen)):
                begin = time.perf_counter()
                result = self.combine(uploads, counts, answered, state)
                aggregate_s = time.perf_counter() - begin
                weights = run.server(state.weights, result.vector, state.server)
                influence = result.influence
        if not len(influence):  # nothing (or too little) to aggregate: the model stays
            influence = np.zeros(len(chosen))
        state.weights = weights
        set_flat(run.model, weights)
        acc, loss = evaluate(run.model, run.data.x_test, run.data.y_test)
        # every party asked downloads the model; the ones that answer upload theirs
        uploaded = len(asked) - answers.dropped
        sent = (len(asked) + uploaded) * run.model_bytes * self.copies if self.communicates else 0
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
        if run.privacy is not None:
            metrics.update(run.privacy.metrics(state.privacy))
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
    server: ServerState = field(default_factory=ServerState)
    """The server optimizer's moments."""
    privacy: PrivacyState = field(default_factory=PrivacyState)
    """Differential privacy's clipping norm and the releases counted so far."""
    control: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """SCAFFOLD's server control variate c (empty for the other trainers)."""


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
    server: ServerStep
    privacy: Privacy | None


class FedProx(FedAvg):
    """FedAvg with FedProx's proximal term in every party's local loss."""

    reads = FedAvg.reads | {"fedprox"}
    unused = {k: v for k, v in FedAvg.unused.items() if k != "fedprox"}

    def prox_mu(self) -> float:
        return self.config.fedprox.mu


class FedNova(FedAvg):
    """FedNova (Wang et al. 2020): parties that took different numbers of local steps are
    averaged by their normalised updates, so that the ones that ran longer do not pull the
    global model toward their own optimum.

    Party i ran tau_i SGD steps (momentum rho); a_i = tau_i for plain SGD, else
    sum_{k < tau_i} (1 - rho^(k+1)) / (1 - rho). With p_i = n_i / sum n_j, d_i = (x - y_i) / a_i
    and tau_eff = sum_i p_i a_i, the aggregate is x - tau_eff sum_i p_i d_i; the server's step
    (``trainer.server``, lr 1 by default) follows it. With equal a_i it is FedAvg's mean.
    """

    reads = (FedAvg.reads - {"aggregator", "privacy", "optimizer"}) | {"fednova"}
    unused = {
        **{k: v for k, v in FedAvg.unused.items() if k != "fednova"},
        "aggregator": "its normalised average takes the mean's place",
        "privacy": "DP clips raw updates, not FedNova's normalised ones",
        "optimizer": "it normalises plain SGD steps",
    }
    own_average = True

    def epochs_range(self) -> tuple[int, int] | None:
        epochs = self.config.fednova.epochs
        return (int(epochs[0]), int(epochs[1])) if epochs else None

    def combine(
        self,
        uploads: np.ndarray,
        counts: np.ndarray,
        updates: list[PartyUpdate],
        state: FedAvgState,
    ) -> Aggregate:
        x = state.weights
        rho = float(self.config.momentum)
        taus = np.array([u.steps for u in updates], dtype=np.float64)
        a = taus if rho == 0 else np.array([_momentum_norm(int(t), rho) for t in taus])
        p = counts / counts.sum()
        x64 = x.astype(np.float64)
        d = (x64[None, :] - uploads) / a[:, None]
        tau_eff = float(p @ a)
        return Aggregate(x64 - tau_eff * (p @ d), p)


def _momentum_norm(tau: int, rho: float) -> float:
    """FedNova's a_i for tau SGD steps with momentum rho: sum_{k<tau} (1 - rho^(k+1)) / (1 - rho)."""
    k = np.arange(tau, dtype=np.float64)
    return float(((1.0 - rho ** (k + 1)) / (1.0 - rho)).sum())


class Scaffold(FedAvg):
    """SCAFFOLD (Karimireddy et al. 2020, Algorithm 1, option II): every local step is
    corrected by c - c_i, the server's control variate minus the party's, against the drift
    of non-IID parties.

    A party's c_i is party state on the worker that hosts it (zero at first; in every
    checkpoint); after its K steps of lr eta_l it keeps c_i+ = c_i - c + (x - y_i) / (K eta_l)
    and uploads y_i and c_i+ - c_i. The server averages the y_i uniformly (the server's step,
    ``trainer.server.lr`` = eta_g, follows) and moves c by the sum of the changes over all N
    parties. Each way a party sends two model-sized vectors: bytes count both.
    """

    reads = FedAvg.reads - {"aggregator", "privacy", "optimizer", "momentum"}
    unused = {
        **FedAvg.unused,
        "aggregator": "it averages the models uniformly, in the mean's place",
        "privacy": "DP would have to clip the control variates too",
        "optimizer": "option II's variates correct plain SGD steps",
        "momentum": "option II's variates correct plain SGD steps",
    }
    own_average = True
    copies = 2

    def begin(self, data: FederatedData, executor: Executor, seed: int) -> FedAvgState:
        state = super().begin(data, executor, seed)
        state.control = np.zeros(state.weights.size)
        return state

    def payload(self, state: FedAvgState) -> RoundPayload:
        return RoundPayload(state.round, state.weights, control=state.control)

    def combine(
        self,
        uploads: np.ndarray,
        counts: np.ndarray,
        updates: list[PartyUpdate],
        state: FedAvgState,
    ) -> Aggregate:
        changes = [u.control for u in updates if u.control is not None]
        if changes:
            state.control = state.control + np.sum(changes, axis=0) / len(self._run.ids)
        share = np.full(len(uploads), 1.0 / len(uploads))
        return Aggregate(share @ uploads, share)


class Centralized(FedAvg):
    """The non-federated baseline: one party holding all the pooled training data."""

    communicates = False
    tracks_parties = False
    reads = LOCAL_TRAINING
    unused = {
        key: "the centralized baseline is one party holding all the data"
        for key in FedAvg.reads - LOCAL_TRAINING
    }
    metrics = tuple(
        m
        for m in FedAvg.metrics
        if m not in ROBUSTNESS_METRICS + AVAILABILITY_METRICS + PRIVACY_METRICS
    )

    @classmethod
    def party_count(cls, federation: Federation) -> int:
        return 1

    def parties(self, data: FederatedData) -> Mapping[int, PartyData]:
        return {0: data.pooled()}


TRAINERS.register("fedavg")(FedAvg)
TRAINERS.register("fedprox")(FedProx)
TRAINERS.register("fednova")(FedNova)
TRAINERS.register("scaffold")(Scaffold)
TRAINERS.register("centralized")(Centralized)
