"""What every graph trainer shares: a client's local training on sampled trees, its scores,
and the trainer base class (settings, metrics, the state between rounds)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from clusters import PartyContext
from trainers.base import (
    Budget,
    Federation,
    Invalid,
    Reporter,
    RunState,
    Trainer,
    TrainResult,
    derive_seed,
)
from trainers.config import TrainerConfig
from trainers.graph.data import GraphClient, GraphData, Subgraph, sample_tree
from trainers.graph.models import GRAPH_MODELS, GraphNet, adjacency, n_convs
from trainers.models import ModelConfig, ModelSpec, build_model, seeded, set_flat

__all__ = [
    "CLIENT_F1",
    "GRAPH_METRICS",
    "ClientModel",
    "GraphState",
    "GraphTrainer",
    "Recipe",
    "Scores",
    "View",
    "client_scores",
    "local_score",
    "test_score",
    "degrees_of",
    "embed_levels",
    "mean_scores",
    "train_client",
    "view_of",
    "views",
    "worker_model",
]

_TRAIN_STREAM = 50
_DROPOUT_STREAM = 51
_INIT_STREAM = 52

GRAPH_METRICS = (
    "train_loss",
    "local_f1",
    "test_accuracy",
    "bytes_model",
    "bytes_graph",
    "bytes_communicated",
    "bytes_cumulative",
    "cross_edges_used",
    "round_time_s",
)
"""What every graph trainer reports each round: the mean over clients of the micro-F1 on
their local test nodes (single-label micro-F1 is accuracy) and of the accuracy on the
global test graph; model bytes apart from graph messages (FedEgo's ego-graph uploads, GFL's
representations and gradients)."""


@dataclass(frozen=True)
class Recipe:
    """How a client trains its model on its own subgraph."""

    spec: ModelSpec
    seed: int
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    weight_decay: float
    fanout: tuple[int, ...]
    prox_mu: float = 0.0
    share: float = 1.0
    """Share of the training nodes each local epoch draws afresh (FedEgo's code: 20%)."""

    @classmethod
    def of(cls, cfg: TrainerConfig, spec: ModelSpec, seed: int, prox_mu: float = 0.0) -> Recipe:
        return cls(
            spec,
            seed,
            cfg.local_epochs,
            cfg.batch_size,
            cfg.lr,
            str(cfg.optimizer),
            cfg.weight_decay,
            tuple(cfg.graph.fanout[: n_convs(spec.hidden)]),
            prox_mu,
        )

    def optimizer_for(self, params: Any) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, weight_decay=self.weight_decay)


@dataclass
class ClientModel:
    """A client's own model and optimizer state (party state, kept where it is hosted)."""

    weights: np.ndarray
    optim: dict | None = None


@dataclass(frozen=True)
class View:
    """A subgraph as tensors, with its mean matrices (made once per party and kept)."""

    x: torch.Tensor
    y: torch.Tensor
    adj: torch.Tensor
    loops: torch.Tensor


def view_of(graph: Subgraph) -> View:
    n = len(graph)
    with warnings.catch_warnings():
        # Arrays from Ray's object store are read-only views; the tensors are only read.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return View(
            torch.from_numpy(np.ascontiguousarray(graph.x, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(graph.y, dtype=np.int64)),
            adjacency(graph.indptr, graph.indices, n, False),
            adjacency(graph.indptr, graph.indices, n, True),
        )


def views(ctx: PartyContext) -> tuple[View, View]:
    """The party's subgraph and the global test graph as tensors (kept in its scratch)."""
    got = ctx.scratch.get("graph_views")
    if got is None:
        client: GraphClient = ctx.data
        got = ctx.scratch["graph_views"] = (view_of(client.graph), view_of(client.global_test))
    return got


def worker_model(ctx: PartyContext, spec: ModelSpec) -> GraphNet:
    """One model object per worker and architecture, reused by its parties."""
    model = ctx.cache.get(("graph", spec))
    if model is None:
        model = ctx.cache[("graph", spec)] = build_model(spec, seed=0)
    assert isinstance(model, GraphNet)
    return model


