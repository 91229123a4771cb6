"""Typed trainer settings: what a config file's ``trainer:`` section holds.

Plain dataclasses: the orchestrator turns them into an OmegaConf schema, trainers read them.
Every field carries its default and a one-line description; what a field accepts beyond its
type sits beside it (a rule in its metadata, see :mod:`trainers.rules`, or a :class:`Choice`
enum), and the orchestrator checks it before anything runs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

from trainers.models import ModelConfig
from trainers.rules import Choice, at_least, between, each, file_path, one_of, positive

__all__ = [
    "AggregatorConfig",
    "AttackConfig",
    "AttackTarget",
    "BackdoorConfig",
    "BackdoorName",
    "CondenseConfig",
    "CondenseDefense",
    "CondenseInit",
    "CondenseMethod",
    "CMFLConfig",
    "DecentralizedConfig",
    "DistillConfig",
    "DistillTarget",
    "Election",
    "FeatureLoss",
    "FedNovaConfig",
    "FedProxConfig",
    "Freeze",
    "Graph",
    "Loss",
    "Optimizer",
    "Relations",
    "SSLConfig",
    "Schedule",
    "ServerConfig",
    "ServerOptimizer",
    "PrivacyConfig",
    "PrivacyMode",
    "StragglerConfig",
    "Strategy",
    "TeacherConfig",
    "TeacherSource",
    "TrainerConfig",
    "VFLAttackConfig",
    "VFLConfig",
    "VFLDefenseConfig",
    "Varying",
]


class Optimizer(Choice):
    """A party's local optimizer."""

    sgd = "sgd"
    adam = "adam"


class ServerOptimizer(Choice):
    """The server's step on a round's pseudo-gradient (Reddi et al. 2021, Hsu et al. 2019)."""

    none = "none"
    momentum = "momentum"
    adagrad = "adagrad"
    adam = "adam"
    yogi = "yogi"


class PrivacyMode(Choice):
    """Where party-level differential privacy adds its noise."""

    none = "none"
    central = "central"
    local = "local"


class AttackTarget(Choice):
    """What a model attack corrupts."""

    weights = "weights"
    update = "update"


class Strategy(enum.IntEnum):
    """CMFL's selection strategy: 1 aggregates the trainers closest to the committee, 2 the
    farthest."""

    closest = 1
    farthest = 2


class Election(Choice):
    """How CMFL elects the next committee from the ranked trainers."""

    median = "median"
    top = "top"


class Loss(Choice):
    """The loss of the decentralized problem."""

    least_squares = "least_squares"
    logistic = "logistic"
    multinomial = "multinomial"


class Graph(Choice):
    """The communication graph of a decentralized network."""

    complete = "complete"
    erdos_renyi = "erdos_renyi"
    regular = "regular"
    ring = "ring"
    star = "star"
    torus = "torus"


class Varying(Choice):
    """How the graph changes over steps."""

    none = "none"
    edges = "edges"
    cycle = "cycle"


class Schedule(Choice):
    """The step-size schedule of dspg and dsgd."""

    diminishing = "diminishing"
    constant = "constant"


class TeacherSource(Choice):
    """Where a distillation teacher comes from."""

    train = "train"
    mlflow = "mlflow"


class DistillTarget(Choice):
    """What the student matches."""

    logits = "logits"
    features = "features"
    relations = "relations"


class FeatureLoss(Choice):
    """The distance between feature targets."""

    mse = "mse"
    smooth_l1 = "smooth_l1"
    cosine = "cosine"


class Relations(Choice):
    """Which ViT token relations are matched."""

    qk_vv = "qk_vv"
    qk = "qk"
    vv = "vv"


class Freeze(Choice):
    """What stays fixed while FedHSSL fine-tunes."""

    none = "none"
    all = "all"
    passive = "passive"


@dataclass
class FedProxConfig:
    """FedProx's addition to FedAvg."""

    mu: float = field(default=0.01, metadata=at_least(0))
    """Proximal coefficient: weight of (mu/2)||w - w_global||^2 in each party's local loss."""


@dataclass
class FedNovaConfig:
    """FedNova's parties that take different numbers of local steps (Wang et al. 2020)."""

    epochs: list[int] = field(default_factory=list, metadata=each(at_least(1)))
    """[low, high]: each party's local epochs in each round, drawn uniformly from the range
    (empty: every party runs ``local_epochs``, so its steps follow its data size)."""

    def problems(self) -> Iterator[tuple[str, str]]:
        if len(self.epochs) not in (0, 2) or (self.epochs and self.epochs[0] > self.epochs[1]):
            yield "epochs", "is [low, high] with low <= high (or empty)"


