"""Search-space parsing and its errors, checked with Optuna's FixedTrial."""

from __future__ import annotations

import pytest
from optuna.trial import FixedTrial

from orchestrator import load_config
from orchestrator.sweeps import check_space
from search_spaces import SHIPPED, SpaceError, load_space, parse_space

from .conftest import CONFIGS, tiny

BASE = {"objective": [{"metric": "test_accuracy"}]}


def space(**params):
    return parse_space({**BASE, "params": params})


def test_distributions_and_conditionals_with_fixed_trial():
    s = space(
        **{
            "trainer.optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
            "trainer.momentum": {
                "type": "float",
                "low": 0.0,
                "high": 0.9,
                "when": {"trainer.optimizer": "sgd"},
            },
            "trainer.local_epochs": {"type": "int", "low": 1, "high": 4, "step": 1},
            "trainer.lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
        }
    )
    sgd = s.suggest(
        FixedTrial(
            {
                "trainer.optimizer": "sgd",
                "trainer.momentum": 0.5,
                "trainer.local_epochs": 3,
                "trainer.lr": 0.01,
            }
        )
    )
    assert sgd == {
        "trainer.optimizer": "sgd",
        "trainer.momentum": 0.5,
        "trainer.local_epochs": 3,
        "trainer.lr": 0.01,
    }
    adam = s.suggest(
        FixedTrial({"trainer.optimizer": "adam", "trainer.local_epochs": 1, "trainer.lr": 0.1})
    )
    assert "trainer.momentum" not in adam  # exists only when the optimizer is sgd
    assert s.directions == ["maximize"] and not s.multi_objective


def test_grid_values():
    s = space(
        **{
            "trainer.fraction": {"type": "float", "low": 0.2, "high": 0.6, "step": 0.2},
            "trainer.local_epochs": {"type": "int", "low": 1, "high": 3},
        }
    )
    assert [p.grid() for p in s.params] == [[0.2, 0.4, 0.6], [1, 2, 3]]


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        (
            {**BASE, "params": {"trainer.lr": {"type": "float", "low": 1.0, "high": 0.1}}},
            "params.trainer.lr",
            "low (1.0) > high (0.1)",
        ),
        (
            {**BASE, "params": {"trainer.optimizer": {"type": "categorical", "choices": []}}},
            "params.trainer.optimizer.choices",
            "non-empty",
        ),
        (
            {**BASE, "params": {"trainer.lr": {"type": "normal"}}},
            "params.trainer.lr.type",
            "must be one of",
        ),
        (
            {**BASE, "params": {"trainer.lr": {"type": "float", "low": 0, "high": 1, "log": True}}},
            "params.trainer.lr.low",
            "log-scaled",
        ),
        (
            {
                **BASE,
                "params": {
                    "trainer.lr": {"type": "float", "low": 0.1, "high": 1, "when": {"x": 1}}
                },
            },
            "params.trainer.lr.when",
            "not a parameter declared before",
        ),
        ({**BASE, "params": {}}, "params", "at least one"),
        (
            {"params": {"trainer.lr": {"type": "float", "low": 0.1, "high": 1}}},
            "objective",
            "missing",
        ),
        (
            {
                **BASE,
                "params": {"trainer.lr": {"type": "float", "low": 0.1, "high": 1}},
                "sampler": "bayes",
            },
            "sampler.name",
            "valid: cmaes, grid, nsga2, random, tpe",
        ),
        (
            {
                "objective": [{"metric": "a"}, {"metric": "b", "direction": "minimize"}],
                "params": {"trainer.lr": {"type": "float", "low": 0.1, "high": 1}},
                "pruner": "median",
            },
            "pruner",
            "single objective",
        ),
        (
            {
                **BASE,
                "params": {"trainer.lr": {"type": "float", "low": 0.1, "high": 1}},
                "extra": 1,
            },
            "extra",
            "unknown key",
        ),
    ],
)
def test_space_errors(data, key, fragment):
    with pytest.raises(SpaceError) as info:
        parse_space(data)
    assert info.value.key == key
    assert fragment in info.value.problem


@pytest.mark.parametrize(
    ("params", "objective", "key", "fragment"),
    [
        (
            {"trainer.nope": {"type": "int", "low": 1, "high": 2}},
            "test_accuracy",
            "params.trainer.nope",
            "unknown config key",
        ),
        (
            {"trainer.lr": {"type": "float", "low": -1.0, "high": 1.0}},
            "test_accuracy",
            "params.trainer.lr",
            "must be > 0",
        ),
        (
            {"trainer.name": {"type": "categorical", "choices": ["fedavg", "fedbuff"]}},
            "test_accuracy",
            "params.trainer.name",
            "valid: centralized",
        ),
        (
            {"trainer.lr": {"type": "float", "low": 0.1, "high": 1.0}},
            "f1_score",
            "objective[0].metric",
            "unknown metric 'f1_score'",
        ),
    ],
)
def test_space_checked_against_the_config(params, objective, key, fragment):
    cfg = load_config(tiny())
    s = parse_space({"objective": [{"metric": objective}], "params": params})
    with pytest.raises(SpaceError) as info:
        check_space(s, cfg)
    assert info.value.key == key and fragment in info.value.problem


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_spaces_are_valid(path):
    s = load_space(path)
    name = (
        "centralized"
        if path.stem == "centralized"
        else ("fedprox" if path.stem == "fedprox" else "fedavg")
    )
    cfg = load_config(tiny(trainer__name=name))
    if path.stem.startswith("cmfl"):  # committees need the shipped config's 100 parties
        cfg = load_config(CONFIGS / "cmfl_digits.yaml")
    if path.stem.startswith("distill"):
        cfg = load_config(CONFIGS / "distill_digits.yaml")
    if path.stem.startswith(("dpsvrg", "dspg", "decentralized")):
        trainer = "dspg" if path.stem.startswith("dspg") else "dpsvrg"
        cfg = load_config(CONFIGS / "decentralized_breast_cancer.yaml", [f"trainer.name={trainer}"])
    if path.stem.startswith("vfl"):
        cfg = load_config(CONFIGS / "vfl_breast_cancer.yaml")
    if path.stem.startswith("fedhssl"):
        cfg = load_config(CONFIGS / "fedhssl_digits.yaml")
    if path.stem.startswith("hfl"):
        dp = ["trainer.privacy.mode=central"] if path.stem == "hfl_dp" else []
        cfg = load_config(CONFIGS / "hfl_digits.yaml", dp)
    if path.stem.startswith(("fedego", "graph")):
        cfg = load_config(CONFIGS / "fedego_sbm.yaml")
    if path.stem.startswith("gfl"):
        cfg = load_config(CONFIGS / "gfl_sbm.yaml")
    if path.stem.startswith(("condense", "doorping")):
        cfg = load_config(CONFIGS / "condense_digits.yaml", ["model.hidden=[128,64]"])
    check_space(s, cfg)
    assert s.params


def test_objective_reduce():
    s = parse_space(
        {
            "objective": [{"metric": "test_accuracy", "reduce": "max"}],
            "params": {"trainer.lr": {"type": "float", "low": 0.1, "high": 1}},
        }
    )
    history = [{"test_accuracy": 0.5}, {"test_accuracy": 0.9}, {"test_accuracy": 0.7}]
    assert s.objectives[0].value(history) == 0.9
    assert (
        parse_space({**BASE, "params": {"trainer.lr": {"type": "float", "low": 0.1, "high": 1}}})
        .objectives[0]
        .value(history)
        == 0.7
    )
