"""Every stop recorded (issue 21): SIGINT, SIGTERM and SIGHUP against ``fedsweep run``, a
sweep's driver and a local job, at start-up, mid-round and during a sweep's finish. Each
time the command exits 128 + the signal, every MLflow run and every Optuna trial it made is
in a terminal state, none of its actors is left, and the work can be resumed."""

from __future__ import annotations

import gc
import json
import signal
import subprocess
import sys

import optuna
import psutil
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.jobs import get_job, submit

from .conftest import CONFIGS, kill_session, session_members, spawn, start_held, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]

_HELD = r"""
import json, pathlib, sys, threading
from orchestrator import cli

argv, phase, marker = json.loads(sys.argv[1])

def hold():
    pathlib.Path(marker).write_text(phase)
    threading.Event().wait()

if phase == "run-startup":  # Ray's actors are up; the data is loading; no MLflow run yet
    import orchestrator.runner as runner
    runner.prepare = lambda cfg: hold()
elif phase == "run-round":  # inside round 2, the MLflow run RUNNING
    class Held(cli._Bar):
        def __call__(self, step, metrics):
            if step == 2:
                hold()
    cli._Bar = Held
elif phase == "sweep-startup":  # the parent run made, no trial launched
    from orchestrator.sweeps import _driver
    _driver._Driver.recover = lambda self: hold()
elif phase == "sweep-round":  # trials running on Ray
    from orchestrator.sweeps import _driver
    collect = _driver._Driver._collect
    def held(self, timeout):
        if self.running:
            hold()
        collect(self, timeout)
    _driver._Driver._collect = held
elif phase == "sweep-finish":  # every trial done, the study being summed up
    from orchestrator.sweeps import _driver
    _driver.finish = lambda *args: hold()
sys.exit(cli.main(argv))
"""


def _held(workdir, sessions, argv: list[str], phase: str) -> subprocess.Popen:
    return start_held(workdir, sessions, _HELD, [argv, phase], f"the command to reach {phase}")


def _wait_or_tell(predicate, timeout: float, what: str, job) -> None:
    """wait_for, but an AssertionError from ``predicate`` ends the wait at once, and a
    timeout tells the job's log and the session Ray's free resources."""
    import ray

    failure: list[AssertionError] = []

    def watched():
        try:
            return predicate()
        except AssertionError as exc:
            failure.append(exc)
            return True

    try:
        wait_for(watched, timeout, what)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; free in Ray: {ray.available_resources()}; the job's log: {job.logs()[-2000:]}"
        ) from None
    if failure:
        raise failure[0]


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _party_hosts(ray) -> int:
    """The PartyHost actors alive in the session's Ray (its processes descend from this one)."""
    count = 0
    for p in psutil.Process().children(recursive=True):
        try:
            count += "PartyHost" in " ".join(p.cmdline())
        except psutil.NoSuchProcess:
            continue
    return count


def _stopped(proc: subprocess.Popen, sig: signal.Signals) -> str:
    """Sends ``sig``; the command's stderr once it ended with 128 + sig."""
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    return err


def _nothing_of_ours_left(ray, leader: int, hosts_before: int) -> None:
    """No process of the command's session, and none of its actors, once it ended."""

    wait_for(lambda: not session_members(leader), 60, "the command's processes to end")
    wait_for(lambda: _party_hosts(ray) <= hosts_before, 60, "its actors to be gone")


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("phase", ["run-startup", "run-round"])
def test_a_stopped_run_is_closed_and_resumable(
    phase, sig, ray_session, workdir, tracking_uri, sessions
):
    address = ray_session.get_runtime_context().gcs_address
    overrides = [
        f"tracking.uri={tracking_uri}",
        "runtime.executor=ray",
        f"runtime.address={address}",
        "runtime.num_workers=1",
        "trainer.rounds=4",
        "runtime.checkpoint_every=1",
    ]
    argv = ["run", str(CONFIGS / "quickstart.yaml"), *overrides]
    hosts = _party_hosts(ray_session)
    proc = _held(workdir, sessions, argv, phase)
    err = _stopped(proc, sig)
    _nothing_of_ours_left(ray_session, proc.pid, hosts)
    runs = _runs(tracking_uri)
    if phase == "run-startup":
        assert runs == []  # stopped before its MLflow run existed: nothing to close
        assert f"stopped by {sig.name}" in err
        return
    assert [r.info.status for r in runs] == ["KILLED"]
    run_id = runs[0].info.run_id
    assert f"--resume {run_id}" in err.strip().splitlines()[-1]
    if sig == signal.SIGHUP:  # and it resumes, to the end, in the same run
        import orchestrator

        result = orchestrator.run(
            CONFIGS / "quickstart.yaml", overrides[:1] + overrides[4:], resume=run_id
        )
        assert result.run_id == run_id and len(result.history) == 4
        assert MlflowClient(tracking_uri).get_run(run_id).info.status == "FINISHED"


