"""Decentralized optimisation: topologies, proximal steps, and the platform's DSPG and DPSVRG
iterates against a small independent NumPy implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clusters import InProcessExecutor
from orchestrator import ConfigError
from orchestrator.config import load_config
from trainers import DPSVRG, DSPG
from trainers.base import FederatedData, PartyData
from trainers.config import DecentralizedConfig, TrainerConfig
from trainers.decentralized import Problem, objective, prox, solve_reference
from trainers.models import ModelConfig
from trainers.topology import GraphSpec, Topology, metropolis_hastings, spectral_gap

from .conftest import Sink, tiny

# ------------------------------------------------------------------ an independent reference
# Written from the update rules in ALGORITHMS.md section 1, sharing nothing with the platform
# but the documented minibatch rule: default_rng([seed, 9, t, node]).choice(m, b, replace=False).


def ref_ring_w(n):
    w = np.zeros((n, n))
    for i in range(n):
        w[i, (i - 1) % n] = w[i, (i + 1) % n] = 1 / 3  # Metropolis-Hastings, all degrees 2
        w[i, i] = 1 / 3
    return w


def ref_grad(a, s, x):
    """Mean logistic loss gradient, labels s in {-1, +1}, a with the bias column."""
    return -(a.T @ (s / (1 + np.exp(s * (a @ x))))) / len(s)


def ref_prox(z, step, l1, l2):
    return np.sign(z) * np.maximum(np.abs(z) - step * l1, 0) / (1 + step * l2)


def ref_run(nodes, algorithm, steps, step_size, batch, seed, l1, l2, inner):
    n = len(nodes)
    a = [np.hstack([x, np.ones((len(x), 1))]) for x, _ in nodes]
    s = [np.where(y > 0, 1.0, -1.0) for _, y in nodes]
    w = ref_ring_w(n)
    x = np.zeros((n, a[0].shape[1]))
    snap, mu = x.copy(), np.zeros_like(x)
    for t in range(steps):
        y = w @ x
        new = np.empty_like(x)
        for i in range(n):
            m = len(s[i])
            if algorithm == "dpsvrg" and t % inner == 0:
                snap[i] = x[i]
                mu[i] = ref_grad(a[i], s[i], snap[i])
            idx = np.random.default_rng([seed, 9, t, i]).choice(m, size=batch, replace=False)
            if algorithm == "dpsvrg":
                v = ref_grad(a[i][idx], s[i][idx], y[i]) - ref_grad(a[i][idx], s[i][idx], snap[i])
                new[i] = ref_prox(y[i] - step_size(t) * (v + mu[i]), step_size(t), l1, l2)
            else:
                g = ref_grad(a[i][idx], s[i][idx], x[i])
                new[i] = ref_prox(y[i] - step_size(t) * g, step_size(t), l1, l2)
        x = new
    return x


def small_problem(n=5, m=12, d=3, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=d)
    nodes = []
    for _ in range(n):
        x = rng.normal(size=(m, d))
        y = (x @ truth + 0.5 * rng.normal(size=m) > 0).astype(np.int64)
        nodes.append((x, y))
    parties = {i: PartyData(x.astype(np.float64), y) for i, (x, y) in enumerate(nodes)}
    xt = rng.normal(size=(20, d))
    data = FederatedData(parties, xt, (xt @ truth > 0).astype(np.int64), d, 2)
    return nodes, data


def platform_iterates(cls, data, **settings):
    cfg = TrainerConfig(
        decentralized=DecentralizedConfig(
            topology="ring", epochs=1e9, cache_dir=None, eval_every=1, **settings
        )
    )
    result = cls(cfg, ModelConfig(name="logreg")).fit(data, InProcessExecutor(), Sink(), seed=7)
    return np.array([row["x"] for row in result.tables["nodes"]]), result


@pytest.mark.parametrize("l2", [0.0, 0.05])
def test_dspg_iterates_match_the_independent_implementation(l2):
    nodes, data = small_problem()
    ours, _ = platform_iterates(DSPG, data, max_steps=25, a0=0.4, l1=0.02, l2=l2, batch_size=4)
    theirs = ref_run(nodes, "dspg", 25, lambda t: 0.4 / math.sqrt(t + 1), 4, 7, 0.02, l2, None)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)


def test_dpsvrg_iterates_match_the_independent_implementation():
    nodes, data = small_problem()
    ours, result = platform_iterates(
        DPSVRG, data, max_steps=25, alpha=0.3, l1=0.02, batch_size=4, inner_steps=3
    )
    theirs = ref_run(nodes, "dpsvrg", 25, lambda t: 0.3, 4, 7, 0.02, 0.0, 3)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)
    # gradient evaluations: 9 snapshots of 12 samples and 25 steps of 2 x 4, on 5 nodes
    assert result.history[-1]["grad_evals"] == 5 * (9 * 12 + 25 * 8)
    assert result.history[-1]["comm_rounds"] == 25


def test_dpsvrg_gets_far_closer_to_the_optimum_than_dspg_per_step():
    nodes, data = small_problem(n=4, m=20)
    settings = {"l1": 0.01, "l2": 0.0, "batch_size": 4, "max_steps": 1000}
    _, vr = platform_iterates(DPSVRG, data, alpha=0.5, inner_steps=5, **settings)
    _, sg = platform_iterates(DSPG, data, a0=0.5, **settings)
    ratios = [a["suboptimality"] / b["suboptimality"] for a, b in zip(vr.history, sg.history)]
    assert max(ratios[100:]) < 0.1
    # It does not reach F* exactly: with heterogeneous nodes, averaging after the prox (and
    # snapshots at the nodes' own iterates) leaves a floor that shrinks with alpha.
    assert 1e-8 < vr.history[-1]["suboptimality"] < 1e-4


def test_prox_soft_thresholds_and_shrinks():
    p = Problem("logistic", 2, l1=1.0, l2=1.0)
    # (3 - 0.5) / 1.5, 0 inside the threshold, (-2 + 0.5) / 1.5
    np.testing.assert_allclose(prox(p, np.array([3.0, -0.5, -2.0]), 0.5), [5 / 3, 0.0, -1.0])
    assert np.array_equal(prox(Problem("logistic", 2), np.array([1.5]), 0.3), [1.5])


def test_reference_optimum_satisfies_the_optimality_condition():
    _, data = small_problem()
    nodes = [data.parties[i] for i in sorted(data.parties)]
    p = Problem("logistic", 2, l1=0.02)
    x, f = solve_reference(p, nodes)
    assert f == pytest.approx(objective(p, nodes, x))
    # a prox-gradient step from x* stays at x*
    from trainers.decentralized import gradient

    g = np.mean([gradient(p, d.x, d.y, x) for d in nodes], axis=0)
    np.testing.assert_allclose(prox(p, x - 0.1 * g, 0.1), x, atol=1e-8)


@pytest.mark.parametrize(
    ("graph", "n", "edges"),
    [("ring", 16, 16), ("torus", 16, 32), ("star", 8, 7), ("complete", 6, 15), ("regular", 12, 24)],
)
def test_topologies_are_connected_with_doubly_stochastic_weights(graph, n, edges):
    topo = Topology(GraphSpec(graph, k=4), n, seed=3)
    assert len(topo.edges) == edges
    w = topo.matrix(0)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert 0 < topo.gap <= 1


def test_spectral_gap_orders_graphs_by_how_fast_they_mix():
    ring = Topology(GraphSpec("ring"), 16).gap
    torus = Topology(GraphSpec("torus"), 16).gap
    complete = Topology(GraphSpec("complete"), 16).gap
    assert ring < torus < complete == pytest.approx(1.0)
    # ring of n with weights 1/3: eigenvalues (1 + 2 cos(2 pi k / n)) / 3
    assert ring == pytest.approx(1 - (1 + 2 * math.cos(2 * math.pi / 16)) / 3)
    lazy = metropolis_hastings(
        Topology(GraphSpec("ring"), 16).adjacency(Topology(GraphSpec("ring"), 16).edges), True
    )
    assert spectral_gap(lazy) == pytest.approx(ring / 2)


def test_erdos_renyi_is_redrawn_until_connected_and_seeded():
    a = Topology(GraphSpec("erdos_renyi", p=0.15), 16, seed=1)
    b = Topology(GraphSpec("erdos_renyi", p=0.15), 16, seed=1)
    assert np.array_equal(a.edges, b.edges) and a.gap > 0


def test_time_varying_graphs_use_only_base_edges():
    topo = Topology(GraphSpec("torus", varying="edges", q=0.5), 16, seed=0)
    base = {tuple(e) for e in topo.edges.tolist()}
    kept = [len(topo.edges_at(t)) for t in range(50)]
    assert all({tuple(e) for e in topo.edges_at(t).tolist()} <= base for t in range(5))
    assert 8 < np.mean(kept) < 24  # about half of 32
    cycle = Topology(GraphSpec("ring", varying="cycle", b=3), 12)
    union = set().union(*({tuple(e) for e in cycle.edges_at(t).tolist()} for t in range(3)))
    assert union == {tuple(e) for e in cycle.edges.tolist()}
    assert all(spectral_gap(cycle.matrix(t)) < 1e-9 for t in range(3))  # each one disconnected
    assert cycle.gap > 0  # their product mixes


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.name=dspg", "model.name=cnn"], "model.name: dspg trains logreg or an mlp"),
        (["trainer.name=dspg", "model.hidden=[8,8]"], "model.hidden: dspg's mlp has one hidden"),
        (
            ["trainer.name=dspg", "model.name=logreg", "trainer.decentralized.topology=mesh"],
            "valid: complete, erdos_renyi, regular, ring, star, torus",
        ),
        (
            [
                "trainer.name=dpsvrg",
                "model.name=logreg",
                "trainer.decentralized.topology=regular",
                "trainer.decentralized.k=3",
                "partition.num_parties=5",
            ],
            "no 3-regular graph on 5 nodes",
        ),
    ],
)
def test_bad_decentralized_settings_are_config_errors(overrides, message):
    base = tiny()
    base["trainer"] = {"name": "dspg"}  # the decentralized trainers read no rounds or lr
    with pytest.raises(ConfigError, match=message):
        load_config(base, overrides)


def test_nodes_on_ray_give_the_same_iterates(ray_session):
    from clusters import RayExecutor

    _, data = small_problem()
    cfg = TrainerConfig(
        decentralized=DecentralizedConfig(
            topology="torus", varying="edges", max_steps=12, epochs=1e9, cache_dir=None
        )
    )
    local = DPSVRG(cfg, ModelConfig(name="logreg")).fit(data, InProcessExecutor(), Sink(), seed=1)
    pool = RayExecutor(num_workers=2)
    try:
        remote = DPSVRG(cfg, ModelConfig(name="logreg")).fit(data, pool, Sink(), seed=1)
    finally:
        pool.close()
    assert local.tables["nodes"] == remote.tables["nodes"]
    assert [h["objective"] for h in local.history] == [h["objective"] for h in remote.history]


def test_run_logs_curves_network_and_gap(tracking_uri):
    from mlflow import MlflowClient

    from orchestrator.runner import run

    result = run(
        tiny(
            data={"name": "breast_cancer"},
            partition={"name": "iid", "num_parties": 6},
            model={"name": "logreg"},
            trainer={"name": "dspg", "decentralized": {"epochs": 2, "topology": "ring"}},
            tracking={"enabled": True, "uri": tracking_uri, "log_model": False},
        )
    )
    client = MlflowClient(tracking_uri)
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"convergence.png", "network.png"} <= names
    tables = {a.path for a in client.list_artifacts(result.run_id, "tables")}
    assert "tables/network.parquet" in tables
    gap = client.get_run(result.run_id).data.metrics["spectral_gap"]
    assert gap == pytest.approx(1 - (1 + 2 * math.cos(2 * math.pi / 6)) / 3)
    assert math.isnan(result.metrics["epochs_to_target"])  # 1e-4 is not reached in 2 epochs


@pytest.mark.parametrize("loss", ["logistic", "multinomial", "least_squares"])
def test_mlp_gradient_matches_finite_differences(loss):
    from trainers.decentralized import _design, _loss_grad

    rng = np.random.default_rng(0)
    a, y = _design(rng.normal(size=(9, 4))), rng.integers(0, 2 if loss == "logistic" else 3, 9)
    p = Problem(loss, 2 if loss == "logistic" else 3, hidden=5)
    w = p.initial(4, seed=1)
    _, g = _loss_grad(p, a, y, w, False)
    eps = 1e-6
    numeric = [
        (_loss_grad(p, a, y, w + eps * e, True)[0] - _loss_grad(p, a, y, w - eps * e, True)[0])
        / (2 * eps)
        for e in np.eye(len(w))
    ]
    np.testing.assert_allclose(g, numeric, atol=1e-7)


def test_mlp_nodes_train_and_the_logged_model_predicts_like_the_iterate():
    import torch

    from trainers.decentralized import _design, _logits

    _, data = small_problem(n=4, m=20)
    cfg = TrainerConfig(
        decentralized=DecentralizedConfig(
            topology="complete", epochs=30, cache_dir=None, alpha=0.2, batch_size=5
        )
    )
    model_cfg = load_config(tiny(model={"name": "mlp", "hidden": [6]})).model
    result = DPSVRG(cfg, model_cfg).fit(data, InProcessExecutor(), Sink(), seed=2)
    first, last = result.history[0], result.history[-1]
    assert last["objective"] < 0.8 * first["objective"]
    xbar = np.mean([row["x"] for row in result.tables["nodes"]], axis=0)
    ours = _logits(Problem("logistic", 2, hidden=6), _design(data.x_test), xbar)[:, 0]
    with torch.no_grad():
        logits = result.model(torch.from_numpy(data.x_test.astype(np.float32))).numpy()
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], ours, atol=1e-4)


def test_cli_runs_a_decentralized_mlp(workdir):
    import subprocess
    import sys

    from .conftest import CONFIGS

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            str(CONFIGS / "decentralized_breast_cancer.yaml"),
            "trainer.decentralized.epochs=3",
            "model.name=mlp",
            "model.hidden=[8]",
            "runtime.executor=local",
            "tracking.enabled=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr
    assert "suboptimality=" in proc.stdout and "epoch" in proc.stderr
