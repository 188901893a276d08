"""Two profiles trained and fused one after the other: the second leaves the first untouched."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml import tracking
from ml.config import Config, load_config
from ml.ensemble import load_spec

ROOT = Path(__file__).resolve().parents[2]
MEMBER = "res_bpm"


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): tracking.file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _registry(cfg: Config) -> dict[str, Any]:
    c = tracking.client(cfg)
    out: dict[str, Any] = {}
    for rm in c.search_registered_models():
        if not rm.name.startswith(cfg.mlflow.registered_model_prefix + "-"):
            continue
        versions = c.search_model_versions(f"name='{rm.name}'")
        champ = tracking.champion_version(cfg, rm.name)
        out[rm.name] = {
            "versions": sorted((str(v.version), v.run_id, dict(v.tags)) for v in versions),
            "champion": None if champ is None else str(champ.version),
        }
    return out


@pytest.mark.slow
def test_a_second_profile_never_touches_the_first(
    smoke_data: Path, ray_session: None, tmp_path: Path
) -> None:
    from ray_jobs.fuse import fuse
    from ray_jobs.train import train

    raw = yaml.safe_load((ROOT / "config.yml").read_text())
    other = copy.deepcopy(raw["profiles"]["smoke"])
    other["train"] = {**other.get("train", {}), "seed": 1}  # another experiment, same sizes
    raw["profiles"]["smoke2"] = other
    path = tmp_path / "config.yml"  # relative paths (caches, MLflow store) resolve in tmp_path
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    # no logical GPU: the fold trials of each profile run at once (one at a time with it); one member
    # (2 folds) is enough to show the namespaces, and halves the Ray processes starting on 2 cores
    sets = [f"data.root={smoke_data}", "train.gpus_per_trial=0", f"ensembles.default=[{MEMBER}]"]
    a = load_config(path, "smoke", sets)
    b = load_config(path, "smoke2", sets)
    assert a.data.cache_dir == b.data.cache_dir and a.mlflow.backend_store_uri == b.mlflow.backend_store_uri
    assert a.runs_dir != b.runs_dir and a.mlflow.experiment != b.mlflow.experiment

    train(a)
    fa = fuse(a)
    files_a, registry_a = _files(a.runs_dir), _registry(a)
    spec_a = load_spec(a)
    assert spec_a.version == int(fa["version"]) and spec_a.registered_model == "mpic-smoke-ensemble-default"
    assert list(spec_a.members) == [MEMBER]
    assert all(ref.registered_model == f"mpic-smoke-{m}" and ref.version for m, ref in spec_a.members.items())
    assert any(p.endswith("model.pt") for p in files_a) and registry_a

    train(b)
    fb = fuse(b)
    assert fb["registered_model"] == "mpic-smoke2-ensemble-default" and fb["version"] == 1
    # profile A: byte-identical files, the same registered versions, tags and champions
    assert _files(a.runs_dir) == files_a
    assert _registry(a) == registry_a
    again = load_spec(a)
    assert again.to_json() == spec_a.to_json()
    # profile B has its own of everything
    assert set(_registry(b)).isdisjoint(registry_a)
    assert sum(p.endswith("model.pt") for p in _files(b.runs_dir)) == 2  # 1 member × 2 folds
    spec_b = load_spec(b)
    assert all(ref.registered_model == f"mpic-smoke2-{m}" for m, ref in spec_b.members.items())
    assert all(not c.startswith(str(a.runs_dir)) for ref in spec_b.members.values() for c in ref.checkpoints)
