"""``fedsweep data``: a config's data loaded and partitioned, without training.

Prints one row per party (its samples and label counts) and a summary of the skew, and
writes the label-by-party heatmap, the per-party table and each party's samples as Parquet:
what a researcher checks before spending a sweep on a partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from orchestrator.config import ExperimentConfig
    from orchestrator.data import Prepared

__all__ = ["Skew", "preview", "skew"]

_SHOWN = 20
"""Parties printed in full; the rest are summarised."""


@dataclass(frozen=True)
class Skew:
    """How uneven a partition is."""

    parties: int
    min_size: int
    median_size: float
    max_size: int
    size_cv: float
    """Coefficient of variation of the parties' sizes (0: equal sizes)."""
    labels_per_party: float
    """Mean number of distinct labels a party holds."""
    effective_labels: float
    """Mean exp(entropy) of a party's label mix: the labels it holds in effect."""
    label_tv: float
    """Mean total-variation distance between a party's label mix and the whole training
    set's (0: every party looks like the whole; 1: disjoint)."""

    def line(self) -> str:
        return (
            f"sizes: min {self.min_size}, median {self.median_size:g}, max {self.max_size} "
            f"(cv {self.size_cv:.2f}); labels per party: {self.labels_per_party:.1f} "
            f"(effective {self.effective_labels:.1f}); label skew (TV to the whole): "
            f"{self.label_tv:.2f}"
        )


def skew(stats: pa.Table) -> Skew:
    """The skew of a partition from its per-party table (``label_<i>`` count columns)."""
    labels = [c for c in stats.column_names if c.startswith("label_")]
    counts = np.stack([stats.column(c).to_numpy() for c in labels], axis=1).astype(np.float64)
    sizes = counts.sum(axis=1)
    mix = counts / np.maximum(sizes, 1)[:, None]
    whole = counts.sum(axis=0) / max(counts.sum(), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(mix > 0, mix * np.log(mix), 0.0), axis=1)
    return Skew(
        parties=len(sizes),
        min_size=int(sizes.min()),
        median_size=float(np.median(sizes)),
        max_size=int(sizes.max()),
        size_cv=float(sizes.std() / sizes.mean()) if sizes.mean() else 0.0,
        labels_per_party=float((counts > 0).sum(axis=1).mean()),
        effective_labels=float(np.exp(entropy).mean()),
        label_tv=float(0.5 * np.abs(mix - whole).sum(axis=1).mean()),
    )


def preview(cfg: ExperimentConfig, out: Path) -> list[str]:
    """Loads and partitions ``cfg``'s data, writes the heatmap, the table and the parties'
    files under ``out``, and returns the lines to print."""
    from orchestrator.data import prepare, write_partitions

    prepared = prepare(cfg)
    out.mkdir(parents=True, exist_ok=True)
    stats = prepared.stats
    pq.write_table(stats, out / "parties.parquet")
    for old in (out / "parties").glob("party_*.parquet"):  # a previous, larger partition's
        old.unlink()
    files = write_partitions(prepared, out / "parties")
    lines = [_headline(cfg, prepared), *_table(stats)]
    written = [str(out / "parties.parquet"), f"{len(files)} party files in {out / 'parties'}"]
    if any(c.startswith("label_") for c in stats.column_names):
        from orchestrator.plots import label_heatmap

        fig = label_heatmap(stats, [str(c) for c in prepared.classes])
        fig.savefig(out / "heatmap.png", dpi=120)
        written.insert(0, str(out / "heatmap.png"))
        lines.append(skew(stats).line())
    lines.append("wrote " + ", ".join(written))
    return lines


def _headline(cfg: ExperimentConfig, prepared: Prepared) -> str:
    data = prepared.data
    part = cfg.partition
    how = part.name + {
        "dirichlet": f" (alpha {part.alpha:g})",
        "inner_dirichlet": f" (alpha {part.alpha:g})",
        "quantity_skew": f" (alpha {part.alpha:g})",
        "shards": f" ({part.labels_per_party} labels each)",
        "pathological": f" ({part.labels_per_party} labels each, {part.class_assignment})",
        "natural": f" (by {part.by})",
    }.get(part.name, "")
    test = len(getattr(data, "y_test", []))
    image = getattr(data, "image", None)
    shape = f" ({'x'.join(map(str, image))} images)" if image else ""
    stats = prepared.stats
    held = (
        f"{int(stats.column('n_samples').to_numpy().sum())} training rows, "
        if "n_samples" in stats.column_names
        else ""
    )
    return (
        f"{cfg.data.name}: {held}{test} test rows, {data.n_features} features{shape}, "
        f"{len(prepared.classes)} classes; {stats.num_rows} parties by {how}"
    )


def _table(stats: pa.Table) -> list[str]:
    """The per-party table as text: the first parties in full, then one line for the rest."""
    names = stats.column_names
    cols = {n: [_cell(v) for v in stats.column(n).to_pylist()[:_SHOWN]] for n in names}
    heads = [n[6:] if n.startswith("label_") else n for n in names]
    widths = [max(len(h), *(len(v) for v in cols[n])) for h, n in zip(heads, names)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(heads, widths))]
    for i in range(min(stats.num_rows, _SHOWN)):
        lines.append("  ".join(cols[n][i].rjust(w) for n, w in zip(names, widths)))
    if stats.num_rows > _SHOWN:
        lines.append(f"... {stats.num_rows - _SHOWN} more parties in parties.parquet")
    return lines


def _cell(value: object, width: int = 40) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."
