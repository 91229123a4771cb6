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
    "storage", ["notaurl://x", "sqlite:////no/such/dir/optuna.db", "postgresql://u@127.0.0.1:1/x"]
)
def test_a_storage_that_cannot_be_opened_is_one_line(project, capsys, storage):
    space = _space(project, "trainer.lr: {type: float, low: 0.01, high: 0.2}")
    _refused(
        capsys,
        ["sweep", "exp.yaml", "--space", space, "--storage", storage],
        f"config error: --storage: cannot open {storage!r}",
    )
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
