"""The error types for bad input and for services that do not answer."""

from __future__ import annotations

from clusters.base import ServiceError

__all__ = ["ConfigError", "ServiceError"]


class ConfigError(ValueError):
    """A problem with a config or its inputs, reported as ``config error: <key>: <problem>``."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"config error: {key}: {problem}")
