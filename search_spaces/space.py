"""Search spaces as data: what a sweep explores and what it optimises.

A space file is YAML::

    objective:                       # one entry, or several for a multi-objective study
      - metric: test_accuracy        # a metric the trainer reports each round
        direction: maximize          # or minimize
    params:                          # dotted config key -> distribution, suggested in order
      trainer.lr: {type: float, low: 0.001, high: 0.5, log: true}
      trainer.local_epochs: {type: int, low: 1, high: 4}
      trainer.optimizer: {type: categorical, choices: [sgd, adam]}
      trainer.momentum: {type: float, low: 0.0, high: 0.9, when: {trainer.optimizer: sgd}}
    sampler: {name: tpe, seed: 0}    # tpe (default), random, grid, cmaes, nsga2
    pruner: {name: median}           # none (default), median, successive_halving, hyperband

``when`` makes a parameter conditional: it is suggested only when an earlier parameter took
one of the given values. A name ``key@variant`` sets ``key`` too, so that one key can have a
distribution per condition (``trainer.vfl.defense.strength@laplace``, ``...@gaussian``).

The objective's value is the metric's last round value (``reduce: last``, the default), its
best over rounds (``reduce: max`` / ``min``) or its mean over the last tenth of the rounds
(``reduce: tail``, steadier than one round under attack).

A ``preset`` parameter chooses among named sets of config values, for what one key cannot
say (a method is a trainer plus its aggregator; an attack is a name plus a fraction)::

    params:
      method:
        type: preset
        choices:
          fedavg: {trainer.name: fedavg}
          median: {trainer.name: fedavg, trainer.aggregator.name: median}
      seed: {type: categorical, choices: [0, 1, 2]}
    sampler: {name: grid}
    report: {rows: method, columns: attack, metrics: [test_accuracy]}

``report`` turns a (grid) study into a results table: for every (rows, columns) pair, the
mean and standard deviation over the other parameters (the seeds) of each metric, reduced
like the objective.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from search_spaces.strategies import PRUNERS, SAMPLERS

__all__ = [
    "Objective",
    "Param",
    "Report",
    "Space",
    "SpaceError",
    "Strategy",
    "load_space",
    "parse_space",
]

_TYPES = ("categorical", "float", "int", "preset")
_DIRECTIONS = ("maximize", "minimize")
_REDUCE = ("last", "max", "min", "tail")


class SpaceError(ValueError):
    """A problem with a search space, reported as ``space error: <key>: <problem>``."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"space error: {key}: {problem}")


