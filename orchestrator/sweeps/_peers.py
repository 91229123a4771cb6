"""Several drivers on one study: each beats a heartbeat into the study, and the trials of a
driver whose heartbeat stopped are found and handed back.

The storage is the only channel: a driver's heartbeat is the study user attribute
``fedsweep.driver.<id>`` (a timestamp), and each trial names the driver that asked for it in
its user attribute ``fedsweep_driver``.
"""

from __future__ import annotations

import threading
import time
import uuid

import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestrator.sweeps._optuna import StudyStore

__all__ = ["DRIVER_ATTR", "GRACE_S", "HEARTBEAT_S", "Peers"]

HEARTBEAT_S = 3.0
"""How often a driver marks itself alive in the study."""
GRACE_S = 15.0
"""A driver silent this long is dead: its RUNNING trials are failed and queued again."""
DRIVER_ATTR = "fedsweep_driver"
"""The trial attribute naming the driver that asked for it."""
_BEAT = "fedsweep.driver."


class Peers:
    """This driver's heartbeat, and what it knows of the study's other drivers."""

    def __init__(self, study: optuna.Study, store: StudyStore) -> None:
        self.study, self.store = study, store
        self.id = uuid.uuid4().hex[:12]
        """This driver, as its heartbeat and its trials name it."""
        self._stopping = threading.Event()
        self._beating = threading.Thread(target=self._beat, name="fedsweep-heartbeat", daemon=True)
        self._beating.start()

    def _beat(self) -> None:
        while not self._stopping.is_set():
            try:
                self.study.set_user_attr(_BEAT + self.id, time.time())
            except Exception:  # noqa: BLE001 - a storage hiccup: the next beat retries
                pass
            if self._stopping.wait(HEARTBEAT_S):
                return

    def claim(self, trial: optuna.Trial) -> None:
        """Names this driver as the one that asked for ``trial``."""
        trial.set_user_attr(DRIVER_ATTR, self.id)

    def alive(self, driver: object, now: float) -> bool:
        if driver == self.id:
            return True
        beat = self.study.user_attrs.get(_BEAT + str(driver))
        return isinstance(beat, (int, float)) and now - beat < GRACE_S

    def orphans(self) -> tuple[list[FrozenTrial], bool]:
        """The RUNNING trials whose driver is dead, and whether another driver is alive."""
        now = time.time()
        dead_trials, others_alive = [], False
        for t in self.store.trials(states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get(DRIVER_ATTR)
            if owner is None:  # asked by a driver that died before it could say so
                started = t.datetime_start.timestamp() if t.datetime_start else 0.0
                dead = now - started > GRACE_S
            else:
                dead = not self.alive(owner, now)
            others_alive |= owner != self.id and not dead
            if dead:
                dead_trials.append(t)
        return dead_trials, others_alive

    def wait(self, seconds: float) -> None:
        """Waits ``seconds``, or less once this driver leaves."""
        self._stopping.wait(seconds)

    def leave(self) -> bool:
        """Stops the heartbeat; whether this is the last driver out (no other alive), which
        then finishes the study."""
        self._stopping.set()
        self._beating.join(timeout=5)
        self.study.set_user_attr(_BEAT + self.id, 0.0)
        now = time.time()
        return not any(
            k.startswith(_BEAT) and k != _BEAT + self.id
            and isinstance(v, (int, float)) and now - v < GRACE_S
            for k, v in self.study.user_attrs.items()
        )  # fmt: skip
