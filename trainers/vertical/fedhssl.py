"""FedHSSL (He et al.): hybrid self-supervised pretraining for vertical FL, and its baselines.

Every party i holds a cross-party encoder, a local encoder (a party-specific bottom layer and a
top layer of the same shape at every party) and two SimSiam pairs of heads (projector,
predictor), one for each encoder. One pretraining epoch:

1. cross-party SSL on the aligned samples: each party sends z_i = proj_cross(enc_cross(x_i)),
   the two views of a sample being its feature slices at two parties. The active party 0
   minimises mean_{j != 0} D(pred(z_0), sg(z_j)); a passive party i minimises
   D(pred(z_i), sg(z_0)). D is the negative cosine similarity; each party updates its own
   encoder and heads only.
2. local SSL on each party's own samples (aligned and unaligned): symmetric SimSiam between two
   augmented views (``augment_fraction`` of the features replaced by U(min_f, max_f) of the
   party's data), weighted by ``local_ratio``, plus ``constraint_ratio`` times the pull of the
   local predictions toward the cross projection; gradients clipped to ``grad_clip``.
3. partial model aggregation (PMA): the plain average over parties of the local top layer and
   the local heads, sent back to all (bottoms and cross encoders stay private).
4. cosine decay of the encoders' and projectors' learning rate (the predictors keep theirs).

Variants: ``fedcssl`` runs step 1 only; ``fedgssl`` 1 and 2; ``fedhssl`` 1, 2 and 3;
``vfl_supervised`` pretrains nothing. Then every variant fine-tunes the same backbone (cross
encoder and local encoder, concatenated) as split learning on ``labels`` labelled aligned
samples, with a linear classifier at the active party.

Privacy knobs: isotropic noise on the exchanged cross representations (``feature_noise``), on
the aggregated weights (``model_noise``) and on the fine-tuning embeddings
(``finetune_noise``); the model-completion attack measures what a passive backbone leaks.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clusters import Executor, PartyContext
from trainers.base import (
    BYTES_PER_VALUE,
    TRAINERS,
    Budget,
    Federation,
    Reporter,
    RunState,
    Trainer,
    TrainResult,
    derive_seed,
)
from trainers.config import SSLConfig, TrainerConfig
from trainers.models import ModelConfig, ModelSpec, get_flat, seeded, set_flat
from trainers.vertical import attacks
from trainers.vertical.data import ACTIVE, VerticalData
from trainers.vertical.defenses import build_defense, iso_noise
from trainers.vertical.messages import Gradient
from trainers.vertical.split import (
    ActiveModels,
    ActiveParty,
    Optim,
    PassiveParty,
    Pretrained,
    SplitModel,
    _check_vertical,
    evaluate_split,
    export_models,
    split_batch,
)

__all__ = [
    "FedCSSL",
    "FedGSSL",
    "FedHSSL",
    "FedHSSLState",
    "PretrainPayload",
    "Step",
    "SupervisedVFL",
    "augment",
]

_INIT_STREAM = 41
_BATCH_STREAM = 42
_AUGMENT_STREAM = 43
_NOISE_STREAM = 44
_LABEL_STREAM = 45
_ATTACK_STREAM = 46


def _mlp(widths: list[int], last_relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if last_relu or i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _projector(width: int, out: int) -> nn.Sequential:
    """SimSiam's projector: three linear layers, batch-normalised (which keeps the
    representations from collapsing to a constant)."""
    return nn.Sequential(
        nn.Linear(width, out),
        nn.BatchNorm1d(out),
        nn.ReLU(),
        nn.Linear(out, out),
        nn.BatchNorm1d(out),
        nn.ReLU(),
        nn.Linear(out, out),
        nn.BatchNorm1d(out),
    )


def _predictor(width: int, bottleneck: int) -> nn.Sequential:
    """SimSiam's predictor: a batch-normalised bottleneck."""
    return nn.Sequential(
        nn.Linear(width, bottleneck),
        nn.BatchNorm1d(bottleneck),
        nn.ReLU(),
        nn.Linear(bottleneck, width),
    )


