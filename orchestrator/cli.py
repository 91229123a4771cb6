"""The ``fedsweep`` command."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError, ServiceError
from search_spaces.space import SpaceError

if TYPE_CHECKING:
    from trainers.base import Budget

__all__ = ["main"]

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.@\[\]-]*=")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedsweep",
        description="Federated, decentralized and committee-based learning experiments on Ray, tracked in MLflow.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("config", help="experiment YAML file")
    run.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="end stdout with one JSON line")
    run.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue this run from its last checkpoint, into the same MLflow run",
    )
    sw = sub.add_parser("sweep", help="run or resume an Optuna search, trials on Ray")
    sw.add_argument("config", help="experiment YAML file")
    sw.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the base config")
    sw.add_argument("--space", required=True, help="search-space YAML file")
    sw.add_argument("--trials", type=int, help="finished trials the study should hold")
    sw.add_argument("--parallel", type=int, help="trials at once (default: what the CPUs allow)")
    sw.add_argument("--study", help="study name (default: <config>-<space>)")
    sw.add_argument(
        "--storage", help="Optuna storage URL (default: a journal beside the MLflow store)"
    )
    sw.add_argument("--address", help="Ray address to join (auto, ray://host:port)")
    sw.add_argument(
        "--out", help="write the space's results table (Parquet, Markdown, charts) here"
    )
    sw.add_argument("--quiet", action="store_true", help="no progress line")
    sw.add_argument("--json", action="store_true", help="end stdout with one JSON line")
    sm = sub.add_parser("submit", help="submit a run (or, with --space, a sweep) as a job")
    sm.add_argument("config", help="experiment YAML file")
    sm.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    sm.add_argument("--space", help="search-space YAML: submit a sweep")
    sm.add_argument(
        "--cluster",
        help="Ray dashboard address (http://head:8265); default: a local background process",
    )
    sm.add_argument("--trials", type=int)
    sm.add_argument("--parallel", type=int)
    sm.add_argument("--study")
    sm.add_argument("--storage")
    for name, text in (
        ("status", "a job's status"),
        ("logs", "a job's output"),
        ("cancel", "stop a job"),
        ("result", "a finished job's JSON result"),
    ):
        jp = sub.add_parser(name, help=text)
        jp.add_argument("job_id")
        jp.add_argument(
            "--cluster", help="the Ray dashboard address, for a job submitted elsewhere"
        )
    data = sub.add_parser(
        "data", help="load and partition a config's data without training: table and heatmap"
    )
    data.add_argument("config", help="experiment YAML file")
    data.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    data.add_argument(
        "--out",
        help="where the heatmap, the per-party table and the party files go "
        "(default: data-<config name>)",
    )
    show = sub.add_parser("show", help="print the resolved config")
    show.add_argument("config", help="experiment YAML file")
    show.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    for command in (
        run,
        sw,
        sm,
        show,
        *(sub.choices[n] for n in ("status", "logs", "cancel", "result")),
    ):
        command.add_argument(
            "--traceback", action="store_true", help="on a failure, print its whole traceback"
        )
    data.add_argument(
        "--traceback", action="store_true", help="on a failure, print its whole traceback"
    )
    for command in (run, sw, sm, show, data):
        command.add_argument(
            "--allow-env",
            action="store_true",
            help="let the config read environment variables (${oc.env:NAME}); they are "
            "logged as the interpolation, never as their values",
        )
    for command in (run, sw):
        command.add_argument(
            "--profile",
            action="store_true",
            help="print where the time went, phase by phase (also logged as time.* metrics)",
        )
    for command in (run, sw, sm):
        command.add_argument(
            "--lab",
            metavar="DIR",
            help="use the lab in DIR (fedsweep lab up): its tracking server, storage and Ray",
        )
    lab = sub.add_parser("lab", help="a lab on this machine: PostgreSQL, MLflow server, Ray")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    for name, text in (
        ("up", "start a lab"),
        ("status", "what of a lab answers"),
        ("down", "stop a lab"),
    ):
        lp = lab_sub.add_parser(name, help=text)
        lp.add_argument("--dir", default=".fedsweep/lab", help="the lab's directory")
        if name == "up":
            lp.add_argument("--nodes", type=int, default=3, help="Ray nodes, the head included")
            lp.add_argument("--gpus-per-node", type=int, default=0)
            lp.add_argument("--cpus-per-node", type=int, default=1)
            lp.add_argument(
                "--max-connections", type=int, default=100, help="PostgreSQL's connection cap"
            )
    rp = sub.add_parser(
        "ray", help="a Ray kept running here, which runs and sweeps join instead of starting one"
    )
    ray_sub = rp.add_subparsers(dest="ray_command", required=True)
    for name, text in (("up", "start it"), ("status", "is it up"), ("down", "stop it")):
        r = ray_sub.add_parser(name, help=text)
        r.add_argument("--dir", help="where it is described (default ~/.fedsweep/ray)")
        if name == "up":
            r.add_argument("--cpus", type=int, help="its CPUs (default: all)")
    return p


def entry() -> int:
    """The ``fedsweep`` command: :func:`main`, in a process of its own."""
    from orchestrator import process

    process.own()
    try:
        return main()
    finally:
        process.freeze()  # what is left is freed by the exit, not walked by a last collection


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator import signals

    try:
        signals.handle()  # SIGTERM and SIGHUP stop as Ctrl-C does; one that waited comes now
        return _main(argv)
    except KeyboardInterrupt as exc:  # outside a run's or a sweep's own handling
        what = str(exc) if str(exc) and str(exc) != "interrupted" else "stopped by SIGINT"
        print(f"interrupted ({what})", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))


def _main(argv: Sequence[str] | None) -> int:
    import os

    # MLflow's INFO lines (a new store's tables...) are its business; inherited by workers
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if "mlflow" in sys.modules:  # configured already, at its import
        import logging

        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come anywhere after the config, before or after the options.
    stray = [a for a in extra if not _OVERRIDE.match(a)]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    allowed = os.environ.get("FEDSWEEP_ALLOW_ENV")
    if getattr(args, "allow_env", False):
        os.environ["FEDSWEEP_ALLOW_ENV"] = "1"  # for load_config, for this command only
    try:
        return _command(args)
    finally:
        if allowed is None:
            os.environ.pop("FEDSWEEP_ALLOW_ENV", None)
        else:
            os.environ["FEDSWEEP_ALLOW_ENV"] = allowed


def _command(args: argparse.Namespace) -> int:
    try:
        if args.command == "lab":
            return _lab(args)
        if args.command == "ray":
            return _local_ray(args)
        if getattr(args, "lab", None):
            _use_lab(args)
        if args.command == "show":
            from orchestrator.config import load_config, to_yaml

            print(to_yaml(load_config(args.config, args.overrides)), end="")
            return 0
        if args.command == "data":
            return _data(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "run":
            return _run(args)
        return _jobs(args)
    except (ConfigError, SpaceError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except ServiceError as exc:  # a service that does not answer: one line
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a service or a bug: one line with the cause, unless asked
        if getattr(args, "traceback", False):
            raise
        lines = str(exc).strip().splitlines()
        cause = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
        print(f"error: {cause} (--traceback shows where)", file=sys.stderr)
        return 1


def _data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from orchestrator.config import load_config
    from orchestrator.preview import preview

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or f"data-{Path(args.config).stem}")
    for line in preview(cfg, out):
        print(line)
    return 0


def _release() -> None:
    """Leaves Ray before the summary, so that no worker's log line follows the JSON line."""
    from clusters import release_ray

    release_ray()


