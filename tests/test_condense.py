"""Dataset distillation and its backdoors (issue 16): the matching distance, the poisoning
and DoorPing's trigger update against their definitions; distillation that beats a random
real subset; the condense and fed_condense trainers as a user runs them, with what MLflow
holds; and the one-line refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.config import load_config
from orchestrator.errors import ConfigError
from trainers.condense import (
    Distiller,
    Trigger,
    attack_success_rate,
    match_distance,
    poison,
    train_fresh,
)
from trainers.condense.backdoor import update_trigger
from trainers.condense.distil import synthetic_bytes
from trainers.config import BackdoorConfig, CondenseConfig
from trainers.models import ModelSpec, build_model, forward_layers

from .conftest import CONFIGS


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float32)
    x = (x - x.mean(0)) / np.where(x.std(0) == 0, 1, x.std(0))
    order = np.random.default_rng(0).permutation(len(d.target))
    tr, te = order[:1400], order[1400:]
    t = torch.from_numpy
    return t(x[tr]), t(d.target[tr]).long(), t(x[te]), t(d.target[te]).long()


def test_match_distance_is_the_papers_per_unit_cosine_and_ignores_biases():
    rng = np.random.default_rng(0)
    a = [torch.from_numpy(rng.normal(size=(4, 3))), torch.from_numpy(rng.normal(size=4))]
    b = [torch.from_numpy(rng.normal(size=(4, 3))), torch.from_numpy(rng.normal(size=4))]
    want = sum(
        1 - float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-6))
        for u, v in zip(a[0].numpy(), b[0].numpy())
    )
    assert math.isclose(float(match_distance(a, b)), want, rel_tol=1e-9)
    assert float(match_distance(a, a)) == pytest.approx(0.0, abs=1e-4)  # up to the 1e-6 guard
    # a conv kernel counts per output channel
    k = [torch.ones(2, 1, 3, 3)]
    assert float(match_distance(k, [-torch.ones(2, 1, 3, 3)])) == pytest.approx(4.0, abs=1e-5)


def test_poisoning_stamps_a_white_corner_on_the_portion_and_relabels_it():
    x, y, _, _ = _digits()
    cfg = BackdoorConfig(name="naive", portion=0.05, size=2, target=3)
    p = poison(x, y, cfg, seed=7)
    assert len(p.rows) == round(0.05 * len(y))
    assert (p.y[p.rows] == 3).all()
    others = torch.ones(len(y), dtype=torch.bool)
    others[p.rows] = False
    assert torch.equal(p.x[others], x[others]) and torch.equal(p.y[others], y[others])
    # the bottom-right 2x2 of an 8x8 image: pixels 54, 55, 62, 63, each at its brightest
    assert p.trigger.index.tolist() == [54, 55, 62, 63]
    assert torch.equal(
        p.x[p.rows][:, p.trigger.index], x[:, p.trigger.index].max(0).values.expand(len(p.rows), 4)
    )
    rest = [i for i in range(64) if i not in (54, 55, 62, 63)]
    assert torch.equal(p.x[p.rows][:, rest], x[p.rows][:, rest])
    assert torch.equal(poison(x, y, cfg, seed=7).rows, p.rows)  # the seed decides
    assert not torch.equal(poison(x, y, cfg, seed=8).rows, p.rows)


def test_attack_success_rate_counts_non_target_images_classified_as_the_target():
    x = torch.zeros(6, 4)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    trigger = Trigger(torch.tensor([3]), torch.tensor([1.0]), 1, torch.zeros(4))

    class Says(torch.nn.Module):
        def __init__(self, label):
            super().__init__()
            self.label = label

        def forward(self, x):
            out = torch.zeros(len(x), 3)
            out[:, self.label] = 1
            return out

    assert attack_success_rate(Says(1), x, y, trigger) == 1.0  # 4 of 4 (the two 1s left out)
    assert attack_success_rate(Says(0), x, y, trigger) == 0.0


def test_doorping_raises_the_top_neurons_toward_alpha_and_moves_only_the_trigger():
    x, y, _, _ = _digits()
    cfg = BackdoorConfig(
        name="doorping",
        portion=0.02,
        size=2,
        topk=2,
        alpha=3.0,
        trigger_steps=300,
        trigger_loss=1e-4,
    )
    p = poison(x, y, cfg, seed=1)
    spec = ModelSpec("mlp", 64, 10, (32,))
    # a network whose top neurons are live on the trigger image: search seeds for one
    for seed in range(50):
        net = build_model(spec, seed)
        with torch.no_grad():
            img = p.trigger.stamp(p.trigger.blank.unsqueeze(0))
            before = forward_layers(net, img)[1][-1][0]
        from trainers.condense.backdoor import _outgoing

        units = torch.topk(_outgoing(net, -1, len(before)), 2).indices
        if (before[units] > 0.05).all():
            break
    else:
        pytest.fail("no network with live top neurons")
    weights = [q.clone() for q in net.parameters()]
    old_pattern = p.trigger.pattern.clone()
    loss, steps = update_trigger(net, p, cfg)
    with torch.no_grad():
        after = forward_layers(net, p.trigger.stamp(p.trigger.blank.unsqueeze(0)))[1][-1][0]
    first_loss = float(((before[units] * (1 - cfg.alpha)) ** 2).mean())
    assert loss < first_loss and steps > 1
    assert (after[units] > before[units]).all()  # pushed up, toward 3x
    assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters()))  # weights kept
    assert not torch.equal(p.trigger.pattern, old_pattern)
    # the poisoned images carry the new trigger
    assert torch.equal(p.x[p.rows][:, p.trigger.index], p.trigger.pattern.expand(len(p.rows), 4))


@pytest.mark.parametrize("method", ["gm", "dm"])
def test_distillation_beats_its_random_real_start(method):
    """ipc 10 of digits from random real images: the distilled set trains networks better
    than the real images it started from (a random real subset of the same size)."""
    x, y, xt, yt = _digits()
    spec = ModelSpec("mlp", 64, 10, (64,))
    iterations = 12 if method == "gm" else 150
    cfg = CondenseConfig(
        method=method,
        ipc=10,
        iterations=iterations,
        eval_epochs=150,
        outer_loop=5 if method == "gm" else None,
        inner_loop=5 if method == "gm" else None,
    )
    d = Distiller(cfg, spec, x, y, 10, seed=0)
    syn = d.start()
    seeds = [11, 12, 13]
    start = np.mean(d.evaluate(syn, xt, yt, seeds)[0])
    d.run(syn, iterations)
    end = np.mean(d.evaluate(syn, xt, yt, seeds)[0])
    assert syn.iteration == iterations and len(syn.losses) == iterations
    assert end > start + 0.01, (start, end)


def test_a_distillation_resumed_from_its_state_is_the_same():
    x, y, _, _ = _digits()
    spec = ModelSpec("mlp", 64, 10, (32,))
    cfg = CondenseConfig(method="dm", ipc=2, iterations=6)
    bd = BackdoorConfig(name="doorping", portion=0.02, trigger_steps=20)
    whole = Distiller(cfg, spec, x, y, 10, 3, bd)
    a = whole.start()
    whole.run(a, 6)
    first = Distiller(cfg, spec, x, y, 10, 3, bd)
    b = first.start()
    first.run(b, 3)
    again = Distiller(cfg, spec, x, y, 10, 3, bd)  # a new process: only the state carries over
    again.restore(b)
    again.run(b, 3)
    assert torch.equal(a.x, b.x) and torch.equal(a.pattern, b.pattern)


def test_train_fresh_learns_the_real_data():
    x, y, xt, yt = _digits()
    net = train_fresh(ModelSpec("mlp", 64, 10, (32,)), x, y, seed=0, epochs=20, lr=0.05)
    with torch.no_grad():
        assert float((net(xt).argmax(1) == yt).float().mean()) > 0.9


def _run(config: str, tracking_uri: str, *overrides: str):
    import orchestrator

    return orchestrator.run(
        CONFIGS / config, [f"tracking.uri={tracking_uri}", "runtime.executor=local", *overrides]
    )


def test_condense_run_logs_its_set_its_figures_and_its_baselines(workdir, tracking_uri):
    result = _run(
        "condense_digits.yaml",
        tracking_uri,
        "trainer.condense.iterations=4",
        "trainer.condense.eval_every=2",
        "trainer.condense.eval_epochs=20",
        "trainer.condense.ipc=3",
        "trainer.backdoor.name=naive",
        "trainer.backdoor.portion=0.05",
    )
    assert [h["iteration"] for h in result.history] == [2.0, 4.0]
    last = result.history[-1]
    for key in ("test_accuracy", "asr", "random_accuracy", "full_accuracy", "synthetic_bytes"):
        assert 0 <= last[key] and not math.isnan(last[key]), key
    assert last["synthetic_bytes"] == synthetic_bytes(30, 64) == 30 * 65 * 4
    assert last["accuracy_per_kb"] == pytest.approx(last["test_accuracy"] / (30 * 65 * 4 / 1024))
    assert last["full_accuracy"] > last["random_accuracy"]
    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.metrics["asr"] == last["asr"]
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"synthetic.png", "condensation.png", "trigger.png", "tables"} <= names
    tables = {a.path for a in client.list_artifacts(result.run_id, "tables")}
    assert {"tables/synthetic.parquet", "tables/trigger.parquet"} <= tables
    import pyarrow.parquet as pq

    path = client.download_artifacts(result.run_id, "tables/synthetic.parquet", str(workdir))
    synthetic = pq.read_table(path).to_pylist()
    assert len(synthetic) == 30 and sorted({r["label"] for r in synthetic}) == list(range(10))
    assert all(len(r["pixels"]) == 64 for r in synthetic)


def test_fed_condense_counts_uploads_marks_byzantine_parties_and_filters(workdir, tracking_uri):
    result = _run(
        "fed_condense_digits.yaml",
        tracking_uri,
        "trainer.condense.iterations=20",
        "trainer.condense.eval_epochs=40",
        "trainer.condense.eval_models=1",
    )
    (row,) = result.history
    assert row["byzantine_parties"] == 2  # 0.2 of 10
    import pyarrow.parquet as pq

    client = MlflowClient(tracking_uri)
    path = client.download_artifacts(result.run_id, "tables/uploads.parquet", str(workdir))
    uploads = pq.read_table(path).to_pylist()
    assert sum(u["byzantine"] for u in uploads) == 2
    assert row["bytes_communicated"] == sum(u["bytes"] for u in uploads)
    assert all(u["bytes"] == synthetic_bytes(u["samples"], 64) for u in uploads)
    assert 0 < row["filtered_samples"] < row["synthetic_samples"] + row["filtered_samples"]
    assert not math.isnan(row["asr"])


@pytest.mark.parametrize(
    ("config", "overrides", "key", "fragment"),
    [
        (
            "quickstart.yaml",
            ["trainer.attack.name=backdoor", "trainer.attack.fraction=0.2"],
            "trainer.attack.name",
            "planted through dataset distillation",
        ),
        (
            "fed_condense_digits.yaml",
            ["trainer.attack.name=gaussian"],
            "trainer.attack.name",
            "set attack.name=backdoor",
        ),
        (
            "fed_condense_digits.yaml",
            ["trainer.attack.name=none", "trainer.attack.fraction=0"],
            "trainer.attack.name",
            "planted by Byzantine parties",
        ),
        (
            "condense_digits.yaml",
            ["trainer.backdoor.name=doorping", "model.name=logreg"],
            "trainer.backdoor.name",
            "hidden layer",
        ),
        (
            "condense_digits.yaml",
            ["trainer.condense.defense=loss_filter"],
            "trainer.condense.defense",
            "fed_condense",
        ),
        ("condense_digits.yaml", ["trainer.rounds=3"], "trainer.rounds", "trainer.condense"),
    ],
)
def test_bad_settings_are_refused_in_one_line(config, overrides, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / config, overrides)
    assert info.value.key == key and fragment in info.value.problem
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        (
            ["trainer.backdoor.name=doorping", "trainer.backdoor.layer=-3"],
            "trainer.backdoor.layer",
            "1 hidden representation",
        ),
        (
            ["trainer.backdoor.name=naive", "data.name=breast_cancer", "model.name=mlp"],
            "trainer.backdoor.name",
            "square images",
        ),
        (
            ["trainer.backdoor.name=naive", "trainer.backdoor.target=12"],
            "trainer.backdoor.target",
            "below 10",
        ),
    ],
)
def test_bad_data_for_a_backdoor_is_refused_before_the_run(overrides, key, fragment, tracking_uri):
    from orchestrator.runner import RunFailed

    with pytest.raises((ConfigError, RunFailed)) as info:
        _run("condense_digits.yaml", tracking_uri, "trainer.condense.iterations=1", *overrides)
    assert isinstance(info.value, ConfigError), info.value
    assert info.value.key == key and fragment in info.value.problem
    assert (
        MlflowClient(tracking_uri).search_runs(
            [e.experiment_id for e in MlflowClient(tracking_uri).search_experiments()]
        )
        == []
    )


def test_a_clipped_doorping_trigger_stays_within_the_datas_range():
    x, y, _, _ = _digits()
    cfg = BackdoorConfig(name="doorping", portion=0.02, topk=3, alpha=10.0, clip=True)
    p = poison(x, y, cfg, seed=1)
    p.trigger.pattern = (p.trigger.white + p.trigger.blank[p.trigger.index]) / 2  # room both ways
    for seed in range(5):
        update_trigger(build_model(ModelSpec("mlp", 64, 10, (32,)), seed), p, cfg)
    black = p.trigger.blank[p.trigger.index]
    assert (p.trigger.pattern <= p.trigger.white + 1e-6).all()
    assert (p.trigger.pattern >= black - 1e-6).all()


@pytest.mark.parametrize("side", [8, 16])
def test_the_convnet_reads_any_square_side_divisible_by_4_and_distils(side):
    spec = ModelSpec("convnet", side * side, 3, channels=(8, 16))
    net = build_model(spec, 0)
    x = torch.randn(5, side * side)
    logits, feats, _ = forward_layers(net, x)
    assert logits.shape == (5, 3)
    assert [f.shape[1] for f in feats] == [8 * (side // 2) ** 2, 16 * (side // 4) ** 2]
    assert not list(net.buffers())  # parameters only: the whole state is one flat vector
    y = torch.arange(30) % 3
    d = Distiller(
        CondenseConfig(ipc=2, iterations=2, outer_loop=2, inner_loop=1),
        spec,
        torch.randn(30, side * side),
        y,
        3,
        seed=0,
    )
    syn = d.start()
    before = syn.x.clone()
    d.run(syn, 2)
    assert not torch.equal(before, syn.x)


@pytest.mark.parametrize("space", ["doorping_attack", "condense"])
def test_the_shipped_searches_run_and_leave_their_pareto_set_in_the_parent_run(space, tracking_uri):
    from clusters import InProcessTaskRunner
    from orchestrator.sweeps import sweep

    smoke = [
        f"tracking.uri={tracking_uri}",
        "runtime.executor=local",
        "trainer.condense.method=dm",
        "trainer.condense.iterations=4",
        "trainer.condense.eval_every=4",
        "trainer.condense.eval_epochs=5",
        "trainer.condense.eval_models=1",
        "trainer.backdoor.trigger_steps=5",
        "model.hidden=[16,8]",
    ]
    result = sweep(
        CONFIGS / "condense_digits.yaml",
        CONFIGS.parent / "search_spaces" / f"{space}.yaml",
        smoke,
        trials=3,
        runner=InProcessTaskRunner(),
        study=space,
    )
    assert result.n_complete == 3 and isinstance(result.best, list) and result.best
    client = MlflowClient(tracking_uri)
    names = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert "pareto.parquet" in names, names
