"""The dataset-distillation trainers: ``condense`` (one distiller over the pooled training
data) and ``fed_condense`` (every party distils its own data and uploads only the synthetic
set; the server trains the global model on their union).

``condense`` reports every ``eval_every`` iterations (one fresh network trained on the
synthetic set so far) and, at the end, ``eval_models`` networks on the final set against the
same networks on all the real data and on a random real subset of the same size.

``fed_condense`` is one-shot: round 1 is the parties' distillation (on the executor) and the
server's training. Its Byzantine parties (``trainer.attack.name=backdoor``, the share
``trainer.attack.fraction``) distil through ``trainer.backdoor`` (NaiveAttack or DoorPing).
With ``condense.defense=loss_filter`` the server first drops, from each upload, the samples
whose loss under a network trained on the other parties' uploads exceeds ``filter_loss``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clusters import Executor, PartyContext
from trainers.attacks import byzantine_parties
from trainers.base import (
    TRAINERS,
    Budget,
    FederatedData,
    Federation,
    Invalid,
    PartyData,
    Reporter,
    RunState,
    Trainer,
    TrainResult,
    derive_seed,
)
from trainers.condense.backdoor import Poisoned, Trigger, attack_success_rate, attacking
from trainers.condense.distil import (
    Distiller,
    SyntheticSet,
    score,
    spread,
    synthetic_bytes,
    train_fresh,
)
from trainers.config import BackdoorName, CondenseConfig, CondenseDefense, TrainerConfig
from trainers.models import ModelConfig, ModelSpec, build_model, forward_layers

__all__ = ["Condense", "FedCondense", "synthetic_rows"]

_EVAL_STREAM = 55
_RANDOM_STREAM = 56
_FULL_STREAM = 57
_SERVER_STREAM = 58
_FILTER_STREAM = 59
_FINAL_STREAM = 60
_BACKDOOR_MODELS = ("mlp", "cnn", "convnet")


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return (  # copies: party data may be read-only (the object store's)
        torch.from_numpy(np.array(x, dtype=np.float32)),
        torch.from_numpy(np.array(y, dtype=np.int64)),
    )


def _trained(
    spec: ModelSpec, cfg: CondenseConfig, x: torch.Tensor, y: torch.Tensor, seed: int
) -> nn.Module:
    """A fresh network trained on (x, y) as every judge here is (eval_epochs at eval_lr)."""
    return train_fresh(spec, x, y, seed, cfg.eval_epochs, cfg.eval_lr)


def synthetic_rows(x: np.ndarray, y: np.ndarray, party: int = -1) -> list[dict]:
    """A synthetic set as table rows (label, position in its class, pixels; the party that
    made it, -1 for a central distillation)."""
    rows, seen = [], {}  # type: list[dict], dict[int, int]
    for img, label in zip(x, y.tolist()):
        seen[label] = seen.get(label, -1) + 1
        rows.append({"party": party, "label": label, "index": seen[label], "pixels": img.tolist()})
    return rows


def _check_backdoor(config: TrainerConfig, model: ModelConfig, n_classes: int | None) -> None:
    b = config.backdoor
    if b.name == BackdoorName.doorping and model.name not in _BACKDOOR_MODELS:
        raise Invalid(
            "trainer.backdoor.name",
            f"doorping reads a hidden layer of {', '.join(_BACKDOOR_MODELS)}, not {model.name}",
        )
    if n_classes is not None and b.target >= n_classes:
        raise Invalid("trainer.backdoor.target", f"must be a class below {n_classes}")


def _check_data(config: TrainerConfig, model: ModelConfig, data: FederatedData) -> None:
    """What a backdoor needs of the loaded data: the target among its classes, square images,
    and DoorPing's layer among the model's hidden representations."""
    _check_backdoor(config, model, data.n_classes)
    if attacking(config.backdoor):
        _check_images(config, data.n_features)
        _check_layer(config, model, data)


def _check_layer(config: TrainerConfig, model: ModelConfig, data: FederatedData) -> None:
    """DoorPing's layer must be one of the model's hidden representations."""
    if config.backdoor.name != BackdoorName.doorping:
        return
    spec = ModelSpec.from_config(model, data.n_features, data.n_classes, data.image)
    with torch.no_grad():
        _, feats, _ = forward_layers(build_model(spec, 0), torch.zeros(1, data.n_features))
    n, layer = len(feats), config.backdoor.layer
    if not -n <= layer < n:
        raise Invalid(
            "trainer.backdoor.layer",
            f"{model.name} has {n} hidden representation{'s' * (n != 1)}: "
            f"a layer from {-n} to {n - 1}, not {layer}",
        )


def _check_images(config: TrainerConfig, n_features: int) -> None:
    side = int(round(n_features**0.5))
    if side * side != n_features:
        raise Invalid(
            "trainer.backdoor.name",
            f"a trigger goes in the corner of square images; the data has {n_features} features",
        )
    if config.backdoor.size > side:
        raise Invalid(
            "trainer.backdoor.size", f"{config.backdoor.size} pixels exceed the images' side {side}"
        )


@dataclass
class CondenseState(RunState):
    """A distillation between reports: the synthetic set (with its momentum and trigger)."""

    syn: SyntheticSet | None = None
    seconds: float = 0.0
    """Distillation time so far."""


class Condense(Trainer[FederatedData, CondenseState]):
    """Distils the pooled training data into ``ipc`` images per class (gm or dm), optionally
    through a backdoor, and judges the result.

    Args:
        config: ``condense`` (the method and its schedule) and ``backdoor``.
        model: the network the synthetic set is matched on and judged with.
    """

    reads = frozenset({"condense", "backdoor"})
    unused = {
        key: "its schedule is trainer.condense (iterations, lr_img, eval_epochs, eval_lr)"
        for key in ("rounds", "local_epochs", "batch_size", "lr")
    }
    metrics = (
        "iteration",
        "match_loss",
        "test_accuracy",
        "test_accuracy_std",
        "asr",
        "asr_std",
        "trigger_loss",
        "random_accuracy",
        "random_accuracy_std",
        "full_accuracy",
        "full_accuracy_std",
        "synthetic_bytes",
        "accuracy_per_kb",
        "distil_time_s",
    )
    """test_accuracy is the clean test accuracy (CTA) of fresh networks trained on the
    synthetic set; asr their attack success rate (with a backdoor); random_ and full_accuracy
    the same networks on a random real subset of the synthetic set's size and on all the real
    data (the last report only)."""
    headline = ("test_accuracy", "asr", "random_accuracy", "full_accuracy")

    @classmethod
    def validate(cls, config: TrainerConfig, model: ModelConfig, federation: Federation) -> None:
        _check_backdoor(config, model, None)
        if config.condense.defense != CondenseDefense.none:
            raise Invalid(
                "trainer.condense.defense", "filters uploads: set trainer.name=fed_condense"
            )

    def check(self, data: FederatedData) -> None:
        super().check(data)
        _check_data(self.config, self.model_config, data)

    def plots(self) -> tuple[str, ...]:
        trigger = ("trigger",) if attacking(self.config.backdoor) else ()
        return ("condensation", "synthetic", *trigger)

    def budget(self) -> Budget:
        return Budget(
            self.config.condense.iterations,
            "iteration",
            counter="iteration",
            shown=(("cta", "test_accuracy", ".4f"), ("match", "match_loss", ".3g")),
        )

    def sample_steps(self, n_train: int) -> float:
        """None of its work is the executor's (one distiller, here): never worth Ray's start."""
        return 0.0

    def begin(self, data: FederatedData, executor: Executor, seed: int) -> CondenseState:
        pooled = data.pooled()
        x, y = _tensors(pooled.x, pooled.y)
        self._x, self._y = x, y
        self._x_test, self._y_test = _tensors(data.x_test, data.y_test)
        self._spec = ModelSpec.from_config(
            self.model_config, data.n_features, data.n_classes, data.image
        )
        self._seed = seed
        backdoor = self.config.backdoor if attacking(self.config.backdoor) else None
        self._distiller = Distiller(
            self.config.condense, self._spec, x, y, data.n_classes, seed, backdoor
        )
        return CondenseState(syn=self._distiller.start())

    def done(self, state: CondenseState) -> bool:
        assert state.syn is not None
        return state.syn.iteration >= self.config.condense.iterations

    def advance(self, state: CondenseState, executor: Executor) -> tuple[int, dict[str, float]]:
        c, syn = self.config.condense, state.syn
        assert syn is not None
        self._distiller.restore(syn)
        started = time.perf_counter()
        self._distiller.run(syn, min(c.eval_every, c.iterations - syn.iteration))
        state.seconds += time.perf_counter() - started
        final = syn.iteration >= c.iterations
        metrics = {
            "iteration": float(syn.iteration),
            "match_loss": float(np.mean(syn.losses)),
            "distil_time_s": state.seconds,
        }
        if syn.trigger_losses:
            metrics["trigger_loss"] = float(np.mean(syn.trigger_losses))
        syn.losses, syn.trigger_losses = [], []
        seeds = [
            derive_seed(self._seed, _EVAL_STREAM, syn.iteration, m)
            for m in range(c.eval_models if final else 1)
        ]
        accs, asrs = self._distiller.evaluate(syn, self._x_test, self._y_test, seeds)
        metrics["test_accuracy"], metrics["test_accuracy_std"] = spread(accs)
        if self._distiller.poisoned is not None:
            metrics["asr"], metrics["asr_std"] = spread(asrs)
        if final:
            metrics.update(self._baselines(syn))
            metrics["accuracy_per_kb"] = metrics["test_accuracy"] / (
                metrics["synthetic_bytes"] / 1024
            )
        return syn.iteration, metrics

    def _baselines(self, syn: SyntheticSet) -> dict[str, float]:
        """The same networks on a random real subset of the synthetic set's size (ipc per
        class, clean data) and on all the clean real data; the synthetic set's bytes."""
        c, x, y = self.config.condense, self._x, self._y
        n_classes = self._spec.n_classes
        rand, full = [], []
        for m in range(c.eval_models):
            rng = np.random.default_rng(derive_seed(self._seed, _RANDOM_STREAM, m))
            rows = np.concatenate(
                [
                    rng.choice(
                        np.flatnonzero(y.numpy() == k),
                        size=c.ipc,
                        replace=int((y == k).sum()) < c.ipc,
                    )
                    for k in range(n_classes)
                    if bool((y == k).any())
                ]
            )
            pick = torch.from_numpy(rows)
            net = _trained(
                self._spec, c, x[pick], y[pick], derive_seed(self._seed, _RANDOM_STREAM, m, 1)
            )
            rand.append(score(net, self._x_test, self._y_test, None)[0])
            net = _trained(self._spec, c, x, y, derive_seed(self._seed, _FULL_STREAM, m))
            full.append(score(net, self._x_test, self._y_test, None)[0])
        size = synthetic_bytes(len(syn.y), syn.x.shape[1])
        out = {"synthetic_bytes": float(size)}
        out["random_accuracy"], out["random_accuracy_std"] = spread(rand)
        out["full_accuracy"], out["full_accuracy_std"] = spread(full)
        return out

    def end(self, state: CondenseState, executor: Executor, reporter: Reporter) -> TrainResult:
        syn = state.syn
        assert syn is not None
        history = state.history
        net = _trained(
            self._spec, self.config.condense, syn.x, syn.y, derive_seed(self._seed, _FINAL_STREAM)
        )
        tables = {"synthetic": synthetic_rows(syn.x.numpy(), syn.y.numpy())}
        poisoned = self._distiller.poisoned
        if poisoned is not None:
            tables["trigger"] = [_trigger_row(poisoned, syn.x.shape[1])]
        return TrainResult(net, history, tables)