@dataclass
class ServerConfig:
    """The server's optimizer: the round's aggregate a minus the global weights x is a
    pseudo-gradient d = a - x, and the server steps along it (Reddi et al. 2021, Algorithm 2;
    FedAvgM is Hsu et al. 2019). none with lr 1 is FedAvg: x <- a."""

    optimizer: ServerOptimizer = ServerOptimizer.none
    """none (x <- x + lr d), momentum (FedAvgM), adagrad, adam or yogi (FedAdagrad, FedAdam,
    FedYogi)."""
    lr: Optional[float] = field(default=None, metadata=positive())  # noqa: UP045
    """Server learning rate eta (default: 1 for none and momentum, 0.01 for the adaptive
    ones; the paper tunes it on a log grid)."""
    momentum: float = field(default=0.9, metadata=between(0, 1, high_open=True))
    """momentum: beta of m <- beta m + d."""
    beta1: float = field(default=0.9, metadata=between(0, 1, high_open=True))
    """adagrad, adam, yogi: m <- beta1 m + (1 - beta1) d."""
    beta2: float = field(default=0.99, metadata=between(0, 1, high_open=True))
    """adam, yogi: the second moment's decay."""
    tau: float = field(default=1.0e-3, metadata=positive())
    """adagrad, adam, yogi: the adaptivity floor (x <- x + eta m / (sqrt(v) + tau); v starts
    at tau^2)."""

    def problems(self) -> Iterator[tuple[str, str]]:
        adaptive = self.optimizer in (
            ServerOptimizer.adagrad,
            ServerOptimizer.adam,
            ServerOptimizer.yogi,
        )
        if self.optimizer != ServerOptimizer.momentum and self.momentum != 0.9:
            yield "momentum", "is read by optimizer=momentum only (adaptive ones use beta1)"
        if not adaptive:
            for name, default in (("beta1", 0.9), ("beta2", 0.99), ("tau", 1.0e-3)):
                if getattr(self, name) != default:
                    yield name, f"is read by optimizer=adagrad, adam or yogi, not {self.optimizer}"
        elif self.optimizer == ServerOptimizer.adagrad and self.beta2 != 0.99:
            yield "beta2", "is read by adam and yogi; adagrad sums the squares"


@dataclass
class PrivacyConfig:
    """Party-level differential privacy (DP-FedAvg, McMahan et al. 2018): every upload's
    update is clipped to L2 norm ``clip``; Gaussian noise of std ``noise * clip`` goes on the
    sum of the round's clipped updates (central) or on each of them (local); the sum is
    divided by the expected number of uploads. Epsilon at ``delta`` is reported every round
    (Opacus's RDP accountant)."""

    mode: PrivacyMode = PrivacyMode.none
    """none, central or local."""
    clip: float = field(default=1.0, metadata=positive())
    """C: the L2 norm every update is clipped to (the initial C with ``quantile``)."""
    noise: float = field(default=1.0, metadata=at_least(0))
    """z: the noise multiplier (std z C)."""
    delta: float = field(default=1.0e-5, metadata=between(0, 1, low_open=True, high_open=True))
    """The delta epsilon is reported at."""
    quantile: Optional[float] = field(  # noqa: UP045
        default=None, metadata=between(0, 1, low_open=True, high_open=True)
    )
    """Adaptive clipping (Andrew et al. 2021): C follows this quantile of the update norms
    (None: C stays ``clip``)."""
    clip_lr: float = field(default=0.2, metadata=positive())
    """Adaptive clipping: eta_C of C <- C exp(-eta_C (b - quantile))."""

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.mode == PrivacyMode.none:
            defaults = {
                "clip": 1.0,
                "noise": 1.0,
                "delta": 1.0e-5,
                "quantile": None,
                "clip_lr": 0.2,
            }
            for name, default in defaults.items():
                if getattr(self, name) != default:
                    yield name, "is read with mode=central or local (mode is none)"
                    return
        if self.quantile is not None and self.mode != PrivacyMode.central:
            yield "quantile", "adaptive clipping is central DP's (it noises the clipped count)"


@dataclass
class StragglerConfig:
    """Parties that answer late (simulated, from the seed): a party's answer time is
    lognormal around ``mean`` (scaled by its data size), and answers after ``deadline`` are
    discarded."""

    deadline: Optional[float] = field(default=None, metadata=positive())  # noqa: UP045
    """Simulated seconds after which a round stops waiting (None: it waits for everyone)."""
    mean: float = field(default=1.0, metadata=positive())
    """Mean simulated answer time of a party of average size."""
    spread: float = field(default=0.5, metadata=at_least(0))
    """Sigma of the answer time's lognormal (0: every party takes exactly its size's time)."""


