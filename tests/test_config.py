"""Config loading, overrides and every kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import ConfigError, load_config
from orchestrator.cli import main
from orchestrator.config import flatten, to_dict, to_yaml

from .conftest import CONFIGS, tiny


def error_of(source, overrides=()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(source, list(overrides))
    return info.value


def test_defaults_and_overrides_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  rounds: 7\ndata:\n  name: wine\n")
    cfg = load_config(path, ["trainer.lr=0.2", "partition.num_parties=3", "model.hidden=[8,4]"])
    assert cfg.trainer.rounds == 7
    assert cfg.trainer.lr == 0.2
    assert cfg.data.name == "wine"
    assert cfg.partition.num_parties == 3
    assert cfg.model.hidden == [8, 4]
    assert cfg.trainer.batch_size == 32  # untouched default


def test_interpolation_resolves(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 5\ndata:\n  name: synthetic\n  random_state: ${seed}\n")
    assert load_config(path).data.random_state == 5


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        (["trainer.nope=1"], "trainer.nope", "unknown key"),
        (["nope=1"], "nope", "unknown key"),
        (["trainer.rounds=abc"], "trainer.rounds", "wrong type"),
        (["trainer.rounds=0"], "trainer.rounds", "must be >= 1"),
        (["trainer.fraction=1.5"], "trainer.fraction", "(0, 1]"),
        (["trainer.fraction=0"], "trainer.fraction", "(0, 1]"),
        (["trainer.lr=-0.1"], "trainer.lr", "must be > 0"),
        (["trainer.fedprox.mu=-1"], "trainer.fedprox.mu", ">= 0"),
        (["data.test_fraction=1"], "data.test_fraction", "(0, 1)"),
        (["partition.alpha=0"], "partition.alpha", "> 0"),
        (
            ["trainer.name=fedsgd"],
            "trainer.name",
            "valid: centralized, cmfl, condense, distill, dpsvrg, dsgd, dspg, fed_condense, fedavg, "
            "fedcssl, fedego, "
            "fedgssl, fedhssl, fednova, fedprox, gfl, graph_centralized, graph_fedavg, "
            "graph_fedprox, graph_local, scaffold, vfl_supervised, vhnn, vlr, vsnn",
        ),
        (
            ["data.name=mnist"],
            "data.name",
            "valid: breast_cancer, digits, graph, hf, parquet, planetoid, sbm, synthetic, "
            "synthetic_images, torchvision, wine",
        ),
        (
            ["model.name=resnet50"],
            "model.name",
            "valid: cnn, convnet, gcn, image_cnn, logreg, mlp, resnet, sage, vit",
        ),
        (
            ["partition.name=zipf"],
            "partition.name",
            "valid: dirichlet, exponential, iid, inner_dirichlet, label_skew, linear, louvain, "
            "natural, pathological, quantity_skew, random_nodes, shards, square, vertical",
        ),
        (["runtime.executor=dask"], "runtime.executor", "valid: auto, local, ray"),
        (["data.name=parquet"], "data.path", "required"),
        (["data.name=parquet", "data.path=/nonexistent/x.parquet"], "data.path", "no such file"),
        (["trainer.rounds"], "trainer.rounds", "key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, key, fragment):
    err = error_of(None, overrides)
    assert err.key == key
    assert fragment in err.problem
    assert str(err).startswith(f"config error: {key}: ")
    assert "\n" not in str(err)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  roundz: 3\n")
    assert error_of(path).key == "trainer.roundz"


def test_wrong_type_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("partition:\n  num_parties: many\n")
    err = error_of(path)
    assert err.key == "partition.num_parties" and "wrong type" in err.problem


def test_missing_file_and_directory(tmp_path):
    assert error_of(tmp_path / "absent.yaml").problem == "no such file"
    assert error_of(tmp_path).problem == "not a file"


def test_unreadable_file(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert "cannot read" in error_of(path).problem


def test_malformed_yaml_gives_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  rounds: [1, 2\n")
    err = error_of(path)
    assert err.problem.startswith("malformed YAML at line")


def test_top_level_must_be_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    assert "mapping" in error_of(path).problem


def test_yaml_cannot_execute_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    err = error_of(path)
    assert "malformed YAML" in err.problem
    assert not marker.exists()


def test_flatten_and_yaml_roundtrip():
    cfg = load_config(None, ["trainer.rounds=4"])
    flat = flatten(to_dict(cfg))
    assert flat["trainer.rounds"] == 4
    assert flat["trainer.fedprox.mu"] == 0.01
    assert "rounds: 4" in to_yaml(cfg)


def test_cli_show(capsys):
    assert main(["show", str(CONFIGS / "quickstart.yaml"), "trainer.rounds=3"]) == 0
    out = capsys.readouterr().out
    assert "rounds: 3" in out and "name: fedavg" in out


def test_cli_bad_input_one_line_exit_2_no_run(workdir):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            str(CONFIGS / "quickstart.yaml"),
            "trainer.fraction=2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["config error: trainer.fraction: must be in (0, 1], got 2.0"]
    assert "Traceback" not in proc.stderr
    assert not (workdir / "mlflow.db").exists()  # no MLflow run was created


def test_cli_data_error_creates_no_run(workdir):
    # A data-dependent problem (found only once the data is loaded) must not leave a run either.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            str(CONFIGS / "quickstart.yaml"),
            "runtime.executor=local",
            "data.name=wine",
            "model.name=cnn",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("config error: model.name: cnn needs square images")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (workdir / "mlflow.db").exists()


def test_configure_sets_typed_values_as_the_loader_would():
    """A sweep's driver builds each trial's config with configure(): it must give what the
    loader gives for the same values, and refuse what the loader refuses."""
    from orchestrator.config import configure

    base = load_config(tiny())
    values = {
        "trainer.lr": 1e-05,
        "trainer.name": "fedprox",
        "trainer.parties_per_round": None,
        "seed": 3,
        "trainer.fedprox.mu": 1,  # an int where a float is asked: a float
        "trainer.optimizer": "adam",
        "model.hidden": [8, 4],
        "trainer.stragglers": {"deadline": 2.5, "mean": 1.0},
    }
    overrides = [
        "trainer.lr=1e-05",
        "trainer.name=fedprox",
        "trainer.parties_per_round=null",
        "seed=3",
        "trainer.fedprox.mu=1",
        "trainer.optimizer=adam",
        "model.hidden=[8, 4]",
        "trainer.stragglers={deadline: 2.5, mean: 1.0}",
    ]
    made = configure(base, values)
    assert made == load_config(tiny(), overrides)
    assert made.trainer.fedprox.mu == 1.0 and isinstance(made.trainer.fedprox.mu, float)
    assert base.trainer.lr == tiny()["trainer"]["lr"]  # the base is not touched
    distill = load_config({"trainer": {"name": "distill"}})
    assert configure(distill, {"trainer.distill.assistant.name": "vit"}).trainer.distill.assistant
    with pytest.raises(ConfigError, match="trainer.lr: wrong type"):
        configure(base, {"trainer.lr": "abc"})
    with pytest.raises(ConfigError, match="trainer.nope: unknown key"):
        configure(base, {"trainer.nope": 1})
    with pytest.raises(ConfigError, match="trainer.rounds: must be >= 1, got 0"):
        configure(base, {"trainer.rounds": 0})
    with pytest.raises(ConfigError, match="trainer.optimizer: unknown name 'rmsprop'; valid: adam"):
        configure(base, {"trainer.optimizer": "rmsprop"})
    with pytest.raises(ConfigError, match=r"model.hidden\[1\]: wrong type"):
        configure(base, {"model.hidden": [4, "x"]})


def test_relative_paths_are_made_absolute_when_the_config_loads(workdir):
    cfg = load_config(tiny(partition__output_dir="parts"))
    assert cfg.partition.output_dir == str(workdir / "parts")
    assert Path(cfg.trainer.decentralized.cache_dir).is_absolute()
