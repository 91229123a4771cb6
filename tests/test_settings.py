"""Every setting takes effect or is refused (issue 21): each trainer declares the keys of the
``trainer`` section it reads; a value other than the default anywhere else is a config error
naming the key and the trainer, and a key it reads changes what a run computes."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from orchestrator.config import load_config
from orchestrator.errors import ConfigError
from trainers import TRAINERS
from trainers.config import TrainerConfig

from .golden import CASES, CONFIGS

# One leaf of every key of the trainer section set to a value other than its default (and
# valid wherever the key is read); setting ``trainer.attack`` takes two leaves to act.
CHANGED: dict[str, list[str]] = {
    "rounds": ["trainer.rounds=1"],
    "fraction": ["trainer.fraction=0.3"],
    "parties_per_round": ["trainer.fraction=1.0", "trainer.parties_per_round=2"],
    "local_epochs": ["trainer.local_epochs=3"],
    "batch_size": ["trainer.batch_size=7"],
    "optimizer": ["trainer.optimizer=adam"],
    "lr": ["trainer.lr=0.011"],
    "momentum": ["trainer.optimizer=sgd", "trainer.momentum=0.5"],
    "weight_decay": ["trainer.weight_decay=0.05"],
    "fedprox": ["trainer.fedprox.mu=5.0"],
    "aggregator": ["trainer.aggregator.name=median"],
    "attack": ["trainer.attack.name=gaussian", "trainer.attack.fraction=0.3"],
    "dropout": ["trainer.dropout=0.4"],
    "stragglers": ["trainer.stragglers.deadline=0.5"],
    "cmfl": ["trainer.cmfl.committee_rate=0.3"],
    "decentralized": ["trainer.decentralized.l1=0.01"],
    "distill": ["trainer.distill.temperature=1.5"],
    "vfl": ["trainer.vfl.embed_dim=5"],
    "ssl": ["trainer.ssl.hidden=24"],
    "server": ["trainer.server.optimizer=momentum"],
    "privacy": ["trainer.privacy.mode=central", "trainer.privacy.noise=0.5"],
    "fednova": ["trainer.fednova.epochs=[1,3]"],
    "graph": ["trainer.graph.fanout=[3,4]"],
    "fedego": ["trainer.fedego.lamb_c=0.25"],
    "gfl": ["trainer.gfl.steps=2"],
    "condense": ["trainer.condense.ipc=3"],
    "backdoor": ["trainer.backdoor.name=naive", "trainer.backdoor.portion=0.05"],
}

# Every trainer on a shipped config at its smoke budget (the golden cases'); a trainer
# without a case of its own borrows its family's and swaps the name.
BASES: dict[str, tuple[str, list[str]]] = {
    "fedavg": ("quickstart", []),
    "fedprox": ("fedprox_digits_shards", []),
    "centralized": ("centralized_breast_cancer", []),
    "cmfl": ("cmfl_digits", []),
    "dpsvrg": ("decentralized_breast_cancer", []),
    "dspg": ("decentralized_breast_cancer", ["trainer.name=dspg"]),
    "dsgd": ("decentralized_breast_cancer", ["trainer.name=dsgd"]),
    "vlr": ("vfl_breast_cancer", []),
    "vhnn": ("vfl_breast_cancer", ["trainer.name=vhnn"]),
    "vsnn": ("vfl_breast_cancer", ["trainer.name=vsnn"]),
    "fedhssl": ("fedhssl_digits", []),
    "fedgssl": ("fedhssl_digits", ["trainer.name=fedgssl"]),
    "fedcssl": ("fedhssl_digits", ["trainer.name=fedcssl"]),
    "vfl_supervised": ("fedhssl_digits", ["trainer.name=vfl_supervised"]),
    "distill": ("distill_digits", []),
    "fednova": ("hfl_fednova", []),
    "scaffold": ("hfl_scaffold", []),
    "fedego": ("fedego_sbm", []),
    "gfl": ("gfl_sbm", []),
    "graph_local": ("graph_local_louvain", []),
    "graph_fedavg": ("fedego_sbm", ["trainer.name=graph_fedavg"]),
    "graph_fedprox": ("graph_fedprox_gcn", []),
    "graph_centralized": ("graph_centralized_random", []),
    "condense": ("condense_digits", []),
    "fed_condense": ("fed_condense_digits", []),
}

# Where a trainer's base already has the value above, or the leaf acts only with another
# setting, the leaf that shows the key's effect on that trainer.
EFFECT: dict[tuple[str, str], list[str]] = {
    ("vhnn", "optimizer"): ["trainer.optimizer=sgd"],
    ("fedhssl", "vfl"): ["trainer.vfl.attack.mc_epochs=3"],  # embed_dim is vhnn's
    ("distill", "distill"): ["trainer.distill.epochs=1"],  # temperature is target=logits'
    ("fedego", "optimizer"): ["trainer.optimizer=sgd"],  # the shipped config's is adam
    ("gfl", "optimizer"): ["trainer.optimizer=sgd"],
    # fed_condense's Byzantine parties mount the backdoor only: its base sets it, at 0.2
    ("fed_condense", "attack"): ["trainer.attack.fraction=0.4"],
}

# Where the leaf above is refused by a trainer that reads the key, one that it takes.
TAKEN: dict[tuple[str, str], list[str]] = {
    ("fed_condense", "attack"): EFFECT[("fed_condense", "attack")],
}

KEYS = [f.name for f in dataclasses.fields(TrainerConfig) if f.name != "name"]


def _overrides(trainer: str, extra: list[str] = ()) -> tuple[str, list[str]]:
    case, swap = BASES[trainer]
    config, budget = CASES[case]
    return str(CONFIGS / config), [*budget, *swap, "tracking.enabled=false", *extra]


def test_every_trainer_and_every_key_is_covered():
    assert set(BASES) == set(TRAINERS.names())
    assert set(CHANGED) == set(KEYS)
    for name in TRAINERS.names():
        assert TRAINERS.get(name).reads <= set(KEYS), name


@pytest.mark.parametrize("trainer", sorted(BASES))
def test_a_key_the_trainer_does_not_read_is_refused_and_one_it_reads_is_taken(trainer):
    cls = TRAINERS.get(trainer)
    for key in KEYS:
        config, overrides = _overrides(trainer, CHANGED[key])
        if key in cls.reads:
            config, overrides = _overrides(trainer, TAKEN.get((trainer, key), CHANGED[key]))
            cfg = load_config(config, overrides)  # accepted
            section = getattr(cfg.trainer, key)
            assert section != getattr(TrainerConfig(), key), key
        else:
            with pytest.raises(ConfigError) as info:
                load_config(config, overrides)
            leaves = [o.split("=")[0] for o in CHANGED[key]]
            assert info.value.key in leaves, (trainer, key, str(info.value))
            assert re.match(rf"{trainer} does not use trainer\.{key} \(.+\)$", info.value.problem)


def test_the_issue_s_case_reads_as_one_line():
    config, overrides = _overrides("cmfl", ["trainer.aggregator.name=krum"])
    with pytest.raises(ConfigError) as info:
        load_config(config, overrides)
    assert str(info.value) == (
        "config error: trainer.aggregator.name: cmfl does not use trainer.aggregator "
        "(its committee selects the updates)"
    )


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["trainer.optimizer=adam", "trainer.momentum=0.9"], "trainer.momentum"),
        (["trainer.parties_per_round=3", "trainer.fraction=0.5"], "trainer.fraction"),
    ],
)
def test_a_setting_another_makes_moot_is_refused(overrides, key):
    config, base = _overrides("fedavg", overrides)
    with pytest.raises(ConfigError) as info:
        load_config(config, base)
    assert info.value.key == key and "ignored" in info.value.problem


def _final(trainer: str, extra: list[str]) -> dict[str, float]:
    from orchestrator.runner import run

    config, overrides = _overrides(trainer, extra)
    result = run(config, [*overrides, "runtime.executor=local"])
    return {
        k: v
        for k, v in result.metrics.items()
        if not re.search(r"(_s|_ms)$", k) and not (isinstance(v, float) and math.isnan(v))
    }


# One trainer of each family: every key it reads changes the run's final metrics.
FAMILIES = [
    "fedavg",
    "fedprox",
    "centralized",
    "cmfl",
    "dpsvrg",
    "vhnn",
    "fedhssl",
    "distill",
    "fedego",
    "gfl",
    "condense",
    "fed_condense",
]


@pytest.mark.slow
@pytest.mark.parametrize("trainer", FAMILIES)
def test_every_key_a_trainer_reads_changes_its_run(trainer, workdir):
    reference = _final(trainer, [])
    unchanged = [
        key
        for key in sorted(TRAINERS.get(trainer).reads)
        if _final(trainer, EFFECT.get((trainer, key), CHANGED[key])) == reference
    ]
    assert not unchanged, f"{trainer}: accepted and without effect: {unchanged}"


@pytest.mark.parametrize("trainer", sorted(BASES))
def test_a_trainer_that_runs_on_the_cpu_only_refuses_cuda(trainer):
    config, overrides = _overrides(trainer, ["runtime.device=cuda"])
    if "cuda" in TRAINERS.get(trainer).devices:
        assert str(load_config(config, overrides).runtime.device) == "cuda"
        return
    with pytest.raises(ConfigError) as info:
        load_config(config, overrides)
    assert info.value.key == "runtime.device"
    assert info.value.problem.startswith(f"{trainer} runs on the CPU only (cuda: ")
