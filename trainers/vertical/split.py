"""Vertical split learning: VLR, VHNN and VSNN, with attacks and defenses on their messages.

Party 0 (active) holds the labels; parties 1..k-1 (passive) hold features only. Each batch of
aligned samples is two messages each way (Kang et al.'s framework):

1. every passive party p runs its bottom model on its columns and sends ``Embedding`` e_p;
2. the active party combines them with its own features, takes the loss, updates its own
   models, and sends each passive party ``Gradient`` d loss / d e_p, through its defense;
3. each passive party back-propagates its gradient into its bottom model (done at the start
   of its next call, which saves a round trip).

The algorithms differ in the models only:

- ``vlr``: every party's bottom is linear, to class logits; the active party sums them.
- ``vhnn``: every party (the active one too) has an MLP bottom to ``embed_dim``; the active
  party's top model (``top_hidden``, then linear) reads their concatenation.
- ``vsnn``: the passive bottoms are MLPs to class logits and the active party has no bottom:
  its top is a linear model of its raw features whose logits are added to the passive ones.
  Reconstructed: the passive output is the logit itself, as the framework's direct label
  inference on VSNN assumes.

Attacks (:mod:`trainers.vertical.attacks`) observe the gradient messages a passive party
receives and, after training, its bottom model (model completion) and the embeddings the
active party received (model inversion). Defenses (:mod:`trainers.vertical.defenses`) live in
the active party's step; embedding noise in the passive parties'.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clusters import Executor, PartyContext
from trainers.base import (
    BYTES_PER_VALUE,
    TRAINERS,
    Federation,
    Invalid,
    Reporter,
    RunState,
    Trainer,
    TrainResult,
    derive_seed,
)
from trainers.cache import CACHE
from trainers.config import TrainerConfig
from trainers.models import ModelConfig, ModelSpec, build_model
from trainers.vertical import attacks
from trainers.vertical.data import ACTIVE, VerticalData
from trainers.vertical.defenses import DEFENSES, Defense, build_defense, iso_noise
from trainers.vertical.messages import Embedding, Exchange, Gradient

__all__ = [
    "VHNN",
    "VLR",
    "VSNN",
    "ActiveModels",
    "ActiveParty",
    "ActiveState",
    "Embedding",
    "Exported",
    "Gradient",
    "Optim",
    "PassiveParty",
    "PassiveState",
    "Pretrained",
    "SplitLearning",
    "SplitModel",
    "SplitState",
    "evaluate_split",
    "split_batch",
]

_INIT_STREAM = 31
_BATCH_STREAM = 32
_NOISE_STREAM = 33
_ATTACK_STREAM = 34
_DEFENSE_STREAM = 35


@dataclass
class Pretrained:
    """The hand-off from pretraining to split learning: a party's trained backbone, which its
    first split-learning call takes as its bottom model (or, active, as its own model)."""

    backbone: nn.Module


@dataclass
class PassiveState:
    """What a passive party keeps between calls."""

    model: nn.Module
    """Its bottom model."""
    opt: torch.optim.Optimizer | None
    """None: the bottom stays fixed."""
    rows: np.ndarray | None = None
    """The batch it embedded last, whose gradient is pending."""


@dataclass
class ActiveState:
    """What the active party keeps between calls."""

    own: nn.Module
    top: nn.Module | None
    opt: torch.optim.Optimizer
    defense: Defense


@dataclass(frozen=True)
class Optim:
    """A party's optimizer settings; each party builds its own from them."""

    name: str
    lr: float
    momentum: float
    weight_decay: float

    def build(self, params) -> torch.optim.Optimizer:
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )


@dataclass(frozen=True)
class PassivePayload:
    """What the driver delivers to the passive parties in one call."""

    gradients: Mapping[int, Gradient]
    """Gradient messages for the batch each party embedded last (empty: none pending)."""
    rows: np.ndarray | None
    """Aligned-sample positions to embed next (None: nothing, or the test split)."""
    test: bool = False
    """Embed the test split."""
    step: int = 0
    """Global batch counter (seeds the embedding noise)."""


