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
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError
from trainers import TRAINERS
from trainers.base import Federation, Invalid
from trainers.rules import Each, field_rule

if TYPE_CHECKING:
    from orchestrator.config import ExperimentConfig

__all__ = ["problems", "validate"]


def validate(cfg: ExperimentConfig) -> None:
    """Raises ConfigError for the first problem: a field's rule, a section's check, or what
    the chosen trainer refuses."""
    for key, problem in problems(cfg):
        raise ConfigError(key, problem)
    trainer = TRAINERS.get(cfg.trainer.name)
    vertical = cfg.partition.name == "vertical"
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
    if not trainer.drops_parties:
        if cfg.trainer.dropout > 0:
            raise ConfigError(
                "trainer.dropout", f"{cfg.trainer.name} has no parties that could drop out"
            )
        if cfg.trainer.stragglers.deadline is not None:
            raise ConfigError(
                "trainer.stragglers.deadline", f"{cfg.trainer.name} has no parties that answer late"
            )
    try:
        trainer.validate(cfg.trainer, cfg.model, Federation(cfg.partition.num_parties, vertical))
    except Invalid as exc:
        raise ConfigError(exc.key, exc.problem) from None


def problems(node: object, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, problem) for every field rule and section check that ``node`` (a config
    dataclass) and the sections under it fail, fields first, in declaration order."""
    kind: type = type(node)
    for name, rule in _rules(kind):
        value = getattr(node, name)
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(value):
            yield from problems(value, f"{key}.")
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


@functools.cache
def _rules(cls: type) -> tuple[tuple[str, Any], ...]:
    return tuple((f.name, field_rule(f.metadata)) for f in dataclasses.fields(cls))
