"""The baselines graph FL is measured against: each client alone (``graph_local``), FedAvg
and FedProx of one GNN over the clients' subgraphs (``graph_fedavg``, ``graph_fedprox``),
and one GNN trained on the whole training graph (``graph_centralized``).

Every round each client trains ``local_epochs`` passes over its training nodes on sampled
trees (:func:`trainers.graph.common.train_client`). FedAvg weighs the clients' models by
their training nodes. The centralized baseline is one party holding every client's nodes and
every edge among them, the cross-client ones included; its training nodes are the clients'
training nodes, and it is scored on each client's local test nodes like the others.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clusters import Executor, PartyContext
from trainers.base import BYTES_PER_VALUE, TRAINERS, Reporter, TrainResult
from trainers.graph.common import (
    ClientModel,
    GraphState,
    GraphTrainer,
    Recipe,
    Scores,
    client_scores,
    local_score,
    mean_scores,
    test_score,
    train_client,
    view_of,
    views,
    worker_model,
)
from trainers.graph.data import GraphClient, GraphData, sizes_of
from trainers.models import get_flat, set_flat

__all__ = ["GraphCentralized", "GraphFedAvg", "GraphFedProx", "GraphLocal"]


@dataclass(frozen=True)
class _Payload:
    round: int
    weights: np.ndarray


@dataclass
class _Update:
    """Node-weighted sum of the clients' models and of their training losses."""

    weighted_sum: np.ndarray
    nodes: int
    loss_sum: float
    loss_n: int

    @staticmethod
    def merge(a: _Update, b: _Update) -> _Update:
        return _Update(
            a.weighted_sum + b.weighted_sum,
            a.nodes + b.nodes,
            a.loss_sum + b.loss_sum,
            a.loss_n + b.loss_n,
        )


@dataclass(frozen=True)
class _Averaged:
    """A client's round under FedAvg: train the global model, upload it."""

    recipe: Recipe

    def __call__(self, ctx: PartyContext, payload: _Payload) -> _Update:
        model = worker_model(ctx, self.recipe.spec)
        set_flat(model, payload.weights.copy())  # a read-only view when it came through Ray
        mine, _ = views(ctx)
        loss_sum, n, _ = train_client(
            model, ctx.data, mine, self.recipe, payload.round, ctx.party_id
        )
        w = len(ctx.data.train)
        return _Update(get_flat(model).astype(np.float64) * w, w, loss_sum, n)


class GraphFedAvg(GraphTrainer):
    """FedAvg of one GNN over the clients' subgraphs (cross-client edges are lost)."""

    communicates = True

    def prox_mu(self) -> float:
        return 0.0

    def parties(self, data: GraphData) -> Mapping[int, GraphClient]:
        return data.clients

    def begin(self, data: GraphData, executor: Executor, seed: int) -> GraphState:
        self._model = self.initial(data, seed)
        self._data = data
        parties = self.parties(data)
        executor.load(parties, sizes=sizes_of(parties))
        self._ids = sorted(parties)
        self._task = _Averaged(Recipe.of(self.config, self.spec(data), seed, self.prox_mu()))
        self._test = view_of(data.test)
        self._views = {cid: view_of(c.graph) for cid, c in data.clients.items()}
        return GraphState(weights=get_flat(self._model))

    def advance(self, state: GraphState, executor: Executor) -> tuple[int, dict[str, float]]:
        start = time.perf_counter()
        update = executor.map(
            self._task, self._ids, _Payload(state.round, state.weights), reduce=_Update.merge
        )
        assert update is not None
        state.weights = (update.weighted_sum / update.nodes).astype(np.float32)
        set_flat(self._model, state.weights)
        scores = self.scores()
        sent = 2 * len(self._ids) * state.weights.size * BYTES_PER_VALUE if self.communicates else 0
        state.total_bytes += sent
        return state.round, {
            "train_loss": update.loss_sum / max(1, update.loss_n),
            **mean_scores(list(self._views), scores),
            "bytes_model": float(sent),
            "bytes_graph": 0.0,
            "bytes_communicated": float(sent),
            "bytes_cumulative": float(state.total_bytes),
            "cross_edges_used": 0.0,
            "round_time_s": time.perf_counter() - start,
        }

    def scores(self) -> list[Scores]:
        """The global model's scores at every client, on the subgraph it holds."""
        clients = self._data.clients
        glob = test_score(self._model, self._test)  # one model: scored once
        return [
            Scores(local_score(self._model, clients[c], self._views[c]), glob) for c in self._views
        ]


