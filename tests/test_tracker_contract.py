"""One contract, every tracker: the same suite runs against the live MLflow tracker and the
recording one (written afterwards, as a sweep's driver writes a trial), on a real store."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from orchestrator.tracking import (  # noqa: E402
    MlflowTracker,
    RecordingTracker,
    RunStatus,
    Tracker,
    write_record,
)


@dataclass
class Backend:
    """A tracker to drive, and how to get the MLflow run it produced once it has ended."""

    tracker: Tracker
    written: Callable[[], str]


@pytest.fixture(params=["live", "recorded"])
def backend(request, tracking_uri) -> Backend:
    if request.param == "live":
        live = MlflowTracker(tracking_uri, "contract", flush_every=2)
        return Backend(live, lambda: live.run_id)
    recording = RecordingTracker("contract")
    return Backend(recording, lambda: write_record(recording.record, tracking_uri))


def _figure():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    return fig


def _artifact(client: MlflowClient, run_id: str, path: str, tmp) -> bytes:
    return open(client.download_artifacts(run_id, path, str(tmp)), "rb").read()


def test_is_a_tracker(backend):
    assert isinstance(backend.tracker, Tracker)


def test_a_finished_run_holds_everything_logged(backend, tracking_uri, tmp_path):
    t = backend.tracker
    t.start({"trainer.lr": 0.1, "model.hidden": [16]}, {"trainer": "fedavg"}, run_name="c")
    for step in range(5):
        t.log_metrics(step, {"loss": 1.0 / (step + 1), "acc": step / 10})
    t.flush()
    t.set_tags({"extra": "yes"})
    t.log_text("hello", "notes/hello.txt")
    t.log_figure(_figure(), "plots/line.png")
    t.log_table(pa.table({"a": [1, 2]}), "tables/a.parquet")
    t.log_bytes(b"\x00\x01weights", "checkpoint/model.pt")
    t.end(RunStatus.FINISHED)
    run_id = backend.written()
    client = MlflowClient(tracking_uri)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "c"
    assert r.data.params == {"trainer.lr": "0.1", "model.hidden": "[16]"}
    assert r.data.tags["trainer"] == "fedavg" and r.data.tags["extra"] == "yes"
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert _artifact(client, run_id, "notes/hello.txt", tmp_path) == b"hello"
    assert _artifact(client, run_id, "plots/line.png", tmp_path)[:4] == b"\x89PNG"
    table = pq.read_table(io.BytesIO(_artifact(client, run_id, "tables/a.parquet", tmp_path)))
    assert table.column("a").to_pylist() == [1, 2]
    assert _artifact(client, run_id, "checkpoint/model.pt", tmp_path) == b"\x00\x01weights"


@pytest.mark.parametrize("status", [RunStatus.FAILED, RunStatus.KILLED])
def test_a_run_ended_by_an_error_keeps_it(backend, tracking_uri, tmp_path, status):
    t = backend.tracker
    t.start({}, {})
    t.log_metrics(0, {"loss": 2.0})
    try:
        raise RuntimeError("host died")
    except RuntimeError as exc:
        t.end(status, exc)
    run_id = backend.written()
    client = MlflowClient(tracking_uri)
    r = client.get_run(run_id)
    assert r.info.status == status.value
    assert r.data.tags["error"] == "RuntimeError: host died"
    assert b"host died" in _artifact(client, run_id, "error.txt", tmp_path)
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [2.0]


def test_a_child_run_nests_under_its_parent(backend, tracking_uri):
    parent = MlflowTracker(tracking_uri, "contract")
    parent.start({}, {"fedsweep.kind": "sweep"})
    backend.tracker.start({}, {}, parent_run_id=parent.run_id)
    backend.tracker.end(RunStatus.FINISHED)
    child = MlflowClient(tracking_uri).get_run(backend.written())
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id
    parent.end(RunStatus.FINISHED)
