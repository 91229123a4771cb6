"""Byzantine attacks: what dishonest parties send in place of their honest upload.

The Byzantine parties are a fixed set drawn once from the run's seed. Each of them trains
honestly; then a model attack replaces what it uploads. :class:`Adversary` wraps the round's
uploads: it applies the attack to the Byzantine rows only, either to the uploaded weights w_k
(as the CMFL authors' code does) or to the update w_k - w, and leaves the honest rows alone.
Colluding attacks (ALIE, IPM) read the honest uploads' statistics, which is why attacks work
on the whole round's matrix rather than on one party at a time. Label flipping is a data
attack instead: :class:`LabelFlipping` wraps a party's local training so that a Byzantine
party trains on labels c -> C - 1 - c.

The attacks of the CMFL code (``attack_method``): 1 scaling ("disturb"), 2 all-zero, 3
all-one, 5 Gaussian noise, 6 sign flip ("gradient steering"), 7 gradient explosion.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from clusters import PartyContext
from trainers.base import PartyData, derive_seed
from trainers.config import AttackConfig
from trainers.registry import Registry

__all__ = [
    "ATTACKS",
    "DISTILLATION_ONLY",
    "ALIE",
    "IPM",
    "Adversary",
    "Attack",
    "LabelFlipping",
    "build_adversary",
    "byzantine_parties",
]

_BYZANTINE_STREAM = 4
_ATTACK_STREAM = 5


class Attack(abc.ABC):
    """Replaces the Byzantine rows of a round's uploads.

    Contract: ``corrupt(vectors, byzantine, rng)`` gets an (n, d) float64 array (weights or
    updates), a boolean mask of the Byzantine rows and a generator, and returns an array of
    the same shape whose honest rows are unchanged.
    """

    data_attack: bool = False
    """True when the attack acts on a party's data, leaving its upload as trained."""

    @abc.abstractmethod
    def corrupt(
        self, vectors: np.ndarray, byzantine: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray: ...


class _RowAttack(Attack):
    """An attack each Byzantine party mounts alone, from its own honest vector."""

    def corrupt(self, vectors, byzantine, rng):
        out = vectors.copy()
        rows = np.flatnonzero(byzantine)
        if len(rows):
            out[rows] = self._rows(vectors[rows], rng)
        return out

    @abc.abstractmethod
    def _rows(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


class SignFlip(_RowAttack):
    """Multiplies everything by -1 (the code's "gradient steering")."""

    def _rows(self, rows, rng):
        return -rows


class Scaling(_RowAttack):
    """Multiplies each element by range + (1 - range) * U(0, 1) (the code's "disturb")."""

    def __init__(self, range_: float = 0.0) -> None:
        self.range = range_

    def _rows(self, rows, rng):
        return rows * (self.range + (1.0 - self.range) * rng.random(rows.shape))


class Zero(_RowAttack):
    """Sends all zeros."""

    def _rows(self, rows, rng):
        return np.zeros_like(rows)


class One(_RowAttack):
    """Sends all ones."""

    def _rows(self, rows, rng):
        return np.ones_like(rows)


class Gaussian(_RowAttack):
    """Adds N(0, sigma^2) noise to every element."""

    def __init__(self, sigma: float = 1.0) -> None:
        self.sigma = sigma

    def _rows(self, rows, rng):
        return rows + rng.normal(0.0, self.sigma, rows.shape)


class Explosion(_RowAttack):
    """Replaces every element with magnitude * U(0, 1)."""

    def __init__(self, magnitude: float = 100.0) -> None:
        self.magnitude = magnitude

    def _rows(self, rows, rng):
        return self.magnitude * rng.random(rows.shape)


class LabelFlip(Attack):
    """A data attack: Byzantine parties train on flipped labels (see :class:`LabelFlipping`)
    and upload what they trained."""

    data_attack = True

    def corrupt(self, vectors, byzantine, rng):
        return vectors


def _honest_stats(vectors: np.ndarray, byzantine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    honest = vectors[~byzantine] if (~byzantine).any() else vectors
    return honest.mean(axis=0), honest.std(axis=0)


class ALIE(Attack):
    """ "A little is enough" (Baruch et al. 2019): every Byzantine party sends mu - z * sigma,
    the coordinate-wise mean and standard deviation of the honest uploads, a shift small
    enough to pass distance- and median-based defences.

    Args:
        z: the shift in standard deviations; None uses the paper's z_max for n uploads of
            which f are Byzantine: s = floor(n / 2 + 1) - f, z = Phi^-1((n - s) / n).
    """

    def __init__(self, z: float | None = None) -> None:
        self.z = z

    @staticmethod
    def z_max(n: int, f: int) -> float:
        s = math.floor(n / 2 + 1) - f
        p = min(max((n - s) / n, 1e-6), 1 - 1e-6)
        return NormalDist().inv_cdf(p)

    def corrupt(self, vectors, byzantine, rng):
        out = vectors.copy()
        f = int(byzantine.sum())
        if f:
            mean, std = _honest_stats(vectors, byzantine)
            z = self.z if self.z is not None else self.z_max(len(vectors), f)
            out[byzantine] = mean - z * std
        return out


class IPM(Attack):
    """Inner-product manipulation (Xie et al. 2020): every Byzantine party sends -epsilon
    times the honest uploads' mean, so the aggregate's inner product with it turns negative."""

    def __init__(self, epsilon: float = 0.5) -> None:
        self.epsilon = epsilon

    def corrupt(self, vectors, byzantine, rng):
        out = vectors.copy()
        if byzantine.any():
            mean, _ = _honest_stats(vectors, byzantine)
            out[byzantine] = -self.epsilon * mean
        return out


AttackFactory = Callable[[AttackConfig], Attack]
ATTACKS: Registry[AttackFactory | None] = Registry("attack")
ATTACKS.register("none")(None)
ATTACKS.register("sign_flip")(lambda cfg: SignFlip())
ATTACKS.register("scaling")(lambda cfg: Scaling(cfg.range))
ATTACKS.register("zero")(lambda cfg: Zero())
ATTACKS.register("one")(lambda cfg: One())
ATTACKS.register("gaussian")(lambda cfg: Gaussian(cfg.sigma))
ATTACKS.register("explosion")(lambda cfg: Explosion(cfg.magnitude))
ATTACKS.register("label_flip")(lambda cfg: LabelFlip())
ATTACKS.register("alie")(lambda cfg: ALIE(cfg.z))
ATTACKS.register("ipm")(lambda cfg: IPM(cfg.epsilon))
ATTACKS.register("backdoor")(None)  # planted through dataset distillation (fed_condense)
DISTILLATION_ONLY = frozenset({"backdoor"})
"""Attacks only a distilling party mounts (trainer.backdoor): the model trainers refuse them."""


@dataclass(frozen=True)
class Adversary:
    """Wraps a round's uploads: the Byzantine rows are replaced by the attack's output.

    Args:
        attack: the attack the Byzantine parties mount.
        target: ``weights`` (corrupt w_k) or ``update`` (corrupt w_k - w, send w + result).
        seed: the run's seed; the attack's randomness in a round derives from it.
    """

    attack: Attack
    target: str = "weights"
    seed: int = 0

    def __call__(
        self, uploads: np.ndarray, byzantine: np.ndarray, reference: np.ndarray, round_: int
    ) -> np.ndarray:
        if self.attack.data_attack or not byzantine.any():
            return uploads
        rng = np.random.default_rng(derive_seed(self.seed, _ATTACK_STREAM, round_))
        if self.target == "update":
            ref = np.asarray(reference, dtype=np.float64)
            return ref + self.attack.corrupt(uploads - ref, byzantine, rng)
        return self.attack.corrupt(uploads, byzantine, rng)


def build_adversary(cfg: AttackConfig, seed: int) -> Adversary | None:
    """The adversary a config describes, or None for ``attack.name: none``."""
    factory = ATTACKS.get(cfg.name)
    return None if factory is None else Adversary(factory(cfg), cfg.target, seed)


def byzantine_parties(party_ids: Iterable[int], cfg: AttackConfig, seed: int) -> frozenset[int]:
    """The fixed Byzantine set: round(fraction * N) parties drawn from the run's seed (empty
    when there is no attack)."""
    ids = sorted(party_ids)
    k = round(cfg.fraction * len(ids))
    if cfg.name == "none" or k == 0:  # backdoor: the distilling parties (fed_condense)
        return frozenset()
    rng = np.random.default_rng(derive_seed(seed, _BYZANTINE_STREAM))
    return frozenset(int(p) for p in rng.choice(ids, size=k, replace=False))


@dataclass(frozen=True)
class LabelFlipping:
    """Wraps a party function: Byzantine parties train on labels c -> n_classes - 1 - c."""

    inner: Callable[[PartyContext, Any], Any]
    parties: frozenset[int]
    n_classes: int

    def __call__(self, ctx: PartyContext, payload: Any) -> Any:
        if ctx.party_id not in self.parties:
            return self.inner(ctx, payload)
        flipped = ctx.scratch.get("label_flipped")
        if flipped is None:  # a context of its own, so cached tensors hold the flipped labels
            data: PartyData = ctx.data
            flipped = ctx.scratch["label_flipped"] = PartyContext(
                ctx.party_id,
                PartyData(data.x, self.n_classes - 1 - data.y),
                {},
                ctx.cache,
                ctx.device,
            )
        return self.inner(flipped, payload)
