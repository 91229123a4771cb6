"""A whole 60-trial sweep, fedsweep beside Optuna's plain ask/tell loop and Optuna with its
MLflowCallback: the same trials, each way a fresh process timed from its start to its exit.

The trial is the README's quickstart experiment (FedAvg on digits, 20 Dirichlet parties, an
MLP, 30 rounds), the search its learning rate (log-uniform 0.005 to 0.5; Optuna's
RandomSampler, seed 0, so every way trains the same 60 points), untracked inside the trial
function for the two Optuna ways:

    (plain)    ``optuna.create_study`` in memory, ``ask``/``tell`` around the trial function:
               the work itself and nothing else;
    (callback) ``study.optimize`` with optuna-integration's ``MLflowCallback`` writing to an
               MLflow SQLite store: one run per trial with its parameters and final value;
    (fedsweep) ``fedsweep sweep`` (the command a user types) on the same kind of store: an
               Optuna journal on disk, a parent run, every trial a nested run with its 30
               rounds of metrics, its config and its checkpoint, then the trial table, the
               plots and the best model packaged and registered; ``--parallel 1`` (trials in
               the driver's process, what ``sweep.executor: auto`` picks for a study this
               small) and ``--parallel 2`` (two Ray workers; Ray's start counts).

    python benchmarks/sweep_vs_optuna.py [--trials 60] [--repeats 3]

The set-up installs optuna-integration in a virtual environment of its own (it sees the
system's packages, so Optuna, MLflow and PyTorch are the same as fedsweep's) and runs the
callback way from there. Each tracked way starts from a copy of one empty MLflow store whose
tables exist already (a researcher's mlflow.db has them). The ways run in turn, ``--repeats``
times over (these machines are noisy); prints each way's median wall time and its ratio to
the plain loop's; goal: fedsweep at most 1.3x the plain loop and below the callback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOW, HIGH = 0.005, 0.5
INTEGRATION = "optuna-integration==5.0.0"


def write_inputs(root: Path) -> tuple[Path, Path]:
    """The experiment (the quickstart, tracked into ``root/mlflow.db``) and the space."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    cfg["tracking"] = {"experiment": "bench", "uri": f"sqlite:///{root / 'mlflow.db'}"}
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    space = root / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "objective": [{"metric": "test_accuracy", "direction": "maximize"}],
                "params": {"trainer.lr": {"type": "float", "low": LOW, "high": HIGH, "log": True}},
                "sampler": {"name": "random", "seed": 0},
            }
        )
    )
    return config, space


def trial_function(config: Path):
    """The work every way does per trial: the quickstart at the trial's learning rate,
    untracked (the Optuna ways track outside it, or not at all)."""
    from orchestrator import run
    from orchestrator.config import configure, load_config

    base = load_config(str(config), ["tracking.enabled=false", "runtime.executor=local"])

    def objective(trial) -> float:
        lr = trial.suggest_float("trainer.lr", LOW, HIGH, log=True)
        return run(configure(base, {"trainer.lr": lr})).metrics["test_accuracy"]

    return objective


def mode_plain(root: Path, trials: int) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = trial_function(root / "config.yaml")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(trials):
        trial = study.ask()
        study.tell(trial, objective(trial))
    return {"best": study.best_value, "lr": study.best_params["trainer.lr"]}


def mode_callback(root: Path, trials: int) -> dict:
    import optuna
    from optuna_integration.mlflow import MLflowCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = trial_function(root / "config.yaml")
    callback = MLflowCallback(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        metric_name="test_accuracy",
    )
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=trials, callbacks=[callback])
    return {"best": study.best_value, "lr": study.best_params["trainer.lr"]}


def callback_venv(root: Path) -> str:
    """A virtual environment with optuna-integration, seeing the system's packages."""
    venv = root / "optuna-integration-venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", INTEGRATION], check=True)
    return python


