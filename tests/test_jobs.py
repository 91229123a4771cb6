"""The job API: local background jobs, and jobs submitted to a real Ray head's job server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import JobStatus, get_job, submit
from orchestrator.cli import main

from .conftest import CONFIGS, free_port, kill_session, wait_for


@pytest.fixture()
def project(workdir):
    """A working directory holding a config and a space, as a user's project would."""
    shutil.copy(CONFIGS / "quickstart.yaml", workdir / "exp.yaml")
    (workdir / "space.yaml").write_text(
        "objective: [test_accuracy]\nparams:\n  trainer.lr: {type: float, low: 0.01, high: 0.2}\nsampler: {name: random, seed: 0}\n"
    )
    return workdir


def test_local_job_runs_in_the_background(project):
    job = submit("exp.yaml", overrides=["trainer.rounds=2", "runtime.executor=local"])
    assert job.job_id.startswith("local-")
    assert job.wait(timeout=240) == JobStatus.SUCCEEDED, job.logs()
    result = job.result()
    assert set(result) == {"run_id", "metrics"}
    run = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    again = get_job(job.job_id)  # found again from its record, as `fedsweep status` does
    assert again.status() == JobStatus.SUCCEEDED and again.result() == result


def test_local_sweep_job_cancel_and_cli(project, capsys):
    assert (
        main(
            [
                "submit",
                "exp.yaml",
                "trainer.rounds=40",
                "tracking.log_model=false",
                "--space",
                "space.yaml",
                "--trials",
                "50",
                "--parallel",
                "1",
            ]
        )
        == 0
    )
    job_id = capsys.readouterr().out.strip()
    job = get_job(job_id)
    try:
        # the sweep's first trial told: it is mid-sweep (49 trials to go) on any machine
        wait_for(lambda: _completed(project) >= 1, 300, "a finished trial")
        assert main(["status", job_id]) == 0 and capsys.readouterr().out.strip() == "RUNNING"
        assert main(["cancel", job_id]) == 0  # returns once the job has stopped
        assert capsys.readouterr().out.strip() == "STOPPED"
        assert job.status() == JobStatus.STOPPED
    finally:
        kill_session(job.meta["pid"])
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    assert not [r for r in runs if r.info.status == "RUNNING"]  # cancelled cleanly
    assert main(["result", job_id]) == 2
    assert main(["status", "nope"]) == 2
    assert main(["submit", "exp.yaml", "trainer.rounds=0"]) == 2  # refused before submitting
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("config error: trainer.rounds: must be >= 1, got 0")
    )


def _completed(project) -> int:
    import optuna

    from orchestrator.sweeps import make_storage

    storage = make_storage(str(project / "optuna.journal"))
    study = optuna.load_study(study_name="exp-space", storage=storage)
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


@pytest.fixture()
def ray_head():
    """A real Ray head with its dashboard (the job server), in its own short temp dir (Unix
    socket paths are limited to 107 characters).

    Its token authentication is off: this process's Ray keeps the token it first loads, and the
    session's local Ray uses the default one (a cluster with a token needs RAY_AUTH_TOKEN set
    where jobs are submitted from, as Ray documents).
    """
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    port, dash, agent, client = free_port(), free_port(), free_port(), free_port()
    # its own session: every process of this head stays in it, and only they are killed
    start = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            f"--port={port}",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--dashboard-agent-listen-port={agent}",
            f"--ray-client-server-port={client}",
            "--num-cpus=2",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
            "--node-ip-address=127.0.0.1",
        ],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        start_new_session=True,
        # to a file, not a pipe: the head's processes outlive `ray start` and keep writing
        stdout=open(os.path.join(temp, "start.log"), "w"),
        stderr=subprocess.STDOUT,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        assert start.wait(timeout=180) == 0, open(os.path.join(temp, "start.log")).read()
        wait_for(lambda: _answers(f"{address}/api/version"), 120, "the job server")
        yield address
    finally:
        kill_session(start.pid)
        shutil.rmtree(temp, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except urllib.error.HTTPError:
        return True  # the server answers (401 without the token): it is up
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_job_submitted_to_a_ray_head(project, ray_head):
    uri = f"sqlite:///{project / 'mlflow.db'}"
    job = submit(
        "exp.yaml",
        space="space.yaml",
        overrides=["trainer.rounds=2", "tracking.log_model=false", f"tracking.uri={uri}"],
        cluster=ray_head,
        trials=2,
        parallel=1,
        storage=f"journal://{project / 'optuna.journal'}",
    )
    assert job.job_id.startswith("raysubmit_")
    assert job.wait(timeout=300) == JobStatus.SUCCEEDED, job.logs()
    result = job.result()
    assert result["study"] == "exp-space" and result["n_complete"] == 2
    assert MlflowClient(uri).get_run(result["parent_run_id"]).info.status == "FINISHED"
    assert get_job(job.job_id).status() == JobStatus.SUCCEEDED  # found again from its record
    assert "study exp-space" in job.logs()
