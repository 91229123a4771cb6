"""What a command costs besides its training: where the time goes (``--profile``, the
``time.*`` metrics), the executor that chooses itself, a Ray kept running between commands,
and the steps after the last round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from clusters.lab._procs import session_members
from orchestrator import load_config, run
from orchestrator.config import ExecutorKind
from orchestrator.data import training_rows
from orchestrator.runner import LOCAL_WORK, choose_executor
from trainers import TRAINERS

from .conftest import CONFIGS, REPO, tiny


def _work(cfg) -> float:
    trainer = TRAINERS.get(cfg.trainer.name)(cfg.trainer, cfg.model)
    return trainer.sample_steps(training_rows(cfg))


def test_auto_runs_small_work_here_and_large_work_on_ray():
    quick = load_config(CONFIGS / "quickstart.yaml")
    assert quick.runtime.executor == ExecutorKind.auto  # the default
    # 30 rounds x 2 epochs x half of the parties x 1437 training rows
    assert _work(quick) == pytest.approx(30 * 2 * 0.5 * 1437)
    assert choose_executor(quick.runtime, _work(quick)) == ExecutorKind.local
    big = load_config(CONFIGS / "quickstart.yaml", ["trainer.rounds=1000"])
    assert _work(big) > LOCAL_WORK
    assert choose_executor(big.runtime, _work(big)) == ExecutorKind.ray
    # asked for: an address, actors, GPU shares, or an unknown amount of work
    for extra in ("runtime.address=auto", "runtime.num_workers=2", "runtime.gpus_per_worker=0.5"):
        cfg = load_config(CONFIGS / "quickstart.yaml", [extra])
        assert choose_executor(cfg.runtime, _work(cfg)) == ExecutorKind.ray, extra
    assert choose_executor(quick.runtime, None) == ExecutorKind.ray
    # and what is said is done
    local = load_config(
        CONFIGS / "quickstart.yaml", ["runtime.executor=local", "trainer.rounds=999"]
    )
    assert choose_executor(local.runtime, _work(local)) == ExecutorKind.local


def test_a_parquet_files_rows_are_read_from_its_footer(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"a": rng.normal(size=500), "label": rng.integers(0, 2, 500)}), path)
    cfg = load_config(tiny(data={"name": "parquet", "path": str(path), "label": "label"}))
    assert training_rows(cfg) == 400  # 500 rows, a fifth held out


def test_the_digits_read_without_scikit_learn_are_scikit_learns():
    import numpy as np
    from sklearn.datasets import load_digits

    from orchestrator.data import _digits_without_sklearn

    fast = _digits_without_sklearn()
    assert fast is not None
    bunch = load_digits()
    table = fast.table
    x = np.stack([table.column(n).to_numpy() for n in fast.features], axis=1)
    assert fast.features == [n for n in bunch.feature_names]
    np.testing.assert_array_equal(x, bunch.data.astype(np.float32))
    np.testing.assert_array_equal(table.column("label").to_numpy(), bunch.target)


def test_a_small_run_stays_in_this_process_and_says_so(tracking_uri):
    cfg = tiny(
        runtime={"executor": "auto"},
        tracking={"enabled": True, "uri": tracking_uri, "experiment": "auto"},
    )
    result = run(cfg)
    tags = MlflowClient(tracking_uri).get_run(result.run_id).data.tags
    assert tags["fedsweep.executor"] == "local" and "fedsweep.ray_address" not in tags


def _cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_profile_prints_every_phase_and_the_bar_names_the_steps_after_the_rounds(tmp_path):
    out = _cli(
        ["run", str(CONFIGS / "quickstart.yaml"), "--profile", "trainer.rounds=3"],
        tmp_path,
        dict(os.environ),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    err = out.stderr
    table = err[err.index("where the time went:") :]
    for phase in (
        "start and imports", "config", "data", "executor start", "tracking start",
        "first round", "rounds", "plots", "model", "run end", "total",
    ):  # fmt: skip
        assert f"\n  {phase} " in table, phase
    assert "fedavg (plots)" in err and "fedavg (closing the run)" in err
    assert "ray" not in table.split("leaving ray")[0].lower().replace("tray", "")


@pytest.mark.slow
def test_a_ray_kept_up_is_joined_by_runs_and_stopped_by_its_pids(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)  # its description goes to ~/.fedsweep/ray
    up = _cli(["ray", "up", "--cpus", "2"], tmp_path, env)
    assert up.returncode == 0, up.stderr[-2000:]
    described = json.loads((home / ".fedsweep" / "ray" / "ray.json").read_text())
    leader = described["node"]["leader"]
    assert session_members(leader)  # its raylet and GCS
    try:
        again = _cli(["ray", "up"], tmp_path, env)
        assert again.returncode == 2 and "a Ray runs at" in again.stderr
        assert _cli(["ray", "status"], tmp_path, env).returncode == 0
        result = _cli(
            [
                "run", str(CONFIGS / "quickstart.yaml"), "--quiet", "--json", "trainer.rounds=2",
                "runtime.executor=ray", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
            ],
            tmp_path,
            env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        run_id = json.loads(result.stdout.strip().splitlines()[-1])["run_id"]
        tags = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}").get_run(run_id).data.tags
        assert tags["fedsweep.executor"] == "ray"
        port = described["node"]["ports"]["gcs"]
        assert tags["fedsweep.ray_address"].endswith(f":{port}")  # joined, not started
    finally:
        down = _cli(["ray", "down"], tmp_path, env)
    assert down.returncode == 0, down.stderr
    assert not (home / ".fedsweep" / "ray" / "ray.json").exists()
    assert not session_members(leader)  # every process it started is gone
    assert _cli(["ray", "status"], tmp_path, env).returncode == 1


def test_a_small_sweep_runs_its_trials_here_and_profiles_its_phases(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(
        "objective: [test_accuracy]\n"
        "params:\n  trainer.lr: {type: float, low: 0.01, high: 0.2, log: true}\n"
        "sampler: {name: random, seed: 0}\n"
    )
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    out = _cli(
        [
            "sweep", str(CONFIGS / "quickstart.yaml"), "--space", str(space), "--trials", "3",
            "--profile", "--json", "trainer.rounds=2", f"tracking.uri={uri}",
        ],
        tmp_path,
        {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n_complete"] == 3
    for step in ("plots", "best model"):  # the bar names the finish's steps
        assert f"sweep ({step})" in out.stderr, step
    table = out.stderr[out.stderr.index("where the time went:") :]
    for phase in ("config and space", "storage", "study and parent run", "first trial", "finish"):
        assert f"\n  {phase} " in table, phase
    assert "ray start" not in table  # the trials ran in this process
    client = MlflowClient(uri)
    parent = client.get_run(result["parent_run_id"])
    assert {"time.first_trial_s", "time.trials_s", "time.finish_s"} <= set(parent.data.metrics)
    trials = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result['parent_run_id']}'"
    )
    assert len(trials) == 3 and {r.data.tags["fedsweep.node"] for r in trials} == {"local"}
    # one parameter: no importance plot (it would say 1, after scikit-learn's import)
    plots = {a.path for a in client.list_artifacts(result["parent_run_id"], "plots")}
    assert plots == {"plots/optimization_history.png", "plots/parallel_coordinate.png"}
    assert "param_importances.png: one parameter" in parent.data.tags["plots_skipped"]


def test_one_trial_at_a_time_runs_here_whatever_the_studys_size(tmp_path, monkeypatch):
    from orchestrator.sweeps._driver import _Plan, _trials_here

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    space = tmp_path / "space.yaml"
    space.write_text(
        "objective: [test_accuracy]\n"
        "params:\n  trainer.lr: {type: float, low: 0.01, high: 0.2, log: true}\n"
    )
    overrides = [f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"]
    big = _Plan.make(CONFIGS / "quickstart.yaml", space, overrides, 500, None, None)
    small = _Plan.make(CONFIGS / "quickstart.yaml", space, overrides, 2, None, None)
    assert not _trials_here(big, None, None)  # a big study, as wide as the CPUs: Ray
    assert _trials_here(big, None, 1)  # one at a time: Ray's start buys nothing
    assert _trials_here(small, None, None)
    assert not _trials_here(small, None, 2)
    assert not _trials_here(small, "127.0.0.1:1", 1)  # an address asks for Ray


def test_a_trial_in_this_process_keeps_its_threads_and_a_reserved_one_is_held_to_them(
    monkeypatch,
):
    """One trial at a time in the driver's process trains with the process's PyTorch threads,
    as a plain loop would (it ran on one thread before); a trial that reserved CPUs among
    parallel ones is held to them; either way the caller's setting is restored."""
    import torch

    from orchestrator.sweeps import _trial

    seen: list[int] = []
    monkeypatch.setattr(_trial, "_run_trial", lambda spec: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _trial.run_trial(SimpleNamespace(cpus=None))
        _trial.run_trial(SimpleNamespace(cpus=1.0))
        assert seen == [2, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_finish_is_prepared_ahead_without_touching_the_trials_randomness():
    import torch

    from orchestrator.sweeps._finish import FinishAhead

    ahead = FinishAhead(package=True)
    ahead.wait()  # never started: nothing to wait for
    before = torch.get_rng_state()
    ahead.start()
    ahead.start()  # once only
    ahead.wait()
    assert torch.equal(torch.get_rng_state(), before)
    assert {"optuna.importance", "optuna.visualization.matplotlib", "mlflow.pytorch"} <= set(
        sys.modules
    )


def _imported(module: str) -> tuple[int, bool]:
    return os.getpid(), module in sys.modules


@pytest.mark.ray
def test_a_sweeps_ray_workers_import_before_the_first_trial(ray_session):
    from clusters import InProcessTaskRunner, RayTaskRunner
    from orchestrator.sweeps._trial import warm_worker

    calls = []
    assert InProcessTaskRunner().warm(lambda: calls.append(1), 2) == [] and not calls
    runner = RayTaskRunner()
    warmed = runner.warm(warm_worker, 2)
    assert len(warmed) == 2
    pids = {runner.result(h) for h in warmed}  # each warm-up ran: its worker's pid
    for handle in [runner.submit(_imported, "trainers.fedavg") for _ in range(4)]:
        pid, imported = runner.result(handle)
        assert imported or pid not in pids  # a warmed worker holds the trainers already


_ONE_LR = (
    "objective: [test_accuracy]\n"
    "params:\n  trainer.lr: {type: float, low: 0.01, high: 0.2, log: true}\n"
    "sampler: {name: random, seed: 0}\n"
)


def _sweep_here(tmp_path: Path, study: str):
    import yaml

    from clusters import InProcessTaskRunner
    from orchestrator.sweeps import sweep
    from search_spaces import parse_space

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    overrides = ["trainer.rounds=2", f"tracking.uri={uri}"]
    result = sweep(
        CONFIGS / "quickstart.yaml",
        parse_space(yaml.safe_load(_ONE_LR)),
        overrides,
        trials=3,
        runner=InProcessTaskRunner(),
        study=study,
    )
    return result, uri


def _loads_and_predicts(model_uri: str, uri: str) -> None:
    import mlflow.pytorch
    import numpy as np
    import torch

    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(model_uri)
    out = model(torch.from_numpy(np.zeros((3, 64), dtype=np.float32)))
    assert tuple(out.shape) == (3, 10)


def test_a_long_sweep_here_packages_its_best_model_in_a_process_of_its_own(tmp_path, monkeypatch):
    """Trials in the driver's process that leave time: the best checkpoint becomes an MLflow
    model in a child process (warmed while the trials ran), which is gone after the sweep."""
    import psutil

    from orchestrator.sweeps import _finish, _packager

    monkeypatch.setattr(_finish, "PACKAGER_MIN_S", 0.0)  # a 3-trial study counts as long
    children: list[int] = []
    answers: list[str] = []
    start, result = _packager.Packager.__init__, _packager.Packager.result

    def spawned(self):
        start(self, idle=False)  # at the usual priority: ready on a busy machine too
        assert self.wait_ready(300)
        children.append(self.pid)

    def answered(self):
        answers.append(result(self))
        return answers[-1]

    monkeypatch.setattr(_packager.Packager, "__init__", spawned)
    monkeypatch.setattr(_packager.Packager, "result", answered)
    early: list[str] = []
    submit = _packager.Packager.submit

    def asked(self, *args, **kw):
        if kw.get("early"):
            early.append(args[2])
        return submit(self, *args, **kw)

    monkeypatch.setattr(_packager.Packager, "submit", asked)
    out, uri = _sweep_here(tmp_path, "long")
    assert len(children) == 1 and not psutil.pid_exists(children[0])
    assert len(early) == 1  # the best checkpoint, asked for while the last trial trained
    assert out.best is not None and answers[-1] == out.best["model_uri"]
    assert answers[-1].startswith("models:/")
    assert out.registered[0]["version"] == "1"
    _loads_and_predicts(f"models:/{out.registered[0]['name']}/1", uri)
    # a model packaged early for a trial the last one beat is not left behind
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("quickstart").experiment_id
    kept = {m.model_id for m in client.search_logged_models([exp])}
    assert kept == {answers[-1].removeprefix("models:/")}


class _FakePackager:
    def __init__(self, early: str | None) -> None:
        self.early, self.asked, self.answers = early, [], ["models:/m-early"]

    def submit(self, tracking_uri, experiment, uri, run_id, fmt, early=False):
        self.asked.append(uri)

    def result(self) -> str:
        return self.answers.pop(0)


class _FakeTracker:
    uri, experiment = "sqlite:///x.db", "e"

    def __init__(self) -> None:
        self.deleted: list[str] = []

    def model_versions(self, name, tags):
        return []

    def delete_logged_model(self, model_uri: str) -> None:
        self.deleted.append(model_uri)


def test_the_best_packaged_early_is_used_and_one_the_last_trial_beat_is_dropped():
    from orchestrator import load_config
    from orchestrator.sweeps._finish import _package_ahead

    base = load_config(CONFIGS / "quickstart.yaml")
    best = {"number": 5, "model_uri": "runs:/r5/checkpoint/model.pt", "run_id": "r5"}
    same, tracker = _FakePackager(best["model_uri"]), _FakeTracker()
    assert _package_ahead(same, tracker, [dict(best)], base, "m", "s") == {0}
    assert same.asked == [] and tracker.deleted == [] and same.early is None
    beaten, tracker = _FakePackager("runs:/r2/checkpoint/model.pt"), _FakeTracker()
    assert _package_ahead(beaten, tracker, [dict(best)], base, "m", "s") == {0}
    assert beaten.asked == [best["model_uri"]] and tracker.deleted == ["models:/m-early"]


def test_a_packaging_process_that_died_leaves_the_packaging_to_the_finish(tmp_path, monkeypatch):
    from orchestrator.sweeps import _finish, _packager

    monkeypatch.setattr(_finish, "PACKAGER_MIN_S", 0.0)
    start = _packager.Packager.__init__

    def dead(self):
        start(self)
        assert self._proc is not None
        self._proc.kill()
        self._proc.wait()

    monkeypatch.setattr(_packager.Packager, "__init__", dead)
    out, uri = _sweep_here(tmp_path, "dead")
    assert out.registered[0]["version"] == "1"
    assert out.best is not None and str(out.best["model_uri"]).startswith("models:/")
    _loads_and_predicts(f"models:/{out.registered[0]['name']}/1", uri)


def test_only_trials_here_with_time_left_get_a_packaging_process():
    from orchestrator.sweeps._finish import PACKAGER_MIN_S, FinishAhead

    for here, left, expected in [
        (True, PACKAGER_MIN_S, True),
        (True, PACKAGER_MIN_S / 2, False),  # over before its start would pay
        (False, 10 * PACKAGER_MIN_S, False),  # on Ray: the driver's thread has time
    ]:
        ahead = FinishAhead(package=True, trials_here=here)
        ahead.start(left)
        try:
            assert (ahead.packager is not None) == expected, (here, left)
        finally:
            ahead.wait()
            ahead.close()


def test_only_the_commands_own_process_freezes_its_objects(tmp_path):
    """The command's process moves what it built out of the collector's reach (its exit is
    no longer a last walk over every object); a process that calls the API keeps its own."""
    import gc

    from orchestrator import process

    before = gc.get_freeze_count()
    process.freeze()
    assert gc.get_freeze_count() == before
    code = (
        "import gc, sys\n"
        "from orchestrator.cli import entry\n"
        "sys.argv = ['fedsweep', 'show', sys.argv[1]]\n"
        "code = entry()\n"
        "print(code, gc.get_freeze_count() > 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(CONFIGS / "quickstart.yaml")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0 True"


def test_answers_that_arrive_together_are_each_read():
    """The child's readiness and its first answer may reach the pipe at once: reading the
    first must not buffer the second out of ``select``'s sight (it waited out its timeout)."""
    from orchestrator.sweeps._packager import PackageFailed, Packager

    both = '{"ready": true}\n{"model_uri": "models:/m-1"}\n{"error": "no such run"}\n'
    child = [sys.executable, "-c", f"import sys; sys.stdout.write({both!r}); sys.stdout.flush()"]
    child[-1] += "; sys.stdin.read()"
    packager = Packager(child, wait_s=30)
    try:
        packager.submit("sqlite:///x.db", "e", "runs:/r/checkpoint/model.pt", "r", "pt2")
        assert packager.result() == "models:/m-1"
        with pytest.raises(PackageFailed, match="no such run"):
            packager.result()
    finally:
        packager.close()


def test_a_child_still_starting_at_the_finish_is_not_waited_for():
    """On a machine too busy for the child to start during the trials (it takes only idle
    CPU), the finish waits seconds for it, then packages the model itself."""
    from orchestrator.sweeps._packager import PackageFailed, Packager

    silent = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    packager = Packager(silent, ready_wait_s=0.5)
    try:
        packager.submit("sqlite:///x.db", "e", "runs:/r/checkpoint/model.pt", "r", "pt2")
        with pytest.raises(PackageFailed, match="not ready"):
            packager.result()
        assert packager.pid is None  # given up: the child is ended
    finally:
        packager.close()
