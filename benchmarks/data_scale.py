"""Loading and partitioning a million-row Parquet file: fedsweep beside Flower Datasets.

Workload: a Parquet file of 1,000,000 rows (``--rows``) of 64 float32 features ``x0..x63``
(Gaussian around a per-class centre) and an int64 ``label`` of 10 classes, generated with
numpy from seed 0 into a temporary directory (``--file PATH`` reuses a file that has those
columns). Its size is the Arrow table's ``nbytes`` (1,000,000 x (64 x 4 + 8) bytes: 0.25 GiB).
Both ways hold out 20% of the rows as the test set and cut the other 80% into 1,000 parties
by Dirichlet label skew (alpha 0.5, every party at least one sample), ending with every
party's feature matrix and labels, and the test set's, as numpy arrays in memory:

    (a) fedsweep: ``orchestrator.data.prepare`` on a ``data.name=parquet`` config (the
        label column read, the shuffled train/test split and the Dirichlet partitioner on
        the labels, then each feature column read, checked and copied into the party-ordered
        matrix, and standardization, which (b) does not do); then the whole run
        (``orchestrator.runner.run``: the same preparation, the data shipped to Ray's object
        store, one FedAvg round of logistic regression over all 1,000 parties, one local
        epoch) on a Ray of 2 CPUs that the benchmark starts (its start excluded), with an
        actor pool warmed first by a one-round run on digits.
    (b) Flower Datasets, installed by the benchmark in a virtual environment of its own
        (``--venv``; skipped when there already): ``datasets.Dataset.from_parquet`` (into a
        fresh Hugging Face cache, so the file's conversion to Arrow is paid as a first run
        pays it), the last 20% of the rows held out (``select`` of contiguous ranges: the
        rows are i.i.d., and a shuffled ``train_test_split`` would leave an indices mapping
        that the partitioner's ``Dataset.unique`` flattens, 29 s more at 100,000 rows),
        ``DirichletPartitioner(num_partitions=1000, partition_by="label", alpha=0.5,
        min_partition_size=1, self_balancing=False, shuffle=False, seed=42)`` over the
        training rows, then every partition's rows (``load_partition(i).with_format("arrow")
        [:]``: one Arrow ``take`` per party, the cheapest path) and the test rows turned into
        numpy arrays. It runs in that environment's Python as a subprocess, which times
        itself.

    python benchmarks/data_scale.py                  # 1,000,000 rows
    python benchmarks/data_scale.py --rows 100000 --json /tmp/data_scale.json

What is timed: (a) ``prepare(cfg)`` alone (the config parsed before); the round from the run's
own ``round_time_s``, and the whole ``run()``; (b) from before ``from_parquet`` to the last
array, imports excluded. The ways run one after another, nothing else beside them: (b), then
(a)'s ``prepare``, then Ray's start and (a)'s run.

Memory, load and partition: PeakMemory from fl_throughput.py, the largest RSS sampled every
50 ms: of this process for (a) (no other process works then) and of the subprocess alone for
(b). Each peak is printed whole and above the RSS its process had when the step began (after
its imports: the interpreter with PyTorch is bigger than the data), and each as a multiple of
the data's size; the kernel's high-water mark (VmHWM) checks the sampled peak.

Memory, the whole run: the summed PSS of this process and all of Ray's (sampled every
200 ms; a page shared by k processes counts 1/k in each, so the object store's copy counts
once), above what the warmed pool held at rest; the summed RSS, which counts shared pages in
every process that maps them, is printed beside it.

Goals: fedsweep's load and partition faster than Flower Datasets' (flower s / fedsweep s
above 1), and its peak memory under 2x the data's size.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from fl_throughput import PeakMemory, start_ray

N_FEATURES, N_CLASSES, PARTIES, ALPHA = 64, 10, 1_000, 0.5
TEST_FRACTION, MIN_SAMPLES, FLOWER_SEED = 0.2, 1, 42
FLOWER = "flwr-datasets"
DEFAULT_VENV = Path(tempfile.gettempdir()) / "fedsweep-bench-venvs" / "flwr"


def write_parquet(path: str, rows: int, seed: int = 0) -> int:
    """Writes the workload's file; returns its Arrow table's nbytes. Runs in a child process
    so that none of its memory stays in this one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, rows, dtype=np.int64)
    centres = rng.normal(size=(N_CLASSES, N_FEATURES)).astype(np.float32)
    cols = {}
    for j in range(N_FEATURES):
        noise = rng.standard_normal(rows, dtype=np.float32)
        cols[f"x{j}"] = pa.array(centres[y, j] + noise)
    cols["label"] = pa.array(y)
    table = pa.table(cols)
    pq.write_table(table, path)
    return int(table.nbytes)