def empty_store(root: Path) -> Path:
    """An MLflow SQLite store with its tables made, to copy for each tracked way."""
    template = root / "template.db"
    uri = f"sqlite:///{template}"
    code = f"import mlflow; mlflow.MlflowClient({uri!r}).search_experiments()"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return template


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def count_writes(db: Path) -> dict[str, int]:
    """What a way left in its MLflow store: runs, metric values, params, artifacts' runs."""
    import sqlite3

    with sqlite3.connect(db) as con:
        runs = con.execute("select count(*) from runs").fetchone()[0]
        metrics = con.execute("select count(*) from metrics").fetchone()[0]
        params = con.execute("select count(*) from params").fetchone()[0]
        versions = con.execute("select count(*) from model_versions").fetchone()[0]
    return {"runs": runs, "metric values": metrics, "params": params, "registered": versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way (medians)")
    parser.add_argument("--mode", choices=["plain", "callback"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # one way, in a process of its own
        out = (mode_plain if args.mode == "plain" else mode_callback)(args.dir, args.trials)
        print(json.dumps(out))
        return
    n = args.trials
    with tempfile.TemporaryDirectory(prefix="fedsweep-vs-optuna-") as tmp:
        root = Path(tmp)
        print(f"installing {INTEGRATION} in {root / 'optuna-integration-venv'} ...", flush=True)
        venv_python = callback_venv(root)
        template = empty_store(root)
        me = str(Path(__file__).resolve())
        # the command's script beside this interpreter (as the other ways run it directly),
        # not a version manager's shim on the PATH, which costs its own start
        fedsweep = shutil.which("fedsweep", path=str(Path(sys.executable).parent)) or "fedsweep"
        ways: dict[str, tuple[list[str], str | None]] = {
            "plain": ([sys.executable, me, "--mode", "plain"], None),
            "callback": ([venv_python, me, "--mode", "callback"], "mlflow.db"),
            "fedsweep --parallel 1": ([fedsweep, "sweep", "--parallel", "1"], "mlflow.db"),
            "fedsweep --parallel 2": ([fedsweep, "sweep", "--parallel", "2"], "mlflow.db"),
        }
        runs: dict[str, list[float]] = {name: [] for name in ways}
        writes, best = {}, {}
        for repeat in range(args.repeats):  # the ways in turn, repeat after repeat
            for name, (cmd, store) in ways.items():
                work = root / f"{name.replace(' ', '_').replace('-', '')}-{repeat}"
                work.mkdir()
                config, space = write_inputs(work)
                if store:
                    shutil.copy(template, work / store)
                if cmd[0] == fedsweep:
                    argv = [*cmd[:2], str(config), "--space", str(space), "--trials", str(n)]
                    argv += [*cmd[2:], "--json"]
                else:
                    argv = [*cmd, "--dir", str(work), "--trials", str(n)]
                wall, stdout = timed(argv, work)
                runs[name].append(wall)
                result = json.loads(stdout.strip().splitlines()[-1])
                best[name] = result.get("best")
                if isinstance(best[name], dict):  # fedsweep's --json: the best trial
                    best[name] = best[name]["values"][0]
                if store:
                    writes[name] = count_writes(work / store)
                print(f"  {name}: {wall:.2f} s", flush=True)
    walls = {name: float(statistics.median(times)) for name, times in runs.items()}
    plain = walls["plain"]
    print(
        f"\n{n} trials of the quickstart (FedAvg, digits, 20 parties, 30 rounds), lr searched;"
        f" median of {args.repeats} runs of each way, taken in turn"
    )
    print(f"{'way':24s} {'wall s':>8s} {'x plain':>8s} {'best acc':>9s}  writes")
    for name, wall in walls.items():
        shown = ", ".join(f"{v} {k}" for k, v in writes.get(name, {}).items()) or "nothing"
        print(f"{name:24s} {wall:8.2f} {wall / plain:8.2f} {best[name]:9.4f}  {shown}")
    for name in ("fedsweep --parallel 1", "fedsweep --parallel 2"):
        print(
            f"{name}: x{walls[name] / plain:.2f} the plain loop (goal <= 1.3), "
            f"x{walls[name] / walls['callback']:.2f} the MLflowCallback (goal < 1)"
        )


if __name__ == "__main__":
    main()