def train_client(
    model: GraphNet,
    client: GraphClient,
    view: View,
    recipe: Recipe,
    round_: int,
    party: int,
    optim: dict | None = None,
) -> tuple[float, int, dict]:
    """``recipe.epochs`` passes of minibatch training over the client's training nodes (or a
    fresh ``recipe.share`` of them each epoch), each batch's roots with their sampled trees; returns the last epoch's loss sum, its node
    count and the optimizer's state (what a client that keeps it passes back next time)."""
    rng = np.random.default_rng(derive_seed(recipe.seed, _TRAIN_STREAM, round_, party))
    params = list(model.parameters())
    opt = recipe.optimizer_for(params)
    if optim is not None:
        opt.load_state_dict(optim)
    anchor = [p.detach().clone() for p in params] if recipe.prox_mu > 0 else None
    model.train()
    loss_sum, n = 0.0, 0
    with seeded(derive_seed(recipe.seed, _DROPOUT_STREAM, round_, party)):
        for _ in range(recipe.epochs):
            loss_sum, n = 0.0, 0
            order = rng.permutation(client.train)
            if recipe.share < 1.0:
                order = order[: max(1, int(round(recipe.share * len(order))))]
            for start in range(0, len(order), recipe.batch_size):
                roots = order[start : start + recipe.batch_size]
                levels = sample_tree(
                    client.graph.indptr, client.graph.indices, roots, recipe.fanout, rng
                )
                logits = model.tree(
                    embed_levels(model, view.x, levels), degrees_of(client.graph, levels)
                )
                loss = F.cross_entropy(logits, view.y[torch.from_numpy(roots)])
                total = loss
                if anchor is not None:
                    total = loss + 0.5 * recipe.prox_mu * sum(
                        ((p - a) ** 2).sum() for p, a in zip(params, anchor)
                    )
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                loss_sum += loss.item() * len(roots)
                n += len(roots)
    return loss_sum, n, copy.deepcopy(opt.state_dict())


def embed_levels(model: GraphNet, x: torch.Tensor, levels: list[np.ndarray]) -> list[torch.Tensor]:
    """The reduction layer's output at every slot of sampled trees, computed once per
    distinct node (a tree repeats nodes; bag-of-words rows are wide)."""
    flat = np.concatenate([level.ravel() for level in levels])
    nodes, where = np.unique(flat, return_inverse=True)
    h = model.embed(x[torch.from_numpy(nodes)])[torch.from_numpy(where)]
    out, start = [], 0
    for level in levels:
        out.append(h[start : start + level.size].view(*level.shape, -1))
        start += level.size
    return out


def degrees_of(graph: Subgraph, levels: list[np.ndarray]) -> list[torch.Tensor]:
    """Every tree slot's node degree (gcn's weights), an isolated node's as 0."""
    deg = graph.degrees().astype(np.float32)
    return [torch.from_numpy(deg[level]) for level in levels]


@dataclass(frozen=True)
class Scores:
    """Correct predictions and counts on a client's local test nodes and the global test
    graph."""

    local: float
    """Local micro-F1 (accuracy on the local test nodes)."""
    test: float
    """Accuracy on the global test graph."""


@torch.no_grad()
def local_score(model: GraphNet, client: GraphClient, mine: View) -> float:
    """Accuracy on the client's local test nodes, read on its own subgraph."""
    model.eval()
    local = model(mine.x, mine.adj, mine.loops)[torch.from_numpy(client.test)]
    return float((local.argmax(1) == mine.y[torch.from_numpy(client.test)]).float().mean())


@torch.no_grad()
def test_score(model: GraphNet, test: View) -> float:
    """Accuracy on the global test graph."""
    model.eval()
    return float((model(test.x, test.adj, test.loops).argmax(1) == test.y).float().mean())


def client_scores(model: GraphNet, client: GraphClient, mine: View, test: View) -> Scores:
    """A client's own model's scores."""
    return Scores(local_score(model, client, mine), test_score(model, test))


