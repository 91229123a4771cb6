"""Where a command's time goes: the wall time of each phase of a run or a sweep, in the order
the phases first ran.

``fedsweep run --profile`` and ``fedsweep sweep --profile`` print them; every tracked run logs
them as metrics (``time.<phase>_s``), and a sweep's parent run logs its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Timings", "since_process_start"]


class Timings:
    """Seconds per named phase; a phase entered twice adds up."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def metrics(self) -> dict[str, float]:
        """The phases as MLflow metric names: ``time.<phase>_s``."""
        return {f"time.{name.replace(' ', '_')}_s": s for name, s in self.phases.items()}

    def table(self, title: str) -> str:
        """The phases as aligned lines with their share of the total (for --profile)."""
        total = sum(self.phases.values()) or 1.0
        width = max((len(n) for n in self.phases), default=5)
        lines = [f"{title}:"]
        for name, seconds in self.phases.items():
            lines.append(f"  {name:<{width}}  {seconds:8.3f} s  {100 * seconds / total:5.1f}%")
        lines.append(f"  {'total':<{width}}  {sum(self.phases.values()):8.3f} s")
        return "\n".join(lines)


def since_process_start() -> float:
    """Seconds since this process was created (the interpreter's start and its imports, when
    asked first thing)."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())
