"""Graphs as two Arrow tables, and their split into the clients of a graph federation.

A graph data set is a nodes table (``node``, ``label``, optional ``split``, feature columns)
and an edges table (``src``, ``dst``): read from Parquet (``data.name=graph``), generated
(``sbm``: a seeded stochastic block model with class-correlated features) or read by PyG's
``Planetoid`` from a local root (``planetoid``, when torch_geometric is installed). Edges are
made undirected; self-loops and repeats are dropped; nodes without a label (CiteSeer's -1)
are left out with their edges.

The split (every random choice from the run's seed): ``partition.graph.test_share`` of the
labelled nodes become the global test graph; the rest are dealt to ``partition.num_parties``
clients by a graph partitioner (``louvain``, ``random_nodes``, ``label_skew``); each client
keeps the subgraph its nodes induce and holds ``partition.graph.local_test`` of its nodes
out as its local test nodes; a node that any client tests on is no client's training node
(label_skew's clients overlap), though its features stay visible to its neighbours, as in
transductive node classification.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.data import DATASETS, PARTITIONERS, GraphSource, Prepared
from orchestrator.errors import ConfigError
from trainers.base import derive_seed
from trainers.graph.data import External, GraphClient, GraphData, Subgraph, csr

if TYPE_CHECKING:
    from orchestrator.config import DataConfig, ExperimentConfig, PartitionConfig

__all__ = ["GraphPartitioner", "prepare_graph", "read_graph", "write_graph_partitions"]

_TEST_STREAM = 40
_CLIENT_STREAM = 41
_LOCAL_TEST_STREAM = 42
_RESERVED = ("node", "label", "split")


def _graph_source(fn: Callable[[DataConfig, int], GraphSource]):
    fn.graph = True  # type: ignore[attr-defined]  # read by validation: a graph data set
    return fn


@DATASETS.register("graph")
@_graph_source
def _parquet_graph(cfg: DataConfig, seed: int) -> GraphSource:
    tables = []
    for key, path in (("data.nodes", cfg.nodes), ("data.edges", cfg.edges)):
        try:
            tables.append(pq.read_table(path))
        except (OSError, pa.ArrowException, TypeError) as exc:
            raise ConfigError(key, f"cannot read Parquet file {path}: {exc}") from None
    return read_graph(tables[0], tables[1], cfg)


@DATASETS.register("sbm")
@_graph_source
def _sbm(cfg: DataConfig, seed: int) -> GraphSource:
    """A stochastic block model: ``n_samples`` nodes in ``n_classes`` communities of near-equal
    size (the community is the label); each pair of nodes is joined with probability ``p_in``
    within a community and ``p_out`` across; a node's features are its community's mean
    (drawn N(0, I) in ``n_features`` dimensions) plus N(0, feature_noise^2) noise."""
    rng = np.random.default_rng(cfg.random_state if cfg.random_state is not None else seed)
    n, k = cfg.n_samples, cfg.n_classes
    y = rng.permutation(np.arange(n) % k)
    members = [np.flatnonzero(y == c) for c in range(k)]
    src, dst = [], []
    for a in range(k):
        for b in range(a, k):
            p = cfg.p_in if a == b else cfg.p_out
            na, nb = len(members[a]), len(members[b])
            pairs = na * (na - 1) // 2 if a == b else na * nb
            m = rng.binomial(pairs, p)
            i = members[a][rng.integers(0, na, m)]
            j = members[b][rng.integers(0, nb, m)]
            keep = i != j
            src.append(i[keep])
            dst.append(j[keep])
    means = rng.normal(size=(k, cfg.n_features))
    x = means[y] + rng.normal(scale=cfg.feature_noise, size=(n, cfg.n_features))
    nodes = {"node": pa.array(np.arange(n)), "label": pa.array(y.astype(np.int64))}
    nodes.update({f"x{i}": pa.array(x[:, i].astype(np.float32)) for i in range(cfg.n_features)})
    edges = pa.table({"src": np.concatenate(src), "dst": np.concatenate(dst)})
    return read_graph(pa.table(nodes), edges, cfg)


@DATASETS.register("planetoid")
@_graph_source
def _planetoid(cfg: DataConfig, seed: int) -> GraphSource:
    """PyG's ``Planetoid(root, name)``: read from ``data.root`` (PyG downloads into it when
    the files are not there, on a machine that can reach GitHub)."""
    try:
        from torch_geometric.datasets import Planetoid
    except ImportError:
        raise ConfigError(
            "data.name",
            "planetoid needs torch_geometric (pip install torch_geometric); or read the graph "
            "from Parquet with data.name=graph",
        ) from None
    try:
        graph = Planetoid(str(cfg.root), cfg.dataset)[0]
    except Exception as exc:  # noqa: BLE001 - PyG raises many kinds; one line names the cause
        raise ConfigError(
            "data.root", f"cannot read {cfg.dataset} from {cfg.root}: {exc}"
        ) from None
    x = graph.x.numpy().astype(np.float32)
    nodes = {"node": pa.array(np.arange(len(x))), "label": pa.array(graph.y.numpy())}
    nodes.update({f"f{i}": pa.array(x[:, i]) for i in range(x.shape[1])})
    edge_index = graph.edge_index.numpy()
    return read_graph(pa.table(nodes), pa.table({"src": edge_index[0], "dst": edge_index[1]}), cfg)


def read_graph(nodes: pa.Table, edges: pa.Table, cfg: DataConfig) -> GraphSource:
    """Checks the two tables and makes the graph's arrays: nodes by row, edges by row index.

    Raises:
        ConfigError: a missing column, edges naming unknown nodes, non-finite features.
    """
    label = cfg.label
    for key, table, needed in (
        ("data.nodes", nodes, ("node", label)),
        ("data.edges", edges, ("src", "dst")),
    ):
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise ConfigError(
                key, f"no column {missing[0]!r}; columns: {', '.join(table.column_names[:8])}"
            )
    if cfg.features:
        unknown = [c for c in cfg.features if c not in nodes.column_names]
        if unknown:
            raise ConfigError("data.features", f"no such columns: {', '.join(unknown[:5])}")
        features = list(cfg.features)
    else:
        features = [
            f.name
            for f in nodes.schema
            if f.name not in (*_RESERVED, label)
            and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
        ]
    if not features:
        raise ConfigError("data.nodes", "the nodes table has no numeric feature columns")
    ids = nodes.column("node").to_numpy(zero_copy_only=False).astype(np.int64)
    y, labelled = _labels(nodes.column(label), label)
    if len(np.unique(ids)) != len(ids):
        raise ConfigError("data.nodes", "node ids repeat")
    x = np.column_stack([nodes.column(c).to_numpy(zero_copy_only=False) for c in features])
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ConfigError("data.nodes", "features hold missing or infinite values")
    order = np.argsort(ids)
    src = edges.column("src").to_numpy(zero_copy_only=False).astype(np.int64)
    dst = edges.column("dst").to_numpy(zero_copy_only=False).astype(np.int64)
    where_src = np.searchsorted(ids[order], src)
    where_dst = np.searchsorted(ids[order], dst)
    for name, ends, where in (("src", src, where_src), ("dst", dst, where_dst)):
        known = (where < len(ids)) & (ids[order][np.minimum(where, len(ids) - 1)] == ends)
        if not known.all():
            raise ConfigError(
                "data.edges",
                f"{name} names nodes the nodes table lacks: {ends[~known][:3].tolist()}",
            )
    keep = np.flatnonzero(labelled)
    row = np.full(len(ids), -1, dtype=np.int64)
    row[keep] = np.arange(len(keep))
    a, b = row[order[where_src]], row[order[where_dst]]
    ok = (a >= 0) & (b >= 0) & (a != b)
    a, b = a[ok], b[ok]
    pairs = np.unique(np.minimum(a, b) * len(keep) + np.maximum(a, b))  # undirected, once
    lo, hi = pairs // max(len(keep), 1), pairs % max(len(keep), 1)
    classes, y_index = np.unique(y[keep].tolist(), return_inverse=True)
    if len(classes) < 2:
        raise ConfigError("data.label", "fewer than two distinct labels")
    return GraphSource(
        ids=ids[keep],
        x=x[keep],
        y=y_index.astype(np.int64),
        src=np.concatenate([lo, hi]),
        dst=np.concatenate([hi, lo]),
        features=features,
        classes=classes.tolist(),
    )


def _labels(raw: pa.ChunkedArray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The label column's values and which nodes have one: integers (negative: none, as
    Planetoid marks them), whole floats or strings; null is no label."""
    kind = raw.type
    has = ~raw.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return raw.fill_null("").to_numpy(zero_copy_only=False), has
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise ConfigError(
            "data.label", f"column {name!r} is {kind}: labels must be numbers or strings"
        )
    values = raw.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.isfinite(values).all() or (values != np.round(values)).any():
        raise ConfigError("data.label", f"column {name!r} holds labels that are not whole numbers")
    return values.astype(np.int64), has & (values >= 0)


