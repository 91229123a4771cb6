"""Round checkpoints: a run's whole state, written atomically, read back to resume.

A checkpoint holds the trainer's :class:`trainers.RunState` (the model, the server's state,
every random stream, the ledger, the history), the parties' own state as the executor hands
it back, the round, and the config it was made under. It goes to one of two slots, and a
small pointer names the slot last written completely: a crash while a checkpoint is written
leaves the previous one usable.

Where the slots live is a :class:`Files` store: a run's MLflow artifacts (``RunFiles`` in
:mod:`orchestrator.tracking`) or a local directory (:class:`Directory`).

Checkpoints are Python pickles (through ``torch.save``), read only from the run being resumed:
load one only from a store you trust, as with MLflow's pickled models.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestrator.config import ExperimentConfig, flatten, to_dict
from orchestrator.errors import ConfigError

__all__ = [
    "BUDGET_KEYS",
    "Checkpoint",
    "Checkpoints",
    "Directory",
    "Files",
    "config_difference",
]

FORMAT = 1
BUDGET_KEYS = (
    "trainer.rounds",
    "trainer.decentralized.epochs",
    "trainer.decentralized.max_steps",
)
"""What a resumed run may change: how far it goes."""
_FREE_SECTIONS = ("runtime.", "tracking.", "sweep.")
"""Where it runs and what it logs may change too; what it computes may not."""


class Files(Protocol):
    """A place for a few named files (a run's artifacts, a directory)."""

    def write(self, name: str, data: bytes) -> None: ...

    def read(self, name: str) -> bytes | None:
        """The file's content, or None when there is no such file."""
        ...


class Directory:
    """Files in a local directory, each written to a temporary name and renamed into place."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def write(self, name: str, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / name)

    def read(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None


@dataclass
class Checkpoint:
    """One round's whole state."""

    round: int
    config: dict[str, Any]
    state: Any
    """The trainer's RunState."""
    parties: dict[int, dict[str, Any]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        import torch

        buffer = io.BytesIO()
        torch.save({"format": FORMAT, **self.__dict__}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        import torch

        raw = torch.load(io.BytesIO(data), weights_only=False)  # our own pickle: see above
        if raw.pop("format", None) != FORMAT:
            raise ValueError("a checkpoint of another format")
        return cls(**raw)


class Checkpoints:
    """A run's checkpoints in two slots of a :class:`Files` store, with a pointer.

    Args:
        files: where they go.
        fresh: nothing was written there yet (a first attempt): :meth:`latest` does not look.
    """

    POINTER = "latest.json"

    def __init__(self, files: Files, fresh: bool = False) -> None:
        self.files = files
        self.fresh = fresh
        self._slot: int | None = None

    def save(self, checkpoint: Checkpoint) -> int:
        """Writes the checkpoint into the slot not pointed to, then points to it; returns
        the bytes written."""
        data = checkpoint.to_bytes()
        current = self._slot
        if current is None and not self.fresh:
            current = self._pointed()
        slot = 1 if current == 0 else 0
        self.files.write(f"slot-{slot}.pt", data)
        self.files.write(
            self.POINTER, json.dumps({"round": checkpoint.round, "slot": slot}).encode()
        )
        self._slot = slot
        return len(data)

    def latest(self) -> Checkpoint | None:
        """The last checkpoint written completely (None: none yet)."""
        if self.fresh and self._slot is None:
            return None
        raw = self.files.read(self.POINTER)
        if raw is None:
            return None
        slot = int(json.loads(raw)["slot"])
        data = self.files.read(f"slot-{slot}.pt")
        if data is None:
            return None
        self._slot = slot
        return Checkpoint.from_bytes(data)

    def _pointed(self) -> int | None:
        raw = self.files.read(self.POINTER)
        return None if raw is None else int(json.loads(raw)["slot"])


def config_difference(saved: dict[str, Any], cfg: ExperimentConfig) -> str | None:
    """The first key (other than the budget, where it runs and what it logs) whose value a
    resumed run would change, or None."""
    old, new = flatten(saved), flatten(to_dict(cfg))
    for key in sorted(set(old) | set(new)):
        if key in BUDGET_KEYS or key.startswith(_FREE_SECTIONS):
            continue
        if old.get(key) != new.get(key):
            return key
    return None


def refuse_difference(saved: dict[str, Any], cfg: ExperimentConfig) -> None:
    """ConfigError naming the first key a resume may not change."""
    key = config_difference(saved, cfg)
    if key is not None:
        old = flatten(saved).get(key)
        new = flatten(to_dict(cfg)).get(key)
        raise ConfigError(
            key, f"the run being resumed has {old!r}, not {new!r}: only its budget may change"
        )
