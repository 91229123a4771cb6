"""The one error type for bad input."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A problem with a config or its inputs, reported as ``config error: <key>: <problem>``."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"config error: {key}: {problem}")
