"""FedEgo (Zhang et al., TKDD 2023): personalised federated graph learning with ego-graphs,
as its authors' code runs it (ALGORITHMS.md section 5a).

Each client's model is the reduction layer (shared: FedAvg'd) and the personalisation layers
(its graph convolutions and classifier). One round:

1. every client loads the FedAvg of the reduction layers and trains all its layers locally
   (``local_epochs`` epochs, each on a fresh ``train_share`` of its training nodes: the
   code's 5 epochs of 20%);
2. it uploads mixed ego-graphs: its training nodes in batches of ``batch_size``, each node's
   sampled 2-hop tree of reduction embeddings (1 + 6 + 36 slots), averaged slot by slot over
   the batch (Mixup) with the average of the batch's one-hot labels as the soft label, plus
   N(0, sigma^2) noise;
3. the server trains its own personalisation layers on the union of the uploads for
   ``server_epochs`` epochs (each on a random ``server_share`` of them; soft-label cross
   entropy);
4. with p_g the mean uploaded soft label and p_i client i's label distribution,
   lambda_i = (||p_i - p_g||_1 / 2) ** lamb_c (or lamb_c itself with lamb_fixed);
5. client i's personalisation layers become lambda_i theta_server + (1 - lambda_i) theta_i,
   and it is scored on its local test nodes and the global test graph.

Steps 1-2 are one executor call; step 5 is a second one, after the server's training.
p_i is the label distribution of the client's training nodes. Not built: the code's early
stopping (stop once the local loss exceeds 1.3 times its minimum); runs go for
``trainer.rounds``.
Ablations (``trainer.fedego.variant``): np, nr, ne (see :class:`trainers.config.FedEgoConfig`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
import typing
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clusters import Executor, PartyContext
from trainers.base import BYTES_PER_VALUE, TRAINERS, derive_seed
from trainers.config import EgoVariant, FedEgoConfig
from trainers.graph.common import (
    ClientModel,
    GraphState,
    GraphTrainer,
    Recipe,
    Scores,
    client_scores,
    mean_scores,
    train_client,
    views,
    worker_model,
)
from trainers.graph.data import GraphClient, GraphData, sample_tree, sizes_of
from trainers.models import get_flat, seeded, set_flat

__all__ = ["EgoUpload", "FedEgo", "mixed_ego_graphs", "mixing_weights"]

_UPLOAD_STREAM = 55
_SERVER_STREAM = 56


@dataclass(frozen=True)
class _Round:
    round: int
    init: np.ndarray
    """The initial model: a client's first round starts from it."""
    reduction: np.ndarray | None
    """The FedAvg of the reduction layers (None: each client keeps its own, nr)."""


@dataclass(frozen=True)
class EgoUpload:
    """A client's upload: its reduction layer (weighted by its training nodes) and its mixed
    ego-graphs."""

    reduction: np.ndarray
    nodes: int
    loss_sum: float
    loss_n: int
    levels: tuple[np.ndarray, ...]
    """The mixed ego-graphs' embeddings by hop: ``[M, d]``, ``[M, f1, d]``, ``[M, f1, f2, d]``
    (ne: the roots only)."""
    soft: np.ndarray
    """Their soft labels, ``[M, classes]``."""
    distribution: np.ndarray
    """The client's label distribution p_i."""

    @property
    def values(self) -> int:
        """Values sent for the ego-graphs and their labels."""
        return sum(level.size for level in self.levels) + self.soft.size


