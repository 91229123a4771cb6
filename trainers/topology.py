"""Communication graphs of decentralized learning and their mixing matrices.

A :class:`Topology` answers, for every global step t, which edges exist (the graph G(t)) and
the doubly stochastic mixing matrix W(t) that respects them. Static graphs: ring, 2-D torus,
star, complete, Erdos-Renyi (resampled until connected) and random k-regular. Time-varying
graphs: each edge of a base graph kept with probability q at each step, or a cycle of B
sparse graphs whose union is the (connected) base graph.

Weights are Metropolis-Hastings, W_ij = 1 / (1 + max(d_i, d_j)) on edges and W_ii = 1 minus
the rest of row i, optionally lazy, (I + W) / 2. Every matrix built is checked to be
symmetric, non-negative and doubly stochastic.
"""

from __future__ import annotations

import functools
import math
from dataclasses import KW_ONLY, dataclass

import networkx as nx
import numpy as np

from trainers.base import derive_seed
from trainers.config import DecentralizedConfig, Graph

__all__ = ["GRAPHS", "GraphSpec", "Topology", "metropolis_hastings", "spectral_gap", "without"]

_GRAPH_STREAM = 7
_EDGE_STREAM = 8
GRAPHS = tuple(g.value for g in Graph)


def metropolis_hastings(adjacency: np.ndarray, lazy: bool = False) -> np.ndarray:
    """The Metropolis-Hastings mixing matrix of an undirected graph (checked doubly
    stochastic)."""
    a = np.asarray(adjacency, dtype=bool)
    np.fill_diagonal(a, False)
    deg = a.sum(axis=1)
    w = np.where(a, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    if lazy:
        w = 0.5 * (np.eye(len(w)) + w)
    _check_doubly_stochastic(w)
    return w


def _check_doubly_stochastic(w: np.ndarray) -> None:
    if (
        not np.allclose(w, w.T, atol=1e-12)
        or (w < -1e-15).any()
        or not np.allclose(w.sum(axis=1), 1.0, atol=1e-12)
    ):
        raise ValueError("mixing matrix is not symmetric doubly stochastic")


def spectral_gap(w: np.ndarray) -> float:
    """1 - (second largest eigenvalue modulus) of a symmetric mixing matrix: how fast gossip
    averages (0 for a disconnected graph, 1 for exact averaging in one step)."""
    eig = np.sort(np.abs(np.linalg.eigvalsh(w)))[::-1]
    return float(1.0 - eig[1]) if len(eig) > 1 else 1.0


def _torus_shape(n: int) -> tuple[int, int]:
    rows = int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


def _base_graph(name: str, n: int, p: float, k: int, seed: int) -> nx.Graph:
    if name == "ring":
        return nx.cycle_graph(n)
    if name == "complete":
        return nx.complete_graph(n)
    if name == "star":
        return nx.star_graph(n - 1)
    if name == "torus":
        rows, cols = _torus_shape(n)
        g = nx.grid_2d_graph(rows, cols, periodic=True)
        return nx.convert_node_labels_to_integers(g, ordering="sorted")
    rng = np.random.default_rng(derive_seed(seed, _GRAPH_STREAM))
    for _ in range(1000):  # resampled until connected
        draw = int(rng.integers(2**31))
        if name == "erdos_renyi":
            g = nx.gnp_random_graph(n, p, seed=draw)
        elif name == "regular":
            g = nx.random_regular_graph(k, n, seed=draw)
        else:
            raise ValueError(f"unknown graph {name!r}; valid: {', '.join(GRAPHS)}")
        if nx.is_connected(g):
            return g
    raise ValueError(f"no connected {name} graph with n={n} found in 1000 draws")


@dataclass(frozen=True)
class GraphSpec:
    """Which graph: a static base graph and how it varies over steps.

    Args:
        name: the base graph (see GRAPHS).
        p: erdos_renyi edge probability.
        k: regular degree.
        varying: ``none``, ``edges`` (each base edge kept with probability q per step) or
            ``cycle`` (step t uses the (t mod B)-th of B edge groups that cover the base graph).
        q: edge keep probability for ``edges``.
        b: number of graphs in the ``cycle``.
        lazy: use (I + W) / 2.
    """

    name: str
    _: KW_ONLY
    p: float = 0.3
    k: int = 4
    varying: str = "none"
    q: float = 0.5
    b: int = 3
    lazy: bool = False

    @classmethod
    def of(cls, cfg: DecentralizedConfig) -> GraphSpec:
        """The graph a decentralized config describes."""
        return cls(
            str(cfg.topology),
            p=cfg.p,
            k=cfg.k,
            varying=str(cfg.varying),
            q=cfg.q,
            b=cfg.b,
            lazy=cfg.lazy,
        )


@dataclass
class Topology:
    """A (possibly time-varying) communication graph over n nodes.

    Args:
        spec: the graph.
        n: nodes.
        seed: the run's seed (random graphs and edge draws derive from it).
    """

    spec: GraphSpec
    n: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError("a network needs at least 2 nodes")
        s = self.spec
        self.graph, self.varying, self.q, self.b, self.lazy = s.name, s.varying, s.q, s.b, s.lazy
        self.base = _base_graph(s.name, self.n, s.p, s.k, self.seed)
        self.edges = np.array(sorted(tuple(sorted(e)) for e in self.base.edges()), dtype=np.int64)
        self._static = metropolis_hastings(self.adjacency(self.edges), self.lazy)
        if self.varying == "cycle":
            # Edge groups assigned round-robin: each group is sparse, their union is the base.
            self._cycle = [
                metropolis_hastings(self.adjacency(self.edges[i :: self.b]), self.lazy)
                for i in range(self.b)
            ]

    def adjacency(self, edges: np.ndarray) -> np.ndarray:
        a = np.zeros((self.n, self.n), dtype=bool)
        if len(edges):
            a[edges[:, 0], edges[:, 1]] = a[edges[:, 1], edges[:, 0]] = True
        return a

    def edges_at(self, t: int) -> np.ndarray:
        """The edges G(t) has, as (m, 2) node pairs."""
        if self.varying == "edges":
            rng = np.random.default_rng(derive_seed(self.seed, _EDGE_STREAM, t))
            return self.edges[rng.random(len(self.edges)) < self.q]
        if self.varying == "cycle":
            return self.edges[t % self.b :: self.b]
        return self.edges

    def matrix(self, t: int) -> np.ndarray:
        """W(t)."""
        if self.varying == "edges":
            return metropolis_hastings(self.adjacency(self.edges_at(t)), self.lazy)
        if self.varying == "cycle":
            return self._cycle[t % self.b]
        return self._static

    @property
    def gap(self) -> float:
        """Spectral gap of the static W; for time-varying graphs, of the expected W over the
        edge draws (edges) or of the product of one cycle (cycle)."""
        if self.varying == "cycle":
            prod = np.eye(self.n)
            for w in self._cycle:
                prod = w @ prod
            return spectral_gap(0.5 * (prod + prod.T))
        if self.varying == "edges":
            mean = functools.reduce(np.add, [self.matrix(t) for t in range(200)]) / 200
            return spectral_gap(mean)
        return spectral_gap(self._static)


def without(w: np.ndarray, absent: list[int]) -> np.ndarray:
    """The mixing matrix of a step some nodes sit out: their edges' weights go to the
    neighbours' own diagonal, and each absent node keeps its model (its row is e_i). A
    symmetric doubly stochastic W stays so."""
    w = np.array(w, dtype=np.float64, copy=True)
    if not absent:
        return w
    idx = np.asarray(absent)
    lost = w[:, idx].sum(axis=1)
    w[:, idx] = 0.0
    w[idx, :] = 0.0
    w[np.arange(len(w)), np.arange(len(w))] += lost
    w[idx, idx] = 1.0
    return w
