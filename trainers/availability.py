"""Parties that drop out or answer too late, simulated from the run's seed.

DESIGN.md: a party that drops out or sends garbage is something the algorithm must survive,
never a crash. Each round, every party asked to work

* drops out with probability ``trainer.dropout``: it never answers (and does no work);
* otherwise answers after a simulated time, lognormal around ``trainer.stragglers.mean``
  and proportional to its data size (a party with twice the samples takes twice as long);
  with ``trainer.stragglers.deadline`` set, an answer later than the deadline is discarded
  (a straggler).

The draws depend on the seed, the round and the parties asked only, so a run with dropouts
is as reproducible (in-process, on Ray, resumed) as one without. Uploads that are NaN or
infinite are discarded wherever they come from (:func:`finite`) and counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trainers.base import derive_seed
from trainers.config import TrainerConfig

__all__ = ["AVAILABILITY_METRICS", "Answers", "Availability", "finite"]

_STREAM = 13

AVAILABILITY_METRICS = ("dropped", "straggled", "discarded")
"""Per round: parties that never answered, that answered too late, whose upload was
garbage (NaN or infinite)."""


@dataclass(frozen=True)
class Answers:
    """Who answered in time, of the parties asked in one round."""

    answered: list[int]
    dropped: int = 0
    straggled: int = 0


class Availability:
    """Draws each round's dropouts and stragglers.

    Args:
        config: ``trainer.dropout`` and ``trainer.stragglers``.
        sizes: every party's sample count (a straggler's time scales with it).
        seed: the run's seed.
    """

    def __init__(self, config: TrainerConfig, sizes: Mapping[int, int], seed: int) -> None:
        self.dropout = config.dropout
        self.stragglers = config.stragglers
        self.sizes = sizes
        self.mean_size = float(np.mean(list(sizes.values()))) if sizes else 1.0
        self.seed = seed

    @property
    def on(self) -> bool:
        return self.dropout > 0 or self.stragglers.deadline is not None

    def answers(self, round_: int, asked: Sequence[int]) -> Answers:
        """The parties of ``asked`` that answer in ``round_`` in time, in their order."""
        if not self.on or not asked:
            return Answers(list(asked))
        rng = np.random.default_rng(derive_seed(self.seed, _STREAM, round_))
        drops = rng.random(len(asked)) < self.dropout
        s = self.stragglers
        size = np.array([self.sizes.get(p, self.mean_size) for p in asked]) / self.mean_size
        times = s.mean * size * np.exp(s.spread * rng.standard_normal(len(asked)) - s.spread**2 / 2)
        late = ~drops & (times > s.deadline) if s.deadline is not None else np.zeros_like(drops)
        answered = [p for p, d, t in zip(asked, drops, late) if not (d or t)]
        return Answers(answered, int(drops.sum()), int(late.sum()))


def finite(upload: np.ndarray) -> bool:
    """Whether an upload may be aggregated (no NaN, no infinity)."""
    return bool(np.isfinite(upload).all())
