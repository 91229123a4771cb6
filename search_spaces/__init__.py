"""What sweeps explore: search spaces as YAML data, parsed into small typed objects.

The shipped spaces sit beside this file: ``centralized.yaml``, ``fedavg.yaml``,
``fedprox.yaml`` and ``fedavg_accuracy_vs_bytes.yaml`` (multi-objective).
"""

from pathlib import Path

from search_spaces.space import Objective, Param, Space, SpaceError, load_space, parse_space

SHIPPED = Path(__file__).resolve().parent

__all__ = ["SHIPPED", "Objective", "Param", "Space", "SpaceError", "load_space", "parse_space"]
