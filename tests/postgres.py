"""A real PostgreSQL server in a temporary directory, for the storage tests.

The server's binaries come from the distribution's ``postgresql`` package: ``.ci/run`` installs
it, and the fixture installs it too when it is missing and it runs as root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusters.lab import Postgres, postgres_bin
from clusters.lab._procs import free_port


def install_postgres() -> bool:
    """Installs Debian's postgresql package when it is missing and this runs as root;
    whether the server's binaries are there."""
    if postgres_bin() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600
        )
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "postgresql"],
            check=True,
            env=env,
            capture_output=True,
            timeout=900,
        )
    return postgres_bin() is not None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Starts PostgreSQL on a free loopback port; yields a SQLAlchemy URL of an empty database."""
    if not install_postgres():
        pytest.skip(
            "PostgreSQL is not installed and cannot be installed here (needs root and apt-get)"
        )
    root = Path(tempfile.mkdtemp(prefix="fedsweep-pg-"))
    root.chmod(0o755)  # the server runs as the postgres user, which must reach its directory
    server = Postgres(root / "pg", free_port())
    server.init()
    server.start()
    try:
        server.create_database("optuna")
        yield server.url("optuna")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
