"""Parties that drop out, answer too late or send garbage: every horizontal, committee and
decentralized trainer survives them, counts them, and stays reproducible."""

from __future__ import annotations

import numpy as np
import pytest

import orchestrator
from orchestrator import ConfigError
from trainers.availability import Availability
from trainers.config import TrainerConfig
from trainers.topology import GraphSpec, Topology, without

from .conftest import CONFIGS, tiny


def _availability(**cfg) -> Availability:
    from omegaconf import OmegaConf

    trainer = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg))
    return Availability(trainer, {p: 10 * (1 + p % 2) for p in range(1000)}, seed=0)


def test_dropouts_and_stragglers_are_drawn_from_the_seed_at_their_rates():
    a = _availability(dropout=0.3)
    asked = list(range(1000))
    first = a.answers(5, asked)
    assert first == a.answers(5, asked)  # the same round: the same parties
    assert first != a.answers(6, asked)
    assert 250 < first.dropped < 350 and first.straggled == 0
    assert len(first.answered) == 1000 - first.dropped
    late = _availability(stragglers={"deadline": 1.0, "mean": 1.0, "spread": 0.0}).answers(0, asked)
    # no spread: a party of average size (15 samples) takes 1.0; those with 20 are late
    assert late.dropped == 0 and late.straggled == 500
    assert all(p % 2 == 0 for p in late.answered)
    assert _availability().answers(3, asked).answered == asked  # off: everyone, no draw


def test_nodes_that_sit_out_keep_their_model_and_the_rest_mix_without_them():
    topo = Topology(GraphSpec.of(TrainerConfig().decentralized), 8, seed=0)
    w = without(topo.matrix(0), [2, 5])
    assert np.allclose(w, w.T) and np.allclose(w.sum(axis=0), 1) and np.allclose(w.sum(axis=1), 1)
    assert w[2, 2] == 1 and w[5, 5] == 1 and w[2].sum() == 1 and w[:, 2].sum() == 1
    assert (w >= 0).all()


def _run(cfg: dict, executor: str = "local"):
    return orchestrator.run(orchestrator.load_config(tiny(**cfg), [f"runtime.executor={executor}"]))


_CASES = {
    "fedavg": {"trainer__dropout": 0.3, "trainer__stragglers__deadline": 1.2},
    "fedavg_krum": {
        "trainer__dropout": 0.5,
        "trainer__aggregator__name": "krum",
        "partition__num_parties": 10,
        "trainer__attack__fraction": 0.1,
        "trainer__attack__name": "sign_flip",
    },
    "cmfl": {
        "trainer__name": "cmfl",
        "trainer__dropout": 0.4,
        "trainer__stragglers__deadline": 1.5,
        "partition__num_parties": 20,
        "trainer__cmfl__active_rate": 0.5,
    },
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_federated_trainers_survive_dropouts_and_count_them(case):
    result = _run({"trainer__rounds": 8, **_CASES[case]})
    rows = result.history
    assert len(rows) == 8
    assert sum(r["dropped"] for r in rows) > 0
    assert all(np.isfinite(r["test_accuracy"]) for r in rows)
    if "stragglers" in str(_CASES[case]):
        assert sum(r["straggled"] for r in rows) > 0
    assert result.metrics["test_accuracy"] > 0.2  # it still learns


@pytest.mark.ray
def test_dropouts_are_the_same_in_process_and_on_ray(ray_session):
    from .golden import comparable

    cfg = {"trainer__rounds": 4, **_CASES["cmfl"]}
    assert comparable(_run(cfg).history) == comparable(_run(cfg, "ray").history)


@pytest.mark.parametrize("name", ["dspg", "dpsvrg", "dsgd"])
def test_decentralized_nodes_that_drop_out_skip_their_step(name):
    cfg = orchestrator.load_config(
        CONFIGS / "decentralized_breast_cancer.yaml",
        [
            f"trainer.name={name}",
            "trainer.decentralized.epochs=3",
            "trainer.dropout=0.3",
            "trainer.stragglers.deadline=1.5",
            "tracking.enabled=false",
        ],
    )
    rows = orchestrator.run(cfg).history
    assert sum(r["dropped"] for r in rows) > 0 and sum(r["straggled"] for r in rows) > 0
    assert all(np.isfinite(r["objective"]) for r in rows)
    assert rows[-1]["suboptimality"] < rows[0]["suboptimality"]


@pytest.mark.parametrize("aggregator", ["mean", "median"])
def test_an_upload_that_is_not_finite_is_discarded_and_counted(aggregator, monkeypatch):
    from trainers import local

    real = local.LocalTraining.__call__

    def diverging(self, ctx, payload):  # party 0's training blows up every round
        update = real(self, ctx, payload)
        return (
            local.PartyUpdate.garbage(0, update.weighted_sum.size) if ctx.party_id == 0 else update
        )

    monkeypatch.setattr(local.LocalTraining, "__call__", diverging)
    result = _run({"trainer__rounds": 3, "trainer__aggregator__name": aggregator})
    assert [r["discarded"] for r in result.history] == [1.0, 1.0, 1.0]
    assert [r["parties"] for r in result.history] == [5.0, 5.0, 5.0]
    assert np.isfinite(result.metrics["test_loss"])


def test_a_model_that_diverges_is_discarded_not_averaged_in():
    # a learning rate that sends every party's weights to infinity: every upload is garbage,
    # the model stays where it was, and the run ends normally
    result = _run({"trainer__rounds": 2, "trainer__lr": 1e38, "model__name": "logreg"})
    assert [r["discarded"] for r in result.history] == [6.0, 6.0]
    assert np.isfinite(result.metrics["test_loss"])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["trainer.name=centralized", "trainer.dropout=0.2"], "trainer.dropout"),
        (
            ["trainer.name=centralized", "trainer.stragglers.deadline=1"],
            "trainer.stragglers.deadline",
        ),
        (["trainer.dropout=1.0"], "trainer.dropout"),
        (["trainer.stragglers.deadline=-1"], "trainer.stragglers.deadline"),
    ],
)
def test_dropout_where_it_cannot_apply_is_refused(overrides, key):
    with pytest.raises(ConfigError) as exc:
        orchestrator.load_config(tiny(), overrides)
    assert exc.value.key == key


def test_a_vertical_trainer_refuses_dropout():
    with pytest.raises(ConfigError) as exc:
        orchestrator.load_config(
            CONFIGS / "vfl_breast_cancer.yaml", ["trainer.dropout=0.1", "tracking.enabled=false"]
        )
    assert exc.value.key == "trainer.dropout"