@dataclass(frozen=True)
class PassiveParty:
    """What a passive party runs: apply its pending gradient, then embed the next batch."""

    specs: tuple[tuple[int, ModelSpec], ...]
    seed: int
    optim: Optim
    embedding_noise: float = 0.0
    frozen: bool = False
    """Never update the bottom model (fine-tuning with a fixed passive backbone)."""

    def _setup(self, ctx: PartyContext) -> PassiveState:
        pretrained = ctx.pop(Pretrained)
        if pretrained is not None:
            model = pretrained.backbone
        else:
            spec = dict(self.specs)[ctx.party_id]
            model = build_model(spec, derive_seed(self.seed, _INIT_STREAM, ctx.party_id))
        opt = None if self.frozen else self.optim.build(model.parameters())
        return PassiveState(model, opt)

    def __call__(self, ctx: PartyContext, payload: PassivePayload) -> Embedding | None:
        st = ctx.get(PassiveState)
        if st is None:
            st = self._setup(ctx)
            ctx.put(st)
        data = ctx.data
        message = payload.gradients.get(ctx.party_id)
        if message is not None:
            rows, st.rows = st.rows, None
            if st.opt is not None:
                x = _tensor(data.x_aligned[rows])
                st.opt.zero_grad()
                st.model(x).backward(_tensor(message.values))
                st.opt.step()
        if payload.test:
            x = data.x_test
        elif payload.rows is not None:
            st.rows = payload.rows
            x = data.x_aligned[payload.rows]
        else:
            return None
        with torch.no_grad():
            out = st.model(_tensor(x))
        gen = torch.Generator().manual_seed(
            derive_seed(self.seed, _NOISE_STREAM, ctx.party_id, payload.step)
        )
        return Embedding(ctx.party_id, iso_noise(out, self.embedding_noise, gen).numpy())


@dataclass(frozen=True)
class ActivePayload:
    rows: np.ndarray | None
    """Aligned-sample positions of the batch (None with ``test``)."""
    embeddings: Mapping[int, Embedding]
    test: bool = False
    step: int = 0


@dataclass(frozen=True)
class ActiveReply:
    loss: float = 0.0
    gradients: Mapping[int, Gradient] = dataclasses.field(default_factory=dict)
    probs: np.ndarray | None = None
    """Test predictions (class probabilities, decoded by the defense)."""


@dataclass(frozen=True)
class ActiveModels:
    """The active party's models."""

    own: ModelSpec
    """Its model of its own features: a bottom (vhnn) or the linear part of the top."""
    top: ModelSpec | None
    """vhnn: the top model over the concatenated embeddings; None: the logits are summed."""
    passive: tuple[int, ...]
    """The passive parties whose embeddings it combines, in order."""


