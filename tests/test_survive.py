"""Runs that survive: a driver killed with SIGKILL or stopped by SIGTERM resumes from its last
round checkpoint into the same MLflow run; an actor killed in the middle of a round is
replaced and its work run again; every one ends with exactly the history of a run nobody
interrupted (the golden cases, tests/golden.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading

import psutil
import pytest
from mlflow.tracking import MlflowClient

import orchestrator
from orchestrator import RunFailed
from orchestrator.cli import main

from .conftest import start_held, wait_for
from .golden import GOLDEN, assert_agrees, case_overrides, comparable

_GOLD = json.loads(GOLDEN.read_text())

FAMILIES = [
    "fedavg_krum_sign_flip",  # FedAvg with an attack and a robust aggregator
    "fedprox_digits_shards",  # FedProx
    "cmfl_strategy2_gaussian",  # CMFL (committee, attack)
    "decentralized_breast_cancer",  # DPSVRG
    "dspg_torus_edges",  # DSPG on a time-varying graph
    "vhnn_marvell",  # split learning with a defense
    "fedhssl_digits",  # FedHSSL
    "distill_digits",  # distillation
    "fedego_sbm",  # graph FL: per-client models and the server's optimizer in the state
    "condense_dm_doorping",  # dataset distillation: the synthetic set, its momentum, the trigger
]

_HELD = r"""
import json, pathlib, sys, threading
import torch
torch.set_num_threads(2)  # as the golden cases were recorded
from orchestrator import cli

argv, stop_at, marker = json.loads(sys.argv[1])

class Held(cli._Bar):
    # the command's progress bar, held at one step until the test kills or stops the process
    calls = 0
    def __call__(self, step, metrics):
        Held.calls += 1
        if Held.calls == stop_at:
            pathlib.Path(marker).write_text(str(step))
            threading.Event().wait()

