"""A real PostgreSQL server in a temporary directory, for the storage tests.

The server's binaries come from the distribution's ``postgresql`` package: ``.ci/run`` installs
it, and the fixture installs it too when it is missing and it runs as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from .conftest import free_port


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _install() -> None:
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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Starts PostgreSQL on a free loopback port; yields a SQLAlchemy URL of an empty database."""
    bin_dir = _bin_dir()
    if bin_dir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        _install()
        bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed and cannot be installed here (needs root and apt-get)"
        )
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = tempfile.mkdtemp(prefix="fedsweep-pg-")
    data = os.path.join(root, "data")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()

    def run(*cmd):
        return subprocess.run(
            [*as_postgres, *cmd], check=True, capture_output=True, text=True, timeout=120
        )  # noqa: E731

    run(f"{bin_dir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    run(
        f"{bin_dir}/pg_ctl",
        "-D",
        data,
        "-l",
        os.path.join(root, "log"),
        "-w",
        "start",
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
    )
    try:
        deadline = time.time() + 30
        while True:
            probe = subprocess.run(
                [
                    "psql",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "-c",
                    "create database optuna",
                ],
                capture_output=True,
                text=True,
            )
            if probe.returncode == 0:
                break
            if time.time() > deadline:
                raise RuntimeError(f"PostgreSQL did not answer: {probe.stderr}")
            time.sleep(0.5)
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(
            [*as_postgres, f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
