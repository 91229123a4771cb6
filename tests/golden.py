"""Golden metrics: every shipped config (and a few variants that reach the other code paths)
at its smoke-test budget, in-process and on Ray, recorded once and compared: to 1e-12 of each
float against the recording (tests/test_golden.py says why not to the last bit across
machines), and to the last bit between the executors of one test run.

``python -m tests.golden --write`` records ``tests/data/golden_metrics.json``;
``tests/test_golden.py`` reruns every case and asserts the same histories.

The file was recorded before the redesign of the sweep wing (issue 12) and every case but one
held bit for bit after it. ``vhnn_negative_loss`` was re-recorded: its negative-loss heads
had drawn their initial weights from the process's global torch generator, so the case
differed between a fresh Ray actor and an in-process run; they are now seeded from the run's
seed, and both executors agree.

Issue 14 added three metrics to the federated and decentralized trainers' rows (``dropped``,
``straggled``, ``discarded``: parties that did not answer or sent garbage). The file was
re-recorded then by a script that checked, case by case, that every value recorded before
held exactly and that the new metrics were all 0.

Issue 18 added the horizontal toolkit's cases (``hfl_*``: the two comparison configs, the
server optimizers, FedNova, SCAFFOLD, DP-FedAvg). They were recorded on their own and merged
into the file; every case recorded before held exactly with the new code, unre-recorded.

Issue 15 added the graph cases (``fedego_*``, ``gfl_*``, ``graph_*``), recorded on their own
and merged; every case recorded before held exactly.

The histories hold bit for bit on AVX2 machines, where they were recorded. On an AVX-512
machine torch, oneDNN and NumPy pick other kernels, and 14 cases differed in their last
bits; tests/conftest.py caps the test run's processes at AVX2 (``ATEN_CPU_CAPABILITY``,
``ONEDNN_MAX_CPU_ISA``, ``NPY_DISABLE_CPU_FEATURES``), and a recording made by hand
(``--write``) should run under the same caps.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
GOLDEN = Path(__file__).resolve().parent / "data" / "golden_metrics.json"

_TIMING = re.compile(r"(_s|_ms)$")
"""Wall-clock metrics differ from run to run; everything else is deterministic."""

_VERTICAL = [
    "trainer.rounds=2",
    "trainer.vfl.attack.mc_epochs=10",
    "trainer.vfl.attack.mi_steps=20",
]
_SSL = ["trainer.ssl.pretrain_epochs=2", "trainer.ssl.finetune_epochs=2"]
_SSL += ["trainer.vfl.attack.mc_epochs=10"]

_GRAPH_SWAP = ["data.name=sbm", "data.n_samples=600", "data.n_features=32", "data.standardize=true"]

_CONDENSE_SMOKE = [
    "trainer.condense.iterations=4",
    "trainer.condense.eval_every=2",
    "trainer.condense.eval_epochs=10",
    "trainer.condense.eval_models=2",
    "trainer.condense.ipc=2",
]

CASES: dict[str, tuple[str, list[str]]] = {
    "quickstart": ("quickstart.yaml", ["trainer.rounds=2"]),
    "fedprox_digits_shards": ("fedprox_digits_shards.yaml", ["trainer.rounds=2"]),
    "cnn_digits_iid": ("cnn_digits_iid.yaml", ["trainer.rounds=2"]),
    "centralized_breast_cancer": ("centralized_breast_cancer.yaml", ["trainer.rounds=2"]),
    "cmfl_digits": ("cmfl_digits.yaml", ["trainer.rounds=2"]),
    "decentralized_breast_cancer": (
        "decentralized_breast_cancer.yaml",
        ["trainer.decentralized.epochs=2"],
    ),
    "vit_teacher_digits": ("vit_teacher_digits.yaml", ["trainer.rounds=2"]),
    "distill_digits": (
        "distill_digits.yaml",
        ["trainer.distill.epochs=2", "trainer.distill.teacher.epochs=1"],
    ),
    "vfl_breast_cancer": ("vfl_breast_cancer.yaml", _VERTICAL),
    "vfl_digits": ("vfl_digits.yaml", _VERTICAL),
    "fedhssl_digits": ("fedhssl_digits.yaml", _SSL),
    "hfl_digits": ("hfl_digits.yaml", ["trainer.rounds=2"]),
    "hfl_synthetic": ("hfl_synthetic.yaml", ["trainer.rounds=2"]),
    # the horizontal toolkit: server optimizers, FedNova, SCAFFOLD, DP-FedAvg
    "hfl_fedadam_median": (
        "hfl_digits.yaml",
        ["trainer.rounds=3", "trainer.server.optimizer=adam", "trainer.aggregator.name=median"],
    ),
    "hfl_fedyogi": ("hfl_digits.yaml", ["trainer.rounds=3", "trainer.server.optimizer=yogi"]),
    "hfl_fednova": ("hfl_digits.yaml", ["trainer.rounds=3", "trainer.name=fednova"]),
    "hfl_scaffold": ("hfl_digits.yaml", ["trainer.rounds=3", "trainer.name=scaffold"]),
    "hfl_dp_adaptive": (
        "hfl_digits.yaml",
        [
            "trainer.rounds=3",
            "trainer.parties_per_round=40",
            "trainer.fraction=1.0",
            "trainer.privacy.mode=central",
            "trainer.privacy.noise=0.5",
            "trainer.privacy.quantile=0.5",
        ],
    ),
    "hfl_dp_local": (
        "hfl_digits.yaml",
        ["trainer.rounds=3", "trainer.privacy.mode=local", "trainer.privacy.noise=0.3"],
    ),
    # graph FL (issue 15): every graph trainer and FedEgo's ablations on the generated graph;
    # the Cora configs with their data swapped for the generated graph (CI has no Cora)
    "fedego_sbm": ("fedego_sbm.yaml", ["trainer.rounds=2"]),
    "gfl_sbm": ("gfl_sbm.yaml", ["trainer.rounds=2"]),
    "fedego_cora": ("fedego_cora.yaml", ["trainer.rounds=2", *_GRAPH_SWAP]),
    "gfl_cora": ("gfl_cora.yaml", ["trainer.rounds=2", *_GRAPH_SWAP]),
    "fedego_ne_noise": (
        "fedego_sbm.yaml",
        ["trainer.rounds=2", "trainer.fedego.variant=ne", "trainer.fedego.sigma=0.1"],
    ),
    "fedego_nr_fixed_no_mixup": (
        "fedego_sbm.yaml",
        [
            "trainer.rounds=2",
            "trainer.fedego.variant=nr",
            "trainer.fedego.lamb_fixed=true",
            "trainer.fedego.lamb_c=0.3",
            "trainer.fedego.mixup=false",
        ],
    ),
    "fedego_np_gcn": (
        "fedego_sbm.yaml",
        ["trainer.rounds=2", "trainer.fedego.variant=np", "model.name=gcn"],
    ),
    "graph_local_louvain": (
        "fedego_sbm.yaml",
        ["trainer.rounds=2", "trainer.name=graph_local", "partition.name=louvain"],
    ),
    "graph_fedprox_gcn": (
        "fedego_sbm.yaml",
        [
            "trainer.rounds=2",
            "trainer.name=graph_fedprox",
            "model.name=gcn",
            "trainer.optimizer=sgd",
        ],
    ),
    "graph_centralized_random": (
        "fedego_sbm.yaml",
        ["trainer.rounds=2", "trainer.name=graph_centralized", "partition.name=random_nodes"],
    ),
    "gfl_gcn_no_share": (
        "gfl_sbm.yaml",
        ["trainer.rounds=2", "model.name=gcn", "trainer.gfl.share=false", "trainer.gfl.steps=2"],
    ),
    # variants: the robust, committee, decentralized, vertical-defense and SSL paths
    "fedavg_krum_sign_flip": (
        "quickstart.yaml",
        [
            "trainer.rounds=2",
            "trainer.attack.name=sign_flip",
            "trainer.attack.fraction=0.2",
            "trainer.aggregator.name=krum",
        ],
    ),
    "fedavg_trimmed_alie_update": (
        "quickstart.yaml",
        [
            "trainer.rounds=2",
            "trainer.attack.name=alie",
            "trainer.attack.fraction=0.2",
            "trainer.attack.target=update",
            "trainer.aggregator.name=trimmed_mean",
            "trainer.optimizer=adam",
            "trainer.lr=0.01",
        ],
    ),
    "fedavg_label_flip": (
        "quickstart.yaml",
        ["trainer.rounds=2", "trainer.attack.name=label_flip", "trainer.attack.fraction=0.3"],
    ),
    "cmfl_strategy2_gaussian": (
        "cmfl_digits.yaml",
        [
            "trainer.rounds=2",
            "trainer.cmfl.strategy=2",
            "trainer.cmfl.election=top",
            "trainer.attack.name=gaussian",
            "trainer.attack.fraction=0.2",
        ],
    ),
    "dspg_torus_edges": (
        "decentralized_breast_cancer.yaml",
        [
            "trainer.name=dspg",
            "trainer.decentralized.epochs=2",
            "trainer.decentralized.topology=torus",
            "trainer.decentralized.varying=edges",
        ],
    ),
    "dsgd_mlp_cycle": (
        "decentralized_breast_cancer.yaml",
        [
            "trainer.name=dsgd",
            "model.name=mlp",
            "model.hidden=[8]",
            "trainer.decentralized.epochs=1",
            "trainer.decentralized.varying=cycle",
            "trainer.decentralized.loss=multinomial",
        ],
    ),
    "vhnn_marvell": (
        "vfl_breast_cancer.yaml",
        [*_VERTICAL, "trainer.name=vhnn", "trainer.vfl.defense.name=marvell"],
    ),
    "vhnn_negative_loss": (
        "vfl_breast_cancer.yaml",
        [*_VERTICAL, "trainer.name=vhnn", "trainer.vfl.defense.name=negative_loss"],
    ),
    "vsnn_cae_embedding_noise": (
        "vfl_breast_cancer.yaml",
        [
            *_VERTICAL,
            "trainer.name=vsnn",
            "trainer.vfl.defense.name=cae",
            "trainer.vfl.defense.embedding_noise=0.5",
        ],
    ),
    "vlr_discrete": (
        "vfl_breast_cancer.yaml",
        [*_VERTICAL, "trainer.vfl.defense.name=discrete"],
    ),
    "fedgssl_passive_frozen": (
        "fedhssl_digits.yaml",
        [*_SSL, "trainer.name=fedgssl", "trainer.ssl.freeze=passive"],
    ),
    "vfl_supervised": ("fedhssl_digits.yaml", [*_SSL, "trainer.name=vfl_supervised"]),
    # dataset distillation (issue 16): gradient and distribution matching, the two backdoors,
    # and the federated upload with Byzantine distillers and the loss filter
    "condense_digits": ("condense_digits.yaml", _CONDENSE_SMOKE),
    "condense_dm_doorping": (
        "condense_digits.yaml",
        [
            *_CONDENSE_SMOKE,
            "trainer.condense.method=dm",
            "trainer.backdoor.name=doorping",
            "trainer.backdoor.trigger_steps=20",
        ],
    ),
    "condense_gm_naive_ipc1": (
        "condense_digits.yaml",
        [*_CONDENSE_SMOKE, "trainer.condense.ipc=1", "trainer.backdoor.name=naive"],
    ),
    "fed_condense_digits": (
        "fed_condense_digits.yaml",
        [
            "trainer.condense.iterations=5",
            "trainer.condense.eval_epochs=10",
            "trainer.condense.eval_models=2",
        ],
    ),
}


def case_overrides(
    name: str, executor: str, tracking_uri: str | None = None
) -> tuple[Path, list[str]]:
    """The config path and overrides of one golden case on ``executor`` (local or ray),
    tracked in ``tracking_uri`` (checkpoints only) or not tracked."""
    config, overrides = CASES[name]
    tracking = (
        [f"tracking.uri={tracking_uri}", "tracking.model_format=checkpoint"]
        if tracking_uri
        else ["tracking.enabled=false"]
    )
    return CONFIGS / config, [*overrides, f"runtime.executor={executor}", *tracking]


def comparable(history: list[dict[str, float]]) -> list[dict[str, Any]]:
    """A run's history without its wall-clock metrics, NaN as the string "nan"."""
    return [
        {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in h.items()}
        for h in [{k: v for k, v in row.items() if not _TIMING.search(k)} for row in history]
    ]


