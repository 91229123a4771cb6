"""Party-level differential privacy on a horizontal round's uploads (DP-FedAvg).

McMahan et al. ("Learning Differentially Private Recurrent Language Models", ICLR 2018): each
round samples every party independently with probability q (Poisson sampling, what the
accountant assumes), and each sampled party's update Delta_i = w_i - x is clipped to L2 norm
C. The server adds N(0, (z C)^2 I) to the sum of the clipped updates (central DP) and divides
by the expected number of uploads q N, a fixed denominator that does not depend on who
answered:

    x <- x + (sum_i Delta_i min(1, C / ||Delta_i||) + N(0, (z C)^2 I)) / (q N)

With local DP each party adds N(0, (z C)^2 I) to its own clipped update instead (simulated
here with the party's own stream of the run's seed: the server never sees an update
without its noise). Adaptive clipping (Andrew et al., NeurIPS 2021, central only) moves C
toward a quantile gamma of the update norms: b = (#{||Delta_i|| <= C} + N(0, sigma_b^2)) / (q N),
C <- C exp(-eta_C (b - gamma)), sigma_b = q N / 20, and the update noise shrinks to
z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) so that both releases together cost what z does.

The stage stands between the uploads (after any attack) and the server optimizer: it takes
the aggregator's place (its sensitivity is known; a robust aggregator's is not), and the
server optimizer steps along its noisy mean like any other aggregate (DP-FedAdam).

Accounting: Opacus's RDP accountant (the sampled Gaussian mechanism, composed over rounds;
chosen because it is the maintained PyTorch DP library whose analysis matches Poisson
sampling exactly, and its ``compute_rdp``/``get_privacy_spent`` are plain functions of
(q, z, steps)). Central: q and z per round. Local: a party's releases are not hidden by the
sampling, and a changed party moves its clipped update by up to 2C, so each party that took
part k times has spent k steps of the Gaussian mechanism with q = 1 and z / 2; the worst
party is reported.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from trainers.base import Invalid, derive_seed
from trainers.config import PrivacyConfig, PrivacyMode

__all__ = ["PRIVACY_METRICS", "Privacy", "PrivacyState", "epsilon"]

PRIVACY_METRICS = ("dp_epsilon", "dp_clip")
"""What a run with ``trainer.privacy`` reports every round besides its trainer's metrics."""

_SAMPLE_STREAM = 14
_NOISE_STREAM = 15
_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]
"""The Renyi orders the accountant tries (Opacus's defaults)."""


@dataclass
class PrivacyState:
    """What the stage carries from round to round (and in checkpoints)."""

    clip: float = 0.0
    """The current clipping norm C."""
    rounds: int = 0
    """Rounds released (central accounting)."""
    taken: dict[int, int] = field(default_factory=dict)
    """Party -> rounds its noisy update was released in (local accounting)."""


def epsilon(q: float, z: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``steps`` rounds of the sampled Gaussian mechanism."""
    if steps == 0:
        return 0.0
    if z == 0:
        return math.inf
    from opacus.accountants.analysis.rdp import get_privacy_spent

    rdp = np.asarray(_rdp_of_one_round(q, z)) * steps  # Renyi DP composes by adding
    with warnings.catch_warnings():  # little noise: the bound holds, only not at its tightest
        warnings.filterwarnings("ignore", message="Optimal order is the (smallest|largest) alpha")
        eps, _ = get_privacy_spent(orders=_ORDERS, rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=64)
def _rdp_of_one_round(q: float, z: float) -> tuple[float, ...]:
    """One round's RDP at every order (its series for fractional orders costs about 0.1 s)."""
    from opacus.accountants.analysis.rdp import compute_rdp

    return tuple(np.atleast_1d(compute_rdp(q=q, noise_multiplier=z, steps=1, orders=_ORDERS)))


class Privacy:
    """The DP stage of a run: sampling, clipping, noise and the accountant.

    Args:
        config: ``trainer.privacy``.
        parties: how many parties there are (N).
        per_round: the expected number of parties a round samples (q N).
        seed: the run's seed.
    """

    def __init__(self, config: PrivacyConfig, parties: int, per_round: int, seed: int) -> None:
        self.config, self.parties, self.seed = config, parties, seed
        self.q = per_round / parties
        self.expected = float(per_round)
        self.local = config.mode == PrivacyMode.local
        self.adaptive = config.quantile is not None
        self.z_update = config.noise
        if self.adaptive:
            sigma_b = self.expected / 20.0
            if config.noise >= 2 * sigma_b:
                raise Invalid(
                    "trainer.privacy.quantile",
                    f"adaptive clipping needs trainer.privacy.noise below {2 * sigma_b:g} "
                    f"(q N / 10, with {per_round:g} parties expected per round)",
                )
            self.sigma_b = sigma_b
            self.z_update = (
                (config.noise**-2 - (2 * sigma_b) ** -2) ** -0.5 if config.noise else 0.0
            )

    def begin(self) -> PrivacyState:
        return PrivacyState(clip=float(self.config.clip))

    def sample(self, ids: list[int], round_: int) -> list[int]:
        """Poisson sampling: every party independently with probability q."""
        rng = np.random.default_rng(derive_seed(self.seed, _SAMPLE_STREAM, round_))
        picked = rng.random(len(ids)) < self.q
        return [p for p, keep in zip(ids, picked) if keep]

    def aggregate(
        self,
        uploads: np.ndarray,
        parties: list[int],
        reference: np.ndarray,
        state: PrivacyState,
        round_: int,
    ) -> np.ndarray:
        """The new global weights (float64) from the round's uploaded weights (one row each)."""
        c = state.clip
        rng = np.random.default_rng(derive_seed(self.seed, _NOISE_STREAM, round_))
        deltas = uploads - reference.astype(np.float64)
        norms = np.linalg.norm(deltas, axis=1)
        scale = np.minimum(1.0, c / np.maximum(norms, 1e-300))
        clipped = deltas * scale[:, None]
        d = clipped.shape[1]
        if self.local:
            # each party's own noise: its stream depends on the party, not on who else came
            for i, p in enumerate(parties):
                own = np.random.default_rng(derive_seed(self.seed, _NOISE_STREAM, round_, p))
                clipped[i] += own.normal(0.0, self.z_update * c, d)
                state.taken[p] = state.taken.get(p, 0) + 1
            total = clipped.sum(axis=0)
        else:
            total = clipped.sum(axis=0) + rng.normal(0.0, self.z_update * c, d)
        state.rounds += 1
        if self.adaptive:
            below = float((norms <= c).sum()) + rng.normal(0.0, self.sigma_b)
            b = below / self.expected
            quantile = self.config.quantile
            assert quantile is not None
            state.clip = c * math.exp(-self.config.clip_lr * (b - quantile))
        return reference.astype(np.float64) + total / self.expected

    def metrics(self, state: PrivacyState) -> dict[str, float]:
        """The round's privacy metrics: epsilon spent so far at delta, and C."""
        cfg = self.config
        if self.local:
            worst = max(state.taken.values(), default=0)
            eps = epsilon(1.0, cfg.noise / 2.0, worst, cfg.delta)
        else:
            eps = epsilon(self.q, cfg.noise, state.rounds, cfg.delta)
        return {"dp_epsilon": eps, "dp_clip": state.clip}
