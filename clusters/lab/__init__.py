"""A lab on one machine: PostgreSQL, an MLflow tracking server on it, and a Ray cluster of a
head and worker nodes, each with its own pinned ports, on loopback.

``Lab.up(dir)`` starts everything and writes ``<dir>/lab.json`` (the addresses, the
environment to use, and the pid that leads each service's process session);
``Lab.open(dir)`` reads it back, ``status()`` says what answers and ``down()`` stops it all,
by those pids only. Ray's token authentication is on: the token is ``<dir>/ray_token`` and
every process the lab starts gets ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusters.lab._local import LocalRay
from clusters.lab._postgres import Postgres, postgres_bin
from clusters.lab._procs import (
    LabError,
    free_port,
    ray_temp,
    ray_token,
    session_alive,
    wait_until,
)
from clusters.lab._services import MlflowServer, RayNode

__all__ = ["Lab", "LabError", "LocalRay", "Postgres", "postgres_bin"]

_FILE = "lab.json"
RAY_HEALTH = {
    # a lost node is noticed within a few seconds, not the default half minute
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "5",
}


@dataclass
class Lab:
    """A running (or stopped) lab, as ``lab.json`` describes it."""

    dir: Path
    postgres: Postgres
    mlflow: MlflowServer
    nodes: list[RayNode]
    ray_temp: Path
    gpus_per_node: int = 0
    env: dict[str, str] = field(default_factory=dict)
    """The environment a process needs to use the lab (Ray's token, the tracking URI)."""

    # ------------------------------------------------------------------ addresses

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.uri

    @property
    def storage_url(self) -> str:
        return self.postgres.url("optuna")

    @property
    def ray_address(self) -> str:
        return f"127.0.0.1:{self.nodes[0].ports['gcs']}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.nodes[0].ports['dashboard']}"

    @property
    def token_path(self) -> Path:
        return self.dir / "ray_token"

    def addresses(self) -> dict[str, str]:
        return {
            "tracking_uri": self.tracking_uri,
            "storage_url": self.storage_url,
            "ray_address": self.ray_address,
            "dashboard": self.dashboard,
            "job_server": self.dashboard,
            "ray_client": f"ray://127.0.0.1:{self.nodes[0].ports['client']}",
        }

    # ------------------------------------------------------------------ up and down

    @classmethod
    def up(
        cls,
        dir: str | os.PathLike[str],
        nodes: int = 3,
        gpus_per_node: int = 0,
        cpus_per_node: int = 1,
        object_store_mb: int = 200,
        max_connections: int = 100,
    ) -> Lab:
        """Starts a lab in ``dir`` (made if missing) and returns it.

        Raises:
            LabError: one is running there already, or a service did not start (what was
                started is stopped again).
        """
        root = Path(dir).resolve()
        if (root / _FILE).exists() and cls.open(root).running():
            raise LabError(f"a lab is running in {root}; `fedsweep lab down --dir {root}` first")
        if nodes < 1:
            raise LabError(f"--nodes must be >= 1, got {nodes}")
        token = ray_token(root)
        temp = ray_temp("fslab-")
        pg = Postgres(_postgres_root(root), free_port(), max_connections)
        server = MlflowServer(pg.url("mlflow"), root / "artifacts", free_port())
        ray_nodes = [RayNode.head_node(cpus_per_node, gpus_per_node, object_store_mb << 20)]
        ray_nodes += [
            RayNode(i, False, cpus_per_node, gpus_per_node, object_store_mb << 20)
            for i in range(1, nodes)
        ]
        lab = cls(root, pg, server, ray_nodes, temp, gpus_per_node)
        lab.env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "MLFLOW_TRACKING_URI": lab.tracking_uri,
        }
        try:
            pg.init()
            pg.start()
            for db in ("mlflow", "optuna"):
                pg.create_database(db)
            lab.save()
            server.start(root / "logs" / "mlflow.log", lab.process_env())
            lab.save()
            for node in ray_nodes:
                node.start(
                    lab.ray_address,
                    temp,
                    root / "logs" / f"ray-node-{node.index}.log",
                    lab.process_env(ray=True),
                )
                lab.save()
            if not wait_until(lambda: lab._job_server_up(), 120, 1.0):
                raise LabError(f"the Ray job server at {lab.dashboard} did not answer")
        except BaseException:
            lab.down()
            raise
        return lab

    @classmethod
    def open(cls, dir: str | os.PathLike[str]) -> Lab:
        """The lab described in ``dir``.

        Raises:
            LabError: there is none, or its file is unreadable.
        """
        path = Path(dir).resolve() / _FILE
        try:
            raw = json.loads(path.read_text())
            pg = Postgres(Path(raw["postgres"]["root"]), raw["postgres"]["port"])
            pg.max_connections = raw["postgres"]["max_connections"]
            m = raw["mlflow"]
            server = MlflowServer(m["backend"], Path(m["artifacts"]), m["port"], leader=m["leader"])
            nodes = [RayNode(**n) for n in raw["nodes"]]
            return cls(
                Path(raw["dir"]),
                pg,
                server,
                nodes,
                Path(raw["ray_temp"]),
                raw.get("gpus_per_node", 0),
                dict(raw["env"]),
            )
        except FileNotFoundError:
            raise LabError(
                f"no lab in {path.parent} (no {_FILE}); `fedsweep lab up` makes one"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LabError(f"{path}: unreadable lab file ({type(exc).__name__}: {exc})") from None

    def save(self) -> None:
        raw: dict[str, Any] = {
            "dir": str(self.dir),
            **self.addresses(),
            "token_path": str(self.token_path),
            "env": self.env,
            "ray_temp": str(self.ray_temp),
            "gpus_per_node": self.gpus_per_node,
            "postgres": {
                "root": str(self.postgres.root),
                "port": self.postgres.port,
                "max_connections": self.postgres.max_connections,
                "pid": self.postgres.pid(),
            },
            "mlflow": {
                "backend": self.mlflow.backend,
                "artifacts": str(self.mlflow.artifacts),
                "port": self.mlflow.port,
                "leader": self.mlflow.leader,
            },
            "nodes": [n.to_json() for n in self.nodes],
        }
        tmp = self.dir / f".{_FILE}.tmp"
        tmp.write_text(json.dumps(raw, indent=2))
        tmp.replace(self.dir / _FILE)

    def process_env(self, ray: bool = False) -> dict[str, str]:
        """This process's environment plus the lab's (and Ray's health settings for nodes)."""
        return {**os.environ, **self.env, **(RAY_HEALTH if ray else {})}

    def status(self) -> dict[str, bool]:
        """Which services answer: postgres, mlflow, ray node 0, 1, ..."""
        out = {"postgres": self._postgres_up(), "mlflow": self.mlflow.healthy()}
        for n in self.nodes:
            out[f"ray node {n.index}"] = n.leader is not None and session_alive(n.leader)
        return out

    def running(self) -> bool:
        return any(self.status().values())

    def down(self) -> None:
        """Stops every service the lab started (the worker nodes first), by their pids, and
        removes Ray's temp dir (its sessions' sockets and logs)."""
        for node in reversed(self.nodes):
            node.stop()
        self.mlflow.stop()
        try:
            self.postgres.stop()
        except LabError:
            pass
        if not any(n.leader is not None and session_alive(n.leader) for n in self.nodes):
            shutil.rmtree(self.ray_temp, ignore_errors=True)
        if self.dir.exists():
            self.save()

    # ------------------------------------------------------------------ faults (tests)

    def kill_node(self, index: int) -> None:
        """Kills a node's raylet and workers with SIGKILL, as a lost machine."""
        self.nodes[index].stop(signal.SIGKILL)
        self.save()

    def start_node(self, index: int) -> None:
        """Starts a (worker) node again, on its own ports."""
        node = self.nodes[index]
        node.start(
            self.ray_address,
            self.ray_temp,
            self.dir / "logs" / f"ray-node-{node.index}.log",
            self.process_env(ray=True),
        )
        self.save()

    def node_of(self, ray_node_id: str) -> int | None:
        """The index of the lab's node with this Ray node id."""
        for node in self.nodes:
            if node.node_id() == ray_node_id:
                return node.index
        return None

    def restart_mlflow(self, down_for: float = 0.0) -> None:
        """Stops the tracking server, waits ``down_for`` seconds, starts it again."""
        import time

        self.mlflow.stop()
        time.sleep(down_for)
        self.mlflow.start(self.dir / "logs" / "mlflow.log", self.process_env())
        self.save()

    # ------------------------------------------------------------------ probes

    def _postgres_up(self) -> bool:
        try:
            return self.postgres.sql("select 1") == "1"
        except (LabError, OSError):
            return False

    def _job_server_up(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=3).read()
        except urllib.error.HTTPError:
            return True  # it answers (401 without the token): it is up
        except OSError:
            return False
        return True


def _postgres_root(root: Path) -> Path:
    """Where the lab's PostgreSQL keeps its files: ``<root>/postgres``, unless the lab runs as
    root in a directory the ``postgres`` user (the server's, as PostgreSQL refuses to run as
    root) cannot reach, such as one under ``/root``. Then a directory of the ``postgres``
    user's own, named after the lab's, so that the same lab finds it again."""
    inside = root / "postgres"
    if os.geteuid() != 0:
        return inside
    try:
        home = Path(pwd.getpwnam("postgres").pw_dir)
    except KeyError:  # no postgres user: the server is not installed, which init() says
        return inside
    reach = subprocess.run(
        ["runuser", "-u", "postgres", "--", "test", "-x", str(root)], check=False
    )
    if reach.returncode == 0:
        return inside
    away = home / "fedsweep-labs" / hashlib.sha256(str(root).encode()).hexdigest()[:16]
    away.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(away.parent, "postgres", "postgres")
    return away
