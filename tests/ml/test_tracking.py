"""ml.tracking against a temporary SQLite MLflow store (no Ray, no server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ml import tracking
from ml.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store per module (creating its schema takes seconds); tests use their own experiment."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def cfg(store: Path, request: pytest.FixtureRequest) -> Config:
    name = request.node.name.replace("[", "-").replace("]", "")
    return load_config(
        ROOT / "config.yml",
        profile="smoke",
        overrides=[
            f"mlflow.backend_store_uri=sqlite:///{store / 'mlflow.db'}",
            f"mlflow.artifacts_destination={store / 'artifacts'}",
            f"mlflow.experiment={name}",
            f"mlflow.registered_model_prefix={name}",
            f"data.cache_dir={store / 'cache' / name}",
            f"runs_dir={store / 'runs' / name}",
        ],
    )


def _checkpoint(cfg: Config, member: str, fold: int, folder: Path, seed: int = 0) -> Path:
    import torch

    from ml.checkpoint import CheckpointMeta, save_classifier
    from ml.models import build_classifier, classifier_spec

    torch.manual_seed(seed)
    model = build_classifier(cfg, member)
    meta = CheckpointMeta(
        spec=classifier_spec(cfg, member), member=member, fold=fold, epoch=0, metrics={"val_macro_f1": 0.5}
    )
    return save_classifier(folder / f"{member}-fold{fold}-{seed}" / "model.pt", model, meta)


def _oof(folder: Path, name: str = "oof.npz") -> Path:
    path = folder / name
    np.savez(path, y_true=np.zeros((2, 3), dtype=np.float32))
    return path


HISTORY = [
    {
        "epoch": 0.0,
        "train_loss": 1.0,
        "val_loss": 0.9,
        "val_macro_f1": 0.1,
        "samples_per_s": 50.0,
        "data_share": 0.2,
    },
    {
        "epoch": 1.0,
        "train_loss": 0.5,
        "val_loss": 0.7,
        "val_macro_f1": 0.3,
        "samples_per_s": 60.0,
        "data_share": 0.1,
    },
]


def test_uri_experiment_and_server_command(cfg: Config, store: Path) -> None:
    uri = tracking.tracking_uri(cfg)
    assert uri == cfg.mlflow.backend_store_uri and uri.startswith("sqlite:///")
    exp_id = tracking.setup(cfg)
    assert tracking.setup(cfg) == exp_id  # idempotent
    exp = tracking.client(cfg).get_experiment(exp_id)
    assert exp.name == cfg.mlflow.experiment
    assert exp.artifact_location.startswith((store / "artifacts").as_uri())

    cmd = tracking.server_command(cfg)
    assert Path(cmd[0]).name == "mlflow" and cmd[1] == "server"
    args = dict(zip(cmd[2::2], cmd[3::2], strict=True))
    assert args == {
        "--backend-store-uri": cfg.mlflow.backend_store_uri,
        "--artifacts-destination": cfg.mlflow.artifacts_destination,
        "--host": "127.0.0.1",
        "--port": "5000",
    }
    assert tracking.ui_url(cfg) == "http://127.0.0.1:5000"
    assert tracking.ui_url(cfg, experiment_id=exp_id).endswith(f"/#/experiments/{exp_id}")

    server = load_config(ROOT / "config.yml", overrides=["mlflow.tracking_uri=http://mlflow.example:5001/"])
    assert tracking.tracking_uri(server) == "http://mlflow.example:5001/"
    assert tracking.ui_url(server) == "http://mlflow.example:5001"


def test_member_fingerprint_ignores_scheduling_only(cfg: Config) -> None:
    def with_(*ov: str) -> Config:
        return load_config(ROOT / "config.yml", profile="smoke", overrides=list(ov))

    base = tracking.member_fingerprint(with_(), "res_genre")
    assert (
        tracking.member_fingerprint(with_("train.gpus_per_trial=0.25", "train.max_failures=5"), "res_genre")
        == base
    )
    assert tracking.member_fingerprint(with_("train.epochs=3"), "res_genre") != base
    assert tracking.member_fingerprint(with_("folds.k=3"), "res_genre") != base
    assert tracking.member_fingerprint(with_(), "res_bpm") != base


def test_job_run_reopened_and_orphans_failed(cfg: Config) -> None:
    parent = tracking.start_run(cfg, kind=tracking.KIND_TRAIN_JOB, name="job", job_key="k1")
    tracking.end_run(cfg, parent)
    again = tracking.start_run(cfg, kind=tracking.KIND_TRAIN_JOB, name="job", job_key="k1")
    assert again == parent
    c = tracking.client(cfg)
    assert c.get_run(parent).info.status == "RUNNING"
    assert tracking.start_run(cfg, kind=tracking.KIND_TRAIN_JOB, name="job", job_key="k2") != parent

    # a run whose process died (a killed job) is closed, a live one is left alone
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    orphan = tracking.start_run(cfg, kind=tracking.KIND_TRAIN_JOB, name="killed", job_key="k3")
    c.set_tag(orphan, tracking.TAG_PID, dead.stdout.strip())
    closed = tracking.fail_orphaned_runs(cfg)
    assert closed == [orphan]
    assert c.get_run(orphan).info.status == "FAILED"
    assert c.get_run(parent).info.status == "RUNNING"
    assert os.getpid() == int(c.get_run(parent).data.tags[tracking.TAG_PID])


def test_log_fold_is_idempotent(cfg: Config, tmp_path: Path, store: Path) -> None:
    parent = tracking.start_run(cfg, kind=tracking.KIND_TRAIN_JOB, name="job", job_key="j")
    model = _checkpoint(cfg, "res_genre", 0, tmp_path)
    oof = _oof(tmp_path)
    kw = dict(
        member="res_genre",
        fold=0,
        fold_key="fk",
        oof_path=oof,
        history=HISTORY,
        best={"val_macro_f1": 0.3, "val_loss": 0.7},
        parent_run_id=parent,
        job_key="j",
    )
    run_id, created = tracking.log_fold(cfg, model_path=model, **kw)  # type: ignore[arg-type]
    assert created
    again, created2 = tracking.log_fold(cfg, model_path=model, **kw)  # type: ignore[arg-type]
    assert (again, created2) == (run_id, False)

    c = tracking.client(cfg)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((store / "artifacts").as_uri())  # not ./mlruns
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags[tracking.TAG_MEMBER] == "res_genre" and run.data.tags[tracking.TAG_FOLD] == "0"
    assert run.data.params["arch"] == "rescnn" and run.data.params["fold"] == "0"
    assert json.loads(run.data.params["augment"])[0]["name"] == "gain"
    assert run.data.params["train.epochs"] == "2"
    hist = c.get_metric_history(run_id, "val_macro_f1")
    assert [(m.step, m.value) for m in hist] == [(0, 0.1), (1, 0.3)]
    assert run.data.metrics["best/val_macro_f1"] == 0.3
    arts = {a.path for a in c.list_artifacts(run_id)} | {
        a.path for d in ("checkpoint", "oof", "config") for a in c.list_artifacts(run_id, d)
    }
    assert {
        "checkpoint/model.pt",
        "oof/oof.npz",
        "config/config.yml",
        "config/config.json",
        "history.json",
    } <= arts
    found = tracking.find_fold_run(cfg, "res_genre", 0, "fk")
    assert found is not None and found.run_id == run_id and found.metrics["val_macro_f1"] == 0.3
    assert tracking.find_fold_run(cfg, "res_genre", 0, "other-key") is None

    # a run left RUNNING by a killed job is failed; a retrained checkpoint supersedes the old run
    stale = tracking.start_run(
        cfg,
        kind=tracking.KIND_FOLD,
        name="stale",
        reuse=False,
        tags={tracking.TAG_MEMBER: "res_genre", tracking.TAG_FOLD: "0", tracking.TAG_FOLD_KEY: "fk"},
    )
    model2 = _checkpoint(cfg, "res_genre", 0, tmp_path, seed=1)
    new_id, created3 = tracking.log_fold(cfg, model_path=model2, **kw)  # type: ignore[arg-type]
    assert created3 and new_id != run_id
    assert c.get_run(stale).info.status == "FAILED"
    assert c.get_run(run_id).data.tags[tracking.TAG_SUPERSEDED] == "true"
    found = tracking.find_fold_run(cfg, "res_genre", 0, "fk")
    assert found is not None and found.run_id == new_id
    finished = tracking._search(cfg, {tracking.TAG_KIND: tracking.KIND_FOLD}, status="FINISHED")
    assert len(finished) == 2


def _register_scores(
    cfg: Config, member: str, scores: list[float], seed: int, folder: Path
) -> tuple[tracking.Registration, dict]:
    """One fold run per score (best validation LRAP = the score), registered as a member version.

    The F1 at the fixed threshold runs the other way (1 - score): the champion rule must follow the LRAP.
    """
    folds: dict = {}
    for k, s in enumerate(scores):
        model = _checkpoint(cfg, member, k, folder, seed=seed)
        best = {"val_lrap": s, "val_macro_f1": 1 - s, "val_micro_f1": 1 - s}
        rid, _ = tracking.log_fold(
            cfg,
            member=member,
            fold=k,
            fold_key=f"key{seed}",
            model_path=model,
            oof_path=_oof(folder, f"oof{seed}{k}.npz"),
            history=HISTORY,
            best=best,
        )
        folds[k] = (rid, model, best)
    return tracking.register_member(cfg, member, folds), folds


def test_register_member_champion_and_download(cfg: Config, tmp_path: Path) -> None:
    member = "res_bpm"

    def version(scores: list[float], seed: int) -> tuple[tracking.Registration, dict]:
        return _register_scores(cfg, member, scores, seed, tmp_path)

    v1, folds1 = version([0.4, 0.6], seed=0)
    assert (v1.version, v1.created, v1.champion) == ("1", True, True) and v1.score == pytest.approx(0.5)
    assert v1.name == f"{cfg.mlflow.registered_model_prefix}-{member}"
    # the same fold runs again: no new version
    v1b = tracking.register_member(cfg, member, folds1)
    assert (v1b.version, v1b.created, v1b.champion) == ("1", False, True)
    v2, _ = version([0.3, 0.4], seed=1)  # worse: registered, alias stays
    assert (v2.version, v2.champion) == ("2", False)
    v3, _ = version([0.5, 0.5], seed=2)  # equal to the champion: "not worse" → takes the alias
    assert (v3.version, v3.champion) == ("3", True)
    champ = tracking.champion_version(cfg, v3.name)
    assert champ is not None and str(champ.version) == "3"  # an int in MLflow 3
    assert float(champ.tags["mean_val_lrap"]) == pytest.approx(0.5)
    assert champ.tags[tracking.TAG_SCORE_METRIC] == "mean_val_lrap"
    assert float(champ.tags[tracking.TAG_SCORE]) == pytest.approx(0.5)

    paths = tracking.download_member(cfg, member)  # champion
    assert [p.parent.name for p in paths] == ["fold0", "fold1"] and all(p.name == "model.pt" for p in paths)
    assert tracking.download_member(cfg, member, "champion") == paths  # cached
    v2_paths = tracking.download_member(cfg, member, 2)
    assert len(v2_paths) == 2
    with pytest.raises(LookupError):
        tracking.download_member(cfg, member, "no-such-alias")
    # the fusion job names the version holding exactly its checkpoints, not the champion
    shas = {k: tracking.file_sha256(p) for k, p in enumerate(v2_paths)}
    found = tracking.find_member_version(cfg, member, shas)
    assert found is not None and str(found.version) == "2"
    assert tracking.find_member_version(cfg, member, {0: "0" * 64, 1: shas[1]}) is None

    from ml.checkpoint import read_checkpoint

    _, meta = read_checkpoint(paths[0])  # weights_only load of the registry copy
    assert meta.member == member

    model = tracking.load_member_pyfunc(cfg, member)
    win = round(cfg.inference.window_s * cfg.front_ends["mel_fast"].sample_rate)
    scores = model.predict(np.random.default_rng(0).standard_normal((3, win)).astype(np.float32) * 0.1)
    assert scores.shape == (3, len(cfg.labels)) and np.all((scores >= 0) & (scores <= 1))


def test_scores_on_different_metrics_are_not_compared(
    cfg: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    member = "res_bpm"

    def register(score: float, seed: int) -> tracking.Registration:
        return _register_scores(cfg, member, [score], seed, tmp_path)[0]

    v1, folds1 = _register_scores(cfg, member, [0.9], 0, tmp_path)
    # as a version registered under the old rule looks: its score is a macro-F1 (or says nothing)
    c = tracking.client(cfg)
    c.set_model_version_tag(v1.name, v1.version, tracking.TAG_SCORE_METRIC, "mean_val_macro_f1")
    with caplog.at_level("WARNING", logger="ml.tracking.registry"):
        v2 = register(0.5, seed=1)  # a lower number, but on another scale: not compared
    assert (v2.version, v2.champion) == ("2", True)
    assert "not comparable" in caplog.text and "mean_val_macro_f1" in caplog.text
    # the older version's runs registered again: not comparable either, but older, so the alias stays
    again = tracking.register_member(cfg, member, folds1)
    assert (again.version, again.created, again.champion) == ("1", False, False)
    v3 = register(0.4, seed=2)  # the same metric as the champion now: compared, and worse
    assert (v3.version, v3.champion) == ("3", False)
    champ = tracking.champion_version(cfg, v1.name)
    assert champ is not None and str(champ.version) == "2"


def test_spec_registry_roundtrip(cfg: Config, tmp_path: Path) -> None:
    from ml.ensemble import default_spec

    assert tracking.load_registered_spec(cfg) is None
    spec = default_spec(cfg)
    spec.value = 0.4
    p1 = tmp_path / "spec-v1.json"
    p1.write_text(spec.to_json())
    r1 = tracking.register_spec(cfg, p1, {"macro_f1": 0.4})
    assert (r1.version, r1.champion, r1.created) == ("1", True, True)
    mv1 = tracking.champion_version(cfg, r1.name)
    assert mv1 is not None and mv1.tags[tracking.TAG_SCORE_METRIC] == f"fusion_{cfg.fusion.objective}"
    assert tracking.register_spec(cfg, p1, {"macro_f1": 0.4}).created is False
    spec.weights = {m: float(i + 1) for i, m in enumerate(spec.weights)}
    p2 = tmp_path / "spec-v2.json"
    p2.write_text(spec.to_json())
    r2 = tracking.register_spec(cfg, p2, {"macro_f1": 0.35})
    assert (r2.version, r2.champion) == ("2", False)
    loaded = tracking.load_registered_spec(cfg)
    assert loaded is not None and loaded.weights == {m: 1.0 for m in spec.weights}  # the champion (v1)
    assert (loaded.version, loaded.registered_model) == (1, tracking.spec_model_name(cfg))
    v2 = tracking.load_registered_spec(cfg, 2)
    assert v2 is not None and v2.weights == spec.weights and v2.version == 2
    with pytest.raises(LookupError):
        tracking.load_registered_spec(cfg, 9)


def test_load_spec_is_the_one_loader(cfg: Config, tmp_path: Path) -> None:
    from ml.ensemble import EQUAL, SpecNotFoundError, default_spec, load_spec, stamp

    # nothing registered: a clear error naming the command, unless untrained members are allowed
    with pytest.raises(SpecNotFoundError, match=r"run `mpic fuse --profile smoke` first"):
        load_spec(cfg)
    untrained = load_spec(cfg, allow_untrained=True)
    assert stamp(untrained) == {
        "name": "default",
        "registered_model": None,
        "version": None,
        "source": "untrained",
    }
    with pytest.raises(SpecNotFoundError, match="no checkpoints"):
        load_spec(cfg, EQUAL)
    spec = default_spec(cfg)
    spec.value = 0.5
    spec.source = "tune"
    tracking.register_spec(cfg, spec, {"macro_f1": 0.5})
    spec.weights = {m: float(i + 1) for i, m in enumerate(spec.weights)}
    tracking.register_spec(cfg, spec, {"macro_f1": 0.1})  # worse: the champion stays v1
    name = tracking.spec_model_name(cfg)
    assert stamp(load_spec(cfg)) == {
        "name": "default",
        "registered_model": name,
        "version": 1,
        "source": "tune",
    }
    assert load_spec(cfg, "champion").version == 1
    assert load_spec(cfg, 2).version == load_spec(cfg, "2").version == 2
    with pytest.raises(SpecNotFoundError, match="no version or alias '7'"):
        load_spec(cfg, 7)
    path = tmp_path / "s.json"
    path.write_text(spec.to_json())
    assert load_spec(cfg, str(path)).weights == spec.weights
    with pytest.raises(SpecNotFoundError, match="MLflow is disabled"):
        from ml.config import Config as _C

        off = _C.model_validate({**cfg.snapshot(), "mlflow": {**cfg.snapshot()["mlflow"], "enabled": False}})
        load_spec(off)


def test_live_fold_run_is_completed_not_duplicated(cfg: Config, tmp_path: Path) -> None:
    """Epochs logged while training land in the run log_fold completes; it adds only what is missing."""
    parent = tracking.start_run(cfg, kind=tracking.KIND_TRAIN_JOB, name="job", job_key="j")
    live = tracking.open_live_fold(
        cfg, member="res_bpm", fold=1, fold_key="fk", parent_run_id=parent, job_key="j"
    )
    # runner bookkeeping is dropped by the driver; non-numeric values are skipped here
    tracking.log_epoch(cfg, live, {**HISTORY[0], "note": "text"})
    assert tracking.find_fold_run(cfg, "res_bpm", 1, "fk") is None  # not a finished fold yet
    model = _checkpoint(cfg, "res_bpm", 1, tmp_path)
    run_id, created = tracking.log_fold(
        cfg,
        member="res_bpm",
        fold=1,
        fold_key="fk",
        model_path=model,
        oof_path=_oof(tmp_path),
        history=HISTORY,  # epoch 1 never reached the live run (e.g. a driver restart): filled in now
        best={"val_macro_f1": 0.3},
        parent_run_id=parent,
        job_key="j",
        extra_params={"best_epoch": 1},
        run_id=live,
    )
    assert (run_id, created) == (live, True)
    c = tracking.client(cfg)
    run = c.get_run(live)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.TAG_LIVE] == "done"
    assert run.data.tags[tracking.TAG_MODEL_SHA] == tracking.file_sha256(model)
    assert run.data.params["best_epoch"] == "1" and run.data.params["arch"] == "rescnn"
    assert [(m.step, m.value) for m in c.get_metric_history(live, "val_macro_f1")] == [(0, 0.1), (1, 0.3)]
    found = tracking.find_fold_run(cfg, "res_bpm", 1, "fk")
    assert found is not None and found.run_id == live
    assert len(tracking.search_runs(cfg, {tracking.TAG_KIND: tracking.KIND_FOLD})) == 1


def test_tracker_and_experiment_kind(cfg: Config) -> None:
    t = tracking.Tracker(cfg)
    c = tracking.client(cfg)
    exp = c.get_experiment(t.experiment_id)
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND == "custom_model_development"
    c.delete_experiment_tag(exp.experiment_id, tracking.EXPERIMENT_KIND_TAG)  # an experiment from before
    assert tracking.EXPERIMENT_KIND_TAG not in c.get_experiment(exp.experiment_id).tags
    assert c.get_experiment(t.experiment_id).tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
    run = t.start_run(kind="probe", name="probe", reuse=False)
    t.log_table(run, [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}], "t/table.json")
    table = json.loads(Path(c.download_artifacts(run, "t/table.json")).read_text())
    assert table["columns"] == ["a", "b"] and table["data"] == [[1, "x"], [2, "y"]]
    t.end_run(run)
    assert t.model_uri() == f"models:/{tracking.spec_model_name(cfg)}@champion"
    assert t.load_spec() is None  # nothing registered yet


def test_ensemble_model_carries_the_musicnn_wheel(
    cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A musicnn member rebuilds its frozen trunk from the wheel: the ensemble model bundles it."""
    from ml.tracking.registry import ensemble_extras

    wheel = tmp_path / "musicnn-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    monkeypatch.setenv("MPIC_MUSICNN_WHEEL", str(wheel))
    assert ensemble_extras(cfg, ["res_genre", "res_bpm"]) == {}
    full = load_config(ROOT / "config.yml")  # the default ensemble has a musicnn member
    musicnn = [m for m in full.ensemble_members if full.members[m].arch == "musicnn"]
    assert musicnn and ensemble_extras(full, full.ensemble_members) == {f"wheels/{wheel.name}": wheel}