@dataclass
class AttackConfig:
    """Byzantine parties: who they are and what they upload instead of their honest model."""

    name: str = field(default="none", metadata=one_of("attack"))
    """none, sign_flip, scaling, zero, one, gaussian, explosion, label_flip, alie or ipm."""
    fraction: float = field(default=0.0, metadata=between(0, 1))
    """Share of all parties that are Byzantine: a fixed set drawn from the run's seed."""
    target: AttackTarget = AttackTarget.weights
    """What a model attack corrupts: the uploaded weights w_k (as in the CMFL code) or the
    update w_k - w (the result is sent as w + corrupted update)."""
    range: float = field(default=0.0, metadata=between(0, 1))
    """scaling ("disturb"): each element is multiplied by range + (1 - range) * U(0, 1)."""
    sigma: float = field(default=1.0, metadata=at_least(0))
    """gaussian: standard deviation of the added noise."""
    magnitude: float = 100.0
    """explosion: each element is replaced by magnitude * U(0, 1)."""
    z: Optional[float] = field(default=None, metadata=at_least(0))  # noqa: UP045 - OmegaConf needs typing.Optional
    """alie: how many standard deviations below the mean to send (default: Baruch et al.'s
    z_max, computed from the number of uploads and of Byzantine uploads)."""
    epsilon: float = 0.5
    """ipm: Byzantine parties send -epsilon times the honest parties' mean."""


@dataclass
class AggregatorConfig:
    """How the server combines the uploads of a round."""

    name: str = field(default="mean", metadata=one_of("aggregator"))
    """mean (FedAvg: weighted by samples), uniform_mean, median, trimmed_mean, krum,
    multi_krum, geometric_median or centered_clipping."""
    trim: float = field(default=0.1, metadata=between(0, 0.5, high_open=True))
    """trimmed_mean: share of the values cut at each end of every coordinate."""
    f: Optional[int] = field(default=None, metadata=at_least(0))  # noqa: UP045
    """krum / multi_krum: Byzantine uploads assumed among a round's uploads (default: the
    configured attack fraction times the uploads, rounded up)."""
    m: Optional[int] = field(default=None, metadata=at_least(1))  # noqa: UP045
    """multi_krum: how many of the best-scored uploads are averaged (default: n - f)."""
    iters: int = field(default=100, metadata=at_least(1))
    """geometric_median: Weiszfeld iterations at most."""
    tol: float = field(default=1.0e-6, metadata=positive())
    """geometric_median: stop when the estimate moves less than this."""
    tau: float = field(default=1.0, metadata=positive())
    """centered_clipping: radius each upload's distance to the centre is clipped to."""
    clip_iters: int = field(default=3, metadata=at_least(1))
    """centered_clipping: clipping steps per round."""


@dataclass
class CMFLConfig:
    """CMFL: committee mechanism based FL (Che et al.)."""

    active_rate: float = field(default=0.1, metadata=between(0, 1, low_open=True))
    """Share of all parties active each round (committee members plus trainers)."""
    committee_rate: float = field(
        default=0.4, metadata=between(0, 1, low_open=True, high_open=True)
    )
    """Share of the active parties that form the committee."""
    aggregation_rate: float = field(default=0.4, metadata=between(0, 1, low_open=True))
    """Updates aggregated per round, as a share of all parties times active_rate."""
    strategy: Strategy = Strategy.closest
    """Selection strategy: 1 aggregates the trainers closest to the committee (robustness),
    2 the farthest (accuracy)."""
    election: Election = Election.median
    """How the next committee is elected from the ranked trainers: median (the middle ranks,
    as in the authors' code) or top (the trainers closest to the committee)."""


