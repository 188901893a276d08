"""The fusion search on Ray Tune, on constructed out-of-fold predictions with a known optimum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.config import load_config
from ml.ensemble import EnsembleSpec, load_spec
from ml.oof import save_oof

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = ("res_genre", "res_bpm")


def write_member_oof(runs: Path, member: str, windows: list[np.ndarray], y: np.ndarray, labels, k=2) -> None:
    n = len(windows)
    for fold in range(k):
        idx = [i for i in range(n) if i % k == fold]
        folder = runs / member / f"fold{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        save_oof(
            folder / "oof.npz",
            paths=[f"clip{i:03d}.wav" for i in idx],
            y_true=y[idx],
            window_scores=np.concatenate([windows[i] for i in idx]),
            owner=np.concatenate([np.full(len(windows[i]), j) for j, i in enumerate(idx)]),
            labels=list(labels),
        )


@pytest.fixture(scope="module")
def fuse_cfg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuse")
    cfg = load_config(
        ROOT / "config.yml",
        profile="smoke",
        overrides=[
            f"runs_dir={tmp / 'runs'}",
            f"data.root={tmp / 'no-data-here'}",
            f"data.cache_dir={tmp / 'cache'}",
            f"ray.storage_path={tmp / 'ray'}",
            f"mlflow.backend_store_uri=sqlite:///{tmp / 'mlflow.db'}",
            f"mlflow.artifacts_destination={tmp / 'artifacts'}",
            "fusion.num_samples=24",
        ],
    )
    rng = np.random.default_rng(0)
    n, c = 120, len(cfg.labels)
    y = np.zeros((n, c), np.float32)
    y[np.arange(n), rng.integers(0, c, n)] = 1
    y[rng.random((n, c)) < 0.15] = 1
    signal = [np.clip(y[i] * 0.6 + rng.random((4, c)) * 0.5, 0, 1).astype(np.float32) for i in range(n)]
    noise = [rng.random((4, c)).astype(np.float32) for _ in range(n)]
    write_member_oof(cfg.runs_dir, "res_genre", signal, y, cfg.label_codes)
    write_member_oof(cfg.runs_dir, "res_bpm", noise, y, cfg.label_codes)
    return cfg


@pytest.fixture(scope="module")
def fused(fuse_cfg, ray_session):
    from ray_jobs.fuse import fuse

    return fuse(fuse_cfg)


def test_noise_member_is_dropped_and_search_beats_baselines(fused):
    assert fused["weights"]["res_bpm"] < 0.1
    assert fused["weights"]["res_genre"] > 0.9
    b = fused["baselines"]
    equal = max(v["objective"] for k, v in b.items() if k.startswith("equal/"))
    assert fused["tune_best"] >= equal
    assert fused["value"] >= b["coordinate"]["objective"] - 1e-9
    assert fused["value"] > 0.8  # the signal member is separable at the fitted thresholds
    assert fused["n_trials"] >= 24


def test_spec_saved_versioned_and_thresholds_from_training_oof(fuse_cfg, fused):
    spec = load_spec(fuse_cfg)  # the champion: the first fusion always takes the alias
    assert spec.version == fused["version"] and fused["champion"] is True
    assert spec.registered_model == fused["registered_model"]
    assert spec.registered_model == f"mpic-{fuse_cfg.namespace}-ensemble-default"  # the namespace's own
    assert fused["spec_path"].endswith(f"spec-v{spec.version}.json")  # the local copy shares the number
    assert len(spec.thresholds) == len(fuse_cfg.labels)
    assert spec.details["n_clips"] == 120
    assert set(spec.details["member_thresholds"]) == set(MEMBERS)
    # no test data exists at all for this config: the thresholds can only come from the OOF files
    assert not fuse_cfg.data.root.exists()


def test_trials_as_one_table_and_spec_round_trips(fuse_cfg, fused):
    import json

    from ml import tracking

    c = tracking.client(fuse_cfg)
    parent = fused["mlflow"]["parent_run_id"]
    exp = tracking.setup(fuse_cfg)
    children = c.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=1000)
    # no run per trial any more: the job's children are the registered spec's run only
    assert [r.data.tags.get("mpic.kind") for r in children] == [tracking.KIND_SPEC]
    table = json.loads(Path(c.download_artifacts(parent, "fusion/trials.json")).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert len(rows) == fused["n_trials"] >= 24
    assert {"trial", "objective", "aggregation", "w_res_genre", "w_res_bpm"} <= set(table["columns"])
    assert max(r["objective"] for r in rows) == pytest.approx(fused["tune_best"])
    assert [r["objective"] for r in rows] == sorted((r["objective"] for r in rows), reverse=True)
    assert c.get_run(parent).data.metrics["n_trials"] == fused["n_trials"]
    registered = tracking.load_registered_spec(fuse_cfg)
    local = EnsembleSpec.from_json(Path(fused["spec_path"]).read_text())
    assert isinstance(registered, EnsembleSpec)
    assert registered.to_json() == local.to_json()


def test_experiment_opens_in_the_model_training_view(fuse_cfg, fused):
    from ml import tracking

    exp = tracking.client(fuse_cfg).get_experiment(tracking.setup(fuse_cfg))
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_evaluation_attached_to_the_registered_version(fuse_cfg, fused):
    import json

    from ml import tracking

    c = tracking.client(fuse_cfg)
    run_id = fused["mlflow"]["spec_run_id"]
    mv = c.get_model_version(fused["registered_model"], str(fused["version"]))
    assert mv.run_id == run_id
    metrics = c.get_run(run_id).data.metrics
    assert metrics["eval/macro_f1"] == pytest.approx(fused["oof"]["macro_f1"], abs=1e-9)
    per_class = [metrics[f"eval/f1/{code}"] for code in fuse_cfg.label_codes]
    assert sum(per_class) / len(per_class) == pytest.approx(metrics["eval/macro_f1"], abs=1e-9)
    assert float(mv.tags["eval.macro_f1"]) == pytest.approx(metrics["eval/macro_f1"], rel=1e-5)
    png = Path(c.download_artifacts(run_id, "eval/per_class_f1.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(Path(c.download_artifacts(run_id, "eval/report.json")).read_text())
    assert set(report["per_class"]) == set(fuse_cfg.label_codes)


def test_a_rejected_fusion_is_never_served(fuse_cfg, fused):
    """A worse fusion is registered but the champion rule keeps the alias: load_spec still serves v1."""
    from ray_jobs.fuse import fuse

    worse = fuse(fuse_cfg, members=["res_bpm"])  # the noise member alone: far below the champion
    assert worse["value"] < fused["value"]
    assert worse["champion"] is False and int(worse["version"]) == int(fused["version"]) + 1
    for ref in (None, "champion", fuse_cfg.mlflow.alias):
        served = load_spec(fuse_cfg, ref)
        assert served.version == int(fused["version"]) and served.weights == fused["weights"]
    assert load_spec(fuse_cfg, int(worse["version"])).weights == {"res_bpm": 1.0}  # still there by number


def test_the_search_bounds_its_concurrent_trials(fuse_cfg, ray_session, monkeypatch):
    """Tune ignores TuneConfig.max_concurrent_trials with a search generator: the generator must bound it."""
    import ray_jobs.fuse as fuse_mod
    from ml import oof as oofmod

    seen = {}

    class FakeTuner:
        def __init__(self, trainable, *, param_space, tune_config, run_config):
            seen["search"] = tune_config.search_alg

        def fit(self):
            return []

    monkeypatch.setattr(fuse_mod.tune, "Tuner", FakeTuner)
    names = ["res_genre", "res_bpm"]
    oof = oofmod.load_oof_set(fuse_cfg, names, fuse_cfg.fusion.aggregations)
    assert fuse_mod.tune_search(fuse_cfg, oof, names) == []
    assert seen["search"].max_concurrent == fuse_cfg.fusion.max_concurrent_trials == 2