def table_nbytes(path: str) -> int:
    """The Arrow table's nbytes of a Parquet file (in a child process, as above)."""
    import pyarrow.parquet as pq

    return int(pq.read_table(path).nbytes)


def in_child(fn: Any, *args: Any) -> Any:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def kernel_peak() -> int | None:
    """This process's peak RSS since the last :func:`reset_kernel_peak` (VmHWM), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_kernel_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss() -> int:
    return psutil.Process().memory_info().rss


class ChildPeak(PeakMemory):
    """PeakMemory(tree=True) over this process's descendants only: a subprocess's peak
    without the idle parent's RSS."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(tree=True, interval=interval)

    def _sample(self) -> int:
        total = 0
        for p in psutil.Process().children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total


def code_version() -> str:
    """The commit measured, and the fedsweep files that differ from it (uncommitted work)."""
    repo = Path(__file__).resolve().parent.parent
    git = ["git", "-C", str(repo)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "orchestrator", "trainers", "clusters"],
        capture_output=True,
        text=True,
    )
    changed = [line[3:] for line in dirty.stdout.splitlines()]
    return head.stdout.strip() + (f" + uncommitted {', '.join(changed)}" if changed else "")


def summary(sizes: Any) -> dict[str, float]:
    s = np.asarray(sizes)
    return {
        "parties": int(len(s)),
        "rows": int(s.sum()),
        "min": int(s.min()),
        "median": float(np.median(s)),
        "max": int(s.max()),
    }


# ---------------------------------------------------------------- (a) fedsweep


def fedsweep_config(path: str) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {"name": "parquet", "path": path, "label": "label", "test_fraction": TEST_FRACTION},
        "partition": {
            "name": "dirichlet",
            "num_parties": PARTIES,
            "alpha": ALPHA,
            "min_samples": MIN_SAMPLES,
        },
        "model": {"name": "logreg"},
        "trainer": {"name": "fedavg", "rounds": 1, "fraction": 1.0, "local_epochs": 1},
        "runtime": {"executor": "ray"},
        "tracking": {"enabled": False},
    }


def fedsweep_prepare(path: str) -> dict[str, Any]:
    """(a) ``prepare`` alone, in this process (no Ray yet: the tree is this process)."""
    from orchestrator.config import load_config
    from orchestrator.data import prepare

    cfg = load_config(fedsweep_config(path))
    gc.collect()
    before = rss()
    exact = reset_kernel_peak()
    with PeakMemory(tree=True) as mem:
        start = time.perf_counter()
        prepared = prepare(cfg)
        seconds = time.perf_counter() - start
    hwm = kernel_peak() if exact else None
    sizes = prepared.stats.column("n_samples").to_numpy()
    out = {
        "seconds": seconds,
        "peak": mem.peak,
        "start_rss": before,
        "hwm": hwm,
        "sizes": summary(sizes),
        "test_rows": int(len(prepared.data.y_test)),
    }
    del prepared
    gc.collect()
    return out


class PeakPss(PeakMemory):
    """The summed PSS (proportional set size: a page shared by k processes counts 1/k in
    each, so Ray's object store counts once) of this process and its descendants."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(tree=True, interval=interval)

    def _sample(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except psutil.Error:
                pass
        return total


def fedsweep_run(path: str) -> dict[str, Any]:
    """(a) the whole one-round run on Ray (started before, its start excluded), on an actor
    pool warmed first by a one-round run on digits, so that the memory above the baseline is
    the data's and the run's, not PyTorch's import in every actor."""
    from orchestrator.config import load_config
    from orchestrator.runner import make_executor, run

    cfg = load_config(fedsweep_config(path))
    executor = make_executor(cfg.runtime)
    try:
        warm = fedsweep_config(path)
        warm["data"] = {"name": "digits"}
        warm["partition"] = {"name": "iid", "num_parties": 10}
        run(load_config(warm), executor=executor)
        gc.collect()
        at_rest = PeakPss()._sample()  # the warmed pool at rest
        before_rss = PeakMemory(tree=True)._sample()
        with PeakMemory(tree=True) as mem, PeakPss() as pss:
            start = time.perf_counter()
            result = run(cfg, executor=executor)
            wall = time.perf_counter() - start
    finally:
        executor.close()
    history = result.history
    return {
        "wall": wall,
        "round": float(history[0]["round_time_s"]) if history else None,
        "peak": mem.peak,
        "start_rss_tree": before_rss,
        "peak_pss": pss.peak,
        "start_pss_tree": at_rest,
        "phases": dict(result.timings),
        "metrics": {k: float(v) for k, v in result.metrics.items()},
    }


