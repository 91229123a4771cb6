"""No secret reaches MLflow (issue 20): environment reads are refused unless allowed, and
what is logged (params, tags, config.yaml, error text) has URI passwords and secret-named
values masked. Each test plants secrets and then searches the whole store, the database
file and every artifact, for them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from orchestrator import run
from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.errors import ConfigError
from orchestrator.secrets import MASK, is_secret_key, redact, redact_text

from .conftest import CONFIGS, spawn, wait_for

ENV_SECRET = "env-s3cr3t-0d5f"
URI_SECRET = "uri-s3cr3t-9a1c"
TAG_SECRET = "tag-s3cr3t-77e2"


def _stored(workdir: Path) -> bytes:
    """Every byte the tracking store holds: its database and every artifact file."""
    blob = b""
    for path in workdir.rglob("*"):
        if path.is_file() and (path.suffix == ".db" or "mlruns" in path.parts):
            blob += path.read_bytes()
    return blob


def test_secret_words_and_uri_passwords_are_masked():
    assert redact_text("postgresql://ann:pw@db:5432/x and http://bob:tok@h") == (
        f"postgresql://ann:{MASK}@db:5432/x and http://bob:{MASK}@h"
    )
    assert redact_text("http://host/a@b") == "http://host/a@b"  # no password: untouched
    assert [is_secret_key(k) for k in ("db_password", "x.apiKey", "aws_secret_access_key")] == [
        True,
        True,
        True,
    ]
    assert not any(is_secret_key(k) for k in ("trainer.lr", "data.label", "monkey", "tokens"))
    assert redact({"a.token": "v", "b": ["s://u:p@h"], "c": 1}) == {
        "a.token": MASK,
        "b": [f"s://u:{MASK}@h"],
        "c": 1,
    }


@pytest.mark.parametrize("command", ["show", "run", "sweep", "submit"])
def test_reading_the_environment_is_refused_unless_allowed(workdir, capsys, monkeypatch, command):
    monkeypatch.setenv("FEDSWEEP_TEST_SECRET", ENV_SECRET)
    monkeypatch.delenv("FEDSWEEP_ALLOW_ENV", raising=False)
    cfg = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    cfg.setdefault("sweep", {})["register_as"] = "${oc.env:FEDSWEEP_TEST_SECRET}"
    (workdir / "exp.yaml").write_text(yaml.safe_dump(cfg))
    (workdir / "space.yaml").write_text(
        "objective: {metric: test_accuracy}\n"
        "params: {trainer.lr: {type: float, low: 0.01, high: 0.2}}\n"
    )
    argv = [
        command,
        "exp.yaml",
        *(["--space", "space.yaml"] if command in ("sweep", "submit") else []),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "config error: sweep.register_as: reads an environment variable (${oc.env:...}); "
        "pass --allow-env to allow it"
    )
    assert not list(workdir.glob("mlflow.db")) and not (workdir / ".fedsweep").exists()
    if command == "show":  # allowed, it reads it
        assert main([command, "exp.yaml", "--allow-env"]) == 0
        assert ENV_SECRET in capsys.readouterr().out
    with pytest.raises(ConfigError):
        load_config(workdir / "exp.yaml")
    assert load_config(workdir / "exp.yaml", allow_env=True).sweep.register_as == ENV_SECRET


def test_a_run_logs_no_planted_secret(workdir, tracking_uri, monkeypatch):
    monkeypatch.setenv("FEDSWEEP_TEST_SECRET", ENV_SECRET)
    cfg = load_config(
        CONFIGS / "quickstart.yaml",
        [
            "trainer.rounds=2",
            "runtime.executor=local",
            f"tracking.uri={tracking_uri}",
            "sweep.register_as=${oc.env:FEDSWEEP_TEST_SECRET}",  # read from the environment
            f"sweep.storage=postgresql://ann:{URI_SECRET}@db.example:5432/optuna",
        ],
        allow_env=True,
    )
    result = run(cfg, tags={"api_token": TAG_SECRET, "db": f"mysql://bob:{URI_SECRET}@h/x"})
    stored = _stored(workdir)
    assert stored, "nothing was stored"
    for secret in (ENV_SECRET, URI_SECRET, TAG_SECRET):
        assert secret.encode() not in stored, secret
    logged = mlflow.MlflowClient(tracking_uri).get_run(result.run_id).data
    assert logged.params["sweep.register_as"] == "${oc.env:FEDSWEEP_TEST_SECRET}"
    assert logged.params["sweep.storage"] == f"postgresql://ann:{MASK}@db.example:5432/optuna"
    assert logged.tags["api_token"] == MASK
    assert logged.tags["db"] == f"mysql://bob:{MASK}@h/x"
    config_yaml = mlflow.MlflowClient(tracking_uri).download_artifacts(
        result.run_id, "config.yaml", str(workdir / "got")
    )
    text = Path(config_yaml).read_text()
    assert "${oc.env:FEDSWEEP_TEST_SECRET}" in text and MASK in text


@pytest.mark.ray
def test_a_sweep_on_a_password_storage_logs_no_password(
    ray_session, workdir, tracking_uri, postgres_url
):
    """The database trusts loopback, so the password is not checked: it is only planted."""
    head, sep, rest = postgres_url.partition("://")
    user, at, host = rest.partition("@")
    storage = f"{head}{sep}{user.split(':')[0]}:{URI_SECRET}{at}{host}"
    from orchestrator import sweep

    result = sweep(
        CONFIGS / "quickstart.yaml",
        Path(__file__).parent.parent / "search_spaces" / "fedavg.yaml",
        overrides=["trainer.rounds=2", f"tracking.uri={tracking_uri}"],
        trials=1,
        study="secret",
        storage=storage,
    )
    assert result.n_complete == 1
    assert URI_SECRET.encode() not in _stored(workdir)
    parent = mlflow.MlflowClient(tracking_uri).get_run(result.parent_run_id).data
    assert MASK in parent.params["sweep.storage_url"]


def test_a_tracking_server_that_goes_away_ends_the_run_in_one_line(workdir, sessions):
    """MLflow's retries (here 2, 0 and 2 s apart) spent, the run ends with one line naming
    the server and the run to resume, instead of hanging for minutes."""
    from clusters.lab._services import MlflowServer

    from .conftest import free_port

    server = MlflowServer(
        backend=f"sqlite:///{workdir / 'server.db'}",
        artifacts=workdir / "artifacts",
        port=free_port(),
        workers=1,
    )
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
    server.start(workdir / "server.log", env)
    try:
        proc = spawn(
            [
                sys.executable, "-m", "orchestrator.cli", "run",
                str(CONFIGS / "quickstart.yaml"), "--quiet",
                f"tracking.uri={server.uri}", "runtime.executor=local",
                "trainer.rounds=100000", "tracking.flush_every=1",
                "runtime.checkpoint_every=0",
            ],
            workdir,
            sessions,
            env,
        )  # fmt: skip
        client = mlflow.MlflowClient(server.uri)

        def logging() -> bool:
            exps = client.search_experiments()
            runs = client.search_runs([e.experiment_id for e in exps]) if exps else []
            return bool(runs and runs[0].data.metrics)

        wait_for(lambda: proc.poll() is not None or logging(), 120, "the run's first metrics")
        run_id = client.search_runs([e.experiment_id for e in client.search_experiments()])[
            0
        ].info.run_id
    finally:
        server.stop()
    out, err = proc.communicate(timeout=180)
    lines = err.strip().splitlines()
    assert proc.returncode == 1, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith(f"tracking error: {server.uri}: the server stopped answering")
    assert f"--resume {run_id}" in lines[0]
