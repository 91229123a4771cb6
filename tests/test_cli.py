"""The command line as a user runs it, every shipped config, and the MLflow UI's view of a run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import run

from .conftest import CONFIGS, free_port

SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def fedsweep(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_json_and_progress(workdir):
    proc = fedsweep(
        "run",
        str(CONFIGS / "quickstart.yaml"),
        "trainer.rounds=3",
        "runtime.executor=local",
        "--json",
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    payload = json.loads(lines[-1])
    assert set(payload) == {"run_id", "metrics"}
    assert lines[-2].startswith(f"run {payload['run_id']}  test_accuracy=")
    assert 0 < payload["metrics"]["test_accuracy"] <= 1
    assert "3/3" in proc.stderr  # the progress bar, on stderr
    r = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(payload["run_id"])
    assert r.info.status == "FINISHED" and r.data.params["trainer.rounds"] == "3"


def test_quiet_hides_progress(workdir):
    proc = fedsweep(
        "run",
        str(CONFIGS / "quickstart.yaml"),
        "trainer.rounds=2",
        "runtime.executor=local",
        "tracking.enabled=false",
        "--quiet",
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr
    assert "round/s" not in proc.stderr and "(not tracked)" in proc.stdout


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = resp.read()
    return json.loads(body) if body[:1] == b"{" else body.decode()


@pytest.mark.slow
def test_mlflow_ui_shows_the_run(workdir, tracking_uri):
    result = run(
        CONFIGS / "quickstart.yaml",
        [
            "trainer.rounds=3",
            "runtime.executor=local",
            f"tracking.uri={tracking_uri}",
            "tracking.model_format=pickle",  # also an MLflow model (the default: a checkpoint)
        ],
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                _get(f"{base}/health")
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError("mlflow ui did not come up") from None
                time.sleep(0.5)
        assert "<html" in _get(f"{base}/").lower()
        got = _get(f"{base}/api/2.0/mlflow/runs/get?run_id={result.run_id}")["run"]
        assert got["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in got["data"]["params"]}
        assert params["trainer.name"] == "fedavg"
        curve = _get(
            f"{base}/api/2.0/mlflow/metrics/get-history?run_id={result.run_id}&metric_key=test_accuracy"
        )
        assert [m["step"] for m in curve["metrics"]] == [0, 1, 2]
        files = {
            f["path"]
            for f in _get(f"{base}/api/2.0/mlflow/artifacts/list?run_id={result.run_id}")["files"]
        }
        assert {"config.yaml", "learning_curve.png", "partition", "checkpoint"} <= files
        # MLflow 3 keeps the model as a LoggedModel, shown on the run as one of its outputs
        (output,) = got["outputs"]["model_outputs"]
        model = _get(f"{base}/api/2.0/mlflow/logged-models/{output['model_id']}")["model"]
        assert model["info"]["source_run_id"] == result.run_id and model["info"]["name"] == "model"
    finally:
        server.terminate()
        server.wait(timeout=30)
