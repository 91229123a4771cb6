"""GPUs: the device setting, and the GPU shares requested from Ray (checked here on the CPU:
this machine has no GPU; benchmarks/gpu_check.sh is the check for one that has)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

import orchestrator
from orchestrator import ConfigError, load_config

from .conftest import tiny
from .golden import comparable


def test_device_and_gpu_shares_are_settings():
    cfg = load_config(tiny(), ["runtime.device=auto", "runtime.gpus_per_worker=0.25"])
    assert cfg.runtime.device == "auto" and cfg.runtime.gpus_per_worker == 0.25
    assert load_config(tiny(), ["sweep.gpus_per_trial=0.5"]).sweep.gpus_per_trial == 0.5
    with pytest.raises(
        ConfigError, match="runtime.device: unknown name 'tpu'; valid: auto, cpu, cuda"
    ):
        load_config(tiny(), ["runtime.device=tpu"])
    with pytest.raises(ConfigError, match=r"sweep.gpus_per_trial: must be >= 0, got -1.0"):
        load_config(tiny(), ["sweep.gpus_per_trial=-1"])


def test_auto_runs_on_the_cpu_here_exactly_as_cpu(tracking_uri):
    cpu = orchestrator.run(tiny(), ["runtime.device=cpu"])
    tracking = {"enabled": True, "uri": tracking_uri, "experiment": "gpu", "log_model": False}
    auto = orchestrator.run(tiny(tracking=tracking), ["runtime.device=auto"])
    assert comparable(auto.history) == comparable(cpu.history)
    # the run records the device its parties used, not the one asked for
    tags = MlflowClient(tracking_uri).get_run(auto.run_id).data.tags
    assert tags["fedsweep.device"] == "cpu"


@pytest.mark.ray
def test_ray_actors_report_the_device_they_used(ray_session):
    from clusters import RayExecutor

    with RayExecutor(num_workers=2, device="auto") as executor:
        assert executor.devices() == ["cpu", "cpu"]


def test_cuda_where_no_gpu_is_visible_is_a_config_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(
        ConfigError, match="runtime.device: runtime.device is cuda but this worker sees no GPU"
    ):
        orchestrator.run(tiny(), ["runtime.device=cuda"])


@pytest.mark.ray
def test_gpu_shares_the_cluster_cannot_give_are_refused_with_the_numbers(
    ray_session, workdir, tracking_uri
):
    with pytest.raises(
        ConfigError,
        match=r"runtime.gpus_per_worker: an actor of 0.5 GPU fits no node of this Ray "
        r"\(the largest has 0\)",
    ):
        orchestrator.run(
            tiny(tracking={"enabled": True, "uri": tracking_uri}),
            ["runtime.executor=ray", "runtime.num_workers=2", "runtime.gpus_per_worker=0.5"],
        )
    space = _one_trial_space()
    with pytest.raises(
        ConfigError,
        match=r"sweep.gpus_per_trial: a trial of 0.5 GPU fits no node of this Ray \(the largest has 0\)",
    ):
        orchestrator.sweep(
            tiny(tracking={"enabled": True, "uri": tracking_uri}, sweep={"gpus_per_trial": 0.5}),
            space,
            trials=1,
        )
    assert not (workdir / "mlflow.db").exists()  # refused before any run


@pytest.mark.ray
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["runtime.num_workers=4"],
            "runtime.num_workers: 4 actors of 1 CPU need 4 CPUs; this Ray has 2",
        ),
    ],
)
def test_actors_ray_could_never_place_are_refused_before_anything_starts(
    ray_session, workdir, tracking_uri, overrides, message
):
    """Issue 21: ``runtime.num_cpus=2 runtime.num_workers=4`` waited forever, its MLflow run
    RUNNING. Now one line, before the run exists."""
    with pytest.raises(ConfigError, match=message):
        orchestrator.run(
            tiny(tracking={"enabled": True, "uri": tracking_uri}),
            ["runtime.executor=ray", *overrides],
        )
    assert not (workdir / "mlflow.db").exists()


@pytest.mark.ray
def test_a_trial_larger_than_every_node_is_refused(ray_session, workdir, tracking_uri):
    space = _one_trial_space()
    with pytest.raises(
        ConfigError,
        match=r"sweep.cpus_per_trial: a trial of 4 CPUs fits no node of this Ray \(the largest has 2\)",
    ):
        orchestrator.sweep(
            tiny(tracking={"enabled": True, "uri": tracking_uri}, sweep={"cpus_per_trial": 4}),
            space,
            trials=1,
        )
    assert not (workdir / "mlflow.db").exists()


def _one_trial_space():
    from search_spaces import parse_space

    return parse_space(
        {
            "objective": ["test_accuracy"],
            "params": {"trainer.lr": {"type": "categorical", "choices": [0.1]}},
        }
    )