def _lab(args: argparse.Namespace) -> int:
    from clusters.lab import Lab, LabError

    try:
        if args.lab_command == "up":
            lab = Lab.up(
                args.dir,
                nodes=args.nodes,
                gpus_per_node=args.gpus_per_node,
                cpus_per_node=args.cpus_per_node,
                max_connections=args.max_connections,
            )
            print(f"lab up in {lab.dir}: {len(lab.nodes)} Ray nodes, PostgreSQL, MLflow server")
            for key, value in lab.addresses().items():
                print(f"  {key:13s} {value}")
            print("environment (or pass --lab to fedsweep run, sweep and submit):")
            for key, value in lab.env.items():
                print(f"  export {key}={value}")
            return 0
        lab = Lab.open(args.dir)
        if args.lab_command == "status":
            status = lab.status()
            for service, up in status.items():
                print(f"{service:12s} {'up' if up else 'down'}")
            return 0 if all(status.values()) else 1
        lab.down()
        print(f"lab in {lab.dir} stopped")
        return 0
    except LabError as exc:
        print(f"lab error: {exc}", file=sys.stderr)
        return 2


def _local_ray(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clusters.lab import LabError, LocalRay

    where = Path(args.dir) if args.dir else None
    try:
        if args.ray_command == "up":
            if args.cpus is not None and args.cpus < 1:
                raise ConfigError("--cpus", f"must be >= 1, got {args.cpus}")
            local = LocalRay.up(where, args.cpus)
            print(
                f"ray up at {local.address} ({local.node.num_cpus} CPUs), described in {local.dir}"
            )
            print("runs and sweeps on this machine join it; `fedsweep ray down` stops it")
            if args.dir:  # runs look in ~/.fedsweep/ray: this one they join when told
                print("elsewhere than ~/.fedsweep/ray, runs join it with:")
                for key, value in {"RAY_ADDRESS": local.address, **local.env}.items():
                    print(f"  export {key}={value}")
            return 0
        found = LocalRay.find(where)
        if args.ray_command == "status":
            print(f"ray up at {found.address}" if found else "no ray up")
            return 0 if found else 1
        if found is None:
            print("no ray up", file=sys.stderr)
            return 1
        found.down()
        print(f"ray at {found.address} stopped")
        return 0
    except LabError as exc:
        print(f"ray error: {exc}", file=sys.stderr)
        return 2


def _use_lab(args: argparse.Namespace) -> None:
    """Points the command at a lab: its environment (Ray's token), and its services as
    defaults that the command's own flags and overrides still win over."""
    import os

    from clusters.lab import Lab, LabError

    try:
        lab = Lab.open(args.lab)
    except LabError as exc:
        raise ConfigError("--lab", str(exc)) from None
    os.environ.update(lab.env)
    args.overrides = [f"tracking.uri={lab.tracking_uri}", *args.overrides]
    if args.command == "run":
        args.overrides = [f"runtime.address={lab.ray_address}", *args.overrides]
    if args.command in ("sweep", "submit") and not args.storage:
        args.storage = lab.storage_url
    if args.command == "sweep" and not args.address:
        args.address = lab.ray_address
    if args.command == "submit" and not args.cluster:
        args.cluster = lab.dashboard


def _run(args: argparse.Namespace) -> int:
    from orchestrator.config import load_config
    from orchestrator.runner import RunFailed, run
    from orchestrator.timings import Timings, since_process_start
    from trainers import TRAINERS

    timings = Timings()
    timings.add("start and imports", since_process_start())
    with timings.phase("config"):
        cfg = load_config(args.config, args.overrides)  # fail fast, before Ray starts
        budget = TRAINERS.get(cfg.trainer.name)(cfg.trainer, cfg.model).budget()
    bar = None if args.quiet else _Bar(budget, cfg.trainer.name)
    try:
        result = run(
            cfg,
            progress=bar,
            resume=args.resume,
            on_start=None if args.quiet or args.resume else _announce,
            timings=timings,
        )
    except KeyboardInterrupt as exc:
        from orchestrator.runner import RunStopped

        if bar is not None:  # the bar's last line before the message, not after
            bar.close()
            bar = None
        run_id = getattr(exc, "run_id", None)
        what = str(exc) if str(exc) and str(exc) != "interrupted" else "stopped by SIGINT"
        if not isinstance(exc, RunStopped):  # before the run began: nothing recorded
            line = f"interrupted ({what}) before the run started: nothing was recorded"
        elif run_id:
            line = (
                f"interrupted ({what}): run {run_id} is KILLED; continue it with --resume {run_id}"
            )
        else:
            line = f"interrupted ({what}): the untracked run stopped; it resumes from its checkpoint directory"
        print(line, file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))
    except RunFailed as exc:
        if args.traceback:
            raise exc.cause from None
        if isinstance(exc.cause, ServiceError) and exc.run_id:  # the tracking server went
            print(
                f"{exc.cause}; run {exc.run_id} stays as the server last saw it: once the "
                f"server is back, continue it with --resume {exc.run_id}",
                file=sys.stderr,
            )
            return exc.cause.exit_code
        print(f"run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    with timings.phase("leaving ray"):
        _release()
    shown = "  ".join(
        f"{k}={result.metrics[k]:.4f}" for k in result.headline if k in result.metrics
    )
    print(
        f"run {result.run_id or '(not tracked)'}  {shown}  wall={result.metrics['wall_time_s']:.1f}s"
    )
    if args.profile:
        print(timings.table("where the time went"), file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json()))
    return 0


