"""What the platform knows about a federation and its algorithm must not: who is Byzantine,
and how often each party's update made it into the model.

Trainers keep a :class:`Ledger` beside their round loop and hand it each round's aggregation
(as the aggregator's influence per upload); it answers with the robustness and fairness
metrics every robust method reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["ROBUSTNESS_METRICS", "Ledger"]

ROBUSTNESS_METRICS = (
    "byzantine_uploads",
    "byzantine_through",
    "byzantine_share",
    "participation_mean",
    "participation_var",
)
"""byzantine_uploads: Byzantine parties among the round's uploads; byzantine_through: how many
of them the aggregation used (influence > 0); byzantine_share: their share of the aggregate
(0 to 1); participation_mean / _var: over all parties, how many rounds each party's update has
been aggregated so far (fairness)."""


class Ledger:
    """Per-run bookkeeping of Byzantine parties and participation.

    Args:
        party_ids: every party of the federation.
        byzantine: the Byzantine parties (fixed for the run).
    """

    def __init__(self, party_ids: Iterable[int], byzantine: frozenset[int]) -> None:
        self.ids = sorted(party_ids)
        self.index = {p: i for i, p in enumerate(self.ids)}
        self.byzantine = byzantine
        self.counts = np.zeros(len(self.ids), dtype=np.int64)

    def mask(self, parties: Sequence[int]) -> np.ndarray:
        """Which of ``parties`` are Byzantine, as a boolean array in their order."""
        return np.fromiter((p in self.byzantine for p in parties), dtype=bool, count=len(parties))

    def record(self, parties: Sequence[int], influence: np.ndarray) -> dict[str, float]:
        """Counts one aggregation of ``parties``' uploads and returns the round's metrics."""
        used = np.asarray(influence) > 0
        self.counts[[self.index[p] for p, u in zip(parties, used) if u]] += 1
        byz = self.mask(parties)
        return {
            "byzantine_uploads": float(byz.sum()),
            "byzantine_through": float((byz & used).sum()),
            "byzantine_share": float(np.asarray(influence)[byz].sum()),
            "participation_mean": float(self.counts.mean()),
            "participation_var": float(self.counts.var()),
        }

    def table(self) -> list[dict]:
        """One row per party: its id, whether it is Byzantine, rounds it was aggregated in."""
        return [
            {"party": p, "byzantine": p in self.byzantine, "aggregated": int(c)}
            for p, c in zip(self.ids, self.counts)
        ]
