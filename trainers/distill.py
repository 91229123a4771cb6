"""Knowledge distillation: a frozen teacher distils into a student, TinyMIM's recipe axes at
CPU scale.

The student (the experiment's ``model``) minimises

    label_weight * CE(student(x), y) + distill_weight * L_target

over the distillation data, where the target is one of:

- ``logits``: T^2 KL(softmax(t / T) || softmax(s / T)) (Hinton et al.);
- ``features``: MSE, smooth-L1 or 1 - cosine between the teacher's and the student's chosen
  layers, both layer-normalised, through a learned linear projection when widths differ
  (vit tokens are compared token by token; a vit against a non-vit by its mean token);
- ``relations``: between two vits with the same tokens, TinyMIM's token relations of the
  chosen blocks, KL(R_t || R_s) for R_qk = softmax(Q K^T / sqrt(d_h)) and R_vv =
  softmax(V V^T / sqrt(d_h)), per head (averaged over heads when the head counts differ);
  otherwise sample relations: KL between the row-softmaxed cosine-similarity Gram matrices
  (temperature 0.1) of the batch's features at the chosen layers (vit features: the mean
  token).

The teacher is trained here first (``teacher.source: train``) or handed over already trained
(loaded from MLflow by the orchestrator). With an ``assistant``, distillation is sequential:
teacher -> assistant -> student, each stage with the same recipe. Teacher outputs are computed
once over the distillation data (the teacher is frozen and the inputs are not augmented).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clusters import Executor
from trainers.base import (
    TRAINERS,
    Budget,
    FederatedData,
    Federation,
    Invalid,
    Reporter,
    RunState,
    TeacherRef,
    Trainer,
    TrainResult,
    derive_seed,
)
from trainers.config import DistillConfig, DistillTarget, TeacherSource, TrainerConfig
from trainers.models import (
    ModelConfig,
    ModelSpec,
    build_model,
    check_input,
    forward_layers,
    seeded,
)

__all__ = ["DistillState", "Distillation", "latency_ms", "train_supervised"]

_TEACHER_STREAM = 11
_STUDENT_STREAM = 12
_GRAM_TEMPERATURE = 0.1


@dataclass
class _Targets:
    """The frozen teacher's outputs over the distillation data."""

    logits: torch.Tensor
    feats: torch.Tensor | None = None
    qk: torch.Tensor | None = None
    vv: torch.Tensor | None = None


def _pick(layers: list, index: int, who: str) -> int:
    if not layers:
        raise ValueError(f"the {who} has no hidden layer to distil from (use target=logits)")
    if not -len(layers) <= index < len(layers):
        raise ValueError(f"{who}_layer {index} out of range: the {who} has {len(layers)} layers")
    return index % len(layers)


