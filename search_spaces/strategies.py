"""The samplers and pruners a space may name: one registry each, name -> constructor.

A space file names its sampler and pruner (``sampler: {name: tpe, seed: 0}``); the space
parser checks the name here and the sweep builds the Optuna object from here, so the list of
names exists once. Optuna is imported only when one is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from trainers.registry import Registry

__all__ = ["PRUNERS", "SAMPLERS"]

Grid = Callable[[], Mapping[str, list[Any]]]
"""The space's grid (parameter -> values), asked only by the grid sampler."""
SamplerFactory = Callable[[Mapping[str, Any], Grid], Any]
PrunerFactory = Callable[[Mapping[str, Any]], Any]

SAMPLERS: Registry[SamplerFactory] = Registry("sampler")
"""Sampler name -> (options, the space's grid) -> an Optuna sampler."""
PRUNERS: Registry[PrunerFactory] = Registry("pruner")
"""Pruner name -> options -> an Optuna pruner."""


def _optuna() -> Any:
    import optuna

    return optuna


SAMPLERS.register("tpe")(lambda opts, grid: _optuna().samplers.TPESampler(**opts))
SAMPLERS.register("random")(lambda opts, grid: _optuna().samplers.RandomSampler(**opts))
SAMPLERS.register("cmaes")(lambda opts, grid: _optuna().samplers.CmaEsSampler(**opts))
SAMPLERS.register("nsga2")(lambda opts, grid: _optuna().samplers.NSGAIISampler(**opts))


@SAMPLERS.register("grid")
def _grid(opts: Mapping[str, Any], grid: Grid) -> Any:
    """Optuna's grid sampler over every parameter's grid, without its ``study.stop()`` once
    the grid is exhausted (legal only inside ``study.optimize``; the driver caps the trials)."""
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return GridSampler(dict(grid()), seed=opts.get("seed"))


PRUNERS.register("none")(lambda opts: _optuna().pruners.NopPruner(**opts))
PRUNERS.register("median")(lambda opts: _optuna().pruners.MedianPruner(**opts))
PRUNERS.register("successive_halving")(
    lambda opts: _optuna().pruners.SuccessiveHalvingPruner(**opts)
)
PRUNERS.register("hyperband")(lambda opts: _optuna().pruners.HyperbandPruner(**opts))
