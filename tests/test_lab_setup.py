"""How a lab lays itself out before anything starts (no servers here: tests/test_lab.py runs
a real lab)."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from clusters.lab import _postgres_root


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user, the server runs as that user")
def test_as_root_postgres_keeps_its_files_where_its_user_reaches():
    try:
        home = pwd.getpwnam("postgres").pw_dir
    except KeyError:
        pytest.skip("no postgres user: PostgreSQL is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="fedsweep-labdir-"))  # pytest's tmp is its owner's only
    try:
        _check_layout(tmp, home)
    finally:
        shutil.rmtree(tmp)


def _check_layout(tmp: Path, home: str) -> None:
    tmp.chmod(0o755)
    (tmp / "open" / "lab").mkdir(parents=True)
    (tmp / "open").chmod(0o755)
    (tmp / "open" / "lab").chmod(0o755)
    assert _postgres_root(tmp / "open" / "lab") == tmp / "open" / "lab" / "postgres"

    closed = tmp / "closed"  # like /root: its owner's only
    (closed / "lab").mkdir(parents=True)
    closed.chmod(0o700)
    away = _postgres_root(closed / "lab")
    assert away.parent.parent == type(away)(home) and away.parent.name == "fedsweep-labs"
    assert away == _postgres_root(closed / "lab")  # the same lab finds it again
    (closed / "other").mkdir()
    assert _postgres_root(closed / "other") != away
    assert away.parent.is_dir()  # made, and the postgres user's
    assert away.parent.stat().st_uid == pwd.getpwnam("postgres").pw_uid
