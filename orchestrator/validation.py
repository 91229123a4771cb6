"""Checks on a typed experiment config, before anything runs.

Nothing here knows a trainer, a dataset or a metric by name. Every field's own rule (its
range, the registry its name comes from, see :mod:`trainers.rules`) and every section's
cross-field checks are walked generically; then the chosen trainer checks its settings
against the federation (:meth:`trainers.Trainer.validate`). The registries named by fields
(datasets, partitioners, trainers...) are filled when the orchestrator package is imported.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError
from trainers import TRAINERS
from trainers.base import Federation, Invalid
from trainers.cache import CACHE
from trainers.rules import Each, field_rule, is_path

if TYPE_CHECKING:
    from orchestrator.config import ExperimentConfig

__all__ = ["problems", "validate"]


def validate(cfg: ExperimentConfig) -> None:
    """Raises ConfigError for the first problem: a field's rule, a section's check, or what
    the chosen trainer refuses."""
    import orchestrator.data  # noqa: F401 - fills the data set and partitioner registries

    for key, problem in problems(cfg):
        raise ConfigError(key, problem)
    trainer = TRAINERS.get(cfg.trainer.name)
    vertical = cfg.partition.name == "vertical"  # the partitioner of orchestrator.data.VERTICAL
    if trainer.vertical != vertical:
        if vertical:
            names = [n for n in TRAINERS.names() if TRAINERS.get(n).vertical]
            raise ConfigError(
                "trainer.name",
                f"{cfg.trainer.name} is not a vertical trainer; with partition.name=vertical "
                f"use one of {', '.join(names)}",
            )
        raise ConfigError(
            "partition.name", f"{cfg.trainer.name} is vertical: it needs partition.name=vertical"
        )
    _check_graph(cfg, trainer.graph)
    if str(cfg.runtime.device) == "cuda" and "cuda" not in trainer.devices:
        raise ConfigError(
            "runtime.device",
            f"{cfg.trainer.name} runs on the CPU only (cuda: "
            + ", ".join(n for n in TRAINERS.names() if "cuda" in TRAINERS.get(n).devices)
            + ")",
        )
    unread = _unread(cfg.trainer, trainer.reads)
    if unread:
        section = unread.split(".")[1]
        why = trainer.unused.get(section) or "read by " + ", ".join(
            n for n in TRAINERS.names() if section in TRAINERS.get(n).reads
        )
        raise ConfigError(unread, f"{cfg.trainer.name} does not use trainer.{section} ({why})")
    try:
        trainer.validate(cfg.trainer, cfg.model, Federation(cfg.partition.num_parties, vertical))
    except Invalid as exc:
        raise ConfigError(exc.key, exc.problem) from None


def _check_graph(cfg: ExperimentConfig, graph_trainer: bool) -> None:
    """A graph trainer, a graph data set, a graph partitioner and a graph model go together."""
    from orchestrator.data import DATASETS, PARTITIONERS
    from trainers.graph.models import GRAPH_MODELS

    graph_data = bool(getattr(DATASETS.get(cfg.data.name), "graph", False))
    graph_split = bool(getattr(PARTITIONERS.get(cfg.partition.name), "graph", False))
    if graph_trainer and not graph_data:
        graphs = [n for n in DATASETS.names() if getattr(DATASETS.get(n), "graph", False)]
        raise ConfigError(
            "data.name",
            f"{cfg.trainer.name} trains on a graph: use data.name {', '.join(graphs)}",
        )
    if graph_data and not graph_trainer:
        names = [n for n in TRAINERS.names() if TRAINERS.get(n).graph]
        raise ConfigError(
            "trainer.name",
            f"{cfg.data.name} is a graph data set: use a graph trainer ({', '.join(names)})",
        )
    if graph_data != graph_split:
        splits = [n for n in PARTITIONERS.names() if getattr(PARTITIONERS.get(n), "graph", False)]
        problem = (
            f"a graph is split by {', '.join(splits)}"
            if graph_data
            else f"{cfg.partition.name} splits a graph, and data.name {cfg.data.name} is not one"
        )
        raise ConfigError("partition.name", problem)
    if cfg.model.name in GRAPH_MODELS and not graph_trainer:
        raise ConfigError(
            "model.name", f"{cfg.model.name} is a graph model: the graph trainers train it"
        )


def _unread(section: Any, reads: frozenset[str]) -> str | None:
    """The first key of the trainer section that differs from its default outside the keys
    the trainer reads (``trainer.aggregator.name``), or None."""
    from trainers.config import TrainerConfig

    default = _default_trainer()
    for f in dataclasses.fields(TrainerConfig):
        if f.name != "name" and f.name not in reads:
            key = _difference(
                getattr(section, f.name), getattr(default, f.name), f"trainer.{f.name}"
            )
            if key is not None:
                return key
    return None


def _default_trainer() -> Any:
    """The trainer section's defaults (read only), made once per process: every trial's
    config is validated by its driver and its worker."""
    from trainers.config import TrainerConfig

    return CACHE.get("validation.default_trainer", None, TrainerConfig)


def _difference(value: Any, default: Any, key: str) -> str | None:
    """The first leaf under ``key`` where ``value`` and ``default`` differ, or None."""
    if dataclasses.is_dataclass(value) and type(value) is type(default):
        for f in dataclasses.fields(value):
            v, d = getattr(value, f.name), getattr(default, f.name)
            if is_path(f.metadata) and isinstance(v, str) and isinstance(d, str):
                # a relative default made absolute when the config loaded, wherever that was
                # (a sweep's driver, a trial's worker): still the default
                if Path(v).parts[-len(Path(d).parts) :] == Path(d).parts:
                    continue
            found = _difference(v, d, f"{key}.{f.name}")
            if found is not None:
                return found
        return None
    return None if value == default else key


def problems(node: object, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, problem) for every field rule and section check that ``node`` (a config
    dataclass) and the sections under it fail, fields first, in declaration order."""
    kind: type = type(node)
    for name, rule in _rules(kind):
        value = getattr(node, name)
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(value):
            yield from problems(value, f"{key}.")
            continue
        bad = _not_a_number(key, value)
        if bad:
            yield bad
        elif value is None or rule is None:
            continue
        elif isinstance(rule, Each):
            yield from rule.problems(key, value)
        else:
            problem = rule.problem(value)
            if problem:
                yield key, problem
    check = getattr(node, "problems", None)
    if check is not None:
        for name, problem in check():
            yield f"{prefix}{name}", problem


def _not_a_number(key: str, value: Any) -> tuple[str, str] | None:
    """Every number of every setting is finite and fits 64 bits: NaN passes every range
    test, infinity every lower bound, and no setting means either."""
    if isinstance(value, list):
        for i, v in enumerate(value):
            bad = _not_a_number(f"{key}[{i}]", v)
            if bad:
                return bad
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return key, f"must be a finite number, got {value}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return key, f"out of range: {value} (integers must be below 2^63)"
    return None


@functools.cache
def _rules(cls: type) -> tuple[tuple[str, Any], ...]:
    return tuple((f.name, field_rule(f.metadata)) for f in dataclasses.fields(cls))
