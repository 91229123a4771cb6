"""The first result: the README's quickstart command, whole process, beside a bare PyTorch
script that trains the same model on the same data and writes the same kind of MLflow run.

    python benchmarks/first_result.py [--repeats 3] [--baseline-ref afb92ec]

Each repeat runs, in a fresh directory each (so each creates its MLflow store, as a first
run does), one after the other:

    (bare) a plain script: scikit-learn's digits, standardised, 80/20 split, 20 parties by
        Dirichlet(0.5), FedAvg of an MLP 64-64-10 (30 rounds, half the parties a round, 2
        local epochs, batch 16, SGD lr 0.05), test accuracy and loss each round; into a new
        SQLite MLflow store: a run with the hyperparameters, the per-round metrics in
        batches, config.yaml, a learning-curve PNG, a label-histogram PNG, the partition's
        table (Parquet) and the model's weights;
    (fedsweep) ``fedsweep run configs/quickstart.yaml --quiet``, which writes all that and
        more (every config key as a param, the round times and bytes, the checkpoint);
    (before) the same command from a checkout of ``--baseline-ref`` (this repository's main
        before the work on fixed costs), unless ``--baseline-ref ''``.

It prints each one's median wall time over the repeats (process start to exit) and the
ratios fedsweep / bare (goal: at most 1.5) and fedsweep / before (goal: at most 0.5).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BARE = r"""
import io, json, sys, time
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
import mlflow
from mlflow.entities import Metric, Param
from sklearn.datasets import load_digits

torch.set_num_threads(1)
rng = np.random.default_rng(0)
digits = load_digits()
x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
order = rng.permutation(len(y))
cut = int(0.8 * len(y))
tr, te = order[:cut], order[cut:]
mean, std = x[tr].mean(0), x[tr].std(0) + 1e-8
x = (x - mean) / std
parties = [[] for _ in range(20)]
for c in range(10):  # Dirichlet(0.5) label skew
    idx = tr[y[tr] == c]
    rng.shuffle(idx)
    share = rng.dirichlet([0.5] * 20)
    for p, part in enumerate(np.split(idx, (np.cumsum(share)[:-1] * len(idx)).astype(int))):
        parties[p].extend(part.tolist())
data = [(torch.from_numpy(x[p]), torch.from_numpy(y[p])) for p in map(np.array, parties) if len(p)]
xte, yte = torch.from_numpy(x[te]), torch.from_numpy(y[te])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
w = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
client = mlflow.tracking.MlflowClient("sqlite:///mlflow.db")
exp = client.create_experiment("quickstart")
run = client.create_run(exp).info.run_id
params = {"data.name": "digits", "partition.name": "dirichlet", "partition.num_parties": 20,
          "partition.alpha": 0.5, "model.name": "mlp", "model.hidden": "[64]",
          "trainer.name": "fedavg", "trainer.rounds": 30, "trainer.fraction": 0.5,
          "trainer.local_epochs": 2, "trainer.batch_size": 16, "trainer.lr": 0.05, "seed": 0}
client.log_batch(run, params=[Param(k, str(v)) for k, v in params.items()])
client.log_text(run, json.dumps(params, indent=1), "config.yaml")
import pyarrow as pa, pyarrow.parquet as pq
sink = io.BytesIO()
pq.write_table(pa.table({"party": list(range(len(data))), "n": [len(d[1]) for d in data]}), sink)
with open("stats.parquet", "wb") as f:
    f.write(sink.getvalue())
client.log_artifact(run, "stats.parquet", "partition")
history, batch = [], []
gen = torch.Generator().manual_seed(0)
for r in range(30):
    chosen = rng.choice(len(data), size=len(data) // 2, replace=False)
    total, n = torch.zeros_like(w, dtype=torch.float64), 0
    for p in chosen:
        xp, yp = data[p]
        with torch.no_grad():
            nn.utils.vector_to_parameters(w.clone(), model.parameters())
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(2):
            perm = torch.randperm(len(yp), generator=gen)
            for s in range(0, len(yp), 16):
                i = perm[s:s + 16]
                opt.zero_grad()
                F.cross_entropy(model(xp[i]), yp[i]).backward()
                opt.step()
        total += nn.utils.parameters_to_vector(model.parameters()).detach().double() * len(yp)
        n += len(yp)
    w = (total / n).float()
    with torch.no_grad():
        nn.utils.vector_to_parameters(w.clone(), model.parameters())
        out = model(xte)
        acc = (out.argmax(1) == yte).float().mean().item()
        loss = F.cross_entropy(out, yte).item()
    history.append((acc, loss))
    now = int(time.time() * 1000)
    batch += [Metric("test_accuracy", acc, now, r), Metric("test_loss", loss, now, r)]
    if len(batch) >= 40 or r == 29:
        client.log_batch(run, metrics=batch)
        batch = []
from matplotlib.figure import Figure
fig = Figure()
fig.add_subplot().plot([a for a, _ in history])
client.log_figure(run, fig, "learning_curve.png")
fig = Figure()
fig.add_subplot().bar(range(len(data)), [len(d[1]) for d in data])
client.log_figure(run, fig, "partition/label_histogram.png")
buf = io.BytesIO()
torch.save(model.state_dict(), buf)
with open("model.pt", "wb") as f:
    f.write(buf.getvalue())
client.log_artifact(run, "model.pt", "checkpoint")
client.set_terminated(run)
print(f"bare: test_accuracy={history[-1][0]:.4f}")
"""


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall time of one whole process, in a fresh directory (its own MLflow store)."""
    work = Path(tempfile.mkdtemp(prefix="fedsweep-first-"))
    try:
        start = time.perf_counter()
        out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"{cmd[:4]} failed:\n{out.stderr[-3000:]}")
        return elapsed
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-ref", default="afb92ec")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    config = str(REPO / "configs" / "quickstart.yaml")
    ways: dict[str, list[str]] = {
        "bare": [sys.executable, "-c", BARE],
        "fedsweep": [sys.executable, "-m", "orchestrator.cli", "run", config, "--quiet"],
    }
    envs = {"bare": env, "fedsweep": env}
    before: Path | None = None
    if args.baseline_ref:
        before = Path(tempfile.mkdtemp(prefix="fedsweep-before-"))
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.baseline_ref],
            cwd=REPO, check=True, capture_output=True,
        )  # fmt: skip
        ways["before"] = [
            sys.executable, "-m", "orchestrator.cli", "run",
            str(before / "configs" / "quickstart.yaml"), "--quiet",
        ]  # fmt: skip
        envs["before"] = {**os.environ, "PYTHONPATH": str(before)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for i in range(args.repeats):
            for name, cmd in ways.items():
                times[name].append(_timed(cmd, envs[name]))
                print(f"repeat {i + 1}: {name:8s} {times[name][-1]:6.2f} s", flush=True)
    finally:
        if before is not None:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before)], cwd=REPO, check=False
            )
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\nthe quickstart, whole process, median of {args.repeats}:")
    for name, m in median.items():
        print(f"  {name:8s} {m:6.2f} s   ({', '.join(f'{t:.2f}' for t in times[name])})")
    print(f"fedsweep / bare:   {median['fedsweep'] / median['bare']:.2f}  (goal <= 1.5)")
    if "before" in median:
        print(f"fedsweep / before: {median['fedsweep'] / median['before']:.2f}  (goal <= 0.5)")


if __name__ == "__main__":
    main()
