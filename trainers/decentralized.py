"""Decentralized proximal optimisation over a network: DSPG, DPSVRG and decentralized SGD.

n nodes, no server. Node i holds its samples and minimises, together with the others,

    F(x) = (1/n) sum_i f_i(x) + h(x),    h(x) = l1 ||x||_1 + (l2/2) ||x||^2,

where f_i is the mean loss over node i's samples (logistic, multinomial logistic or least
squares) of a linear model or of an MLP with one hidden ReLU layer, on the features plus a
constant 1. Each step every node mixes its neighbours'
models with the weights of W(t) (gossip, ``gossip_rounds`` times, along the edges of G(t)
only) and takes a local step:

DSPG (decentralized stochastic proximal gradient; the standard step, reconstructed)::

    y_i = sum_j W_ij(t) x_j ;  g_i = grad f_{i,xi}(x_i) ;  x_i = prox_{a_t h}(y_i - a_t g_i)
    a_t = a0 / sqrt(t + 1)    (or constant a0)

DPSVRG (Li et al., arXiv 2112.10389; the update rule is reconstructed from the abstract, as
ALGORITHMS.md section 1 sets out: an SVRG double loop with a proximal step)::

    every K steps, each node: x~_i = x_i ; mu_i = grad f_i(x~_i)       (local full gradient)
    y_i = sum_j W_ij(t) x_j
    v_i = grad f_{i,xi}(y_i) - grad f_{i,xi}(x~_i) + mu_i               (variance reduced)
    x_i = prox_{a h}(y_i - a v_i)                                        (constant a)

Decentralized SGD (reference): x_i = y_i - a_t (g_i + l1 sign(x_i) + l2 x_i), no prox.

prox_{a h}(z) = soft_threshold(z, a l1) / (1 + a l2). Minibatches are drawn without
replacement by ``numpy.random.default_rng([seed, 9, t, node])``, so an independent
implementation can reproduce the iterates exactly. Gradient evaluations are counted per
sample: |xi| per DSPG step, 2|xi| per DPSVRG step and m_i per snapshot.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clusters import Executor, PartyContext
from trainers.availability import AVAILABILITY_METRICS, Availability
from trainers.base import (
    TRAINERS,
    Budget,
    FederatedData,
    Federation,
    Invalid,
    PartyData,
    Reporter,
    RunState,
    Trainer,
    TrainResult,
    party_sizes,
)
from trainers.cache import CACHE
from trainers.config import Graph, Loss, TrainerConfig
from trainers.models import ModelConfig, ModelSpec, build_model
from trainers.topology import GraphSpec, Topology, without

__all__ = [
    "DPSVRG",
    "DSGD",
    "DSPG",
    "DPSVRGStep",
    "DSGDStep",
    "DSPGStep",
    "DecentralizedState",
    "NodeState",
    "NodeStep",
    "Problem",
    "gradient",
    "objective",
    "prox",
    "solve_reference",
]

_BATCH_STREAM = 9
_INIT_STREAM = 10


# ------------------------------------------------------------------ the problem


@dataclass(frozen=True)
class Problem:
    """The loss, the model and the regulariser every node shares."""

    loss: str
    n_classes: int
    l1: float = 0.0
    l2: float = 0.0
    hidden: int = 0
    """0: a linear model; h > 0: one hidden layer of h ReLU units (non-convex)."""

    @property
    def outputs(self) -> int:
        return 1 if self.loss == "logistic" else self.n_classes

    def dim(self, n_features: int) -> int:
        """Length of the parameter vector (each layer's weights with a bias row, flattened)."""
        if self.hidden:
            return (n_features + 1) * self.hidden + (self.hidden + 1) * self.outputs
        return (n_features + 1) * self.outputs

    def initial(self, n_features: int, seed: int) -> np.ndarray:
        """Every node's starting point: zeros for a linear model; for the MLP a seeded draw
        (all nodes the same), since zeros would leave every hidden unit identical."""
        if not self.hidden:
            return np.zeros(self.dim(n_features))
        rng = np.random.default_rng([seed, _INIT_STREAM])
        w1 = rng.normal(0.0, 1.0 / math.sqrt(n_features + 1), (n_features + 1) * self.hidden)
        w2 = rng.normal(0.0, 1.0 / math.sqrt(self.hidden + 1), (self.hidden + 1) * self.outputs)
        return np.concatenate([w1, w2])


def _design(x: np.ndarray) -> np.ndarray:
    return np.hstack([np.asarray(x, dtype=np.float64), np.ones((len(x), 1))])


def _head(p: Problem, b: np.ndarray, y: np.ndarray, w: np.ndarray, want_loss: bool):
    """The output layer: mean loss (or None), its gradient in w, and dloss/dlogits."""
    m = len(y)
    if p.loss == "logistic":
        s = np.where(y > 0, 1.0, -1.0)
        margin = s * (b @ w)
        dz = -(s * _sigmoid(-margin)) / m
        loss = float(np.mean(np.logaddexp(0.0, -margin))) if want_loss else None
        return loss, b.T @ dz, dz
    z = b @ w.reshape(b.shape[1], p.n_classes)
    onehot = np.eye(p.n_classes)[y]
    if p.loss == "multinomial":
        z = z - z.max(axis=1, keepdims=True)
        ez = np.exp(z)
        dz = (ez / ez.sum(axis=1, keepdims=True) - onehot) / m
        loss = (
            float(np.mean(np.log(ez.sum(axis=1)) - (z * onehot).sum(axis=1))) if want_loss else None
        )
        return loss, (b.T @ dz).ravel(), dz
    resid = z - onehot  # least squares on one-hot targets
    loss = float(0.5 * np.mean((resid**2).sum(axis=1))) if want_loss else None
    return loss, (b.T @ resid / m).ravel(), resid / m


def _loss_grad(p: Problem, a: np.ndarray, y: np.ndarray, w: np.ndarray, want_loss: bool):
    """Mean loss (or None) and its gradient over the rows (a, y), at w (flat)."""
    if not p.hidden:
        loss, grad, _ = _head(p, a, y, w, want_loss)
        return loss, grad
    n1 = a.shape[1] * p.hidden
    w1, w2 = w[:n1].reshape(a.shape[1], p.hidden), w[n1:]
    pre = a @ w1
    b = _design(np.maximum(pre, 0.0))
    loss, g2, dz = _head(p, b, y, w2, want_loss)
    w2m = w2.reshape(p.hidden + 1, p.outputs)
    db = np.outer(dz, w2m[:, 0]) if p.loss == "logistic" else dz @ w2m.T
    g1 = a.T @ (db[:, : p.hidden] * (pre > 0))  # backpropagation through the ReLU layer
    return loss, np.concatenate([g1.ravel(), g2])


def _logits(p: Problem, a: np.ndarray, w: np.ndarray) -> np.ndarray:
    if p.hidden:
        n1 = a.shape[1] * p.hidden
        a, w = _design(np.maximum(a @ w[:n1].reshape(a.shape[1], p.hidden), 0.0)), w[n1:]
    return a @ w.reshape(a.shape[1], p.outputs)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def gradient(p: Problem, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """grad of the mean loss over samples (x, y) at w (x without the bias column)."""
    return _loss_grad(p, _design(x), y, w, False)[1]


def prox(p: Problem, z: np.ndarray, step: float) -> np.ndarray:
    """prox_{step h}(z) for h = l1 ||.||_1 + (l2/2) ||.||^2."""
    out = np.sign(z) * np.maximum(np.abs(z) - step * p.l1, 0.0) if p.l1 else z
    return out / (1.0 + step * p.l2) if p.l2 else out


def objective(p: Problem, nodes: list[PartyData], w: np.ndarray) -> float:
    """F(w) = (1/n) sum_i f_i(w) + h(w)."""
    losses = [_loss_grad(p, _design(d.x), d.y, w, True)[0] for d in nodes]
    return float(np.mean(losses) + p.l1 * np.abs(w).sum() + 0.5 * p.l2 * w @ w)


def smoothness(p: Problem, nodes: list[PartyData]) -> float:
    """An upper bound on the largest node's gradient Lipschitz constant."""
    factor = {"logistic": 0.25, "multinomial": 0.5, "least_squares": 1.0}[p.loss]
    return float(max(factor * np.linalg.norm(_design(d.x), 2) ** 2 / len(d) for d in nodes))


def solve_reference(
    p: Problem,
    nodes: list[PartyData],
    cache_dir: str | None = None,
    iters: int = 20000,
    start: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """The reference point and value that suboptimality is measured against.

    Linear models (convex): x* and F* = F(x*) by FISTA with step 1/L on the whole problem, to
    high precision. The MLP (non-convex): a local optimum, by proximal gradient with
    backtracking from ``start`` (the nodes' common starting point), ``iters // 4`` steps.
    Cached by the problem, the data and the start: in the process cache, and under
    ``cache_dir`` (an absolute path) as JSON.
    """
    digest = hashlib.sha256(json.dumps([p.loss, p.n_classes, p.l1, p.l2, p.hidden]).encode())
    for d in nodes:
        digest.update(np.ascontiguousarray(d.x, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(d.y, dtype=np.int64).tobytes())
    x0 = np.zeros(p.dim(nodes[0].x.shape[1])) if start is None else np.asarray(start, float)
    if p.hidden:
        digest.update(x0.tobytes())
    key = digest.hexdigest()[:24]

    def compute() -> tuple[np.ndarray, float]:
        path = Path(cache_dir) / f"fstar-{key}.json" if cache_dir else None
        if path is not None and path.is_file():
            blob = json.loads(path.read_text())
            return np.array(blob["x"]), float(blob["f"])
        designs = [(_design(d.x), d.y) for d in nodes]
        if p.hidden:
            w = _prox_gradient(p, designs, x0, iters // 4)
        else:
            w = _fista(p, nodes, designs, iters)
        result = (w, objective(p, nodes, w))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"x": w.tolist(), "f": result[1]}))
        return result

    return CACHE.get("decentralized.reference", key, compute)


def _smooth_part(p: Problem, designs, w: np.ndarray) -> tuple[float, np.ndarray]:
    parts = [_loss_grad(p, a, y, w, True) for a, y in designs]
    return float(np.mean([f for f, _ in parts])), np.mean([g for _, g in parts], axis=0)


def _fista(p: Problem, nodes, designs, iters: int) -> np.ndarray:
    step = 1.0 / (smoothness(p, nodes) + p.l2)
    w = v = np.zeros(p.dim(nodes[0].x.shape[1]))
    tk = 1.0
    for _ in range(iters):
        g = np.mean([_loss_grad(p, a, y, v, False)[1] for a, y in designs], axis=0)
        w_next = prox(p, v - step * g, step)
        t_next = (1 + math.sqrt(1 + 4 * tk * tk)) / 2
        v = w_next + ((tk - 1) / t_next) * (w_next - w)
        if np.linalg.norm(w_next - w) < 1e-13 * max(1.0, float(np.linalg.norm(w))):
            return w_next
        w, tk = w_next, t_next
    return w


def _prox_gradient(p: Problem, designs, w: np.ndarray, iters: int) -> np.ndarray:
    """Proximal gradient with a backtracking step (the non-convex case has no global L)."""
    lip = 1.0
    f, g = _smooth_part(p, designs, w)
    for _ in range(iters):
        while True:
            nxt = prox(p, w - g / lip, 1.0 / lip)
            f_next, g_next = _smooth_part(p, designs, nxt)
            d = nxt - w
            if f_next <= f + g @ d + 0.5 * lip * (d @ d) + 1e-15:
                break
            lip *= 2.0
        if np.linalg.norm(d) < 1e-12 * max(1.0, float(np.linalg.norm(w))):
            return nxt
        w, f, g, lip = nxt, f_next, g_next, max(lip / 1.5, 1e-3)
    return w


# ------------------------------------------------------------------ what a node computes


@dataclass(frozen=True)
class StepPayload:
    """What the network delivers to the nodes at step t."""

    t: int
    mixed: np.ndarray
    """Row i: y_i, node i's mix of its neighbours' models (only row i is node i's)."""
    step: float
    snapshot: bool = False
    """DPSVRG: take a snapshot and its local full gradient before this step."""


@dataclass(frozen=True)
class NodeUpdate:
    x: np.ndarray
    grad_evals: int


@dataclass
class NodeState:
    """What a node keeps between steps (its samples, with the constant column, are derived
    from its data again wherever it runs: ``_design_of``)."""

    x: np.ndarray
    """Its current model."""
    snapshot: np.ndarray | None = None
    """DPSVRG: x~, the model at the last snapshot."""
    full_gradient: np.ndarray | None = None
    """DPSVRG: mu, the local full gradient at the snapshot."""


@dataclass(frozen=True)
class NodeStep(abc.ABC):
    """One node's local step (the party function the executor runs); each algorithm is a
    subclass with its own :meth:`update`."""

    problem: Problem
    batch_size: int
    seed: int

    def __call__(self, ctx: PartyContext, payload: StepPayload) -> NodeUpdate:
        design, y = _design_of(ctx)
        st = ctx.get(NodeState)
        if st is None:  # step 0: every node's start, mixed
            st = NodeState(payload.mixed[ctx.party_id].copy())
            ctx.put(st)
        evals = self.prepare(st, design, y, payload)
        m = len(y)
        rng = np.random.default_rng([self.seed, _BATCH_STREAM, payload.t, ctx.party_id])
        batch = rng.choice(m, size=min(self.batch_size, m), replace=False)
        st.x = self.update(st, design[batch], y[batch], payload.mixed[ctx.party_id], payload.step)
        evals += self.evals_per_sample * len(batch)
        return NodeUpdate(st.x, evals)

    evals_per_sample = 1
    """Sample gradients one step takes per minibatch sample."""

    def prepare(
        self, st: NodeState, design: np.ndarray, y: np.ndarray, payload: StepPayload
    ) -> int:
        """Work before the step; returns the sample gradients it took."""
        return 0

    @abc.abstractmethod
    def update(
        self, st: NodeState, ab: np.ndarray, yb: np.ndarray, mixed: np.ndarray, alpha: float
    ) -> np.ndarray:
        """The node's new model from its minibatch (ab, yb), its mix y_i and the step."""


def _design_of(ctx: PartyContext) -> tuple[np.ndarray, np.ndarray]:
    """A node's samples with the constant column, and its labels (derived, kept in scratch)."""
    cached = ctx.scratch.get("design")
    if cached is None:
        data: PartyData = ctx.data
        cached = ctx.scratch["design"] = (_design(data.x), np.asarray(data.y))
    return cached


class DSPGStep(NodeStep):
    """x_i = prox_{a h}(y_i - a grad f_{i,xi}(x_i))."""

    def update(self, st, ab, yb, mixed, alpha):
        g = _loss_grad(self.problem, ab, yb, st.x, False)[1]
        return prox(self.problem, mixed - alpha * g, alpha)


class DPSVRGStep(NodeStep):
    """The variance-reduced step from y_i, with a snapshot and full gradient every K steps."""

    evals_per_sample = 2

    def prepare(
        self, st: NodeState, design: np.ndarray, y: np.ndarray, payload: StepPayload
    ) -> int:
        if not payload.snapshot and st.snapshot is not None:
            return 0  # (a node that was absent at the snapshot step takes one on its return)
        st.snapshot = st.x.copy()
        st.full_gradient = _loss_grad(self.problem, design, y, st.snapshot, False)[1]
        return len(y)

    def update(self, st, ab, yb, mixed, alpha):
        p = self.problem
        v = _loss_grad(p, ab, yb, mixed, False)[1] - _loss_grad(p, ab, yb, st.snapshot, False)[1]
        return prox(p, mixed - alpha * (v + st.full_gradient), alpha)


class DSGDStep(NodeStep):
    """A subgradient step on the whole objective, no prox."""

    def update(self, st, ab, yb, mixed, alpha):
        p = self.problem
        g = _loss_grad(p, ab, yb, st.x, False)[1] + p.l1 * np.sign(st.x) + p.l2 * st.x
        return mixed - alpha * g


# ------------------------------------------------------------------ the trainers


class Decentralized(Trainer[FederatedData, "DecentralizedState"]):
    """The shared round loop: gossip along G(t), every node's local step, metrics.

    Args:
        config: ``decentralized`` settings (problem, topology, steps, budget).
        model: unused (the models are linear in the problem's parameters).
    """

    step_cls: type[NodeStep] = DSPGStep
    """What each node computes per step."""
    reads = frozenset({"decentralized", "dropout", "stragglers"})
    unused = {
        "rounds": "its budget is trainer.decentralized.epochs and max_steps",
        "lr": "its steps are trainer.decentralized.a0 (dspg, dsgd) or alpha (dpsvrg)",
        "batch_size": "set trainer.decentralized.batch_size",
    }
    metrics = (
        "suboptimality",
        "objective",
        "consensus_error",
        "test_accuracy",
        "sparsity",
        "epochs",
        "grad_evals",
        "comm_rounds",
        "step_size",
        "spectral_gap",
        "step_time_s",
        *AVAILABILITY_METRICS,
        "epochs_to_target",
        "loglog_slope",
    )

    headline = ("suboptimality", "test_accuracy", "epochs")

    def __init__(self, config: TrainerConfig, model: ModelConfig) -> None:
        super().__init__(config, model)
        self.hidden = model.hidden[0] if model.name == "mlp" else 0

    @classmethod
    def validate(cls, config: TrainerConfig, model: ModelConfig, federation: Federation) -> None:
        name = cls.__name__.lower()
        if model.name not in ("logreg", "mlp"):
            raise Invalid("model.name", f"{name} trains logreg or an mlp with one hidden layer")
        if model.name == "mlp" and len(model.hidden) != 1:
            raise Invalid("model.hidden", f"{name}'s mlp has one hidden layer: [width]")
        d, parties = config.decentralized, federation.parties
        if parties < 2:
            raise Invalid("partition.num_parties", "a network needs at least 2 nodes")
        if d.topology == Graph.regular and (d.k >= parties or d.k * parties % 2):
            raise Invalid(
                "trainer.decentralized.k",
                f"no {d.k}-regular graph on {parties} nodes (need k < n and k * n even)",
            )

    def check(self, data: FederatedData) -> None:
        if self.config.decentralized.loss == Loss.logistic and data.n_classes != 2:
            raise Invalid(
                "trainer.decentralized.loss",
                f"logistic needs 2 classes, the data has {data.n_classes}: use multinomial",
            )

    def plots(self) -> tuple[str, ...]:
        return ("convergence", "network")

    def budget(self) -> Budget:
        return Budget(
            self.config.decentralized.epochs,
            "epoch",
            counter="epochs",
            shown=(("sub", "suboptimality", ".2e"), ("acc", "test_accuracy", ".4f")),
        )

    def step_size(self, t: int) -> float:
        c = self.config.decentralized
        return c.a0 / math.sqrt(t + 1) if c.schedule == "diminishing" else c.a0

    def snapshot(self, t: int, inner: int) -> bool:
        return False

    def begin(self, data: FederatedData, executor: Executor, seed: int) -> DecentralizedState:
        c = self.config.decentralized
        ids = sorted(data.parties)
        nodes = [data.parties[i] for i in ids]
        if ids != list(range(len(ids))):
            raise ValueError("decentralized nodes must be numbered 0..n-1")
        problem = Problem(c.loss, data.n_classes, c.l1, c.l2, self.hidden)
        topology = Topology(GraphSpec.of(c), len(ids), seed=seed)
        x0 = problem.initial(data.n_features, seed)
        _, f_star = solve_reference(problem, nodes, c.cache_dir, start=x0)
        executor.load(data.parties, sizes=party_sizes(data.parties))
        total = sum(len(d) for d in nodes)
        self._run = _DecentralizedRun(
            data=data,
            nodes=nodes,
            ids=ids,
            problem=problem,
            topology=topology,
            gap=topology.gap,
            f_star=f_star,
            task=self.step_cls(problem, c.batch_size, seed),
            total=total,
            inner=c.inner_steps or max(1, math.ceil(total / len(nodes) / c.batch_size)),
            test_design=_design(data.x_test),
            availability=Availability(self.config, party_sizes(data.parties), seed),
        )
        return DecentralizedState(x=np.tile(x0, (len(ids), 1)))

    def done(self, state: DecentralizedState) -> bool:
        c = self.config.decentralized
        return not (state.grad_evals < c.epochs * self._run.total and state.t < c.max_steps)

    def advance(
        self, state: DecentralizedState, executor: Executor
    ) -> tuple[int, dict[str, float]] | None:
        """Steps until the next evaluation (or the end of the budget, which may come between
        evaluations: then there is nothing to report)."""
        c, run = self.config.decentralized, self._run
        budget = c.epochs * run.total
        while not self.done(state):
            t = state.t
            start = time.perf_counter()
            w = run.topology.matrix(t)
            answers = run.availability.answers(t, run.ids)
            up = answers.answered
            if len(up) < len(run.ids):  # nodes that drop out skip the step; the rest mix without
                w = without(w, sorted(set(run.ids) - set(up)))
            rounds = self.gossip_rounds(t)
            mixed = state.x
            for _ in range(rounds):  # W(t) is zero off G(t)'s edges: messages follow edges
                mixed = w @ mixed
            state.comm += rounds
            payload = StepPayload(t, mixed, self.step_size(t), self.snapshot(t, run.inner))
            updates = executor.map(run.task, up, payload) if up else []
            if len(up) == len(run.ids) and all(np.isfinite(u.x).all() for u in updates):
                state.x = np.stack([u.x for u in updates])
            else:  # the absent keep their models; a model that is not finite is discarded
                x = mixed.copy()
                if up:  # a step that no node answered in time leaves every model mixed only
                    x[up] = [
                        u.x if np.isfinite(u.x).all() else state.x[i] for i, u in zip(up, updates)
                    ]
                state.discarded += sum(not np.isfinite(u.x).all() for u in updates)
                state.x = x
            state.dropped += answers.dropped
            state.straggled += answers.straggled
            state.grad_evals += sum(u.grad_evals for u in updates)
            elapsed = time.perf_counter() - start
            state.t += 1
            if t % c.eval_every == 0 or state.grad_evals >= budget:
                return t, self._evaluate(state, payload.step, elapsed)
        return None

    def _evaluate(self, state: DecentralizedState, step: float, elapsed: float) -> dict[str, float]:
        run, x = self._run, state.x
        xbar = x.mean(axis=0)
        f = objective(run.problem, run.nodes, xbar)
        return {
            "suboptimality": max(f - run.f_star, 0.0),
            "objective": f,
            "consensus_error": float(np.mean(((x - xbar) ** 2).sum(axis=1))),
            "test_accuracy": _accuracy(run.problem, run.test_design, run.data.y_test, xbar),
            "sparsity": float(np.mean(np.abs(xbar) < 1e-12)),
            "epochs": state.grad_evals / run.total,
            "grad_evals": float(state.grad_evals),
            "comm_rounds": float(state.comm),
            "step_size": step,
            "spectral_gap": run.gap,
            "step_time_s": elapsed,
            **state.absences(),
        }

    def end(self, state: DecentralizedState, executor: Executor, reporter: Reporter) -> TrainResult:
        c, run, history = self.config.decentralized, self._run, state.history
        if history:  # run summaries, reported with the last evaluation
            summary = _summary(history, c.target)
            history[-1].update(summary)
            reporter.report(int(history[-1]["round"]) + 1, summary)
        x = state.x
        return TrainResult(
            _consensus_model(x.mean(axis=0), run.problem, run.data.n_features),
            history,
            {
                "network": [
                    {
                        "graph": c.topology,
                        "varying": c.varying,
                        "nodes": len(run.ids),
                        "edges": int(len(run.topology.edges)),
                        "spectral_gap": run.gap,
                        "f_star": run.f_star,
                        "inner_steps": run.inner if self.step_cls is DPSVRGStep else 0,
                    }
                ],
                "edges": [{"u": int(u), "v": int(v)} for u, v in run.topology.edges],
                "nodes": [{"node": i, "x": x[i].tolist()} for i in run.ids],
            },
        )

    def gossip_rounds(self, t: int) -> int:
        c = self.config.decentralized
        if c.gossip_growth > 0:
            return max(c.gossip_rounds, math.ceil(c.gossip_growth * math.log(t + 2)))
        return c.gossip_rounds


def _summary(history: list[dict[str, float]], target: float) -> dict[str, float]:
    """Epochs until the suboptimality first reached ``target`` (NaN: never), and the slope of
    log suboptimality against log t over the second half of the run."""
    reached = [h["epochs"] for h in history if h["suboptimality"] <= target]
    tail = history[len(history) // 2 :]
    t = np.log(np.array([h["round"] for h in tail]) + 1.0)
    sub = np.log(np.maximum([h["suboptimality"] for h in tail], 1e-300))
    slope = float(np.polyfit(t, sub, 1)[0]) if len(tail) > 1 and np.ptp(t) > 0 else math.nan
    return {"epochs_to_target": reached[0] if reached else math.nan, "loglog_slope": slope}


def _accuracy(p: Problem, design: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    z = _logits(p, design, w)
    pred = (z[:, 0] > 0).astype(np.int64) if p.loss == "logistic" else z.argmax(axis=1)
    return float(np.mean(pred == y))


@dataclass
class DecentralizedState(RunState):
    """A network's state between evaluations: every node's model (the nodes keep their own
    snapshots) and the counts of work done."""

    x: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    """Row i: node i's model."""
    t: int = 0
    """Steps taken."""
    grad_evals: int = 0
    comm: int = 0
    dropped: int = 0
    """Nodes that dropped out of a step since the last evaluation (and the same below)."""
    straggled: int = 0
    discarded: int = 0

    def absences(self) -> dict[str, float]:
        """The steps' absences since the last evaluation, as metrics; the counts restart."""
        out = {
            "dropped": float(self.dropped),
            "straggled": float(self.straggled),
            "discarded": float(self.discarded),
        }
        self.dropped = self.straggled = self.discarded = 0
        return out


@dataclass
class _DecentralizedRun:
    """What stays the same for a whole run (rebuilt by :meth:`Decentralized.begin`)."""

    data: FederatedData
    nodes: list[PartyData]
    ids: list[int]
    problem: Problem
    topology: Topology
    gap: float
    f_star: float
    task: NodeStep
    total: int
    inner: int
    test_design: np.ndarray
    availability: Availability


class DSPG(Decentralized):
    """Decentralized stochastic proximal gradient."""

    step_cls = DSPGStep


class DPSVRG(Decentralized):
    """Decentralized proximal SVRG: constant step, a snapshot every K inner steps."""

    step_cls = DPSVRGStep

    def step_size(self, t: int) -> float:
        return self.config.decentralized.alpha

    def snapshot(self, t: int, inner: int) -> bool:
        return t % inner == 0


class DSGD(Decentralized):
    """Plain decentralized SGD with a subgradient of h (the reference)."""

    step_cls = DSGDStep


def _consensus_model(w: np.ndarray, problem: Problem, n_features: int):
    """x_bar as the registered ``logreg`` or ``mlp`` module. A binary logistic output becomes
    logits (0, z): the same argmax, and the softmax equals the sigmoid."""
    import torch

    def layer(flat: np.ndarray, fan_in: int, two_class: bool) -> tuple[np.ndarray, np.ndarray]:
        m = flat.reshape(fan_in + 1, -1)
        if two_class:
            m = np.hstack([np.zeros_like(m), m])
        return m[:-1].T, m[-1]

    binary = problem.loss == "logistic"
    if problem.hidden:
        n1 = (n_features + 1) * problem.hidden
        shapes = [
            layer(w[:n1], n_features, False),
            layer(w[n1:], problem.hidden, binary),
        ]
        spec = ModelSpec("mlp", n_features, shapes[1][1].size, (problem.hidden,))
    else:
        shapes = [layer(w, n_features, binary)]
        spec = ModelSpec("logreg", n_features, shapes[0][1].size)
    model = build_model(spec, seed=0)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for lin, (weight, bias) in zip(linears, shapes):
            lin.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
            lin.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    return model


TRAINERS.register("dspg")(DSPG)
TRAINERS.register("dpsvrg")(DPSVRG)
TRAINERS.register("dsgd")(DSGD)
