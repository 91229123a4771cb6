"""A cluster sweep, fedsweep beside Ray Tune, on one lab: 60 trials of the sweep-overhead
workload (centralized logistic regression on digits, 3 epochs, the search varying the
learning rate) on a 3-node Ray cluster, tracked on an MLflow server on PostgreSQL.

    python benchmarks/cluster_sweep.py [--trials 60] [--parallel 3]

In one invocation it starts a lab (``fedsweep lab up``: PostgreSQL, the MLflow server, a Ray
head and two worker nodes of one CPU each), then runs the same trials, at the same
concurrency, against the same server:

    (plain) an Optuna ask/tell loop in this process, no tracking: the work itself;
    (a) ``fedsweep sweep``: Optuna on PostgreSQL, every trial a nested MLflow run with its
        per-round metrics, config, partition table and checkpoint, the study's parent run,
        trial table, plots and the best model registered;
    (b) Ray Tune: ``tune.Tuner`` with ``OptunaSearch`` and ``MLflowLoggerCallback``, every
        trial an MLflow run with its params and per-round metrics.

It prints trials per minute, each way's overhead per trial over the plain loop (the wall time
of the sweep times its concurrency, per trial, minus one plain trial), their ratio, and what
one tracked trial costs the tracking server: every request goes through a counting proxy, so
the requests and the server's milliseconds per trial are measured, not estimated.

Ray Tune, the peer, is installed in a virtual environment of its own that the set-up makes
(``ray[tune]`` at exactly the lab's Ray version, since a driver joins only a cluster of its own
version; the venv sees the system's packages, so that Ray and PyTorch are those the lab's nodes
run), and its driver runs from there. Both ways ask the same sampler for the same 60 points
(Optuna's RandomSampler, seed 0), keep the same number of trials running, and connect to the
lab's Ray before their clock starts. Tune reuses its trial actors (``reuse_actors=True``, its
fastest setting for a function trainable).
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.sweep_overhead import config  # noqa: E402

SPACE = {
    "objective": [{"metric": "test_accuracy", "direction": "maximize"}],
    "params": {"trainer.lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True}},
    "sampler": {"name": "random", "seed": 0},
}


class CountingProxy:
    """An HTTP proxy in front of the tracking server that counts requests and the time the
    server took to answer them."""

    def __init__(self, upstream_port: int) -> None:
        self.requests, self.seconds, self._lock = 0, 0.0, threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"127.0.0.1:{upstream_port}"
                start = time.perf_counter()
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=300)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                with proxy._lock:
                    proxy.requests += 1
                    proxy.seconds += time.perf_counter() - start
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self) -> tuple[int, float]:
        with self._lock:
            return self.requests, self.seconds


FEDSWEEP = """
import json, sys, time, ray
from benchmarks.sweep_overhead import config
from benchmarks.cluster_sweep import SPACE
from orchestrator import sweep
from search_spaces import parse_space
from pathlib import Path
uri, storage, address, trials, parallel = sys.argv[1:6]
ray.init(address=address, logging_level="ERROR")
cfg = config(Path("/unused"))
cfg["tracking"]["uri"] = uri
start = time.perf_counter()
result = sweep(cfg, parse_space(SPACE), trials=int(trials), parallel=int(parallel),
               study="cluster-bench", storage=storage)
print(json.dumps({"wall": time.perf_counter() - start, "complete": result.n_complete,
                  "finish": result.timings["finish_s"]}))
"""

TUNE = """
import json, sys, time, ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch
from ray.air.integrations.mlflow import MLflowLoggerCallback
import optuna
uri, address, trials, parallel, storage_path = sys.argv[1:6]
ray.init(address=address, logging_level="ERROR")

def trainable(params):
    from benchmarks.sweep_overhead import config
    from orchestrator import run
    from orchestrator.config import configure, load_config
    cfg = configure(load_config(config(None)), {"trainer.lr": params["lr"]})
    run(cfg, progress=lambda step, m: tune.report({"test_accuracy": m["test_accuracy"],
                                                    "train_loss": m["train_loss"]}))

