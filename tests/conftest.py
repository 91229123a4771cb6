"""Shared fixtures: one local Ray for the whole session, MLflow stores in temporary dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray (2 CPUs, no dashboard), started once and always shut down."""
    import ray

    ray.init(
        num_cpus=2, include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1"
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh working directory, so MLflow's default store and artifacts land in tmp."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture()
def tracking_uri(workdir) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


def free_port() -> int:
    """A TCP port nobody listens on now, on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny(**extra: object) -> dict:
    """A small, fast experiment config as a dict."""
    cfg: dict = {
        "seed": 0,
        "data": {"name": "digits"},
        "partition": {"name": "iid", "num_parties": 6},
        "model": {"name": "mlp", "hidden": [16]},
        "trainer": {"name": "fedavg", "rounds": 3, "batch_size": 16, "lr": 0.1},
        "runtime": {"executor": "local"},
        "tracking": {"enabled": False},
    }
    return with_values(cfg, **extra)


def with_values(cfg: dict, **extra: object) -> dict:
    """Sets ``section__key=value`` entries in a config dict (in place) and returns it."""
    for dotted, value in extra.items():
        node = cfg
        *path, last = dotted.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


from .postgres import postgres_url  # noqa: E402,F401 - a fixture for the storage tests


def reap_orphaned_ray(before: set[int]) -> None:
    """Kills Ray processes started since ``before`` that lost their parent (a head or a driver
    that a test killed): they are reparented to init and would otherwise live on."""
    import psutil

    for p in psutil.process_iter(["ppid", "name", "cmdline"]):
        if p.pid in before or p.info["ppid"] != 1:
            continue
        text = " ".join([p.info["name"] or "", *(p.info["cmdline"] or [])])
        if "ray" in text:
            try:
                p.kill()
            except psutil.Error:
                pass