@dataclass
class DecentralizedConfig:
    """Decentralized optimisation (dspg, dpsvrg, dsgd): the problem, the network, the steps."""

    loss: Loss = Loss.logistic
    """logistic (binary labels), multinomial or least_squares (on one-hot targets)."""
    l1: float = field(default=1.0e-4, metadata=at_least(0))
    """h(x) = l1 ||x||_1 + (l2/2) ||x||^2; l1 = l2 = 0 means no regulariser."""
    l2: float = field(default=0.0, metadata=at_least(0))
    """Elastic-net part of h."""
    topology: Graph = Graph.ring
    """ring, torus, star, complete, erdos_renyi or regular."""
    p: float = field(default=0.3, metadata=between(0, 1, low_open=True))
    """erdos_renyi: edge probability (the graph is redrawn until connected)."""
    k: int = field(default=4, metadata=at_least(1))
    """regular: every node's degree."""
    varying: Varying = Varying.none
    """none; edges (each edge kept with probability q at each step); cycle (step t uses the
    (t mod b)-th of b sparse edge groups whose union is the base graph)."""
    q: float = field(default=0.5, metadata=between(0, 1, low_open=True))
    """varying=edges: probability an edge exists at a step."""
    b: int = field(default=3, metadata=at_least(1))
    """varying=cycle: graphs in the cycle."""
    lazy: bool = False
    """Mix with (I + W) / 2 instead of the Metropolis-Hastings W."""
    batch_size: int = field(default=8, metadata=at_least(1))
    """Samples per node per stochastic gradient."""
    a0: float = field(default=0.1, metadata=positive())
    """dspg, dsgd: the step a0 / sqrt(t + 1) (schedule=diminishing) or a0 (constant)."""
    schedule: Schedule = Schedule.diminishing
    """dspg, dsgd: diminishing or constant."""
    alpha: float = field(default=0.1, metadata=positive())
    """dpsvrg: the constant step."""
    inner_steps: Optional[int] = field(default=None, metadata=at_least(1))  # noqa: UP045
    """dpsvrg: K, steps between snapshots (default: one local pass, ceil(mean m_i / batch))."""
    gossip_rounds: int = field(default=1, metadata=at_least(1))
    """Mixing steps per step (W applied this many times)."""
    gossip_growth: float = field(default=0.0, metadata=at_least(0))
    """With c > 0, mixing steps at step t: max(gossip_rounds, ceil(c log(t + 2)))."""
    epochs: float = field(default=50.0, metadata=positive())
    """Budget: stop after this many passes' worth of sample gradients over all the data."""
    max_steps: int = field(default=1000000, metadata=at_least(1))
    """Budget: stop after this many steps at most."""
    eval_every: int = field(default=1, metadata=at_least(1))
    """Steps between metric evaluations."""
    target: float = 1.0e-4
    """Suboptimality whose first crossing is reported as epochs_to_target."""
    cache_dir: Optional[str] = field(default=".fedsweep/cache", metadata=file_path())  # noqa: UP045
    """Where the reference optimum F* of each problem is cached (None: memory only)."""


@dataclass
class TeacherConfig:
    """Where the distillation teacher comes from."""

    source: TeacherSource = TeacherSource.train
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
    epochs: int = field(default=30, metadata=at_least(0))
    """source=train: epochs of supervised training."""
    lr: float = field(default=1.0e-3, metadata=positive())
    """source=train: Adam learning rate."""


@dataclass
class DistillConfig:
    """A knowledge-distillation recipe (TinyMIM's axes, at CPU scale)."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The teacher (the student is the experiment's ``model``)."""
    target: DistillTarget = DistillTarget.relations
    """logits (KL at a temperature), features (a layer's representations) or relations (ViT:
    softmax(QK^T) and softmax(VV^T) maps; mlp/cnn: softmaxed sample-similarity Gram matrices)."""
    feature_loss: FeatureLoss = FeatureLoss.mse
    """features: mse, smooth_l1 or cosine, on layer-normalised features; a learned linear
    projection maps the student's width to the teacher's when they differ."""
    relations: Relations = Relations.qk_vv
    """relations on a ViT: qk_vv, qk or vv."""
    teacher_layer: int = -1
    """The teacher's layer (block) the target comes from: -1 the last, k the k-th (0-based)."""
    student_layer: int = -1
    """The student's layer matched to it."""
    temperature: float = field(default=4.0, metadata=positive())
    """logits: softmax temperature (the KL is scaled by T^2)."""
    distill_weight: float = field(default=1.0, metadata=at_least(0))
    """Weight of the distillation loss."""
    label_weight: float = field(default=1.0, metadata=at_least(0))
    """Weight of the student's cross-entropy on the labels."""
    epochs: int = field(default=30, metadata=at_least(1))
    """Student epochs (each stage, with an assistant)."""
    finetune_epochs: int = field(default=0, metadata=at_least(0))
    """Epochs of label-only training of the final student after distillation (TinyMIM's
    protocol: distil without labels, label_weight 0, then fine-tune)."""
    batch_size: int = field(default=64, metadata=at_least(2))
    """Minibatch size."""
    lr: float = field(default=1.0e-3, metadata=positive())
    """Adam learning rate of the student."""
    weight_decay: float = field(default=0.0, metadata=at_least(0))
    """AdamW weight decay of the student."""
    assistant: Optional[ModelConfig] = None  # noqa: UP045
    """Sequential distillation: teacher -> this intermediate-size model -> the student."""
    proxy_fraction: float = field(default=0.0, metadata=between(0, 1, high_open=True))
    """Distil on this share of the held-out split (the rest evaluates) instead of on the
    training split: for a teacher that saw all the training data, e.g. a federated model."""


