"""Robust aggregators: how a server combines a round's uploads into the next global model.

Each aggregator is one small class with one contract (:class:`Aggregator`): it receives the
round's uploads as the rows of a matrix, their sample counts and the current global weights,
and returns the combined vector together with each upload's *influence*, its share of the
result. The influence is what lets the platform measure how much of an aggregate came from
Byzantine parties without the aggregator knowing who they are.

Distances between uploads (Krum) are, as in the CMFL authors' code, the sum over layers
(parameter tensors) of the L2 norms of the per-layer differences; with no layer boundaries
given, the whole vector is one layer.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from trainers.config import AggregatorConfig
from trainers.registry import Registry

__all__ = [
    "AGGREGATORS",
    "Aggregate",
    "Aggregator",
    "AggregatorError",
    "CenteredClipping",
    "GeometricMedian",
    "Krum",
    "Mean",
    "Median",
    "MultiKrum",
    "TrimmedMean",
    "UniformMean",
    "build_aggregator",
    "layer_distances",
]

Layers = Sequence[tuple[int, int]]


class AggregatorError(ValueError):
    """An aggregator's precondition does not hold (e.g. Krum with too few uploads)."""


@dataclass(frozen=True)
class Aggregate:
    """An aggregator's result."""

    vector: np.ndarray
    """The combined weights, float64."""
    influence: np.ndarray
    """Share of the result owed to each upload, in row order; non-negative, sums to 1."""


class Aggregator(abc.ABC):
    """Combines n uploads into one vector.

    Contract:
        * ``uploads`` is an (n, d) float array, one row per upload; ``counts`` the uploads'
          sample counts (n,); ``reference`` the global weights the uploads started from (d,).
        * The result does not depend on the row order except where documented for ties,
          which break towards the lower row index.
        * :meth:`check` raises :class:`AggregatorError` when n uploads cannot be aggregated;
          ``__call__`` calls it first.
    """

    def check(self, n: int) -> None:
        """Raises AggregatorError if ``n`` uploads break this aggregator's precondition."""
        if n < 1:
            raise AggregatorError(f"{type(self).__name__} needs at least one upload")

    def __call__(self, uploads: np.ndarray, counts: np.ndarray, reference: np.ndarray) -> Aggregate:
        uploads = np.asarray(uploads, dtype=np.float64)
        self.check(len(uploads))
        return self._aggregate(uploads, np.asarray(counts, dtype=np.float64), reference)

    @abc.abstractmethod
    def _aggregate(
        self, uploads: np.ndarray, counts: np.ndarray, reference: np.ndarray
    ) -> Aggregate: ...


class Mean(Aggregator):
    """FedAvg: the sample-weighted mean."""

    def _aggregate(self, uploads, counts, reference):
        share = counts / counts.sum()
        return Aggregate(share @ uploads, share)


class UniformMean(Aggregator):
    """The unweighted mean of the uploads (Reddi et al. 2021's Algorithm 2 averages the
    parties' updates uniformly; FedAvg's mean weighs them by samples)."""

    def _aggregate(self, uploads, counts, reference):
        share = np.full(len(uploads), 1.0 / len(uploads))
        return Aggregate(share @ uploads, share)


