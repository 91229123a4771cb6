"""What a config field accepts, declared where the field is: ranges, registry names, paths.

Config sections are plain dataclasses. A field that needs more than its type carries a rule in
its metadata, and a section may add the checks that involve several of its fields::

    lr: float = field(default=0.05, metadata=positive())
    name: str = field(default="mean", metadata=one_of("aggregator"))

    def problems(self) -> Iterator[tuple[str, str]]:  # (field, problem) of the section
        ...

The orchestrator walks a loaded config and reports the first problem as a config error that
names the key. Fixed sets of choices are :class:`Choice` enums instead: the loader refuses any
other value and lists the members.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Choice",
    "Names",
    "Range",
    "Rule",
    "Sectioned",
    "at_least",
    "between",
    "each",
    "field_rule",
    "is_path",
    "one_of",
    "file_path",
    "positive",
]


class Choice(str, enum.Enum):
    """A fixed set of choices: the members' names are their values, as a config spells them.

    A member compares equal to its value (``Optimizer.sgd == "sgd"``) and prints as it.
    """

    def __str__(self) -> str:
        return str(self.value)


class Rule(Protocol):
    """One field's constraint: the problem with a value, or None when it is fine."""

    def problem(self, value: Any) -> str | None: ...


@dataclass(frozen=True)
class Range:
    """A number within bounds; either bound may be open (strict) or absent."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""
    """Said after the bounds, e.g. "(a passive party)"."""

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # the loader checks types
        ok = not (isinstance(value, float) and math.isnan(value))
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if ok:
            return None
        return f"must be {self.describe()}{f' {self.note}' if self.note else ''}, got {value!r}"

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"


def _num(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Names:
    """A name registered in the registry of ``kind`` (see :class:`trainers.registry.Registry`)."""

    kind: str

    def problem(self, value: Any) -> str | None:
        from trainers.registry import Registry

        known = Registry.of(self.kind).names()
        if value in known:
            return None
        return f"unknown name {value!r}; valid: {', '.join(known)}"


@dataclass(frozen=True)
class Each:
    """A rule applied to every element of a list (the key names the element: ``key[i]``)."""

    rule: Rule

    def problems(self, key: str, values: Iterable[Any]) -> Iterator[tuple[str, str]]:
        for i, v in enumerate(values):
            problem = self.rule.problem(v)
            if problem:
                yield f"{key}[{i}]", problem


def at_least(n: float, note: str = "") -> dict[str, Any]:
    """Field metadata: value >= n."""
    return {"rule": Range(low=n, note=note)}


def positive() -> dict[str, Any]:
    """Field metadata: value > 0."""
    return {"rule": Range(low=0, low_open=True)}


def between(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> dict[str, Any]:
    """Field metadata: low <= value <= high, each end closed unless told open."""
    return {"rule": Range(low, high, low_open, high_open)}


def one_of(kind: str) -> dict[str, Any]:
    """Field metadata: a name registered under ``kind``."""
    return {"rule": Names(kind)}


def each(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Field metadata: the rule of ``metadata`` on every element of a list field."""
    return {"rule": Each(metadata["rule"])}


def file_path(or_name: bool = False) -> dict[str, Any]:
    """Field metadata: a file-system path, made absolute when the config is loaded; with
    ``or_name``, only when something lies there (else it may name a remote thing: a hub id)."""
    return {"path": "or_name" if or_name else True}


def field_rule(metadata: Mapping[str, Any]) -> Rule | Each | None:
    """The rule a field's metadata declares, if any."""
    return metadata.get("rule")


def is_path(metadata: Mapping[str, Any]) -> bool:
    """Whether the field holds a path."""
    return bool(metadata.get("path"))


class Sectioned(Protocol):
    """A config section with checks across its own fields."""

    def problems(self) -> Iterator[tuple[str, str]]:
        """(field name relative to the section, problem) for each problem found."""
        ...
