"""FedAvg throughput: a bare PyTorch loop vs fedsweep in-process vs fedsweep on Ray.

Workload W1: make_classification(60000 x 64, 32 informative, 10 classes, random_state=0);
the first 50,000 rows train, cut IID into 100 parties of 500; the last 10,000 test. MLP
64-128-10, SGD lr 0.05, batch 32, one local epoch, all parties every round, 5 rounds.

    python benchmarks/fl_throughput.py            # (a) bare, (b) in-process, (c) Ray, 2 CPUs
    python benchmarks/fl_throughput.py --scale    # 1,000,000 parties sampling 1,000 per round, on Ray
    python benchmarks/fl_throughput.py --checkpoints  # their cost, and the time to resume
    python benchmarks/fl_throughput.py --methods  # each horizontal method's round beside FedAvg's

Every mode starts its clock before generating the data; Ray's own start (ray.init) is
excluded, the actor pool's start is not. Only the first repeat's bare loop pays PyTorch's
first-use costs in this process (the Ray actors pay theirs every cold start); the medians
are over repeats. Peak memory is the largest RSS sampled every 50 ms: of this process for (a)
and (b), summed over this process and all its descendants (Ray's processes) for the Ray modes.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import sklearn.datasets  # noqa: F401 - imported up front so no mode pays for it
import torch

N_SAMPLES, N_TRAIN, N_FEATURES, N_CLASSES = 60_000, 50_000, 64, 10
ROUNDS, LR, BATCH = 5, 0.05, 32


class PeakMemory:
    """Samples the summed RSS of this process (and, with ``tree``, all its descendants: Ray's
    processes) in a background thread."""

    def __init__(self, tree: bool, interval: float = 0.05) -> None:
        self.tree, self.interval, self.peak = tree, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)] if self.tree else [me]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_w1() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=N_SAMPLES,
        n_features=N_FEATURES,
        n_informative=32,
        n_classes=N_CLASSES,
        random_state=0,
    )
    x = x.astype(np.float32)
    xtr, ytr, xte, yte = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
    mean, std = xtr.mean(0), xtr.std(0)
    return (xtr - mean) / std, ytr, (xte - mean) / std, yte


def bare_loop(num_parties: int) -> dict[str, Any]:
    """(a): the same FedAvg written as one plain single-threaded PyTorch loop."""
    import torch.nn.functional as F
    from torch import nn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    xtr, ytr, xte, yte = make_w1()
    perm = np.random.default_rng(0).permutation(N_TRAIN)
    parts = [
        (torch.from_numpy(xtr[idx]), torch.from_numpy(ytr[idx]))
        for idx in np.array_split(perm, num_parties)
    ]
    xte_t, yte_t = torch.from_numpy(xte), torch.from_numpy(yte)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(N_FEATURES, 128), nn.ReLU(), nn.Linear(128, N_CLASSES))
    global_w = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    gen = torch.Generator().manual_seed(0)
    rounds, acc = [], 0.0
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        total = torch.zeros_like(global_w, dtype=torch.float64)
        n_total = 0
        for x, y in parts:
            with torch.no_grad():
                nn.utils.vector_to_parameters(global_w.clone(), model.parameters())
            opt = torch.optim.SGD(model.parameters(), lr=LR)
            order = torch.randperm(len(y), generator=gen)
            for s in range(0, len(y), BATCH):
                idx = order[s : s + BATCH]
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
            total += nn.utils.parameters_to_vector(model.parameters()).detach().double() * len(y)
            n_total += len(y)
        global_w = (total / n_total).float()
        with torch.no_grad():
            nn.utils.vector_to_parameters(global_w.clone(), model.parameters())
            acc = (model(xte_t).argmax(1) == yte_t).float().mean().item()
        rounds.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    torch.set_num_threads(threads)
    return {"wall": wall, "rounds": rounds, "acc": acc}


def fedsweep_config(executor: str, num_parties: int, rounds: int = ROUNDS) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {
            "name": "synthetic",
            "n_samples": N_SAMPLES,
            "n_features": N_FEATURES,
            "n_informative": 32,
            "n_redundant": 2,
            "n_classes": N_CLASSES,
            "random_state": 0,
            "test_fraction": (N_SAMPLES - N_TRAIN) / N_SAMPLES,
            "shuffle_split": False,
        },
        "partition": {"name": "iid", "num_parties": num_parties},
        "model": {"name": "mlp", "hidden": [128]},
        "trainer": {
            "name": "fedavg",
            "rounds": rounds,
            "local_epochs": 1,
            "batch_size": BATCH,
            "lr": LR,
        },
        "runtime": {"executor": executor},
        "tracking": {"enabled": False},
    }


def via_fedsweep(
    executor: str, num_parties: int, rounds: int = ROUNDS, pool: Any = None
) -> dict[str, Any]:
    """(b) and (c): the same workload through ``orchestrator.run``; ``pool``: an executor to reuse."""
    from orchestrator import run

    start = time.perf_counter()
    result = run(fedsweep_config(executor, num_parties, rounds), executor=pool)
    return {
        "wall": time.perf_counter() - start,
        "rounds": [h["round_time_s"] for h in result.history],
        "acc": result.metrics["test_accuracy"],
    }


def measured(fn: Callable[[], dict[str, Any]], tree: bool = True) -> dict[str, Any]:
    with PeakMemory(tree) as mem:
        out = fn()
    out["peak_gb"] = mem.peak / 2**30
    return out


def start_ray(num_cpus: int = 2) -> float:
    import ray

    t0 = time.perf_counter()
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level="ERROR",
        _node_ip_address="127.0.0.1",
    )
    return time.perf_counter() - t0


def main_compare(repeats: int) -> None:
    """Runs the modes in turn, ``repeats`` times over, and prints each figure's median."""
    from orchestrator.config import RuntimeConfig
    from orchestrator.runner import make_executor

    runs: dict[str, list[dict[str, Any]]] = {}
    ray_start = None
    for _ in range(repeats):
        runs.setdefault("a bare loop", []).append(measured(lambda: bare_loop(100), tree=False))
        runs.setdefault("b fedsweep in-process", []).append(
            measured(lambda: via_fedsweep("local", 100))
        )
        if ray_start is None:
            ray_start = start_ray(2)
        runs.setdefault("c fedsweep Ray, 2 CPUs", []).append(
            measured(lambda: via_fedsweep("ray", 100))
        )
        # The same run on a pool that already ran once (a Python session or a sweep reusing
        # its executor): the difference to (c) is what the actors' own start costs.
        with make_executor(RuntimeConfig(executor="ray")) as pool:
            via_fedsweep("ray", 100, pool=pool)
            runs.setdefault("c' Ray, warm actor pool", []).append(
                measured(lambda: via_fedsweep("ray", 100, pool=pool))
            )
    med = {
        name: {
            "wall": float(np.median([r["wall"] for r in rs])),
            "round": float(np.median([np.mean(r["rounds"][1:]) for r in rs])),
            "acc": float(np.median([r["acc"] for r in rs])),
            "peak_gb": float(np.median([r["peak_gb"] for r in rs])),
        }
        for name, rs in runs.items()
    }
    base = med["a bare loop"]
    print(
        f"W1: 100 parties x 500 samples, MLP 64-128-10, {ROUNDS} rounds; median of {repeats} "
        f"repeats (ray.init took {ray_start:.1f}s, excluded)"
    )
    print(
        f"{'mode':26s} {'wall s':>7s} {'x(a)':>6s} {'round s':>8s} {'x(a)':>6s} {'acc':>7s} {'peak GB':>8s}"
    )
    for name, r in med.items():
        print(
            f"{name:26s} {r['wall']:7.2f} {r['wall'] / base['wall']:6.2f} {r['round']:8.3f} "
            f"{r['round'] / base['round']:6.2f} {r['acc']:7.4f} {r['peak_gb']:8.2f}"
        )
    print(
        "wall s: from data generation to the trained model; round s: mean time per round after the first"
    )


