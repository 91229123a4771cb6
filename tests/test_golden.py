"""Behaviour kept: every golden case ends with the recorded history, in-process and on Ray
(see tests/golden.py for what is recorded and when).

Against the recording, counts and every other non-float are compared exactly, floats to 1e-12
of their value: the
BLAS and LAPACK kernels NumPy and torch pick by CPU change the last bits of a few results
(the spectral gap of a gossip matrix, an optimum found by FISTA differ in the 16th digit on an
AMD EPYC with AVX-512 from the machine that recorded them). Any change of behaviour moves a
history by far more than that. On the machine of a test run, a case's Ray history equals its
in-process history to the last bit (both ran in this session, on the same kernels)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from .golden import CASES, CONFIGS, GOLDEN, assert_agrees, run_case

_GOLD = json.loads(GOLDEN.read_text())
_HERE: dict[str, str] = {}
"""This test run's in-process histories (as JSON), which its Ray runs must equal to the bit."""


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
    history = run_case(name, "local")
    assert_agrees(history, _expected(name, "local"))
    _HERE[name] = json.dumps(history, sort_keys=True)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("name", sorted(CASES))
def test_ray_history_is_unchanged_and_the_run_finished(name, ray_session, tracking_uri):
    history, result = run_case(name, "ray", tracking_uri)
    assert_agrees(history, _expected(name, "ray"))
    if name in _HERE:  # on one machine, in-process and Ray agree to the last bit
        assert json.dumps(history, sort_keys=True) == _HERE[name]
    assert MlflowClient(tracking_uri).get_run(result.run_id).info.status == "FINISHED"


def test_the_comparison_tells_a_change_from_the_last_bits():
    row = {"round": 0.0, "loss": 0.6071137406477534, "grad_evals": 16.0}
    assert_agrees([{**row, "loss": 0.6071137406477541}], [row])  # the 16th digit
    for changed in ({"loss": 0.6071137406}, {"grad_evals": 17.0}, {"extra": 1.0}):
        with pytest.raises(AssertionError):
            assert_agrees([{**row, **changed}], [row])
    with pytest.raises(AssertionError):
        assert_agrees([row, row], [row])
