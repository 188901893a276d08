"""cluster.yaml (Ray cluster launcher, AWS) checked by Ray's own code, and the storage settings it relies on.

No cloud access: ``prepare_config`` + ``validate_config`` are what ``ray up`` runs before it talks to AWS
(defaults merged, then ``ray/autoscaler/ray-schema.json`` of the installed Ray plus Ray's cross-checks), so a
key Ray no longer knows, a bad type or a min/max mismatch fails here when Ray is upgraded.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
PRIVATE_PORTS = {8265: "dashboard", 8080: "Serve", 5000: "MLflow", 6379: "GCS", 10001: "Ray client"}
PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return dict(yaml.safe_load(CLUSTER_YAML.read_text()))


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    return dict(cfg)


def _validate(cfg: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


def runtime_apt_packages() -> list[str]:
    """The Debian packages of ``make system-deps`` that a Ray node needs (all but the browser for tests)."""
    m = re.search(r"^APT_PACKAGES := (.+)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert m, "Makefile has no APT_PACKAGES"
    return [p for p in m.group(1).split() if p != "chromium"]


def test_valid_for_the_installed_ray(prepared: dict[str, Any]) -> None:
    import ray.autoscaler

    assert (Path(ray.autoscaler.__file__).parent / "ray-schema.json").is_file()
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_validation_bites(raw: dict[str, Any]) -> None:
    """The check is not vacuous: what Ray would reject is rejected."""
    import jsonschema

    bad = copy.deepcopy(raw)
    bad["available_node_types"]["ray.worker.gpu"]["resources"]["GPU"] = 0.5  # resources are integers
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad)
    bad = copy.deepcopy(raw)
    bad["idle_timeout_minute"] = 5  # a misspelt key
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad)
    bad = copy.deepcopy(raw)
    bad["head_node_type"] = "nope"
    with pytest.raises(ValueError):
        _validate(bad)


def test_head_runs_no_trials_or_replicas(prepared: dict[str, Any]) -> None:
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    start = " ".join(prepared["head_start_ray_commands"])
    assert "--num-cpus=0" in start
    assert "--dashboard-host=127.0.0.1" in start  # reached via `ray dashboard` / SSH, not the network
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start


def test_worker_types_autoscale_from_zero(prepared: dict[str, Any]) -> None:
    workers = {k: v for k, v in prepared["available_node_types"].items() if k != prepared["head_node_type"]}
    gpu = [v for v in workers.values() if v["resources"].get("GPU", 0) >= 1]
    cpu = [v for v in workers.values() if not v["resources"].get("GPU")]
    assert gpu and cpu, "one CPU and one GPU worker type"
    for name, t in workers.items():
        assert t["min_workers"] == 0, name
        assert 1 <= t["max_workers"] <= prepared["max_workers"], name
        assert t["resources"]["CPU"] >= 1, name
    for t in gpu:
        assert re.match(r"^(g4dn|g5|g6|g6e|p3|p4d|p5)\.", t["node_config"]["InstanceType"])
        assert t["docker"]["worker_image"].endswith("-gpu")
    assert 0 < prepared["idle_timeout_minutes"] <= 60
    assert prepared["upscaling_speed"] > 0


def test_ray_images_match_the_installed_ray(prepared: dict[str, Any]) -> None:
    import ray

    expected = f"rayproject/ray:{ray.__version__}-{PY_TAG}"
    assert prepared["docker"]["image"] == expected
    gpu_images = [
        t["docker"]["worker_image"] for t in prepared["available_node_types"].values() if "docker" in t
    ]
    assert gpu_images == [f"{expected}-gpu"]


def test_ports_are_forwarded_not_opened(raw: dict[str, Any], prepared: dict[str, Any]) -> None:
    rules = prepared["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        lo, hi = int(rule.get("FromPort", -1)), int(rule.get("ToPort", -1))
        for port, what in PRIVATE_PORTS.items():
            assert not (lo == -1 or lo <= port <= hi), f"{what} port {port} opened by {rule}"
    # nothing publishes container ports on the host either
    opts = " ".join(prepared["docker"].get("run_options", []))
    assert not re.search(r"(^|\s)(-p|--publish)(\s|=)", opts)
    text = CLUSTER_YAML.read_text()
    for port in (8265, 8080, 5000):
        assert str(port) in text  # documented, with how to reach it


def test_setup_installs_the_project(prepared: dict[str, Any]) -> None:
    setup = " ".join(prepared["setup_commands"])
    for pkg in runtime_apt_packages():  # Makefile's APT_PACKAGES but the test browser
        assert re.search(rf"(^|\s){re.escape(pkg)}(\s|$)", setup), pkg
    assert "pip install -q -e ~/mpic" in setup
    assert "pip download -q --no-deps musicnn==0.1.0 -d ~/mpic/.cache/mpic/wheels" in setup
    assert prepared["file_mounts"] == {"~/mpic": "."}
    assert ".gitignore" in prepared["rsync_filter"]
    mounts = " ".join(prepared["docker"]["run_options"])
    assert "/shared:/shared" in mounts
    assert any("mount -t nfs4" in c for c in prepared["initialization_commands"])


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_commands_are_valid_shell(prepared: dict[str, Any]) -> None:
    keys = [
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ]
    for key in keys:
        for cmd in prepared[key]:
            r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert r.returncode == 0, f"{key}: {cmd!r}: {r.stderr}"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_ray_start_runs_with_the_configured_ray_env(raw: dict[str, Any], key: str) -> None:
    """`ray start` on every node gets config.yml's ``ray.env`` (Serve's controller and proxies inherit it)."""
    env = load_config().ray.env
    assert env  # config.yml slows Serve's control loop and metrics export (docs/benchmarks.md)
    starts = [c for c in raw[key] if "ray start" in c]
    assert len(starts) == 1, starts
    # run the command with `ray start` replaced by a dump of the environment it would have started with
    probe = starts[0].replace("ray start", "env; true")
    r = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, env={"PATH": os.environ["PATH"]}
    )
    seen = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    assert {k: seen.get(k) for k in env} == env


# ---- shared storage through the config ---------------------------------------------------------------


def test_shared_storage_settings_survive_the_config() -> None:
    """S3/NFS locations and a Postgres MLflow store pass through ml.config unchanged."""
    cfg = load_config(
        ROOT / "config.yml",
        profile="full",
        overrides=[
            "ray.storage_path=s3://bucket/mpic/ray_results",
            "mlflow.backend_store_uri=postgresql://mlflow:secret@db.internal:5432/mlflow",
            "mlflow.artifacts_destination=s3://bucket/mpic/mlflow",
            "mlflow.tracking_uri=http://127.0.0.1:5000",
        ],
        base_dir=Path("/shared/mpic"),
    )
    assert str(cfg.ray.storage_path) == "s3://bucket/mpic/ray_results"  # not "s3:/bucket/…"
    assert cfg.snapshot()["ray"]["storage_path"] == "s3://bucket/mpic/ray_results"
    assert cfg.mlflow.backend_store_uri == "postgresql://mlflow:secret@db.internal:5432/mlflow"
    assert cfg.mlflow.artifacts_destination == "s3://bucket/mpic/mlflow"
    # relative paths land on the shared file system given by --base-dir
    assert str(cfg.runs_dir) == "/shared/mpic/.cache/mpic/full/runs"  # the profile's namespace
    assert str(cfg.data.root) == "/shared/mpic/data/IRMAS"
    assert str(cfg.data.cache_dir) == "/shared/mpic/.cache/mpic"
    nfs = load_config(ROOT / "config.yml", profile="full", base_dir=Path("/shared/mpic"))
    assert str(nfs.ray.storage_path) == "/shared/mpic/.cache/mpic/full/ray_results"
    assert nfs.mlflow.backend_store_uri == "sqlite:////shared/mpic/.cache/mpic/mlflow.db"


def test_mlflow_server_command_for_the_head_node() -> None:
    from ml.tracking import server_command

    cfg = load_config(
        ROOT / "config.yml",
        profile="full",
        overrides=[
            "mlflow.backend_store_uri=postgresql://mlflow:secret@db.internal:5432/mlflow",
            "mlflow.artifacts_destination=s3://bucket/mpic/mlflow",
        ],
    )
    cmd = server_command(cfg)
    args = dict(zip(cmd[2::2], cmd[3::2], strict=False))
    assert cmd[1] == "server"
    assert args["--backend-store-uri"].startswith("postgresql://")
    assert args["--artifacts-destination"] == "s3://bucket/mpic/mlflow"
    assert args["--host"] == "127.0.0.1" and args["--port"] == "5000"  # forwarded over SSH, not exposed
