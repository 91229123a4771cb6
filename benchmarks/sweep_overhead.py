"""What a fedsweep sweep costs per trial over a bare Optuna loop, and what --parallel 2 buys.

60 trials of one small fixed training run (centralized logistic regression on digits, a few
epochs; the search varies the learning rate), run

    (a) as a plain Python loop over Optuna's ask/tell calling the same training function
        in-process, with no tracking;
    (b) through ``fedsweep sweep`` (``orchestrator.sweep``) with MLflow tracking, --parallel 1;
    (c) the same at --parallel 2.

    python benchmarks/sweep_overhead.py [--trials 60]

Prints the per-trial overhead ((b) - (a)) / trials in ms and the speed-up (b) / (c). Ray's
own start is excluded (it is started once, before (b)), and so is creating the MLflow store: a
2-trial warm-up sweep creates it in a temporary directory, then (b) and (c) run as new studies
in that store (each sweep still creates its study, its parent run, and finishes the study).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna

from clusters import InProcessExecutor
from orchestrator import run, sweep
from orchestrator.config import configure, load_config
from search_spaces import parse_space

SPACE = {
    "objective": [{"metric": "test_accuracy", "direction": "maximize"}],
    "params": {"trainer.lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True}},
    "sampler": {"name": "random", "seed": 0},
}


def config(tmp: Path | None) -> dict:
    tracking = {"enabled": tmp is not None, "experiment": "overhead"}
    if tmp is not None:
        tracking["uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    return {
        "seed": 0,
        "data": {"name": "digits"},
        "model": {"name": "logreg"},
        "trainer": {"name": "centralized", "rounds": 3, "batch_size": 64},
        "runtime": {"executor": "local"},
        "tracking": tracking,
    }


def plain_loop(trials: int) -> float:
    """(a): Optuna ask/tell around the same training function, no tracking."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    executor = InProcessExecutor()
    base = load_config(config(None))
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        lr = trial.suggest_float("trainer.lr", 0.01, 0.5, log=True)
        result = run(configure(base, {"trainer.lr": lr}), executor=executor)
        study.tell(trial, result.metrics["test_accuracy"])
    return time.perf_counter() - start


def via_sweep(store: Path, trials: int, parallel: int, study: str) -> tuple[float, float]:
    """(b), (c): ``orchestrator.sweep`` on Ray, tracked in the MLflow store in ``store`` (each
    call a new study). Returns the whole time and the part spent finishing the study (plots,
    trial table, registering the best model)."""
    start = time.perf_counter()
    result = sweep(config(store), parse_space(SPACE), trials=trials, parallel=parallel, study=study)
    elapsed = time.perf_counter() - start
    assert result.n_complete == trials, result
    return elapsed, result.timings["finish_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    args = parser.parse_args()
    n = args.trials
    plain_loop(3)  # warm PyTorch up in this process, as the Ray workers are by their first trial
    a = plain_loop(n)
    import ray

    ray.init(
        num_cpus=2, include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1"
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        # Excluded, like Ray's start: the workers' first trial, and creating the MLflow store's
        # tables (a researcher's mlflow.db already has them).
        via_sweep(store, 2, 2, "warm-up")
        b, b_finish = via_sweep(store, n, 1, "parallel-1")
        c, c_finish = via_sweep(store, n, 2, "parallel-2")
    print(f"{n} trials of centralized logreg on digits (3 epochs)")
    print(
        f"(a) plain Optuna ask/tell loop, no tracking : {a:7.2f} s  ({1000 * a / n:6.1f} ms/trial)"
    )
    print(
        f"(b) fedsweep sweep, MLflow, --parallel 1    : {b:7.2f} s  ({1000 * b / n:6.1f} ms/trial)"
    )
    print(
        f"(c) fedsweep sweep, MLflow, --parallel 2    : {c:7.2f} s  ({1000 * c / n:6.1f} ms/trial)"
    )
    print(f"overhead per trial ((b) - (a)) / {n}: {1000 * (b - a) / n:.1f} ms")
    print(f"speed-up (b) / (c): {b / c:.2f}")
    print(
        f"of which finishing the study once (plots, trial table, best model packaged and "
        f"registered): (b) {b_finish:.2f} s, (c) {c_finish:.2f} s; without it: overhead "
        f"{1000 * (b - b_finish - a) / n:.1f} ms/trial, speed-up {(b - b_finish) / (c - c_finish):.2f}"
    )


if __name__ == "__main__":
    main()
