"""CMFL: committee mechanism based federated learning.

Che, Li, Chen, He and Zheng, "A Decentralized Federated Learning Framework via Committee
Mechanism with Convergence Guarantee" (IEEE TPDS 2022, arXiv 2108.00365), following the
authors' code (``Hide-on-bush2/CMFL``, ``src/flearn/trainers/cmfl.py``). Not to be confused
with "communication-mitigated federated learning", which shares the acronym.

There is no server: each round the active parties split into committee members C and
trainers T, and the committee's choice is the aggregation. Each round:

1. every party in C and T starts from the global model w and trains locally -> w_k
   (Byzantine parties, members included, then corrupt their model);
2. the committee scores each trainer: score_k = sum over members c, sum over layers of
   ||w_k[layer] - w_c[layer]||_2 (per-layer norms summed, not one global norm);
3. the trainers are ranked by score, ascending for selection strategy I (closest to the
   committee: robustness) or descending for strategy II (farthest: accuracy), and the first
   n_agg are aggregated: w <- sum n_k w_k / sum n_k over the selected trainers only
   (committee models score, they are never aggregated);
4. the next committee is elected from the ranked trainers: the |C| in the middle of the
   ranking (the authors' rule) or, with ``election: top``, the |C| closest to the committee;
   the next trainers are |T| parties drawn at random from everyone outside the new committee.

|C| = round(N a c), |T| = round(N a (1 - c)), n_agg = floor(N a r) for N parties and active,
committee and aggregation rates a, c, r (n_agg is capped at |T|).

Communication counted per round (no server): every active party receives the model
(|C| + |T|), every trainer sends its model to every member (|T| |C|), and the n_agg selected
models travel to be combined (n_agg).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from clusters import Executor
from clusters.base import PartyFn
from trainers.aggregators import layer_distances
from trainers.attacks import DISTILLATION_ONLY, Adversary, build_adversary, byzantine_parties
from trainers.availability import Availability
from trainers.base import (
    BYTES_PER_VALUE,
    LOCAL_TRAINING,
    TRAINERS,
    FederatedData,
    Federation,
    Invalid,
    Reporter,
    RunState,
    Trainer,
    TrainResult,
    derive_seed,
    party_sizes,
)
from trainers.config import CMFLConfig, TrainerConfig
from trainers.fedavg import FedAvg, evaluate, local_task, stack_uploads
from trainers.ledger import Ledger
from trainers.local import PartyUpdate, RoundPayload
from trainers.models import ModelConfig, ModelSpec, build_model, get_flat, layer_slices, set_flat

__all__ = ["CMFL", "CMFLState", "Roles", "committee_scores", "elect", "rank"]

_INIT_STREAM = 3
_ROLE_STREAM = 6


@dataclass(frozen=True)
class Roles:
    """How many parties play each role in a round."""

    committee: int
    trainers: int
    aggregated: int

    @classmethod
    def of(cls, n_parties: int, cfg: CMFLConfig) -> Roles:
        """The role sizes for ``n_parties`` parties; ValueError when they cannot work."""
        active = n_parties * cfg.active_rate
        committee = round(active * cfg.committee_rate)
        trainers = round(active * (1 - cfg.committee_rate))
        aggregated = min(math.floor(active * cfg.aggregation_rate + 1e-9), trainers)
        if committee < 1:
            raise ValueError(
                f"no committee: {n_parties} parties x active_rate x committee_rate rounds to 0"
            )
        if trainers < 1 or aggregated < 1:
            raise ValueError(
                f"no trainer to aggregate: {n_parties} parties give {trainers} trainers and "
                f"{aggregated} aggregated updates"
            )
        if committee > trainers:
            raise ValueError(
                f"the committee ({committee}) must not outnumber the trainers ({trainers}) "
                "it is elected from: lower committee_rate"
            )
        if committee + trainers > n_parties:
            raise ValueError(
                f"{committee} members and {trainers} trainers do not fit in {n_parties} parties"
            )
        return cls(committee, trainers, aggregated)


def committee_scores(
    trainers: np.ndarray, members: np.ndarray, layers: tuple[tuple[int, int], ...] | None
) -> np.ndarray:
    """Each trainer's score: its summed per-layer L2 distance to every committee model."""
    return layer_distances(trainers, members, layers).sum(axis=1)


def rank(scores: np.ndarray, strategy: int) -> np.ndarray:
    """Trainer positions in selection order: closest first (strategy 1) or farthest first
    (strategy 2); ties keep the trainers' order."""
    key = scores if strategy == 1 else -scores
    return np.argsort(key, kind="stable")