def _trigger_row(poisoned: Poisoned, n_features: int) -> dict:
    t = poisoned.trigger
    return {
        "target": t.target,
        "poisoned": len(poisoned.rows),
        "pixels": t.image(n_features).tolist(),
    }


@dataclass(frozen=True)
class _Distil:
    """The party function of fed_condense: distil the party's data (through the backdoor for
    the Byzantine parties) and return the synthetic set."""

    trainer_cfg: TrainerConfig
    spec: ModelSpec
    seed: int
    byzantine: frozenset[int]

    def __call__(self, ctx: PartyContext, payload: Any) -> dict[str, Any]:
        data: PartyData = ctx.data
        x, y = _tensors(data.x, data.y)
        cfg = self.trainer_cfg
        bad = ctx.party_id in self.byzantine
        distiller = Distiller(
            cfg.condense,
            self.spec,
            x,
            y,
            self.spec.n_classes,
            derive_seed(self.seed, ctx.party_id),
            cfg.backdoor if bad else None,
        )
        syn = distiller.start()
        distiller.run(syn, cfg.condense.iterations)
        present = torch.tensor([bool((y == k).any()) for k in syn.y.tolist()])
        trigger = distiller.poisoned.trigger if distiller.poisoned is not None else None
        return {
            "party": ctx.party_id,
            "x": syn.x[present].numpy(),
            "y": syn.y[present].numpy(),
            "byzantine": bad,
            "trigger": None if trigger is None else trigger.pattern.numpy(),
        }


