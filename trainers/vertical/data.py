"""What the parties of a vertical federation hold: the same samples, different features.

Party 0 is the active party: it holds the labels. Every party holds its own feature columns
of the *aligned* training samples (the ones all parties share, in one agreed order) and of
its own *unaligned* samples (rows the other parties do not have), plus its columns of the
test split. Only the active party holds labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ACTIVE", "VerticalData", "VerticalParty"]

ACTIVE = 0
"""The active party's id: the one that holds the labels."""


@dataclass(frozen=True)
class VerticalParty:
    """One party's view, as shipped to the worker that hosts it."""

    x_aligned: np.ndarray
    """Its columns of the aligned training samples, in the agreed order."""
    x_local: np.ndarray
    """Its columns of its own unaligned training samples."""
    x_test: np.ndarray
    """Its columns of the test split."""
    y_aligned: np.ndarray | None = None
    """Labels of the aligned samples (active party only)."""
    y_test: np.ndarray | None = None
    """Test labels (active party only)."""

    def __len__(self) -> int:
        return len(self.x_aligned) + len(self.x_local)


@dataclass(frozen=True, kw_only=True)
class VerticalData:
    """The whole vertical federation, as the simulation (and its evaluator) sees it."""

    x_train: np.ndarray
    """Every training row, every feature (float32)."""
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    columns: tuple[np.ndarray, ...]
    """Feature indices held by each party; party 0 is active."""
    aligned: np.ndarray
    """Training rows that every party holds, in the agreed order."""
    local: tuple[np.ndarray, ...]
    """Each party's unaligned training rows."""
    n_classes: int

    @property
    def n_parties(self) -> int:
        return len(self.columns)

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def features(self, party: int, rows: np.ndarray | None = None, test: bool = False):
        """Party ``party``'s columns of the given training rows (or of the test split)."""
        x = self.x_test if test else self.x_train
        if rows is not None:
            x = x[rows]
        return np.ascontiguousarray(x[:, self.columns[party]])

    def party(self, party: int) -> VerticalParty:
        """What party ``party`` holds."""
        active = party == ACTIVE
        return VerticalParty(
            x_aligned=self.features(party, self.aligned),
            x_local=self.features(party, self.local[party]),
            x_test=self.features(party, test=True),
            y_aligned=self.y_train[self.aligned] if active else None,
            y_test=self.y_test if active else None,
        )
