"""A Ray kept running on this machine between commands (``fedsweep ray up``), so that a run
or a sweep that wants Ray joins it in a second instead of starting one of its own.

It is a one-node lab without the lab's other services: a Ray head with pinned ports, its own
temp dir and token authentication, described in ``<dir>/ray.json`` (default
``~/.fedsweep/ray``), stopped by its pids.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from clusters.lab._procs import LabError, ray_temp, ray_token, session_alive
from clusters.lab._services import RayNode

__all__ = ["LocalRay", "default_dir"]

_FILE = "ray.json"


def default_dir() -> Path:
    """Where ``fedsweep ray up`` keeps its Ray's description unless told otherwise."""
    return Path.home() / ".fedsweep" / "ray"


@dataclass
class LocalRay:
    """A Ray head on loopback started by ``fedsweep ray up``."""

    dir: Path
    node: RayNode
    temp: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.node.ports['gcs']}"

    @property
    def token_path(self) -> Path:
        return self.dir / "ray_token"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to join it (Ray's token authentication)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    @classmethod
    def up(cls, dir: Path | None = None, cpus: int | None = None) -> LocalRay:
        """Starts a Ray head with ``cpus`` CPUs (default: all of them) and describes it.

        Raises:
            LabError: one runs there already, or it did not start.
        """
        root = (dir or default_dir()).resolve()
        found = cls.find(root)
        if found is not None:
            raise LabError(f"a Ray runs at {found.address} already ({root}); `fedsweep ray down`")
        ray_token(root)
        temp = ray_temp("fsray-")
        node = RayNode.head_node(cpus or os.cpu_count() or 1, 0, 0)  # Ray's object store size
        node.dashboard = False  # processes and a second of start that runs and sweeps never use
        local = cls(root, node, temp)
        try:
            node.start(local.address, temp, root / "ray.log", {**os.environ, **local.env})
        except BaseException:
            node.stop()
            shutil.rmtree(temp, ignore_errors=True)
            raise
        local._save()
        return local

    @classmethod
    def find(cls, dir: Path | None = None) -> LocalRay | None:
        """The Ray described in ``dir`` (default :func:`default_dir`) if it still runs and
        answers; None otherwise."""
        path = (dir or default_dir()) / _FILE
        try:
            raw = json.loads(path.read_text())
            node = RayNode(**raw["node"])
            local = cls(Path(raw["dir"]), node, Path(raw["temp"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if node.leader is None or not session_alive(node.leader):
            return None
        try:
            socket.create_connection(("127.0.0.1", node.ports["gcs"]), timeout=2).close()
        except OSError:
            return None
        return local

    def down(self) -> None:
        """Stops the head and everything it started, by its pids; forgets it."""
        self.node.stop()
        shutil.rmtree(self.temp, ignore_errors=True)
        (self.dir / _FILE).unlink(missing_ok=True)

    def _save(self) -> None:
        raw = {"dir": str(self.dir), "node": self.node.to_json(), "temp": str(self.temp)}
        tmp = self.dir / f".{_FILE}.tmp"
        tmp.write_text(json.dumps(raw, indent=2))
        tmp.replace(self.dir / _FILE)