@dataclass
class VFLDefenseConfig:
    """What the active party does to the gradients it sends back (and the passive parties to
    their embeddings): one mechanism and its strength."""

    name: str = field(default="none", metadata=one_of("defense"))
    """none, laplace, gaussian (isotropic), sparsify, discrete (discretised SGD), max_norm,
    marvell, cae (confusional label autoencoder) or negative_loss."""
    strength: Optional[float] = field(default=None, metadata=at_least(0))  # noqa: UP045
    """The mechanism's own knob (default in brackets): laplace the noise scale b [1e-2];
    gaussian the ratio r of the std to max_i ||g_i|| / sqrt(d) [1.0]; sparsify the share of
    entries zeroed [0.75]; discrete the number of bins [12]; marvell the power budget as a
    multiple of ||mean g+ - mean g-||^2 [1.0]; cae the weight of the confusion term [1.0];
    negative_loss lambda [20]; max_norm has none."""
    bound: float = field(default=1.0e-3, metadata=positive())
    """discrete: gradients are clipped to [-bound, bound] before they are discretised."""
    embedding_noise: float = field(default=0.0, metadata=at_least(0))
    """Isotropic Gaussian noise on every embedding a passive party sends, as the ratio of its
    std to max_i ||e_i|| / sqrt(d) (0: none); against feature reconstruction."""


@dataclass
class VFLAttackConfig:
    """The semi-honest attacks run against a vertical federation, and their budgets."""

    names: list[str] = field(
        default_factory=lambda: ["ns", "ds", "dli", "rr", "mc", "mi"],
        metadata=each(one_of("vfl_attack")),
    )
    """ns, ds, dli, rr (label inference from the gradients a passive party receives), mc (model
    completion) and mi (feature reconstruction by the active party). One that does not apply
    to the algorithm or task (dli without logits, rr off vlr, ns/ds/rr on multi-class labels)
    is skipped and named in the run's ``vfl.skipped_attacks`` tag."""
    attacker: int = field(default=1, metadata=at_least(1, "(a passive party)"))
    """The passive party that attacks (mi: the passive party whose features are attacked)."""
    mc_samples: int = field(default=40, metadata=at_least(2))
    """mc: labelled training samples the attacker fine-tunes with."""
    mc_epochs: int = field(default=300, metadata=at_least(1))
    """mc: fine-tuning epochs."""
    mc_lr: float = field(default=0.005, metadata=positive())
    """mc: Adam learning rate."""
    mc_batch_size: int = field(default=64, metadata=at_least(1))
    """mc: minibatch size."""
    mc_weight_decay: float = field(default=1.0e-6, metadata=at_least(0))
    """mc: weight decay."""
    mi_samples: int = field(default=40, metadata=at_least(2))
    """mi: auxiliary samples whose passive features the attacker knows."""
    mi_steps: int = field(default=300, metadata=at_least(1))
    """mi: optimisation steps, for the shadow model and for the inversion each."""
    percentile: float = field(default=95.0, metadata=between(0, 100))
    """Label-inference leakage of a run: this percentile of the per-epoch mean batch AUCs."""


@dataclass
class VFLConfig:
    """Vertical split learning (vlr, vhnn, vsnn): models, defense, attacks, evaluation."""

    embed_dim: int = field(default=16, metadata=at_least(1))
    """vhnn: width of every bottom model's output (vlr and vsnn bottoms output logits)."""
    top_hidden: list[int] = field(default_factory=list, metadata=each(at_least(1)))
    """vhnn: hidden widths of the active party's top model (empty: one linear layer)."""
    reference: bool = True
    """With a defense, train the undefended run too (same seed) and report utility_loss."""
    defense: VFLDefenseConfig = field(default_factory=VFLDefenseConfig)
    """The defense."""
    attack: VFLAttackConfig = field(default_factory=VFLAttackConfig)
    """The attacks and their budgets."""


@dataclass
class SSLConfig:
    """FedHSSL and its baselines: self-supervised pretraining across and within parties, then
    fine-tuning with a few labels."""

    pretrain_epochs: int = field(default=50, metadata=at_least(0))
    """Epochs of pretraining (each: cross-party SSL, then local SSL, then aggregation)."""
    pretrain_lr: float = field(default=0.05, metadata=positive())
    """SGD learning rate of the encoders and projectors (cosine-decayed; predictors keep it)."""
    pretrain_batch_size: int = field(default=128, metadata=at_least(2))
    """Pretraining minibatch size."""
    momentum: float = field(default=0.9, metadata=between(0, 1, high_open=True))
    """SGD momentum (pretraining)."""
    weight_decay: float = field(default=3.0e-5, metadata=at_least(0))
    """SGD weight decay (pretraining)."""
    hidden: int = field(default=64, metadata=at_least(1))
    """Width of every encoder layer and of the representation (num_ftrs)."""
    proj_dim: int = field(default=64, metadata=at_least(1))
    """SimSiam projector width (hidden and output)."""
    pred_hidden: int = field(default=16, metadata=at_least(1))
    """SimSiam predictor bottleneck."""
    local_ratio: float = field(default=0.5, metadata=at_least(0))
    """Weight of the local SimSiam loss."""
    constraint_ratio: float = field(default=0.0, metadata=at_least(0))
    """Weight of the term pulling the local encoder toward the cross encoder."""
    augment_fraction: float = field(default=0.3, metadata=between(0, 1))
    """Tabular augmentation: share of a sample's features replaced by U(min_f, max_f)."""
    grad_clip: float = field(default=5.0, metadata=positive())
    """Gradient-norm clip of the local SSL step."""
    labels: int = field(default=200, metadata=at_least(2))
    """Labelled aligned samples used for fine-tuning."""
    finetune_epochs: int = field(default=50, metadata=at_least(1))
    """Fine-tuning epochs."""
    finetune_lr: float = field(default=0.01, metadata=positive())
    """Fine-tuning Adam learning rate."""
    finetune_batch_size: int = field(default=64, metadata=at_least(1))
    """Fine-tuning minibatch size."""
    freeze: Freeze = Freeze.none
    """Fine-tuning: none, all (linear probe) or passive (the passive backbones stay fixed)."""
    feature_noise: float = field(default=0.0, metadata=at_least(0))
    """pt_feat_iso_sigma: isotropic noise on the representations exchanged in cross-party SSL
    (std sigma * max row norm / sqrt(d))."""
    model_noise: float = field(default=0.0, metadata=at_least(0))
    """pt_model_iso_sigma: the same noise on the aggregated local top weights."""
    finetune_noise: float = field(default=0.0, metadata=at_least(0))
    """cls_iso_sigma: the same noise on the representations sent during fine-tuning."""