@dataclass(frozen=True)
class ActiveParty:
    """What the active party runs: combine, take the loss, step, send defended gradients.

    Args:
        models: its models and the parties it combines.
        seed: the run's seed.
        optim: its optimizer settings.
        defense: what it does to its targets, loss and outgoing gradients.
        frozen: never update its own model (fine-tuning a linear probe).
    """

    models: ActiveModels
    seed: int
    optim: Optim
    defense: Defense
    frozen: bool = False

    def _setup(self, ctx: PartyContext) -> ActiveState:
        m = self.models
        pretrained = ctx.pop(Pretrained)
        if pretrained is not None:
            own = pretrained.backbone
        else:
            own = build_model(m.own, derive_seed(self.seed, _INIT_STREAM, ACTIVE))
        params = [] if self.frozen else list(own.parameters())
        top = None
        if m.top is not None:
            top = build_model(m.top, derive_seed(self.seed, _INIT_STREAM, ACTIVE, 1))
            params += list(top.parameters())
        width = None if m.top is None else m.top.n_features // (len(m.passive) + 1)
        params += self.defense.modules(m.passive, width)
        return ActiveState(own, top, self.optim.build(params), self.defense)

    def logits(
        self, st: ActiveState, x: torch.Tensor, emb: Mapping[int, torch.Tensor]
    ) -> torch.Tensor:
        own = st.own(x)
        if st.top is None:
            return own + sum(emb[p] for p in self.models.passive)
        return st.top(torch.cat([own, *(emb[p] for p in self.models.passive)], dim=1))

    def __call__(self, ctx: PartyContext, payload: ActivePayload) -> ActiveReply:
        st = ctx.get(ActiveState)
        if st is None:
            st = self._setup(ctx)
            ctx.put(st)
        data, defense = ctx.data, st.defense
        if payload.test:
            emb = {p: _tensor(e.values) for p, e in payload.embeddings.items()}
            with torch.no_grad():
                probs = F.softmax(self.logits(st, _tensor(data.x_test), emb), dim=1)
                return ActiveReply(probs=defense.decode(probs).numpy())
        rows = payload.rows
        x, y = _tensor(data.x_aligned[rows]), _tensor(data.y_aligned[rows])
        emb = {p: _tensor(e.values, requires_grad=True) for p, e in payload.embeddings.items()}
        logits = self.logits(st, x, emb)
        loss = -(defense.targets(y) * F.log_softmax(logits, dim=1)).sum(1).mean()
        total = loss + defense.penalty(emb, y)
        st.opt.zero_grad()
        total.backward()
        st.opt.step()
        gen = torch.Generator().manual_seed(derive_seed(self.seed, _NOISE_STREAM, 0, payload.step))
        grads = {
            p: Gradient(p, defense.gradient(_grad(emb[p]), y, gen).numpy())
            for p in self.models.passive
        }
        return ActiveReply(loss=float(loss.detach()), gradients=grads)


def _tensor(a: np.ndarray, requires_grad: bool = False) -> torch.Tensor:
    """A float or label array as a tensor; arrays from Ray's object store are read-only, so
    they are copied (batches are small)."""
    t = torch.from_numpy(np.array(a, copy=True))
    return t.requires_grad_(requires_grad) if requires_grad else t


@dataclass
class Exported:
    """A party's trained models (copies), for the final model and the attacks."""

    backbone: nn.Module
    """A passive party's bottom model, or the active party's own one."""
    top: nn.Module | None = None
    """The active party's top model (None for a passive party, or with no top)."""


def export_models(ctx: PartyContext, payload: object) -> Exported:
    """A party's trained models (copies): a passive party's bottom, the active party's own
    model and top."""
    passive, active = ctx.get(PassiveState), ctx.get(ActiveState)
    if passive is not None:
        return Exported(copy.deepcopy(passive.model))
    assert active is not None, "the party never ran split learning"
    top = copy.deepcopy(active.top) if active.top is not None else None
    return Exported(copy.deepcopy(active.own), top)