# ---------------------------------------------------------------- graph partitioners


@dataclass(frozen=True)
class GraphPartitioner:
    """A partitioner of a graph's nodes into clients: ``split(y, src, dst, nodes, cfg,
    n_classes, rng)`` gives each client's node ids (a subset of ``nodes``).

    Registered with the sample partitioners (``partition.name``); called as one, it refuses.
    """

    split: Callable[..., list[np.ndarray]]
    disjoint: bool = True
    graph = True

    def __call__(self, y, cfg, n_classes, rng):  # noqa: ANN001, ANN204 - the Partitioner call
        raise ConfigError(
            "partition.name", "a graph partitioner: the data set must be a graph (data.name)"
        )


def _louvain(y, src, dst, nodes, cfg: PartitionConfig, n_classes, rng) -> list[np.ndarray]:
    """networkx's Louvain communities of the training graph, dealt to the clients largest
    first onto the client holding fewest nodes; while that leaves a client under half the
    mean size (fewer communities than clients, or a few giant ones), the largest group is
    cut in two at random and the groups are dealt again."""
    import networkx as nx

    graph = nx.Graph()
    graph.add_nodes_from(nodes.tolist())
    inside = np.isin(src, nodes) & np.isin(dst, nodes) & (src < dst)
    graph.add_edges_from(zip(src[inside].tolist(), dst[inside].tolist()))
    found = nx.community.louvain_communities(
        graph, resolution=cfg.graph.resolution, seed=int(rng.integers(2**31))
    )
    groups = [np.sort(np.fromiter(c, dtype=np.int64)) for c in found]
    k, total = cfg.num_parties, len(nodes)
    while True:
        parts, load = _deal(groups, k)
        if len(groups) >= k and load.min() >= total / k / 2:
            return [np.sort(np.concatenate(p)) for p in parts]
        groups.sort(key=len)
        big = rng.permutation(groups.pop())
        groups += [np.sort(big[: len(big) // 2]), np.sort(big[len(big) // 2 :])]


def _deal(groups: list[np.ndarray], k: int) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """Groups dealt largest first onto the client holding fewest nodes."""
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    load = np.zeros(k)
    for g in sorted(groups, key=lambda g: (-len(g), int(g[0]))):
        c = int(np.argmin(load))
        parts[c].append(g)
        load[c] += len(g)
    return parts, load


def _random_nodes(y, src, dst, nodes, cfg: PartitionConfig, n_classes, rng) -> list[np.ndarray]:
    """The training nodes shuffled and cut into equal parts."""
    return [np.sort(p) for p in np.array_split(rng.permutation(nodes), cfg.num_parties)]


def _label_skew(y, src, dst, nodes, cfg: PartitionConfig, n_classes, rng) -> list[np.ndarray]:
    """FedEgo's label-skew split: each client draws ``sample_rate`` x (all nodes) of the
    training nodes, ``major_rate`` of them from ``major_labels`` classes of its own (drawn at
    random), the rest from the others; clients draw independently, so they may share nodes."""
    g = cfg.graph
    total = int(round(g.sample_rate * (len(nodes) / max(1e-9, 1 - g.test_share))))
    parts = []
    for _ in range(cfg.num_parties):
        majors = rng.choice(n_classes, size=min(g.major_labels, n_classes), replace=False)
        is_major = np.isin(y[nodes], majors)
        pools = (nodes[is_major], nodes[~is_major])
        want = (int(round(g.major_rate * total)), total - int(round(g.major_rate * total)))
        drawn = [rng.choice(p, size=min(w, len(p)), replace=False) for p, w in zip(pools, want)]
        parts.append(np.sort(np.concatenate(drawn)))
    return parts


for _name, _split, _disjoint in (
    ("louvain", _louvain, True),
    ("random_nodes", _random_nodes, True),
    ("label_skew", _label_skew, False),
):
    PARTITIONERS.register(_name)(GraphPartitioner(_split, _disjoint))


# ---------------------------------------------------------------- the whole path


def prepare_graph(cfg: ExperimentConfig, src: GraphSource) -> Prepared:
    """Splits the graph into the global test graph and the clients' subgraphs.

    Raises:
        ConfigError: a split that leaves a client without training or test nodes.
    """
    part = cfg.partition
    splitter = PARTITIONERS.get(part.name)
    if not isinstance(splitter, GraphPartitioner):
        raise ConfigError(
            "partition.name",
            f"{part.name} splits samples; a graph is split by "
            + ", ".join(
                n for n in PARTITIONERS.names() if isinstance(PARTITIONERS.get(n), GraphPartitioner)
            ),
        )
    n = len(src.y)
    rng = np.random.default_rng(derive_seed(cfg.seed, _TEST_STREAM))
    order = rng.permutation(n)
    n_test = max(1, int(round(part.graph.test_share * n)))
    test_nodes, train_pool = np.sort(order[:n_test]), np.sort(order[n_test:])
    if len(train_pool) < 2 * part.num_parties:
        raise ConfigError(
            "partition.num_parties",
            f"{part.num_parties} clients but only {len(train_pool)} nodes outside the test graph",
        )
    x = src.x
    if cfg.data.standardize:
        mean, std = x[train_pool].mean(axis=0), x[train_pool].std(axis=0)
        std[std == 0] = 1.0
        x = ((x - mean) / std).astype(np.float32)
    rng = np.random.default_rng(derive_seed(cfg.seed, _CLIENT_STREAM))
    parts = splitter.split(src.y, src.src, src.dst, train_pool, part, len(src.classes), rng)
    graphs = [Subgraph.induced(p, x, src.y, src.src, src.dst) for p in parts]
    if not splitter.disjoint:  # FedEgo keeps the connected nodes of each sample
        graphs = [
            Subgraph.induced(g.nodes[g.degrees() > 0], x, src.y, src.src, src.dst) for g in graphs
        ]
    test_graph = Subgraph.induced(test_nodes, x, src.y, src.src, src.dst)
    rng = np.random.default_rng(derive_seed(cfg.seed, _LOCAL_TEST_STREAM))
    held = []
    for cid, g in enumerate(graphs):
        k = int(round(part.graph.local_test * len(g)))
        if len(g) - k < 1 or k < 1:
            short = "local test node" if k < 1 else "training node"
            raise ConfigError(
                "partition.graph.local_test",
                f"{part.graph.local_test} of client {cid}'s {len(g)} nodes leaves it no {short}; "
                "change it, or use fewer clients or a larger graph",
            )
        perm = rng.permutation(len(g))
        held.append((np.sort(perm[k:]), np.sort(perm[:k])))
    # a node one client tests on is no client's training node (clients of label_skew overlap)
    tested_anywhere = np.concatenate([g.nodes[te] for g, (_, te) in zip(graphs, held)])
    for cid, (g, (tr, te)) in enumerate(zip(graphs, held)):
        tr = tr[~np.isin(g.nodes[tr], tested_anywhere)]
        if not len(tr):
            raise ConfigError(
                "partition.graph.local_test",
                f"leaves client {cid} no training node (the others test on all of its nodes); "
                "lower it or partition.graph.sample_rate",
            )
        held[cid] = (tr, te)
    pool_nodes = np.unique(np.concatenate([g.nodes for g in graphs]))
    pool = Subgraph.induced(pool_nodes, x, src.y, src.src, src.dst)
    externals = _externals(graphs, src, len(src.y)) if splitter.disjoint else [None] * len(graphs)
    clients = {
        cid: GraphClient(g, tr, te, test_graph, ext)
        for cid, (g, (tr, te), ext) in enumerate(zip(graphs, held, externals))
    }
    in_pool = np.searchsorted(
        pool_nodes, np.concatenate([g.nodes[tr] for g, (tr, _) in zip(graphs, held)])
    )
    tested = np.searchsorted(
        pool_nodes, np.concatenate([g.nodes[te] for g, (_, te) in zip(graphs, held)])
    )
    pool_train = np.setdiff1d(in_pool, tested)
    data = GraphData(
        clients=clients,
        pool=GraphClient(pool, pool_train, np.unique(tested), test_graph),
        test=test_graph,
        n_features=x.shape[1],
        n_classes=len(src.classes),
        disjoint=splitter.disjoint,
        node_ids=src.ids,
        edges_lost=pool.n_edges - _edges_kept(graphs, len(src.y)),
    )
    return Prepared(data, src.features, src.classes, graph_stats(data))


def _edges_kept(graphs: Sequence[Subgraph], n: int) -> int:
    """Undirected edges held by at least one client's subgraph."""
    keys = []
    for g in graphs:
        rows = np.repeat(np.arange(len(g)), g.degrees())
        a, b = g.nodes[rows], g.nodes[g.indices]
        keys.append(a[a < b] * n + b[a < b])
    return len(np.unique(np.concatenate(keys))) if keys else 0


def _externals(graphs: Sequence[Subgraph], src: GraphSource, n: int) -> list[External]:
    """Each client's edges to the other clients' nodes (a disjoint split)."""
    owner = np.full(n, -1, dtype=np.int64)
    index = np.full(n, -1, dtype=np.int64)
    for cid, g in enumerate(graphs):
        owner[g.nodes], index[g.nodes] = cid, np.arange(len(g))
    shared: list[set[int]] = [set() for _ in graphs]
    out = []
    cross = (owner[src.src] >= 0) & (owner[src.dst] >= 0) & (owner[src.src] != owner[src.dst])
    s, d = src.src[cross], src.dst[cross]
    for cid, g in enumerate(graphs):
        mine = owner[s] == cid
        foreign = np.unique(d[mine])
        for c in np.unique(owner[foreign]).tolist():
            shared[c].update(index[foreign[owner[foreign] == c]].tolist())
        rows_own = np.repeat(np.arange(len(g)), g.degrees())
        rows = np.concatenate([rows_own, index[s[mine]]])
        cols = np.concatenate([g.indices, len(g) + np.searchsorted(foreign, d[mine])])
        indptr, indices = csr(rows, cols, len(g))
        out.append((owner[foreign], index[foreign], indptr, indices))
    return [
        External(o, i, p, c, np.array(sorted(shared[cid]), dtype=np.int64))
        for cid, (o, i, p, c) in enumerate(out)
    ]


def graph_stats(data: GraphData) -> pa.Table:
    """One row per client: nodes, edges, training and local test nodes, cross-client edges
    (disjoint splits), and the label histogram of its nodes."""
    ids = sorted(data.clients)
    clients = [data.clients[c] for c in ids]
    counts = np.stack([np.bincount(c.graph.y, minlength=data.n_classes) for c in clients])
    cols: dict[str, pa.Array] = {
        "party": pa.array(ids, pa.int64()),
        "n_samples": pa.array([len(c.graph) for c in clients], pa.int64()),
        "n_edges": pa.array([c.graph.n_edges for c in clients], pa.int64()),
        "n_train": pa.array([len(c.train) for c in clients], pa.int64()),
        "n_test": pa.array([len(c.test) for c in clients], pa.int64()),
        "cross_edges": pa.array(
            [c.external.n_edges if c.external is not None else 0 for c in clients], pa.int64()
        ),
    }
    for k in range(data.n_classes):
        cols[f"label_{k}"] = pa.array(counts[:, k], pa.int64())
    return pa.table(cols)


def write_graph_partitions(data: GraphData, features: list[str], out_dir: Path) -> list[Path]:
    """Each client's subgraph as ``party_<id>.nodes.parquet`` (``node``, ``label``,
    ``split``: train or test, features) and ``party_<id>.edges.parquet`` (``src``, ``dst``
    as the graph's node ids), plus the global test graph as ``test.*.parquet``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    named = [(f"party_{cid:05d}", c.graph, c.test) for cid, c in sorted(data.clients.items())]
    named.append(("test", data.test, np.arange(len(data.test))))
    for stem, g, test in named:
        split = np.full(len(g), "train", dtype=object)
        split[test] = "test"
        ids = data.node_ids[g.nodes]  # the nodes table's ids
        cols = {"node": ids, "label": g.y, "split": split.astype(str)}
        cols.update({name: g.x[:, i] for i, name in enumerate(features)})
        rows = np.repeat(np.arange(len(g)), g.degrees())
        edges = {"src": ids[rows], "dst": ids[g.indices]}
        for kind, table in (("nodes", cols), ("edges", edges)):
            path = out_dir / f"{stem}.{kind}.parquet"
            pq.write_table(pa.table(table), path)
            paths.append(path)
    return paths
