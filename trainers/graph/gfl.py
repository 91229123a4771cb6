"""GFL (Wu et al., arXiv 2212.12158): graph FL that shares the hidden representations of
cross-client neighbours instead of their raw features. No code was published; these rules
are ALGORITHMS.md section 5b's reconstruction, implemented as written.

The model is an encoder phi (the reduction layer), one graph convolution and a classifier,
all FedAvg'd. A client holds the nodes of a disjoint split and its edges to other clients'
nodes (foreign nodes). Round r, with theta_r the global model:

1. every client sends H_j = phi(X_j) of its nodes that other clients neighbour (share);
2. client i trains Q steps: each on a batch of its training nodes, whose sampled
   neighbours are its own nodes (embedded afresh) or foreign ones (their stale H_j); the
   loss is its mean cross entropy plus (1 / n_i) <G_i, phi(X_i)>, where G_i is the sum of the
   gradients the other clients sent about i's shared nodes last round (stale too);
3. it uploads its model and, for each foreign node, G_ij = n_i d loss_i / d H_j averaged
   over the Q steps; the server averages the models (weights n_i) and relays the G_ij to
   their owners for the next round.

With weights n_i, the average of the clients' gradients is the gradient of the whole
objective sum_i n_i loss_i / N, but for the staleness of H and G (and the sampling): the
bias the paper bounds, which grows with Q. Dropout (``model.dropout``) acts after the graph
convolution only: the encoder's outputs, shared or not, are never dropped out, so own and
foreign neighbours enter alike. Bytes count each representation and each gradient once, as
if sent from client to client (the simulation relays them through the server). ``trainer.gfl.share=false`` drops the foreign
neighbours: FedAvg of the same model. ``grad_norm`` and ``objective`` are those of the whole
objective at the new global model, every neighbour read, computed by the server for the
curves (they cost one pass over the training graph).
"""

from __future__ import annotations

import time
import typing
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clusters import Executor, PartyContext
from trainers.base import BYTES_PER_VALUE, TRAINERS, Federation, Invalid, derive_seed
from trainers.config import TrainerConfig
from trainers.graph.common import (
    GraphState,
    GraphTrainer,
    Recipe,
    Scores,
    local_score,
    mean_scores,
    test_score,
    view_of,
    views,
    worker_model,
)
from trainers.graph.data import GraphData, sample_tree, sizes_of
from trainers.graph.models import adjacency, n_convs
from trainers.models import ModelConfig, get_flat, seeded, set_flat

__all__ = ["GFL"]

_STEP_STREAM = 60


@dataclass(frozen=True)
class _Share:
    weights: np.ndarray


@dataclass(frozen=True)
class _Embed:
    """Step 1: a client's shared nodes' representations."""

    recipe: Recipe

    def __call__(self, ctx: PartyContext, payload: _Share) -> np.ndarray:
        model = worker_model(ctx, self.recipe.spec)
        set_flat(model, payload.weights.copy())  # a read-only view when it came through Ray
        ext = ctx.data.external
        mine, _ = views(ctx)
        model.eval()
        with torch.no_grad():
            return model.embed(mine.x[torch.from_numpy(ext.shared)]).numpy()


@dataclass(frozen=True)
class _Steps:
    round: int
    weights: np.ndarray
    foreign: dict[int, np.ndarray]
    """Each client's foreign nodes' representations (stale: computed at theta_r)."""
    pending: dict[int, np.ndarray]
    """Each client's gradients received about its shared nodes."""


@dataclass
class _Upload:
    weighted_sum: np.ndarray
    nodes: int
    loss_sum: float
    loss_n: int
    grads: np.ndarray
    """G_ij for the client's foreign nodes, in their order."""


