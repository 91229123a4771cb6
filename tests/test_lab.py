"""Cluster sweeps on a real lab: a 3-node Ray cluster, an MLflow tracking server on
PostgreSQL and Optuna on PostgreSQL, all started once for the session (``lab`` fixture), and
the faults a lab meets: a lost node, a tracking server that goes away, a killed driver,
several drivers on one study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from .conftest import CONFIGS, kill_session, spawn, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SPACE = (
    "objective: [test_accuracy]\n"
    "params:\n  trainer.lr: {type: float, low: 0.01, high: 0.2}\n"
    "sampler: {name: random, seed: 0}\n"
)
PRUNED_SPACE = SPACE + "pruner: {name: median, n_startup_trials: 1}\n"


@pytest.fixture()
def project(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "pruned.yaml").write_text(PRUNED_SPACE)
    return tmp_path


def _sweep_cmd(lab, study: str, trials: int, *extra: str, space: str = "space.yaml") -> list[str]:
    return [
        sys.executable, "-m", "orchestrator.cli", "sweep", str(CONFIGS / "quickstart.yaml"),
        "--space", space, "--lab", str(lab.dir), "--study", study,
        "--trials", str(trials), "--quiet", "--json",
        f"tracking.experiment={study}", *extra,
    ]  # fmt: skip


def _start(cmd, cwd, lab, sessions) -> subprocess.Popen:
    return spawn(cmd, cwd, sessions, env=lab.process_env())


def _finish(proc, timeout=600) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


_STORAGES: dict = {}


def _study(lab, name):
    """The study, through one storage (one small connection pool) for the whole module:
    a storage made per poll would open connections faster than they are closed."""
    from orchestrator.sweeps import make_storage

    if lab.storage_url not in _STORAGES:
        _STORAGES[lab.storage_url] = make_storage(lab.storage_url, connections=2)
    return optuna.load_study(study_name=name, storage=_STORAGES[lab.storage_url])


def _complete(lab, name) -> int:
    return sum(t.state.name == "COMPLETE" for t in _study(lab, name).trials)


def _runs(lab, experiment):
    client = MlflowClient(lab.tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def _children(runs):
    return [r for r in runs if "fedsweep.trial" in r.data.tags]


def _assert_one_run_per_trial(lab, study: str, n: int):
    """n finished trials, each with exactly one finished MLflow run, nested under one parent;
    nothing left RUNNING."""
    runs = _runs(lab, study)
    parents = [r for r in runs if r.data.tags.get("fedsweep.kind") == "sweep"]
    assert len(parents) == 1, [r.info.run_id for r in parents]
    complete = [t for t in _study(lab, study).trials if t.state.name == "COMPLETE"]
    assert len(complete) == n
    finished = [r for r in _children(runs) if r.info.status == "FINISHED"]
    by_trial = {}
    for r in finished:
        by_trial.setdefault(int(r.data.tags["fedsweep.trial"]), []).append(r)
    seen = sorted(  # each run: its trial, status, and what closed it
        (r.data.tags["fedsweep.trial"], r.info.status, r.data.tags.get("error", "")[:120])
        for r in _children(runs)
    )
    assert sorted(by_trial) == sorted(t.number for t in complete), seen
    assert all(len(v) == 1 for v in by_trial.values()), by_trial
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in finished)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    return parents[0], finished


def test_lab_answers_and_describes_itself(lab, tmp_path):
    assert all(lab.status().values()), lab.status()
    status = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "lab", "status", "--dir", str(lab.dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0 and status.stdout.count(" up") == 5, status.stdout
    described = json.loads((lab.dir / "lab.json").read_text())
    for key in ("tracking_uri", "storage_url", "ray_address", "dashboard", "job_server"):
        assert described[key] == lab.addresses()[key]
    assert described["env"]["RAY_AUTH_MODE"] == "token"
    # token authentication is on: the job server refuses a request without the token
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{lab.dashboard}/api/jobs/", timeout=10)
    assert refused.value.code in (401, 403)


def test_a_sweep_spreads_over_the_nodes_and_its_models_load_anywhere(lab, project, sessions):
    # Trials long enough to outlast the other nodes' warm-up: with 8 rounds, on a loaded
    # machine, the first node to finish importing ran all six before the others were ready.
    proc = _start(
        _sweep_cmd(lab, "spread", 6, "--parallel", "3", "trainer.rounds=100"),
        project,
        lab,
        sessions,
    )
    result = _finish(proc)
    assert result["n_complete"] == 6
    parent, children = _assert_one_run_per_trial(lab, "spread", 6)
    assert parent.info.run_id == result["parent_run_id"]
    # served artifacts: the workers wrote them through the server, not into a directory
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in children)
    nodes = {r.data.tags["fedsweep.node"] for r in children}
    assert all(r.data.tags.get("fedsweep.worker") for r in children)  # the worker that ran it
    assert len(nodes) >= 2, nodes  # trials ran on several nodes
    assert all(lab.node_of(n) is not None for n in nodes)
    client = MlflowClient(lab.tracking_uri)
    # the best model is registered through the server
    (version,) = client.search_model_versions("name = 'spread-best'")
    assert version.tags["study"] == "spread" and version.run_id == result["best"]["run_id"]
    # a trial's checkpoint, written by its worker through the server, loads on another node
    trial = children[0]
    writer = trial.data.tags["fedsweep.node"]
    probe = textwrap.dedent(
        f"""
        import ray, json
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        ray.init(address={lab.ray_address!r}, logging_level="ERROR")
        other = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != {writer!r}][0]

        @ray.remote(num_cpus=0)
        def load(run_id):
            import mlflow.pytorch, os
            from mlflow.tracking import MlflowClient
            from trainers.models import load_checkpoint
            path = MlflowClient().download_artifacts(run_id, "checkpoint/model.pt", "/tmp")
            model, spec = load_checkpoint(open(path, "rb").read())
            import torch
            registered = mlflow.pytorch.load_model("models:/spread-best/{version.version}")
            out = registered(torch.zeros(2, spec.n_features))
            return ray.get_runtime_context().get_node_id(), spec.n_features, list(out.shape)

        strategy = NodeAffinitySchedulingStrategy(other, soft=False)
        print(json.dumps(ray.get(load.options(scheduling_strategy=strategy).remote({trial.info.run_id!r}))))
        """
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        env=lab.process_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=CONFIGS.parent,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    node, n_features, shape = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert node != writer and n_features == 64 and shape == [2, 10]


def test_a_job_submitted_to_the_lab_runs_there(lab, project):
    import shutil

    shutil.copy(CONFIGS / "quickstart.yaml", project / "exp.yaml")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *args],
            cwd=project,
            env=lab.process_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    submitted = cli(
        "submit", "exp.yaml", "--space", "space.yaml", "--lab", str(lab.dir),
        "--trials", "2", "--parallel", "2", "--study", "submitted",
        "trainer.rounds=3", "tracking.experiment=submitted",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert job_id.startswith("raysubmit_")
    wait_for(
        lambda: cli("status", job_id).stdout.strip() in ("SUCCEEDED", "FAILED"), 600, "the job"
    )
    assert cli("status", job_id).stdout.strip() == "SUCCEEDED", cli("logs", job_id).stdout[-3000:]
    assert json.loads(cli("result", job_id).stdout)["n_complete"] == 2
    _assert_one_run_per_trial(lab, "submitted", 2)


@pytest.mark.parametrize("staggered", [False, True], ids=["together", "staggered"])
def test_two_drivers_on_one_study_cooperate(lab, project, sessions, staggered):
    study = f"two-{'staggered' if staggered else 'together'}"
    cmd = _sweep_cmd(lab, study, 6, "--parallel", "1", "trainer.rounds=8")
    first = _start(cmd, project, lab, sessions)
    if staggered:
        wait_for(lambda: _complete(lab, study) >= 1, 300, "the first driver's first trial")
    second = _start(cmd, project, lab, sessions)
    results = [_finish(first), _finish(second)]
    assert {r["parent_run_id"] for r in results} == {results[0]["parent_run_id"]}
    _assert_one_run_per_trial(lab, study, 6)
    counted = [t for t in _study(lab, study).trials if not t.user_attrs.get("fedsweep_interrupted")]
    assert len(counted) == 6
    versions = MlflowClient(lab.tracking_uri).search_model_versions(f"name = '{study}-best'")
    assert len(versions) == 1
    states = [t.state for t in _study(lab, study).trials]
    assert TrialState.RUNNING not in states, states  # (a handed-back surplus may wait)


def test_parallel_trials_stay_within_postgres_connections(lab, project, sessions):
    peak, done = [0], threading.Event()

    def sample():
        while not done.wait(0.5):
            peak[0] = max(peak[0], lab.postgres.connections())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cmd = _sweep_cmd(
        lab, "pooled", 6, "--parallel", "3", "trainer.rounds=6", space="pruned.yaml"
    )  # workers report to the pruner: every trial opens the storage
    result = _finish(_start(cmd, project, lab, sessions))
    done.set()
    sampler.join()
    assert result["n_complete"] + result["n_pruned"] == 6
    assert 0 < peak[0] < lab.postgres.max_connections, peak[0]


def test_a_tracking_server_away_for_20_s_loses_and_duplicates_nothing(lab, project, sessions):
    proc = _start(
        _sweep_cmd(lab, "outage", 6, "--parallel", "2", "trainer.rounds=8"), project, lab, sessions
    )
    wait_for(lambda: _complete(lab, "outage") >= 1, 300, "a finished trial")
    lab.restart_mlflow(down_for=20)
    result = _finish(proc)
    assert result["n_complete"] == 6
    _assert_one_run_per_trial(lab, "outage", 6)


def test_a_killed_driver_resumes_on_the_lab(lab, project, sessions):
    cmd = _sweep_cmd(lab, "resumed", 5, "--parallel", "1", "trainer.rounds=8")
    first = _start(cmd, project, lab, sessions)
    wait_for(lambda: _complete(lab, "resumed") >= 2, 300, "two finished trials")
    kill_session(first.pid)
    first.wait()
    parent = _study(lab, "resumed").user_attrs["mlflow_parent_run_id"]
    result = _finish(_start(cmd, project, lab, sessions))
    assert result["parent_run_id"] == parent and result["n_complete"] == 5
    _assert_one_run_per_trial(lab, "resumed", 5)


def test_gpu_shares_are_requested_from_ray(lab, project, sessions):
    cmd = _sweep_cmd(
        lab, "gpus", 2, "--parallel", "2", "trainer.rounds=3",
        "sweep.gpus_per_trial=0.5", "runtime.device=auto",
    )  # fmt: skip
    assert _finish(_start(cmd, project, lab, sessions))["n_complete"] == 2
    children = _children(_runs(lab, "gpus"))
    assert len(children) == 2 and all(r.data.tags.get("fedsweep.gpus") for r in children)
    run = subprocess.run(
        [
            sys.executable, "-m", "orchestrator.cli", "run", str(CONFIGS / "quickstart.yaml"),
            "--lab", str(lab.dir), "--quiet", "--json", "trainer.rounds=2",
            "runtime.num_workers=2", "runtime.gpus_per_worker=0.5", "tracking.log_model=false",
        ],
        cwd=project, env=lab.process_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert "test_accuracy" in out["metrics"]
    # each actor was given a GPU share by Ray (its CUDA_VISIBLE_DEVICES; the nodes' GPUs are
    # logical here, so the parties trained on the CPU, as the tag says)
    device = MlflowClient(lab.tracking_uri).get_run(out["run_id"]).data.tags["fedsweep.device"]
    assert device.startswith("cpu [visible GPUs "), device


def test_a_worker_node_lost_mid_sweep(lab, project, sessions):
    """Runs last: it takes a node away, and gives it back."""
    cmd = _sweep_cmd(lab, "lost-node", 6, "--parallel", "3", "trainer.rounds=200")
    proc = _start(cmd, project, lab, sessions)

    def running_on_a_worker_node():
        for r in _runs(lab, "lost-node"):
            if r.info.status == "RUNNING" and "fedsweep.node" in r.data.tags:
                index = lab.node_of(r.data.tags["fedsweep.node"])
                if index:  # not the head, whose loss would end the cluster
                    return index
        return None

    index = wait_for(running_on_a_worker_node, 300, "a trial running on a worker node")
    lab.kill_node(index)
    try:
        result = _finish(proc, timeout=900)
    finally:
        lab.start_node(index)
    assert result["n_complete"] == 6 and result["n_failed"] == 0
    runs = _runs(lab, "lost-node")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    retried = [t for t in _study(lab, "lost-node").trials if t.user_attrs.get("attempts")]
    assert retried, "no trial was retried after the node was lost"
    assert os.path.exists(lab.dir / "lab.json")
