"""The ``fedsweep`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence

from orchestrator.errors import ConfigError

__all__ = ["main"]

_SHOWN = ("test_accuracy", "test_loss", "train_loss")


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
        return _run(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from orchestrator.config import load_config
    from orchestrator.runner import run

    cfg = load_config(args.config, args.overrides)  # fail fast, before Ray starts
    bar = None

    def progress(step: int, metrics: Mapping[str, float]) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:  # made at the first round, so that a data error prints nothing else
            from tqdm import tqdm

            bar = tqdm(
                total=cfg.trainer.rounds, desc=cfg.trainer.name, unit="round", file=sys.stderr
            )
        bar.set_postfix(acc=f"{metrics['test_accuracy']:.4f}", loss=f"{metrics['train_loss']:.4f}")
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


if __name__ == "__main__":
    raise SystemExit(main())