def _relation_maps(qkv: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = qkv
    scale = q.shape[-1] ** -0.5
    return (
        F.log_softmax(q @ k.transpose(-2, -1) * scale, dim=-1),
        F.log_softmax(v @ v.transpose(-2, -1) * scale, dim=-1),
    )


def _sample_features(feats: torch.Tensor) -> torch.Tensor:
    return feats.mean(dim=1) if feats.dim() == 3 else feats


def _gram_log_softmax(feats: torch.Tensor) -> torch.Tensor:
    f = F.normalize(_sample_features(feats), dim=-1)
    return F.log_softmax(f @ f.T / _GRAM_TEMPERATURE, dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the last axis, averaged over everything else."""
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def _head_average(log_r: torch.Tensor, heads: int) -> torch.Tensor:
    """Per-head log relation maps, or their head-averaged map when the head counts differ."""
    if log_r.shape[1] == heads:
        return log_r
    return torch.log(log_r.exp().mean(dim=1, keepdim=True) + 1e-12)


def train_supervised(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int
) -> nn.Module:
    """Plain cross-entropy training with Adam (the teacher, when fedsweep trains it)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), 64):
            idx = order[start : start + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def latency_ms(model: nn.Module, n_features: int, batch: int = 256, repeats: int = 15) -> float:
    """Median wall time of one forward pass over ``batch`` inputs, in milliseconds."""
    x = torch.zeros(batch, n_features)
    model.eval()
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        return (logits.argmax(1) == y).float().mean().item(), F.cross_entropy(logits, y).item()


class Distillation(Trainer[FederatedData, "DistillState"]):
    """Distils a teacher into the experiment's model (the student).

    Args:
        config: ``distill`` holds the teacher and the recipe.
        model: the student's architecture.
    """

    reads = frozenset({"distill"})
    unused = {
        key: "its schedule is trainer.distill (epochs, batch_size, lr)"
        for key in ("rounds", "local_epochs", "batch_size", "lr", "weight_decay")
    }
    metrics = (
        "test_accuracy",
        "test_loss",
        "train_loss",
        "distill_loss",
        "label_loss",
        "teacher_accuracy",
        "student_params",
        "latency_ms",
        "stage",
    )
    """stage: 0, 1... per distillation stage (an assistant first), +0.5 while fine-tuning."""

    @classmethod
    def validate(cls, config: TrainerConfig, model: ModelConfig, federation: Federation) -> None:
        """A loaded teacher needs its URI; features and relations between ViTs need as many
        tokens along the chain teacher -> [assistant ->] student."""
        d = config.distill
        if d.teacher.source == TeacherSource.mlflow and not d.teacher.uri:
            raise Invalid("trainer.distill.teacher.uri", "required when source is mlflow")
        chain = [
            ("trainer.distill.teacher.model", d.teacher.model),
            *([("trainer.distill.assistant", d.assistant)] if d.assistant is not None else []),
            ("model", model),
        ]
        if d.teacher.source == TeacherSource.mlflow:
            chain = chain[1:]  # a loaded teacher's architecture is known only once loaded
        if d.target != DistillTarget.logits:
            for (_, teacher), (key, student) in zip(chain, chain[1:]):
                if teacher.name == student.name == "vit" and teacher.patch != student.patch:
                    raise Invalid(
                        f"{key}.patch",
                        f"{d.target} between vits need as many tokens: patch {student.patch} "
                        f"against the teacher's {teacher.patch}",
                    )

    def check(self, data: FederatedData) -> None:
        d = self.config.distill
        models = [("model", self.model_config)]
        if d.teacher.source == TeacherSource.train:
            models.append(("trainer.distill.teacher.model", d.teacher.model))
        if d.assistant is not None:
            models.append(("trainer.distill.assistant", d.assistant))
        for key, cfg in models:
            problem = check_input(cfg, data.n_features, data.image)
            if problem:
                raise Invalid(f"{key}.name" if key != "model" else "model.name", problem)

    def budget(self) -> Budget:
        d = self.config.distill
        stages = 2 if d.assistant is not None else 1
        return Budget(stages * d.epochs + d.finetune_epochs, "epoch")

    def teacher_uri(self) -> TeacherRef | None:
        t = self.config.distill.teacher
        if t.source != TeacherSource.mlflow or not t.uri:
            return None
        return TeacherRef(t.uri, t.tracking_uri, "trainer.distill.teacher.uri")

    def begin(self, data: FederatedData, executor: Executor, seed: int) -> DistillState:
        c: DistillConfig = self.config.distill
        pooled = data.pooled()
        x_train = torch.from_numpy(np.ascontiguousarray(pooled.x, dtype=np.float32))
        y_train = torch.from_numpy(np.ascontiguousarray(pooled.y, dtype=np.int64))
        x_test = torch.from_numpy(np.ascontiguousarray(data.x_test, dtype=np.float32))
        y_test = torch.from_numpy(np.ascontiguousarray(data.y_test, dtype=np.int64))
        x_distil, y_distil = x_train, y_train
        if c.proxy_fraction > 0:  # distil on part of the held-out split, evaluate on the rest
            rng = np.random.default_rng(derive_seed(seed, _STUDENT_STREAM))
            order = torch.from_numpy(rng.permutation(len(y_test)))
            cut = max(1, int(c.proxy_fraction * len(y_test)))
            x_distil, y_distil = x_test[order[:cut]], y_test[order[:cut]]
            x_test, y_test = x_test[order[cut:]], y_test[order[cut:]]
        stages = (
            [c.assistant, self.model_config] if c.assistant is not None else [self.model_config]
        )
        self._run = _DistillRun(
            data=data,
            seed=seed,
            x_train=x_train,
            y_train=y_train,
            x_distil=x_distil,
            y_distil=y_distil,
            x_test=x_test,
            y_test=y_test,
            stages=stages,
        )
        return DistillState()

    def done(self, state: DistillState) -> bool:
        return state.stage >= len(self._run.stages)

    def advance(self, state: DistillState, executor: Executor) -> tuple[int, dict[str, float]]:
        c, run = self.config.distill, self._run
        if state.teacher is None:  # the first round: the teacher is trained, or handed over
            teacher = self.teacher
            if teacher is None:
                spec = ModelSpec.from_config(
                    c.teacher.model, run.data.n_features, run.data.n_classes, run.data.image
                )
                teacher = build_model(spec, seed=derive_seed(run.seed, _TEACHER_STREAM))
                teacher = train_supervised(
                    teacher, run.x_train, run.y_train, c.teacher.epochs, c.teacher.lr, run.seed
                )
            state.teacher = teacher.eval()
            state.teacher_accuracy, _ = _accuracy(state.teacher, run.x_test, run.y_test)
        if state.student is None:
            self._start_stage(state)
        assert state.student is not None and state.opt is not None and state.gen is not None
        metrics = self._epoch(state)
        state.epoch += 1
        final = state.stage == len(run.stages) - 1
        if state.epoch == c.epochs + (c.finetune_epochs if final else 0):  # the stage is done
            spec = ModelSpec.from_config(
                run.stages[state.stage], run.data.n_features, run.data.n_classes, run.data.image
            )
            state.lineage.append(
                {"stage": state.stage, "model": spec.name, "params": _params(state.student)}
            )
            state.teacher = state.student.eval()  # sequential: it teaches the next stage
            state.student, state.projection, state.opt, state.gen = None, None, None, None
            state.stage, state.epoch = state.stage + 1, 0
        return state.round, metrics

    def end(self, state: DistillState, executor: Executor, reporter: Reporter) -> TrainResult:
        assert state.teacher is not None
        return TrainResult(state.teacher, state.history, {"stages": state.lineage})

    def _start_stage(self, state: DistillState) -> None:
        """A stage's student, its optimizer and its batch order's generator."""
        c, run = self.config.distill, self._run
        spec = ModelSpec.from_config(
            run.stages[state.stage], run.data.n_features, run.data.n_classes, run.data.image
        )
        student = build_model(spec, seed=derive_seed(run.seed, _STUDENT_STREAM, state.stage))
        targets, s_index, feats = self._stage_targets(state.teacher, student)
        projection = None
        if c.target == "features":
            assert targets.feats is not None
            if feats[s_index].shape[-1] != targets.feats.shape[-1]:
                with seeded(derive_seed(run.seed, _STUDENT_STREAM, state.stage, 2)):
                    projection = nn.Linear(feats[s_index].shape[-1], targets.feats.shape[-1])
        params = list(student.parameters()) + (
            list(projection.parameters()) if projection is not None else []
        )
        state.student, state.projection = student, projection
        state.opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        state.gen = torch.Generator().manual_seed(
            derive_seed(run.seed, _STUDENT_STREAM, state.stage, 1)
        )
        state.latency_ms = latency_ms(student, run.x_distil.shape[1])

    def _stage_targets(self, teacher: nn.Module | None, student: nn.Module):
        """The frozen teacher's targets for the stage and the student's matched layer, made
        once per stage (and again for a resumed run: they depend on the teacher only)."""
        c, run = self.config.distill, self._run
        key = id(teacher)
        if run.targets is None or run.targets[0] != key:
            with torch.no_grad():  # a probe of the student's layers
                _, feats, s_qkvs = forward_layers(student.eval(), run.x_distil[:2])
            assert teacher is not None
            targets = self._teacher_targets(
                teacher, run.x_distil, token_relations=s_qkvs is not None
            )
            s_index = _pick(feats, c.student_layer, "student") if c.target != "logits" else 0
            run.targets = (key, targets, s_index, feats)
        _, targets, s_index, feats = run.targets
        return targets, s_index, feats

    def _epoch(self, state: DistillState) -> dict[str, float]:
        """One epoch of distillation, or of label-only fine-tuning after it."""
        c, run = self.config.distill, self._run
        student, opt, gen = state.student, state.opt, state.gen
        assert student is not None and opt is not None and gen is not None
        targets, s_index, _ = self._stage_targets(state.teacher, student)
        x, y = run.x_distil, run.y_distil
        tuning = state.epoch >= c.epochs
        w_label, w_distil = (1.0, 0.0) if tuning else (c.label_weight, c.distill_weight)
        student.train()
        order = torch.randperm(len(y), generator=gen)
        sums = np.zeros(3)
        for start in range(0, len(y), c.batch_size):
            idx = order[start : start + c.batch_size]
            logits, s_feats, s_qkv = forward_layers(student, x[idx])
            label = F.cross_entropy(logits, y[idx])
            if tuning:
                distil = torch.zeros(())
            else:
                distil = self._loss(targets, idx, logits, s_feats, s_qkv, s_index, state.projection)
            loss = w_label * label + w_distil * distil
            opt.zero_grad()
            loss.backward()
            opt.step()
            sums += np.array([loss.item(), distil.item(), label.item()]) * len(idx)
        acc, test_loss = _accuracy(student, run.x_test, run.y_test)
        total, distil_mean, label_mean = sums / len(y)
        return {
            "test_accuracy": acc,
            "test_loss": test_loss,
            "train_loss": float(total),
            "distill_loss": float(distil_mean),
            "label_loss": float(label_mean),
            "teacher_accuracy": state.teacher_accuracy,
            "student_params": float(_params(student)),
            "latency_ms": state.latency_ms,
            "stage": float(state.stage) + (0.5 if tuning else 0.0),
        }

    def _teacher_targets(
        self, teacher: nn.Module, x: torch.Tensor, token_relations: bool
    ) -> _Targets:
        """The teacher's outputs the recipe needs; ``token_relations``: the student is a vit
        too, so relations are token relations when the teacher has them."""
        c = self.config.distill
        with torch.no_grad():
            logits, feats, qkvs = forward_layers(teacher, x)
            if c.target == "logits":
                return _Targets(logits)
            index = _pick(feats, c.teacher_layer, "teacher")
            out = _Targets(logits, feats=feats[index])
            if c.target == "relations" and token_relations and qkvs is not None:
                out.qk, out.vv = _relation_maps(qkvs[index])
            elif c.target == "features":
                out.feats = F.layer_norm(feats[index], feats[index].shape[-1:])
            return out

    def _loss(self, targets, idx, logits, s_feats, s_qkv, s_index, projection) -> torch.Tensor:
        c = self.config.distill
        if c.target == "logits":
            temp = c.temperature
            return (
                _kl(F.log_softmax(targets.logits[idx] / temp, -1), F.log_softmax(logits / temp, -1))
                * temp
                * temp
            )
        if c.target == "features":
            s = s_feats[s_index]
            if projection is not None:
                s = projection(s)
            t = targets.feats[idx]
            if s.dim() != t.dim():  # a vit and a non-vit: compare the mean token
                s, t = _sample_features(s), _sample_features(t)
                t = F.layer_norm(t, t.shape[-1:])
            s = F.layer_norm(s, s.shape[-1:])
            if s.shape != t.shape:
                raise ValueError(
                    f"features: student {tuple(s.shape[1:])} vs teacher {tuple(t.shape[1:])}: "
                    "token counts must match (same patch size)"
                )
            if c.feature_loss == "cosine":
                return (1 - F.cosine_similarity(s, t, dim=-1)).mean()
            if c.feature_loss == "smooth_l1":
                return F.smooth_l1_loss(s, t)
            return F.mse_loss(s, t)
        if targets.qk is not None:  # token relations, vit to vit
            s_qk, s_vv = _relation_maps(s_qkv[s_index])
            if s_qk.shape[-1] != targets.qk.shape[-1]:
                raise ValueError(
                    "relations: teacher and student must cut images into as many tokens"
                )
            heads = s_qk.shape[1]
            loss = torch.zeros(())
            if c.relations in ("qk_vv", "qk"):
                t_qk = _head_average(targets.qk[idx], heads)
                loss = loss + _kl(t_qk, _head_average(s_qk, t_qk.shape[1]))
            if c.relations in ("qk_vv", "vv"):
                t_vv = _head_average(targets.vv[idx], heads)
                loss = loss + _kl(t_vv, _head_average(s_vv, t_vv.shape[1]))
            return loss
        return _kl(_gram_log_softmax(targets.feats[idx]), _gram_log_softmax(s_feats[s_index]))


@dataclass
class DistillState(RunState):
    """Distillation's state between epochs: the stage's teacher and student, its optimizer and
    batch generator, and what the stages produced."""

    stage: int = 0
    epoch: int = 0
    """Epochs done in the stage."""
    teacher: nn.Module | None = None
    """The stage's (frozen) teacher; None before the first round trained or received it."""
    teacher_accuracy: float = 0.0
    """The first teacher's test accuracy."""
    student: nn.Module | None = None
    projection: nn.Module | None = None
    opt: torch.optim.Optimizer | None = None
    gen: torch.Generator | None = None
    latency_ms: float = 0.0
    lineage: list[dict[str, object]] = field(default_factory=list)


@dataclass(kw_only=True)
class _DistillRun:
    """What stays the same for a whole run (rebuilt by :meth:`Distillation.begin`)."""

    data: FederatedData
    seed: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_distil: torch.Tensor
    y_distil: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    stages: list[ModelConfig]
    targets: tuple[int, _Targets, int, list] | None = None
    """(teacher's id, its targets, the student's layer, the student's probed layers)."""


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


TRAINERS.register("distill")(Distillation)
