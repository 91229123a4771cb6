"""A search space checked against the experiment it searches, before any trial runs."""

from __future__ import annotations

from typing import Any

from orchestrator.config import ExperimentConfig, configure
from orchestrator.errors import ConfigError
from search_spaces import Space, SpaceError
from trainers import TRAINERS

__all__ = ["check_space"]


def check_space(space: Space, cfg: ExperimentConfig) -> None:
    """Fails if the space names an unknown key or metric, or a value the config would refuse:
    every bound, every choice and every preset is set on the config and validated.

    Raises:
        SpaceError: naming the space's entry and the problem.
    """
    trainers = {cfg.trainer.name}
    for p in space.params:
        for values in p.sets.values():
            trainers.add(values.get("trainer.name", cfg.trainer.name))
    unknown = sorted(t for t in trainers if t not in TRAINERS)
    known: tuple[str, ...] = ()
    if not unknown:  # presets that switch trainers: a metric must be reported by all of them
        reported = [set(TRAINERS.get(t).metrics) | {"wall_time_s"} for t in sorted(trainers)]
        ordered = (*TRAINERS.get(cfg.trainer.name).metrics, "wall_time_s")
        known = tuple(m for m in ordered if all(m in r for r in reported))
    metrics = [(f"objective[{i}].metric", o.metric) for i, o in enumerate(space.objectives)]
    if space.report is not None:
        metrics += [("report.metrics", m) for m in space.report.metrics]
        metrics += [("report.curves", m) for m in space.report.curves]
    for where, metric in metrics:
        if not unknown and metric not in known:
            raise SpaceError(
                where,
                f"unknown metric {metric!r}; {', '.join(sorted(trainers))} report: "
                f"{', '.join(known)}",
            )
    for where, values in _samples(space):
        try:
            configure(cfg, values)
        except ConfigError as exc:
            problem = "unknown config key" if exc.problem == "unknown key" else exc.problem
            shown = values.get(exc.key, values.get(exc.key.split("[")[0], ""))
            raise SpaceError(where, f"{exc.key}={shown!r}: {problem}") from None


def _samples(space: Space) -> list[tuple[str, dict[str, Any]]]:
    """(where in the space, config values) for each bound, choice and preset."""
    out: list[tuple[str, dict[str, Any]]] = []
    for p in space.params:
        if p.type == "preset":
            out += [(f"params.{p.key}.{name}", dict(values)) for name, values in p.sets.items()]
            continue
        samples = list(p.choices) if p.type == "categorical" else list(p.bounds)
        if p.type == "int":
            samples = [int(v) for v in samples]
        out += [(f"params.{p.key}", {p.target: v}) for v in samples]
    return out
