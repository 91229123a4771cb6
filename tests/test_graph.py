"""Graph federated learning (issue 15): graphs through Arrow, the partitioners, the sampler and
the models, FedEgo's upload and mixing, GFL's gradient estimator, and the runs from the
command line. Generated graphs only; what reads ../shared/data skips without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from orchestrator.config import load_config
from orchestrator.data import prepare, write_partitions
from orchestrator.errors import ConfigError
from orchestrator.graphs import prepare_graph, read_graph
from trainers.config import FedEgoConfig
from trainers.graph.data import GraphData, csr, sample_tree
from trainers.graph.fedego import mixed_ego_graphs, mixing_weights
from trainers.graph.models import GraphNet, adjacency
from trainers.models import ModelSpec

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "planetoid"
SBM = REPO / "configs" / "fedego_sbm.yaml"
GFL_SBM = REPO / "configs" / "gfl_sbm.yaml"
SMALL = ["data.n_samples=420", "data.n_features=16", "trainer.rounds=2"]


def _tables(n=12, labels=None, edges=((0, 1), (1, 2), (2, 0), (3, 4)), ids=None):
    rng = np.random.default_rng(0)
    ids = np.arange(n) if ids is None else np.asarray(ids)
    y = np.arange(n) % 3 if labels is None else np.asarray(labels)
    nodes = {"node": ids, "label": y, "split": ["train"] * n}
    nodes.update({f"f{i}": rng.normal(size=n).astype(np.float32) for i in range(4)})
    src, dst = zip(*edges) if edges else ((), ())
    return pa.table(nodes), pa.table(
        {"src": np.asarray(ids)[list(src)], "dst": np.asarray(ids)[list(dst)]}
    )


def _data_cfg(**kw):
    return load_config(
        None,
        [
            "data.name=sbm",
            "partition.name=random_nodes",
            "trainer.name=graph_fedavg",
            "model.name=sage",
            "model.hidden=[8,8]",
            *[f"{k}={v}" for k, v in kw.items()],
        ],
    )


# ---------------------------------------------------------------- graphs through Arrow


def test_a_graph_is_made_undirected_once_without_self_loops_and_unlabelled_nodes():
    nodes, edges = _tables(
        n=6,
        labels=[0, 1, 2, -1, 0, 1],
        edges=((0, 1), (1, 0), (0, 1), (2, 2), (2, 3), (4, 5)),
        ids=[10, 11, 12, 13, 14, 15],
    )
    g = read_graph(nodes, edges, _data_cfg().data)
    assert len(g.y) == 5  # node 13 has no label: left out, with its edge to 12
    pairs = sorted(zip(g.src.tolist(), g.dst.tolist()))
    # rows: 10->0, 11->1, 12->2, 14->3, 15->4; each undirected edge both ways, once
    assert pairs == [(0, 1), (1, 0), (3, 4), (4, 3)]
    assert g.features == ["f0", "f1", "f2", "f3"]
    assert g.classes == [0, 1, 2]


@pytest.mark.parametrize(
    ("edges", "key", "fragment"),
    [
        (pa.table({"src": [0, 99], "dst": [1, 0]}), "data.edges", "src names nodes"),
        (pa.table({"from": [0], "dst": [1]}), "data.edges", "no column 'src'"),
    ],
)
def test_a_bad_edges_table_is_one_line_naming_the_file(edges, key, fragment):
    nodes, _ = _tables()
    with pytest.raises(ConfigError) as info:
        read_graph(nodes, edges, _data_cfg().data)
    assert info.value.key == key and fragment in info.value.problem
    assert "\n" not in str(info.value)


def test_string_labels_are_classes_and_a_bad_label_column_is_one_line():
    nodes, edges = _tables(n=6, labels=["b", "a", None, "b", "a", "c"])
    g = read_graph(nodes, edges, _data_cfg().data)
    assert g.classes == ["a", "b", "c"] and g.y.tolist() == [1, 0, 1, 0, 2]
    with pytest.raises(ConfigError) as info:
        read_graph(_tables(n=6, labels=[0.5, 1, 2, 0, 1, 2])[0], edges, _data_cfg().data)
    assert info.value.key == "data.label" and "whole numbers" in info.value.problem


def test_graph_parquet_files_read_through_the_config(tmp_path):
    nodes, edges = _tables(n=60, edges=[(i, (i + 1) % 60) for i in range(60)])
    pq.write_table(nodes, tmp_path / "n.parquet")
    pq.write_table(edges, tmp_path / "e.parquet")
    cfg = load_config(
        None,
        [
            "data.name=graph",
            f"data.nodes={tmp_path / 'n.parquet'}",
            f"data.edges={tmp_path / 'e.parquet'}",
            "partition.name=random_nodes",
            "partition.num_parties=3",
            "trainer.name=graph_fedavg",
            "model.name=sage",
            "model.hidden=[8,8]",
        ],
    )
    data = prepare(cfg).data
    assert isinstance(data, GraphData) and data.n_features == 4 and data.n_classes == 3
    assert sum(len(c.graph) for c in data.clients.values()) + len(data.test) == 60
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            [
                "data.name=graph",
                f"data.nodes={tmp_path / 'n.parquet'}",
                "partition.name=random_nodes",
                "trainer.name=graph_fedavg",
                "model.name=sage",
            ],
        )
    assert info.value.key == "data.edges" and "required" in info.value.problem


def test_the_block_model_is_seeded_and_its_edge_densities_are_the_asked_ones():
    cfg = _data_cfg(
        **{"data.n_samples": 1200, "data.n_classes": 4, "data.p_in": 0.04, "data.p_out": 0.004}
    )
    from orchestrator.data import load_table

    a, b = load_table(cfg.data, 0), load_table(cfg.data, 0)
    assert np.array_equal(a.src, b.src) and np.array_equal(a.x, b.x)
    c = load_table(cfg.data, 1)
    assert not np.array_equal(a.src, c.src)
    same = a.y[a.src] == a.y[a.dst]
    n_in = sum(k * (k - 1) / 2 for k in np.bincount(a.y))
    n_out = 1200 * 1199 / 2 - n_in
    assert abs(same.sum() / 2 / n_in - 0.04) < 0.004
    assert abs((~same).sum() / 2 / n_out - 0.004) < 0.0006
    # the features hint at the community: its mean is nearer than the others'
    means = np.stack([a.x[a.y == k].mean(0) for k in range(4)])
    assert (np.linalg.norm(a.x[:, None] - means[None], axis=2).argmin(1) == a.y).mean() > 0.5


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/planetoid is not here")
def test_cora_from_the_shared_tables_has_pyg_s_figures():
    cfg = load_config(REPO / "configs" / "fedego_cora.yaml")
    from orchestrator.data import load_table

    g = load_table(cfg.data, 0)
    assert len(g.y) == 2708 and g.x.shape[1] == 1433 and len(g.src) == 10556


def _write_planetoid(root: Path, n: int = 600, features: int = 6, classes: int = 3):
    """Planetoid's raw files for a ring of ``n`` nodes, as PyG reads them (it assumes 500
    validation nodes after the training ones, hence the size), so nothing is fetched."""
    import pickle
    from collections import defaultdict

    rng = np.random.default_rng(0)
    raw = root / "Cora" / "raw"
    raw.mkdir(parents=True)
    y = rng.integers(0, classes, n)
    onehot = np.eye(classes)[y]
    x = (rng.random((n, features)) < 0.4).astype(np.float32)
    ring = defaultdict(list)
    for i in range(n):
        ring[i].append((i + 1) % n)
        ring[(i + 1) % n].append(i)
    parts = {
        "x": x[:10],
        "y": onehot[:10],
        "allx": x[: n - 40],
        "ally": onehot[: n - 40],
        "tx": x[n - 40 :],
        "ty": onehot[n - 40 :],
        "graph": ring,
    }
    for key, value in parts.items():
        (raw / f"ind.cora.{key}").write_bytes(pickle.dumps(value))
    (raw / "ind.cora.test.index").write_text("\n".join(map(str, range(n - 40, n))))
    return x, y


def test_planetoid_is_read_by_pyg_from_a_local_root(tmp_path):
    pytest.importorskip(
        "torch_geometric", reason="the graph extra (torch_geometric) is not installed"
    )
    x, y = _write_planetoid(tmp_path)
    cfg = load_config(
        None,
        [
            "data.name=planetoid",
            f"data.root={tmp_path}",
            "partition.name=louvain",
            "partition.num_parties=3",
            "trainer.name=graph_fedavg",
            "model.name=sage",
            "model.hidden=[8,8]",
            "data.standardize=false",
        ],
    )
    from orchestrator.data import load_table

    g = load_table(cfg.data, 0)
    assert np.array_equal(g.x, x) and np.array_equal(g.y, y)
    assert len(g.src) == 2 * 600  # the ring, both ways
    data = prepare(cfg).data
    assert len(data.clients) == 3 and data.n_classes == 3


def test_a_planetoid_root_without_its_files_is_one_line_when_nothing_can_be_fetched(tmp_path):
    pytest.importorskip(
        "torch_geometric", reason="the graph extra (torch_geometric) is not installed"
    )
    from orchestrator.data import load_table

    cfg = load_config(
        None,
        [
            "data.name=planetoid",
            f"data.root={tmp_path}",
            "data.dataset=Nowhere",
            "partition.name=louvain",
            "trainer.name=graph_fedavg",
            "model.name=sage",
        ],
    )
    with pytest.raises(ConfigError) as info:
        load_table(cfg.data, 0)  # PyG refuses an unknown name before any download
    assert info.value.key == "data.root" and "\n" not in str(info.value)


# ---------------------------------------------------------------- partitioners


def _split(name: str, parties=5, **kw):
    over = {
        "partition.name": name,
        "partition.num_parties": parties,
        "data.n_samples": 700,
        "data.n_classes": 7,
        **kw,
    }
    cfg = _data_cfg(**over)
    return prepare(cfg).data


@pytest.mark.parametrize("name", ["louvain", "random_nodes"])
def test_a_disjoint_split_deals_every_training_node_once(name):
    data = _split(name)
    held = np.concatenate([c.graph.nodes for c in data.clients.values()])
    assert len(held) == len(np.unique(held)) == len(data.pool.graph)
    assert not np.intersect1d(held, data.test.nodes).size
    assert len(data.clients) == 5 and data.disjoint
    sizes = [len(c.graph) for c in data.clients.values()]
    assert max(sizes) - min(sizes) <= (1 if name == "random_nodes" else max(sizes) // 2)


def test_louvain_cuts_communities_when_there_are_fewer_than_clients():
    data = _split("louvain", parties=20)
    assert len(data.clients) == 20 and all(len(c.graph) for c in data.clients.values())


def test_the_edges_lost_and_each_client_s_foreign_neighbours_are_the_graph_s():
    data = _split("random_nodes")
    owner = {}
    for cid, c in data.clients.items():
        owner.update({int(v): (cid, i) for i, v in enumerate(c.graph.nodes)})
    pool = data.pool.graph
    rows = np.repeat(pool.nodes, pool.degrees())
    cols = pool.nodes[pool.indices]
    cross = [(a, b) for a, b in zip(rows.tolist(), cols.tolist()) if owner[a][0] != owner[b][0]]
    assert data.edges_lost == len(cross) // 2
    for cid, c in data.clients.items():
        ext, n = c.external, len(c.graph)
        mine = sorted(
            (int(c.graph.nodes[r]), int(owner_node))
            for r, owner_node in _foreign_pairs(ext, c, data)
        )
        expected = sorted((a, b) for a, b in cross if owner[a][0] == cid)
        assert mine == expected
        assert ext.n_edges == len(expected)
        # what it shares is what the others reach
        reached = {owner[b][1] for a, b in cross if owner[b][0] == cid}
        assert set(ext.shared.tolist()) == reached
        assert len(ext.indptr) == n + 1


def _foreign_pairs(ext, client, data):
    n = len(client.graph)
    for r in range(n):
        for col in ext.indices[ext.indptr[r] : ext.indptr[r + 1]]:
            if col >= n:
                k = col - n
                owner = data.clients[int(ext.owner[k])]
                yield r, owner.graph.nodes[ext.index[k]]


def test_the_label_skew_split_draws_its_share_from_each_client_s_major_labels():
    data = _split(
        "label_skew",
        **{
            "partition.graph.major_rate": 0.8,
            "partition.graph.major_labels": 3,
            "data.p_in": 0.3,
            "data.p_out": 0.05,
        },
    )
    for c in data.clients.values():
        counts = np.sort(np.bincount(c.graph.y, minlength=7))[::-1]
        assert counts[:3].sum() / counts.sum() >= 0.7  # 0.8 drawn; isolated nodes dropped
        assert (c.graph.degrees() > 0).all()  # the connected nodes only
    assert not data.disjoint
    # clients overlap: a node one of them tests on is none's training node
    tested = np.concatenate([c.graph.nodes[c.test] for c in data.clients.values()])
    for c in data.clients.values():
        assert not np.isin(c.graph.nodes[c.train], tested).any()
    assert not np.isin(data.pool.graph.nodes[data.pool.train], tested).any()
    # half the graph's size asked; fewer where the major labels hold too few nodes
    assert all(150 < len(c.graph) <= 350 for c in data.clients.values())


def test_each_client_holds_out_its_local_test_share_and_the_partition_is_written(tmp_path):
    data = _split("louvain", **{"partition.graph.local_test": 0.25})
    for c in data.clients.values():
        assert abs(len(c.test) - 0.25 * len(c.graph)) <= 1
        assert not np.intersect1d(c.train, c.test).size
        assert len(c.train) + len(c.test) == len(c.graph)
    cfg = _data_cfg(
        **{"partition.name": "louvain", "data.n_samples": 700, "partition.num_parties": 5}
    )
    paths = write_partitions(prepare(cfg), tmp_path)
    assert len(paths) == 2 * (5 + 1)
    nodes = pq.read_table(tmp_path / "party_00000.nodes.parquet")
    assert set(nodes.column("node").to_pylist()) <= set(range(700))
    assert {"node", "label", "split"} <= set(nodes.column_names)
    edges = pq.read_table(tmp_path / "party_00000.edges.parquet")
    assert set(edges.column("src").to_pylist()) <= set(nodes.column("node").to_pylist())


# ---------------------------------------------------------------- sampler and models


def test_the_sampler_draws_neighbours_with_replacement_and_isolated_nodes_sample_themselves():
    src = np.array([0, 1, 0, 2, 1, 2])
    dst = np.array([1, 0, 2, 0, 2, 1])
    indptr, indices = csr(src, dst, 4)  # a triangle 0-1-2 and node 3 alone
    rng = np.random.default_rng(0)
    levels = sample_tree(indptr, indices, np.array([0, 3] * 500), (6, 6), rng)
    assert [lv.shape for lv in levels] == [(1000,), (1000, 6), (1000, 6, 6)]
    assert set(levels[1][0::2].ravel().tolist()) == {1, 2}
    assert set(levels[2][1::2].ravel().tolist()) == {3}
    share = (levels[1][0::2] == 1).mean()
    assert 0.45 < share < 0.55


@pytest.mark.parametrize("kind", ["sage", "gcn"])
def test_a_tree_forward_is_the_whole_graph_s_where_sampling_cannot_differ(kind):
    # every node has exactly one neighbour: any sample of it is the neighbourhood
    src, dst = np.array([0, 1, 2, 3]), np.array([1, 0, 3, 2])
    indptr, indices = csr(src, dst, 4)
    model = GraphNet(ModelSpec(kind, 5, 3, (8, 8, 8)), kind).eval()
    x = torch.randn(4, 5)
    full = model(x, adjacency(indptr, indices, 4, False), adjacency(indptr, indices, 4, True))
    levels = sample_tree(indptr, indices, np.arange(4), (3, 2), np.random.default_rng(0))
    degrees = [torch.ones(lv.shape) for lv in levels]
    tree = model.tree([model.embed(x[torch.from_numpy(lv)]) for lv in levels], degrees)
    assert torch.allclose(full, tree, atol=1e-6)


def test_gcn_averages_the_node_with_its_neighbours():
    src, dst = np.array([0, 1, 0, 2]), np.array([1, 0, 2, 0])
    indptr, indices = csr(src, dst, 3)
    loops = adjacency(indptr, indices, 3, True).to_dense()
    assert torch.allclose(loops[0], torch.tensor([1 / 3, 1 / 3, 1 / 3]))
    assert torch.allclose(loops[1], torch.tensor([0.5, 0.5, 0.0]))


# ---------------------------------------------------------------- FedEgo


def test_mixup_averages_each_batch_s_trees_slot_by_slot_with_the_soft_label():
    data = _split("label_skew", **{"data.p_in": 0.3})
    client = data.clients[0]
    h = np.random.default_rng(1).normal(size=(len(client.graph), 4))
    cfg = FedEgoConfig()
    trees, soft = mixed_ego_graphs(h, client, (6, 6), 16, 7, cfg, np.random.default_rng(5))
    rng = np.random.default_rng(5)  # the same draws, by hand
    roots = rng.permutation(client.train)
    levels = sample_tree(client.graph.indptr, client.graph.indices, roots, (6, 6), rng)
    first = slice(0, 16)
    assert np.allclose(trees[2][0], h[levels[2][first]].mean(0), atol=1e-6)
    assert np.allclose(trees[1][0], h[levels[1][first]].mean(0), atol=1e-6)
    assert np.allclose(soft[0], np.eye(7)[client.graph.y[roots[first]]].mean(0))
    assert len(trees[0]) == -(-len(client.train) // 16)
    assert trees[2].shape[1:] == (6, 6, 4)
    plain, _ = mixed_ego_graphs(
        h, client, (6, 6), 16, 7, FedEgoConfig(mixup=False), np.random.default_rng(5)
    )
    assert np.allclose(plain[0][0], h[roots[0]])
    noisy, _ = mixed_ego_graphs(
        h, client, (6, 6), 16, 7, FedEgoConfig(sigma=0.5), np.random.default_rng(5)
    )
    assert 0.45 < float(np.std(noisy[2] - trees[2])) < 0.55


def test_lambda_is_the_label_distance_to_the_power_lamb_c_or_fixed():
    soft = np.array([[1.0, 0.0], [0.0, 1.0]])  # p_g = (0.5, 0.5)
    near, far = np.array([0.5, 0.5]), np.array([1.0, 0.0])
    got = mixing_weights([near, far], soft, FedEgoConfig(lamb_c=0.5))
    assert got == [0.0, pytest.approx(0.5**0.5)]
    assert mixing_weights([near, far], soft, FedEgoConfig(lamb_c=0.3, lamb_fixed=True)) == [
        0.3,
        0.3,
    ]


def test_with_lambda_one_every_client_takes_the_server_s_layers():
    from clusters.inprocess import InProcessExecutor
    from trainers.graph.common import ClientModel
    from trainers.graph.fedego import FedEgo

    cfg = load_config(SBM, [*SMALL, "trainer.fedego.lamb_fixed=true", "trainer.fedego.lamb_c=1.0"])
    data = prepare(cfg).data
    trainer = FedEgo(cfg.trainer, cfg.model)
    executor = InProcessExecutor()
    state = trainer.begin(data, executor, 0)
    _, metrics = trainer.advance(state, executor)
    r = trainer._model.reduction_size
    for s in executor.party_states().values():
        assert np.array_equal(s[ClientModel.__name__].weights[r:], state.weights[r:])
    assert metrics["lambda_mean"] == 1.0 and metrics["bytes_graph"] > 0


def test_without_personalisation_nothing_is_uploaded_and_lambda_is_zero():
    from orchestrator.runner import run

    out = run(
        SBM,
        [*SMALL, "trainer.fedego.variant=np", "tracking.enabled=false", "runtime.executor=local"],
    )
    assert out.metrics["bytes_graph"] == 0 and out.metrics["lambda_mean"] == 0
    ne = run(
        SBM,
        [*SMALL, "trainer.fedego.variant=ne", "tracking.enabled=false", "runtime.executor=local"],
    )
    full = run(SBM, [*SMALL, "tracking.enabled=false", "runtime.executor=local"])
    assert 0 < ne.metrics["bytes_graph"] < full.metrics["bytes_graph"] / 30  # roots only


# ---------------------------------------------------------------- GFL


def test_gfl_s_clients_average_to_the_whole_graph_s_gradient_with_fresh_messages():
    """With the representations and gradients of the same model, every training node in
    one batch, and a graph where sampling cannot differ from the neighbourhood (each node
    has one neighbour), the clients' steps average to the exact gradient of the whole
    objective, cross-client edges included: the estimator is unbiased but for staleness."""
    from clusters.inprocess import InProcessExecutor
    from trainers.graph.gfl import GFL, _Steps
    from trainers.models import set_flat

    n = 40
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 5)).astype(np.float32) + y[:, None]
    nodes = {"node": np.arange(n), "label": y, **{f"f{i}": x[:, i] for i in range(5)}}
    cfg = load_config(
        None,
        [
            "data.name=sbm",
            "partition.name=random_nodes",
            "partition.num_parties=3",
            "trainer.name=gfl",
            "model.name=sage",
            "model.hidden=[4,3]",
            "model.dropout=0",
            "trainer.optimizer=sgd",
            "trainer.lr=1.0",
            "trainer.batch_size=1000",
            "trainer.gfl.steps=1",
            "trainer.graph.fanout=[3]",
            "data.standardize=false",
        ],
    )
    graph = read_graph(pa.table(nodes), pa.table({"src": perm[0::2], "dst": perm[1::2]}), cfg.data)
    data = prepare_graph(cfg, graph).data
    assert data.edges_lost > 0
    trainer, executor = GFL(cfg.trainer, cfg.model), InProcessExecutor()
    state = trainer.begin(data, executor, 0)
    theta = state.weights.copy()
    foreign = trainer.share(theta, executor)
    first = executor.map(trainer._task, trainer._ids, _Steps(0, theta, foreign, {}))
    pending = trainer.route(first)
    ups = executor.map(trainer._task, trainer._ids, _Steps(0, theta, foreign, pending))
    total = sum(u.nodes for u in ups)
    estimate = sum(theta.astype(np.float64) * u.nodes - u.weighted_sum for u in ups) / total
    model = trainer._model
    set_flat(model, theta)
    model.eval()
    logits = model.propagate(model.embed(trainer._pool.x), trainer._pool_adj, len(data.pool.graph))
    train = torch.from_numpy(data.pool.train)
    loss = F.cross_entropy(logits[train], trainer._pool.y[train])
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])
    assert np.abs(estimate - exact.numpy()).max() < 1e-5 * np.abs(exact.numpy()).max()
    # without the gradients sent back, the estimate misses the cross-client terms
    alone = sum(theta.astype(np.float64) * u.nodes - u.weighted_sum for u in first) / total
    assert np.abs(alone - exact.numpy()).max() > 1e-3


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        (["partition.name=label_skew"], "partition.name", "gfl needs each node held by one"),
        (
            ["model.hidden=[8,8,8]", "trainer.graph.fanout=[4,4]"],
            "model.hidden",
            "gfl shares one hop",
        ),
    ],
)
def test_gfl_refuses_what_it_cannot_share_in_one_line(overrides, key, fragment):
    from orchestrator.runner import run

    with pytest.raises(ConfigError) as info:
        run(GFL_SBM, [*SMALL, *overrides, "tracking.enabled=false", "runtime.executor=local"])
    assert info.value.key == key and fragment in info.value.problem


# ---------------------------------------------------------------- settings that do not fit


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        (["data.name=digits"], "data.name", "graph_fedavg trains on a graph"),
        (["trainer.name=fedavg", "model.name=mlp"], "trainer.name", "sbm is a graph data set"),
        (["partition.name=iid"], "partition.name", "a graph is split by"),
        (["model.name=mlp"], "model.name", "mlp is not a graph model"),
        (["model.hidden=[8,8,8,8]"], "trainer.graph.fanout", "2 fan-outs for 3 graph"),
    ],
)
def test_a_graph_setting_that_does_not_fit_is_one_line(overrides, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(SBM, ["trainer.name=graph_fedavg", *overrides])
    assert info.value.key == key and fragment in info.value.problem, str(info.value)


def test_a_graph_model_or_partitioner_elsewhere_is_one_line():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.name=sage"])
    assert info.value.key == "model.name" and "graph model" in info.value.problem
    with pytest.raises(ConfigError) as info:
        load_config(None, ["partition.name=louvain"])
    assert info.value.key == "partition.name" and "splits a graph" in info.value.problem


# ---------------------------------------------------------------- from the command line


@pytest.mark.slow
def test_the_readme_s_fedego_run_logs_per_client_curves_and_the_split(workdir, capsys):
    from mlflow.tracking import MlflowClient

    from orchestrator import cli

    uri = f"sqlite:///{workdir}/mlflow.db"
    code = cli.main(["run", str(SBM), "trainer.rounds=3", f"tracking.uri={uri}", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    client = MlflowClient(uri)
    run_id = out["run_id"]
    history = client.get_metric_history(run_id, "client_f1/0")
    assert [m.step for m in history] == [0, 1, 2]
    assert {f"client_f1/{i}" for i in range(5)} <= set(client.get_run(run_id).data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert "client_f1.png" in artifacts
    parts = {a.path for a in client.list_artifacts(run_id, "partition")}
    assert {"partition/graph.png", "partition/stats.parquet"} <= parts


@pytest.mark.slow
def test_a_gfl_run_draws_the_whole_objective_s_gradient(workdir, capsys):
    from mlflow.tracking import MlflowClient

    from orchestrator import cli

    uri = f"sqlite:///{workdir}/mlflow.db"
    assert cli.main(["run", str(GFL_SBM), "trainer.rounds=2", f"tracking.uri={uri}", "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]
    client = MlflowClient(uri)
    assert {"gradient.png", "client_f1.png"} <= {a.path for a in client.list_artifacts(run_id)}
    norms = [m.value for m in client.get_metric_history(run_id, "grad_norm")]
    assert len(norms) == 2 and all(v > 0 for v in norms)
