"""Distillation: the recipe's losses, sequential stages, teachers from MLflow and lineage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clusters import InProcessExecutor, InProcessTaskRunner
from orchestrator import ConfigError
from orchestrator.config import load_config
from orchestrator.data import prepare
from orchestrator.runner import run
from orchestrator.sweeps import sweep
from search_spaces import parse_space
from trainers import TRAINERS
from trainers.distill import _relation_maps
from trainers.models import ModelSpec, build_model, forward_layers

from .conftest import Sink, tiny

VIT = {"name": "vit", "dim": 16, "depth": 2, "heads": 2, "patch": 2}


def distill_cfg(**distill) -> dict:
    teacher = {"source": "train", "model": VIT, "epochs": 2, **distill.pop("teacher", {})}
    return tiny(
        partition={"name": "iid", "num_parties": 1},
        model={**VIT, "dim": 8, "depth": 1},
        trainer={"name": "distill", "distill": {"epochs": 2, "teacher": teacher, **distill}},
    )


def fit(cfg_dict, teacher=None):
    cfg = load_config(cfg_dict)
    trainer = TRAINERS.get("distill")(cfg.trainer, cfg.model)
    trainer.teacher = teacher
    return trainer, trainer.fit(prepare(cfg).data, InProcessExecutor(), Sink(), cfg.seed)


def test_vit_exposes_blocks_and_relation_maps():
    model = build_model(ModelSpec("vit", 64, 10, **{k: VIT[k] for k in VIT if k != "name"}), 0)
    logits, outs, qkvs = forward_layers(model, torch.zeros(3, 64))
    assert logits.shape == (3, 10) and len(outs) == 2 and outs[0].shape == (3, 17, 16)
    qk, vv = _relation_maps(qkvs[-1])
    assert qk.shape == (3, 2, 17, 17)  # per head, over all 16 patch tokens and the CLS token
    np.testing.assert_allclose(qk.exp().sum(-1).detach().numpy(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("target", ["logits", "features", "relations"])
def test_a_student_distilled_from_itself_has_zero_distillation_loss(target):
    cfg = distill_cfg(target=target, label_weight=0.0, epochs=1, lr=1e-9)
    cfg["model"] = {**VIT}  # the student has the teacher's architecture...
    spec = ModelSpec("vit", 64, 10, **{k: VIT[k] for k in VIT if k != "name"})
    from trainers.base import derive_seed
    from trainers.distill import _STUDENT_STREAM

    teacher = build_model(spec, seed=derive_seed(0, _STUDENT_STREAM, 0))  # ...and its weights
    _, result = fit(cfg, teacher=teacher)
    assert result.history[0]["distill_loss"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("recipe", "student"),
    [
        ({"target": "logits", "temperature": 2.0}, {}),
        ({"target": "features", "feature_loss": "cosine"}, {}),  # widths differ: a projection
        ({"target": "features", "feature_loss": "smooth_l1", "teacher_layer": 0}, {}),
        ({"target": "relations", "relations": "qk"}, {"heads": 1}),  # head-averaged maps
        ({"target": "relations"}, {"name": "mlp", "hidden": [16]}),  # sample relations
    ],
)
def test_every_recipe_trains_the_student(recipe, student):
    cfg = distill_cfg(**recipe, epochs=4, lr=0.01, label_weight=0.0)  # the target alone
    cfg["model"] = {**cfg["model"], **student}
    _, result = fit(cfg)
    first, last = result.history[0], result.history[-1]
    assert last["distill_loss"] < first["distill_loss"]
    assert last["student_params"] == sum(p.numel() for p in result.model.parameters())
    assert last["latency_ms"] > 0


def test_sequential_distillation_goes_through_the_assistant():
    assistant = {**VIT, "dim": 12}
    _, result = fit(distill_cfg(assistant=assistant, epochs=2))
    assert [h["stage"] for h in result.history] == [0.0, 0.0, 1.0, 1.0]
    assert [s["params"] for s in result.tables["stages"]] == [
        result.history[0]["student_params"],
        result.history[-1]["student_params"],
    ]


def test_token_relations_need_matching_tokens():
    cfg = distill_cfg(target="relations")
    cfg["model"] = {**cfg["model"], "patch": 4}
    with pytest.raises(ConfigError, match="model.patch: relations between vits need as many"):
        load_config(cfg)
    teacher = build_model(ModelSpec("vit", 64, 10, **{k: VIT[k] for k in VIT if k != "name"}), 0)
    cfg["trainer"]["distill"]["teacher"] = {"source": "mlflow", "uri": "run:x"}
    with pytest.raises(ValueError, match="as many tokens"):  # a loaded teacher: found at run time
        fit(cfg, teacher=teacher)


def test_federated_teacher_from_its_run_distils_on_a_proxy_split(tracking_uri):
    from mlflow import MlflowClient

    teacher_run = run(
        tiny(
            model={"name": "mlp", "hidden": [32]},
            trainer={"name": "fedavg", "rounds": 3},
            tracking={"enabled": True, "uri": tracking_uri, "model_format": "pickle"},
        )
    )
    cfg = distill_cfg(
        teacher={"source": "mlflow", "uri": f"run:{teacher_run.run_id}"},
        target="logits",
        proxy_fraction=0.5,
    )
    cfg["model"] = {"name": "mlp", "hidden": [8]}
    cfg["tracking"] = {"enabled": True, "uri": tracking_uri, "log_model": False}
    result = run(cfg)
    tags = MlflowClient(tracking_uri).get_run(result.run_id).data.tags
    assert tags["lineage.teacher_run_id"] == teacher_run.run_id
    assert tags["lineage.teacher_uri"] == f"run:{teacher_run.run_id}"
    # the teacher's accuracy is measured on the half of the held-out split not distilled on
    assert 0.2 < result.metrics["teacher_accuracy"] <= 1.0


def test_bad_teacher_references_are_config_errors(tracking_uri):
    with pytest.raises(ConfigError, match="trainer.distill.teacher.uri: required"):
        load_config(distill_cfg(teacher={"source": "mlflow"}))
    cfg = distill_cfg(teacher={"source": "mlflow", "uri": "run:0123456789abcdef"})
    cfg["tracking"] = {"enabled": True, "uri": tracking_uri}
    with pytest.raises(ConfigError, match="trainer.distill.teacher.uri: run:0123456789abcdef"):
        run(cfg)
    with pytest.raises(ConfigError, match="model.dim: must be divisible by heads"):
        load_config(distill_cfg(), ["model.dim=10", "model.heads=4"])


def test_registered_students_carry_their_teachers_lineage(tracking_uri):
    from mlflow import MlflowClient

    teacher_run = run(
        tiny(
            model={**VIT},
            partition={"name": "iid", "num_parties": 1},
            trainer={"name": "centralized", "rounds": 2, "optimizer": "adam", "lr": 1e-3},
            tracking={"enabled": True, "uri": tracking_uri, "model_format": "checkpoint"},
        )
    )
    base = distill_cfg(teacher={"source": "mlflow", "uri": f"run:{teacher_run.run_id}"})
    base["tracking"] = {"uri": tracking_uri}
    space = parse_space(
        {
            "objective": [
                {"metric": "test_accuracy", "direction": "maximize"},
                {"metric": "student_params", "direction": "minimize"},
            ],
            "params": {"model.dim": {"type": "categorical", "choices": [4, 8]}},
            "sampler": {"name": "grid"},
        }
    )
    result = sweep(base, space, runner=InProcessTaskRunner(), study="kd")
    assert result.n_complete == 2 and result.registered
    client = MlflowClient(tracking_uri)
    for reg in result.registered:
        tags = client.get_model_version(reg["name"], reg["version"]).tags
        assert tags["lineage.teacher_run_id"] == teacher_run.run_id


def test_finetuning_follows_distillation():
    _, result = fit(distill_cfg(epochs=2, finetune_epochs=2, label_weight=0.0))
    assert [h["stage"] for h in result.history] == [0.0, 0.0, 0.5, 0.5]
    assert all(h["label_loss"] > 0 for h in result.history)  # measured even when unweighted
    assert [h["distill_loss"] for h in result.history[2:]] == [0.0, 0.0]


def test_synthetic_images_are_seeded_and_a_cnn_student_learns_them():
    data = {"name": "synthetic_images", "n_samples": 600, "n_classes": 4, "image_noise": 1.0}
    a = prepare(load_config(tiny(data=data))).data
    b = prepare(load_config(tiny(data=data))).data
    assert a.n_features == 64 and a.n_classes == 4
    np.testing.assert_array_equal(a.x_test, b.x_test)
    cfg = distill_cfg(target="features", epochs=6, lr=0.01)
    cfg["data"] = data
    cfg["model"] = {"name": "cnn", "channels": [4, 8]}
    _, result = fit(cfg)
    assert result.history[-1]["test_accuracy"] > 0.5  # chance is 0.25
