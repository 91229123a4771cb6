"""The reproduction behind docs/condensation.md (issue 16): distillation against random real
subsets, NaiveAttack against DoorPing, and the federated upload with Byzantine distillers.

    python benchmarks/condense_repro.py --part quality --out quality.json
    python benchmarks/condense_repro.py --part backdoor --out backdoor.json
    python benchmarks/condense_repro.py --part backdoor_images --out backdoor_images.json
    python benchmarks/condense_repro.py --part federated --out federated.json

Each part runs its grid (3 seeds) in this process, without MLflow, and writes one JSON row per
run with its settings and final metrics; --quick cuts every budget for a smoke test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from orchestrator.runner import run

ROOT = Path(__file__).resolve().parents[1]
CONDENSE = str(ROOT / "configs" / "condense_digits.yaml")
FED = str(ROOT / "configs" / "fed_condense_digits.yaml")
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")  # FedAvg: dirichlet 0.5, batch 16
BASE = ["tracking.enabled=false", "runtime.executor=local"]
EVAL = ["trainer.condense.eval_epochs=100"]  # the baselines' 300 epochs on all the data cost most
DATA = {
    "digits": [],
    "synthetic_images": ["data.name=synthetic_images", "data.n_classes=10", "data.n_samples=2000"],
}
SEEDS = (0, 1, 2)


def _quality(quick: bool):
    for data, ipc, method, seed in itertools.product(DATA, (1, 10), ("gm", "dm"), SEEDS):
        iterations = 50 if method == "gm" else 300
        yield (
            CONDENSE,
            [
                *DATA[data],
                f"trainer.condense.method={method}",
                f"trainer.condense.ipc={ipc}",
                f"trainer.condense.iterations={4 if quick else iterations}",
                *EVAL,
                f"trainer.condense.eval_every={4 if quick else iterations}",
                f"seed={seed}",
            ],
            {"data": data, "ipc": ipc, "method": method, "seed": seed},
        )


def _backdoor(quick: bool, images: bool = False):
    grid = [
        *itertools.product([("digits", "dm", 10)], ("naive", "doorping", "doorping_clip")),
        *itertools.product([("digits", "gm", 1)], ("naive", "doorping")),
    ]
    if images:  # the seeded synthetic images (its own part: run after the digits grid)
        grid = [*itertools.product([("synthetic_images", "dm", 10)], ("naive", "doorping"))]
    for ((data, method, ipc), attack), portion, seed in itertools.product(
        grid, (0.01, 0.05), SEEDS
    ):
        name = "doorping" if attack.startswith("doorping") else attack
        yield (
            CONDENSE,
            [
                *DATA[data],
                f"trainer.condense.method={method}",
                f"trainer.condense.ipc={ipc}",
                f"trainer.condense.iterations={4 if quick else 200}",
                *EVAL,
                f"trainer.condense.eval_every={4 if quick else 200}",
                f"trainer.backdoor.name={name}",
                f"trainer.backdoor.portion={portion}",
                f"trainer.backdoor.clip={'true' if attack == 'doorping_clip' else 'false'}",
                f"seed={seed}",
            ],
            {
                "data": data,
                "method": method,
                "ipc": ipc,
                "portion": portion,
                "attack": attack,
                "seed": seed,
            },
        )


def _federated(quick: bool):
    its = 4 if quick else 200
    for fraction, defense, seed in itertools.product(
        (0.0, 0.1, 0.3, 0.5), ("none", "loss_filter"), SEEDS
    ):
        attack = (
            ["trainer.attack.name=none", "trainer.attack.fraction=0", "trainer.backdoor.name=none"]
            if fraction == 0
            else [f"trainer.attack.fraction={fraction}"]
        )
        yield (
            FED,
            [
                *attack,
                f"trainer.condense.defense={defense}",
                f"trainer.condense.iterations={its}",
                *EVAL,
                f"seed={seed}",
            ],
            {"fraction": fraction, "defense": defense, "seed": seed, "method": "fed_condense"},
        )
    for seed in SEEDS:  # FedAvg on the same partition, clean, for the same model
        yield (
            QUICKSTART,
            [
                "partition.num_parties=10",
                "model.hidden=[128]",
                "trainer.fraction=1.0",
                f"trainer.rounds={2 if quick else 20}",
                f"seed={seed}",
            ],
            {"fraction": 0.0, "defense": "none", "seed": seed, "method": "fedavg"},
        )


PARTS = {
    "quality": _quality,
    "backdoor": _backdoor,
    "backdoor_images": lambda quick: _backdoor(quick, images=True),
    "federated": _federated,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=sorted(PARTS), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = []
    for config, overrides, tags in PARTS[args.part](args.quick):
        started = time.perf_counter()
        result = run(config, [*BASE, *overrides])
        rows.append({**tags, **result.metrics, "wall_s": time.perf_counter() - started})
        print(json.dumps(rows[-1]), flush=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
