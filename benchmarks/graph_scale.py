"""Graph FL at scale: 100 clients on a 20,000-node stochastic block model, on Ray.

Data: the seeded SBM of 20,000 nodes in 10 communities (p_in 0.004, p_out 0.0001: about 8
edges inside a node's community and 2 across), 64 features (the community's mean plus
N(0, 4^2) noise); 30% held out as the global test graph, the rest split into 100 clients by
Louvain communities. Each method trains a 64-wide GNN (FedAvg: GCN, the reduction layer and
two convolutions; FedEgo: GraphSAGE, the same depth; GFL: the encoder and one GraphSAGE
layer), Adam lr 0.003, batch 32, one local epoch (GFL: 4 steps), fan-out 6 per hop (GFL 10).

    python benchmarks/graph_scale.py               # FedAvg-GCN, FedEgo and GFL, Ray, 2 CPUs
    python benchmarks/graph_scale.py --rounds 10

The three run in one invocation on one Ray (2 CPUs, 2 actors). Per-round time is the mean of
the trainer's own ``round_time_s`` over rounds 2..R (round 1 pays for shipping the clients);
set-up is the rest of the run's wall time (the graph generated, Louvain, the clients'
subgraphs, the actors' data). Peak memory is the largest summed RSS of this process and all
its descendants (Ray's processes), sampled every 50 ms, over the method's whole run.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from fl_throughput import PeakMemory, start_ray

METHODS: dict[str, dict[str, Any]] = {
    "graph_fedavg (gcn)": {
        "trainer": {"name": "graph_fedavg"},
        "model": {"name": "gcn", "hidden": [64, 64, 64]},
    },
    "fedego": {"trainer": {"name": "fedego"}, "model": {"name": "sage", "hidden": [64, 64, 64]}},
    "gfl (Q=4)": {
        "trainer": {"name": "gfl", "gfl": {"steps": 4}, "graph": {"fanout": [10]}},
        "model": {"name": "sage", "hidden": [64, 64]},
    },
}


def config(method: str, rounds: int) -> dict[str, Any]:
    extra = METHODS[method]
    return {
        "seed": 0,
        "data": {
            "name": "sbm",
            "n_samples": 20_000,
            "n_classes": 10,
            "n_features": 64,
            "p_in": 0.004,
            "p_out": 0.0001,
            "feature_noise": 4.0,
        },
        "partition": {"name": "louvain", "num_parties": 100},
        "model": {**extra["model"], "dropout": 0.5},
        "trainer": {
            "rounds": rounds,
            "local_epochs": 1,
            "batch_size": 32,
            "optimizer": "adam",
            "lr": 0.003,
            "graph": {"fanout": [6, 6]},
            **extra["trainer"],
        },
        "runtime": {"executor": "ray"},
        "tracking": {"enabled": False},
    }


def measure(method: str, rounds: int) -> dict[str, float]:
    from orchestrator import run

    with PeakMemory(tree=True) as mem:
        start = time.perf_counter()
        result = run(config(method, rounds))
        wall = time.perf_counter() - start
    times = [h["round_time_s"] for h in result.history]
    return {
        "round": float(np.mean(times[1:])),
        "first": times[0],
        "setup": wall - sum(times),
        "wall": wall,
        "f1": result.metrics["local_f1"],
        "acc": result.metrics["test_accuracy"],
        "mb_graph": result.history[-1]["bytes_graph"] / 2**20,
        "mb_model": result.history[-1]["bytes_model"] / 2**20,
        "peak_gb": mem.peak / 2**30,
    }


def main(rounds: int) -> None:
    ray_start = start_ray(2)
    print(
        f"Graph FL, 100 clients, SBM 20,000 nodes x 64 features, {rounds} rounds, Ray 2 CPUs "
        f"(ray.init took {ray_start:.1f}s, excluded)"
    )
    print(
        f"{'method':20s} {'round s':>8s} {'first s':>8s} {'set-up s':>9s} {'wall s':>7s} "
        f"{'local F1':>9s} {'test acc':>9s} {'MB graph':>9s} {'MB model':>9s} {'peak GB':>8s}"
    )
    for method in METHODS:
        r = measure(method, rounds)
        print(
            f"{method:20s} {r['round']:8.3f} {r['first']:8.3f} {r['setup']:9.2f} {r['wall']:7.2f} "
            f"{r['f1']:9.4f} {r['acc']:9.4f} {r['mb_graph']:9.2f} {r['mb_model']:9.2f} "
            f"{r['peak_gb']:8.2f}",
            flush=True,
        )
    print("MB graph / model: one round's graph messages (FedEgo's ego-graph uploads, GFL's")
    print("representations and gradients) and model downloads and uploads, all clients.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    main(parser.parse_args().rounds)
