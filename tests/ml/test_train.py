"""ml.train.fit without Ray: one (member, fold) on the smoke data, checkpoints, OOF, resume."""

from __future__ import annotations

import numpy as np
import pytest

from ml.checkpoint import load_classifier
from ml.inference import Predictor
from ml.train import LocalHooks, fit, load_oof, load_train_data


@pytest.fixture(scope="module")
def data(smoke_cfg, smoke_data):
    from ml.models import build_classifier

    sr = build_classifier(smoke_cfg, "res_genre").sample_rate
    return load_train_data(smoke_cfg, sr)


def test_train_data_is_cached_with_folds_and_tempo(smoke_cfg, data):
    assert len(data.store) == len(data.manifest) == smoke_cfg.synth.train_clips
    assert set(np.unique(data.folds)) == set(range(smoke_cfg.folds.k))
    assert data.targets.shape == (len(data.manifest), len(smoke_cfg.labels))
    assert (data.targets.sum(1) == 1).all()  # IRMAS training clips have one predominant instrument
    assert np.isfinite(data.store.tempo).mean() > 0.5
    # clips of one recording never straddle folds
    groups: dict[str, set[int]] = {}
    for rec, f in zip(data.manifest.records, data.folds, strict=True):
        groups.setdefault(rec.group, set()).add(int(f))
    assert all(len(v) == 1 for v in groups.values())


def test_fit_writes_checkpoint_and_oof_and_resumes(smoke_cfg, data, tmp_path):
    out = tmp_path / "res_genre" / "fold0"
    hooks = LocalHooks(out / "work")
    r = fit(smoke_cfg, "res_genre", 0, out_dir=out, hooks=hooks, data=data)
    assert r.epochs_run == smoke_cfg.train.epochs
    assert [h["epoch"] for h in hooks.history] == [0.0, 1.0]
    for key in ("train_loss", "val_loss", "val_macro_f1", "samples_per_s", "data_share"):
        assert np.isfinite(hooks.history[-1][key])
    assert 0 <= hooks.history[-1]["data_share"] < 1
    # the checkpoint describes itself and loads through the one constructor
    _model, meta = load_classifier(r.model_path)
    assert meta.member == "res_genre" and meta.fold == 0 and meta.labels == smoke_cfg.label_codes
    pred = Predictor.from_checkpoints([r.model_path], hop_s=0.5)
    scores = pred.score_waves([data.store.clip(0)])[0]
    assert scores.shape[1] == len(smoke_cfg.labels) and ((scores >= 0) & (scores <= 1)).all()
    # OOF covers exactly the held-out fold
    oof = load_oof([r.oof_path])
    held_out = {data.manifest.records[i].path for i in np.flatnonzero(data.folds == 0)}
    assert set(oof.paths) == held_out
    assert all(len(w) >= 1 for w in oof.windows)

    # resume: one more epoch continues from the saved state (epoch 2), not from scratch
    cfg3 = smoke_cfg.model_copy(update={"train": smoke_cfg.train.model_copy(update={"epochs": 3})})
    r3 = fit(cfg3, "res_genre", 0, out_dir=out, hooks=hooks, data=data)
    assert [h["epoch"] for h in hooks.history] == [0.0, 1.0, 2.0]
    assert r3.epochs_run == 3


def test_unknown_member_and_bad_fold(smoke_cfg, data, tmp_path):
    with pytest.raises(KeyError):
        fit(smoke_cfg, "nope", 0, out_dir=tmp_path, data=data)
    with pytest.raises(ValueError, match="fold 9"):
        fit(smoke_cfg, "res_genre", 9, out_dir=tmp_path, data=data)


def test_time_budget_stops_training_by_step_seconds(smoke_cfg, data, tmp_path):
    # A budget far below one step: every epoch would allow more steps, but the run stops after the first
    # step of the first epoch (at least one step always runs) instead of training all 50 epochs.
    tc = smoke_cfg.train.model_copy(update={"epochs": 50, "steps_per_epoch": 4, "time_budget_s": 1e-3})
    cfg = smoke_cfg.model_copy(update={"train": tc})
    hooks = LocalHooks(tmp_path / "work")
    r = fit(cfg, "res_genre", 0, out_dir=tmp_path / "out", hooks=hooks, data=data)
    assert r.epochs_run == 1
    row = hooks.history[0]
    assert row["samples"] == tc.batch_size  # one step of the four
    assert 0 < row["train_s"] and np.isfinite(row["samples_per_s"])
    assert r.model_path.is_file() and r.oof_path.is_file()
