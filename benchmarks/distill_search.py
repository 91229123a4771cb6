"""Distillation search throughput: trials per hour at --parallel 2 against one at a time.

The same 12-trial study (``search_spaces/distill.yaml``, TPE seed 0, over
``configs/distill_digits.yaml`` with 10 distillation epochs) runs twice on a local Ray with 2
CPUs, each time in a fresh MLflow store and Optuna journal: first with one trial at a time,
then with two. Both use one teacher, a 6-block ViT trained once beforehand (3 rounds, outside
the clock) and referenced by its run. Every trial is a nested MLflow run.

    python benchmarks/distill_search.py
    python benchmarks/distill_search.py --trials 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(trials: int) -> None:
    import ray

    from orchestrator import run, sweep

    work = Path(tempfile.mkdtemp(prefix="fedsweep-distill-bench-"))
    os.chdir(work)
    teacher_uri = f"sqlite:///{work / 'teacher.db'}"
    teacher = run(
        REPO / "configs" / "vit_teacher_digits.yaml",
        ["trainer.rounds=3", "runtime.executor=local", f"tracking.uri={teacher_uri}"],
    )
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    rates = {}
    for parallel in (1, 2):
        store = work / f"p{parallel}"
        store.mkdir()
        overrides = [
            "trainer.distill.teacher.source=mlflow",
            f"trainer.distill.teacher.uri=run:{teacher.run_id}",
            "trainer.distill.epochs=10",
            f"trainer.distill.teacher.tracking_uri={teacher_uri}",
            f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
        ]
        start = time.perf_counter()
        result = sweep(
            REPO / "configs" / "distill_digits.yaml",
            REPO / "search_spaces" / "distill.yaml",
            overrides,
            trials=trials,
            parallel=parallel,
            study=f"bench-p{parallel}",
            storage=f"journal://{store / 'optuna.journal'}",
        )
        elapsed = time.perf_counter() - start
        rates[parallel] = result.n_complete / elapsed * 3600
        print(
            f"--parallel {parallel}: {result.n_complete} trials in {elapsed:.1f} s, "
            f"{rates[parallel]:.0f} trials/hour"
        )
    print(f"speed-up (parallel 2 / parallel 1): {rates[2] / rates[1]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    main(parser.parse_args().trials)