SPACE = """
objective: {metric: test_accuracy, direction: maximize}
params:
  trainer.lr: {type: categorical, choices: [0.05, 0.1, 0.2]}
sampler: {name: grid}
"""


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("phase", ["sweep-startup", "sweep-round", "sweep-finish"])
def test_a_stopped_sweep_leaves_every_run_and_trial_closed(
    phase, sig, ray_session, workdir, tracking_uri, sessions
):
    space = workdir / "space.yaml"
    space.write_text(SPACE)
    address = ray_session.get_runtime_context().gcs_address
    argv = [
        "sweep",
        str(CONFIGS / "quickstart.yaml"),
        "--space",
        str(space),
        "--parallel",
        "1",
        "--study",
        "stopped",
        "--address",
        address,
        f"tracking.uri={tracking_uri}",
        "trainer.rounds=2",
    ]
    proc = _held(workdir, sessions, argv, phase)
    err = _stopped(proc, sig)
    _nothing_of_ours_left(ray_session, proc.pid, _party_hosts(ray_session))
    assert "re-run the same command to resume" in err.strip().splitlines()[-1]
    statuses = [r.info.status for r in _runs(tracking_uri)]
    assert statuses and "RUNNING" not in statuses, statuses
    parent = [r for r in _runs(tracking_uri) if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in parent] == ["KILLED"]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(workdir / "optuna.journal"))
    )
    trials = optuna.load_study(study_name="stopped", storage=storage).get_trials()
    assert all(t.state.is_finished() for t in trials), [t.state for t in trials]
    if phase == "sweep-round" and sig == signal.SIGTERM:  # the same command resumes it
        proc = spawn(
            [sys.executable, "-m", "orchestrator.cli", *argv, "--quiet"], workdir, sessions
        )
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        done = optuna.load_study(study_name="stopped", storage=storage)
        complete = [t for t in done.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
        assert sorted(t.params["trainer.lr"] for t in complete) == [0.05, 0.1, 0.2]
        assert "RUNNING" not in [r.info.status for r in _runs(tracking_uri)]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_local_job_signalled_at_its_start_ends_stopped(sig, workdir, tracking_uri):
    """The signal reaches the job's process as the command is only starting (before its
    handlers, even): the job still ends STOPPED with 128 + the signal, no run left RUNNING."""
    job = submit(
        CONFIGS / "quickstart.yaml",
        None,
        [f"tracking.uri={tracking_uri}", "runtime.executor=local"],
        None,
    )
    pid = json.loads((job.folder / "job.json").read_text())["pid"]
    try:
        wait_for(lambda: (job.folder / "out.log").exists(), 60, "the job's process to start")
        psutil.Process(pid).send_signal(sig)
        status = job.wait(timeout=120, poll=0.2)
    finally:
        kill_session(pid)
    assert status.value == "STOPPED", job.logs()[-2000:]
    assert (job.folder / "exit_code").read_text().strip() == str(128 + sig)
    assert "RUNNING" not in [r.info.status for r in _runs(tracking_uri)]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_local_job_signalled_ends_stopped_with_its_run_killed(
    sig, ray_session, workdir, tracking_uri
):
    address = ray_session.get_runtime_context().gcs_address
    # the job's actor needs a CPU of the session's Ray: what earlier tests held is let go first
    gc.collect()
    wait_for(
        lambda: ray_session.available_resources().get("CPU", 0) >= 1,
        240,
        f"a free CPU in the session's Ray ({ray_session.available_resources()})",
    )
    job = submit(
        CONFIGS / "quickstart.yaml",
        None,
        [
            f"tracking.uri={tracking_uri}",
            "runtime.executor=ray",
            f"runtime.address={address}",
            "runtime.num_workers=1",
            "trainer.rounds=100000",
        ],
        None,
    )
    pid = json.loads((job.folder / "job.json").read_text())["pid"]

    def first_round() -> bool:
        if job.status().value not in ("PENDING", "RUNNING"):  # ended before a round: say why
            raise AssertionError(f"the job ended {job.status().value}: {job.logs()[-2000:]}")
        return any(r.data.metrics for r in _runs(tracking_uri))

    try:
        # a fresh process, a new Ray worker and 20 rounds (a flush): minutes on a loaded machine
        _wait_or_tell(first_round, 480, "its first round", job)
        psutil.Process(pid).send_signal(sig)
        status = job.wait(timeout=120, poll=0.2)
    finally:
        kill_session(pid)
    assert get_job(job.job_id).status().value == "STOPPED", job.logs()[-2000:]
    assert (job.folder / "exit_code").read_text().strip() == str(128 + sig)
    assert status.value == "STOPPED"
    runs = _runs(tracking_uri)
    assert [r.info.status for r in runs] == ["KILLED"]
    assert f"--resume {runs[0].info.run_id}" in job.logs()
    assert "Traceback" not in job.logs()