def elect(ranked: np.ndarray, scores: np.ndarray, size: int, rule: str) -> np.ndarray:
    """Positions of the trainers who form the next committee.

    Args:
        ranked: trainer positions in selection order (see :func:`rank`).
        scores: the trainers' scores.
        size: committee size.
        rule: ``median``, the middle ``size`` ranks of ``ranked`` (the authors' rule), or
            ``top``, the ``size`` trainers closest to the committee.
    """
    if rule == "top":
        return np.argsort(scores, kind="stable")[:size]
    start = (len(ranked) - size) // 2
    return ranked[start : start + size]


class CMFL(Trainer[FederatedData, "CMFLState"]):
    """Serverless FL in which an elected committee scores and selects the updates.

    Args:
        config: local training settings, ``cmfl`` rates and strategy, and the attack.
        model: the model to train.
    """

    reads = LOCAL_TRAINING | {"attack", "cmfl", "dropout", "stragglers"}
    devices = ("cpu", "cuda")
    unused = {
        "aggregator": "its committee selects the updates",
        "fraction": "trainer.cmfl.active_rate sets the parties that work each round",
        "parties_per_round": "trainer.cmfl.active_rate sets the parties that work each round",
    }
    metrics = (
        *FedAvg.metrics,
        "time_scoring_s",
        "aggregated",
        "byzantine_committee",
    )
    """What :meth:`fit` reports every round."""

    @classmethod
    def validate(cls, config: TrainerConfig, model: ModelConfig, federation: Federation) -> None:
        try:
            Roles.of(federation.parties, config.cmfl)
        except ValueError as exc:
            raise Invalid("trainer.cmfl", str(exc)) from None
        if config.attack.name in DISTILLATION_ONLY:
            raise Invalid(
                "trainer.attack.name",
                f"{config.attack.name} is planted through dataset distillation: "
                "trainer.name=fed_condense",
            )

    def begin(self, data: FederatedData, executor: Executor, seed: int) -> CMFLState:
        cfg, ccfg = self.config, self.config.cmfl
        spec = ModelSpec.from_config(self.model_config, data.n_features, data.n_classes, data.image)
        model = build_model(spec, seed=derive_seed(seed, _INIT_STREAM))
        weights = get_flat(model)
        ids = sorted(data.parties)
        executor.load(data.parties, sizes=party_sizes(data.parties))
        roles = Roles.of(len(ids), ccfg)
        ledger = Ledger(ids, byzantine_parties(ids, cfg.attack, seed))
        self._run = _CMFLRun(
            data=data,
            model=model,
            layers=layer_slices(model),
            ids=ids,
            roles=roles,
            adversary=build_adversary(cfg.attack, seed),
            task=local_task(cfg, spec, seed, ledger.byzantine),
            model_bytes=weights.size * BYTES_PER_VALUE,
            availability=Availability(cfg, party_sizes(data.parties), seed),
        )
        rng = np.random.default_rng(derive_seed(seed, _ROLE_STREAM))
        committee = sorted(rng.choice(ids, size=roles.committee, replace=False).tolist())
        trainers = _draw_trainers(ids, committee, roles.trainers, rng)
        return CMFLState(
            weights=weights, ledger=ledger, rng=rng, committee=committee, trainers=trainers
        )

    def done(self, state: CMFLState) -> bool:
        return state.round >= self.config.rounds

    def advance(self, state: CMFLState, executor: Executor) -> tuple[int, dict[str, float]]:
        run, ccfg, ledger, r = self._run, self.config.cmfl, state.ledger, state.round
        committee, trainers, roles = state.committee, state.trainers, run.roles
        start = time.perf_counter()
        asked = committee + trainers
        answers = run.availability.answers(r, asked)
        answering = answers.answered
        updates = executor.map(run.task, answering, RoundPayload(r, state.weights))
        trained = time.perf_counter()
        kept = [(p, u) for p, u in zip(answering, updates) if not u.discarded]
        active = [p for p, _ in kept]
        uploads, counts = (
            stack_uploads([u for _, u in kept]) if kept else (np.zeros((0, 0)), np.zeros(0))
        )
        if kept and run.adversary is not None:
            uploads = run.adversary(uploads, ledger.mask(active), state.weights, r)
        good = np.asarray(np.isfinite(uploads).all(axis=1), dtype=bool)  # an attack's garbage too
        kept = [k for k, g in zip(kept, good.tolist()) if g]
        active, uploads, counts = [p for p, _ in kept], uploads[good], counts[good]
        on_committee = set(committee)
        is_member = np.array([p in on_committee for p in active], dtype=bool)
        members, candidates = uploads[is_member], uploads[~is_member]
        voters = [p for p, m in zip(active, is_member) if m]
        scored_trainers = [p for p, m in zip(active, is_member) if not m]

        begin = time.perf_counter()
        selected: np.ndarray = np.zeros(0, dtype=np.int64)
        scores = np.zeros(len(candidates))
        share = np.zeros(len(candidates))
        if len(members) and len(candidates):
            scores = committee_scores(candidates, members, run.layers)
            ranked = rank(scores, ccfg.strategy)
            selected = ranked[: roles.aggregated]
        scored = time.perf_counter()
        if len(selected):  # else (everyone dropped out): the model stays
            share[selected] = counts[~is_member][selected]
            share /= share.sum()
            state.weights = (share @ candidates).astype(np.float32)
        aggregated = time.perf_counter()

        set_flat(run.model, state.weights)
        acc, loss = evaluate(run.model, run.data.x_test, run.data.y_test)
        # everyone asked downloads; the trainers who answered upload to each member who did
        sent = (len(asked) + len(candidates) * len(members) + len(selected)) * run.model_bytes
        state.total_bytes += sent
        influence = np.concatenate([np.zeros(len(members)), share])
        chosen = [scored_trainers[i] for i in selected]
        n = counts.sum()
        metrics = {
            "train_loss": sum(u.loss_sum for _, u in kept) / n if n else float("nan"),
            "test_accuracy": acc,
            "test_loss": loss,
            "parties": float(len(active)),
            "bytes_communicated": float(sent),
            "bytes_cumulative": float(state.total_bytes),
            "round_time_s": 0.0,
            "time_train_s": trained - start,
            "time_scoring_s": scored - begin,
            "time_aggregate_s": aggregated - scored,
            "aggregated": float(len(selected)),
            "byzantine_committee": float(ledger.mask(committee).sum()),
            **ledger.record(voters + scored_trainers, influence),
            "dropped": float(answers.dropped),
            "straggled": float(answers.straggled),
            "discarded": float(len(answering) - len(active)),
        }
        state.rounds.append(
            {
                "round": r,
                "committee": list(committee),
                "trainers": list(trainers),
                "selected": chosen,
                "scores": scores.tolist(),
                "byzantine_committee": int(metrics["byzantine_committee"]),
                "byzantine_selected": int(ledger.mask(chosen).sum()),
            }
        )
        # The election: the committee comes from this round's ranked trainers (when too few
        # answered to fill it, the committee stays as it was).
        if len(selected) and len(scored_trainers) >= roles.committee:
            state.committee = sorted(
                scored_trainers[i] for i in elect(ranked, scores, roles.committee, ccfg.election)
            )
        state.trainers = _draw_trainers(run.ids, state.committee, roles.trainers, state.rng)
        metrics["round_time_s"] = time.perf_counter() - start
        return r, metrics

    def end(self, state: CMFLState, executor: Executor, reporter: Reporter) -> TrainResult:
        set_flat(self._run.model, state.weights)
        tables = {"cmfl_rounds": state.rounds, "participation": state.ledger.table()}
        return TrainResult(self._run.model, state.history, tables)


@dataclass
class CMFLState(RunState):
    """CMFL's state between rounds: the model, this round's roles and the role generator."""

    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    ledger: Ledger = field(default_factory=lambda: Ledger([], frozenset()))
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    """Draws each round's trainers (one stream for the whole run)."""
    committee: list[int] = field(default_factory=list)
    trainers: list[int] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    """The cmfl_rounds table so far."""
    total_bytes: int = 0


@dataclass(kw_only=True)
class _CMFLRun:
    """What stays the same for a whole run (rebuilt by :meth:`CMFL.begin`)."""

    data: FederatedData
    model: nn.Module
    layers: tuple[tuple[int, int], ...]
    ids: list[int]
    roles: Roles
    adversary: Adversary | None
    task: PartyFn[PartyUpdate]
    model_bytes: int
    availability: Availability


def _draw_trainers(
    ids: list[int], committee: list[int], size: int, rng: np.random.Generator
) -> list[int]:
    """``size`` parties drawn at random from those outside the committee, in id order."""
    members = set(committee)
    pool = [p for p in ids if p not in members]
    return sorted(rng.choice(pool, size=size, replace=False).tolist())


TRAINERS.register("cmfl")(CMFL)
