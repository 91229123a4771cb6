"""Graph neural networks in plain PyTorch: GCN and GraphSAGE over sampled trees or whole graphs.

A model is FedEgo's three parts (``model.hidden = [h0, h1, ...]``):

- the **reduction layer**: Linear(features -> h0) + ReLU, applied to every node alone;
- one **graph convolution** per further width (``sage`` or ``gcn``), ReLU after each;
- the **classifier**: Linear(-> classes), no bias.

Training runs on neighbour-sampled trees (:func:`trainers.graph.data.sample_tree`: a fixed
fan-out per hop, as PyG's NeighborLoader draws, written here because NeighborLoader needs
pyg-lib or torch-sparse); evaluation on the whole (sub)graph with sparse products.

The two convolutions, with N(v) the neighbours of v:

- ``sage`` (GraphSAGE, mean): W_s h_v + W_n mean_{u in N(v)} h_u (a node without neighbours
  is its own: W_s h_v + W_n h_v, in the sampler and the whole graph alike);
- ``gcn``: W mean_{u in N(v) + v} h_u, the node with its neighbours averaged (the random-walk
  normalisation D^-1 (A + I); on a sampled tree, (h_v + deg(v) mean(sample)) / (1 + deg(v)),
  whose expectation it is; Kipf and Welling's symmetric normalisation would differ between a
  sampled tree and the graph).
"""

from __future__ import annotations

import typing

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers.models import MODELS, ModelSpec

__all__ = ["GRAPH_MODELS", "GraphNet", "adjacency", "n_convs"]

GRAPH_MODELS = ("gcn", "sage")
"""The models a graph trainer trains (and only a graph trainer)."""


def n_convs(hidden: list[int] | tuple[int, ...]) -> int:
    """Graph convolutions of a model with these widths (the first is the reduction layer)."""
    return max(0, len(hidden) - 1)


def adjacency(indptr: np.ndarray, indices: np.ndarray, n: int, self_loops: bool) -> torch.Tensor:
    """The mean-aggregation matrix of a CSR graph over ``n`` rows (columns: ``indices``'
    range, at least ``n``): row v averages v's neighbours (and v, with ``self_loops``); a
    node without neighbours averages itself, as :func:`~trainers.graph.data.sample_tree`
    samples it."""
    cols = max(n, int(indices.max()) + 1 if len(indices) else 0)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    targets = np.asarray(indices, dtype=np.int64)
    # a node without neighbours is its own (as the sampler has it)
    loops = np.arange(n) if self_loops else np.flatnonzero(np.diff(indptr) == 0)
    rows, targets = np.concatenate([rows, loops]), np.concatenate([targets, loops])
    order = np.lexsort((targets, rows))
    rows, targets = rows[order], targets[order]
    counts = np.bincount(rows, minlength=n)
    values = (1.0 / np.maximum(counts, 1))[rows].astype(np.float32)
    return torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([rows, targets])),
        torch.from_numpy(values),
        size=(n, cols),
        is_coalesced=True,
        check_invariants=False,
    )


class _Conv(nn.Module):
    def __init__(self, width_in: int, width_out: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(width_in, width_out)
        self.neigh = nn.Linear(width_in, width_out, bias=False) if kind == "sage" else None

    def tree(
        self, h: torch.Tensor, children: torch.Tensor, degree: torch.Tensor | None
    ) -> torch.Tensor:
        """The layer at the nodes ``h`` ([..., d]) whose sampled neighbours are ``children``
        ([..., fan, d]); gcn weighs the node against its neighbours by its ``degree``
        ([...]; None: the fan-out, the sample taken as the whole neighbourhood)."""
        mean = children.mean(-2)
        if self.neigh is not None:
            return self.lin(h) + self.neigh(mean)
        deg = (
            torch.full(h.shape[:-1], float(children.shape[-2])) if degree is None else degree
        ).unsqueeze(-1)
        return self.lin((h + deg * mean) / (1 + deg))

    def full(self, h: torch.Tensor, adj: torch.Tensor, rows: int) -> torch.Tensor:
        """The layer at the first ``rows`` nodes of ``h``, whose neighbours ``adj`` averages
        (built with self-loops for gcn)."""
        mean = torch.sparse.mm(adj, h)
        if self.neigh is not None:
            return self.lin(h[:rows]) + self.neigh(mean)
        return self.lin(mean)


class GraphNet(nn.Module):
    """The reduction layer, the graph convolutions and the classifier (see the module
    docstring). :meth:`forward` classifies every node of a graph given as features and a
    mean-aggregation matrix (None: no edges)."""

    def __init__(self, spec: ModelSpec, kind: str) -> None:
        super().__init__()
        widths = list(spec.hidden)
        self.kind, self.p = kind, spec.dropout
        self.reduce = nn.Linear(spec.n_features, widths[0])
        self.convs = nn.ModuleList(_Conv(a, b, kind) for a, b in zip(widths[:-1], widths[1:]))
        self.classify = nn.Linear(widths[-1], spec.n_classes, bias=False)

    def _convs(self) -> list[_Conv]:
        return [typing.cast(_Conv, conv) for conv in self.convs]

    @property
    def reduction_size(self) -> int:
        """Values of the reduction layer: the first ones of the flat parameter vector."""
        return sum(p.numel() for p in self.reduce.parameters())

    def embed(self, x: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        """The reduction layer's output for every row of ``x`` (dropped out in training,
        unless ``dropout`` is false)."""
        return F.dropout(F.relu(self.reduce(x)), self.p, self.training and dropout)

    def tree(
        self, levels: list[torch.Tensor], degrees: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Logits at the roots of sampled trees given as embedded levels ``[B, d]``,
        ``[B, f1, d]``, ``[B, f1, f2, d]``... (one more level than convolutions), with the
        nodes' degrees by level (gcn's weights; None: see :meth:`_Conv.tree`)."""
        for conv in self._convs():
            levels = [
                F.dropout(
                    F.relu(conv.tree(levels[d], levels[d + 1], degrees[d] if degrees else None)),
                    self.p,
                    self.training,
                )
                for d in range(len(levels) - 1)
            ]
        return self.classify(levels[0])

    def propagate(self, h: torch.Tensor, adj: list[torch.Tensor], rows: int) -> torch.Tensor:
        """Logits of the first ``rows`` nodes from embedded nodes ``h`` (rows beyond are
        neighbours only: GFL's foreign nodes); ``adj``: the mean matrix of each convolution
        (gcn's with self-loops)."""
        for conv, a in zip(self._convs(), adj):
            h = F.dropout(F.relu(conv.full(h, a, rows)), self.p, self.training)
        return self.classify(h[:rows])

    def forward(
        self, x: torch.Tensor, adj: torch.Tensor | None = None, loops: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of every node; ``adj`` (without self-loops) and ``loops`` (with) are the
        graph's mean matrices (None: a graph without edges)."""
        n = len(x)
        if adj is None or loops is None:
            empty = np.zeros(0, dtype=np.int64)
            adj = adjacency(np.zeros(n + 1, dtype=np.int64), empty, n, False)
            loops = adjacency(np.zeros(n + 1, dtype=np.int64), empty, n, True)
        mats = [loops if self.kind == "gcn" else adj] * len(self.convs)
        return self.propagate(self.embed(x), mats, n)


MODELS.register("gcn")(lambda spec: GraphNet(spec, "gcn"))
MODELS.register("sage")(lambda spec: GraphNet(spec, "sage"))
