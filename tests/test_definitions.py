"""The cluster definitions in clusters/definitions/, for people who run elsewhere: checked
against the schema Ray ships (launcher) and the fields KubeRay requires."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from orchestrator.cli import _parser

from .conftest import REPO

DEFS = REPO / "clusters" / "definitions"
LAUNCHER = ["ray-cluster-local.yaml", "ray-cluster-aws.yaml"]


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEFS / name).read_text()) if d]


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_configs_follow_rays_schema(name):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    (config,) = _docs(name)
    jsonschema.validate(config, schema)
    setup = " ".join(config["setup_commands"])
    assert "torch==2.13.0" in setup and "RAY_AUTH_MODE=token" in setup
    # the token every process names is copied to every node
    token = "~/.ray/fedsweep_token"
    assert f"RAY_AUTH_TOKEN_PATH={token}" in setup and token in config["file_mounts"]
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _check_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["template"]["spec"]["containers"]
    assert spec["workerGroupSpecs"]
    names = set()
    for group in spec["workerGroupSpecs"]:
        for key in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert key in group, key
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        names.add(group["groupName"])
    assert len(names) == len(spec["workerGroupSpecs"])
    for container in _containers(spec):
        assert container["name"] and container["image"]
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token"  # token authentication everywhere
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]


def test_kuberay_raycluster_has_the_fields_kuberay_requires():
    (cluster,) = _docs("kuberay-raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["metadata"]["name"]
    _check_cluster_spec(cluster["spec"])


def test_kuberay_rayjob_runs_a_fedsweep_sweep():
    (job,) = _docs("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    _check_cluster_spec(spec["rayClusterSpec"])
    words = shlex.split(spec["entrypoint"])
    assert words[0] == "fedsweep" and words[1] == "sweep"
    args, extra = _parser().parse_known_args(words[1:])  # the command line parses
    assert (REPO / args.config).is_file() and (REPO / args.space).is_file()
    assert args.storage.startswith("postgresql+psycopg://") and args.address == "auto"
    assert all("=" in e for e in extra)  # the rest are config overrides
    assert spec["shutdownAfterJobFinishes"] is True
    if spec.get("submissionMode", "K8sJobMode") == "K8sJobMode":  # the submitter has the token
        (submitter,) = spec["submitterPodTemplate"]["spec"]["containers"]
        env = {e["name"]: e for e in submitter["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]


def test_the_image_the_manifests_name_is_built_from_this_repository():
    dockerfile = (DEFS / "Dockerfile").read_text()
    base = next(line for line in dockerfile.splitlines() if line.startswith("ARG BASE="))
    (cluster,) = _docs("kuberay-raycluster.yaml")
    assert f"rayproject/ray:{cluster['spec']['rayVersion']}-py311" in base  # the manifests' Ray
    assert "pip install --no-cache-dir -e ." in dockerfile
    for package in ("orchestrator", "trainers", "search_spaces", "clusters", "configs"):
        assert f"COPY --chown=ray:users {package} {package}" in dockerfile
    for name in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        assert "clusters/definitions/Dockerfile" in (DEFS / name).read_text()


def test_mlflow_postgres_deployment_serves_artifacts_on_postgresql():
    docs = _docs("mlflow-postgres.yaml")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("StatefulSet", "postgres"), ("Deployment", "mlflow"), ("Service", "mlflow")} <= kinds
    mlflow = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = mlflow["spec"]["template"]["spec"]["containers"]
    args = " ".join(container["args"])
    assert "--backend-store-uri=postgresql" in args and "--serve-artifacts" in args
    assert "--allowed-hosts=" in args