@dataclass(frozen=True)
class _Train:
    """Steps 2-3 at a client."""

    recipe: Recipe
    steps: int
    share: bool

    def __call__(self, ctx: PartyContext, payload: _Steps) -> _Upload:
        model = worker_model(ctx, self.recipe.spec)
        set_flat(model, payload.weights.copy())
        client, recipe = ctx.data, self.recipe
        ext = client.external
        mine, _ = views(ctx)
        n, n_train = len(client.graph), len(client.train)
        if self.share:
            indptr, indices = ext.indptr, ext.indices
            foreign = torch.tensor(payload.foreign[ctx.party_id]).requires_grad_(True)
        else:
            indptr, indices = client.graph.indptr, client.graph.indices
            foreign = torch.zeros((0, model.reduce.out_features), requires_grad=True)
        received = payload.pending.get(ctx.party_id)
        shared = torch.from_numpy(ext.shared)
        opt = recipe.optimizer_for(model.parameters())
        rng = np.random.default_rng(
            derive_seed(recipe.seed, _STEP_STREAM, payload.round, ctx.party_id)
        )
        grads = torch.zeros_like(foreign)
        loss_sum, seen = 0.0, 0
        model.train()
        with seeded(derive_seed(recipe.seed, _STEP_STREAM, payload.round, ctx.party_id, 1)):
            for _ in range(self.steps):
                roots = rng.choice(
                    client.train, size=min(recipe.batch_size, n_train), replace=False
                )
                levels = sample_tree(indptr, indices, roots, recipe.fanout, rng)
                embedded = [model.embed(mine.x[torch.from_numpy(roots)], dropout=False)]
                for idx in levels[1:]:
                    own = model.embed(
                        mine.x[torch.from_numpy(np.minimum(idx, n - 1))], dropout=False
                    )
                    far = idx >= n
                    if far.any():
                        other = foreign[torch.from_numpy(np.maximum(idx - n, 0))]
                        own = torch.where(torch.from_numpy(far)[..., None], other, own)
                    embedded.append(own)
                degree = torch.from_numpy(np.diff(indptr)[roots].astype(np.float32))
                logits = model.tree(embedded, [degree])
                loss = F.cross_entropy(logits, mine.y[torch.from_numpy(roots)])
                total = loss
                if received is not None and self.share:
                    h = model.embed(mine.x[shared], dropout=False)
                    total = loss + (torch.as_tensor(received.copy()) * h).sum() / n_train
                opt.zero_grad(set_to_none=True)
                foreign.grad = None
                total.backward()
                opt.step()
                if foreign.grad is not None:
                    grads += foreign.grad * n_train
                loss_sum += loss.item() * len(roots)
                seen += len(roots)
        return _Upload(
            get_flat(model).astype(np.float64) * n_train,
            n_train,
            loss_sum,
            seen,
            (grads / self.steps).numpy(),
        )