SCALE_SAMPLES, SCALE_FEATURES, SCALE_TEST, SCALE_ROUNDS = 5, 16, 10_000, 5


def scale_config(parties: int, per_round: int | None) -> dict[str, Any]:
    """Workload S: ``parties`` parties of 5 samples each (make_classification with 16
    features, 8 informative, 10 classes, random_state 0, and 10,000 more rows to test), an
    MLP 16-32-10, one local epoch of one batch of 5, SGD lr 0.05; ``per_round`` parties
    sampled each round (None: all)."""
    n = parties * SCALE_SAMPLES + SCALE_TEST
    cfg = fedsweep_config("ray", parties, SCALE_ROUNDS)
    cfg["data"].update(
        n_samples=n, n_features=SCALE_FEATURES, n_informative=8, test_fraction=SCALE_TEST / n
    )
    cfg["model"]["hidden"] = [32]
    cfg["trainer"].update(batch_size=SCALE_SAMPLES, parties_per_round=per_round)
    return cfg


def main_scale() -> None:
    """A million parties, 1,000 of them sampled per round, beside 1,000 parties all sampled
    (the same work per round) and 100,000 parties all sampled every round, on Ray."""
    from orchestrator import run

    ray_start = start_ray(2)
    print(
        f"scale: workload S (5 samples per party, 16 features, MLP 16-32-10), {SCALE_ROUNDS} "
        f"rounds, FedAvg on Ray with 2 CPUs (ray.init took {ray_start:.1f}s, excluded)"
    )
    print(
        f"{'parties':>9s} {'per round':>9s} {'round s':>8s} {'first s':>8s} {'set-up s':>9s}"
        f" {'wall s':>7s} {'peak GB':>8s}"
    )
    rows = {}
    for parties, per_round in ((1_000, None), (1_000_000, 1_000), (100_000, None)):
        start = time.perf_counter()
        with PeakMemory(tree=True) as mem:
            result = run(scale_config(parties, per_round))
        wall = time.perf_counter() - start
        times = [h["round_time_s"] for h in result.history]
        r = rows[parties] = {"round": float(np.mean(times[1:])), "peak": mem.peak / 2**30}
        setup = wall - sum(times)
        print(
            f"{parties:9,d} {per_round or parties:9,d} {r['round']:8.3f} {times[0]:8.3f}"
            f" {setup:9.2f} {wall:7.2f} {r['peak']:8.2f}"
        )
    ratio = rows[1_000_000]["round"] / rows[1_000]["round"]
    print(
        f"1,000,000 parties sampling 1,000 vs 1,000 parties all sampled: round x{ratio:.2f} "
        f"(goal <= 2), peak {rows[1_000_000]['peak']:.2f} GB (goal < 8)"
    )
    print(
        "round s: mean round after the first; set-up s: the rest of the run (generating and "
        "partitioning the data, starting the actors, shipping the parties); peak GB: the "
        "largest summed RSS of this process and all Ray's processes (shared pages count once "
        "per process that maps them)"
    )