# ---------------------------------------------------------------- (b) Flower Datasets

FLOWER_SCRIPT = r"""
import json, sys, time
from pathlib import Path


def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024


args = json.loads(sys.argv[1])
import numpy as np
import datasets
from flwr_datasets.partitioner import DirichletPartitioner

datasets.disable_progress_bars()
start_rss = status("VmRSS")
start = time.perf_counter()
ds = datasets.Dataset.from_parquet(args["path"], cache_dir=args["cache"])
loaded = time.perf_counter()
n_test = max(1, round(args["test_fraction"] * ds.num_rows))
train = ds.select(range(ds.num_rows - n_test))  # contiguous: no indices mapping
test = ds.select(range(ds.num_rows - n_test, ds.num_rows))
partitioner = DirichletPartitioner(
    num_partitions=args["parties"],
    partition_by="label",
    alpha=args["alpha"],
    min_partition_size=args["min_size"],
    self_balancing=False,
    shuffle=False,
    seed=args["seed"],
)
partitioner.dataset = train
n = partitioner.num_partitions  # the first call draws every partition's indices
partitioned = time.perf_counter()
features = [c for c in ds.column_names if c != "label"]


def arrays(d):
    table = d.with_format("arrow")[:]
    x = np.column_stack([table.column(c).to_numpy() for c in features])
    return x, table.column("label").to_numpy()


parties = [arrays(partitioner.load_partition(i)) for i in range(n)]
x_test, y_test = arrays(test)
end = time.perf_counter()
print(json.dumps({
    "seconds": end - start,
    "load_s": loaded - start,
    "partition_s": partitioned - loaded,
    "materialize_s": end - partitioned,
    "start_rss": start_rss,
    "hwm": status("VmHWM"),
    "sizes": [len(y) for _, y in parties],
    "test_rows": int(len(y_test)),
    "dtypes": [str(parties[0][0].dtype), str(parties[0][1].dtype)],
    "versions": {"datasets": datasets.__version__, "numpy": np.__version__},
}))
"""