@dataclass
class FedCondenseState(RunState):
    uploads: list[dict[str, Any]] = field(default_factory=list)


class FedCondense(Trainer[FederatedData, FedCondenseState]):
    """One-shot federated learning by dataset distillation, with Byzantine distillers.

    Args:
        config: ``condense`` (each party's distillation, the evaluation and the defense),
            ``backdoor`` and ``attack`` (``name: backdoor``, ``fraction``).
        model: the network distilled on and trained by the server.
    """

    reads = frozenset({"condense", "backdoor", "attack"})
    unused = {
        key: "one-shot: each party distils trainer.condense.iterations; the server trains "
        "trainer.condense.eval_epochs"
        for key in ("rounds", "local_epochs", "batch_size", "lr")
    }
    metrics = (
        "test_accuracy",
        "test_accuracy_std",
        "asr",
        "asr_std",
        "bytes_communicated",
        "bytes_cumulative",
        "synthetic_samples",
        "filtered_samples",
        "filtered_poisoned_share",
        "byzantine_parties",
        "round_time_s",
    )
    """The global model's clean accuracy and ASR (mean and spread over eval_models server
    networks); the uploads' bytes; what the defense dropped: the samples, and the share of the
    Byzantine parties' samples among them."""
    headline = ("test_accuracy", "asr", "bytes_communicated")

    @classmethod
    def validate(cls, config: TrainerConfig, model: ModelConfig, federation: Federation) -> None:
        _check_backdoor(config, model, None)
        attack = config.attack
        if attack.name not in ("none", "backdoor"):
            raise Invalid(
                "trainer.attack.name",
                f"fed_condense's Byzantine parties distil through trainer.backdoor: set "
                f"attack.name=backdoor, not {attack.name}",
            )
        if attack.name == "backdoor" and config.backdoor.name == BackdoorName.none:
            raise Invalid("trainer.backdoor.name", "attack.name=backdoor needs naive or doorping")
        if attack.name == "none" and config.backdoor.name != BackdoorName.none:
            raise Invalid(
                "trainer.attack.name",
                "the backdoor is planted by Byzantine parties: set attack.name=backdoor and "
                "attack.fraction",
            )

    def check(self, data: FederatedData) -> None:
        super().check(data)
        _check_data(self.config, self.model_config, data)

    def plots(self) -> tuple[str, ...]:
        trigger = ("trigger",) if self.config.attack.name == "backdoor" else ()
        return ("synthetic", *trigger)

    def budget(self) -> Budget:
        return Budget(1, "round")

    def sample_steps(self, n_train: int) -> float:
        c = self.config.condense
        outer, _ = c.loops()
        return c.iterations * min(n_train, c.batch_real * 10) * outer * 10

    def begin(self, data: FederatedData, executor: Executor, seed: int) -> FedCondenseState:
        self._data, self._seed = data, seed
        self._spec = ModelSpec.from_config(
            self.model_config, data.n_features, data.n_classes, data.image
        )
        ids = sorted(data.parties)
        self._ids = ids
        self._byzantine = byzantine_parties(ids, self.config.attack, seed)
        self._x_test, self._y_test = _tensors(data.x_test, data.y_test)
        # the trigger every Byzantine party starts from (the same corner, the same target):
        # ASR is measured with it, or with a party's own DoorPing trigger when optimised
        self._trigger = None
        if self._byzantine:
            x_all = torch.from_numpy(np.array(data.pooled().x, dtype=np.float32))
            self._trigger = Trigger.corner(x_all, self.config.backdoor)
        executor.load(data.parties)
        self._model: nn.Module | None = None
        return FedCondenseState()

    def done(self, state: FedCondenseState) -> bool:
        return state.round >= 1

    def advance(self, state: FedCondenseState, executor: Executor) -> tuple[int, dict[str, float]]:
        started = time.perf_counter()
        fn = _Distil(self.config, self._spec, self._seed, self._byzantine)
        uploads = sorted(executor.map(fn, self._ids), key=lambda u: u["party"])
        state.uploads = uploads
        c = self.config.condense
        sent = sum(synthetic_bytes(len(u["y"]), u["x"].shape[1]) for u in uploads)
        kept, dropped_bad, dropped = self._defend(uploads)
        x = torch.from_numpy(np.concatenate([u["x"][k] for u, k in zip(uploads, kept)]))
        y = torch.from_numpy(np.concatenate([u["y"][k] for u, k in zip(uploads, kept)]))
        triggers = self._triggers(uploads)
        accs, asrs = [], []
        self._model = None
        for m in range(c.eval_models):
            net = _trained(self._spec, c, x, y, derive_seed(self._seed, _SERVER_STREAM, m))
            accs.append(score(net, self._x_test, self._y_test, None)[0])
            if triggers:
                asrs.append(
                    max(attack_success_rate(net, self._x_test, self._y_test, t) for t in triggers)
                )
            if self._model is None:  # the first server network is the global model
                self._model = net
        metrics = {
            "bytes_communicated": float(sent),
            "bytes_cumulative": float(sent),
            "synthetic_samples": float(len(y)),
            "filtered_samples": float(dropped),
            "filtered_poisoned_share": dropped_bad / dropped if dropped else math.nan,
            "byzantine_parties": float(len(self._byzantine)),
            "round_time_s": time.perf_counter() - started,
        }
        metrics["test_accuracy"], metrics["test_accuracy_std"] = spread(accs)
        if asrs:
            metrics["asr"], metrics["asr_std"] = spread(asrs)
        return 1, metrics

    def _triggers(self, uploads: list[dict[str, Any]]) -> list[Trigger]:
        """The triggers ASR is measured with: the common starting trigger (NaiveAttack's
        for every Byzantine party) and each DoorPing party's own; the ASR reported is the
        best of them, the attacker's view."""
        if self._trigger is None:
            return []
        out = [self._trigger]
        if self.config.backdoor.name == BackdoorName.doorping:
            for u in uploads:
                if u["trigger"] is not None:
                    t = self._trigger
                    out.append(
                        Trigger(
                            t.index,
                            torch.from_numpy(u["trigger"]),
                            t.target,
                            t.blank,
                        )
                    )
        return out

    def _defend(self, uploads: list[dict[str, Any]]) -> tuple[list[np.ndarray], int, int]:
        """Which samples of each upload the server keeps; how many it dropped, and how many
        of those came from Byzantine parties. loss_filter: a network trained on the other
        parties' uploads scores each sample; a loss above the threshold is dropped."""
        keep_all = [np.ones(len(u["y"]), dtype=bool) for u in uploads]
        c = self.config.condense
        if c.defense == CondenseDefense.none or len(uploads) < 2:
            return keep_all, 0, 0
        threshold = c.filter_loss or math.log(self._spec.n_classes)
        kept, dropped, dropped_bad = [], 0, 0
        for i, u in enumerate(uploads):
            others = [v for j, v in enumerate(uploads) if j != i]
            x_o, y_o = _tensors(
                np.concatenate([v["x"] for v in others]), np.concatenate([v["y"] for v in others])
            )
            judge = _trained(
                self._spec, c, x_o, y_o, derive_seed(self._seed, _FILTER_STREAM, u["party"])
            )
            with torch.no_grad():
                xs, ys = _tensors(u["x"], u["y"])
                losses = F.cross_entropy(judge(xs), ys, reduction="none").numpy()
            keep = losses <= threshold
            kept.append(keep)
            gone = int((~keep).sum())
            dropped += gone
            dropped_bad += gone if u["byzantine"] else 0
        return kept, dropped_bad, dropped

    def end(self, state: FedCondenseState, executor: Executor, reporter: Reporter) -> TrainResult:
        rows = [row for u in state.uploads for row in synthetic_rows(u["x"], u["y"], u["party"])]
        uploads = [
            {
                "party": u["party"],
                "byzantine": u["byzantine"],
                "samples": len(u["y"]),
                "bytes": synthetic_bytes(len(u["y"]), u["x"].shape[1]),
            }
            for u in state.uploads
        ]
        tables: dict[str, list[dict]] = {"synthetic": rows, "uploads": uploads}
        if self._trigger is not None:
            t = self._trigger
            tables["trigger"] = [
                {
                    "target": t.target,
                    "poisoned": -1,
                    "pixels": t.image(self._spec.n_features).tolist(),
                }
            ]
        assert self._model is not None, "fed_condense ends after its round"
        return TrainResult(self._model, state.history, tables)


TRAINERS.register("condense")(Condense)
TRAINERS.register("fed_condense")(FedCondense)