def mixed_ego_graphs(
    h: np.ndarray,
    client: GraphClient,
    fanout: tuple[int, ...],
    batch_size: int,
    n_classes: int,
    cfg: FedEgoConfig,
    rng: np.random.Generator,
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Step 2: the client's training nodes shuffled into batches; each batch's sampled trees
    of the embeddings ``h``, averaged slot by slot (or the batch's first node without Mixup),
    with the soft label, plus noise."""
    roots = rng.permutation(client.train)
    g = client.graph
    levels = sample_tree(g.indptr, g.indices, roots, fanout, rng)
    onehot = np.eye(n_classes)[g.y[roots]]
    starts = np.arange(0, len(roots), batch_size)
    if cfg.mixup:
        counts = np.diff(np.append(starts, len(roots)))
        trees = [
            np.add.reduceat(h[idx], starts, axis=0) / counts.reshape((-1,) + (1,) * idx.ndim)
            for idx in levels
        ]
        soft = np.add.reduceat(onehot, starts, axis=0) / counts[:, None]
    else:
        trees = [h[idx[starts]] for idx in levels]
        soft = onehot[starts]
    if cfg.sigma:
        trees = [t + rng.normal(0.0, cfg.sigma, t.shape) for t in trees]
    return tuple(t.astype(np.float32) for t in trees), soft.astype(np.float32)


def mixing_weights(
    distributions: list[np.ndarray], soft: np.ndarray, cfg: FedEgoConfig
) -> list[float]:
    """Step 4: each client's lambda_i = (||p_i - p_g||_1 / 2) ** lamb_c, p_g the mean of the
    uploaded soft labels ``soft`` (lamb_fixed: lamb_c itself)."""
    p_g = soft.mean(axis=0)
    if cfg.lamb_fixed:
        return [cfg.lamb_c] * len(distributions)
    return [(float(np.abs(p - p_g).sum()) / 2.0) ** cfg.lamb_c for p in distributions]


@dataclass(frozen=True)
class _Train:
    """Steps 1-2 at a client."""

    recipe: Recipe
    cfg: FedEgoConfig
    n_classes: int

    def __call__(self, ctx: PartyContext, payload: _Round) -> EgoUpload:
        model = worker_model(ctx, self.recipe.spec)
        record = ctx.get(ClientModel) or ClientModel(payload.init)
        weights = record.weights.copy()
        if payload.reduction is not None:
            weights[: model.reduction_size] = payload.reduction
        set_flat(model, weights)
        mine, _ = views(ctx)
        client: GraphClient = ctx.data
        loss_sum, n, optim = train_client(
            model, client, mine, self.recipe, payload.round, ctx.party_id, record.optim
        )
        flat = get_flat(model)
        ctx.put(ClientModel(flat, optim))
        levels: tuple[np.ndarray, ...] = ()
        soft = np.zeros((0, self.n_classes), dtype=np.float32)
        if self.cfg.variant != EgoVariant.np:
            model.eval()
            with torch.no_grad():
                h = model.embed(mine.x).numpy()
            fanout = () if self.cfg.variant == EgoVariant.ne else self.recipe.fanout
            rng = np.random.default_rng(
                derive_seed(self.recipe.seed, _UPLOAD_STREAM, payload.round, ctx.party_id)
            )
            levels, soft = mixed_ego_graphs(
                h, client, fanout, self.recipe.batch_size, self.n_classes, self.cfg, rng
            )
        w = len(client.train)
        return EgoUpload(
            flat[: model.reduction_size].astype(np.float64) * w,
            w,
            loss_sum,
            n,
            levels,
            soft,
            client.label_distribution(self.n_classes),
        )


@dataclass(frozen=True)
class _Mix:
    round: int
    server: np.ndarray
    """The server's personalisation layers (flat, after the reduction layer)."""
    lambdas: dict[int, float]


@dataclass(frozen=True)
class _Personalise:
    """Step 5 at a client."""

    recipe: Recipe

    def __call__(self, ctx: PartyContext, payload: _Mix) -> Scores:
        model = worker_model(ctx, self.recipe.spec)
        record = ctx.get(ClientModel)
        assert record is not None, "personalised before training"
        lam = payload.lambdas[ctx.party_id]
        weights = record.weights.copy()
        r = model.reduction_size
        weights[r:] = lam * payload.server + (1.0 - lam) * weights[r:]  # a new array: writable
        set_flat(model, weights)
        ctx.put(ClientModel(weights, record.optim))
        mine, test = views(ctx)
        return client_scores(model, ctx.data, mine, test)


class FedEgo(GraphTrainer):
    """FedEgo (see the module docstring); the logged model is the server's: the averaged
    reduction layer and the server's personalisation layers."""

    reads = GraphTrainer.reads | {"fedego"}

    def epoch_share(self) -> float:
        return self.config.fedego.train_share

    def begin(self, data: GraphData, executor: Executor, seed: int) -> GraphState:
        self._model = self.initial(data, seed)
        self._seed = seed
        self._init = get_flat(self._model)
        executor.load(data.clients, sizes=sizes_of(data.clients))
        self._ids = sorted(data.clients)
        recipe = dataclasses.replace(
            Recipe.of(self.config, self.spec(data), seed), share=self.epoch_share()
        )
        self._recipe = recipe
        self._train = _Train(recipe, self.config.fedego, data.n_classes)
        self._mix = _Personalise(recipe)
        return GraphState(weights=self._init.copy())

    def advance(self, state: GraphState, executor: Executor) -> tuple[int, dict[str, float]]:
        cfg, model = self.config.fedego, self._model
        start = time.perf_counter()
        r = model.reduction_size
        shared = cfg.variant != EgoVariant.nr
        ups: list[EgoUpload] = executor.map(
            self._train,
            self._ids,
            _Round(state.round, self._init, state.weights[:r] if shared else None),
        )
        nodes = sum(u.nodes for u in ups)
        if shared:
            total = typing.cast(np.ndarray, sum(u.reduction for u in ups))
            state.weights[:r] = (total / nodes).astype(np.float32)
        lambdas = {cid: 0.0 for cid in self._ids}
        if cfg.variant != EgoVariant.np:
            self._train_server(state, ups)
            soft = np.concatenate([u.soft for u in ups])
            mixing = mixing_weights([u.distribution for u in ups], soft, cfg)
            lambdas = dict(zip(self._ids, mixing))
        scores = executor.map(self._mix, self._ids, _Mix(state.round, state.weights[r:], lambdas))
        k = len(self._ids)
        sent_model = (2 * r * k if shared else 0) + (
            (state.weights.size - r) * k if cfg.variant != EgoVariant.np else 0
        )
        sent_model *= BYTES_PER_VALUE
        sent_graph = sum(u.values for u in ups) * BYTES_PER_VALUE
        state.total_bytes += sent_model + sent_graph
        return state.round, {
            "train_loss": sum(u.loss_sum for u in ups) / max(1, sum(u.loss_n for u in ups)),
            **mean_scores(self._ids, scores),
            "bytes_model": float(sent_model),
            "bytes_graph": float(sent_graph),
            "bytes_communicated": float(sent_model + sent_graph),
            "bytes_cumulative": float(state.total_bytes),
            "cross_edges_used": 0.0,
            "round_time_s": time.perf_counter() - start,
            "lambda_mean": float(np.mean(list(lambdas.values()))),
        }

    metrics = (*GraphTrainer.metrics, "lambda_mean")

    def _train_server(self, state: GraphState, ups: list[EgoUpload]) -> None:
        """Step 3: the server's personalisation layers on the uploaded ego-graphs."""
        cfg, model, recipe = self.config.fedego, self._model, self._recipe
        set_flat(model, state.weights)
        depth = len(recipe.fanout) + 1
        levels = [np.concatenate([u.levels[d] for u in ups]) for d in range(len(ups[0].levels))]
        if len(levels) < depth:  # ne: roots only, each its own neighbours
            root = levels[0]
            for d in range(1, depth):
                shape = (len(root), *recipe.fanout[:d], root.shape[-1])
                levels.append(np.broadcast_to(root.reshape(len(root), *([1] * d), -1), shape))
        soft = torch.from_numpy(np.concatenate([u.soft for u in ups]))
        tensors = [torch.from_numpy(np.ascontiguousarray(level)) for level in levels]
        params = [p for name, p in model.named_parameters() if not name.startswith("reduce.")]
        opt = recipe.optimizer_for(params)
        if state.server_optim is not None:
            opt.load_state_dict(state.server_optim)
        rng = np.random.default_rng(derive_seed(self._seed, _SERVER_STREAM, state.round))
        m = len(soft)
        model.train()
        with seeded(derive_seed(self._seed, _SERVER_STREAM, state.round, 1)):
            for _ in range(cfg.server_epochs):
                pick = rng.choice(m, size=max(1, int(round(cfg.server_share * m))), replace=False)
                for s in range(0, len(pick), recipe.batch_size):
                    rows = torch.from_numpy(pick[s : s + recipe.batch_size])
                    logits = model.tree([t[rows] for t in tensors])
                    loss = -(soft[rows] * F.log_softmax(logits, dim=1)).sum(1).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        state.server_optim = copy.deepcopy(opt.state_dict())
        state.weights[model.reduction_size :] = get_flat(model)[model.reduction_size :]


TRAINERS.register("fedego")(FedEgo)