class PartyNets(nn.Module):
    """One party's networks."""

    def __init__(self, n_features: int, hidden: int, proj: int, pred: int) -> None:
        super().__init__()
        self.cross = _mlp([n_features, hidden, hidden])
        self.local_bottom = _mlp([n_features, hidden])
        self.local_top = _mlp([hidden, hidden])
        self.proj_cross = _projector(hidden, proj)
        self.pred_cross = _predictor(proj, pred)
        self.proj_local = _projector(hidden, proj)
        self.pred_local = _predictor(proj, pred)

    def local(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_top(self.local_bottom(x))

    def shared(self) -> list[nn.Module]:
        """What partial model aggregation averages."""
        return [self.local_top, self.proj_local, self.pred_local]


class Backbone(nn.Module):
    """Fine-tuning backbone: cross and local representations, concatenated."""

    def __init__(self, nets: PartyNets) -> None:
        super().__init__()
        self.cross, self.local_bottom, self.local_top = (
            nets.cross,
            nets.local_bottom,
            nets.local_top,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cross(x), self.local_top(self.local_bottom(x))], dim=1)


def simsiam(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, stopgrad(z)), averaged over the batch."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def augment(
    x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, fraction: float, gen: torch.Generator
) -> torch.Tensor:
    """Replaces ``fraction`` of each row's features, chosen at random, with U(low_f, high_f)."""
    k = int(round(fraction * x.shape[1]))
    if k == 0:
        return x
    ranks = torch.rand(x.shape, generator=gen).argsort(dim=1).argsort(dim=1)
    mask = ranks < k
    values = low + (high - low) * torch.rand(x.shape, generator=gen)
    return torch.where(mask, values, x)


class Step(str, enum.Enum):
    """One call of pretraining work on the parties."""

    LR = "lr"
    """Set this epoch's learning rates (cosine decay)."""
    CROSS_EMBED = "cross_embed"
    """Step 1, the message: each party's z_i for the batch."""
    CROSS_UPDATE = "cross_update"
    """Step 1, the update against the partners' z."""
    LOCAL_EPOCH = "local_epoch"
    """Step 2: an epoch of local SimSiam (no communication)."""
    GET_SHARED = "get_shared"
    """Step 3: upload the local top and heads."""
    SET_SHARED = "set_shared"
    """Step 3: the average comes back."""
    TO_BACKBONE = "to_backbone"
    """Hand the pretrained encoders to fine-tuning."""


@dataclass(frozen=True)
class PretrainPayload:
    """What the driver sends the parties for one :class:`Step`."""

    step: Step
    rows: np.ndarray | None = None
    """CROSS_*: aligned-sample positions of the batch."""
    z: Mapping[int, np.ndarray] | None = None
    """CROSS_UPDATE: every party's projection of the batch."""
    counter: int = 0
    """CROSS_EMBED: seeds the feature noise; LOCAL_EPOCH: the epoch (seeds augmentation)."""
    scale: float = 1.0
    """LR: the cosine factor."""
    weights: np.ndarray | None = None
    """SET_SHARED: the aggregated local top and heads."""


@dataclass
class PretrainState:
    """What a party keeps while it pretrains."""

    nets: PartyNets
    opt: torch.optim.SGD
    own: torch.Tensor
    """Its own samples (aligned, then unaligned), for local SSL."""
    low: torch.Tensor
    high: torch.Tensor
    """Per-feature bounds of its samples (the augmentation draws within them)."""