def flower_venv(venv: Path) -> str:
    """The venv's python, with flwr-datasets installed (once)."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = [str(python), "-c", "import flwr_datasets, datasets"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        print(f"installing {FLOWER} in {venv} ...", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", FLOWER], check=True)
    return str(python)


def flower_version(python: str) -> str:
    out = subprocess.run(
        [python, "-m", "pip", "show", FLOWER], capture_output=True, text=True, check=True
    )
    return next((ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("Version")), "?")


def flower(python: str, path: str, work: Path) -> dict[str, Any]:
    """(b) in the venv's python; its peak sampled from here, over the subprocess alone."""
    script = work / "flower_partition.py"
    script.write_text(FLOWER_SCRIPT)
    cache = work / "hf-cache"
    shutil.rmtree(cache, ignore_errors=True)
    args = {
        "path": path,
        "cache": str(cache),
        "parties": PARTIES,
        "alpha": ALPHA,
        "min_size": MIN_SAMPLES,
        "seed": FLOWER_SEED,
        "test_fraction": TEST_FRACTION,
    }
    env = {
        **os.environ,
        "HF_HOME": str(work / "hf-home"),
        "HF_DATASETS_CACHE": str(cache),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    with ChildPeak() as mem:
        proc = subprocess.run(
            [python, str(script), json.dumps(args)], capture_output=True, text=True, env=env
        )
    if proc.returncode != 0:
        raise RuntimeError(f"the Flower Datasets run failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["peak"] = mem.peak
    out["sizes"] = summary(out["sizes"])
    shutil.rmtree(cache, ignore_errors=True)
    return out


# ---------------------------------------------------------------- the report


def gb(n: float) -> float:
    return n / 2**30


def report(data: int, rows: int, fed: dict[str, Any], flw: dict[str, Any], whole: dict) -> None:
    print(
        f"data: {rows:,d} rows x {N_FEATURES} float32 + int64 label = {gb(data):.3f} GB (Arrow "
        f"nbytes); {PARTIES:,d} Dirichlet parties (alpha {ALPHA}), {TEST_FRACTION:.0%} held out"
    )
    print(
        f"{'load + partition':26s} {'s':>8s} {'peak GB':>8s} {'x data':>7s} "
        f"{'above start GB':>15s} {'x data':>7s} {'VmHWM GB':>9s}"
    )
    for name, r in (("(a) fedsweep prepare()", fed), ("(b) Flower Datasets", flw)):
        above = r["peak"] - r["start_rss"]
        hwm = f"{gb(r['hwm']):9.3f}" if r.get("hwm") else f"{'-':>9s}"
        print(
            f"{name:26s} {r['seconds']:8.2f} {gb(r['peak']):8.3f} {r['peak'] / data:7.2f} "
            f"{gb(above):15.3f} {above / data:7.2f} {hwm}"
        )
    print(
        f"    (b)'s steps: from_parquet {flw['load_s']:.2f} s, split and partitioner "
        f"{flw['partition_s']:.2f} s, every partition to numpy {flw['materialize_s']:.2f} s"
    )
    ratio = flw["seconds"] / fed["seconds"]
    above = (fed["peak"] - fed["start_rss"]) / data
    print(f"flower s / fedsweep s: {ratio:.2f} (goal > 1: {'met' if ratio > 1 else 'NOT met'})")
    print(
        f"fedsweep peak / data: {fed['peak'] / data:.2f} whole process, {above:.2f} above its "
        f"start (goal < 2: {'met' if fed['peak'] / data < 2 else 'NOT met'} whole, "
        f"{'met' if above < 2 else 'NOT met'} above start)"
    )
    for name, r in (("fedsweep", fed), ("flower", flw)):
        s = r["sizes"]
        print(
            f"party sizes, {name:8s}: {s['parties']:,d} parties, {s['rows']:,d} rows, min "
            f"{s['min']:,d}, median {s['median']:,.0f}, max {s['max']:,d}; test rows "
            f"{r['test_rows']:,d}"
        )
    rnd = f"{whole['round']:.2f} s" if whole.get("round") is not None else "n/a"
    above_pss = whole["peak_pss"] - whole["start_pss_tree"]
    print(
        f"(a) whole run on Ray (2 CPUs, a warmed pool), one FedAvg round: round {rnd}, run() "
        f"{whole['wall']:.2f} s"
    )
    print(
        f"    all processes (this one and Ray's), PSS: peak {gb(whole['peak_pss']):.3f} GB, "
        f"{gb(above_pss):.3f} GB above the warmed pool at rest = {above_pss / data:.2f} x data "
        f"(goal < 2: {'met' if above_pss / data < 2 else 'NOT met'})"
    )
    print(
        f"    summed RSS (shared pages counted in every process): peak {gb(whole['peak']):.3f} "
        f"GB, {gb(whole['start_rss_tree']):.3f} GB at the start"
    )
    phases = ", ".join(f"{k} {v:.2f}" for k, v in whole["phases"].items())
    print(f"    run() phases (s): {phases}")


def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="fedsweep-data-scale-"))
    try:
        python = flower_venv(Path(args.venv))
        if args.file:
            path = str(Path(args.file).resolve())
            data = in_child(table_nbytes, path)
        else:
            path = str(work / "data.parquet")
            t0 = time.perf_counter()
            data = in_child(write_parquet, path, args.rows)
            print(f"wrote {path} in {time.perf_counter() - t0:.1f}s", flush=True)
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(path).metadata.num_rows
        version = code_version()
        print(f"fedsweep at {version}", flush=True)
        print(f"(b) Flower Datasets ({FLOWER} {flower_version(python)}) ...", flush=True)
        flw = flower(python, path, work)
        print("(a) fedsweep prepare() ...", flush=True)
        fed = fedsweep_prepare(path)
        ray_start = start_ray(2)
        print(f"(a) fedsweep run() on Ray (ray.init took {ray_start:.1f}s, excluded) ...")
        whole = fedsweep_run(path)
        report(data, rows, fed, flw, whole)
        if args.json:
            figures = {
                "rows": rows,
                "data_bytes": data,
                "fedsweep_version": version,
                "fedsweep_prepare": fed,
                "flower": flw,
                "fedsweep_run": whole,
                "flower_over_fedsweep_time": flw["seconds"] / fed["seconds"],
                "fedsweep_peak_over_data": fed["peak"] / data,
                "fedsweep_peak_above_start_over_data": (fed["peak"] - fed["start_rss"]) / data,
                "ray_init_s": ray_start,
                "fedsweep_run_pss_above_rest_over_data": (
                    whole["peak_pss"] - whole["start_pss_tree"]
                )
                / data,
            }
            Path(args.json).write_text(json.dumps(figures, indent=2))
            print(f"figures written to {args.json}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated file")
    parser.add_argument("--file", help="a Parquet file with x0..x63 and label, used as it is")
    parser.add_argument("--venv", default=str(DEFAULT_VENV), help="Flower Datasets' venv")
    parser.add_argument("--json", help="write the figures here")
    main(parser.parse_args())
