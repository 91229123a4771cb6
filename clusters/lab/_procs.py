"""Processes a lab starts: each in a session of its own, stopped by that session's pids."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "LabError",
    "free_port",
    "ray_temp",
    "ray_token",
    "session_alive",
    "spawn",
    "stop_session",
    "wait_until",
]


class LabError(RuntimeError):
    """A lab that cannot start, or a service of it that does not answer: one line."""


def ray_token(root: Path) -> Path:
    """``<root>/ray_token``, made (a random token, readable by its owner only) if missing."""
    import secrets

    root.mkdir(parents=True, exist_ok=True)
    token = root / "ray_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    return token


def ray_temp(prefix: str) -> Path:
    """A new temp dir for Ray: short and under /tmp, as Ray's Unix sockets must fit in 107
    characters."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def free_port() -> int:
    """A TCP port nobody listens on now, on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    cmd: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Starts ``cmd`` as the leader of a new session, its output appended to ``log``. Every
    process it starts stays in that session (Ray's daemons too), which is how they are found
    and stopped later."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(cmd),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def session_members(leader: int) -> list[int]:
    """Pids of the live processes in the session ``leader`` started."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) == leader and not _zombie(pid):
                out.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return out


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def session_alive(leader: int) -> bool:
    return bool(session_members(leader))


def stop_session(leader: int, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Sends ``sig`` to every process of the session, then SIGKILL to what is left after
    ``grace`` seconds; returns once they are all gone."""
    for pid in session_members(leader):
        _signal(pid, sig)
    if wait_until(lambda: not session_alive(leader), grace, poll=0.1):
        return
    for pid in session_members(leader):
        _signal(pid, signal.SIGKILL)
    wait_until(lambda: not session_alive(leader), 10.0, poll=0.1)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_until(predicate: Callable[[], bool], timeout: float, poll: float = 0.2) -> bool:
    """Whether ``predicate()`` came true within ``timeout`` seconds (checked every ``poll``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001 - the thing watched may not exist yet
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
