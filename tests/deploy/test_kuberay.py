"""KubeRay manifests (deploy/kuberay/) and the Dockerfile: they parse, are current, agree with the project.

No Kubernetes here: the checks are structural (ray.io/v1 kinds, the fields KubeRay acts on), plus Ray's own
Serve schema for ``serveConfigV2`` and the project's config loader for the arguments the cluster runs with.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from ml.config import load_config

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "deploy" / "kuberay"
PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mpic_gen_rayservice", KUBERAY / "gen_rayservice.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _load_generator()


@pytest.fixture(scope="module")
def ray_version() -> str:
    import ray

    return str(ray.__version__)


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((KUBERAY / "rayjob-train.yaml").read_text()))
    assert len(docs) == 1
    return dict(docs[0])


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((KUBERAY / "rayservice.yaml").read_text()))
    assert len(docs) == 1
    return dict(docs[0])


@pytest.fixture(scope="module")
def serve_v2(rayservice: dict[str, Any]) -> dict[str, Any]:
    text = rayservice["spec"]["serveConfigV2"]
    assert isinstance(text, str)  # KubeRay wants the Serve config as a YAML string
    return dict(yaml.safe_load(text))


@pytest.fixture(scope="module")
def serve_yaml() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "serve" / "config.yaml").read_text()))


# ---- shared checks of a RayClusterSpec ---------------------------------------------------------------


def _containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return list(template["spec"]["containers"])


def _gpus(container: dict[str, Any]) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def check_cluster(spec: dict[str, Any], ray_version: str, *, min_gpu_pods: int | None = None) -> None:
    assert spec["rayVersion"] == ray_version
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert str(head["rayStartParams"]["num-cpus"]) == "0"  # no trials or replicas on the head
    (head_c,) = _containers(head["template"])
    assert head_c["image"] == f"mpic:{ray_version}-{PY_TAG}"
    assert _gpus(head_c) == 0
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for name, g in groups.items():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], name
        assert g["maxReplicas"] > g["minReplicas"], f"{name}: no room to autoscale"
        (c,) = _containers(g["template"])
        req, lim = c["resources"]["requests"], c["resources"]["limits"]
        assert req == lim, f"{name}: requests == limits (Ray advertises what the pod may use)"
        if name == "gpu":
            assert _gpus(c) >= 1 and c["image"] == f"mpic:{ray_version}-{PY_TAG}-gpu"
            tolerations = g["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations)
        else:
            assert _gpus(c) == 0 and c["image"] == f"mpic:{ray_version}-{PY_TAG}"
    if min_gpu_pods is not None:
        assert groups["gpu"]["minReplicas"] == min_gpu_pods
    # every pod mounts the shared volume at /shared
    for template in [head["template"], *(g["template"] for g in groups.values())]:
        (c,) = _containers(template)
        assert {"name": "shared", "mountPath": "/shared"} in c["volumeMounts"]
        vols = {v["name"]: v for v in template["spec"]["volumes"]}
        assert vols["shared"]["persistentVolumeClaim"]["claimName"] == "mpic-shared"


# ---- RayJob -------------------------------------------------------------------------------------------


def _entrypoint_commands(entrypoint: str) -> list[list[str]]:
    """The `python -m …` commands of the entrypoint's `bash -c` script (split at &&, ${…} dropped)."""
    words = shlex.split(entrypoint)  # what the submitter pod's shell passes to `ray job submit --`
    assert words[:2] == ["bash", "-c"] and len(words) == 3, "one single-quoted bash -c script"
    out = []
    for part in words[2].split("&&"):
        cmd = shlex.split(re.sub(r"\$\{[^}]*\}", "", part))
        assert cmd[:2] == ["python", "-m"], part
        out.append(cmd)
    return out


