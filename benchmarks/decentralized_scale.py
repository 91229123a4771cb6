"""Decentralized optimisation at scale: 256 nodes on a random 4-regular graph.

Data: make_classification(16000 x 20, 10 informative, 2 classes, random_state=0); 12,800
training rows cut IID into 256 nodes of 50; L1-logistic regression (l1 = 1e-3), minibatch 8.
DPSVRG (alpha 0.3, K = one local pass) and DSPG (a0 1.0), 20 epochs each, metrics every step.

    python benchmarks/decentralized_scale.py             # Ray (2 CPUs, 2 actors) vs in-process
    python benchmarks/decentralized_scale.py --epochs 5

Every combination runs in one invocation. The reference optimum F* is solved once, before
the clock starts, and served from the cache afterwards. Per-step figures are means over all
steps but the first, which ships the nodes' data. Peak memory is the largest summed RSS of
this process and all its descendants (Ray's processes), sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import numpy as np
from fl_throughput import PeakMemory, start_ray


def config(algorithm: str, executor: str, epochs: float, cache: str) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {
            "name": "synthetic",
            "n_samples": 16_000,
            "n_features": 20,
            "n_informative": 10,
            "n_redundant": 2,
            "n_classes": 2,
            "random_state": 0,
            "test_fraction": 0.2,
            "shuffle_split": False,
        },
        "partition": {"name": "iid", "num_parties": 256},
        "model": {"name": "logreg"},
        "trainer": {
            "name": algorithm,
            "decentralized": {
                "loss": "logistic",
                "l1": 1e-3,
                "topology": "regular",
                "k": 4,
                "batch_size": 8,
                "alpha": 0.3,
                "a0": 1.0,
                "epochs": epochs,
                "cache_dir": cache,
            },
        },
        "runtime": {"executor": executor},
        "tracking": {"enabled": False},
    }


def measure(algorithm: str, executor: str, epochs: float, cache: str) -> dict[str, float]:
    from orchestrator import run

    with PeakMemory(tree=True) as mem:
        start = time.perf_counter()
        result = run(config(algorithm, executor, epochs, cache))
        wall = time.perf_counter() - start
    steps = [h["step_time_s"] for h in result.history]
    return {
        "steps": len(steps),
        "step": float(np.mean(steps[1:])),
        "first": steps[0],
        "wall": wall,
        "sub": result.metrics["suboptimality"],
        "gap": result.metrics["spectral_gap"],
        "peak_gb": mem.peak / 2**30,
    }


def main(epochs: float) -> None:
    cache = tempfile.mkdtemp(prefix="fedsweep-fstar-")
    from orchestrator import run

    run(config("dspg", "local", 0.01, cache))  # solves and caches F* outside the clock
    ray_start = start_ray(2)
    print(
        f"256 nodes, random 4-regular graph, {epochs:g} epochs, 2 CPUs "
        f"(ray.init took {ray_start:.1f}s, excluded)"
    )
    print(
        f"{'algorithm':9s} {'executor':9s} {'steps':>6s} {'step ms':>8s} {'first s':>8s} "
        f"{'wall s':>7s} {'F - F*':>9s} {'gap':>7s} {'peak GB':>8s}"
    )
    per_step = {}
    for algorithm in ("dpsvrg", "dspg"):
        for executor in ("ray", "local"):
            r = measure(algorithm, executor, epochs, cache)
            per_step[algorithm, executor] = r["step"]
            print(
                f"{algorithm:9s} {executor:9s} {r['steps']:6d} {1e3 * r['step']:8.2f} "
                f"{r['first']:8.3f} {r['wall']:7.2f} {r['sub']:9.2e} {r['gap']:7.4f} "
                f"{r['peak_gb']:8.2f}"
            )
    for algorithm in ("dpsvrg", "dspg"):
        ratio = per_step[algorithm, "ray"] / per_step[algorithm, "local"]
        print(f"{algorithm}: ray / local per step {ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=20)
    main(parser.parse_args().epochs)
