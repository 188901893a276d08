"""ray_jobs.train: the smoke ensemble through Ray Tune + Ray Train + MLflow, once, checked from every side."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml import tracking
from ml.config import Config, load_config
from ray_jobs import common
from ray_jobs.train import FaultInjection, InjectedFailure, fold_dir, plan_resources, select, train

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = ["res_genre", "res_bpm"]


# ---- no Ray --------------------------------------------------------------------------------------------


def test_plan_resources_and_selection() -> None:
    cfg = load_config(ROOT / "config.yml", profile="smoke")  # cpus_per_trial 0.5, gpus_per_trial 1
    assert plan_resources(cfg, MEMBERS, {"CPU": 16.0, "GPU": 2.0}, 10) == (True, 2)  # GPU-bound
    assert plan_resources(cfg, MEMBERS, {"CPU": 8.0}, 10) == (False, 10)  # 8 / (0.5 + 0.1) = 13 → 10 trials
    assert plan_resources(cfg, MEMBERS, {"CPU": 2.0}, 10) == (False, 3)
    assert plan_resources(cfg, MEMBERS, {"CPU": 0.2}, 10) == (False, 1)  # never 0
    frac = load_config(ROOT / "config.yml", profile="smoke", overrides=["train.gpus_per_trial=0.25"])
    assert plan_resources(frac, MEMBERS, {"CPU": 8.0, "GPU": 1.0}, 4) == (True, 4)
    nogpu = load_config(ROOT / "config.yml", profile="smoke", overrides=["train.gpus_per_trial=0"])
    assert plan_resources(nogpu, MEMBERS, {"CPU": 8.0, "GPU": 1.0}, 4) == (False, 4)
    fixed = load_config(ROOT / "config.yml", profile="smoke", overrides=["train.max_concurrent_trials=2"])
    assert plan_resources(fixed, MEMBERS, {"CPU": 64.0, "GPU": 8.0}, 4) == (True, 2)

    assert select(cfg, None, None) == (MEMBERS, [0, 1])
    sub = load_config(ROOT / "config.yml", profile="smoke", overrides=["train.folds=[1]"])
    assert select(sub, ["res_bpm"], None) == (["res_bpm"], [1])
    with pytest.raises(ValueError, match="unknown members"):
        select(cfg, ["nope"], None)
    with pytest.raises(ValueError, match="out of range"):
        select(cfg, None, [2])


def test_fault_injection_fires_once(tmp_path: Path) -> None:
    fault = FaultInjection(epoch=1, marker_dir=str(tmp_path), only=("res_genre/0",))
    fault.maybe_fail("res_genre", 0, 0)  # other epoch
    fault.maybe_fail("res_bpm", 0, 1)  # other trial
    with pytest.raises(InjectedFailure):
        fault.maybe_fail("res_genre", 0, 1)
    fault.maybe_fail("res_genre", 0, 1)  # only once
    assert fault.marker("res_genre", 0).is_file()


def test_job_args(tmp_path: Path) -> None:
    parser = common.add_config_args(argparse.ArgumentParser())
    _, cfg = common.parse(
        parser, ["--profile", "smoke", "--set", "train.epochs=3", "--base-dir", str(tmp_path)]
    )
    assert cfg.profile == "smoke" and cfg.train.epochs == 3
    assert cfg.runs_dir == (tmp_path / ".cache/mpic/smoke/runs").resolve()  # the profile's own namespace
    assert tracking.tracking_uri(cfg) == f"sqlite:///{(tmp_path / '.cache/mpic/mlflow.db').resolve()}"


# ---- one smoke training run (session fixture `smoke_training`, tests/ray_jobs/conftest.py) -----------------


def _fold_runs(cfg: Config, parent: str | None = None) -> list[Any]:
    runs = tracking._search(cfg, {tracking.TAG_KIND: tracking.KIND_FOLD})
    return [r for r in runs if parent is None or r.data.tags.get("mlflow.parentRunId") == parent]


def test_smoke_training_outputs(smoke_training: tuple[Config, dict[str, Any], float]) -> None:
    from ml.checkpoint import read_checkpoint
    from ml.inference import member_dirs
    from ml.oof import load_oof
    from ml.train_data import MIX_PREFIX

    cfg, summary, wall = smoke_training
    print(
        f"smoke training: {wall:.1f} s wall; "
        + "; ".join(
            f"{m}: micro-F1 {s['val_micro_f1']:.3f} macro-F1 {s['val_macro_f1']:.3f} "
            f"{s['samples_per_s']:.1f} samples/s data share {s['data_share']:.2f}"
            for m, s in summary["members"].items()
        )
    )
    assert summary["failed"] == [] and summary["skipped"] == []
    assert sorted(summary["trained"]) == sorted(f"{m}/{f}" for m in MEMBERS for f in (0, 1))
    assert summary["use_gpu"] is True and summary["max_concurrent_trials"] == 4  # 1 logical GPU, 0.25 each
    for m in MEMBERS:
        s = summary["members"][m]
        for k in ("val_micro_f1", "val_macro_f1"):
            assert 0.0 <= s[k] <= 1.0
        assert s["samples_per_s"] > 0 and 0.0 <= s["data_share"] <= 1.0
        assert s["folds"] == [0, 1]
        dirs = member_dirs(cfg.runs_dir, m)
        assert [d.name for d in dirs] == ["fold0", "fold1"]
        for d in dirs:
            _, meta = read_checkpoint(d / "model.pt")  # weights_only
            assert meta.member == m and meta.fold == int(d.name[4:])
            assert (d / "oof.npz").is_file()
        oof = load_oof([d / "oof.npz" for d in dirs])
        singles = [p for p in oof.paths if not p.startswith(MIX_PREFIX)]
        assert len(singles) == cfg.synth.train_clips and oof.labels == cfg.label_codes  # each clip once
        assert len(oof.paths) > len(singles)  # plus polyphonic mixtures of held-out clips
    for f in summary["folds"].values():
        assert f["epochs_run"] == 2 and len(f["history"]) == 2
        assert Path(f["model_path"]).parent == fold_dir(cfg, f["member"], f["fold"])
    # no real CUDA here: the logical GPU was scheduled, the worker fell back to the CPU
    info = json.loads((fold_dir(cfg, "res_bpm", 0) / "result.json").read_text())
    assert info["device"] == "cpu"


def test_smoke_training_mlflow(smoke_training: tuple[Config, dict[str, Any], float]) -> None:
    cfg, summary, _ = smoke_training
    c = tracking.client(cfg)
    parent = c.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tracking.TAG_JOB_KEY] == summary["job_key"]
    assert {a.path for a in c.list_artifacts(parent.info.run_id, "config")} == {
        "config/config.json",
        "config/config.yml",
    }
    assert parent.data.metrics["trained"] == 4
    runs = _fold_runs(cfg, parent.info.run_id)
    assert sorted((r.data.tags[tracking.TAG_MEMBER], r.data.tags[tracking.TAG_FOLD]) for r in runs) == sorted(
        (m, str(f)) for m in MEMBERS for f in (0, 1)
    )
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.params["arch"] == "rescnn" and r.data.params["front_end"] == "mel_fast"
        for key in ("val_macro_f1", "val_loss", "train_loss", "samples_per_s", "data_share"):
            assert [m.step for m in c.get_metric_history(r.info.run_id, key)] == [0, 1], key
        arts = {a.path for d in ("checkpoint", "oof", "config") for a in c.list_artifacts(r.info.run_id, d)}
        assert {"checkpoint/model.pt", "oof/oof.npz", "config/config.yml"} <= arts
        assert (
            summary["folds"][f"{r.data.tags[tracking.TAG_MEMBER]}/{r.data.tags[tracking.TAG_FOLD]}"]["run_id"]
            == r.info.run_id
        )
    for m in MEMBERS:
        reg = summary["members"][m]["registry"]
        assert reg["registered"] and reg["champion"] and reg["version"] == "1"
        champ = tracking.champion_version(cfg, tracking.registered_model_name(cfg, m))
        assert champ is not None and str(champ.version) == "1"
        # members are scored by their mean validation LRAP (threshold-free), not the fixed-threshold F1
        assert float(champ.tags[tracking.TAG_SCORE]) == pytest.approx(summary["members"][m]["val_lrap"])
        assert champ.tags[tracking.TAG_SCORE_METRIC] == "mean_val_lrap"
        paths = tracking.download_member(cfg, m)
        assert [p.parent.name for p in paths] == ["fold0", "fold1"]
    assert summary["mlflow_ui"].startswith("http://127.0.0.1:5000/#/experiments/")
    exp = c.get_experiment(parent.info.experiment_id)
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"  # the model-training view


def test_epoch_metrics_logged_while_the_fold_trains(
    smoke_training: tuple[Config, dict[str, Any], float],
) -> None:
    """Each epoch reached MLflow when it ended, not all at once after training (the old end-of-fold log)."""
    cfg, summary, _ = smoke_training
    c = tracking.client(cfg)
    for name, f in summary["folds"].items():
        run = c.get_run(f["run_id"])
        assert run.data.tags[tracking.TAG_LIVE] == "done", name  # opened live, completed by log_fold
        hist = sorted(c.get_metric_history(f["run_id"], "val_loss"), key=lambda m: m.step)
        assert [m.step for m in hist] == [0, 1], name  # once per epoch, also across the resumed fold
        published_ms = (
            json.loads((fold_dir(cfg, f["member"], f["fold"]) / "result.json").read_text())["published"]
            * 1000
        )
        epoch1_ms = f["history"][1]["train_s"] * 1000
        # epoch 1 was trained between the two logs, and both came before the files were published
        assert hist[0].timestamp + 0.5 * epoch1_ms <= hist[1].timestamp <= published_ms, name


def test_resume_after_injected_failure(smoke_training: tuple[Config, dict[str, Any], float]) -> None:
    cfg, summary, _ = smoke_training
    failed = summary["folds"]["res_genre/0"]
    assert (cfg.runs_dir / ".faults" / "res_genre-fold0.failed").is_file()  # the failure did happen
    # after the restart the worker resumed from epoch 0's checkpoint: epoch 0 was not trained twice
    assert failed["reported_epochs"] == [0, 1]
    assert failed["resumed_at_epoch"] == 1
    assert [int(r["epoch"]) for r in failed["history"]] == [0, 1]
    for name, f in summary["folds"].items():
        if name != "res_genre/0":
            assert f["resumed_at_epoch"] is None and f["reported_epochs"] == [0, 1]
    c = tracking.client(cfg)
    hist = c.get_metric_history(failed["run_id"], "val_loss")
    assert [m.step for m in hist] == [0, 1]
    assert all(math.isfinite(m.value) for m in hist)


def test_retraining_another_config_refuses_to_overwrite(
    smoke_training: tuple[Config, dict[str, Any], float],
) -> None:
    from ray_jobs.train import RunsDirConflictError

    cfg, _, _ = smoke_training
    digests = {p: tracking.file_sha256(p) for p in cfg.runs_dir.glob("*/fold*/*") if p.is_file()}
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.0123})})
    with pytest.raises(RunsDirConflictError, match=r"--overwrite") as e:
        train(other)
    assert "res_genre/fold0" in str(e.value) and str(cfg.runs_dir) in str(e.value)
    assert {p: tracking.file_sha256(p) for p in cfg.runs_dir.glob("*/fold*/*") if p.is_file()} == digests


def test_rerun_skips_finished_folds(smoke_training: tuple[Config, dict[str, Any], float]) -> None:
    cfg, first, _ = smoke_training
    before = {r.info.run_id for r in _fold_runs(cfg)}
    jobs_before = tracking._search(cfg, {tracking.TAG_KIND: tracking.KIND_TRAIN_JOB})
    mtimes = {p: p.stat().st_mtime_ns for p in cfg.runs_dir.glob("*/fold*/model.pt")}
    t0 = time.perf_counter()
    again = train(cfg)
    took = time.perf_counter() - t0
    assert again["trained"] == [] and sorted(again["skipped"]) == sorted(first["trained"])
    assert again["parent_run_id"] == first["parent_run_id"]  # the job's run is re-opened, not duplicated
    assert {r.info.run_id for r in _fold_runs(cfg)} == before  # no new (member, fold) runs
    assert len(tracking._search(cfg, {tracking.TAG_KIND: tracking.KIND_TRAIN_JOB})) == len(jobs_before)
    assert {p: p.stat().st_mtime_ns for p in cfg.runs_dir.glob("*/fold*/model.pt")} == mtimes
    for m in MEMBERS:
        reg = again["members"][m]["registry"]
        assert (reg["version"], reg["created"], reg["champion"]) == ("1", False, True)
        assert again["members"][m]["val_macro_f1"] == pytest.approx(first["members"][m]["val_macro_f1"])
        versions = tracking._versions(cfg, tracking.registered_model_name(cfg, m))
        assert len(versions) == 1
    assert tracking.client(cfg).get_run(first["parent_run_id"]).info.status == "FINISHED"
    assert took < 60, took
    np.testing.assert_equal(sorted(again["folds"]), sorted(first["folds"]))