class SplitModel(nn.Module):
    """The whole trained federation as one module of the full feature vector (for MLflow)."""

    def __init__(
        self,
        columns: tuple[np.ndarray, ...],
        bottoms: Mapping[int, nn.Module],
        own: nn.Module,
        top: nn.Module | None,
    ) -> None:
        super().__init__()
        self.passive = sorted(bottoms)
        self.bottoms = nn.ModuleList([bottoms[p] for p in self.passive])
        self.own, self.top = own, top
        for p, cols in enumerate(columns):
            self.register_buffer(f"cols{p}", torch.as_tensor(cols, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        own = self.own(x.index_select(1, self.get_buffer("cols0")))
        embs = [
            bottom(x.index_select(1, self.get_buffer(f"cols{p}")))
            for p, bottom in zip(self.passive, self.bottoms)
        ]
        if self.top is None:
            return own + sum(embs)
        return self.top(torch.cat([own, *embs], dim=1))


def _embedded(replies: list[Embedding | None]) -> list[Embedding]:
    """The passive parties' embeddings, every one of them asked to embed."""
    out = [e for e in replies if e is not None]
    assert len(out) == len(replies), "a passive party asked to embed returned nothing"
    return out


def _grad(t: torch.Tensor) -> torch.Tensor:
    assert t.grad is not None, "the embedding took no part in the loss"
    return t.grad


def split_batch(
    executor: Executor,
    passive_fn: PassiveParty,
    active_fn: ActiveParty,
    passive_ids: list[int],
    rows: np.ndarray,
    pending: Mapping[int, Gradient],
    step: int,
) -> tuple[ActiveReply, list[Embedding]]:
    """One training batch: the passive parties apply ``pending`` and embed ``rows``; the active
    party steps and replies with the gradient messages (to deliver with the next call)."""
    embs = _embedded(
        executor.map(passive_fn, passive_ids, PassivePayload(pending, rows, step=step))
    )
    reply = executor.map(
        active_fn, [ACTIVE], ActivePayload(rows, {e.party: e for e in embs}, step=step)
    )[0]
    return reply, embs


def evaluate_split(
    executor: Executor,
    passive_fn: PassiveParty,
    active_fn: ActiveParty,
    passive_ids: list[int],
    pending: Mapping[int, Gradient],
    y_test: np.ndarray,
) -> tuple[dict[str, float], list[Embedding]]:
    """Delivers ``pending`` and scores the federation on the test split: accuracy, loss and,
    for binary labels, AUC; ``utility`` is the AUC (binary) or the accuracy."""
    embs = _embedded(executor.map(passive_fn, passive_ids, PassivePayload(pending, None, True)))
    probs = executor.map(
        active_fn, [ACTIVE], ActivePayload(None, {e.party: e for e in embs}, True)
    )[0].probs
    assert probs is not None
    acc = float((probs.argmax(1) == y_test).mean())
    picked = probs[np.arange(len(y_test)), y_test]
    metrics = {
        "test_accuracy": acc,
        "test_loss": float(-np.log(np.clip(picked, 1e-12, None)).mean()),
    }
    if probs.shape[1] == 2:
        metrics["test_auc"] = attacks.auc(y_test, probs[:, 1]) or float("nan")
    metrics["utility"] = metrics.get("test_auc", acc)
    return metrics, embs


class _Silent:
    def report(self, step: int, metrics: Mapping[str, float]) -> None:
        pass


class SplitLearning(Trainer[VerticalData, "SplitState"]):
    """Vertical split learning over the executor; subclasses choose the models.

    Args:
        config: ``rounds`` (epochs), ``batch_size``, the optimizer, and ``vfl``.
        model: ``hidden`` gives the MLP bottoms' hidden widths.
    """

    vertical = True
    checkpointable = False
    reads = frozenset(
        {"rounds", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "vfl"}
    )
    unused = {"local_epochs": "trainer.rounds counts its epochs"}
    sum_logits = True
    """The passive bottoms output class logits and the active party sums them (no top)."""
    passive_model = "logreg"
    own_model = "logreg"

    metrics = (
        "train_loss",
        "test_accuracy",
        "test_loss",
        "test_auc",
        "utility",
        "bytes_communicated",
        "round_time_s",
        *(f"{a}_auc" for a in attacks.LABEL_ATTACKS),
        *(f"{a}_auc95" for a in attacks.LABEL_ATTACKS),
        "dli_accuracy",
        "label_leakage",
        "defense_score",
        "tradeoff_f2",
        "mc_accuracy",
        "mi_mse",
        "utility_loss",
    )

    @classmethod
    def validate(cls, config: TrainerConfig, model: ModelConfig, federation: Federation) -> None:
        name = cls.__name__.lower()
        if model.name not in ("logreg", "mlp"):
            raise Invalid(
                "model.name", f"{name} builds its own bottoms; model gives only mlp hidden widths"
            )
        _check_vertical(config, federation)

    def check(self, data: VerticalData) -> None:
        d = self.config.vfl.defense
        if DEFENSES.get(d.name).binary_only and data.n_classes != 2:
            raise Invalid(
                "trainer.vfl.defense.name",
                f"{d.name} needs binary labels; the data has {data.n_classes} classes "
                "(data.positive makes a task binary)",
            )

    def plots(self) -> tuple[str, ...]:
        label = set(attacks.LABEL_ATTACKS).intersection(self.config.vfl.attack.names)
        return ("privacy_curve",) if label else ("learning_curve",)

    def specs(self, data: VerticalData) -> tuple[dict[int, ModelSpec], ModelSpec, ModelSpec | None]:
        """The passive bottoms, the active party's own model and its top (or None)."""
        v, c = self.config.vfl, data.n_classes
        out = c if self.sum_logits else v.embed_dim
        hidden = tuple(self.model_config.hidden) if self.passive_model == "mlp" else ()
        bottoms = {
            p: ModelSpec(self.passive_model, len(data.columns[p]), out, hidden)
            for p in range(1, data.n_parties)
        }
        own_hidden = tuple(self.model_config.hidden) if self.own_model == "mlp" else ()
        own = ModelSpec(self.own_model, len(data.columns[ACTIVE]), out, own_hidden)
        top = None
        if not self.sum_logits:
            name = "mlp" if v.top_hidden else "logreg"
            top = ModelSpec(name, out * data.n_parties, c, tuple(v.top_hidden))
        return bottoms, own, top

    def applicable(self, data: VerticalData) -> dict[str, str]:
        """Each configured attack -> why it does not apply ("" when it does)."""
        binary = data.n_classes == 2
        why = {}
        for name in self.config.vfl.attack.names:
            label = attacks.VFL_ATTACKS.get(name).label
            if label is not None:
                why[name] = label.why_not(binary, self.sum_logits, self.passive_model)
            else:
                why[name] = ""
        return why

    def begin(self, data: VerticalData, executor: Executor, seed: int) -> SplitState:
        """Sets the federation up; with a defense, first trains the same federation without
        it (cached per process) for the utility it costs."""
        cfg, v = self.config, self.config.vfl
        attacker = v.attack.attacker
        reference = None
        if v.reference and v.defense.name != "none":
            reference = self._reference(data, executor, seed)
        bottoms, own, top = self.specs(data)
        optim = Optim(cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
        passive_ids = sorted(bottoms)
        defense = build_defense(
            v.defense.name,
            v.defense.strength,
            data.n_classes,
            derive_seed(seed, _DEFENSE_STREAM),
            v.defense.bound,
        )
        parties = {p: data.party(p) for p in range(data.n_parties)}
        executor.load(parties, sizes={p: len(parties[p]) for p in parties})
        why = self.applicable(data)
        self._run = _SplitRun(
            data=data,
            seed=seed,
            reference=reference,
            passive_ids=passive_ids,
            passive_fn=PassiveParty(tuple(bottoms.items()), seed, optim, v.defense.embedding_noise),
            active_fn=ActiveParty(ActiveModels(own, top, tuple(passive_ids)), seed, optim, defense),
            why=why,
            observer=attacks.LabelInference(
                [a for a in attacks.LABEL_ATTACKS if why.get(a) == ""],
                attacker,
                data.y_train[data.aligned],
                data.features(attacker, data.aligned),
                (seed, _ATTACK_STREAM),
            ),
        )
        return SplitState(series=self._run.observer.series)

    def done(self, state: SplitState) -> bool:
        return state.round >= self.config.rounds

    def advance(self, state: SplitState, executor: Executor) -> tuple[int, dict[str, float]]:
        cfg, v, run = self.config, self.config.vfl, self._run
        data, epoch, observer = run.data, state.round, run.observer
        observer.series = state.series  # the attacks' series so far (a resumed run's too)
        n, batch = len(data.aligned), cfg.batch_size
        start = time.perf_counter()
        order = np.random.default_rng(derive_seed(run.seed, _BATCH_STREAM, epoch)).permutation(n)
        pending: Mapping[int, Gradient] = {}
        losses, sent = [], 0
        observer.start_epoch(epoch)
        for begin in range(0, n, batch):
            rows = order[begin : begin + batch]
            reply, embs = split_batch(
                executor, run.passive_fn, run.active_fn, run.passive_ids, rows, pending, state.step
            )
            pending = reply.gradients
            losses.append(reply.loss * len(rows))
            sent += sum(e.values.size for e in embs) + sum(g.values.size for g in pending.values())
            observer.observe(Exchange(rows, embs, pending))
            state.step += 1
        metrics, test_embs = evaluate_split(
            executor, run.passive_fn, run.active_fn, run.passive_ids, pending, data.y_test
        )
        metrics = {
            "train_loss": float(sum(losses) / n),
            **metrics,
            "bytes_communicated": float(sent * BYTES_PER_VALUE),
            **observer.end_epoch(data.n_classes == 2),
        }
        metrics["round_time_s"] = time.perf_counter() - start
        if epoch == cfg.rounds - 1:
            summary, state.tables = self._final(
                data,
                executor,
                run.passive_fn,
                run.passive_ids,
                test_embs,
                state.series,
                run.why,
                run.seed,
                state.step,
            )
            metrics.update(summary)
            if run.reference is not None:
                metrics["utility_loss"] = run.reference - metrics["utility"]
            elif v.reference:  # no defense: this run is its own reference
                metrics["utility_loss"] = 0.0
            f2_base = metrics.get("defense_score")
            if f2_base is not None and np.isfinite(f2_base):
                metrics["tradeoff_f2"] = attacks.f_beta(f2_base, metrics["utility"])
        return epoch, metrics

    def end(self, state: SplitState, executor: Executor, reporter: Reporter) -> TrainResult:
        run = self._run
        models = executor.map(export_models, list(range(run.data.n_parties)))
        model = SplitModel(
            run.data.columns,
            {p: models[p].backbone for p in run.passive_ids},
            models[ACTIVE].backbone,
            models[ACTIVE].top,
        )
        return TrainResult(model.eval(), state.history, state.tables)

    def _final(
        self,
        data: VerticalData,
        executor: Executor,
        passive_fn: PassiveParty,
        passive_ids: list[int],
        test_embs: list[Embedding],
        series: dict[str, list[float]],
        why: dict[str, str],
        seed: int,
        step: int,
    ) -> tuple[dict[str, float], dict[str, list[dict]]]:
        """Leakage over the run, and the attacks that need the trained models."""
        a = self.config.vfl.attack
        attacker = a.attacker
        # Every summary metric is reported, NaN where its attack does not apply, so that a
        # grid over algorithms can tabulate the same columns for all of them.
        out: dict[str, float] = {
            **{f"{name}_auc95": float("nan") for name in attacks.LABEL_ATTACKS},
            "mc_accuracy": float("nan"),
            "mi_mse": float("nan"),
        }
        rows: list[dict] = []
        aucs = []
        for name, values in series.items():
            finite = [x for x in values if np.isfinite(x)]
            top = float(np.percentile(finite, a.percentile)) if finite else float("nan")
            if data.n_classes == 2:
                out[f"{name}_auc95"] = top
                aucs.append(top)
            rows.append({"attack": name, "applies": True, "reason": "", "value": top})
        if aucs:
            out["defense_score"] = attacks.defense_score(aucs)
            out["label_leakage"] = 1.0 - out["defense_score"]
        bottoms, _, _ = self.specs(data)
        if "mc" in why and not why["mc"]:
            bottom = executor.map(export_models, [attacker])[0].backbone
            out["mc_accuracy"] = attacks.complete(
                bottom,
                bottoms[attacker].n_classes,
                data,
                attacker,
                a,
                derive_seed(seed, _ATTACK_STREAM, 1),
            )
            rows.append(
                {"attack": "mc", "applies": True, "reason": "", "value": out["mc_accuracy"]}
            )
        if "mi" in why and not why["mi"]:
            rng = np.random.default_rng(derive_seed(seed, _ATTACK_STREAM, 2))
            aux = rng.choice(
                len(data.aligned), size=min(a.mi_samples, len(data.aligned)), replace=False
            )
            seen = _embedded(
                executor.map(passive_fn, [attacker], PassivePayload({}, aux, step=step))
            )[0]
            target = next(e for e in test_embs if e.party == attacker)
            shadow = build_model(bottoms[attacker], derive_seed(seed, _ATTACK_STREAM, 3))
            out["mi_mse"] = attacks.model_inversion(
                shadow,
                data.features(attacker, data.aligned[aux]),
                seen.values,
                target.values,
                data.features(attacker, test=True),
                steps=a.mi_steps,
            )
            rows.append({"attack": "mi", "applies": True, "reason": "", "value": out["mi_mse"]})
        for name, reason in why.items():
            if reason:
                rows.append(
                    {"attack": name, "applies": False, "reason": reason, "value": float("nan")}
                )
        return out, {"vfl_attacks": rows}

    def _reference(self, data: VerticalData, executor: Executor, seed: int) -> float:
        """Utility of the same run without the defense (cached per process)."""
        cfg = copy.deepcopy(self.config)
        cfg.vfl.defense = type(cfg.vfl.defense)()
        cfg.vfl.attack.names = []
        cfg.vfl.reference = False
        digest = hashlib.sha1(data.x_train.tobytes() + data.aligned.tobytes()).hexdigest()
        key = (type(self).__name__, repr(cfg), repr(self.model_config), seed, digest)

        def undefended() -> float:
            result = type(self)(cfg, self.model_config).fit(data, executor, _Silent(), seed)
            return result.history[-1]["utility"]

        return CACHE.get("vertical.reference", key, undefended)


@dataclass
class SplitState(RunState):
    """Split learning's state between epochs (the models live with the parties)."""

    step: int = 0
    """Batches trained so far (seeds the embedding and gradient noise)."""
    series: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    """Each label attack's per-epoch success so far."""
    tables: dict[str, list[dict[str, object]]] = dataclasses.field(default_factory=dict)


@dataclass
class _SplitRun:
    """What stays the same for a whole run (rebuilt by :meth:`SplitLearning.begin`)."""

    data: VerticalData
    seed: int
    reference: float | None
    passive_ids: list[int]
    passive_fn: PassiveParty
    active_fn: ActiveParty
    why: dict[str, str]
    observer: attacks.LabelInference


def _check_vertical(config: TrainerConfig, federation: Federation) -> None:
    """What every vertical trainer needs of the federation and of its attack settings."""
    parties = federation.parties
    if parties < 2:
        raise Invalid("partition.num_parties", "a vertical federation needs at least 2")
    attacker = config.vfl.attack.attacker
    if attacker >= parties:
        raise Invalid(
            "trainer.vfl.attack.attacker",
            f"party {attacker} does not exist ({parties} parties, 0 active)",
        )


@TRAINERS.register("vlr")
class VLR(SplitLearning):
    """Vertical logistic regression: linear bottoms to logits, summed by the active party."""


@TRAINERS.register("vhnn")
class VHNN(SplitLearning):
    """Vertical hetero NN: MLP bottoms at every party, a top model at the active party."""

    sum_logits = False
    passive_model = "mlp"
    own_model = "mlp"


@TRAINERS.register("vsnn")
class VSNN(SplitLearning):
    """Vertical split NN: MLP passive bottoms to logits; the active party adds a linear model
    of its raw features (it has no bottom model)."""

    passive_model = "mlp"
