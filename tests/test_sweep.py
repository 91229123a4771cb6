"""Sweeps on a real local Ray, with MLflow and Optuna journal storage in a temporary dir."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from clusters import InProcessTaskRunner
from orchestrator.sweeps import make_storage, sweep
from search_spaces import parse_space
from trainers import TRAINERS, FedAvg

from .conftest import CONFIGS, tiny

SPACE = {
    "objective": [{"metric": "test_accuracy", "direction": "maximize"}],
    "params": {
        "trainer.lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        "trainer.optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        "trainer.momentum": {
            "type": "float",
            "low": 0.0,
            "high": 0.9,
            "when": {"trainer.optimizer": "sgd"},
        },
    },
    "sampler": {"name": "random", "seed": 1},
}


def cfg(uri: str, log_model: bool = True, **extra) -> dict:
    tracking = {
        "enabled": True,
        "uri": uri,
        "experiment": "sweeps",
        "model_format": "pickle",
        "log_model": log_model,
    }
    return tiny(tracking=tracking, **extra)


def children(client: MlflowClient, parent_id: str):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000)


@pytest.mark.ray
def test_sweep_on_ray_nests_trials_and_registers_the_best(ray_session, tracking_uri, workdir):
    result = sweep(cfg(tracking_uri), parse_space(SPACE), trials=4, parallel=2, study="s1")
    assert (result.n_complete, result.n_failed, result.n_pruned) == (4, 0, 0)
    client = MlflowClient(tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "s1"
    kids = children(client, result.parent_run_id)
    assert sorted(int(r.data.tags["fedsweep.trial"]) for r in kids) == [0, 1, 2, 3]
    assert all(r.data.tags["fedsweep.study"] == "s1" and r.info.status == "FINISHED" for r in kids)
    for r in kids:  # each trial holds its params, per-round metrics and model (a checkpoint)
        assert len(client.get_metric_history(r.info.run_id, "test_accuracy")) == 3
        assert [a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")] == [
            "checkpoint/model.pt"
        ]
    # the trial's params are the sampled ones
    study = optuna.load_study(
        study_name="s1", storage=make_storage(str(workdir / "optuna.journal"))
    )
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert float(run.data.params["trainer.lr"]) == pytest.approx(t.params["trainer.lr"])
        assert run.data.params["trainer.optimizer"] == t.params["trainer.optimizer"]
    # the parent: best value and params, plots, trial table
    assert parent.data.metrics["best_value"] == pytest.approx(max(t.value for t in study.trials))
    assert parent.data.tags["best.trainer.lr"] == str(result.best["params"]["trainer.lr"])
    plots = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert plots == {
        "plots/optimization_history.png",
        "plots/param_importances.png",
        "plots/parallel_coordinate.png",
    }
    table = pq.read_table(
        client.download_artifacts(result.parent_run_id, "trials.parquet", str(workdir))
    )
    assert table.num_rows == 4 and "params_trainer.lr" in table.column_names
    # the best trial's model is registered, its version tagged with study and trial
    (reg,) = result.registered
    version = client.get_model_version(reg["name"], reg["version"])
    assert reg["name"] == "s1-best"
    assert version.tags["study"] == "s1" and version.tags["trial"] == str(study.best_trial.number)
    assert result.best["run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
    # the best trial's checkpoint became an MLflow model in the best trial's own run
    best_run = client.get_run(result.best["run_id"])
    (output,) = best_run.outputs.model_outputs
    assert (
        result.best["model_uri"] == f"models:/{output.model_id}"
        and best_run.info.status == "FINISHED"
    )
    import mlflow.pytorch

    from orchestrator import load_config
    from orchestrator.data import prepare
    from trainers.fedavg import evaluate

    data = prepare(
        load_config(
            cfg(tracking_uri),
            [
                f"trainer.lr={result.best['params']['trainer.lr']}",
                f"trainer.optimizer={result.best['params']['trainer.optimizer']}",
            ]
            + (
                [f"trainer.momentum={result.best['params']['trainer.momentum']}"]
                if "trainer.momentum" in result.best["params"]
                else []
            ),
        )
    ).data
    acc, _ = evaluate(mlflow.pytorch.load_model(version.source), data.x_test, data.y_test)
    assert acc == pytest.approx(
        result.best["values"][0], abs=1e-6
    )  # the registered model is the best trial's
    # a second call resumes: nothing re-runs, the parent is reused
    again = sweep(cfg(tracking_uri), parse_space(SPACE), trials=4, parallel=2, study="s1")
    assert again.parent_run_id == result.parent_run_id and again.n_complete == 4
    assert len(children(client, result.parent_run_id)) == 4


class Flaky(FedAvg):
    """Raises in round 1 when its learning rate is large: a trial that crashes mid-run."""

    def advance(self, state, executor):
        if self.config.lr > 0.1 and state.round == 1:
            raise RuntimeError("diverged")
        return super().advance(state, executor)


@pytest.fixture()
def flaky_trainer():
    TRAINERS._items["flaky"] = Flaky
    Flaky.metrics = FedAvg.metrics
    yield
    del TRAINERS._items["flaky"]


def test_failing_trial_is_recorded_and_the_sweep_goes_on(tracking_uri, flaky_trainer):
    space = parse_space(
        {
            "objective": [{"metric": "test_accuracy"}],
            "params": {"trainer.lr": {"type": "categorical", "choices": [0.05, 0.2]}},
            "sampler": {"name": "grid"},
        }
    )
    result = sweep(
        cfg(tracking_uri, trainer__name="flaky"),
        space,
        trials=2,
        runner=InProcessTaskRunner(),
        study="f",
    )
    assert (result.n_complete, result.n_failed) == (1, 1)
    client = MlflowClient(tracking_uri)
    failed = [r for r in children(client, result.parent_run_id) if r.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.params["trainer.lr"] == "0.2"
    assert failed[0].data.tags["error"] == "RuntimeError: diverged"
    trials = optuna.load_study(
        study_name="f",
        storage=make_storage(
            str(client.tracking_uri).split("///")[1].rsplit("/", 1)[0] + "/optuna.journal"
        ),
    ).trials
    bad = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert bad[0].user_attrs["error"] == "RuntimeError: diverged"


def _grid_seed_starting_with(key: str, value: object, choices: list) -> int:
    """A grid-sampler seed whose first trial takes ``value`` (the median pruner needs a good
    trial to have finished before it can prune a bad one)."""
    for seed in range(100):
        study = optuna.create_study(sampler=optuna.samplers.GridSampler({key: choices}, seed=seed))
        if study.ask().suggest_categorical(key, choices) == value:
            return seed
    raise AssertionError("no such seed")


def test_pruned_trials_stop_early(tracking_uri):
    seed = _grid_seed_starting_with("trainer.lr", 0.2, [0.2, 0.0001])
    space = parse_space(
        {
            "objective": [{"metric": "test_accuracy"}],
            "params": {"trainer.lr": {"type": "categorical", "choices": [0.2, 0.0001]}},
            "sampler": {"name": "grid", "seed": seed},
            "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 1},
        }
    )
    base = cfg(tracking_uri, log_model=False, trainer__rounds=6)
    result = sweep(base, space, trials=2, runner=InProcessTaskRunner(), study="p")
    assert (result.n_complete, result.n_pruned) == (1, 1)
    client = MlflowClient(tracking_uri)
    kids = {r.data.params["trainer.lr"]: r for r in children(client, result.parent_run_id)}
    slow = kids["0.0001"]
    assert slow.info.status == "FINISHED" and slow.data.tags["stopped_early"].startswith(
        "pruned after round"
    )
    assert len(client.get_metric_history(slow.info.run_id, "test_accuracy")) < 6
    assert len(client.get_metric_history(kids["0.2"].info.run_id, "test_accuracy")) == 6


def test_multi_objective_reports_the_pareto_front(tracking_uri):
    space = parse_space(
        {
            "objective": [
                {"metric": "test_accuracy", "direction": "maximize"},
                {"metric": "bytes_cumulative", "direction": "minimize"},
            ],
            "params": {"trainer.fraction": {"type": "categorical", "choices": [0.34, 1.0]}},
            "sampler": {"name": "grid"},
        }
    )
    base = cfg(tracking_uri, log_model=False)
    result = sweep(base, space, trials=2, runner=InProcessTaskRunner(), study="mo")
    assert isinstance(result.best, list) and 1 <= len(result.best) <= 2
    assert all(set(b) == {"number", "values", "params", "run_id", "model_uri"} for b in result.best)
    plots = {
        a.path for a in MlflowClient(tracking_uri).list_artifacts(result.parent_run_id, "plots")
    }
    assert "plots/pareto_front.png" in plots


def test_cli_sweep_json_and_bad_space(workdir):
    bad = workdir / "bad.yaml"
    bad.write_text(
        "objective: [test_accuracy]\nparams:\n  trainer.lr: {type: float, low: 1.0, high: 0.1}\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "sweep",
            str(CONFIGS / "quickstart.yaml"),
            "--space",
            str(bad),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "space error: params.trainer.lr: low (1.0) > high (0.1)"
    assert not (workdir / "mlflow.db").exists()
    space = workdir / "s.yaml"
    space.write_text(
        "objective: [test_accuracy]\nparams:\n  trainer.lr: {type: float, low: 0.01, high: 0.2}\nsampler: {name: random, seed: 0}\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "sweep",
            str(CONFIGS / "quickstart.yaml"),
            "trainer.rounds=2",
            "tracking.log_model=false",
            "--space",
            str(space),
            "--trials",
            "2",
            "--parallel",
            "2",
            "--json",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) == {"study", "parent_run_id", "n_complete", "n_failed", "n_pruned", "best"}
    assert out["study"] == "quickstart-s" and out["n_complete"] == 2
    assert set(out["best"]) == {"values", "params", "run_id", "model_uri"}
    assert "2/2" in proc.stderr  # the live progress line


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_on_postgresql_storage(ray_session, tracking_uri, postgres_url):
    space = parse_space({**SPACE, "pruner": {"name": "median", "n_startup_trials": 1}})
    result = sweep(
        cfg(tracking_uri, log_model=False),
        space,
        trials=3,
        parallel=2,
        study="pg",
        storage=postgres_url,
    )
    assert result.n_complete + result.n_pruned == 3
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert len(study.trials) == 3
    assert study.user_attrs["mlflow_parent_run_id"] == result.parent_run_id
    # the workers wrote each round's objective into PostgreSQL (what the pruner reads)
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)
    assert (
        MlflowClient(tracking_uri).get_run(result.parent_run_id).data.params["sweep.storage_url"]
        == postgres_url
    )


def test_a_server_storage_never_holds_more_connections_than_its_pool(postgres_url):
    """16 threads of one process at a PostgreSQL storage of 4 connections: every call gets
    through, never more than 4 connections are out at once, and each is checked before use
    (a restarted server is reconnected to)."""
    import threading

    storage = make_storage(postgres_url, connections=4)
    engine = storage.engine
    assert engine.pool.size() + engine.pool._max_overflow == 4  # noqa: SLF001 - the bound
    assert engine.pool._pre_ping  # noqa: SLF001
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "pooled")
    peak, errors, go = [0], [], threading.Barrier(16)
    lock = threading.Lock()

    def hammer():
        go.wait()
        try:
            for _ in range(20):
                trial_id = storage.create_new_trial(study_id)
                storage.set_trial_user_attr(trial_id, "x", 1)
                with lock:
                    peak[0] = max(peak[0], engine.pool.checkedout())
        except Exception as exc:  # noqa: BLE001 - collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    assert len(storage.get_all_trials(study_id)) == 16 * 20
    assert 1 <= peak[0] <= 4, peak[0]
    storage.delete_study(study_id)


@pytest.mark.ray
def test_trial_with_its_own_actor_pool(ray_session, tracking_uri):
    space = parse_space(
        {**SPACE, "params": {"trainer.lr": {"type": "categorical", "choices": [0.1]}}}
    )
    base = cfg(tracking_uri, log_model=False, sweep={"trial_actors": 1})
    result = sweep(base, space, trials=1, study="pool")
    assert result.n_complete == 1 and result.best["values"][0] > 0.5