def _timed_run(cfg: dict[str, Any], stop_after: int | None = None, resume: str | None = None):
    """Runs ``cfg``; the times at which each round was reported, from the call; with
    ``stop_after``, interrupted once that many rounds are reported."""
    from orchestrator import run

    start = time.perf_counter()
    stamps: list[float] = []

    def progress(step: int, metrics: Any) -> None:
        stamps.append(time.perf_counter() - start)
        if stop_after is not None and len(stamps) == stop_after:
            raise KeyboardInterrupt

    try:
        run(cfg, progress=progress, resume=resume)
    except KeyboardInterrupt:
        pass
    return stamps, time.perf_counter() - start


def main_checkpoints(rounds: int = 20) -> None:
    """Per-round time with checkpoints every round, every 10 rounds, by default (auto) and
    never, for W1 and 10,000 parties on Ray; then a run stopped after round 15 and resumed."""
    import shutil
    import tempfile

    ray_start = start_ray(2)
    print(
        f"checkpoints: FedAvg on Ray with 2 CPUs, {rounds} rounds, checkpoints to a local "
        f"directory (ray.init took {ray_start:.1f}s, excluded)"
    )
    print(
        f"{'parties':>8s} {'every':>6s} {'round s':>8s} {'x never':>8s} {'ckpt MB':>8s}"
        f" {'first round s':>14s}"
    )
    for parties in (100, 10_000):
        never = None
        results = {}
        for every in (0, 1, 10, None):  # never first: the reference
            tmp = tempfile.mkdtemp(prefix="fedsweep-ckpt-")
            cfg = fedsweep_config("ray", parties, rounds)
            cfg["runtime"].update(checkpoint_every=every, checkpoint_dir=tmp)
            stamps, _ = _timed_run(cfg)
            per_round = float(np.mean(np.diff(stamps)))  # a round and its checkpoint, if any
            size = sum(f.stat().st_size for f in Path(tmp).glob("slot-*.pt")) / 2**20
            results[every] = (per_round, size, stamps[0])
            never = never or per_round
            label = {0: "never", None: "auto"}.get(every, str(every))
            print(
                f"{parties:8d} {label:>6s} {per_round:8.3f} {per_round / never:8.3f} "
                f"{size / max(1, len(list(Path(tmp).glob('slot-*.pt')))):8.2f} {stamps[0]:14.2f}"
            )
            shutil.rmtree(tmp, ignore_errors=True)
        # stopped after 15 rounds (checkpoint at 10), resumed: to its first round reported
        tmp = tempfile.mkdtemp(prefix="fedsweep-ckpt-")
        cfg = fedsweep_config("ray", parties, rounds)
        cfg["runtime"].update(checkpoint_every=10, checkpoint_dir=tmp)
        _timed_run(cfg, stop_after=15)
        stamps, wall = _timed_run(cfg, resume=tmp)
        print(
            f"{parties:8d} resume: first round after {stamps[0]:.2f} s (a fresh run's: "
            f"{results[10][2]:.2f} s), {len(stamps)} rounds run again from round 10, "
            f"whole resumed run {wall:.2f} s"
        )
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        "round s: mean time between rounds reported (a round and its checkpoint); "
        "first round s: from run() to the first round reported (Ray actors' start, data, "
        "partition, checkpoint load, one round)"
    )


