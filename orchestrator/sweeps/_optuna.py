"""The Optuna glue: storages (opened, probed, defaulted), samplers and pruners, and the one
place that reaches past Optuna's public API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestrator.errors import ConfigError
from orchestrator.secrets import redact_text
from search_spaces import PRUNERS, SAMPLERS, Space, SpaceError, Strategy

__all__ = [
    "INTERRUPTED",
    "StudyStore",
    "absolute_sqlite",
    "default_storage",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "require_storage",
]

INTERRUPTED = "fedsweep_interrupted"
"""User attribute of a trial a stopped driver left unfinished: FAIL, and not counted."""


def make_storage(url: str, connections: int = 4) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL: ``journal:///path`` (or a ``*.journal`` path) is a journal
    file; anything else (sqlite://, postgresql://) is an RDB storage.

    A server-backed storage gets a bounded connection pool (at most ``connections`` per
    process: a driver's loop, writer and heartbeat, or a worker's pruning reports), checked
    before use, so that P parallel trials never exhaust the server's connections and a
    restarted server is reconnected to.

    Raises:
        ConfigError: the URL names no storage Optuna can open (``--storage``).
    """
    if url.startswith("journal://") or url.endswith(".journal"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal://")))
    engine: dict[str, object] = {}
    if not url.startswith("sqlite"):
        half = max(1, connections // 2)
        engine = {"pool_size": half, "max_overflow": connections - half, "pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's many errors: one line, the URL named
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            "--storage", f"cannot open {redact_text(url)!r}: {redact_text(first)}"
        ) from None


def _build(kind: str, strategy: Strategy, build: Any) -> Any:
    try:
        return build()
    except (TypeError, ValueError) as exc:
        raise SpaceError(kind, f"bad option for {strategy.name}: {exc}") from None


def make_sampler(space: Space, seed: int | None) -> optuna.samplers.BaseSampler:
    """The space's sampler; its seed defaults to the experiment's."""
    opts = {"seed": seed, **space.sampler.options}
    return _build(
        "sampler", space.sampler, lambda: SAMPLERS.get(space.sampler.name)(opts, space.grid)
    )


def make_pruner(strategy: Strategy) -> optuna.pruners.BasePruner:
    """The pruner a space names."""
    return _build("pruner", strategy, lambda: PRUNERS.get(strategy.name)(strategy.options))


class StudyStore:
    """A study's trials addressed by id, through Optuna's storage.

    Why the private access: Optuna sets a trial's user attributes, and reports for it, only
    through the live ``Trial`` object of the process that asked for it. A sweep's driver
    records a trial's outcome after the worker that ran it has answered, resumes studies whose
    RUNNING trials another (dead) driver asked for, and its workers report intermediate
    values for trials the driver asked: all of them need to name a trial by its id.
    """

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self._storage = study._storage  # noqa: SLF001 - see the class docstring

    @staticmethod
    def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
        return int(trial._trial_id)  # noqa: SLF001

    def set_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        for key, value in attrs.items():
            self._storage.set_trial_user_attr(trial_id, key, value)

    def fail_interrupted(self, trial_id: int) -> bool:
        """Marks an unfinished trial interrupted and FAIL; False when it had finished (another
        driver told it meanwhile)."""
        trial = self._storage.get_trial(trial_id)
        if trial.state.is_finished():
            return False
        if "grid_id" in trial.system_attrs:
            # Optuna's grid sampler counts the point of every finished trial of its search
            # space as visited; taken out of that space, this point is given to a trial again
            self._storage.set_trial_system_attr(trial_id, "search_space", {})
        self._storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
        try:
            return bool(self._storage.set_trial_state_values(trial_id, TrialState.FAIL))
        except RuntimeError:  # finished meanwhile (UpdateFinishedTrialError)
            return False

    @staticmethod
    def open_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
        """The live trial a worker reports to."""
        return optuna.trial.Trial(study, trial_id)

    def trial(self, trial_id: int) -> FrozenTrial:
        return self._storage.get_trial(trial_id)

    def tell(self, number: int, state: TrialState, values: Sequence[float] = ()) -> bool:
        """Tells a trial's end; False when it had ended already (another driver failed it,
        taking its driver for dead)."""
        try:
            if state == TrialState.COMPLETE:
                self.study.tell(number, list(values))
            else:
                self.study.tell(number, state=state)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
            if "finished" not in str(exc).lower() and "already" not in str(exc).lower():
                raise
            return False
        return True

    def trials(self, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)


_PORTS = {"postgresql": 5432, "mysql": 3306}


def require_storage(url: str, timeout: float | None = None) -> None:
    """That an Optuna storage on a database server answers before the study is made: a
    ``postgresql://`` or ``mysql://`` URL's host and port take a connection within
    ``timeout`` seconds (default :func:`clusters.connect_timeout`); files need no check.

    Raises:
        ServiceError: ``storage error: <url, password masked>: no database answers ...``.
    """
    import socket

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from clusters import ServiceError, connect_timeout

    if "://" not in url or url.startswith("sqlite:"):
        return
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError("--storage", f"not a storage URL: {exc}") from None
    port = parsed.port or _PORTS.get(parsed.get_backend_name())
    if not parsed.host or port is None:
        return
    wait = connect_timeout() if timeout is None else timeout
    try:
        socket.create_connection((parsed.host, port), timeout=wait).close()
    except OSError as exc:
        reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
        raise ServiceError(
            "storage", redact_text(url), f"no database answers within {wait:g} s ({reason})"
        ) from None


def absolute_sqlite(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def default_storage(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
    else:
        folder = Path.cwd()
    return f"journal://{folder / 'optuna.journal'}"