@dataclass
class GraphState(RunState):
    """What a graph trainer carries between rounds."""

    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    """The global model, flat (FedEgo: the reduction layer, then the server's layers)."""
    total_bytes: int = 0
    server_optim: dict | None = None
    """FedEgo: the server's optimizer state."""
    pending: dict[int, np.ndarray] = field(default_factory=dict)
    """GFL: the gradients each client received about its shared nodes last round."""


class GraphTrainer(Trainer[GraphData, GraphState]):
    """A trainer of a graph federation: every client a party on the executor.

    Subclasses run their round in :meth:`advance`; this class holds the settings' checks,
    the declared metrics and the shared set-up."""

    graph = True
    _model: GraphNet
    """The global model (FedEgo: the server's), built by :meth:`begin`."""
    metrics: tuple[str, ...] = GRAPH_METRICS
    headline = ("local_f1", "test_accuracy", "train_loss")
    reads: ClassVar[frozenset[str]] = frozenset(
        {"rounds", "local_epochs", "batch_size", "optimizer", "lr", "weight_decay", "graph"}
    )
    unused: ClassVar[Mapping[str, str]] = {
        "momentum": "the graph trainers' SGD has no momentum (use optimizer=adam)",
        "fraction": "every client trains every round",
        "parties_per_round": "every client trains every round",
    }

    @classmethod
    def validate(cls, config: TrainerConfig, model: ModelConfig, federation: Federation) -> None:
        if model.name not in GRAPH_MODELS:
            raise Invalid(
                "model.name", f"{model.name} is not a graph model: use {' or '.join(GRAPH_MODELS)}"
            )
        if len(config.graph.fanout) < n_convs(model.hidden):
            raise Invalid(
                "trainer.graph.fanout",
                f"{len(config.graph.fanout)} fan-outs for {n_convs(model.hidden)} graph "
                "convolutions (model.hidden: the reduction layer, then one width per "
                "convolution): give one per convolution",
            )

    def check(self, data: GraphData) -> None:
        if not isinstance(data, GraphData):
            raise Invalid("data.name", f"{self.config.name} trains on a graph data set")

    def plots(self) -> tuple[str, ...]:
        return ("client_f1",)

    def budget(self) -> Budget:
        return Budget(
            self.config.rounds,
            shown=(("f1", "local_f1", ".4f"), ("acc", "test_accuracy", ".4f")),
        )

    def sample_steps(self, n_train: int) -> float:
        """Each epoch's training nodes (``epoch_share`` of them), a sampled tree costing as
        much as 1 + (graph convolutions) samples of an MLP: measured, a tree's distinct nodes
        are embedded once per batch (configs/fedego_sbm.yaml's 84,000 trees train in about
        5 s on 2 cores, as 135,000 MLP samples do)."""
        depth = 1 + n_convs(self.model_config.hidden)
        c = self.config
        return self.budget().total * c.local_epochs * self.epoch_share() * n_train * depth

    def epoch_share(self) -> float:
        """Share of a client's training nodes one local epoch trains on."""
        return 1.0

    def spec(self, data: GraphData) -> ModelSpec:
        return ModelSpec.from_config(self.model_config, data.n_features, data.n_classes)

    def initial(self, data: GraphData, seed: int) -> GraphNet:
        model = build_model(self.spec(data), seed=derive_seed(seed, _INIT_STREAM))
        assert isinstance(model, GraphNet)
        return model

    def done(self, state: GraphState) -> bool:
        return state.round >= self.config.rounds

    def end(self, state: GraphState, executor: Any, reporter: Reporter) -> TrainResult:
        set_flat(self._model, state.weights)
        return TrainResult(self._model, state.history)


def mean_scores(ids: list[int], scores: list[Scores]) -> dict[str, float]:
    """The round's scores: means over the clients, and each client's local F1
    (``client_f1/<id>``: MLflow draws one curve per client)."""
    out = {
        "local_f1": float(np.mean([s.local for s in scores])),
        "test_accuracy": float(np.mean([s.test for s in scores])),
    }
    out.update({f"{CLIENT_F1}{cid}": s.local for cid, s in zip(ids, scores)})
    return out


CLIENT_F1 = "client_f1/"
"""Prefix of the per-client local F1 metrics (not declared: their names depend on the split)."""
