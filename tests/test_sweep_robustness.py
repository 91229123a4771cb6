"""A sweep survives a killed worker, a killed driver and Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import optuna
import psutil
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.sweeps import make_storage, sweep
from search_spaces import parse_space

from .conftest import CONFIGS, kill_session, spawn, tiny, wait_for

SPACE = "objective: [test_accuracy]\nparams:\n  trainer.lr: {type: float, low: 0.01, high: 0.2}\nsampler: {name: random, seed: 0}\n"


def _study(workdir, name="quickstart-space"):
    return optuna.load_study(study_name=name, storage=make_storage(str(workdir / "optuna.journal")))


def _all_runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def tracking_client_metric(uri: str, run_id: str) -> list:
    return MlflowClient(uri).get_metric_history(run_id, "test_accuracy")


def _cli(workdir, trials: int) -> list[str]:
    (workdir / "space.yaml").write_text(SPACE)
    return [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "sweep",
        str(CONFIGS / "quickstart.yaml"),
        "trainer.rounds=25",
        "tracking.log_model=false",
        "sweep.executor=ray",  # what these tests stop and kill: trials in Ray workers
        "--space",
        "space.yaml",
        "--trials",
        str(trials),
        "--parallel",
        "1",
        "--quiet",
        "--json",
    ]


def _complete(workdir) -> int:
    return sum(t.state.name == "COMPLETE" for t in _study(workdir).trials)


@pytest.mark.slow
def test_killed_driver_resumes_without_duplicates(workdir, sessions):
    cmd = _cli(workdir, trials=5)
    driver = spawn(cmd, workdir, sessions)  # its Ray stays in its session, killed after
    wait_for(lambda: _complete(workdir) >= 2, 300, "two trials")
    kill_session(driver.pid)  # the driver and its Ray, at once, as a lost machine would
    driver.wait()
    before = {t.number: t for t in _study(workdir).trials}
    done_before = {n for n, t in before.items() if t.state.name == "COMPLETE"}
    parent = _study(workdir).user_attrs["mlflow_parent_run_id"]

    resumed = subprocess.run(
        cmd, cwd=workdir, capture_output=True, text=True, timeout=300, start_new_session=True
    )
    assert resumed.returncode == 0, resumed.stderr
    import json

    out = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert out["parent_run_id"] == parent  # the resumed sweep reuses the parent run
    assert out["n_complete"] == 5
    after = _study(workdir).trials
    for n in done_before:  # completed trials were not re-run
        assert (
            after[n].state.name == "COMPLETE"
            and after[n].datetime_complete == before[n].datetime_complete
        )
    interrupted = [t for t in after if t.user_attrs.get("fedsweep_interrupted")]
    assert all(t.state.name == "FAIL" for t in interrupted)
    runs = _all_runs(f"sqlite:///{workdir / 'mlflow.db'}", "quickstart")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    per_trial = {}
    for r in runs:
        if "fedsweep.trial" in r.data.tags:
            per_trial.setdefault(int(r.data.tags["fedsweep.trial"]), []).append(r)
    for n in done_before:  # their MLflow runs were not duplicated
        assert len(per_trial[n]) == 1 and per_trial[n][0].info.status == "FINISHED"
    assert sum(1 for r in runs if r.data.tags.get("fedsweep.kind") == "sweep") == 1


@pytest.mark.slow
def test_ctrl_c_leaves_nothing_running(workdir, sessions):
    cmd = _cli(workdir, trials=20)
    driver = spawn(cmd, workdir, sessions)  # its Ray stays in its session, killed after
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    # The first trial told: 19 are left, so the interrupt lands mid-sweep on any machine.
    wait_for(lambda: _complete(workdir) >= 1, 300, "a finished trial")
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=180)
    assert driver.returncode == 130, err
    assert "re-run the same command to resume" in err
    runs = _all_runs(uri, "quickstart")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parent = [r for r in runs if r.data.tags.get("fedsweep.kind") == "sweep"][0]
    assert parent.info.status == "KILLED"
    assert not [t for t in _study(workdir).trials if t.state.name == "RUNNING"]


@pytest.mark.ray
@pytest.mark.slow
def test_killed_worker_is_detected_and_the_trial_retried_from_its_checkpoint(
    ray_session, tracking_uri, workdir
):
    space = parse_space(
        {
            "objective": ["test_accuracy"],
            "params": {"trainer.lr": {"type": "categorical", "choices": [0.1]}},
        }
    )
    cfg = tiny(
        trainer__rounds=400,
        runtime__checkpoint_every=50,
        sweep={"executor": "ray"},
        tracking={"enabled": True, "uri": tracking_uri, "experiment": "k", "log_model": False},
    )
    killed = []

    def kill_first_trial_worker():
        def trial_process():
            # only this test run's processes: the session's Ray (and its workers) descend
            # from it, and another test run's workers on the machine do not
            for p in psutil.Process().children(recursive=True):
                try:
                    if any("run_trial" in part for part in p.cmdline()):
                        return p
                except psutil.Error:  # gone meanwhile
                    continue
            return None

        proc = wait_for(trial_process, 120, "the trial's worker", poll=0.05)
        # once it has a checkpoint (kept under the study's run), while it runs its 400 rounds
        wait_for(
            lambda: list(workdir.glob("**/trials/0/checkpoints/latest.json")),
            120,
            "the trial's first checkpoint",
            poll=0.01,
        )
        proc.kill()
        killed.append(proc.pid)

    errors = []

    def guarded():
        try:
            kill_first_trial_worker()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    killer = threading.Thread(target=guarded, daemon=True)
    killer.start()
    result = sweep(cfg, space, trials=1, parallel=1, study="k")
    killer.join(timeout=5)
    assert killed, f"the worker was never killed: {errors}"
    assert result.n_complete == 1 and result.n_failed == 0
    runs = {
        r.data.tags["fedsweep.attempt"]: r
        for r in _all_runs(tracking_uri, "k")
        if "fedsweep.attempt" in r.data.tags
    }
    # the lost attempt recorded nothing (a trial's run is written once it ends); the retry,
    # resumed from the checkpoint, recorded the whole history once
    assert set(runs) == {"1"} and runs["1"].info.status == "FINISHED"
    resumed_from = int(runs["1"].data.tags["fedsweep.resumed_from_round"])
    assert resumed_from > 0 and resumed_from % 50 == 0
    steps = [m.step for m in tracking_client_metric(tracking_uri, runs["1"].info.run_id)]
    assert sorted(steps) == list(range(400))
    study = optuna.load_study(
        study_name="k",
        storage=make_storage(
            str(tracking_uri.split("///")[1].rsplit("/", 1)[0]) + "/optuna.journal"
        ),
    )
    assert study.trials[0].user_attrs["attempts"] == 2


@pytest.mark.slow
def test_two_drivers_in_a_fresh_directory_share_one_study(workdir, sessions):
    """Two drivers started at once on one study, local store: neither trips over the other
    creating the MLflow store, and the study ends with the asked trials, one parent run, one
    run per trial and one registered version."""
    cmd = _cli(workdir, trials=4)
    cmd[cmd.index("tracking.log_model=false")] = "trainer.rounds=5"
    drivers = [spawn(cmd, workdir, sessions) for _ in range(2)]
    outs = []
    for d in drivers:
        out, err = d.communicate(timeout=600)
        assert d.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert outs[0]["parent_run_id"] == outs[1]["parent_run_id"]
    study = _study(workdir)
    counted = [t for t in study.trials if not t.user_attrs.get("fedsweep_interrupted")]
    assert len(counted) == 4 and all(t.state.name == "COMPLETE" for t in counted)
    runs = _all_runs(f"sqlite:///{workdir / 'mlflow.db'}", "quickstart")
    assert sum(r.data.tags.get("fedsweep.kind") == "sweep" for r in runs) == 1
    trials = sorted(
        int(r.data.tags["fedsweep.trial"]) for r in runs if "fedsweep.trial" in r.data.tags
    )
    assert trials == sorted(t.number for t in counted)
    versions = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_model_versions(
        "name = 'quickstart-space-best'"
    )
    assert len(versions) == 1
