"""CMFL at scale: 1,000 parties, active rate 0.1 (40 members, 60 trainers, 40 aggregated).

Data: make_classification(60000 x 64, 32 informative, 10 classes, random_state=0), the first
50,000 rows cut into 1,000 parties of 2 label shards each (about 50 samples per party), the
last 10,000 held out. Model: MLP 64-128-10 (9,610 parameters). SGD lr 0.05, batch 10, one
local epoch. A sign-flip attack on 10% of the parties, so that scoring sees Byzantine models.

    python benchmarks/cmfl_scale.py              # Ray (2 CPUs, 2 actors) vs in-process
    python benchmarks/cmfl_scale.py --rounds 20

Both ways run in one invocation, Ray first. Per-round figures are means over rounds 2..R
(round 1 pays for shipping the parties); the split into local training, committee scoring
and aggregation comes from the trainer's own per-round metrics. Peak memory is the largest
summed RSS of this process and all its descendants (Ray's processes), sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from fl_throughput import PeakMemory, start_ray


def config(executor: str, rounds: int) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {
            "name": "synthetic",
            "n_samples": 60_000,
            "n_features": 64,
            "n_informative": 32,
            "n_redundant": 2,
            "n_classes": 10,
            "random_state": 0,
            "test_fraction": 1 / 6,
            "shuffle_split": False,
        },
        "partition": {"name": "shards", "num_parties": 1000, "labels_per_party": 2},
        "model": {"name": "mlp", "hidden": [128]},
        "trainer": {
            "name": "cmfl",
            "rounds": rounds,
            "batch_size": 10,
            "lr": 0.05,
            "cmfl": {"active_rate": 0.1, "committee_rate": 0.4, "aggregation_rate": 0.4},
            "attack": {"name": "sign_flip", "fraction": 0.1},
        },
        "runtime": {"executor": executor},
        "tracking": {"enabled": False},
    }


def measure(executor: str, rounds: int) -> dict[str, float]:
    from orchestrator import run

    with PeakMemory(tree=True) as mem:
        start = time.perf_counter()
        result = run(config(executor, rounds))
        wall = time.perf_counter() - start
    later = result.history[1:]
    mean = {k: float(np.mean([h[k] for h in later])) for k in later[0]}
    return {
        "wall": wall,
        "round": mean["round_time_s"],
        "train": mean["time_train_s"],
        "scoring": mean["time_scoring_s"],
        "aggregate": mean["time_aggregate_s"],
        "first": result.history[0]["round_time_s"],
        "acc": result.metrics["test_accuracy"],
        "byz": mean["byzantine_share"],
        "peak_gb": mem.peak / 2**30,
    }


def main(rounds: int) -> None:
    ray_start = start_ray(2)
    print(
        f"CMFL, 1,000 parties, active rate 0.1, {rounds} rounds, MLP 64-128-10, 2 CPUs "
        f"(ray.init took {ray_start:.1f}s, excluded)"
    )
    results = {"ray": measure("ray", rounds), "local": measure("local", rounds)}
    print(
        f"{'executor':9s} {'round s':>8s} {'train s':>8s} {'score ms':>9s} {'agg ms':>7s} "
        f"{'first s':>8s} {'wall s':>7s} {'acc':>7s} {'byz share':>9s} {'peak GB':>8s}"
    )
    for name, r in results.items():
        print(
            f"{name:9s} {r['round']:8.3f} {r['train']:8.3f} {1e3 * r['scoring']:9.2f} "
            f"{1e3 * r['aggregate']:7.2f} {r['first']:8.3f} {r['wall']:7.2f} {r['acc']:7.4f} "
            f"{r['byz']:9.3f} {r['peak_gb']:8.2f}"
        )
    print(f"ray / local per round: {results['ray']['round'] / results['local']['round']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    main(parser.parse_args().rounds)
