"""The ``fedsweep`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence

from orchestrator.errors import ConfigError
from search_spaces.space import SpaceError

__all__ = ["main"]

_SHOWN = ("test_accuracy", "test_loss", "train_loss", "suboptimality", "epochs")


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
    run.add_argument("--traceback", action="store_true", help="print the traceback of a failed run")
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
    show = sub.add_parser("show", help="print the resolved config")
    show.add_argument("config", help="experiment YAML file")
    show.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "show":
            from orchestrator.config import load_config, to_yaml

            print(to_yaml(load_config(args.config, args.overrides)), end="")
            return 0
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "run":
            return _run(args)
        return _jobs(args)
    except (ConfigError, SpaceError) as exc:
        print(str(exc), file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from orchestrator.config import load_config
    from orchestrator.runner import run

    cfg = load_config(args.config, args.overrides)  # fail fast, before Ray starts
    bar = None

    def progress(step: int, metrics: Mapping[str, float]) -> None:
        nonlocal bar
        if args.quiet or "test_accuracy" not in metrics:  # e.g. a run's closing summary
            return
        decentralized = "epochs" in metrics  # budgeted in epochs, not rounds
        if bar is None:  # made at the first round, so that a data error prints nothing else
            from tqdm import tqdm

            bar = tqdm(
                total=cfg.trainer.decentralized.epochs if decentralized else cfg.trainer.rounds,
                desc=cfg.trainer.name,
                unit="epoch" if decentralized else "round",
                file=sys.stderr,
            )
        if decentralized:
            bar.set_postfix(
                sub=f"{metrics['suboptimality']:.2e}",
                acc=f"{metrics['test_accuracy']:.4f}",
                refresh=False,
            )
            bar.update(min(round(metrics["epochs"], 2), bar.total) - bar.n)
            return
        bar.set_postfix(
            acc=f"{metrics['test_accuracy']:.4f}",
            loss=f"{metrics['train_loss']:.4f}",
            refresh=False,
        )
        bar.update(1)

    try:
        result = run(cfg, progress=progress)
    except ConfigError:
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.traceback:
            raise
        print(f"run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    shown = "  ".join(f"{k}={result.metrics[k]:.4f}" for k in _SHOWN if k in result.metrics)
    print(
        f"run {result.run_id or '(not tracked)'}  {shown}  wall={result.metrics['wall_time_s']:.1f}s"
    )
    if args.json:
        print(json.dumps(result.to_json()))
    return 0


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
            )
            print(job.job_id)
            return 0
        job = get_job(args.job_id, args.cluster)
        if args.command == "status":
            print(job.status().value)
        elif args.command == "logs":
            print(job.logs(), end="")
        elif args.command == "cancel":
            job.cancel()
            print(job.status().value)
        else:
            print(json.dumps(job.result()))
    except JobError as exc:
        print(f"job error: {exc}", file=sys.stderr)
        return 2
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from orchestrator.sweeps import sweep

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
        )
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume the study", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
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
    raise SystemExit(main())
