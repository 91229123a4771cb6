"""A PostgreSQL server from the distribution's binaries, in a directory of its own."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from clusters.lab._procs import LabError

__all__ = ["Postgres", "postgres_bin"]


def postgres_bin() -> Path | None:
    """The newest installed server's bin directory (Debian's ``postgresql`` package)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class Postgres:
    """A server whose data lives under ``root``, listening on loopback at ``port``.

    As root, the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).
    Connections are trusted on loopback: the lab is one machine's.
    """

    root: Path
    port: int
    max_connections: int = 100

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str) -> str:
        """SQLAlchemy's URL of a database (psycopg 3, SQLAlchemy's PostgreSQL driver)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        try:
            return subprocess.run(
                [*prefix, *cmd], check=True, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.CalledProcessError as exc:
            last = (exc.stderr or exc.stdout or "").strip().splitlines()
            raise LabError(f"{Path(cmd[0]).name}: {last[-1] if last else exc}") from None

    def _bin(self, name: str) -> str:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise LabError(
                "PostgreSQL's server is not installed (Debian: apt-get install postgresql)"
            )
        return str(bin_dir / name)

    def init(self) -> None:
        """Creates the cluster's files (once)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            self._run(
                self._bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                "--no-sync",
            )  # fmt: skip

    def start(self) -> None:
        """Starts the server and waits until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            f"-c max_connections={self.max_connections} -c fsync=off"
        )
        self._run(
            self._bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
            "-w", "-t", "60", "start", "-o", options,
        )  # fmt: skip

    def stop(self) -> None:
        """Stops the server (fast shutdown: open sessions are ended)."""
        if (self.data / "postmaster.pid").exists():
            self._run(self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Runs one statement with psql; returns its unaligned output."""
        out = self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
            "-Atc", statement,
        )  # fmt: skip
        return out.stdout.strip()

    def create_database(self, name: str) -> None:
        """Creates a database unless it exists."""
        if self.sql(f"select 1 from pg_database where datname = '{name}'") != "1":
            self.sql(f'create database "{name}"')

    def connections(self) -> int:
        """Client connections open now."""
        return int(
            self.sql("select count(*) from pg_stat_activity where backend_type = 'client backend'")
        )