def runtime_apt_packages() -> list[str]:
    """The Debian packages of ``make system-deps`` that a Ray node needs (all but the browser for tests)."""
    m = re.search(r"^APT_PACKAGES := (.+)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert m, "Makefile has no APT_PACKAGES"
    return [p for p in m.group(1).split() if p != "chromium"]


def test_rayjob_trains_then_fuses_on_the_shared_volume(
    rayjob: dict[str, Any], gen: ModuleType, ray_version: str
) -> None:
    from ray_jobs import common

    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    train, fuse = _entrypoint_commands(spec["entrypoint"])
    assert train[2] == "ray_jobs.train" and fuse[2] == "ray_jobs.fuse"
    parser = common.add_config_args(argparse.ArgumentParser())
    for cmd in (train, fuse):
        args = parser.parse_args(cmd[3:])
        assert args.profile == gen.PROFILE and args.base_dir == gen.SHARED_DIR
        cfg = common.config_from_args(args)
        # what the RayService serves from is where this job writes
        assert str(cfg.runs_dir) == gen.shared_runs_dir()
        assert str(cfg.data.root).startswith(gen.SHARED_DIR + "/")
    args = parser.parse_args(train[3:])
    cfg = common.config_from_args(args)
    gpu = next(g for g in spec["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    # concurrency is not planned from the one GPU pod present at the start (see the manifest)
    assert cfg.train.max_concurrent_trials == gpu["maxReplicas"] / cfg.train.gpus_per_trial
    check_cluster(spec["rayClusterSpec"], ray_version, min_gpu_pods=1)
    env = {e["name"]: e for e in _containers(spec["rayClusterSpec"]["headGroupSpec"]["template"])[0]["env"]}
    for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "mpic-mlflow" and ref["optional"] is True
        assert f"${{{name}:+--set" in spec["entrypoint"]
    # the script runs in bash on the head: the expansions give `--set key=value` only when the Secret has it
    script = shlex.split(spec["entrypoint"])[2]
    env_set = {"MLFLOW_BACKEND_STORE_URI": "postgresql://u:p w@db/mlflow", "MLFLOW_ARTIFACTS_DESTINATION": ""}
    echo = subprocess.run(
        ["bash", "-c", script.replace("python -m", "printf '%s|' python -m")],
        env={"PATH": os.environ["PATH"], **env_set},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    train_argv, fuse_argv = (c.split("|") for c in echo.split("python|-m|")[1:])
    for argv in (train_argv, fuse_argv):
        assert "mlflow.backend_store_uri=postgresql://u:p w@db/mlflow" in argv
        assert not any(a.startswith("mlflow.artifacts_destination") for a in argv)


# ---- RayService ---------------------------------------------------------------------------------------


def test_rayservice_is_generated_from_serve_config(gen: ModuleType) -> None:
    committed = (KUBERAY / "rayservice.yaml").read_text()
    assert gen.render() == committed, "deploy/kuberay/rayservice.yaml is stale: run `make kuberay`"
    assert committed.startswith("# GENERATED by deploy/kuberay/gen_rayservice.py")


def test_rayservice_cluster(rayservice: dict[str, Any], serve_v2: dict[str, Any], ray_version: str) -> None:
    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    spec = rayservice["spec"]["rayClusterConfig"]
    check_cluster(spec, ray_version, min_gpu_pods=0)  # GPU pods only for GPU replicas
    cpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "cpu")
    assert cpu["minReplicas"] >= 1  # the ingress (CPU only) always has a node: the head has no CPUs
    port = serve_v2["http_options"]["port"]
    templates = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    for t in templates:  # KubeRay routes to / health-checks the container port named "serve"
        (c,) = _containers(t)
        assert {"containerPort": port, "name": "serve"} in c["ports"]
        # `ray start` in every pod runs with config.yml's ray.env (Serve's controller and proxies inherit it)
        assert {e["name"]: e["value"] for e in c["env"]} == load_config().ray.env != {}


def test_serve_config_v2_agrees_with_serve_config(
    serve_v2: dict[str, Any], serve_yaml: dict[str, Any], gen: ModuleType
) -> None:
    from ray.serve.schema import ServeDeploySchema

    from serve.app import AppArgs

    ServeDeploySchema.model_validate(serve_v2)  # Ray's own schema
    # cluster settings: the pod network, not loopback
    assert serve_v2["http_options"]["host"] == "0.0.0.0"
    # everything else as in serve/config.yaml
    for key in ("port", "request_timeout_s"):
        assert serve_v2["http_options"][key] == serve_yaml["http_options"][key]
    assert serve_v2["proxy_location"] == serve_yaml["proxy_location"]
    ours, theirs = serve_v2["applications"], serve_yaml["applications"]
    assert [a["name"] for a in ours] == [a["name"] for a in theirs]
    for a, b in zip(ours, theirs, strict=True):
        for key in ("route_prefix", "import_path", "deployments"):
            assert a.get(key) == b.get(key), key
        extra = {k: v for k, v in a["args"].items() if b["args"].get(k) != v}
        assert set(extra) <= {"profile", "use_gpu", "overrides"}, extra
        assert a["args"]["profile"] == "full" and a["args"]["use_gpu"] is True
        assert a["args"]["overrides"] == [*b["args"].get("overrides", []), *gen.shared_overrides()]
        # the args are valid for the app and give the training job's namespace, runs_dir and registry
        app_args = AppArgs.model_validate(a["args"])
        cfg = app_args.load_config()
        assert cfg.profile == "full" and str(cfg.runs_dir) == gen.shared_runs_dir()
        job = gen._shared_cfg()
        assert (cfg.namespace, cfg.mlflow.registered_model_prefix) == (
            job.namespace,
            job.mlflow.registered_model_prefix,
        )
        assert cfg.mlflow.backend_store_uri == job.mlflow.backend_store_uri
        assert cfg.serve.num_gpus > 0  # member replicas do ask for GPUs (use_gpu) on this cluster


def test_generator_check_and_serve_config_modes(gen: ModuleType, tmp_path: Path) -> None:
    stale = tmp_path / "rayservice.yaml"
    stale.write_text("old\n")
    assert gen.main(["--check", "--output", str(stale)]) == 1
    assert gen.main(["--output", str(stale)]) == 0
    assert gen.main(["--check", "--output", str(stale)]) == 0
    assert stale.read_text() == (KUBERAY / "rayservice.yaml").read_text()
    launcher = yaml.safe_load(gen.render_serve_config("127.0.0.1"))
    assert launcher["http_options"]["host"] == "127.0.0.1"  # cluster.yaml: reached over SSH only


# ---- Dockerfile ---------------------------------------------------------------------------------------


def test_dockerfile_builds_on_the_ray_image_of_our_version(ray_version: str) -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    args = dict(re.findall(r"^ARG (\w+)=(\S*)$", "\n".join(lines), flags=re.M))
    assert args["RAY_IMAGE_TAG"] == f"{ray_version}-{PY_TAG}"
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert froms == ["FROM rayproject/ray:${RAY_IMAGE_TAG}"]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users[-1] == "ray"  # the base image's non-root user
    for pkg in runtime_apt_packages():  # Makefile's APT_PACKAGES but the test browser
        assert re.search(rf"(^|\s){re.escape(pkg)}(\s|$)", text), pkg
    assert "pip install --no-cache-dir -q --no-deps -e ." in text
    ignore = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "data", ".cache"):
        assert path in ignore