@dataclass(frozen=True)
class _Pretrain:
    """Self-supervised pretraining, as each party runs it (one :class:`Step` per call).

    Args:
        n_features: (party, feature count) of every party.
        seed: the run's seed.
        ssl: the pretraining settings.
        lr: the base learning rate of the encoders and projectors.
    """

    n_features: tuple[tuple[int, int], ...]
    seed: int
    ssl: SSLConfig
    lr: float

    def _setup(self, ctx: PartyContext) -> PretrainState:
        s = self.ssl
        with seeded(derive_seed(self.seed, _INIT_STREAM, ctx.party_id)):
            nets = PartyNets(
                dict(self.n_features)[ctx.party_id], s.hidden, s.proj_dim, s.pred_hidden
            )
        predictors = [*nets.pred_cross.parameters(), *nets.pred_local.parameters()]
        ids = {id(p) for p in predictors}
        decayed = [p for p in nets.parameters() if id(p) not in ids]
        opt = torch.optim.SGD(
            [{"params": decayed, "decay": True}, {"params": predictors, "decay": False}],
            lr=self.lr,
            momentum=s.momentum,
            weight_decay=s.weight_decay,
        )
        own = torch.from_numpy(
            np.array(np.concatenate([ctx.data.x_aligned, ctx.data.x_local]), dtype=np.float32)
        )
        return PretrainState(nets, opt, own, own.min(0).values, own.max(0).values)

    def __call__(self, ctx: PartyContext, payload: PretrainPayload) -> object:
        st = ctx.get(PretrainState)
        if st is None:
            st = self._setup(ctx)
            ctx.put(st)
        s, nets, opt = self.ssl, st.nets, st.opt
        step = payload.step
        if step is Step.LR:
            for group in opt.param_groups:
                group["lr"] = self.lr * payload.scale if group["decay"] else self.lr
            return None
        if step is Step.CROSS_EMBED:
            x = torch.from_numpy(np.array(ctx.data.x_aligned[payload.rows]))
            with torch.no_grad():
                z = nets.proj_cross(nets.cross(x))
            gen = torch.Generator().manual_seed(
                derive_seed(self.seed, _NOISE_STREAM, ctx.party_id, payload.counter)
            )
            return ctx.party_id, iso_noise(z, s.feature_noise, gen).numpy()
        if step is Step.CROSS_UPDATE:
            assert payload.z is not None
            x = torch.from_numpy(np.array(ctx.data.x_aligned[payload.rows]))
            p = nets.pred_cross(nets.proj_cross(nets.cross(x)))
            partners = [
                torch.from_numpy(np.array(z))
                for pid, z in payload.z.items()
                if pid != ctx.party_id and (ctx.party_id == ACTIVE or pid == ACTIVE)
            ]
            loss = torch.stack([simsiam(p, z) for z in partners]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return float(loss.detach())
        if step is Step.LOCAL_EPOCH:
            own = st.own
            gen = torch.Generator().manual_seed(
                derive_seed(self.seed, _AUGMENT_STREAM, ctx.party_id, payload.counter)
            )
            order = torch.randperm(len(own), generator=gen)
            total = 0.0
            batch = s.pretrain_batch_size
            for start in range(0, len(own) - 1, batch):  # batch norm needs 2 rows
                x = own[order[start : start + batch]]
                v1 = augment(x, st.low, st.high, s.augment_fraction, gen)
                v2 = augment(x, st.low, st.high, s.augment_fraction, gen)
                z1, z2 = nets.proj_local(nets.local(v1)), nets.proj_local(nets.local(v2))
                p1, p2 = nets.pred_local(z1), nets.pred_local(z2)
                loss = s.local_ratio * (simsiam(p1, z2) + simsiam(p2, z1))
                if s.constraint_ratio:
                    c1, c2 = nets.proj_cross(nets.cross(v1)), nets.proj_cross(nets.cross(v2))
                    loss = loss + s.constraint_ratio * (simsiam(p1, c1) + simsiam(p2, c2))
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(nets.parameters(), s.grad_clip)
                opt.step()
                total += float(loss.detach()) * len(x)
            return total / len(own)
        if step is Step.GET_SHARED:
            return get_flat(nn.ModuleList(nets.shared()))
        if step is Step.SET_SHARED:
            assert payload.weights is not None
            set_flat(nn.ModuleList(nets.shared()), payload.weights)
            return None
        ctx.pop(PretrainState)  # Step.TO_BACKBONE: the hand-off to fine-tuning
        ctx.put(Pretrained(Backbone(nets)))
        return None


@dataclass(frozen=True)
class _FreshBackbone:
    """Without pretraining: a freshly initialised backbone of the same architecture."""

    seed: int
    hidden: int

    def __call__(self, ctx: PartyContext, payload: object) -> None:
        with seeded(derive_seed(self.seed, _INIT_STREAM, ctx.party_id)):
            nets = PartyNets(ctx.data.x_aligned.shape[1], self.hidden, 1, 1)
        ctx.state.clear()
        ctx.put(Pretrained(Backbone(nets)))


class FedHSSL(Trainer[VerticalData, "FedHSSLState"]):
    """FedHSSL: cross-party SSL, local SSL and partial model aggregation, then fine-tuning."""

    vertical = True
    checkpointable = False
    reads = frozenset({"ssl", "vfl"})
    unused = {
        key: "its schedule is trainer.ssl (pretrain_epochs, finetune_epochs and their lr)"
        for key in ("rounds", "local_epochs", "batch_size", "lr")
    }
    cross_ssl = True
    local_ssl = True
    aggregate = True
    metrics = (
        "ssl_cross_loss",
        "ssl_local_loss",
        "train_loss",
        "test_accuracy",
        "test_loss",
        "test_auc",
        "utility",
        "bytes_communicated",
        "round_time_s",
        "mc_accuracy",
    )

    @classmethod
    def validate(cls, config: TrainerConfig, model: ModelConfig, federation: Federation) -> None:
        _check_vertical(config, federation)

    def check(self, data: VerticalData) -> None:
        """FedHSSL builds its own networks from the parties' columns."""

    def plots(self) -> tuple[str, ...]:
        return ("pretraining", "learning_curve") if self.pretrains else ("learning_curve",)

    @property
    def pretrains(self) -> bool:
        return self.cross_ssl and self.config.ssl.pretrain_epochs > 0

    def budget(self) -> Budget:
        s = self.config.ssl
        return Budget(s.finetune_epochs + (s.pretrain_epochs if self.pretrains else 0), "epoch")

    def begin(self, data: VerticalData, executor: Executor, seed: int) -> FedHSSLState:
        s = self.config.ssl
        ids = list(range(data.n_parties))
        parties = {p: data.party(p) for p in ids}
        executor.load(parties, sizes={p: len(parties[p]) for p in ids})
        passive = list(range(1, data.n_parties))
        width = 2 * s.hidden
        rng = np.random.default_rng(derive_seed(seed, _LABEL_STREAM))
        labelled = rng.choice(
            len(data.aligned), size=min(s.labels, len(data.aligned)), replace=False
        )
        optim = Optim("adam", s.finetune_lr, 0.0, 0.0)
        dummy = ModelSpec("logreg", 1, 1)
        self._run = _FedHSSLRun(
            data=data,
            seed=seed,
            ids=ids,
            passive=passive,
            width=width,
            labelled=labelled,
            pretrain=_Pretrain(
                tuple((p, len(data.columns[p])) for p in ids),
                seed,
                s,
                s.pretrain_lr * 0.5 / max(1e-12, s.local_ratio + s.constraint_ratio),
            ),
            passive_fn=PassiveParty(
                tuple((p, dummy) for p in passive),
                seed,
                optim,
                s.finetune_noise,
                frozen=s.freeze in ("all", "passive"),
            ),
            # The active party combines [own, *passive] embeddings through its top: its own
            # model is its backbone.
            active_fn=ActiveParty(
                ActiveModels(
                    dummy,
                    ModelSpec("logreg", width * data.n_parties, data.n_classes),
                    tuple(passive),
                ),
                seed,
                optim,
                build_defense("none", None, data.n_classes, seed),
                frozen=s.freeze == "all",
            ),
        )
        return FedHSSLState()

    @property
    def _pretrain_epochs(self) -> int:
        return self.config.ssl.pretrain_epochs if self.pretrains else 0

    def done(self, state: FedHSSLState) -> bool:
        return state.round >= self._pretrain_epochs + self.config.ssl.finetune_epochs

    def advance(self, state: FedHSSLState, executor: Executor) -> tuple[int, dict[str, float]]:
        if state.round < self._pretrain_epochs:
            return state.round, self._pretrain_epoch(state.round, executor)
        if not state.handed_off:  # the pretrained (or fresh) backbones become split learning's
            run = self._run
            if self.pretrains:
                executor.map(run.pretrain, run.ids, PretrainPayload(Step.TO_BACKBONE))
            else:
                executor.map(_FreshBackbone(run.seed, self.config.ssl.hidden), run.ids)
            state.handed_off = True
        return state.round, self._finetune_epoch(state.round, executor)

    def end(self, state: FedHSSLState, executor: Executor, reporter: Reporter) -> TrainResult:
        run = self._run
        exported = executor.map(export_models, run.ids)
        backbones = [m.backbone for m in exported]
        head = exported[ACTIVE].top
        model = SplitModel(
            run.data.columns, dict(zip(run.passive, backbones[1:])), backbones[0], head
        )
        return TrainResult(model.eval(), state.history)

    def _pretrain_epoch(self, epoch: int, executor: Executor) -> dict[str, float]:
        s, run = self.config.ssl, self._run
        fn, ids, seed = run.pretrain, run.ids, run.seed
        n = len(run.data.aligned)
        batch = s.pretrain_batch_size
        start = time.perf_counter()
        scale = 0.5 * (1 + math.cos(math.pi * epoch / s.pretrain_epochs))
        executor.map(fn, ids, PretrainPayload(Step.LR, scale=scale))
        order = np.random.default_rng(derive_seed(seed, _BATCH_STREAM, epoch)).permutation(n)
        cross, sent = [], 0
        for begin in range(0, n - 1, batch):  # batch norm needs 2 rows
            rows = order[begin : begin + batch]
            embedded = executor.map(
                fn, ids, PretrainPayload(Step.CROSS_EMBED, rows, counter=epoch * n + begin)
            )
            z = dict(cast(list[tuple[int, np.ndarray]], embedded))
            sent += sum(v.size for v in z.values()) * (len(ids) - 1)
            losses = executor.map(fn, ids, PretrainPayload(Step.CROSS_UPDATE, rows, z))
            cross.append(float(np.mean(cast(list[float], losses))) * len(rows))
        metrics = {"ssl_cross_loss": sum(cross) / n}
        if self.local_ssl:
            local = executor.map(fn, ids, PretrainPayload(Step.LOCAL_EPOCH, counter=epoch))
            metrics["ssl_local_loss"] = float(np.mean(cast(list[float], local)))
        if self.aggregate:
            uploads = executor.map(fn, ids, PretrainPayload(Step.GET_SHARED))
            mean = np.mean(np.stack(cast(list[np.ndarray], uploads)), axis=0)
            if s.model_noise > 0:
                gen = torch.Generator().manual_seed(derive_seed(seed, _NOISE_STREAM, epoch))
                mean = iso_noise(torch.from_numpy(mean)[None], s.model_noise, gen)[0].numpy()
            executor.map(fn, ids, PretrainPayload(Step.SET_SHARED, weights=mean.astype(np.float32)))
            sent += 2 * len(ids) * mean.size
        metrics["bytes_communicated"] = float(sent * BYTES_PER_VALUE)
        metrics["round_time_s"] = time.perf_counter() - start
        return metrics

    def _finetune_epoch(self, step: int, executor: Executor) -> dict[str, float]:
        s, run = self.config.ssl, self._run
        epoch = step - self._pretrain_epochs
        start = time.perf_counter()
        labelled = run.labelled
        order = labelled[
            np.random.default_rng(derive_seed(run.seed, _BATCH_STREAM, 10**6 + epoch)).permutation(
                len(labelled)
            )
        ]
        pending: Mapping[int, Gradient] = {}
        losses = []
        for begin in range(0, len(order), s.finetune_batch_size):
            rows = order[begin : begin + s.finetune_batch_size]
            reply, _ = split_batch(
                executor, run.passive_fn, run.active_fn, run.passive, rows, pending, step
            )
            pending = reply.gradients
            losses.append(reply.loss * len(rows))
        metrics, _ = evaluate_split(
            executor, run.passive_fn, run.active_fn, run.passive, pending, run.data.y_test
        )
        metrics = {"train_loss": sum(losses) / len(order), **metrics}
        metrics["round_time_s"] = time.perf_counter() - start
        if epoch == s.finetune_epochs - 1 and run.passive:
            metrics["mc_accuracy"] = self._model_completion(run.data, executor, run.seed, run.width)
        return metrics

    def _model_completion(
        self, data: VerticalData, executor: Executor, seed: int, width: int
    ) -> float:
        a = self.config.vfl.attack
        attacker = min(a.attacker, data.n_parties - 1)
        bottom = executor.map(export_models, [attacker])[0].backbone
        return attacks.complete(bottom, width, data, attacker, a, derive_seed(seed, _ATTACK_STREAM))


@dataclass
class FedHSSLState(RunState):
    """FedHSSL's state between epochs (its models live with the parties)."""

    handed_off: bool = False
    """Whether the backbones have gone from pretraining to fine-tuning."""


@dataclass
class _FedHSSLRun:
    """What stays the same for a whole run (rebuilt by :meth:`FedHSSL.begin`)."""

    data: VerticalData
    seed: int
    ids: list[int]
    passive: list[int]
    width: int
    labelled: np.ndarray
    pretrain: _Pretrain
    passive_fn: PassiveParty
    active_fn: ActiveParty


@TRAINERS.register("fedgssl")
class FedGSSL(FedHSSL):
    """Cross-party and local SSL, without partial model aggregation."""

    aggregate = False


@TRAINERS.register("fedcssl")
class FedCSSL(FedHSSL):
    """Cross-party SSL only."""

    local_ssl = False
    aggregate = False


@TRAINERS.register("vfl_supervised")
class SupervisedVFL(FedHSSL):
    """No pretraining: the same backbone fine-tuned from scratch on the labelled samples."""

    cross_ssl = False
    local_ssl = False
    aggregate = False


TRAINERS.register("fedhssl")(FedHSSL)