tuner = tune.Tuner(
    tune.with_resources(trainable, {"cpu": 1}),
    param_space={"lr": tune.loguniform(0.01, 0.5)},
    tune_config=tune.TuneConfig(
        search_alg=OptunaSearch(metric="test_accuracy", mode="max",
                                sampler=optuna.samplers.RandomSampler(seed=0)),
        num_samples=int(trials), max_concurrent_trials=int(parallel), reuse_actors=True,
    ),
    run_config=tune.RunConfig(
        callbacks=[MLflowLoggerCallback(tracking_uri=uri, experiment_name="tune-bench",
                                        save_artifact=False)],
        storage_path=storage_path, verbose=0,
    ),
)
start = time.perf_counter()
results = tuner.fit()
print(json.dumps({"wall": time.perf_counter() - start,
                  "complete": sum(1 for r in results if r.error is None)}))
"""


def plain_loop(trials: int) -> float:
    import optuna

    from clusters import InProcessExecutor
    from orchestrator import run
    from orchestrator.config import configure, load_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    base = load_config(config(None))
    executor = InProcessExecutor()
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        lr = trial.suggest_float("trainer.lr", 0.01, 0.5, log=True)
        study.tell(
            trial,
            run(configure(base, {"trainer.lr": lr}), executor=executor).metrics["test_accuracy"],
        )
    return time.perf_counter() - start


def tune_venv(root: Path) -> str:
    """A virtual environment with Ray Tune (the peer) at this Ray's exact version; its python."""
    import ray

    venv = root / "tune-venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"ray[tune]=={ray.__version__}"], check=True
    )
    return python


def _script(code: str, args: list[str], env: dict[str, str], python: str = sys.executable) -> dict:
    out = subprocess.run(
        [python, "-c", code, *args],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise SystemExit(f"failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--parallel", type=int, default=3)
    args = parser.parse_args()
    n, p = args.trials, args.parallel
    from clusters.lab import Lab

    plain_loop(3)  # warm PyTorch up, as the workers are by their first trial
    plain = plain_loop(n)
    root = Path(tempfile.mkdtemp(prefix="fedsweep-bench-"))
    root.chmod(0o755)
    print(f"installing Ray Tune in {root / 'tune-venv'} ...", flush=True)
    tune_python = tune_venv(root)
    print(f"starting a 3-node lab in {root} ...", flush=True)
    lab = Lab.up(root / "lab", nodes=3, cpus_per_node=1)
    try:
        proxy = CountingProxy(lab.mlflow.port)
        uri = f"http://127.0.0.1:{proxy.port}"
        env = {**lab.process_env(), "MLFLOW_TRACKING_URI": uri}
        before = proxy.snapshot()
        a = _script(FEDSWEEP, [uri, lab.storage_url, lab.ray_address, str(n), str(p)], env)
        mid = proxy.snapshot()
        b = _script(
            TUNE, [uri, lab.ray_address, str(n), str(p), str(root / "tune")], env, tune_python
        )
        after = proxy.snapshot()
    finally:
        lab.down()
    plain_trial = plain / n
    rows = []
    for name, res, (r0, s0), (r1, s1) in (
        ("(a) fedsweep sweep", a, before, mid),
        ("(b) Ray Tune + OptunaSearch + MLflowLoggerCallback", b, mid, after),
    ):
        overhead = res["wall"] * p / n - plain_trial
        rows.append((name, res, overhead, (r1 - r0) / n, 1000 * (s1 - s0) / n))
    print(f"\n{n} trials of centralized logreg on digits (3 epochs), {p} at once, 3-node lab")
    print(
        f"(plain) Optuna ask/tell loop, no tracking: {plain:7.2f} s ({1000 * plain_trial:.1f} ms/trial)"
    )
    for name, res, overhead, reqs, ms in rows:
        print(
            f"{name:52s}: {res['wall']:7.2f} s  {60 * res['complete'] / res['wall']:6.1f} trials/min  "
            f"overhead {1000 * overhead:7.1f} ms/trial  server: {reqs:5.1f} requests, {ms:6.1f} ms/trial"
        )
    print(f"overhead ratio fedsweep / Ray Tune: {rows[0][2] / rows[1][2]:.2f}")
    print(
        f"(fedsweep's finish: parent run tables, plots, registry: {a['finish']:.2f} s of its wall time)"
    )
    os.system(f"rm -rf {root}")


if __name__ == "__main__":
    main()
