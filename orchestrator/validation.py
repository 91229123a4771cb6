"""Range and name checks on a typed experiment config, before anything runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.data import DATASETS, PARTITIONERS, VERTICAL
from orchestrator.errors import ConfigError
from trainers import AGGREGATORS, ATTACKS, TRAINERS
from trainers.aggregators import AggregatorError, build_aggregator
from trainers.cmfl import Roles
from trainers.decentralized import LOSSES
from trainers.models import MODELS
from trainers.topology import GRAPHS
from trainers.vertical import DEFENSES, SplitLearning
from trainers.vertical.attacks import ATTACKS as VFL_ATTACKS

if TYPE_CHECKING:
    from orchestrator.config import ExperimentConfig

__all__ = ["validate"]

OPTIMIZERS = ("adam", "sgd")
DECENTRALIZED = ("dpsvrg", "dsgd", "dspg")
EXECUTORS = ("local", "ray")


def _positive(v: Any) -> bool:
    return v > 0


def _at_least(n: int) -> Callable[[Any], bool]:
    return lambda v: v >= n


# key path -> (check, problem when the check fails); None values are skipped (optional keys).
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (_at_least(0), "must be >= 0"),
    "data.n_samples": (_at_least(10), "must be >= 10"),
    "data.n_features": (_at_least(1), "must be >= 1"),
    "data.n_informative": (_at_least(1), "must be >= 1"),
    "data.n_redundant": (_at_least(0), "must be >= 0"),
    "data.n_classes": (_at_least(2), "must be >= 2"),
    "data.test_fraction": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "data.image_side": (_at_least(4), "must be >= 4"),
    "data.image_noise": (_at_least(0), "must be >= 0"),
    "partition.num_parties": (_at_least(1), "must be >= 1"),
    "partition.alpha": (_positive, "must be > 0"),
    "partition.labels_per_party": (_at_least(1), "must be >= 1"),
    "partition.min_samples": (_at_least(1), "must be >= 1"),
    "trainer.rounds": (_at_least(1), "must be >= 1"),
    "trainer.fraction": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "trainer.parties_per_round": (_at_least(1), "must be >= 1"),
    "trainer.local_epochs": (_at_least(1), "must be >= 1"),
    "trainer.batch_size": (_at_least(1), "must be >= 1"),
    "trainer.lr": (_positive, "must be > 0"),
    "trainer.momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "trainer.weight_decay": (_at_least(0), "must be >= 0"),
    "trainer.fedprox.mu": (_at_least(0), "must be >= 0"),
    "trainer.attack.fraction": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "trainer.attack.range": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "trainer.attack.sigma": (_at_least(0), "must be >= 0"),
    "trainer.attack.z": (_at_least(0), "must be >= 0"),
    "trainer.aggregator.trim": (lambda v: 0 <= v < 0.5, "must be in [0, 0.5)"),
    "trainer.aggregator.f": (_at_least(0), "must be >= 0"),
    "trainer.aggregator.m": (_at_least(1), "must be >= 1"),
    "trainer.aggregator.iters": (_at_least(1), "must be >= 1"),
    "trainer.aggregator.tol": (_positive, "must be > 0"),
    "trainer.aggregator.tau": (_positive, "must be > 0"),
    "trainer.aggregator.clip_iters": (_at_least(1), "must be >= 1"),
    "trainer.cmfl.active_rate": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "trainer.cmfl.committee_rate": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "trainer.cmfl.aggregation_rate": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "trainer.cmfl.strategy": (lambda v: v in (1, 2), "must be 1 (closest) or 2 (farthest)"),
    "trainer.decentralized.l1": (_at_least(0), "must be >= 0"),
    "trainer.decentralized.l2": (_at_least(0), "must be >= 0"),
    "trainer.decentralized.p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "trainer.decentralized.k": (_at_least(1), "must be >= 1"),
    "trainer.decentralized.q": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "trainer.decentralized.b": (_at_least(1), "must be >= 1"),
    "trainer.decentralized.batch_size": (_at_least(1), "must be >= 1"),
    "trainer.decentralized.a0": (_positive, "must be > 0"),
    "trainer.decentralized.alpha": (_positive, "must be > 0"),
    "trainer.decentralized.inner_steps": (_at_least(1), "must be >= 1"),
    "trainer.decentralized.gossip_rounds": (_at_least(1), "must be >= 1"),
    "trainer.decentralized.gossip_growth": (_at_least(0), "must be >= 0"),
    "trainer.decentralized.epochs": (_positive, "must be > 0"),
    "trainer.decentralized.max_steps": (_at_least(1), "must be >= 1"),
    "trainer.decentralized.eval_every": (_at_least(1), "must be >= 1"),
    "model.dim": (_at_least(1), "must be >= 1"),
    "model.depth": (_at_least(1), "must be >= 1"),
    "model.heads": (_at_least(1), "must be >= 1"),
    "model.patch": (_at_least(1), "must be >= 1"),
    "model.dropout": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "trainer.distill.teacher.epochs": (_at_least(0), "must be >= 0"),
    "trainer.distill.teacher.lr": (_positive, "must be > 0"),
    "trainer.distill.temperature": (_positive, "must be > 0"),
    "trainer.distill.distill_weight": (_at_least(0), "must be >= 0"),
    "trainer.distill.label_weight": (_at_least(0), "must be >= 0"),
    "trainer.distill.epochs": (_at_least(1), "must be >= 1"),
    "trainer.distill.batch_size": (_at_least(2), "must be >= 2"),
    "trainer.distill.lr": (_positive, "must be > 0"),
    "trainer.distill.weight_decay": (_at_least(0), "must be >= 0"),
    "trainer.distill.proxy_fraction": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "partition.vertical.aligned": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "trainer.vfl.embed_dim": (_at_least(1), "must be >= 1"),
    "trainer.vfl.defense.strength": (_at_least(0), "must be >= 0"),
    "trainer.vfl.defense.bound": (_positive, "must be > 0"),
    "trainer.vfl.defense.embedding_noise": (_at_least(0), "must be >= 0"),
    "trainer.vfl.attack.attacker": (_at_least(1), "must be >= 1 (a passive party)"),
    "trainer.vfl.attack.mc_samples": (_at_least(2), "must be >= 2"),
    "trainer.vfl.attack.mc_epochs": (_at_least(1), "must be >= 1"),
    "trainer.vfl.attack.mc_lr": (_positive, "must be > 0"),
    "trainer.vfl.attack.mc_batch_size": (_at_least(1), "must be >= 1"),
    "trainer.vfl.attack.mc_weight_decay": (_at_least(0), "must be >= 0"),
    "trainer.vfl.attack.mi_samples": (_at_least(2), "must be >= 2"),
    "trainer.vfl.attack.mi_steps": (_at_least(1), "must be >= 1"),
    "trainer.vfl.attack.percentile": (lambda v: 0 <= v <= 100, "must be in [0, 100]"),
    "trainer.ssl.pretrain_epochs": (_at_least(0), "must be >= 0"),
    "trainer.ssl.pretrain_lr": (_positive, "must be > 0"),
    "trainer.ssl.pretrain_batch_size": (_at_least(2), "must be >= 2"),
    "trainer.ssl.momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "trainer.ssl.weight_decay": (_at_least(0), "must be >= 0"),
    "trainer.ssl.hidden": (_at_least(1), "must be >= 1"),
    "trainer.ssl.proj_dim": (_at_least(1), "must be >= 1"),
    "trainer.ssl.pred_hidden": (_at_least(1), "must be >= 1"),
    "trainer.ssl.local_ratio": (_at_least(0), "must be >= 0"),
    "trainer.ssl.constraint_ratio": (_at_least(0), "must be >= 0"),
    "trainer.ssl.augment_fraction": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "trainer.ssl.grad_clip": (_positive, "must be > 0"),
    "trainer.ssl.labels": (_at_least(2), "must be >= 2"),
    "trainer.ssl.finetune_epochs": (_at_least(1), "must be >= 1"),
    "trainer.ssl.finetune_lr": (_positive, "must be > 0"),
    "trainer.ssl.finetune_batch_size": (_at_least(1), "must be >= 1"),
    "trainer.ssl.feature_noise": (_at_least(0), "must be >= 0"),
    "trainer.ssl.model_noise": (_at_least(0), "must be >= 0"),
    "trainer.ssl.finetune_noise": (_at_least(0), "must be >= 0"),
    "runtime.num_workers": (_at_least(1), "must be >= 1"),
    "runtime.num_cpus": (_at_least(1), "must be >= 1"),
    "tracking.flush_every": (_at_least(1), "must be >= 1"),
    "sweep.trials": (_at_least(1), "must be >= 1"),
    "sweep.parallel": (_at_least(1), "must be >= 1"),
    "sweep.max_retries": (_at_least(0), "must be >= 0"),
    "sweep.trial_actors": (_at_least(0), "must be >= 0"),
    "sweep.cpus_per_trial": (_positive, "must be > 0"),
}

_NAMES: dict[str, Callable[[], list[str]]] = {
    "data.name": DATASETS.names,
    "partition.name": lambda: [*PARTITIONERS.names(), VERTICAL],
    "partition.vertical.split": lambda: ["columns", "even", "image", "random"],
    "trainer.vfl.defense.name": DEFENSES.names,
    "trainer.ssl.freeze": lambda: ["all", "none", "passive"],
    "model.name": MODELS.names,
    "trainer.name": TRAINERS.names,
    "trainer.optimizer": lambda: list(OPTIMIZERS),
    "trainer.attack.name": ATTACKS.names,
    "trainer.attack.target": lambda: ["update", "weights"],
    "trainer.aggregator.name": AGGREGATORS.names,
    "trainer.cmfl.election": lambda: ["median", "top"],
    "trainer.decentralized.loss": lambda: list(LOSSES),
    "trainer.distill.teacher.source": lambda: ["mlflow", "train"],
    "trainer.distill.teacher.model.name": MODELS.names,
    "trainer.distill.target": lambda: ["features", "logits", "relations"],
    "trainer.distill.feature_loss": lambda: ["cosine", "mse", "smooth_l1"],
    "trainer.distill.relations": lambda: ["qk", "qk_vv", "vv"],
    "trainer.decentralized.topology": lambda: list(GRAPHS),
    "trainer.decentralized.varying": lambda: ["cycle", "edges", "none"],
    "trainer.decentralized.schedule": lambda: ["constant", "diminishing"],
    "runtime.executor": lambda: list(EXECUTORS),
    "tracking.model_format": lambda: ["checkpoint", "pickle", "pt2"],
    "sweep.trial_models": lambda: ["checkpoint", "mlflow"],
}


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: ExperimentConfig) -> None:
    """Raises ConfigError for the first out-of-range value or unknown name."""
    for key, known in _NAMES.items():
        value = _get(cfg, key)
        if value not in known():
            raise ConfigError(key, f"unknown name {value!r}; valid: {', '.join(known())}")
    for key, (check, problem) in _RULES.items():
        value = _get(cfg, key)
        if value is not None and not check(value):
            raise ConfigError(key, f"{problem}, got {value!r}")
    for i, width in enumerate(cfg.model.hidden):
        if width < 1:
            raise ConfigError(f"model.hidden[{i}]", f"must be >= 1, got {width}")
    if len(cfg.model.channels) != 2 or min(cfg.model.channels) < 1:
        raise ConfigError("model.channels", "must be two positive channel counts")
    data = cfg.data
    if data.n_informative + data.n_redundant > data.n_features:
        raise ConfigError(
            "data.n_informative", "n_informative + n_redundant must not exceed n_features"
        )
    if data.name == "parquet":
        if not data.path:
            raise ConfigError("data.path", "required when data.name is parquet")
        path = Path(data.path)
        if not path.is_file():
            raise ConfigError("data.path", f"no such file: {data.path}")
    _check_trainer(cfg)


def _check_trainer(cfg: ExperimentConfig) -> None:
    """Settings that cannot work together: an aggregator or committee for the configured
    number of parties, a network or model a decentralized trainer cannot use, a distillation
    teacher and student whose tokens do not line up."""
    t = cfg.trainer
    parties = 1 if t.name == "centralized" else cfg.partition.num_parties
    vertical = cfg.partition.name == VERTICAL
    trainer = TRAINERS.get(t.name)
    if trainer.vertical != vertical:
        if vertical:
            names = [n for n in TRAINERS.names() if TRAINERS.get(n).vertical]
            raise ConfigError(
                "trainer.name",
                f"{t.name} is not a vertical trainer; with partition.name=vertical use one of "
                f"{', '.join(names)}",
            )
        raise ConfigError(
            "partition.name", f"{t.name} is vertical: it needs partition.name=vertical"
        )
    if vertical:
        if parties < 2:
            raise ConfigError("partition.num_parties", "a vertical federation needs at least 2")
        for i, name in enumerate(t.vfl.attack.names):
            if name not in VFL_ATTACKS:
                raise ConfigError(
                    f"trainer.vfl.attack.names[{i}]",
                    f"unknown attack {name!r}; valid: {', '.join(VFL_ATTACKS)}",
                )
        if t.vfl.attack.attacker >= parties:
            raise ConfigError(
                "trainer.vfl.attack.attacker",
                f"party {t.vfl.attack.attacker} does not exist ({parties} parties, 0 active)",
            )
        for i, width in enumerate(t.vfl.top_hidden):
            if width < 1:
                raise ConfigError(f"trainer.vfl.top_hidden[{i}]", f"must be >= 1, got {width}")
        if issubclass(trainer, SplitLearning) and cfg.model.name not in ("logreg", "mlp"):
            raise ConfigError(
                "model.name", f"{t.name} builds its own bottoms; model gives only mlp hidden widths"
            )
        return
    if t.name == "distill":
        d = t.distill
        if d.teacher.source == "mlflow" and not d.teacher.uri:
            raise ConfigError("trainer.distill.teacher.uri", "required when source is mlflow")
        models = [("model", cfg.model), ("trainer.distill.teacher.model", d.teacher.model)]
        if d.assistant is not None:
            if d.assistant.name not in MODELS.names():
                raise ConfigError(
                    "trainer.distill.assistant.name",
                    f"unknown name {d.assistant.name!r}; valid: {', '.join(MODELS.names())}",
                )
            models.append(("trainer.distill.assistant", d.assistant))
        for key, model in models:
            if model.name == "vit" and model.dim % model.heads:
                raise ConfigError(f"{key}.dim", f"must be divisible by heads ({model.heads})")
        chain = [*models[1:], models[0]]  # teacher, [assistant,] student
        if d.teacher.source == "mlflow":
            chain = chain[1:]  # a loaded teacher's architecture is known only once loaded
        if d.target != "logits":
            for (_, teacher), (key, student) in zip(chain, chain[1:]):
                if teacher.name == student.name == "vit" and teacher.patch != student.patch:
                    raise ConfigError(
                        f"{key}.patch",
                        f"{d.target} between vits need as many tokens: patch {student.patch} "
                        f"against the teacher's {teacher.patch}",
                    )
        return
    if t.name in DECENTRALIZED:
        if cfg.model.name not in ("logreg", "mlp"):
            raise ConfigError(
                "model.name", f"{t.name} trains logreg or an mlp with one hidden layer"
            )
        if cfg.model.name == "mlp" and len(cfg.model.hidden) != 1:
            raise ConfigError("model.hidden", f"{t.name}'s mlp has one hidden layer: [width]")
        d = t.decentralized
        if parties < 2:
            raise ConfigError("partition.num_parties", "a network needs at least 2 nodes")
        if d.topology == "regular" and (d.k >= parties or d.k * parties % 2):
            raise ConfigError(
                "trainer.decentralized.k",
                f"no {d.k}-regular graph on {parties} nodes (need k < n and k * n even)",
            )
        return
    if t.name == "cmfl":
        try:
            Roles.of(parties, t.cmfl)
        except ValueError as exc:
            raise ConfigError("trainer.cmfl", str(exc)) from None
        return
    per_round = min(t.parties_per_round or max(1, round(t.fraction * parties)), parties)
    try:
        build_aggregator(t.aggregator, t.attack.fraction).check(per_round)
    except AggregatorError as exc:
        raise ConfigError("trainer.aggregator", f"{exc} (uploads per round: {per_round})") from None