class GraphFedProx(GraphFedAvg):
    """FedProx: FedAvg whose local loss adds (mu/2)||w - w_global||^2."""

    reads = GraphFedAvg.reads | {"fedprox"}

    def prox_mu(self) -> float:
        return self.config.fedprox.mu


class GraphCentralized(GraphFedAvg):
    """One GNN on every client's nodes and every edge among them (cross-client ones too)."""

    communicates = False

    def parties(self, data: GraphData) -> Mapping[int, GraphClient]:
        return {0: data.pool}

    def begin(self, data: GraphData, executor: Executor, seed: int) -> GraphState:
        self._pool = view_of(data.pool.graph)
        return super().begin(data, executor, seed)

    def scores(self) -> list[Scores]:
        """Each client's local test nodes read on the whole training graph (the centralized
        model sees every edge), the global test graph as the others."""
        data, model = self._data, self._model
        pool = self._pool
        glob = test_score(model, self._test)
        with torch.no_grad():
            logits = model(pool.x, pool.adj, pool.loops).argmax(1)
        out = []
        for c in data.clients.values():
            at = torch.from_numpy(np.searchsorted(data.pool.graph.nodes, c.graph.nodes[c.test]))
            out.append(Scores(float((logits[at] == pool.y[at]).float().mean()), glob))
        return out


@dataclass(frozen=True)
class _Alone:
    """A client's round on its own: train its model, score it."""

    recipe: Recipe

    def __call__(self, ctx: PartyContext, payload: _Payload) -> tuple[float, int, Scores]:
        model = worker_model(ctx, self.recipe.spec)
        record = ctx.get(ClientModel) or ClientModel(payload.weights.copy())
        set_flat(model, record.weights)
        mine, test = views(ctx)
        loss_sum, n, optim = train_client(
            model, ctx.data, mine, self.recipe, payload.round, ctx.party_id, record.optim
        )
        ctx.put(ClientModel(get_flat(model), optim))
        return loss_sum, n, client_scores(model, ctx.data, mine, test)


class GraphLocal(GraphTrainer):
    """Each client trains its own GNN on its own subgraph; nothing is communicated. The
    logged model is client 0's (each client has its own)."""

    def begin(self, data: GraphData, executor: Executor, seed: int) -> GraphState:
        self._model = self.initial(data, seed)
        executor.load(data.clients, sizes=sizes_of(data.clients))
        self._ids = sorted(data.clients)
        self._task = _Alone(Recipe.of(self.config, self.spec(data), seed))
        return GraphState(weights=get_flat(self._model))

    def advance(self, state: GraphState, executor: Executor) -> tuple[int, dict[str, float]]:
        start = time.perf_counter()
        out = executor.map(self._task, self._ids, _Payload(state.round, state.weights))
        loss = sum(o[0] for o in out) / max(1, sum(o[1] for o in out))
        return state.round, {
            "train_loss": loss,
            **mean_scores(self._ids, [o[2] for o in out]),
            "bytes_model": 0.0,
            "bytes_graph": 0.0,
            "bytes_communicated": 0.0,
            "bytes_cumulative": 0.0,
            "cross_edges_used": 0.0,
            "round_time_s": time.perf_counter() - start,
        }

    def end(self, state: GraphState, executor: Any, reporter: Reporter) -> TrainResult:
        record = executor.party_states().get(self._ids[0], {}).get(ClientModel.__name__)
        if isinstance(record, ClientModel):
            state.weights = record.weights
        return super().end(state, executor, reporter)


TRAINERS.register("graph_local")(GraphLocal)
TRAINERS.register("graph_fedavg")(GraphFedAvg)
TRAINERS.register("graph_fedprox")(GraphFedProx)
TRAINERS.register("graph_centralized")(GraphCentralized)