class EgoVariant(Choice):
    """FedEgo and the ablations of its code."""

    full = "full"
    np = "np"
    nr = "nr"
    ne = "ne"


@dataclass
class GraphTrainConfig:
    """What every graph trainer shares (graph_local, graph_fedavg, graph_fedprox,
    graph_centralized, fedego, gfl)."""

    fanout: list[int] = field(default_factory=lambda: [6, 6], metadata=each(at_least(1)))
    """Neighbours sampled per hop in training, one per graph convolution of the model
    (FedEgo: 6 and 6, its ego-graphs' 1 + 6 + 36 slots); evaluation reads every neighbour."""


@dataclass
class FedEgoConfig:
    """FedEgo (Zhang et al.): ego-graph uploads with Mixup, and personalisation mixing."""

    variant: EgoVariant = EgoVariant.full
    """full; np (no personalisation: no uploads, no server model, no mixing); nr (no
    FedAvg of the reduction layer); ne (no ego-graphs: only each batch's mixed root
    embedding is uploaded)."""
    lamb_c: float = field(default=0.5, metadata=at_least(0))
    """The mixing exponent: lambda_i = (EMD_i / 2) ** lamb_c (with lamb_fixed: lambda_i =
    lamb_c, which must then be at most 1)."""
    lamb_fixed: bool = False
    """Use lamb_c itself as every client's lambda (the code's lamb_fixed=1)."""
    sigma: float = field(default=0.0, metadata=at_least(0))
    """Standard deviation of the Gaussian noise added to the uploaded mixed embeddings."""
    mixup: bool = True
    """Average each batch's ego-graphs slot by slot (false: upload the first of each batch)."""
    server_epochs: int = field(default=5, metadata=at_least(1))
    """Epochs the server trains its personalisation layers on the uploads, per round."""
    server_share: float = field(default=0.2, metadata=between(0, 1, low_open=True))
    """Share of the uploaded ego-graphs each server epoch trains on (FedEgo: 20%)."""
    train_share: float = field(default=0.2, metadata=between(0, 1, low_open=True))
    """Share of a client's training nodes each local epoch draws afresh (FedEgo's code: 20%
    of them, 5 epochs a round: set trainer.local_epochs=5)."""

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.lamb_fixed and self.lamb_c > 1:
            yield "lamb_c", "is lambda itself with lamb_fixed: at most 1"


@dataclass
class GFLConfig:
    """GFL (Wu et al., reconstructed): hidden representations shared along cross-client edges."""

    steps: int = field(default=4, metadata=at_least(1))
    """Q: local steps per round on stale neighbour representations and gradients."""
    share: bool = True
    """Share representations across clients (false: cross-client edges are dropped, which is
    FedAvg of the same model)."""


class CondenseMethod(Choice):
    """How a synthetic set is distilled."""

    gm = "gm"
    dm = "dm"


class CondenseInit(Choice):
    """Where the synthetic images start."""

    real = "real"
    noise = "noise"


class CondenseDefense(Choice):
    """What the server of fed_condense does with the uploaded synthetic sets."""

    none = "none"
    loss_filter = "loss_filter"


class BackdoorName(Choice):
    """A backdoor planted through the distillation (Liu et al., NDSS 2023)."""

    none = "none"
    naive = "naive"
    doorping = "doorping"


