"""Typed trainer settings: what a config file's ``trainer:`` section holds.

Plain dataclasses: the orchestrator turns them into an OmegaConf schema, trainers read them.
Every field carries its default and a one-line description; ranges and names are checked by
the orchestrator before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

__all__ = [
    "AggregatorConfig",
    "AttackConfig",
    "CMFLConfig",
    "FedProxConfig",
    "TrainerConfig",
]


@dataclass
class FedProxConfig:
    """FedProx's addition to FedAvg."""

    mu: float = 0.01
    """Proximal coefficient: weight of (mu/2)||w - w_global||^2 in each party's local loss."""


@dataclass
class AttackConfig:
    """Byzantine parties: who they are and what they upload instead of their honest model."""

    name: str = "none"
    """none, sign_flip, scaling, zero, one, gaussian, explosion, label_flip, alie or ipm."""
    fraction: float = 0.0
    """Share of all parties that are Byzantine: a fixed set drawn from the run's seed."""
    target: str = "weights"
    """What a model attack corrupts: the uploaded weights w_k (as in the CMFL code) or the
    update w_k - w (the result is sent as w + corrupted update)."""
    range: float = 0.0
    """scaling ("disturb"): each element is multiplied by range + (1 - range) * U(0, 1)."""
    sigma: float = 1.0
    """gaussian: standard deviation of the added noise."""
    magnitude: float = 100.0
    """explosion: each element is replaced by magnitude * U(0, 1)."""
    z: Optional[float] = None  # noqa: UP045 - OmegaConf needs typing.Optional
    """alie: how many standard deviations below the mean to send (default: Baruch et al.'s
    z_max, computed from the number of uploads and of Byzantine uploads)."""
    epsilon: float = 0.5
    """ipm: Byzantine parties send -epsilon times the honest parties' mean."""


@dataclass
class AggregatorConfig:
    """How the server combines the uploads of a round."""

    name: str = "mean"
    """mean (FedAvg), median, trimmed_mean, krum, multi_krum, geometric_median or
    centered_clipping."""
    trim: float = 0.1
    """trimmed_mean: share of the values cut at each end of every coordinate."""
    f: Optional[int] = None  # noqa: UP045
    """krum / multi_krum: Byzantine uploads assumed among a round's uploads (default: the
    configured attack fraction times the uploads, rounded up)."""
    m: Optional[int] = None  # noqa: UP045
    """multi_krum: how many of the best-scored uploads are averaged (default: n - f)."""
    iters: int = 100
    """geometric_median: Weiszfeld iterations at most."""
    tol: float = 1.0e-6
    """geometric_median: stop when the estimate moves less than this."""
    tau: float = 1.0
    """centered_clipping: radius each upload's distance to the centre is clipped to."""
    clip_iters: int = 3
    """centered_clipping: clipping steps per round."""


@dataclass
class CMFLConfig:
    """CMFL: committee mechanism based FL (Che et al.)."""

    active_rate: float = 0.1
    """Share of all parties active each round (committee members plus trainers)."""
    committee_rate: float = 0.4
    """Share of the active parties that form the committee."""
    aggregation_rate: float = 0.4
    """Updates aggregated per round, as a share of all parties times active_rate."""
    strategy: int = 1
    """Selection strategy: 1 aggregates the trainers closest to the committee (robustness),
    2 the farthest (accuracy)."""
    election: str = "median"
    """How the next committee is elected from the ranked trainers: median (the middle ranks,
    as in the authors' code) or top (the trainers closest to the committee)."""


@dataclass
class TrainerConfig:
    """How training runs: rounds, party sampling and each party's local optimisation."""

    name: str = "fedavg"
    """One of the registered trainers: centralized, fedavg, fedprox, cmfl."""
    rounds: int = 20
    """Communication rounds (for centralized: rounds of ``local_epochs`` epochs each)."""
    fraction: float = 1.0
    """Fraction of parties sampled each round, in (0, 1]."""
    parties_per_round: Optional[int] = None  # noqa: UP045 - OmegaConf needs typing.Optional
    """Parties sampled each round; overrides ``fraction`` when set."""
    local_epochs: int = 1
    """Passes over its own data each sampled party makes per round."""
    batch_size: int = 32
    """Local minibatch size."""
    optimizer: str = "sgd"
    """Local optimizer: sgd or adam."""
    lr: float = 0.05
    """Local learning rate."""
    momentum: float = 0.0
    """SGD momentum (reset every round: it is local optimizer state)."""
    weight_decay: float = 0.0
    """L2 weight decay of the local optimizer."""
    fedprox: FedProxConfig = field(default_factory=FedProxConfig)
    """FedProx settings (read by the fedprox trainer only)."""
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    """How uploads are combined (fedavg and fedprox; CMFL's committee does its own choosing)."""
    attack: AttackConfig = field(default_factory=AttackConfig)
    """Byzantine parties and their attack (every federated trainer)."""
    cmfl: CMFLConfig = field(default_factory=CMFLConfig)
    """CMFL settings (read by the cmfl trainer only)."""
