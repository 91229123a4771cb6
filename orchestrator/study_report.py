"""What a sweep's parent run holds besides its metrics: the trial table and Optuna's plots."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import pyarrow as pa

from search_spaces import Space

if TYPE_CHECKING:
    import optuna

    from orchestrator.tracking import Tracker

__all__ = ["Best", "log_pareto_table", "log_plots", "log_trials_table"]


class Best(TypedDict):
    """A best trial as ``--json`` prints it (a single objective's best has no number)."""

    number: NotRequired[int]
    values: list[float]
    params: dict[str, Any]
    run_id: str | None
    model_uri: str | None


def log_trials_table(study: optuna.Study, tracker: Tracker) -> None:
    """All trials (number, state, values, params, user attributes) as ``trials.parquet``."""
    frame = study.trials_dataframe(
        attrs=("number", "state", "values", "params", "user_attrs", "duration")
    )
    if "duration" in frame:
        frame["duration"] = frame["duration"].dt.total_seconds()
    frame = frame.astype({c: "string" for c in frame.columns if frame[c].dtype == object})
    tracker.log_table(pa.Table.from_pandas(frame, preserve_index=False), "trials.parquet")


def log_pareto_table(entries: Sequence[Best], space: Space, tracker: Tracker) -> None:
    """The Pareto-optimal trials (number, one column per objective, params, run) as
    ``pareto.parquet``, ordered by the first objective."""
    names = [o.metric for o in space.objectives]
    rows = []
    for e in entries:
        row: dict[str, Any] = {"number": e["number"]}
        row.update(dict(zip(names, e["values"])))
        row.update({f"params.{k}": str(v) for k, v in e["params"].items()})
        row["run_id"] = e["run_id"]
        rows.append(row)
    reverse = space.objectives[0].direction == "maximize"
    rows.sort(key=lambda r: r[names[0]], reverse=reverse)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "number", k not in names, k))
    table = pa.table({k: [r.get(k) for r in rows] for k in keys})
    tracker.log_table(table, "pareto.parquet")


def importances(space: Space) -> bool:
    """Whether the parameters' importances say anything: with one parameter, no."""
    return len(space.params) > 1


def log_plots(study: optuna.Study, space: Space, tracker: Tracker) -> None:
    """Optuna's plots as PNG: history, importances, parallel coordinates, Pareto front.

    A plot Optuna cannot draw yet (too few finished trials) is skipped and named in the
    ``plots_skipped`` tag; so is the importance plot of a one-parameter space (its one
    importance is 1, and fANOVA would cost scikit-learn's import and a forest's fit).
    """
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    names = [o.metric for o in space.objectives]
    plots: list[tuple[str, Any]] = []
    if space.multi_objective:
        for i, name in enumerate(names):
            plots.append(
                (
                    f"optimization_history_{name}.png",
                    lambda i=i, name=name: ovm.plot_optimization_history(
                        study, target=lambda t: t.values[i], target_name=name
                    ),
                )
            )
        plots.append(("pareto_front.png", lambda: ovm.plot_pareto_front(study, target_names=names)))
        if importances(space):
            plots.append(
                (
                    "param_importances.png",
                    lambda: ovm.plot_param_importances(
                        study, target=lambda t: t.values[0], target_name=names[0]
                    ),
                )
            )
        plots.append(
            (
                "parallel_coordinate.png",
                lambda: ovm.plot_parallel_coordinate(
                    study, target=lambda t: t.values[0], target_name=names[0]
                ),
            )
        )
    else:
        plots.append(
            (
                "optimization_history.png",
                lambda: ovm.plot_optimization_history(study, target_name=names[0]),
            )
        )
        if importances(space):
            plots.append(("param_importances.png", lambda: ovm.plot_param_importances(study)))
        plots.append(
            (
                "parallel_coordinate.png",
                lambda: ovm.plot_parallel_coordinate(study, target_name=names[0]),
            )
        )
    skipped = [] if importances(space) else ["param_importances.png: one parameter"]
    for path, draw in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw()
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            skipped.append(f"{path}: {exc}")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(9, 5.5)
        fig.tight_layout()
        tracker.log_figure(fig, f"plots/{path}")
    if skipped:
        tracker.set_tags({"plots_skipped": "; ".join(skipped)[:5000]})
