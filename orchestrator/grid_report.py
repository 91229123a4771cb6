"""A study's results table: metrics by two of its parameters, aggregated over the others.

A search space with a ``report`` section (``rows``, ``columns``, ``metrics``) ends with this
table: for each (row, column) pair, the mean, standard deviation and count of every metric
over the finished trials (typically over seeds). It is written as Parquet (long form, with
the per-trial values), as Markdown (one ``mean ± std`` grid per metric) and as grouped bar
charts, and logged under ``report/`` in the study's parent MLflow run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from search_spaces import Space

if TYPE_CHECKING:
    import optuna

    from orchestrator.tracking import Tracker

__all__ = ["ResultsTable", "build_report"]


@dataclass
class ResultsTable:
    """The report of a study, ready to write."""

    table: pa.Table
    """Long form: row, column, metric, mean, std, n, values."""
    markdown: str
    figures: dict[str, Any]
    """File name -> matplotlib figure (one grouped bar chart per metric)."""

    def write(self, directory: str | Path) -> list[Path]:
        """Writes results.parquet, results.md and the charts; returns the paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "results.parquet", out / "results.md"]
        pq.write_table(self.table, paths[0])
        paths[1].write_text(self.markdown)
        for name, fig in self.figures.items():
            fig.savefig(out / name, dpi=110)
            paths.append(out / name)
        return paths

    def log(self, tracker: Tracker) -> None:
        """Logs the table, the Markdown and the charts under ``report/``."""
        tracker.log_table(self.table, "report/results.parquet")
        tracker.log_text(self.markdown, "report/results.md")
        for name, fig in self.figures.items():
            tracker.log_figure(fig, f"report/{name}")


def build_report(study: optuna.Study, space: Space) -> ResultsTable | None:
    """The results table of ``study`` as its space's ``report`` describes (None: no report,
    or no finished trial carries the report's metrics)."""
    from optuna.trial import TrialState

    rep = space.report
    if rep is None:
        return None
    order = {
        p.key: [str(c) for c in p.grid()] for p in space.params if p.key in (rep.rows, rep.columns)
    }
    cells: dict[tuple[str, str, str], list[float]] = {}
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for t in trials:
        summary = t.user_attrs.get("summary")
        if not summary or rep.rows not in t.params or rep.columns not in t.params:
            continue
        for metric in rep.metrics:
            if metric in summary:
                key = (str(t.params[rep.rows]), str(t.params[rep.columns]), metric)
                cells.setdefault(key, []).append(float(summary[metric]))
    if not cells:
        return None
    rows = [r for r in order[rep.rows] if any(k[0] == r for k in cells)]
    cols = [c for c in order[rep.columns] if any(k[1] == c for k in cells)]
    records = []
    for metric in rep.metrics:
        for r in rows:
            for c in cols:
                values = cells.get((r, c, metric), [])
                mean, std = _mean_std(values)
                records.append(
                    {
                        rep.rows: r,
                        rep.columns: c,
                        "metric": metric,
                        "mean": mean,
                        "std": std,
                        "n": len(values),
                        "values": values,
                    }
                )
    table = pa.Table.from_pylist(records)
    markdown = _markdown(records, rep.rows, rep.columns, rows, cols, rep.metrics, rep.reduce)
    figures = {
        f"{metric}.png": _bars(records, rep.rows, rep.columns, rows, cols, metric)
        for metric in rep.metrics
    }
    if rep.curves:
        for c in cols:
            series = [
                (str(t.params[rep.rows]), t.user_attrs["series"])
                for t in trials
                if str(t.params.get(rep.columns)) == c and "series" in t.user_attrs
            ]
            if series:
                figures[f"curves_{c}.png"] = _curves(series, rows, rep.curves, f"{rep.columns}={c}")
    return ResultsTable(table, markdown, figures)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values or any(math.isnan(v) for v in values):  # NaN: not reached, or n/a
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)  # sample std over seeds
    return mean, math.sqrt(var)


def _markdown(records, row_key, col_key, rows, cols, metrics, reduce) -> str:
    lines = []
    how = {
        "tail": "mean of the last 10% of rounds",
        "last": "last round",
        "max": "best round",
        "min": "lowest round",
    }[reduce]
    for metric in metrics:
        cell = {(r[row_key], r[col_key]): r for r in records if r["metric"] == metric}
        n = max((r["n"] for r in cell.values()), default=0)
        lines.append(f"### {metric} ({how}; mean ± std over up to {n} trials)")
        lines.append("")
        lines.append(f"| {row_key} | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for r in rows:
            entries = []
            for c in cols:
                rec = cell.get((r, c))
                if rec is None or not rec["n"]:
                    entries.append("–")
                elif math.isnan(rec["mean"]):  # a target not reached, or a metric n/a
                    entries.append("not reached" if "to_target" in metric else "n/a")
                else:
                    entries.append(f"{rec['mean']:.4f} ± {rec['std']:.4f}")
            lines.append(f"| {r} | " + " | ".join(entries) + " |")
        lines.append("")
    return "\n".join(lines)


def _bars(records, row_key, col_key, rows, cols, metric):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cell = {(r[row_key], r[col_key]): r for r in records if r["metric"] == metric}
    fig, ax = plt.subplots(figsize=(min(14, max(8, 0.22 * len(cols) * len(rows) + 3)), 5))
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(cols))
    for i, r in enumerate(rows):
        means = [cell[(r, c)]["mean"] if (r, c) in cell else np.nan for c in cols]
        stds = [cell[(r, c)]["std"] if (r, c) in cell else 0.0 for c in cols]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, means, width, yerr=stds, label=r, capsize=2)
    ax.set_xticks(x, cols, rotation=20, ha="right")
    ax.set_ylabel(metric)
    ax.set_xlabel(col_key)
    ax.set_title(f"{metric} per {row_key} per {col_key} (mean ± std)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title=row_key, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def _curves(series, rows, keys, title):
    """One panel per x: every trial's y against x, log scale, coloured by its row value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, xs = keys[0], keys[1:]
    fig, axes = plt.subplots(1, len(xs), figsize=(6 * len(xs), 4.2), squeeze=False)
    colours = {r: f"C{i}" for i, r in enumerate(rows)}
    for ax, x in zip(axes[0], xs):
        seen = set()
        for row, s in series:
            label = row if row not in seen else None
            seen.add(row)
            values = [max(v, 1e-16) for v in s[y]]
            ax.semilogy(s[x], values, color=colours.get(row, "k"), alpha=0.8, lw=1, label=label)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
