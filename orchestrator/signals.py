"""Stops asked for by a signal: SIGTERM (what a scheduler, ``ray job stop`` or a pre-empted
node sends) and SIGHUP end a run or a sweep as Ctrl-C does, closing every run as KILLED and
leaving it resumable, and the command exits 128 + the signal's number.

The command line installs the handlers (:func:`handle`) and then unblocks the three stop
signals: a launcher (a local job's) starts the command with them blocked, so that one sent
while Python is still starting waits for the handlers instead of killing the interpreter
half-way through its imports. Ray replaces SIGTERM's with its own
when it connects, so the runner and the sweep driver put them back once Ray is up
(:func:`reinstall`). Library callers who install nothing keep their own handlers.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["STOPS", "Terminated", "handle", "reinstall"]

_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop a command (SIGINT's handler is Python's own: KeyboardInterrupt)."""
_active = False


class Terminated(KeyboardInterrupt):
    """A stop asked for by a signal; ends runs as Ctrl-C does (a KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def handle() -> None:
    """Turns SIGTERM and SIGHUP into :class:`Terminated` in this (main) thread."""
    global _active
    _active = True
    reinstall()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)  # one that waited is raised here


def reinstall() -> None:
    """Puts the handlers back if :func:`handle` installed them (Ray replaces SIGTERM's)."""
    if _active and threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
            signal.signal(sig, _raise)