class Median(Aggregator):
    """Coordinate-wise median (unweighted); with an even n, the mean of the two middle values."""

    def _aggregate(self, uploads, counts, reference):
        n, d = uploads.shape
        order = np.argsort(uploads, axis=0, kind="stable")
        middle = [(n - 1) // 2, n // 2]  # one rank when n is odd, two when even
        chosen = np.take_along_axis(uploads, order[middle], axis=0)
        influence = sum(np.bincount(order[i], minlength=n) for i in middle) / (len(middle) * d)
        return Aggregate(chosen.mean(axis=0) if n % 2 == 0 else chosen[0], influence)


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean: per coordinate, drop the floor(trim * n) smallest and
    largest values and average the rest (scipy.stats.trim_mean's rule)."""

    def __init__(self, trim: float = 0.1) -> None:
        if not 0 <= trim < 0.5:
            raise AggregatorError(f"trimmed_mean: trim must be in [0, 0.5), got {trim}")
        self.trim = trim

    def _aggregate(self, uploads, counts, reference):
        n, d = uploads.shape
        cut = int(self.trim * n)
        order = np.argsort(uploads, axis=0, kind="stable")
        kept = order[cut : n - cut]
        vector = np.take_along_axis(uploads, kept, axis=0).mean(axis=0)
        influence = np.bincount(kept.ravel(), minlength=n) / kept.size
        return Aggregate(vector, influence)


class Krum(Aggregator):
    """Krum (Blanchard et al. 2017): the upload whose n - f - 2 nearest other uploads are
    closest in total.

    Args:
        f: Byzantine uploads assumed; None derives it from ``byzantine_fraction``.
        byzantine_fraction: with ``f`` None, f = ceil(fraction * n).
        layers: (start, stop) of every layer in the flat vector, for per-layer distances.
    """

    def __init__(
        self, f: int | None = None, byzantine_fraction: float = 0.0, layers: Layers | None = None
    ) -> None:
        self.f, self.byzantine_fraction, self.layers = f, byzantine_fraction, layers

    def assumed_f(self, n: int) -> int:
        if self.f is not None:
            return self.f
        return math.ceil(self.byzantine_fraction * n - 1e-9)

    def check(self, n: int) -> None:
        super().check(n)
        f = self.assumed_f(n)
        if n <= 2 * f + 2:
            raise AggregatorError(
                f"{type(self).__name__.lower()} needs n > 2f + 2 uploads, got n={n}, f={f}"
            )

    def scores(self, uploads: np.ndarray) -> np.ndarray:
        """Each upload's Krum score: the sum of its n - f - 2 smallest distances to others."""
        n = len(uploads)
        dist = layer_distances(uploads, uploads, self.layers)
        np.fill_diagonal(dist, np.inf)
        nearest = n - self.assumed_f(n) - 2
        return np.sort(dist, axis=1)[:, :nearest].sum(axis=1)

    def _aggregate(self, uploads, counts, reference):
        best = int(np.argmin(self.scores(uploads)))  # argmin: ties go to the lower row
        influence = np.zeros(len(uploads))
        influence[best] = 1.0
        return Aggregate(uploads[best].copy(), influence)


class MultiKrum(Krum):
    """Multi-Krum: the sample-weighted mean of the m uploads with the best Krum scores.

    Args:
        m: uploads averaged; None means n - f.
    """

    def __init__(
        self,
        f: int | None = None,
        m: int | None = None,
        byzantine_fraction: float = 0.0,
        layers: Layers | None = None,
    ) -> None:
        super().__init__(f, byzantine_fraction, layers)
        self.m = m

    def chosen_m(self, n: int) -> int:
        return self.m if self.m is not None else n - self.assumed_f(n)

    def check(self, n: int) -> None:
        super().check(n)
        m = self.chosen_m(n)
        if not 1 <= m <= n:
            raise AggregatorError(f"multi_krum needs 1 <= m <= n, got m={m}, n={n}")

    def _aggregate(self, uploads, counts, reference):
        order = np.argsort(self.scores(uploads), kind="stable")
        chosen = order[: self.chosen_m(len(uploads))]
        share = np.zeros(len(uploads))
        share[chosen] = counts[chosen] / counts[chosen].sum()
        return Aggregate(share @ uploads, share)


class GeometricMedian(Aggregator):
    """The sample-weighted geometric median, by Weiszfeld's iteration (smoothed by ``eps``
    so an estimate that lands on an upload does not divide by zero)."""

    def __init__(self, iters: int = 100, tol: float = 1e-6, eps: float = 1e-8) -> None:
        self.iters, self.tol, self.eps = iters, tol, eps

    def _aggregate(self, uploads, counts, reference):
        share = counts / counts.sum()
        z = share @ uploads
        beta = share
        for _ in range(self.iters):
            dist = np.maximum(np.linalg.norm(uploads - z, axis=1), self.eps)
            beta = share / dist
            beta /= beta.sum()
            moved = beta @ uploads
            step = np.linalg.norm(moved - z)
            z = moved
            if step <= self.tol * max(1.0, float(np.linalg.norm(z))):
                break
        return Aggregate(z, beta)


class CenteredClipping(Aggregator):
    """Centered clipping (Karimireddy et al. 2021): starting from the global weights, move the
    centre by the sample-weighted mean of the uploads' offsets, each clipped to norm ``tau``;
    ``iters`` times."""

    def __init__(self, tau: float = 1.0, iters: int = 3) -> None:
        if tau <= 0:
            raise AggregatorError(f"centered_clipping: tau must be > 0, got {tau}")
        self.tau, self.iters = tau, iters

    def _aggregate(self, uploads, counts, reference):
        share = counts / counts.sum()
        v = np.asarray(reference, dtype=np.float64).copy()
        weight = share
        for _ in range(self.iters):
            offsets = uploads - v
            norms = np.linalg.norm(offsets, axis=1)
            scale = np.minimum(1.0, self.tau / np.maximum(norms, 1e-12))
            weight = share * scale
            v = v + weight @ offsets
        return Aggregate(v, weight / weight.sum())


def layer_distances(a: np.ndarray, b: np.ndarray, layers: Layers | None = None) -> np.ndarray:
    """(len(a), len(b)) matrix of sum-over-layers L2 distances between the rows of a and b."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    out = np.zeros((len(a), len(b)))
    for start, stop in layers or [(0, a.shape[1])]:
        x, y = a[:, start:stop], b[:, start:stop]
        # |x - y|^2 = |x|^2 + |y|^2 - 2 x.y: one matrix product per layer, no (a, b, d) array.
        sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
        out += np.sqrt(np.maximum(sq, 0.0))
    return out


AggregatorFactory = Callable[[AggregatorConfig, float, "Layers | None"], Aggregator]
AGGREGATORS: Registry[AggregatorFactory] = Registry("aggregator")
AGGREGATORS.register("mean")(lambda cfg, frac, layers: Mean())
AGGREGATORS.register("uniform_mean")(lambda cfg, frac, layers: UniformMean())
AGGREGATORS.register("median")(lambda cfg, frac, layers: Median())
AGGREGATORS.register("trimmed_mean")(lambda cfg, frac, layers: TrimmedMean(cfg.trim))
AGGREGATORS.register("krum")(lambda cfg, frac, layers: Krum(cfg.f, frac, layers))
AGGREGATORS.register("multi_krum")(lambda cfg, frac, layers: MultiKrum(cfg.f, cfg.m, frac, layers))
AGGREGATORS.register("geometric_median")(
    lambda cfg, frac, layers: GeometricMedian(cfg.iters, cfg.tol)
)
AGGREGATORS.register("centered_clipping")(
    lambda cfg, frac, layers: CenteredClipping(cfg.tau, cfg.clip_iters)
)


def build_aggregator(
    cfg: AggregatorConfig, byzantine_fraction: float = 0.0, layers: Layers | None = None
) -> Aggregator:
    """The aggregator a config names.

    Args:
        cfg: the aggregator's name and settings.
        byzantine_fraction: the configured share of Byzantine parties (Krum's default f).
        layers: layer boundaries of the flat weight vector (Krum's distances).
    """
    return AGGREGATORS.get(cfg.name)(cfg, byzantine_fraction, layers)