@dataclass(frozen=True)
class Param:
    """One searched config key."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: Mapping[str, tuple] = field(default_factory=dict)
    sets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """preset: choice name -> the config values it stands for."""

    @property
    def target(self) -> str:
        """The config key this parameter sets: its name up to an ``@`` (``key@variant`` names
        one key's distribution under one condition, e.g. a strength per defense)."""
        return self.key.split("@", 1)[0]

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether this parameter exists given the values chosen before it."""
        return all(k in chosen and chosen[k] in values for k, values in self.when.items())

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a numeric parameter."""
        if self.low is None or self.high is None:
            raise TypeError(f"{self.type} parameter {self.key!r} has no bounds")
        return self.low, self.high

    def suggest(self, trial: Any) -> Any:
        """Draws a value from an Optuna trial (or a FixedTrial)."""
        if self.type in ("categorical", "preset"):
            return trial.suggest_categorical(self.key, list(self.choices))
        low, high = self.bounds
        if self.type == "int":
            return trial.suggest_int(
                self.key, int(low), int(high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.key, low, high, step=self.step, log=self.log)

    def grid(self) -> list[Any]:
        """The values a grid search visits."""
        if self.type in ("categorical", "preset"):
            return list(self.choices)
        low, high = self.bounds
        if self.type == "int":
            return list(range(int(low), int(high) + 1, int(self.step or 1)))
        if self.step is None:
            raise SpaceError(
                f"params.{self.key}", "a grid search needs a step for float parameters"
            )
        n = int(math.floor((high - low) / self.step + 1e-9))
        return [round(low + i * self.step, 12) for i in range(n + 1)]


@dataclass(frozen=True)
class Objective:
    """One metric the study optimises."""

    metric: str
    direction: str = "maximize"
    reduce: str = "last"

    def value(self, history: Sequence[Mapping[str, float]]) -> float:
        series = [h[self.metric] for h in history if self.metric in h]
        if not series:
            raise KeyError(f"the trial reported no {self.metric!r}")
        if self.reduce == "max":
            return max(series)
        if self.reduce == "min":
            return min(series)
        if self.reduce == "tail":
            tail = series[-max(1, len(series) // 10) :]
            return sum(tail) / len(tail)
        return series[-1]


@dataclass(frozen=True)
class Report:
    """A results table over a study: metrics by (rows, columns), aggregated over the rest."""

    rows: str
    columns: str
    metrics: tuple[str, ...]
    reduce: str = "last"
    curves: tuple[str, ...] = ()
    """Optional: (y, x1, x2, ...): one figure per column value with every trial's y against
    each x, coloured by row (log scale), e.g. suboptimality against epochs and rounds."""


@dataclass(frozen=True)
class Strategy:
    """A sampler or pruner: its registered name and its options (Optuna's arguments)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


@dataclass(frozen=True)
class Space:
    """A parsed search space."""

    params: tuple[Param, ...]
    objectives: tuple[Objective, ...]
    sampler: Strategy = field(default_factory=lambda: Strategy("tpe"))
    pruner: Strategy = field(default_factory=lambda: Strategy("none"))
    report: Report | None = None

    @property
    def prunes(self) -> bool:
        """Whether trials report to a pruner (one objective and a pruner other than none)."""
        return self.pruner.name != "none" and not self.multi_objective

    def grid(self) -> dict[str, list[Any]]:
        """Every parameter's grid values (what a grid sampler visits)."""
        return {p.key: p.grid() for p in self.params}

    def grid_size(self) -> int:
        size = 1
        for values in self.grid().values():
            size *= len(values)
        return size

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The parameter values for one trial, conditional parameters included when active."""
        chosen: dict[str, Any] = {}
        for p in self.params:
            if p.active(chosen):
                chosen[p.key] = p.suggest(trial)
        return chosen

    def config_values(self, chosen: Mapping[str, Any]) -> dict[str, Any]:
        """Dotted config key -> value for the chosen parameters, presets expanded."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.key not in chosen:
                continue
            if p.type == "preset":
                values.update(p.sets[chosen[p.key]])
            else:
                values[p.target] = chosen[p.key]
        return values

    def config_keys(self) -> list[str]:
        """Every config key the search may set."""
        keys: list[str] = []
        for p in self.params:
            for k in [k for s in p.sets.values() for k in s] if p.type == "preset" else [p.target]:
                if k not in keys:
                    keys.append(k)
        return keys


def load_space(path: str | os.PathLike[str]) -> Space:
    """Reads and checks a space file (unknown config keys are checked by the orchestrator)."""
    p = Path(path)
    if not p.is_file():
        raise SpaceError(str(path), "no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(str(path), f"cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpaceError(str(path), f"malformed YAML{where}") from None
    return parse_space(data)


def parse_space(data: Any) -> Space:
    """Builds a Space from the parsed YAML, checking every entry."""
    if not isinstance(data, dict):
        raise SpaceError("<space>", "the top level must be a mapping")
    unknown = set(data) - {"objective", "params", "sampler", "pruner", "report"}
    if unknown:
        raise SpaceError(
            sorted(unknown)[0], "unknown key; valid: objective, params, sampler, pruner, report"
        )
    objectives = _objectives(data.get("objective"))
    raw_params = data.get("params") or {}
    if not isinstance(raw_params, dict) or not raw_params:
        raise SpaceError("params", "must map at least one dotted config key to a distribution")
    params: list[Param] = []
    for key, spec in raw_params.items():
        params.append(_param(str(key), spec, {p.key: p for p in params}))
    sampler = _named(data.get("sampler") or {"name": "tpe"}, "sampler", SAMPLERS.names())
    pruner = _named(data.get("pruner") or {"name": "none"}, "pruner", PRUNERS.names())
    if len(objectives) > 1 and pruner.name != "none":
        raise SpaceError("pruner", "pruning needs a single objective")
    if len(objectives) > 1 and sampler.name == "cmaes":
        raise SpaceError(
            "sampler.name", "cmaes handles a single objective; use nsga2, tpe or random"
        )
    report = _report(data.get("report"), params, objectives)
    return Space(tuple(params), tuple(objectives), sampler, pruner, report)


def _report(raw: Any, params: list[Param], objectives: list[Objective]) -> Report | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpaceError("report", "must be a mapping with rows and columns")
    extra = set(raw) - {"rows", "columns", "metrics", "reduce", "curves"}
    if extra:
        raise SpaceError(
            f"report.{sorted(extra)[0]}",
            "unknown key; valid: rows, columns, metrics, reduce, curves",
        )
    curves = raw.get("curves") or {}
    if curves and (not isinstance(curves, dict) or "y" not in curves or not curves.get("x")):
        raise SpaceError("report.curves", "must be {y: metric, x: [metric, ...]}")
    xs = curves.get("x", [])
    xs = [xs] if isinstance(xs, str) else list(xs)
    keys = [p.key for p in params]
    for axis in ("rows", "columns"):
        if raw.get(axis) not in keys:
            raise SpaceError(
                f"report.{axis}",
                f"must name a parameter ({', '.join(keys)}), got {raw.get(axis)!r}",
            )
    metrics = raw.get("metrics") or [objectives[0].metric]
    if isinstance(metrics, str):
        metrics = [metrics]
    reduce = raw.get("reduce", objectives[0].reduce)
    if reduce not in _REDUCE:
        raise SpaceError("report.reduce", f"must be one of {', '.join(_REDUCE)}, got {reduce!r}")
    return Report(
        raw["rows"],
        raw["columns"],
        tuple(str(m) for m in metrics),
        reduce,
        (str(curves["y"]), *map(str, xs)) if curves else (),
    )


def _objectives(raw: Any) -> list[Objective]:
    if raw is None:
        raise SpaceError("objective", "missing: name the metric(s) to optimise")
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise SpaceError("objective", "empty")
    out = []
    for i, item in enumerate(items):
        key = f"objective[{i}]"
        if isinstance(item, str):
            item = {"metric": item}
        if not isinstance(item, dict) or "metric" not in item:
            raise SpaceError(key, "needs a metric")
        extra = set(item) - {"metric", "direction", "reduce"}
        if extra:
            raise SpaceError(
                f"{key}.{sorted(extra)[0]}", "unknown key; valid: metric, direction, reduce"
            )
        direction = item.get("direction", "maximize")
        if direction not in _DIRECTIONS:
            raise SpaceError(f"{key}.direction", f"must be maximize or minimize, got {direction!r}")
        reduce = item.get("reduce", "last")
        if reduce not in _REDUCE:
            raise SpaceError(
                f"{key}.reduce", f"must be one of {', '.join(_REDUCE)}, got {reduce!r}"
            )
        out.append(Objective(str(item["metric"]), direction, reduce))
    return out


def _param(key: str, spec: Any, earlier: Mapping[str, Param]) -> Param:
    where = f"params.{key}"
    if not isinstance(spec, dict):
        raise SpaceError(where, "must be a mapping with a type")
    kind = spec.get("type")
    if kind not in _TYPES:
        raise SpaceError(f"{where}.type", f"must be one of {', '.join(_TYPES)}, got {kind!r}")
    allowed = {"type", "when"} | (
        {"choices"} if kind in ("categorical", "preset") else {"low", "high", "log", "step"}
    )
    extra = set(spec) - allowed
    if extra:
        raise SpaceError(f"{where}.{sorted(extra)[0]}", f"not a key of a {kind} parameter")
    when = _when(where, spec.get("when"), earlier)
    if kind == "preset":
        sets = spec.get("choices")
        if not isinstance(sets, dict) or not sets:
            raise SpaceError(f"{where}.choices", "must map each choice's name to config values")
        for name, values in sets.items():
            if not isinstance(values, dict) or not values:
                raise SpaceError(f"{where}.choices.{name}", "must map dotted config keys to values")
        clean = {str(n): {str(k): v for k, v in vs.items()} for n, vs in sets.items()}
        return Param(key, kind, choices=tuple(clean), when=when, sets=clean)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}.choices", "must be a non-empty list")
        return Param(key, kind, choices=tuple(choices), when=when)
    bounds: list[float] = []
    for name in ("low", "high"):
        v = spec.get(name)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise SpaceError(f"{where}.{name}", f"must be a number, got {v!r}")
        if not math.isfinite(v):
            raise SpaceError(f"{where}.{name}", f"must be a finite number, got {v!r}")
        if abs(v) >= 2**63:  # no setting takes one; Optuna's samplers fail on them
            raise SpaceError(f"{where}.{name}", f"out of range: {v!r} (must be below 2^63)")
        bounds.append(v)
    low, high = bounds
    if kind == "int" and (low != int(low) or high != int(high)):
        raise SpaceError(where, "an int parameter needs integer bounds")
    if low > high:
        raise SpaceError(where, f"low ({low}) > high ({high})")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise SpaceError(f"{where}.log", f"must be true or false, got {log!r}")
    if log and low <= 0:
        raise SpaceError(f"{where}.low", "a log-scaled range needs low > 0")
    if step is not None and (
        not isinstance(step, (int, float))
        or isinstance(step, bool)
        or not math.isfinite(step)
        or step <= 0
    ):
        raise SpaceError(f"{where}.step", "must be a positive number")
    if kind == "int" and step is not None and step != int(step):
        raise SpaceError(f"{where}.step", "an int parameter needs an integer step")
    if log and step is not None:
        raise SpaceError(where, "log and step cannot be combined")
    return Param(key, kind, float(low), float(high), log, step, when=when)


def _when(where: str, raw: Any, earlier: Mapping[str, Param]) -> dict[str, tuple]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{where}.when", "must map an earlier parameter to its value(s)")
    out = {}
    for k, v in raw.items():
        if k not in earlier:
            raise SpaceError(f"{where}.when", f"{k!r} is not a parameter declared before this one")
        values = tuple(v) if isinstance(v, list) else (v,)
        parent = earlier[k]
        if parent.type in ("categorical", "preset"):
            bad = [x for x in values if x not in parent.choices]
            if bad:
                raise SpaceError(f"{where}.when", f"{bad[0]!r} is not a choice of {k}")
        out[k] = values
    return out


def _named(raw: Any, key: str, known: list[str]) -> Strategy:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise SpaceError(key, "must be a name or a mapping with a name")
    if raw["name"] not in known:
        raise SpaceError(f"{key}.name", f"unknown name {raw['name']!r}; valid: {', '.join(known)}")
    options = {str(k): v for k, v in raw.items() if k != "name"}
    return Strategy(str(raw["name"]), options)