cli._Bar = Held
sys.exit(cli.main(argv))
"""


@pytest.fixture(autouse=True)
def recorded_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _expected(name: str, executor: str) -> list[dict]:
    return _GOLD[name].get(executor, _GOLD[name]["local"])


def _hold(workdir, sessions, argv: list[str], stop_at: int) -> subprocess.Popen:
    """``fedsweep`` with ``argv`` in a process of its own, held inside its ``stop_at``-th
    progress step (the round before it is checkpointed); ``argv`` must show the progress
    bar (no ``--quiet``): the hold is in the bar."""
    return start_held(
        workdir, sessions, _HELD, [argv, stop_at], "the run to reach the step it is held at"
    )


def _only_run(uri: str):
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def _assert_logged_once(uri: str, run_id: str, expected: list[dict]) -> None:
    """Every step of every metric logged exactly once, with the values of the history."""
    client = MlflowClient(uri)
    keys = sorted({k for row in expected for k in row if k != "round"})
    for key in keys[:3]:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        want = [int(row["round"]) for row in expected if key in row]
        assert sorted(steps) == sorted(want), key


# On Ray, three families (a horizontal one with an attack, the committee, split learning)
# carry the check: the suite's time went to the signal matrix (tests/test_signals.py).
ON_RAY = {"fedavg_krum_sign_flip", "cmfl_strategy2_gaussian", "vhnn_marvell"}
CASES = [(name, "local") for name in FAMILIES]
CASES += [pytest.param(name, "ray", marks=pytest.mark.ray) for name in FAMILIES if name in ON_RAY]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "executor"), CASES)
def test_a_killed_driver_resumes_into_the_same_run_with_identical_metrics(
    name, executor, request, workdir, tracking_uri, sessions
):
    expected = _expected(name, executor)
    config, overrides = case_overrides(name, executor, tracking_uri)
    overrides += ["runtime.checkpoint_every=1"]
    address = []
    if executor == "ray":
        ray = request.getfixturevalue("ray_session")
        address = [f"runtime.address={ray.get_runtime_context().gcs_address}"]
    # held in its last step, one checkpoint behind: then SIGKILL, nothing cleaned up
    proc = _hold(workdir, sessions, ["run", str(config), *overrides, *address], len(expected))
    proc.kill()
    proc.wait(timeout=30)
    killed = _only_run(tracking_uri)
    assert killed.info.status == "RUNNING"  # as a SIGKILL leaves it

    result = orchestrator.run(config, overrides, resume=killed.info.run_id)
    assert result.run_id == killed.info.run_id
    assert result.resumed_from == len(expected) - 1
    assert_agrees(comparable(result.history), expected)
    after = MlflowClient(tracking_uri).get_run(result.run_id)
    assert after.info.status == "FINISHED"
    assert after.data.tags["fedsweep.resumed_from_round"] == str(len(expected) - 1)
    _assert_logged_once(tracking_uri, result.run_id, expected)


@pytest.mark.slow
def test_sigterm_ends_the_run_killed_and_resumable_from_the_command_line(
    workdir, tracking_uri, sessions, capsys
):
    name = "fedavg_krum_sign_flip"
    expected = _expected(name, "local")
    config, overrides = case_overrides(name, "local", tracking_uri)
    argv = ["run", str(config), *overrides, "runtime.checkpoint_every=1"]
    proc = _hold(workdir, sessions, argv, len(expected))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    stopped = _only_run(tracking_uri)
    assert stopped.info.status == "KILLED"
    line = err.strip().splitlines()[-1]
    assert f"--resume {stopped.info.run_id}" in line and "SIGTERM" in line

    assert main([*argv, "--resume", stopped.info.run_id, "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["run_id"] == stopped.info.run_id
    final = {k: v for k, v in expected[-1].items() if k != "round"}
    assert {k: out["metrics"][k] for k in final} == final
    assert MlflowClient(tracking_uri).get_run(stopped.info.run_id).info.status == "FINISHED"
    _assert_logged_once(tracking_uri, stopped.info.run_id, expected)


def test_a_resume_that_changes_more_than_the_budget_is_refused_in_one_line(
    workdir, tracking_uri, capsys
):
    config, overrides = case_overrides("quickstart", "local", tracking_uri)
    first = orchestrator.run(config, [*overrides, "runtime.checkpoint_every=1"])
    capsys.readouterr()  # MLflow's notes on creating its store
    code = main(["run", str(config), *overrides, "trainer.lr=0.5", "--resume", first.run_id])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("config error: trainer.lr:") and "only its budget may change" in err
    # the budget may change: two more rounds, continuing the same run
    more = orchestrator.run(config, [*overrides, "trainer.rounds=4"], resume=first.run_id)
    assert more.run_id == first.run_id and more.resumed_from == 2
    assert [row["round"] for row in more.history] == [0, 1, 2, 3]
    assert main(["run", str(config), *overrides, "--resume", "no-such-run"]) == 2
    assert "config error: --resume: no run 'no-such-run'" in capsys.readouterr().err


def test_an_untracked_run_resumes_from_its_checkpoint_directory(workdir):
    config, overrides = case_overrides("cmfl_digits", "local")
    ckpt = workdir / "ckpt"
    overrides += ["runtime.checkpoint_every=1", f"runtime.checkpoint_dir={ckpt}"]
    calls = []

    def stop(step, metrics):
        calls.append(step)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        orchestrator.run(config, overrides, progress=stop)
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest.json", "slot-0.pt"]
    result = orchestrator.run(config, overrides, resume=str(ckpt))
    assert result.resumed_from == 1
    assert_agrees(comparable(result.history), _expected("cmfl_digits", "local"))


def test_a_crash_while_a_checkpoint_is_written_leaves_the_previous_one(tmp_path):
    from orchestrator.checkpoints import Checkpoint, Checkpoints, Directory

    store = Checkpoints(Directory(tmp_path))
    store.save(Checkpoint(1, {}, {"w": 1}))
    store.save(Checkpoint(2, {}, {"w": 2}))

    class Crashing(Directory):
        def write(self, name, data):
            if name.startswith("slot-"):
                super().write(name, data[: len(data) // 2])  # torn write, then the crash
                raise OSError("disk gone")
            super().write(name, data)

    with pytest.raises(OSError):
        Checkpoints(Crashing(tmp_path)).save(Checkpoint(3, {}, {"w": 3}))
    latest = Checkpoints(Directory(tmp_path)).latest()
    assert latest is not None and latest.round == 2 and latest.state == {"w": 2}


# -- actors that die -------------------------------------------------------------------------


def _party_hosts() -> dict[int, psutil.Process]:
    """The PartyHost actors' processes among this test process's descendants."""
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if "PartyHost" in " ".join(p.cmdline()):
                out[p.pid] = p
        except psutil.NoSuchProcess:
            continue
    return out


class _ActorKiller:
    """Kills one of the run's actors once it is busy with the round after ``after_step``
    (its CPU time grows), i.e. in the middle of that round; ``times`` times at most."""

    def __init__(self, after_step: int, times: int = 1) -> None:
        self.before = set(_party_hosts())
        self.after_step, self.times = after_step, times
        self.armed = threading.Event()
        self.killed: list[int] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._guarded, daemon=True)
        self.thread.start()

    def progress(self, step, metrics) -> None:
        if step == self.after_step and not self.armed.is_set():
            self.baseline = {
                pid: sum(p.cpu_times()[:2])
                for pid, p in _party_hosts().items()
                if pid not in self.before
            }
            assert self.baseline, "the run has no actors of its own"
            self.armed.set()

    def _guarded(self) -> None:
        try:
            self._kill()
        except BaseException as exc:  # noqa: BLE001 - reported by the test's assertions
            self.errors.append(exc)

    def _kill(self) -> None:
        if not self.armed.wait(timeout=300):
            return
        for _ in range(self.times):

            def busy():
                for pid, p in _party_hosts().items():
                    if pid in self.baseline and sum(p.cpu_times()[:2]) > self.baseline[pid] + 0.03:
                        return p
                return None

            victim = wait_for(busy, 120, "an actor busy with the next round", poll=0.005)
            victim.kill()
            self.killed.append(victim.pid)
            del self.baseline[victim.pid]
            self.baseline.update(
                {
                    pid: sum(p.cpu_times()[:2])
                    for pid, p in _party_hosts().items()
                    if pid not in self.before
                    and pid not in self.killed
                    and pid not in self.baseline
                }
            )


_ACTOR_CASES = {
    "fedavg": ("quickstart", ["trainer.rounds=4", "trainer.local_epochs=4"]),
    "cmfl": ("cmfl_digits", ["trainer.rounds=4", "trainer.local_epochs=8"]),
    "dpsvrg": ("decentralized_breast_cancer", ["trainer.decentralized.epochs=4"]),
}


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(_ACTOR_CASES))
def test_an_actor_killed_mid_round_is_replaced_and_the_metrics_do_not_change(
    family, ray_session, workdir
):
    name, extra = _ACTOR_CASES[family]
    config, overrides = case_overrides(name, "ray")
    overrides += [*extra, "runtime.num_workers=2", "runtime.checkpoint_every=1"]
    reference = orchestrator.run(config, overrides)
    killer = _ActorKiller(after_step=int(reference.history[0]["round"]))
    result = orchestrator.run(config, overrides, progress=killer.progress)
    killer.thread.join(timeout=10)
    assert killer.killed, f"no actor was killed: {killer.errors}"
    assert result.restarts == 1
    assert comparable(result.history) == comparable(reference.history)


@pytest.mark.ray
@pytest.mark.slow
def test_more_lost_actors_than_allowed_fail_in_one_line_and_the_run_resumes(
    ray_session, tracking_uri
):
    name, extra = _ACTOR_CASES["fedavg"]
    config, overrides = case_overrides(name, "ray", tracking_uri)
    overrides += [*extra, "runtime.num_workers=2", "runtime.checkpoint_every=1"]
    killer = _ActorKiller(after_step=1)
    with pytest.raises(RunFailed) as failed:
        orchestrator.run(
            config, [*overrides, "runtime.max_actor_restarts=0"], progress=killer.progress
        )
    assert killer.killed, killer.errors
    message = str(failed.value)
    assert "\n" not in message and "runtime.max_actor_restarts=0" in message
    run_id = failed.value.run_id
    assert MlflowClient(tracking_uri).get_run(run_id).info.status == "FAILED"
    resumed = orchestrator.run(config, overrides, resume=run_id)
    reference = orchestrator.run(config, [*overrides, "tracking.enabled=false"])
    assert resumed.resumed_from >= 2  # the checkpoint after the round before the lost one
    assert comparable(resumed.history) == comparable(reference.history)
    assert MlflowClient(tracking_uri).get_run(run_id).info.status == "FINISHED"