def run_case(name: str, executor: str, tracking_uri: str | None = None) -> Any:
    """The run's comparable history, and its result."""
    import orchestrator

    config, overrides = case_overrides(name, executor, tracking_uri)
    result = orchestrator.run(config, overrides)
    return (comparable(result.history), result) if tracking_uri else comparable(result.history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="record the golden file")
    parser.add_argument("cases", nargs="*", help="cases to run (default: all)")
    args = parser.parse_args()
    import ray
    import torch

    torch.set_num_threads(2)  # what the 2-core machines here use by default (see test_golden)

    ray.init(
        num_cpus=2, include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1"
    )
    out: dict[str, dict[str, Any]] = {}
    for name in args.cases or CASES:
        local, remote = run_case(name, "local"), run_case(name, "ray")
        same = local == remote
        print(f"{name}: {len(local)} rows, local == ray: {same}", flush=True)
        out[name] = {"local": local} if same else {"local": local, "ray": remote}
    ray.shutdown()
    if args.write:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()


def assert_agrees(history: list[dict], expected: list[dict]) -> None:
    """Asserts a history is the recorded one: counts and other non-floats exactly, floats to
    1e-12 of their value (see tests/test_golden.py for why not to the last bit)."""
    assert len(history) == len(expected), (len(history), len(expected))
    for i, (got, want) in enumerate(zip(history, expected, strict=True)):
        assert sorted(got) == sorted(want), (i, sorted(got), sorted(want))
        for key, value in want.items():
            actual = got[key]
            if isinstance(value, float) and isinstance(actual, float):
                close = math.isclose(actual, value, rel_tol=1e-12, abs_tol=1e-15)
                same = close or (math.isnan(actual) and math.isnan(value))
            else:
                same = actual == value
            assert same, f"row {i} ({want.get('round')}), {key}: {actual!r} != {value!r}"
