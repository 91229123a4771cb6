"""The lab's long-running services: an MLflow tracking server and Ray nodes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clusters.lab._procs import (
    LabError,
    free_port,
    session_members,
    spawn,
    stop_session,
    wait_until,
)

__all__ = ["MlflowServer", "RayNode"]


@dataclass
class MlflowServer:
    """``mlflow server`` on a database, serving the artifacts stored under ``artifacts``.

    Args:
        backend: the backend store (a PostgreSQL URL).
        artifacts: where artifacts are kept; clients reach them through the server only.
        port: the loopback port.
        workers: server processes; each holds a small database pool (``pool_size``).
    """

    backend: str
    artifacts: Path
    port: int
    workers: int = 2
    pool_size: int = 3
    leader: int | None = None
    """The session leader's pid while it runs."""

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log: Path, env: Mapping[str, str], timeout: float = 120) -> None:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend,
            "--artifacts-destination", str(self.artifacts),
            "--serve-artifacts",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", str(self.workers),
            "--allowed-hosts", f"127.0.0.1:{self.port},localhost:{self.port}",
        ]  # fmt: skip
        server_env = {
            **env,
            # a bounded pool per server process: P parallel trials never exhaust PostgreSQL
            "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(self.pool_size),
            "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "0",
            "MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE": "300",
        }
        proc = spawn(cmd, log, server_env)
        self.leader = proc.pid
        if not wait_until(lambda: self.healthy() or proc.poll() is not None, timeout, 0.5):
            raise LabError(
                f"the MLflow server on port {self.port} did not answer in {timeout:.0f} s"
            )
        if not self.healthy():
            raise LabError(f"the MLflow server exited; see {log}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.leader is not None:
            stop_session(self.leader)
            self.leader = None


def _ports() -> dict[str, int]:
    names = (
        "node_manager", "object_manager", "agent_listen", "agent_grpc", "runtime_env",
        "metrics",
    )  # fmt: skip
    ports: dict[str, int] = {}
    for name in names:
        port = free_port()
        while port in ports.values():  # the kernel may hand a closed port out again
            port = free_port()
        ports[name] = port
    # Workers get a block below the kernel's ephemeral range, where every other port above
    # comes from: taken from there, the block could cover one of them (Ray refuses that).
    ports["min_worker"], ports["max_worker"] = _worker_block()
    return ports


def _worker_block(span: int = 60) -> tuple[int, int]:
    """A block of ``span + 1`` ports below 32768 that nobody listens on, a new one at each
    call in this process (so the nodes of a lab never share one)."""
    global _next_block
    while _next_block + span < 32768:
        low, _next_block = _next_block, _next_block + span + 1
        if all(_free(p) for p in (low, low + span // 2, low + span)):
            return low, low + span
    raise LabError("no free block of ports for Ray's workers below 32768")


_next_block = 20000 + 61 * (os.getpid() % 100)
"""Where the next block of worker ports starts; per process, so two labs on one machine
begin apart."""


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class RayNode:
    """One Ray node of the lab (``ray start``), every port pinned when the lab was made."""

    index: int
    head: bool
    num_cpus: int
    num_gpus: int = 0
    object_store_bytes: int = 200 * 1024 * 1024
    ports: dict[str, int] = field(default_factory=_ports)
    leader: int | None = None
    dashboard: bool = True
    """A head's dashboard and job server (a lab's are its job API)."""

    @classmethod
    def head_node(cls, num_cpus: int, num_gpus: int, object_store_bytes: int) -> RayNode:
        node = cls(0, True, num_cpus, num_gpus, object_store_bytes)
        node.ports.update(gcs=free_port(), dashboard=free_port(), client=free_port())
        return node

    def command(self, gcs: str, temp_dir: Path) -> list[str]:
        """``ray start`` for this node. Each node has a temp dir of its own, as separate
        machines would: nodes sharing one would share the unpacked working directory of a
        job, which one node's runtime-env agent re-extracts under another's job driver."""
        p = self.ports
        cmd = [
            sys.executable, "-m", "ray.scripts.scripts", "start",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.num_cpus}",
            f"--num-gpus={self.num_gpus}",
            f"--node-manager-port={p['node_manager']}",
            f"--object-manager-port={p['object_manager']}",
            f"--min-worker-port={p['min_worker']}",
            f"--max-worker-port={p['max_worker']}",
            f"--dashboard-agent-listen-port={p['agent_listen']}",
            f"--dashboard-agent-grpc-port={p['agent_grpc']}",
            f"--runtime-env-agent-port={p['runtime_env']}",
            f"--metrics-export-port={p['metrics']}",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir / f'n{self.index}'}",
        ]  # fmt: skip
        if self.object_store_bytes:  # else Ray's default share of the memory
            cmd.append(f"--object-store-memory={self.object_store_bytes}")
        if not self.head:
            return [*cmd, f"--address={gcs}"]
        cmd += ["--head", f"--port={p['gcs']}", f"--ray-client-server-port={p['client']}"]
        if not self.dashboard:
            return [*cmd, "--include-dashboard=false"]
        return [
            *cmd,
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={p['dashboard']}",
        ]

    def start(self, gcs: str, temp_dir: Path, log: Path, env: Mapping[str, str]) -> None:
        proc = spawn(self.command(gcs, temp_dir), log, env)
        self.leader = proc.pid
        try:
            code = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            raise LabError(f"ray start (node {self.index}) took over 180 s; see {log}") from None
        if code != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise LabError(f"ray start (node {self.index}) failed: {' | '.join(tail)}")

    def stop(self, sig: int | None = None) -> None:
        """Stops the node's processes (its raylet, workers and agents): gracefully, or with
        ``sig`` at once (SIGKILL: a lost node)."""
        if self.leader is None:
            return
        if sig is None:
            stop_session(self.leader)
        else:
            stop_session(self.leader, grace=0.0, sig=sig)
        self.leader = None

    def node_id(self) -> str | None:
        """The Ray node id of this node while it runs (read off its raylet's command line)."""
        if self.leader is None:
            return None
        for pid in session_members(self.leader):
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for arg in args:
                if arg.startswith(b"--node_id="):
                    return arg.removeprefix(b"--node_id=").decode()
        return None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _json(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