METHODS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedprox": {"name": "fedprox"},
    "fedavgm": {"server": {"optimizer": "momentum"}},
    "fedadagrad": {"server": {"optimizer": "adagrad"}},
    "fedadam": {"server": {"optimizer": "adam"}},
    "fedyogi": {"server": {"optimizer": "yogi"}},
    "scaffold": {"name": "scaffold"},
    "fednova": {"name": "fednova"},
    "dp_fedavg": {"privacy": {"mode": "central", "clip": 1.0, "noise": 1.0}},
}
"""The horizontal methods of ``--methods``: trainer settings over W1's FedAvg."""


def main_methods(repeats: int) -> None:
    """Each horizontal method's mean round (after the first) on Ray with 2 CPUs, beside
    FedAvg's in the same invocation: W1 (100 parties of 500, all every round) and W1 cut into
    1,000 parties of 50 (all every round); the methods in turn, ``repeats`` times over."""
    from orchestrator import run

    ray_start = start_ray(2)
    print(f"methods: W1, {ROUNDS} rounds, on Ray with 2 CPUs (ray.init {ray_start:.1f}s, excluded)")
    table: dict[int, dict[str, list[float]]] = {}
    for parties in (100, 1_000):
        rounds = table[parties] = {m: [] for m in METHODS}
        for _ in range(repeats):
            for method, settings in METHODS.items():
                cfg = fedsweep_config("ray", parties)
                cfg["trainer"].update(settings)
                result = run(cfg)
                times = [h["round_time_s"] for h in result.history]
                rounds[method].append(float(np.mean(times[1:])))
                print(f"  {parties:5,d} parties {method:10s} {rounds[method][-1]:.3f} s/round")
    print(f"{'method':12s}" + "".join(f" {f'{p:,d} parties':>22s}" for p in table))
    for method in METHODS:
        cells = []
        for rounds in table.values():
            mine = float(np.median(rounds[method]))
            base = float(np.median(rounds["fedavg"]))
            cells.append(f"{mine:8.3f} s  x{mine / base:5.2f}")
        print(f"{method:12s}" + "".join(f" {c:>22s}" for c in cells))
    print(
        "s: median over repeats of the mean round after the first; x: beside FedAvg. FedAvg, "
        "FedProx and the server optimizers have each actor sum its parties' uploads; "
        "SCAFFOLD, FedNova and DP need every party's upload on the driver (SCAFFOLD's twice "
        "as large: its control variates ride along)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", action="store_true", help="a million parties, and 100,000 every round, on Ray"
    )
    parser.add_argument(
        "--checkpoints", action="store_true", help="the cost of round checkpoints, and of a resume"
    )
    parser.add_argument(
        "--methods", action="store_true", help="each horizontal method's round beside FedAvg's"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="repeats of the comparison (medians)"
    )
    args = parser.parse_args()
    if args.methods:
        main_methods(args.repeats)
    elif args.checkpoints:
        main_checkpoints()
    elif args.scale:
        main_scale()
    else:
        main_compare(args.repeats)
