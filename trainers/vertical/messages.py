"""What the parties of split learning send each other, one batch at a time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Embedding", "Exchange", "Gradient"]


@dataclass(frozen=True)
class Embedding:
    """Passive -> active: a party's bottom-model outputs for a batch (rows are samples)."""

    party: int
    values: np.ndarray


@dataclass(frozen=True)
class Gradient:
    """Active -> passive: d loss / d embedding for the batch the party embedded last."""

    party: int
    values: np.ndarray


@dataclass(frozen=True)
class Exchange:
    """One training batch's messages, as an observer of the federation sees them."""

    rows: np.ndarray
    """Aligned-sample positions of the batch."""
    embeddings: Sequence[Embedding]
    gradients: Mapping[int, Gradient]