@dataclass
class CondenseConfig:
    """Dataset distillation (condense, fed_condense): gradient matching (Zhao et al. 2021) or
    distribution matching (Zhao and Bilen 2023) of a small synthetic set."""

    method: CondenseMethod = CondenseMethod.gm
    """gm: match a random network's gradients on real and synthetic batches, per class, with
    inner network updates; dm: match random networks' mean embeddings, per class."""
    ipc: int = field(default=10, metadata=at_least(1))
    """Synthetic images per class."""
    iterations: int = field(default=200, metadata=at_least(1))
    """Outer iterations, each with a freshly initialised network."""
    outer_loop: Optional[int] = field(default=None, metadata=at_least(1))  # noqa: UP045
    """gm: matching steps per iteration, the network trained on the synthetic set between
    them (default: dataset condensation's by ipc: 1 for ipc 1, 10 up to ipc 10, then 20, 30,
    40, 50 up to ipc 20, 30, 40 and beyond)."""
    inner_loop: Optional[int] = field(default=None, metadata=at_least(1))  # noqa: UP045
    """gm: network updates on the synthetic set between two matching steps (default, by the
    same ipc steps: 1, 50, 25, 20, 15, 10)."""
    lr_img: Optional[float] = field(default=None, metadata=positive())  # noqa: UP045
    """Learning rate of the synthetic images (SGD, momentum 0.5; default: gm 0.1 as in DC,
    dm 1.0 as in DM)."""
    lr_net: float = field(default=0.01, metadata=positive())
    """gm: learning rate of the inner network updates (SGD)."""
    batch_real: int = field(default=256, metadata=at_least(1))
    """Real images per class in a matching step."""
    init: CondenseInit = CondenseInit.real
    """real: each class starts from randomly chosen real images of it; noise: N(0, 1)."""
    eval_every: int = field(default=20, metadata=at_least(1))
    """Iterations between two reports (each trains one fresh network on the synthetic set)."""
    eval_models: int = field(default=3, metadata=at_least(1))
    """Fresh networks trained on the final synthetic set (and on each baseline): the reported
    accuracy is their mean, with its spread."""
    eval_epochs: int = field(default=300, metadata=at_least(1))
    """Epochs a fresh network trains on the synthetic set, and on each baseline (SGD,
    momentum 0.9, weight decay 5e-4, batches of 256, learning rate divided by 10 halfway)."""
    eval_lr: float = field(default=0.01, metadata=positive())
    """Learning rate of those networks."""
    defense: CondenseDefense = CondenseDefense.none
    """fed_condense: loss_filter drops each upload's samples whose loss, under a network
    trained on the other parties' uploads, exceeds filter_loss."""
    filter_loss: Optional[float] = field(default=None, metadata=positive())  # noqa: UP045
    """loss_filter's threshold (default: ln(n_classes), a uniform guess's loss)."""

    def loops(self) -> tuple[int, int]:
        """gm's (outer_loop, inner_loop): as set, or dataset condensation's for the ipc."""
        steps = [(1, 1, 1), (10, 10, 50), (20, 20, 25), (30, 30, 20), (40, 40, 15)]
        outer, inner = next(((o, i) for top, o, i in steps if self.ipc <= top), (50, 10))
        return self.outer_loop or outer, self.inner_loop or inner

    def image_lr(self) -> float:
        """lr_img as set, or the method's default."""
        return self.lr_img or (0.1 if self.method == CondenseMethod.gm else 1.0)


@dataclass
class BackdoorConfig:
    """A trigger planted in the distilled set (condense; fed_condense's Byzantine parties):
    NaiveAttack and DoorPing (Liu et al., NDSS 2023)."""

    name: BackdoorName = BackdoorName.none
    """naive: a fixed trigger stamped on a portion of the real images, relabelled to target,
    then distilled; doorping: the same, with the trigger re-optimised after every network
    update."""
    portion: float = field(default=0.01, metadata=between(0, 1, low_open=True))
    """Share of the real training images poisoned (at least one)."""
    size: int = field(default=2, metadata=at_least(1))
    """Side of the square trigger, in pixels, in the bottom-right corner."""
    target: int = field(default=0, metadata=at_least(0))
    """The class the triggered images are relabelled to."""
    topk: int = field(default=1, metadata=at_least(1))
    """doorping: neurons whose activation the trigger raises (ranked by outgoing weight)."""
    alpha: float = field(default=10.0, metadata=positive())
    """doorping: the activation aimed at, as a multiple of its value before the update."""
    layer: int = -1
    """doorping: which hidden representation (as model.forward_layers lists them; -1: the one
    the classifier reads, the code's layer -2)."""
    trigger_lr: float = field(default=0.08, metadata=positive())
    """doorping: Adam's learning rate on the trigger pixels."""
    trigger_steps: int = field(default=1000, metadata=at_least(1))
    """doorping: most Adam steps per trigger update."""
    trigger_loss: float = field(default=0.5, metadata=positive())
    """doorping: a trigger update stops once its MSE falls below this."""
    clip: bool = False
    """doorping: keep each trigger pixel within that pixel's range in the data (the authors'
    code does not, and its trigger may grow far outside the images' range)."""


