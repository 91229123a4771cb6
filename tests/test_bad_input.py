"""Bad input that once ended in a traceback or trained silently: one line, exit 2, nothing
created."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.cli import main

from .conftest import CONFIGS

SPACE = "objective: [test_accuracy]\nparams:\n  {param}\nsampler: {{name: random, seed: 0}}\n"


def _refused(capsys, argv: list[str], expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err, err
    return err


@pytest.fixture()
def project(workdir):
    (workdir / "exp.yaml").write_text((CONFIGS / "quickstart.yaml").read_text())
    return workdir


def _space(project, param: str, name: str = "space.yaml") -> str:
    (project / name).write_text(SPACE.format(param=param))
    return name


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        (
            "trainer.lr: {type: float, low: 0.01, high: .inf}",
            "space error: params.trainer.lr.high: must be a finite number, got inf",
        ),
        (
            "trainer.local_epochs: {type: int, low: 0, high: 4, log: true}",
            "space error: params.trainer.local_epochs.low: a log-scaled range needs low > 0",
        ),
        (
            "trainer.lr: {type: float, low: .nan, high: 0.2}",
            "space error: params.trainer.lr.low: must be a finite number, got nan",
        ),
        ("trainer.nope: {type: float, low: 0.1, high: 0.2}", "unknown config key"),
    ],
)
def test_bad_spaces_are_refused_by_sweep_and_submit(project, capsys, param, expected):
    space = _space(project, param)
    _refused(capsys, ["sweep", "exp.yaml", "--space", space], expected)
    _refused(capsys, ["submit", "exp.yaml", "--space", space], expected)
    assert not (project / "mlflow.db").exists() and not (project / ".fedsweep").exists()


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("notaurl://x", "config error: --storage: cannot open 'notaurl://x'"),
        (
            "sqlite:////no/such/dir/optuna.db",
            "config error: --storage: cannot open 'sqlite:////no/such/dir/optuna.db'",
        ),
        (  # a database server that does not answer: found before anything starts
            "postgresql://u:pw@127.0.0.1:1/x",
            "storage error: postgresql://u:***@127.0.0.1:1/x: no database answers within 10 s"
            " (connection refused)",
        ),
    ],
)
def test_a_storage_that_cannot_be_opened_is_one_line(project, capsys, storage, expected):
    space = _space(project, "trainer.lr: {type: float, low: 0.01, high: 0.2}")
    _refused(capsys, ["sweep", "exp.yaml", "--space", space, "--storage", storage], expected)
    assert not (project / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        ("head:8265", "job error: head:8265: a cluster is its dashboard's address"),
        ("http://127.0.0.1:1", "job error: http://127.0.0.1:1: Failed to connect"),
    ],
)
def test_a_bad_cluster_address_is_one_line(project, capsys, cluster, expected):
    _refused(capsys, ["submit", "exp.yaml", "--cluster", cluster], expected)


def test_submit_refuses_a_non_positive_trial_count(project, capsys):
    space = _space(project, "trainer.lr: {type: float, low: 0.01, high: 0.2}")
    _refused(
        capsys,
        ["submit", "exp.yaml", "--space", space, "--trials", "0"],
        "config error: --trials: must be >= 1, got 0",
    )
    assert not (project / ".fedsweep").exists()


def _parquet(path, label, feature):
    pq.write_table(pa.table({"f0": feature, "f1": np.arange(40.0), "label": label}), path)


@pytest.mark.parametrize(
    ("label", "feature", "expected"),
    [
        (
            [0.0, 1.0, float("nan")] + [1.0] * 37,
            np.ones(40),
            "config error: data.label: column 'label' holds NaN or infinite labels",
        ),
        (
            [0, 1] * 20,
            [np.inf] + [1.0] * 39,
            "config error: data.features: column 'f0' holds infinite values",
        ),
        (
            [0, 1] * 20,
            [None] + [1.0] * 39,
            "config error: data.features: column 'f0' has missing values",
        ),
    ],
)
def test_non_finite_data_is_refused_with_the_column_named(
    project, capsys, label, feature, expected
):
    _parquet(project / "data.parquet", label, feature)
    argv = ["run", "exp.yaml", "data.name=parquet", "data.path=data.parquet"]
    _refused(capsys, [*argv, "runtime.executor=local"], expected)
    assert not (project / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"kind": "local", "pi', "unreadable job record (JSONDecodeError)"),
        ('{"kind": "local"}', "incomplete job record (no pid)"),
        ("[1, 2]", "not a job record"),
    ],
)
def test_a_broken_job_record_is_one_line_naming_the_file(project, capsys, content, expected):
    folder = project / ".fedsweep" / "jobs" / "local-x"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(content)
    for command in ("status", "logs", "cancel", "result"):
        err = _refused(capsys, [command, "local-x"], expected)
        assert str(folder / "job.json") in err


# Overrides anywhere after the config (issue 21): an out-of-range value proves the override
# was read as one, wherever it stands, for every command that takes them.
@pytest.mark.parametrize(
    "argv",
    [
        ["show", "exp.yaml", "trainer.rounds=0"],
        ["show", "exp.yaml", "--traceback", "trainer.rounds=0"],
        ["run", "exp.yaml", "--quiet", "trainer.rounds=0", "--json"],
        ["run", "exp.yaml", "trainer.lr=0.1", "--quiet", "trainer.rounds=0"],
        ["sweep", "exp.yaml", "--space", "{space}", "--trials", "2", "trainer.rounds=0"],
        ["sweep", "exp.yaml", "--space", "{space}", "trainer.rounds=0", "--trials", "2"],
        ["submit", "exp.yaml", "--space", "{space}", "--trials", "2", "trainer.rounds=0"],
        ["submit", "exp.yaml", "--parallel", "1", "trainer.rounds=0"],
    ],
    ids=lambda a: "-".join(x.strip("-") for x in a if not x.endswith(".yaml") and "=" not in x),
)
def test_overrides_are_taken_before_and_after_the_options(project, capsys, argv):
    space = _space(project, "trainer.lr: {type: float, low: 0.01, high: 0.2}")
    argv = [a.replace("{space}", space) for a in argv]
    _refused(capsys, argv, "config error: trainer.rounds: must be >= 1, got 0")
    assert not (project / "mlflow.db").exists() and not (project / ".fedsweep").exists()


def test_an_override_after_the_options_takes_effect(project, capsys):
    assert main(["show", "exp.yaml", "--traceback", "trainer.rounds=7", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "rounds: 7" in out and "seed: 3" in out


def test_what_is_not_an_override_is_still_refused(project, capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "exp.yaml", "--quiet", "--no-such-flag"])
    assert info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


# Every wait bounded (issue 21): a service that does not answer is one line within seconds,
# before anything is created; MLflow's and Ray's own clients would retry for minutes.
def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens


def test_a_tracking_server_that_does_not_answer_is_one_line(project, capsys):
    uri = f"http://127.0.0.1:{_closed_port()}"
    expected = f"tracking error: {uri}: no MLflow server answers within 10 s (connection refused)"
    _refused(capsys, ["run", "exp.yaml", f"tracking.uri={uri}", "--quiet"], expected)
    space = _space(project, "trainer.lr: {type: float, low: 0.01, high: 0.2}")
    _refused(capsys, ["sweep", "exp.yaml", "--space", space, f"tracking.uri={uri}"], expected)
    assert not (project / "mlflow.db").exists()


def test_a_ray_address_that_does_not_answer_is_one_line(project, capsys):
    port = _closed_port()
    _refused(
        capsys,
        ["run", "exp.yaml", "runtime.executor=ray", f"runtime.address=127.0.0.1:{port}"],
        f"cluster error: 127.0.0.1:{port}: no Ray answers within 10 s (connection refused)",
    )
    space = _space(project, "trainer.lr: {type: float, low: 0.01, high: 0.2}")
    _refused(
        capsys,
        ["sweep", "exp.yaml", "--space", space, "--address", f"ray://127.0.0.1:{port}"],
        f"cluster error: ray://127.0.0.1:{port}: no Ray answers within 10 s (connection refused)",
    )
    assert not (project / "mlflow.db").exists()


def test_a_tracking_store_that_cannot_be_made_is_one_line(project, capsys):
    (project / "afile").write_text("")
    uri = f"sqlite:///{project}/afile/sub/mlflow.db"
    _refused(
        capsys,
        ["run", "exp.yaml", f"tracking.uri={uri}", "--quiet"],
        f"config error: tracking.uri: cannot open {uri}: Not a directory",
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.lr=[1,", "trainer.lr"),
        ("trainer.name='fedavg", "trainer.name"),
        ("seed={a", "seed"),
    ],
)
def test_a_malformed_override_value_is_one_line_naming_its_key(project, capsys, override, key):
    _refused(
        capsys, ["run", "exp.yaml", override, "--quiet"], f"config error: {key}: malformed value"
    )
    _refused(capsys, ["show", "exp.yaml", override], f"config error: {key}: malformed value")
