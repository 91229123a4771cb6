"""What the clients of a graph federation hold: subgraphs of one graph, as plain arrays.

A graph is node features, labels and an undirected edge list (both directions stored). It is
split into clients: each keeps the subgraph its nodes induce, its own training and local
test nodes, and a reference to the global test graph (the held-out nodes' own subgraph,
which no client trains on). Cross-client edges are lost to every method but GFL, which keeps
each client's edges to other clients' nodes (:class:`External`) and shares hidden
representations along them.

Adjacency is CSR (``indptr``, ``indices``) over a subgraph's local node indices; the
neighbour sampler draws a fixed fan-out per hop, with replacement, from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "External",
    "GraphClient",
    "GraphData",
    "Subgraph",
    "csr",
    "sample_tree",
]


def csr(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the directed edges src -> dst over ``n`` nodes: row ``v`` lists v's
    neighbours, ascending."""
    order = np.lexsort((dst, src))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(indptr, src + 1, 1)
    return np.cumsum(indptr), np.asarray(dst[order], dtype=np.int64)


@dataclass(frozen=True)
class Subgraph:
    """Nodes of one graph and the edges among them, reindexed 0..n-1."""

    nodes: np.ndarray
    """Each local node's id in the whole graph (int64, ascending)."""
    x: np.ndarray
    """Node features, float32, one row per local node."""
    y: np.ndarray
    """Node labels (int64)."""
    indptr: np.ndarray
    indices: np.ndarray
    """CSR adjacency over local indices, both directions of every edge."""

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def n_edges(self) -> int:
        """Undirected edges."""
        return len(self.indices) // 2

    def degrees(self) -> np.ndarray:
        return np.diff(self.indptr)

    @classmethod
    def induced(
        cls, nodes: np.ndarray, x: np.ndarray, y: np.ndarray, src: np.ndarray, dst: np.ndarray
    ) -> Subgraph:
        """The subgraph that ``nodes`` (ids of a graph with features ``x``, labels ``y`` and
        directed edges ``src -> dst``) induce."""
        nodes = np.unique(np.asarray(nodes, dtype=np.int64))
        local = np.full(len(y), -1, dtype=np.int64)
        local[nodes] = np.arange(len(nodes))
        keep = (local[src] >= 0) & (local[dst] >= 0)
        indptr, indices = csr(local[src[keep]], local[dst[keep]], len(nodes))
        return cls(nodes, np.ascontiguousarray(x[nodes]), y[nodes], indptr, indices)


@dataclass(frozen=True)
class External:
    """A client's edges to nodes other clients hold (GFL's cross-client neighbours).

    The foreign nodes are numbered after the client's own: foreign node ``k`` is local index
    ``n + k`` in :attr:`indptr`/:attr:`indices`, the client's adjacency with them included.
    """

    owner: np.ndarray
    """Foreign node k's client."""
    index: np.ndarray
    """Foreign node k's local index at its client."""
    indptr: np.ndarray
    indices: np.ndarray
    """CSR over the client's own nodes (rows) and own plus foreign nodes (columns)."""
    shared: np.ndarray
    """The client's own nodes that other clients hold an edge to (what it shares), as local
    indices, ascending."""

    @property
    def n_edges(self) -> int:
        """Cross-client edges at this client."""
        return int((self.indices >= len(self.indptr) - 1).sum())


@dataclass(frozen=True)
class GraphClient:
    """One client of a graph federation, as shipped to the worker that hosts it."""

    graph: Subgraph
    train: np.ndarray
    """Local indices of its training nodes."""
    test: np.ndarray
    """Local indices of its local test nodes."""
    global_test: Subgraph
    """The global test graph (the same object at every client)."""
    external: External | None = None
    """Edges to other clients' nodes (disjoint partitions only)."""

    def __len__(self) -> int:
        return len(self.train)

    def links(self) -> External:
        """Its edges to other clients' nodes (only a disjoint split's clients have them)."""
        if self.external is None:
            raise ValueError("a client of an overlapping split has no cross-client edges")
        return self.external

    def label_distribution(self, n_classes: int) -> np.ndarray:
        """The share of each label among the client's training nodes (FedEgo's p_i)."""
        counts = np.bincount(self.graph.y[self.train], minlength=n_classes).astype(np.float64)
        return counts / max(1.0, counts.sum())


@dataclass(frozen=True)
class GraphData:
    """A graph split into clients, as the trainers see it."""

    clients: Mapping[int, GraphClient]
    """Each client's subgraph by id."""
    pool: GraphClient
    """Every client's nodes in one graph, with every edge among them (the cross-client ones
    too): what the centralized baseline trains on (its training nodes are the clients'
    training nodes, its test nodes their local test nodes)."""
    test: Subgraph
    """The global test graph."""
    n_features: int
    n_classes: int
    disjoint: bool
    """Whether every node is held by one client at most (GFL needs it)."""
    node_ids: np.ndarray
    """Each node's id in the graph's nodes table (the subgraphs' ``nodes`` index it)."""
    edges_lost: int
    """Undirected edges among the clients' nodes that no client's subgraph holds."""

    @property
    def x_test(self) -> np.ndarray:
        """The global test nodes' features (an input example of the final model)."""
        return self.test.x

    @property
    def y_test(self) -> np.ndarray:
        return self.test.y


def sample_tree(
    indptr: np.ndarray,
    indices: np.ndarray,
    roots: np.ndarray,
    fanouts: Sequence[int],
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Each root's sampled neighbourhood tree: ``fanouts[h]`` neighbours of every node at
    hop ``h``, drawn with replacement; a node without neighbours stands in for its own
    (a self-loop). Returns the node indices per hop: ``[B]``, ``[B, f1]``, ``[B, f1, f2]``...
    (FedEgo's ego-graph of 1 + 6 + 36 slots is ``fanouts = (6, 6)``)."""
    levels = [np.asarray(roots, dtype=np.int64)]
    for fan in fanouts:
        parents = levels[-1]
        start = indptr[parents]
        degree = indptr[parents + 1] - start
        pick = (rng.random((*parents.shape, fan)) * degree[..., None]).astype(np.int64)
        if len(indices):
            nbrs = indices[np.minimum(start[..., None] + pick, len(indices) - 1)]
        else:
            nbrs = np.broadcast_to(parents[..., None], pick.shape)
        levels.append(np.where(degree[..., None] > 0, nbrs, parents[..., None]))
    return levels


def sizes_of(clients: Mapping[int, GraphClient]) -> dict[int, int]:
    """Each client's work estimate (its node count), for load balancing."""
    return {cid: len(c.graph) for cid, c in clients.items()}
