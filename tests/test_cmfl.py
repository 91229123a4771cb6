"""CMFL's committee, the Byzantine trainers end to end, and the comparison grid's report."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from clusters import InProcessExecutor, InProcessTaskRunner
from orchestrator import ConfigError
from orchestrator.config import load_config
from orchestrator.data import prepare
from orchestrator.runner import run
from orchestrator.sweeps import sweep
from search_spaces import SHIPPED, load_space, parse_space
from trainers import TRAINERS
from trainers.cmfl import Roles, committee_scores, elect, rank
from trainers.config import CMFLConfig

from .conftest import CONFIGS, Sink, tiny


def dotted_tiny(**dotted):
    return tiny(**{k.replace(".", "__"): v for k, v in dotted.items()})


def cmfl_config(**extra):
    return dotted_tiny(
        **{
            "partition.name": "shards",
            "partition.num_parties": 30,
            "model.name": "logreg",
            "trainer.name": "cmfl",
            "trainer.rounds": 6,
            "trainer.batch_size": 10,
            "trainer.cmfl.active_rate": 0.5,  # 6 members, 9 trainers, 6 aggregated
            **extra,
        }
    )


def fit(cfg_dict, executor=None):
    cfg = load_config(cfg_dict)
    trainer = TRAINERS.get(cfg.trainer.name)(cfg.trainer, cfg.model)
    executor = executor or InProcessExecutor()
    return trainer.fit(prepare(cfg).data, executor, Sink(), cfg.seed)


def test_role_sizes_follow_the_rates():
    assert Roles.of(100, CMFLConfig()) == Roles(4, 6, 4)
    assert Roles.of(1000, CMFLConfig()) == Roles(40, 60, 40)
    assert Roles.of(100, CMFLConfig(aggregation_rate=1.0)).aggregated == 6  # capped at |T|
    with pytest.raises(ValueError, match="no committee"):
        Roles.of(10, CMFLConfig())
    with pytest.raises(ValueError, match="outnumber"):
        Roles.of(100, CMFLConfig(committee_rate=0.7))


def test_scores_sum_per_layer_distances_to_every_member():
    members = np.array([[0.0, 0.0], [1.0, 0.0]])
    trainers = np.array([[3.0, 4.0], [0.0, 0.0]])
    # trainer 0: (3 + 4) + (2 + 4) = 13 per layer; one global norm would give 5 + sqrt(20)
    np.testing.assert_allclose(committee_scores(trainers, members, [(0, 1), (1, 2)]), [13, 1])
    np.testing.assert_allclose(committee_scores(trainers, members, None), [5 + 20**0.5, 1])


def test_strategies_rank_closest_or_farthest_first_and_the_middle_is_elected():
    scores = np.array([3.0, 1.0, 5.0, 0.5, 4.0, 2.0])
    assert rank(scores, 1).tolist() == [3, 1, 5, 0, 4, 2]
    assert rank(scores, 2).tolist() == [2, 4, 0, 5, 1, 3]
    # median election: positions (6 - 4) // 2 = 1 .. 5 of the ranking
    assert elect(rank(scores, 1), scores, 4, "median").tolist() == [1, 5, 0, 4]
    assert elect(rank(scores, 2), scores, 4, "median").tolist() == [4, 0, 5, 1]
    assert elect(rank(scores, 2), scores, 2, "top").tolist() == [3, 1]  # closest, any strategy


def test_committee_models_score_but_are_never_aggregated():
    result = fit(cmfl_config(**{"trainer.attack.name": "zero", "trainer.attack.fraction": 0.3}))
    rounds = result.tables["cmfl_rounds"]
    assert len(rounds) == 6
    for before, after in zip(rounds, rounds[1:]):
        assert len(before["committee"]) == 6 and len(before["trainers"]) == 9
        assert not set(before["selected"]) & set(before["committee"])
        assert set(before["selected"]) <= set(before["trainers"])
        assert set(after["committee"]) <= set(before["trainers"])  # elected from the trainers
        assert not set(after["committee"]) & set(after["trainers"])
    for row, h in zip(rounds, result.history):
        assert h["byzantine_through"] == row["byzantine_selected"]
        assert h["aggregated"] == 6
    # Each party's participation count is how often it was selected.
    counts = {r["party"]: r["aggregated"] for r in result.tables["participation"]}
    selected = [p for row in rounds for p in row["selected"]]
    assert counts == {p: selected.count(p) for p in counts}


def test_strategy_one_keeps_sign_flipped_uploads_out_where_strategy_two_lets_them_in():
    attack = {
        "trainer.attack.name": "sign_flip",
        "trainer.attack.fraction": 0.3,
        "trainer.rounds": 10,
    }
    one = fit(cmfl_config(**attack, **{"trainer.cmfl.strategy": 1}))
    two = fit(cmfl_config(**attack, **{"trainer.cmfl.strategy": 2}))
    through_one = sum(h["byzantine_through"] for h in one.history)
    through_two = sum(h["byzantine_through"] for h in two.history)
    # -w_k is far from the honest members' models: farthest-first picks it, closest-first not.
    assert through_two > 2 * through_one


def test_cmfl_on_ray_matches_in_process(ray_session):
    from clusters import RayExecutor

    cfg = cmfl_config(**{"trainer.attack.name": "sign_flip", "trainer.attack.fraction": 0.2})
    local = fit(cfg)
    ray_exec = RayExecutor(num_workers=2)
    try:
        remote = fit(cfg, ray_exec)
    finally:
        ray_exec.close()
    keys = ("test_accuracy", "train_loss", "byzantine_through", "participation_var")
    assert [[h[k] for k in keys] for h in local.history] == [
        [h[k] for k in keys] for h in remote.history
    ]
    assert local.tables["cmfl_rounds"] == [
        {**r, "scores": r["scores"]} for r in remote.tables["cmfl_rounds"]
    ]


def test_fedavg_gathering_uploads_matches_combining_on_workers():
    # a sign-flip attack with no Byzantine party takes the gather-every-upload path
    plain = fit(dotted_tiny(**{"trainer.rounds": 3}))
    gathered = fit(dotted_tiny(**{"trainer.rounds": 3, "trainer.attack.name": "sign_flip"}))
    np.testing.assert_allclose(
        [h["test_loss"] for h in plain.history],
        [h["test_loss"] for h in gathered.history],
        rtol=1e-5,
    )


def test_krum_keeps_sign_flipped_uploads_out():
    cfg = dotted_tiny(
        **{
            "partition.num_parties": 10,
            "trainer.rounds": 4,
            "trainer.aggregator.name": "krum",
            "trainer.attack.name": "sign_flip",
            "trainer.attack.fraction": 0.2,
        }
    )
    history = fit(cfg).history
    assert all(h["byzantine_uploads"] == 2 for h in history)
    assert all(h["byzantine_through"] == 0 and h["byzantine_share"] == 0 for h in history)
    mean = fit({**cfg, "trainer": {**cfg["trainer"], "aggregator": {"name": "mean"}}}).history
    assert all(h["byzantine_share"] == pytest.approx(0.2, abs=0.1) for h in mean)
    assert history[-1]["test_accuracy"] > mean[-1]["test_accuracy"]


def test_label_flip_attack_trains_byzantine_parties_on_flipped_labels():
    cfg = {"trainer.attack.name": "label_flip", "trainer.rounds": 3}
    clean = fit(dotted_tiny(**{"trainer.rounds": 3}))
    flipped = fit(dotted_tiny(**cfg, **{"trainer.attack.fraction": 0.5}))
    assert flipped.history[-1]["byzantine_share"] > 0
    assert flipped.history[-1]["train_loss"] > clean.history[-1]["train_loss"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer.aggregator.name=krum", "partition.num_parties=4", "trainer.aggregator.f=1"],
            r"trainer.aggregator: krum needs n > 2f \+ 2 uploads, got n=4, f=1",
        ),
        (["trainer.name=cmfl", "partition.num_parties=10"], "trainer.cmfl: no committee"),
        (["trainer.attack.name=evil"], "trainer.attack.name: unknown name 'evil'; valid: alie"),
        (["trainer.attack.fraction=1.5"], r"trainer.attack.fraction: must be in \[0, 1\]"),
        (["trainer.cmfl.strategy=3"], r"trainer.cmfl.strategy: must be one of 1 \(closest\)"),
        (["trainer.cmfl.election=random"], "valid: median, top"),
        (["trainer.aggregator.trim=0.5"], r"must be in \[0, 0.5\)"),
    ],
)
def test_bad_robust_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(dotted_tiny(), overrides)


def test_run_logs_committee_and_participation_tables(tracking_uri):
    from mlflow import MlflowClient

    result = run(cmfl_config(**{"tracking.enabled": True, "tracking.uri": tracking_uri}))
    client = MlflowClient(tracking_uri)
    paths = {a.path for a in client.list_artifacts(result.run_id, "tables")}
    assert paths == {"tables/cmfl_rounds.parquet", "tables/participation.parquet"}
    local = client.download_artifacts(result.run_id, "tables/cmfl_rounds.parquet")
    table = pq.read_table(local)
    assert table.num_rows == 6 and "selected" in table.column_names
    history = client.get_metric_history(result.run_id, "time_scoring_s")
    assert len(history) == 6


def test_preset_space_expands_to_config_values():
    space = parse_space(
        {
            "objective": {"metric": "test_accuracy", "reduce": "tail"},
            "params": {
                "method": {
                    "type": "preset",
                    "choices": {
                        "krum": {"trainer.aggregator.name": "krum"},
                        "cmfl": {"trainer.name": "cmfl"},
                    },
                },
                "trainer.lr": {"type": "float", "low": 0.01, "high": 0.1},
            },
            "report": {"rows": "method", "columns": "trainer.lr"},
        }
    )
    chosen = {"method": "krum", "trainer.lr": 0.05}
    assert space.config_values(chosen) == {"trainer.aggregator.name": "krum", "trainer.lr": 0.05}
    assert space.config_keys() == ["trainer.aggregator.name", "trainer.name", "trainer.lr"]
    assert space.objectives[0].value([{"test_accuracy": v} for v in range(20)]) == 18.5


def test_comparison_grid_writes_its_results_table(tracking_uri, tmp_path):
    space = load_space(SHIPPED / "cmfl_comparison.yaml")
    assert len(space.params[0].choices) == 8 and len(space.params[1].choices) == 7
    small = parse_space(
        {
            "objective": {"metric": "test_accuracy", "reduce": "tail"},
            "params": {
                "method": {
                    "type": "preset",
                    "choices": {k: space.params[0].sets[k] for k in ("fedavg", "krum", "cmfl_1")},
                },
                "attack": {
                    "type": "preset",
                    "choices": {k: space.params[1].sets[k] for k in ("none", "sign_flip_30")},
                },
                "seed": {"type": "categorical", "choices": [0, 1]},
            },
            "sampler": {"name": "grid"},
            "report": {"rows": "method", "columns": "attack", "metrics": ["byzantine_share"]},
        }
    )
    result = sweep(
        CONFIGS / "cmfl_digits.yaml",
        small,
        ["trainer.rounds=4", f"tracking.uri={tracking_uri}"],
        trials=50,
        runner=InProcessTaskRunner(),
        study="grid",
    )
    assert result.n_complete == 12  # the grid's size, though 50 were asked for
    table = result.report.table.to_pylist()
    assert len(table) == 6 and all(r["n"] == 2 for r in table)
    cell = {(r["method"], r["attack"]): r for r in table}
    assert cell[("fedavg", "none")]["mean"] == 0.0
    assert cell[("fedavg", "sign_flip_30")]["mean"] > 0.0
    assert cell[("krum", "sign_flip_30")]["values"] == [0.0, 0.0]
    assert "| fedavg | 0.0000 ± 0.0000 |" in result.report.markdown
    written = result.report.write(tmp_path / "out")
    assert {p.name for p in written} == {"results.parquet", "results.md", "byzantine_share.png"}

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    names = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert "report/results.md" in names and "report/byzantine_share.png" in names