def _announce(run_id: str) -> None:
    print(f"run {run_id}: if it stops, continue it with --resume {run_id}", file=sys.stderr)


class _Bar:
    """A run's progress bar on stderr, as the trainer's budget describes it; made at the first
    step, so that a data error prints nothing else."""

    def __init__(self, budget: Budget, name: str) -> None:
        self.budget, self.name = budget, name
        self.bar: Any = None

    def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
        b = self.budget
        if b.counter is not None and b.counter not in metrics:
            return  # not a step (e.g. a run's closing summary)
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=b.total, desc=self.name, unit=b.unit, file=sys.stderr)
        shown = {label: format(metrics[key], fmt) for label, key, fmt in b.shown if key in metrics}
        if shown:
            self.bar.set_postfix(shown, refresh=False)
        if b.counter is None:
            self.bar.update(1)
        else:
            self.bar.update(min(round(metrics[b.counter], 2), self.bar.total) - self.bar.n)

    def phase(self, name: str) -> None:
        """What the run does after its rounds (plots, the model, closing the run)."""
        if self.bar is not None:
            self.bar.set_description(f"{self.name} ({name})")
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            if self.bar.desc != self.name:
                self.bar.set_description(self.name, refresh=False)
            self.bar.close()


def _jobs(args: argparse.Namespace) -> int:
    from orchestrator.jobs import JobError, get_job, submit

    try:
        if args.command == "submit":
            job = submit(
                args.config,
                args.space,
                args.overrides,
                args.cluster,
                trials=args.trials,
                parallel=args.parallel,
                study=args.study,
                storage=args.storage,
                allow_env=args.allow_env,
            )
            print(job.job_id)
            return 0
        job = get_job(args.job_id, args.cluster)
        if args.command == "status":
            print(job.status().value)
        elif args.command == "logs":
            print(job.logs(), end="")
        elif args.command == "cancel":
            print(job.cancel().value)
        else:
            print(json.dumps(job.result()))
    except JobError as exc:
        print(f"job error: {exc}", file=sys.stderr)
        return 2
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from orchestrator.sweeps import sweep
    from orchestrator.timings import Timings, since_process_start

    timings = Timings()
    timings.add("start and imports", since_process_start())
    for flag in ("trials", "parallel"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag}", f"must be >= 1, got {value}")
    bar = None

    def progress(t: Mapping) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(
                total=t["target"],
                initial=t["finished"],
                unit="trial",
                file=sys.stderr,
                desc="sweep",
            )
        bar.n = t["finished"]
        phase = t.get("phase")
        if phase:  # the finish's steps, each shown as it begins
            bar.set_description(f"sweep ({phase})")
        best = t["best"]
        bar.set_postfix(
            running=t["running"],
            failed=t["failed"],
            pruned=t["pruned"],
            best="-"
            if best is None
            else (f"{best:.4f}" if isinstance(best, float) else f"{best} pareto"),
        )

    try:
        result = sweep(
            args.config,
            args.space,
            args.overrides,
            trials=args.trials,
            parallel=args.parallel,
            study=args.study,
            storage=args.storage,
            address=args.address,
            progress=progress,
            timings=timings,
        )
    except KeyboardInterrupt as exc:
        if bar is not None:  # the bar's last line before the message, not after
            bar.close()
            bar = None
        print(
            f"interrupted ({exc or 'stopped by SIGINT'}): re-run the same command to resume the study",
            file=sys.stderr,
        )
        return int(getattr(exc, "exit_code", 130))
    finally:
        if bar is not None:
            bar.close()
    with timings.phase("leaving ray"):
        _release()
    if args.profile:
        print(timings.table("where the time went"), file=sys.stderr)
    out = result.to_json()
    best = out["best"]
    line = f"study {out['study']}  complete={out['n_complete']} failed={out['n_failed']} pruned={out['n_pruned']}"
    if isinstance(best, dict):
        line += f"  best={best['values']} {best['params']}"
    elif isinstance(best, list):
        line += f"  pareto trials={len(best)}"
    print(line)
    for reg in result.registered:
        print(f"registered model {reg['name']} version {reg['version']} (trial {reg['trial']})")
    if result.report is not None:
        print(result.report.markdown)
        if args.out:
            for path in result.report.write(args.out):
                print(f"wrote {path}")
    elif args.out:
        print("no results table: the space has no report, or no trial finished", file=sys.stderr)
    if args.json:
        print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(entry())
