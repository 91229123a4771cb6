"""Tables and figures for docs/condensation.md from benchmarks/condense_repro.py's JSON.

python benchmarks/condense_report.py quality.json backdoor.json federated.json --docs docs
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _groups(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return dict(out)


def _ms(rows: list[dict], key: str) -> str:
    v = np.array([r.get(key, np.nan) for r in rows], dtype=float)
    if np.isnan(v).all():
        return "-"
    return f"{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1) if len(v) > 1 else 0:.3f}"


def quality(rows: list[dict]) -> str:
    lines = [
        "| data | ipc | method | distilled | random real subset | all real data | distil s |",
        "|---|---|---|---|---|---|---|",
    ]
    for (data, ipc, method), g in sorted(_groups(rows, ("data", "ipc", "method")).items()):
        lines.append(
            f"| {data} | {ipc} | {method} | {_ms(g, 'test_accuracy')} | "
            f"{_ms(g, 'random_accuracy')} | {_ms(g, 'full_accuracy')} | "
            f"{np.mean([r['distil_time_s'] for r in g]):.0f} |"
        )
    return "\n".join(lines)


def backdoor(rows: list[dict]) -> str:
    lines = [
        "| setting | portion | attack | clean accuracy (CTA) | ASR |",
        "|---|---|---|---|---|",
    ]
    keys = ("data", "method", "ipc", "portion", "attack")
    for (data, method, ipc, portion, attack), g in sorted(_groups(rows, keys).items()):
        lines.append(
            f"| {data} {method} ipc {ipc} | {portion} | {attack} | {_ms(g, 'test_accuracy')} | "
            f"{_ms(g, 'asr')} |"
        )
    return "\n".join(lines)


def federated(rows: list[dict]) -> str:
    lines = [
        "| method | Byzantine share | defense | CTA | ASR | dropped samples (Byzantine share of them) | bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = ("method", "fraction", "defense")
    for (method, fraction, defense), g in sorted(_groups(rows, keys).items()):
        bad = _ms(g, "filtered_poisoned_share") if method == "fed_condense" else "-"
        dropped = _ms(g, "filtered_samples") if method == "fed_condense" else "-"
        lines.append(
            f"| {method} | {fraction} | {defense} | {_ms(g, 'test_accuracy')} | {_ms(g, 'asr')} | "
            f"{dropped} ({bad}) | {np.mean([r['bytes_cumulative'] for r in g]):,.0f} |"
        )
    return "\n".join(lines)


def federated_figure(rows: list[dict], path: Path) -> None:
    fig, (ax_asr, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    fed = [r for r in rows if r["method"] == "fed_condense"]
    for defense, style in (("none", "o-"), ("loss_filter", "s--")):
        g = _groups([r for r in fed if r["defense"] == defense], ("fraction",))
        xs = sorted(k[0] for k in g)
        for ax, key in ((ax_asr, "asr"), (ax_acc, "test_accuracy")):
            ys = [np.nanmean([r.get(key, np.nan) for r in g[(x,)]]) for x in xs]
            ax.plot(xs, ys, style, label=f"fed_condense, defense {defense}")
    fedavg = [r["test_accuracy"] for r in rows if r["method"] == "fedavg"]
    if fedavg:
        ax_acc.axhline(np.mean(fedavg), color="grey", ls=":", label="FedAvg, clean")
    ax_asr.set_ylabel("attack success rate")
    ax_acc.set_ylabel("clean test accuracy")
    for ax in (ax_asr, ax_acc):
        ax.set_xlabel("share of Byzantine parties (NaiveAttack, portion 0.1)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def backdoor_figure(rows: list[dict], path: Path) -> None:
    keys = ("data", "method", "ipc", "portion", "attack")
    g = _groups(rows, keys)
    labels = sorted(g)
    fig, ax = plt.subplots(figsize=(13, 4.2))
    x = np.arange(len(labels))
    cta = [np.mean([r["test_accuracy"] for r in g[k]]) for k in labels]
    asr = [np.mean([r["asr"] for r in g[k]]) for k in labels]
    ax.bar(x - 0.2, cta, 0.4, label="clean accuracy")
    ax.bar(x + 0.2, asr, 0.4, label="ASR")
    short = {"digits": "digits", "synthetic_images": "images"}
    ticks = [f"{short[d]} {m} ipc{i}\n{p} {a}" for d, m, i, p, a in labels]
    ax.set_xticks(x, ticks, fontsize=6, rotation=40)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("networks trained on the backdoored synthetic set (mean of 3 seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("quality")
    parser.add_argument("backdoor", help="one or more files, joined by commas")
    parser.add_argument("federated")
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args()
    q, f = (json.loads(Path(p).read_text()) for p in (args.quality, args.federated))
    b = [row for p in args.backdoor.split(",") for row in json.loads(Path(p).read_text())]
    print(quality(q), "\n")
    print(backdoor(b), "\n")
    print(federated(f), "\n")
    docs = Path(args.docs)
    backdoor_figure(b, docs / "condense_backdoor.png")
    federated_figure(f, docs / "condense_federated_digits.png")


if __name__ == "__main__":
    main()
