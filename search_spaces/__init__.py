"""What sweeps explore: search spaces as YAML data, parsed into small typed objects.

The shipped spaces sit beside this file: ``centralized.yaml``, ``fedavg.yaml``,
``fedprox.yaml``, ``fedavg_accuracy_vs_bytes.yaml`` (multi-objective), ``robust.yaml``,
``cmfl.yaml``, ``cmfl_comparison.yaml`` (a grid with a results table), ``dpsvrg.yaml``,
``dspg.yaml``, their step-only versions ``dpsvrg_step.yaml`` and ``dspg_step.yaml``, and
``decentralized_comparison.yaml`` (a grid with curves), ``distill.yaml``,
``distill_pareto.yaml`` and ``distill_latency.yaml`` (multi-objective), and
``distill_comparison.yaml`` (a grid).
"""

from pathlib import Path

from search_spaces.space import (
    Objective,
    Param,
    Space,
    SpaceError,
    Strategy,
    load_space,
    parse_space,
)
from search_spaces.strategies import PRUNERS, SAMPLERS

SHIPPED = Path(__file__).resolve().parent

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "SHIPPED",
    "Objective",
    "Param",
    "Space",
    "SpaceError",
    "Strategy",
    "load_space",
    "parse_space",
]
