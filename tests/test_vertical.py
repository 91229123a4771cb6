"""Vertical FL: feature splits, the split-learning messages, attacks, defenses, FedHSSL."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

import orchestrator
from clusters import InProcessExecutor, InProcessTaskRunner
from orchestrator.config import load_config
from orchestrator.data import prepare
from orchestrator.errors import ConfigError
from orchestrator.sweeps import sweep
from search_spaces import load_space, parse_space
from trainers.vertical import attacks
from trainers.vertical.data import VerticalData
from trainers.vertical.defenses import build_defense
from trainers.vertical.fedhssl import augment

from .conftest import CONFIGS, REPO, with_values


def vcfg(**extra: object) -> dict:
    """A small vertical experiment: breast_cancer, malignant = 1, two parties, VLR."""
    cfg: dict = {
        "seed": 0,
        "data": {"name": "breast_cancer", "positive": [0]},
        "partition": {"name": "vertical", "num_parties": 2},
        "model": {"name": "mlp", "hidden": [16]},
        "trainer": {
            "name": "vlr",
            "rounds": 5,
            "batch_size": 128,
            "optimizer": "adam",
            "lr": 0.01,
            "vfl": {"attack": {"mc_epochs": 50, "mi_steps": 50}},
        },
        "runtime": {"executor": "local"},
        "tracking": {"enabled": False},
    }
    return with_values(cfg, **extra)


# ---------------------------------------------------------------- data


def test_digits_image_split_gives_left_and_right_halves():
    cfg = load_config(
        vcfg(data={"name": "digits", "positive": [0]}, partition__vertical={"split": "image"})
    )
    data = prepare(cfg).data
    assert isinstance(data, VerticalData)
    left, right = data.columns
    assert sorted(left % 8) == sorted([0, 1, 2, 3] * 8)
    assert sorted(right % 8) == sorted([4, 5, 6, 7] * 8)
    assert data.n_classes == 2 and set(np.unique(data.y_train)) == {0, 1}


def test_alignment_and_what_each_party_holds():
    cfg = load_config(vcfg(partition__vertical={"aligned": 0.25, "split": "random"}))
    data = prepare(cfg).data
    n = len(data.y_train)
    assert len(data.aligned) == round(0.25 * n)
    everything = np.concatenate([data.aligned, *data.local])
    assert sorted(everything) == list(range(n))  # aligned and unaligned rows are disjoint
    assert sorted(np.concatenate(data.columns)) == list(range(30))
    active, passive = data.party(0), data.party(1)
    assert active.y_aligned is not None and passive.y_aligned is None
    assert passive.x_aligned.shape == (len(data.aligned), len(data.columns[1]))
    np.testing.assert_array_equal(
        passive.x_local, data.x_train[np.ix_(data.local[1], data.columns[1])]
    )


@pytest.mark.parametrize("source", ["wine", "synthetic", "parquet"])
def test_every_data_source_splits_vertically(source, tmp_path):
    data_cfg: dict = {"name": source}
    if source == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rng = np.random.default_rng(0)
        x = rng.normal(size=(120, 5))
        table = {f"f{i}": x[:, i] for i in range(5)}
        table["label"] = (x[:, 0] + x[:, 4] > 0).astype(np.int64)
        pq.write_table(pa.table(table), tmp_path / "d.parquet")
        data_cfg["path"] = str(tmp_path / "d.parquet")
    cfg = load_config(vcfg(data=data_cfg, partition={"name": "vertical", "num_parties": 3}))
    data = prepare(cfg).data
    assert data.n_parties == 3
    assert sorted(np.concatenate(data.columns)) == list(range(data.n_features))
    result = orchestrator.run(
        vcfg(
            data=data_cfg,
            trainer__rounds=30,
            trainer__lr=0.05,
            trainer__vfl__attack={"names": ["dli"]},
        )
    )
    assert result.metrics["test_accuracy"] > 0.55  # chance: 0.25 (synthetic), 1/3 (wine)
    assert len(result.history) == 30


def test_column_lists_and_their_errors():
    cols = [["mean_radius", "mean_texture"], ["worst_area"]]
    cfg = load_config(vcfg(partition__vertical={"split": "columns", "columns": cols}))
    data = prepare(cfg).data
    assert [len(c) for c in data.columns] == [2, 1]
    bad = [["mean_radius"], ["nope"]]
    with pytest.raises(ConfigError, match=r"columns\[1\].*nope"):
        prepare(load_config(vcfg(partition__vertical={"split": "columns", "columns": bad})))
    twice = [["mean_radius"], ["mean_radius"]]
    with pytest.raises(ConfigError, match="two parties"):
        prepare(load_config(vcfg(partition__vertical={"split": "columns", "columns": twice})))


def test_vertical_config_errors():
    with pytest.raises(ConfigError, match="partition.name=vertical"):
        load_config(vcfg(partition={"name": "iid"}))
    with pytest.raises(ConfigError, match="not a vertical trainer"):
        load_config(vcfg(trainer={"name": "fedavg"}))
    with pytest.raises(ConfigError, match=r"names\[1\]: unknown name 'xx'; valid: dli"):
        load_config(vcfg(trainer__vfl__attack={"names": ["ns", "xx"]}))
    with pytest.raises(ConfigError, match="trainer.vfl.defense.name"):
        load_config(vcfg(trainer__vfl__defense={"name": "magic"}))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(vcfg(trainer__vfl__attack={"attacker": 2}))


def test_binary_only_defense_on_ten_classes_is_a_config_error(workdir):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            str(CONFIGS / "vfl_digits.yaml"),
            "data.positive=null",
            "trainer.vfl.defense.name=marvell",
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith("config error: trainer.vfl.defense.name: marvell needs binary labels")
    )
    assert not (workdir / "mlflow.db").exists() or "Traceback" not in out.stderr


# ---------------------------------------------------------------- defenses


def grad_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.tensor([0, 1, 0, 0, 1, 0, 1, 0])
    g = torch.randn(8, 4, generator=gen) * 1e-3 + y[:, None] * 2e-3
    return g, y


def test_sparsify_zeroes_the_smallest_share():
    g, y = grad_batch()
    out = build_defense("sparsify", 0.75, 2, 0).gradient(g, y, torch.Generator())
    kept = out != 0
    assert int(kept.sum()) == 8  # 25% of 32 entries
    assert g.abs()[kept].min() >= g.abs()[~kept].max()


def test_discrete_clips_and_rounds_to_the_grid():
    g = torch.tensor([[-5e-3, -4e-4, 1e-5, 7e-4, 3e-3]])
    out = build_defense("discrete", 4, 2, 0, bound=1e-3).gradient(g, None, torch.Generator())
    np.testing.assert_allclose(out.numpy(), [[-1e-3, -5e-4, 0.0, 5e-4, 1e-3]], atol=1e-9)


def test_max_norm_leaves_the_largest_row_alone_and_scales_rows():
    g, y = grad_batch()
    out = build_defense("max_norm", None, 2, 0).gradient(g, y, torch.Generator().manual_seed(1))
    top = int(g.norm(dim=1).argmax())
    torch.testing.assert_close(out[top], g[top])
    ratio = out / g  # every row is multiplied by one scalar
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)


def test_marvell_noise_lies_along_the_class_mean_difference():
    g, y = grad_batch()
    out = build_defense("marvell", 4.0, 2, 0).gradient(g, y, torch.Generator().manual_seed(1))
    diff = g[y == 1].mean(0) - g[y == 0].mean(0)
    noise = out - g
    assert noise.abs().max() > 0
    cos = F.cosine_similarity(noise, diff.expand_as(noise), dim=1).abs()
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-4)


def test_gaussian_and_laplace_noise_scale_with_strength():
    g, y = grad_batch()
    spread = []
    for strength in (1.0, 10.0):
        out = build_defense("gaussian", strength, 2, 0).gradient(
            g, y, torch.Generator().manual_seed(3)
        )
        spread.append(float((out - g).std()))
    assert spread[1] == pytest.approx(10 * spread[0], rel=1e-4)
    expected = g.norm(dim=1).max() / 2  # ratio * max ||g_i|| / sqrt(4)
    assert spread[0] == pytest.approx(float(expected), rel=0.5)
    lap = build_defense("laplace", 0.1, 2, 0).gradient(
        torch.zeros(200, 50), None, torch.Generator().manual_seed(0)
    )
    assert float(lap.abs().mean()) == pytest.approx(0.1, rel=0.05)  # E|Laplace(0, b)| = b


def test_label_autoencoder_confuses_but_decodes():
    cae = build_defense("cae", 1.0, 2, 0)
    y = torch.tensor([0, 1])
    soft = cae.targets(y)
    assert torch.equal(cae.decode(soft).argmax(1), y)
    assert float(soft[torch.arange(2), y].mean()) < 0.5  # the true class is not the top one


def test_negative_loss_penalty():
    nl = build_defense("negative_loss", 20.0, 2, 0)
    logits, y = torch.tensor([[2.0, -1.0], [0.0, 1.0]]), torch.tensor([0, 1])
    assert float(nl.penalty({1: logits}, y)) == pytest.approx(
        20 / float(F.cross_entropy(logits, y))
    )


# ---------------------------------------------------------------- attacks


def test_label_attacks_on_hand_made_gradients():
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 1, 0, 1, 0, 0, 1])
    p1 = np.where(y == 1, 0.6, 0.1)  # the rarer positives are fitted worse: larger errors
    probs = np.stack([1 - p1, p1], axis=1)
    grad = (probs - np.eye(2)[y]) / len(y)  # softmax cross-entropy's d loss / d logits
    assert attacks.label_scores("dli", grad, y, rng, None) == 1.0
    assert attacks.label_scores("ns", grad, y, rng, None) == 1.0
    assert attacks.label_scores("ds", grad, y, rng, None) == 1.0
    x = rng.normal(size=(8, 12))  # more features than samples: residues are recoverable
    assert attacks.label_scores("rr", grad, y, rng, x) == 1.0
    assert attacks.label_scores("ns", grad, np.zeros(8, dtype=int), rng, None) is None


def test_defense_score_and_f_beta():
    assert attacks.defense_score([0.5, 1.0, 0.0]) == pytest.approx((0.5 + 0 + 0) / 3)
    assert attacks.f_beta(0.5, 1.0) == pytest.approx(5 * 0.5 / (4 * 0.5 + 1))
    assert attacks.f_beta(0.0, 0.0) == 0.0


# ---------------------------------------------------------------- split learning


def test_vlr_gradient_message_is_the_softmax_residue():
    """The active party's gradient to the passive party is (softmax(z) - onehot(y)) / B for
    the summed logits z, computed here independently of the trainer."""
    from trainers.models import ModelSpec
    from trainers.vertical.defenses import build_defense
    from trainers.vertical.split import (
        ActiveModels,
        ActiveParty,
        ActivePayload,
        Embedding,
        Optim,
    )

    cfg = load_config(vcfg())
    data = prepare(cfg).data
    ex = InProcessExecutor()
    ex.load({0: data.party(0)})
    own = ModelSpec("logreg", len(data.columns[0]), 2)
    defense = build_defense("none", None, 2, 0)
    fn = ActiveParty(ActiveModels(own, None, (1,)), 0, Optim("sgd", 1e-9, 0.0, 0.0), defense)
    rows = np.arange(16)
    e = np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32)
    reply = ex.map(fn, [0], ActivePayload(rows, {1: Embedding(1, e)}))[0]
    from trainers.base import derive_seed
    from trainers.models import build_model

    model = build_model(own, derive_seed(0, 31, 0))
    with torch.no_grad():
        z = model(torch.from_numpy(data.party(0).x_aligned[rows])) + torch.from_numpy(e)
        y = torch.from_numpy(data.party(0).y_aligned[rows])
        expected = (F.softmax(z, 1) - F.one_hot(y, 2)) / 16
    np.testing.assert_allclose(reply.gradients[1].values, expected.numpy(), atol=1e-6)


def test_undefended_vlr_leaks_labels_and_noise_protects_them():
    plain = orchestrator.run(vcfg()).metrics
    assert plain["utility"] > 0.95
    assert plain["dli_auc95"] == 1.0 and plain["ds_auc95"] > 0.95
    assert 0.5 < plain["mc_accuracy"] <= 1.0 and plain["mi_mse"] > 0
    noised = orchestrator.run(
        vcfg(trainer__vfl__defense={"name": "gaussian", "strength": 25.0})
    ).metrics
    assert noised["ds_auc95"] < plain["ds_auc95"] - 0.2
    assert noised["dli_auc95"] < 0.9
    assert noised["defense_score"] > plain["defense_score"]
    assert "utility_loss" in noised and abs(noised["utility_loss"]) < 0.2


@pytest.mark.parametrize("name", ["vhnn", "vsnn"])
def test_neural_split_learning_trains_and_skips_what_does_not_apply(name, tracking_uri):
    result = orchestrator.run(
        vcfg(trainer__name=name, tracking={"uri": tracking_uri, "model_format": "pickle"})
    )
    assert result.metrics["utility"] > 0.9
    client = MlflowClient(tracking_uri)
    table = client.download_artifacts(result.run_id, "tables/vfl_attacks.parquet")
    import pyarrow.parquet as pq

    rows = pq.read_table(table).to_pylist()
    skipped = {r["attack"]: r["reason"] for r in rows if not r["applies"]}
    if name == "vhnn":
        assert "dli" in skipped and "logit" in skipped["dli"]
    assert skipped.get("rr") == "vlr only"
    arts = {a.path for a in client.list_artifacts(result.run_id)}
    assert "privacy_curve.png" in arts
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(result.model_uri)
    data = prepare(load_config(vcfg(trainer__name=name))).data
    acc = (model(torch.from_numpy(data.x_test)).argmax(1).numpy() == data.y_test).mean()
    assert acc == pytest.approx(result.metrics["test_accuracy"])


@pytest.mark.ray
def test_split_learning_on_ray_matches_in_process(ray_session):
    from clusters import RayExecutor

    local = orchestrator.run(vcfg(trainer__name="vhnn")).history
    with RayExecutor(num_workers=2) as ex:
        remote = orchestrator.run(vcfg(trainer__name="vhnn"), executor=ex).history

    def comparable(history):  # NaN (an attack that does not apply) != NaN: compare as None
        return [
            {k: None if v != v else v for k, v in h.items() if k != "round_time_s"} for h in history
        ]

    assert comparable(local) == comparable(remote)


# ---------------------------------------------------------------- FedHSSL


def test_tabular_augmentation_replaces_the_given_share():
    x = torch.zeros(5, 10)
    low, high = torch.full((10,), 1.0), torch.full((10,), 2.0)
    out = augment(x, low, high, 0.3, torch.Generator().manual_seed(0))
    changed = out != 0
    assert changed.sum(1).tolist() == [3] * 5
    assert float(out[changed].min()) >= 1.0 and float(out[changed].max()) <= 2.0


def hssl(name: str, **extra: object) -> dict:
    return vcfg(
        data={"name": "digits"},
        partition__vertical={"split": "image", "aligned": 0.2},
        trainer={
            "name": name,
            "ssl": {"pretrain_epochs": 2, "finetune_epochs": 3, "labels": 100},
            "vfl": {"attack": {"mc_epochs": 20}},
        },
        **extra,
    )


def test_fedhssl_aggregates_the_local_tops_only():
    from trainers.vertical import fedhssl

    seen = {}

    class Spy(InProcessExecutor):
        def map(self, fn, party_ids, payload=None, reduce=None):
            out = super().map(fn, party_ids, payload, reduce)
            if getattr(payload, "step", None) is fedhssl.Step.SET_SHARED:
                nets = [self._host._live[p].get(fedhssl.PretrainState).nets for p in party_ids]
                seen["top"] = [n.local_top[0].weight.detach().clone() for n in nets]
                seen["bottom"] = [n.local_bottom[0].weight.detach().clone() for n in nets]
            return out

    result = orchestrator.run(hssl("fedhssl"), executor=Spy())
    torch.testing.assert_close(seen["top"][0], seen["top"][1])
    assert seen["bottom"][0].shape == seen["bottom"][1].shape
    assert not torch.equal(seen["bottom"][0], seen["bottom"][1])
    assert result.metrics["test_accuracy"] > 0.5
    assert 0 < result.metrics["mc_accuracy"] <= 1
    history = result.history
    assert "ssl_cross_loss" in history[0] and "ssl_local_loss" in history[0]
    assert fedhssl.FedHSSL.metrics[0] == "ssl_cross_loss"


@pytest.mark.parametrize("name", ["fedgssl", "fedcssl", "vfl_supervised"])
def test_fedhssl_baselines_run(name):
    result = orchestrator.run(hssl(name))
    assert result.metrics["test_accuracy"] > 0.5
    pretrain = [h for h in result.history if "ssl_cross_loss" in h]
    assert len(pretrain) == (0 if name == "vfl_supervised" else 2)
    assert all(("ssl_local_loss" in h) == (name == "fedgssl") for h in pretrain)


# ---------------------------------------------------------------- searches


def test_per_condition_distributions_set_one_key():
    space = load_space(REPO / "search_spaces" / "vfl_privacy_utility.yaml")
    from optuna.trial import FixedTrial

    trial = FixedTrial(
        {"trainer.vfl.defense.name": "gaussian", "trainer.vfl.defense.strength@gaussian": 5.0}
    )
    chosen = space.suggest(trial)
    assert space.config_values(chosen) == {
        "trainer.vfl.defense.name": "gaussian",
        "trainer.vfl.defense.strength": 5.0,
    }


def test_privacy_utility_search_logs_the_pareto_front(tracking_uri):
    space = parse_space(
        {
            "objective": [
                {"metric": "utility", "direction": "maximize"},
                {"metric": "label_leakage", "direction": "minimize"},
            ],
            "params": {
                "trainer.vfl.defense.name": {
                    "type": "categorical",
                    "choices": ["none", "gaussian"],
                },
                "trainer.vfl.defense.strength@gaussian": {
                    "type": "categorical",
                    "choices": [25.0],
                    "when": {"trainer.vfl.defense.name": ["gaussian"]},
                },
            },
            "sampler": {"name": "grid"},
        }
    )
    base = load_config(vcfg(tracking={"uri": tracking_uri}, trainer__rounds=3))
    result = sweep(base, space, trials=2, runner=InProcessTaskRunner(), study="pu")
    assert result.n_complete == 2 and isinstance(result.best, list) and result.best
    client = MlflowClient(tracking_uri)
    arts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert "pareto.parquet" in arts
    plots = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert "plots/pareto_front.png" in plots


@pytest.mark.slow
@pytest.mark.parametrize(
    "config", ["vfl_breast_cancer.yaml", "vfl_digits.yaml", "fedhssl_digits.yaml"]
)
def test_shipped_vertical_configs_run(config, workdir):
    overrides = ["tracking.enabled=false", "trainer.vfl.attack.mc_epochs=10"]
    if config.startswith("fedhssl"):  # each family's budget: the other's is refused
        overrides += ["trainer.ssl.pretrain_epochs=2", "trainer.ssl.finetune_epochs=2"]
    else:
        overrides += ["trainer.rounds=2"]
    result = orchestrator.run(CONFIGS / config, overrides)
    assert result.metrics["test_accuracy"] > 0.3


def test_fedhssl_privacy_noise_knobs_change_what_is_exchanged():
    plain = orchestrator.run(hssl("fedhssl"))
    noised = orchestrator.run(
        hssl(
            "fedhssl",
            trainer__ssl={
                "pretrain_epochs": 2,
                "finetune_epochs": 3,
                "labels": 100,
                "feature_noise": 1.0,
                "model_noise": 1.0,
                "finetune_noise": 1.0,
            },
        )
    )
    first = [h["ssl_cross_loss"] for h in plain.history if "ssl_cross_loss" in h]
    other = [h["ssl_cross_loss"] for h in noised.history if "ssl_cross_loss" in h]
    assert first[0] != other[0]  # the exchanged projections were noised from the first batch
    assert noised.metrics["test_accuracy"] != plain.metrics["test_accuracy"]
    assert noised.metrics["test_accuracy"] > 0.3
