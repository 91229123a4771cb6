"""Runs recorded in a real MLflow SQLite store, read back with MlflowClient."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from clusters import InProcessExecutor
from orchestrator import load_config, load_model, run
from orchestrator.data import prepare
from orchestrator.runner import RunFailed
from trainers import FedAvg
from trainers.fedavg import evaluate
from trainers.privacy import PRIVACY_METRICS

from .conftest import tiny


def tracked(uri: str, tracking: dict | None = None, **extra) -> dict:
    base = {"enabled": True, "uri": uri, "experiment": "tests", "run_name": "t"}
    return tiny(tracking={**base, **(tracking or {})}, **extra)


def test_run_is_recorded_completely(tracking_uri, workdir):
    cfg = tracked(tracking_uri, trainer__rounds=4)
    result = run(cfg)
    client = MlflowClient(tracking_uri)
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "t"
    assert client.get_experiment(r.info.experiment_id).name == "tests"
    # params: the flattened resolved config
    assert r.data.params["trainer.rounds"] == "4"
    assert r.data.params["partition.num_parties"] == "6"
    assert r.data.params["model.hidden"] == "[16]"
    # tags
    for key, value in {"trainer": "fedavg", "dataset": "digits", "seed": "0"}.items():
        assert r.data.tags[key] == value
    assert "fedsweep_version" in r.data.tags
    # metrics per round, in steps 0..3
    for key in ("train_loss", "test_accuracy", "test_loss", "round_time_s", "bytes_communicated"):
        history = client.get_metric_history(result.run_id, key)
        assert sorted(m.step for m in history) == [0, 1, 2, 3], key
    acc = {m.step: m.value for m in client.get_metric_history(result.run_id, "test_accuracy")}
    assert acc[3] == pytest.approx(result.metrics["test_accuracy"])
    # artifacts
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "learning_curve.png", "partition"} <= names
    part = {a.path for a in client.list_artifacts(result.run_id, "partition")}
    assert part == {"partition/stats.parquet", "partition/label_histogram.png"}
    local = client.download_artifacts(result.run_id, "partition/stats.parquet", str(workdir))
    assert pq.read_table(local).column("n_samples").to_pylist() == [
        240,
        240,
        240,
        240,
        239,
        239,
    ]  # 1438 training rows
    config_text = open(client.download_artifacts(result.run_id, "config.yaml", str(workdir))).read()
    assert load_config(None, []).trainer.rounds != 4 and "rounds: 4" in config_text
    # the logged model (by default, a checkpoint: milliseconds to write) reproduces the
    # final test accuracy
    assert result.model_uri == f"runs:/{result.run_id}/checkpoint/model.pt"
    model = load_model(result.model_uri, tracking_uri)
    data = prepare(load_config(cfg)).data
    acc_loaded, _ = evaluate(model, data.x_test, data.y_test)
    assert acc_loaded == pytest.approx(result.metrics["test_accuracy"], abs=1e-6)
    # every run records where the time went, as metrics
    times = {k for k in r.data.metrics if k.startswith("time.")}
    assert {"time.config_s", "time.data_s", "time.first_round_s", "time.rounds_s"} <= times
    assert set(result.timings) >= {"config", "data", "tracking start", "rounds", "model"}


def test_an_mlflow_model_when_asked(tracking_uri, workdir):
    """pt2 (a traced graph) or pickle: an MLflow model that mlflow.pytorch and pyfunc load."""
    import mlflow.pytorch

    cfg = tracked(tracking_uri, {"model_format": "pt2"}, trainer__rounds=2)
    result = run(cfg)
    assert result.model_uri.startswith("models:/")
    model = mlflow.pytorch.load_model(result.model_uri)
    data = prepare(load_config(cfg)).data
    acc_loaded, _ = evaluate(model, data.x_test, data.y_test)
    assert acc_loaded == pytest.approx(result.metrics["test_accuracy"], abs=1e-6)
    pyfunc = mlflow.pyfunc.load_model(result.model_uri)
    assert pyfunc.predict(data.x_test[:7]).shape == (7, 10)


def test_default_store_is_sqlite_in_working_dir(workdir):
    result = run(tiny(tracking={"enabled": True, "log_model": False}))
    assert (workdir / "mlflow.db").exists()
    assert MlflowClient("sqlite:///mlflow.db").get_run(result.run_id).info.status == "FINISHED"


def test_env_var_sets_the_store(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'env.db'}")
    result = run(tiny(tracking={"enabled": True, "log_model": False}))
    assert (workdir / "env.db").exists() and not (workdir / "mlflow.db").exists()
    assert MlflowClient(f"sqlite:///{workdir / 'env.db'}").get_run(result.run_id)


class FailingExecutor(InProcessExecutor):
    """Fails in the second round, as a crashed party host would."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error, self.calls = error, 0

    def map(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise self.error
        return super().map(*args, **kwargs)


def _only_run(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tests")
    (r,) = client.search_runs([exp.experiment_id])
    return client, r


def test_failed_run_ends_failed_with_its_error(tracking_uri):
    with pytest.raises(RunFailed, match="host died") as failed:
        run(tracked(tracking_uri), executor=FailingExecutor(RuntimeError("host died")))
    assert isinstance(failed.value.cause, RuntimeError)
    client, r = _only_run(tracking_uri)
    assert r.info.status == "FAILED"
    assert r.data.tags["error"] == "RuntimeError: host died"
    assert "host died" in open(client.download_artifacts(r.info.run_id, "error.txt")).read()
    assert len(client.get_metric_history(r.info.run_id, "test_accuracy")) == 1  # round 0 kept


def test_interrupted_run_ends_killed(tracking_uri):
    with pytest.raises(KeyboardInterrupt):
        run(tracked(tracking_uri), executor=FailingExecutor(KeyboardInterrupt()))
    _, r = _only_run(tracking_uri)
    assert r.info.status == "KILLED"


def test_metrics_are_written_in_batches(tracking_uri, monkeypatch):
    from orchestrator import tracking

    batches = []
    real = tracking.MlflowClient.log_batch

    def spy(self, run_id, metrics=(), params=(), tags=(), **kw):
        if metrics:
            batches.append(len(metrics))
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kw)

    monkeypatch.setattr(tracking.MlflowClient, "log_batch", spy)
    result = run(
        tracked(tracking_uri, trainer__rounds=10, tracking={"flush_every": 4, "log_model": False})
    )
    # every metric of every round: rounds 0-3, 4-7, then 8-9 plus the final wall time and
    # the run's phase times
    n = len(FedAvg.metrics) - len(PRIVACY_METRICS)  # those only with trainer.privacy
    logged = MlflowClient(tracking_uri).get_run(result.run_id).data.metrics
    phases = len([k for k in logged if k.startswith("time.")])
    assert phases >= 8
    assert batches == [4 * n, 4 * n, 2 * n + 1 + phases]


def test_nested_under_parent(tracking_uri):
    parent = MlflowClient(tracking_uri)
    exp = parent.create_experiment("tests")
    parent_run = parent.create_run(exp).info.run_id
    child = run(tracked(tracking_uri, tracking={"log_model": False}), parent_run_id=parent_run)
    assert parent.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent_run


def test_a_recorded_run_reads_back_as_mlflow_would_have_written_it(tracking_uri, monkeypatch):
    """A recorded run's values go into a SQL store in one bulk transaction; what MLflow reads
    back (histories, each key's latest value, NaN and infinities, params) is what its own
    log_batch writes for the same record."""
    import math

    from orchestrator import tracking
    from orchestrator.tracking import RunRecord, RunStatus, write_record

    now = 1_700_000_000_000
    metrics = [("loss", 1.0 / (s + 1), now + s, s) for s in range(30)]
    metrics += [("acc", 0.5, now + 5, 3), ("acc", 0.7, now + 5, 3), ("acc", 0.6, now + 9, 2)]
    metrics += [("odd", math.nan, now, 0), ("odd", math.inf, now, 1), ("low", -math.inf, now, 0)]
    metrics += [("loss", 1.0, now, 0)]  # a duplicate row: written once
    record = RunRecord(
        "tests",
        run_name="r",
        params={"trainer.lr": "0.1", "seed": "7"},
        metrics=metrics,
        status=RunStatus.FINISHED,
        start_ms=now,
        end_ms=now + 100,
    )
    bulk = tracking._insert_new_run
    took: list[bool] = []
    monkeypatch.setattr(tracking, "_insert_new_run", lambda *a: took.append(bulk(*a)) or took[-1])
    # (the MLflow way: log_batch, then set_terminated)
    fast = write_record(record, tracking_uri)
    assert took == [True]  # the bulk way, on SQLite
    monkeypatch.setattr(tracking, "_insert_new_run", lambda *a: False)
    slow = write_record(record, tracking_uri)

    client = MlflowClient(tracking_uri)

    def read(run_id: str) -> tuple:
        data = client.get_run(run_id).data
        history = {
            k: sorted(
                (m.step, m.timestamp, "nan" if math.isnan(m.value) else m.value)
                for m in client.get_metric_history(run_id, k)
            )
            for k in ("loss", "acc", "odd", "low")
        }
        latest = {k: "nan" if math.isnan(v) else v for k, v in data.metrics.items()}
        return data.params, latest, history

    assert read(fast) == read(slow)
    params, latest, history = read(fast)
    assert latest["acc"] == 0.7 and latest["loss"] == 1.0 / 30 and len(history["loss"]) == 30
    assert history["odd"][1][2] == 1.7976931348623157e308
    assert client.get_run(fast).info.status == "FINISHED"
    assert client.get_run(fast).info.end_time == now + 100