@dataclass
class TrainerConfig:
    """How training runs: rounds, party sampling and each party's local optimisation."""

    name: str = field(default="fedavg", metadata=one_of("trainer"))
    """One of the registered trainers: centralized, fedavg, fedprox, fednova, scaffold, cmfl,
    dspg, dpsvrg, dsgd, distill; vertical (partition.name=vertical): vlr, vhnn, vsnn,
    fedhssl, fedgssl, fedcssl, vfl_supervised; graph (a graph data set): graph_local,
    graph_fedavg, graph_fedprox, graph_centralized, fedego, gfl; dataset distillation:
    condense, fed_condense."""
    rounds: int = field(default=20, metadata=at_least(1))
    """Communication rounds (for centralized: rounds of ``local_epochs`` epochs each)."""
    fraction: float = field(default=1.0, metadata=between(0, 1, low_open=True))
    """Fraction of parties sampled each round, in (0, 1]."""
    parties_per_round: Optional[int] = field(default=None, metadata=at_least(1))  # noqa: UP045 - OmegaConf needs typing.Optional
    """Parties sampled each round; overrides ``fraction`` when set."""
    local_epochs: int = field(default=1, metadata=at_least(1))
    """Passes over its own data each sampled party makes per round."""
    batch_size: int = field(default=32, metadata=at_least(1))
    """Local minibatch size."""
    optimizer: Optimizer = Optimizer.sgd
    """Local optimizer: sgd or adam."""
    lr: float = field(default=0.05, metadata=positive())
    """Local learning rate."""
    momentum: float = field(default=0.0, metadata=between(0, 1, high_open=True))
    """SGD momentum (reset every round: it is local optimizer state)."""
    weight_decay: float = field(default=0.0, metadata=at_least(0))
    """L2 weight decay of the local optimizer."""
    fedprox: FedProxConfig = field(default_factory=FedProxConfig)
    """FedProx settings (read by the fedprox trainer only)."""
    fednova: FedNovaConfig = field(default_factory=FedNovaConfig)
    """FedNova's local-step heterogeneity (read by the fednova trainer only)."""
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    """Party-level differential privacy on the uploads (fedavg and fedprox)."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """The server's optimizer on each round's aggregate (fedavg and fedprox, after any
    aggregator): FedAvgM, FedAdagrad, FedAdam, FedYogi."""
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    """How uploads are combined (fedavg and fedprox; CMFL's committee does its own choosing)."""
    attack: AttackConfig = field(default_factory=AttackConfig)
    """Byzantine parties and their attack (every federated trainer)."""
    dropout: float = field(default=0.0, metadata=between(0, 1, high_open=True))
    """Probability that a party asked to work in a round never answers (simulated, from the
    seed; horizontal, committee and decentralized trainers)."""
    stragglers: StragglerConfig = field(default_factory=StragglerConfig)
    """Parties that answer after the round's deadline, whose answers are discarded."""
    cmfl: CMFLConfig = field(default_factory=CMFLConfig)
    """CMFL settings (read by the cmfl trainer only)."""
    decentralized: DecentralizedConfig = field(default_factory=DecentralizedConfig)
    """Settings of the decentralized trainers (dspg, dpsvrg, dsgd)."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Settings of the distill trainer (teacher, recipe, student schedule)."""
    vfl: VFLConfig = field(default_factory=VFLConfig)
    """Settings of the vertical split-learning trainers (vlr, vhnn, vsnn)."""
    ssl: SSLConfig = field(default_factory=SSLConfig)
    """Settings of fedhssl and its baselines (fedgssl, fedcssl, vfl_supervised)."""
    graph: GraphTrainConfig = field(default_factory=GraphTrainConfig)
    """Neighbour sampling of the graph trainers."""
    fedego: FedEgoConfig = field(default_factory=FedEgoConfig)
    """Settings of the fedego trainer."""
    gfl: GFLConfig = field(default_factory=GFLConfig)
    """Settings of the gfl trainer."""
    condense: CondenseConfig = field(default_factory=CondenseConfig)
    """Settings of dataset distillation (condense, fed_condense)."""
    backdoor: BackdoorConfig = field(default_factory=BackdoorConfig)
    """A backdoor planted through the distillation (condense; fed_condense's Byzantine
    parties, with trainer.attack.name=backdoor)."""

    def problems(self) -> Iterator[tuple[str, str]]:
        """Settings that another one makes moot: refused rather than ignored."""
        if self.momentum and self.optimizer is Optimizer.adam:
            yield "momentum", "is SGD's: with optimizer=adam it would be ignored"
        if self.parties_per_round is not None and self.fraction != 1.0:
            yield "fraction", "would be ignored: parties_per_round is set and wins; set one"
