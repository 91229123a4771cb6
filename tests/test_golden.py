"""Behaviour kept: every golden case ends with exactly the recorded history, in-process and on
Ray (see tests/golden.py for what is recorded and when)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from .golden import CASES, CONFIGS, GOLDEN, run_case

_GOLD = json.loads(GOLDEN.read_text())


@pytest.fixture(autouse=True)
def recorded_threads():
    """The cases were recorded with torch's default of 2 intra-op threads on the 2-core
    machines here. Party work always runs on one thread, but a trainer's central work (a
    distillation, the test evaluation) runs on the caller's threads, so they are pinned."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _expected(name: str, executor: str) -> list[dict]:
    return _GOLD[name].get(executor, _GOLD[name]["local"])


def test_every_case_is_recorded_and_every_shipped_config_is_a_case():
    assert set(_GOLD) == set(CASES)
    assert {p.name for p in CONFIGS.glob("*.yaml")} <= {config for config, _ in CASES.values()}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_in_process_history_is_unchanged(name):
    assert run_case(name, "local") == _expected(name, "local")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("name", sorted(CASES))
def test_ray_history_is_unchanged_and_the_run_finished(name, ray_session, tracking_uri):
    history, result = run_case(name, "ray", tracking_uri)
    assert history == _expected(name, "ray")
    assert MlflowClient(tracking_uri).get_run(result.run_id).info.status == "FINISHED"