class GFL(GraphTrainer):
    """GFL (see the module docstring)."""

    reads = (GraphTrainer.reads - {"local_epochs"}) | {"gfl"}
    unused = {**GraphTrainer.unused, "local_epochs": "GFL trains trainer.gfl.steps steps a round"}
    metrics = (*GraphTrainer.metrics, "grad_norm", "objective")

    def plots(self) -> tuple[str, ...]:
        return ("client_f1", "gradient")

    @classmethod
    def validate(cls, config: TrainerConfig, model: ModelConfig, federation: Federation) -> None:
        super().validate(config, model, federation)
        if n_convs(model.hidden) != 1:
            raise Invalid(
                "model.hidden",
                f"gfl shares one hop of representations: give two widths, the encoder's and "
                f"the convolution's (got {list(model.hidden)})",
            )

    def check(self, data: GraphData) -> None:
        super().check(data)
        if not data.disjoint:
            raise Invalid(
                "partition.name",
                "gfl needs each node held by one client: use louvain or random_nodes",
            )

    def sample_steps(self, n_train: int) -> float:
        """Q batches a round, each a tree of one convolution (see GraphTrainer's)."""
        return self.config.rounds * self.config.gfl.steps * self.config.batch_size * 2

    def begin(self, data: GraphData, executor: Executor, seed: int) -> GraphState:
        self._model = self.initial(data, seed)
        self._data = data
        executor.load(data.clients, sizes=sizes_of(data.clients))
        self._ids = sorted(data.clients)
        recipe = Recipe.of(self.config, self.spec(data), seed)
        self._embed = _Embed(recipe)
        self._task = _Train(recipe, self.config.gfl.steps, self.config.gfl.share)
        pool = data.pool.graph
        self._pool_adj = [
            adjacency(pool.indptr, pool.indices, len(pool), self._model.kind == "gcn")
        ]
        self._pool = view_of(pool)
        self._test = view_of(data.test)
        if not self.config.gfl.share:  # scored on what the clients hold
            self._own = {cid: view_of(c.graph) for cid, c in data.clients.items()}
        return GraphState(weights=get_flat(self._model))

    def advance(self, state: GraphState, executor: Executor) -> tuple[int, dict[str, float]]:
        start = time.perf_counter()
        share = self.config.gfl.share
        clients, d = self._data.clients, self._model.reduce.out_features
        foreign = self.share(state.weights, executor) if share else {}
        ups: list[_Upload] = executor.map(
            self._task, self._ids, _Steps(state.round, state.weights, foreign, state.pending)
        )
        nodes = sum(u.nodes for u in ups)
        total = typing.cast(np.ndarray, sum(u.weighted_sum for u in ups))
        state.weights = (total / nodes).astype(np.float32)
        state.pending = self.route(ups) if share else {}
        messages = sum(len(c.links().owner) for c in clients.values()) if share else 0
        sent_graph = 2 * messages * d * BYTES_PER_VALUE
        sent_model = 2 * len(self._ids) * state.weights.size * BYTES_PER_VALUE
        state.total_bytes += sent_graph + sent_model
        scores, grad_norm, objective = self._score(state.weights)
        cross = sum(c.links().n_edges for c in clients.values()) // 2 if share else 0
        return state.round, {
            "train_loss": sum(u.loss_sum for u in ups) / max(1, sum(u.loss_n for u in ups)),
            **mean_scores(self._ids, scores),
            "bytes_model": float(sent_model),
            "bytes_graph": float(sent_graph),
            "bytes_communicated": float(sent_model + sent_graph),
            "bytes_cumulative": float(state.total_bytes),
            "cross_edges_used": float(cross),
            "round_time_s": time.perf_counter() - start,
            "grad_norm": grad_norm,
            "objective": objective,
        }

    def share(self, weights: np.ndarray, executor: Executor) -> dict[int, np.ndarray]:
        """Step 1: each client's foreign nodes' representations at ``weights``."""
        clients, d = self._data.clients, self._model.reduce.out_features
        sent = dict(zip(self._ids, executor.map(self._embed, self._ids, _Share(weights))))
        foreign = {}
        for cid in self._ids:
            ext = clients[cid].links()
            rows = np.zeros((len(ext.owner), d), dtype=np.float32)
            for owner in np.unique(ext.owner).tolist():
                at = ext.owner == owner
                rows[at] = sent[owner][
                    np.searchsorted(clients[owner].links().shared, ext.index[at])
                ]
            foreign[cid] = rows
        return foreign

    def route(self, ups: list[_Upload]) -> dict[int, np.ndarray]:
        """Step 3's relay: the gradients about each client's shared nodes, summed."""
        clients, d = self._data.clients, self._model.reduce.out_features
        pending: dict[int, np.ndarray] = {}
        for cid, u in zip(self._ids, ups):
            ext = clients[cid].links()
            for owner in np.unique(ext.owner).tolist():
                at = ext.owner == owner
                shared = clients[owner].links().shared
                into = pending.setdefault(owner, np.zeros((len(shared), d), np.float32))
                np.add.at(into, np.searchsorted(shared, ext.index[at]), u.grads[at])
        return pending

    def _score(self, weights: np.ndarray) -> tuple[list[Scores], float, float]:
        """The global model's scores (each client's local test nodes read their foreign
        neighbours too, as a GFL client infers), and the whole objective's gradient norm."""
        model, data = self._model, self._data
        set_flat(model, weights)
        model.eval()
        pool = data.pool
        logits = model.propagate(model.embed(self._pool.x), self._pool_adj, len(pool.graph))
        target = self._pool.y[torch.from_numpy(pool.train)]
        objective = F.cross_entropy(logits[torch.from_numpy(pool.train)], target)
        grads = torch.autograd.grad(objective, list(model.parameters()))
        grad_norm = float(torch.sqrt(typing.cast(torch.Tensor, sum((g**2).sum() for g in grads))))
        glob = test_score(model, self._test)
        with torch.no_grad():
            scores = []
            for cid, c in data.clients.items():
                if self.config.gfl.share:
                    at = torch.from_numpy(np.searchsorted(pool.graph.nodes, c.graph.nodes[c.test]))
                    hit = (logits[at].argmax(1) == self._pool.y[at]).float().mean()
                    scores.append(Scores(float(hit), glob))
                else:
                    scores.append(Scores(local_score(model, c, self._own[cid]), glob))
        return scores, grad_norm, objective.item()


TRAINERS.register("gfl")(GFL)
