"""Typed trainer settings: what a config file's ``trainer:`` section holds.

Plain dataclasses: the orchestrator turns them into an OmegaConf schema, trainers read them.
Every field carries its default and a one-line description; ranges and names are checked by
the orchestrator before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from trainers.models import ModelConfig

__all__ = [
    "AggregatorConfig",
    "AttackConfig",
    "CMFLConfig",
    "DecentralizedConfig",
    "DistillConfig",
    "TeacherConfig",
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
class DecentralizedConfig:
    """Decentralized optimisation (dspg, dpsvrg, dsgd): the problem, the network, the steps."""

    loss: str = "logistic"
    """logistic (binary labels), multinomial or least_squares (on one-hot targets)."""
    l1: float = 1.0e-4
    """h(x) = l1 ||x||_1 + (l2/2) ||x||^2; l1 = l2 = 0 means no regulariser."""
    l2: float = 0.0
    """Elastic-net part of h."""
    topology: str = "ring"
    """ring, torus, star, complete, erdos_renyi or regular."""
    p: float = 0.3
    """erdos_renyi: edge probability (the graph is redrawn until connected)."""
    k: int = 4
    """regular: every node's degree."""
    varying: str = "none"
    """none; edges (each edge kept with probability q at each step); cycle (step t uses the
    (t mod b)-th of b sparse edge groups whose union is the base graph)."""
    q: float = 0.5
    """varying=edges: probability an edge exists at a step."""
    b: int = 3
    """varying=cycle: graphs in the cycle."""
    lazy: bool = False
    """Mix with (I + W) / 2 instead of the Metropolis-Hastings W."""
    batch_size: int = 8
    """Samples per node per stochastic gradient."""
    a0: float = 0.1
    """dspg, dsgd: the step a0 / sqrt(t + 1) (schedule=diminishing) or a0 (constant)."""
    schedule: str = "diminishing"
    """dspg, dsgd: diminishing or constant."""
    alpha: float = 0.1
    """dpsvrg: the constant step."""
    inner_steps: Optional[int] = None  # noqa: UP045
    """dpsvrg: K, steps between snapshots (default: one local pass, ceil(mean m_i / batch))."""
    gossip_rounds: int = 1
    """Mixing steps per step (W applied this many times)."""
    gossip_growth: float = 0.0
    """With c > 0, mixing steps at step t: max(gossip_rounds, ceil(c log(t + 2)))."""
    epochs: float = 50.0
    """Budget: stop after this many passes' worth of sample gradients over all the data."""
    max_steps: int = 1000000
    """Budget: stop after this many steps at most."""
    eval_every: int = 1
    """Steps between metric evaluations."""
    target: float = 1.0e-4
    """Suboptimality whose first crossing is reported as epochs_to_target."""
    cache_dir: Optional[str] = ".fedsweep/cache"  # noqa: UP045
    """Where the reference optimum F* of each problem is cached (None: memory only)."""


@dataclass
class TeacherConfig:
    """Where the distillation teacher comes from."""

    source: str = "train"
    """train: fedsweep trains ``model`` on the training split first; mlflow: load ``uri``."""
    uri: Optional[str] = None  # noqa: UP045
    """source=mlflow: models:/<name>/<version>, models:/<model id>, runs:/<run id>/<path to a
    checkpoint>, or run:<run id> for the model a fedsweep run logged (a federated global
    model, say)."""
    tracking_uri: Optional[str] = None  # noqa: UP045
    """source=mlflow: the tracking URI the teacher is found under (default: tracking.uri)."""
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(name="vit", dim=64, depth=6, heads=4)
    )
    """source=train: the teacher's architecture."""
    epochs: int = 30
    """source=train: epochs of supervised training."""
    lr: float = 1.0e-3
    """source=train: Adam learning rate."""


@dataclass
class DistillConfig:
    """A knowledge-distillation recipe (TinyMIM's axes, at CPU scale)."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The teacher (the student is the experiment's ``model``)."""
    target: str = "relations"
    """logits (KL at a temperature), features (a layer's representations) or relations (ViT:
    softmax(QK^T) and softmax(VV^T) maps; mlp/cnn: softmaxed sample-similarity Gram matrices)."""
    feature_loss: str = "mse"
    """features: mse, smooth_l1 or cosine, on layer-normalised features; a learned linear
    projection maps the student's width to the teacher's when they differ."""
    relations: str = "qk_vv"
    """relations on a ViT: qk_vv, qk or vv."""
    teacher_layer: int = -1
    """The teacher's layer (block) the target comes from: -1 the last, k the k-th (0-based)."""
    student_layer: int = -1
    """The student's layer matched to it."""
    temperature: float = 4.0
    """logits: softmax temperature (the KL is scaled by T^2)."""
    distill_weight: float = 1.0
    """Weight of the distillation loss."""
    label_weight: float = 1.0
    """Weight of the student's cross-entropy on the labels."""
    epochs: int = 30
    """Student epochs (each stage, with an assistant)."""
    finetune_epochs: int = 0
    """Epochs of label-only training of the final student after distillation (TinyMIM's
    protocol: distil without labels, label_weight 0, then fine-tune)."""
    batch_size: int = 64
    """Minibatch size."""
    lr: float = 1.0e-3
    """Adam learning rate of the student."""
    weight_decay: float = 0.0
    """AdamW weight decay of the student."""
    assistant: Optional[ModelConfig] = None  # noqa: UP045
    """Sequential distillation: teacher -> this intermediate-size model -> the student."""
    proxy_fraction: float = 0.0
    """Distil on this share of the held-out split (the rest evaluates) instead of on the
    training split: for a teacher that saw all the training data, e.g. a federated model."""


@dataclass
class TrainerConfig:
    """How training runs: rounds, party sampling and each party's local optimisation."""

    name: str = "fedavg"
    """One of the registered trainers: centralized, fedavg, fedprox, cmfl, dspg, dpsvrg, dsgd,
    distill."""
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
    decentralized: DecentralizedConfig = field(default_factory=DecentralizedConfig)
    """Settings of the decentralized trainers (dspg, dpsvrg, dsgd)."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Settings of the distill trainer (teacher, recipe, student schedule)."""
