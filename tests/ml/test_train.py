"""ml.train.fit without Ray: one (member, fold) on the smoke data, checkpoints, OOF, resume."""

from __future__ import annotations

import numpy as np
import pytest

from ml.checkpoint import load_classifier
from ml.inference import Predictor
from ml.oof import load_oof
from ml.train import LocalHooks, fit
from ml.train_data import MIX_PREFIX, load_train_data


@pytest.fixture(scope="module")
def data(smoke_cfg, smoke_data):
    from ml.models import build_classifier

    sr = build_classifier(smoke_cfg, "res_genre").sample_rate
    return load_train_data(smoke_cfg, sr)


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
    # OOF covers exactly the held-out fold, plus polyphonic mixtures made only of held-out clips
    oof = load_oof([r.oof_path])
    held_out = {data.manifest.records[i].path for i in np.flatnonzero(data.folds == 0)}
    singles = [p for p in oof.paths if not p.startswith(MIX_PREFIX)]
    assert set(singles) == held_out
    mixes = [j for j, p in enumerate(oof.paths) if p.startswith(MIX_PREFIX)]
    assert mixes and all(set(oof.paths[j].split(":", 1)[1].split("+")) <= held_out for j in mixes)
    assert (oof.y_true[mixes].sum(1) >= 2).all()
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
    assert row["train_s"] > 0 and np.isfinite(row["samples_per_s"])
    assert r.model_path.is_file() and r.oof_path.is_file()


def _with_member_train(cfg, member, **train):
    m = cfg.members[member]
    members = {**cfg.members, member: m.model_copy(update={"train": {**m.train, **train}})}
    return cfg.model_copy(update={"members": members})


@pytest.fixture(scope="module")
def data16k(smoke_cfg, smoke_data):
    return load_train_data(smoke_cfg, 16000)  # musicnn's rate


@pytest.mark.parametrize("freeze", [True, "front_end"])
def test_frozen_trunk_head_trains_on_cached_views_and_validates_like_the_whole_model(
    smoke_cfg, data16k, tmp_path, freeze
):
    import torch

    from ml.models import build_classifier
    from ml.train import _validate

    cfg = _with_member_train(smoke_cfg, "mn_mtt", head_views=2, head_passes=3, epochs=3, time_budget_s=None)
    models = {**cfg.models, "musicnn": {**cfg.models["musicnn"], "freeze": freeze}}
    cfg = cfg.model_copy(update={"models": models})
    hooks = LocalHooks(tmp_path / "work")
    r = fit(cfg, "mn_mtt", 0, out_dir=tmp_path / "out", hooks=hooks, data=data16k)
    train_idx, val_idx = data16k.split(0)
    rows = hooks.history
    assert len(rows) == 3 and all(h["cache_views"] == 2 for h in rows)
    assert rows[0]["cache_size"] == 2 * len(train_idx)  # one embedded crop per clip and view
    # An epoch is head_passes passes over the cache, whatever steps_per_epoch says (the smoke profile's 2).
    steps = -(-len(train_idx) * 2 // cfg.member_train("mn_mtt").batch_size)
    assert rows[0]["samples"] == 3 * steps * cfg.member_train("mn_mtt").batch_size
    # The cached validation is the whole model's: the saved checkpoint validated end to end agrees.
    clf, _ = load_classifier(r.model_path)
    full, _ = _validate(clf, data16k, val_idx, cfg, torch.device("cpu"), cfg.train.val_windows_hop_s)
    for k in ("val_loss", "val_lrap", "val_macro_f1"):
        assert full[k] == pytest.approx(r.metrics[k], abs=1e-5), k
    # The out-of-fold scores (clip windows from the cached embeddings, mixtures through the whole model)
    # are the saved model's.
    oof_windows = np.load(r.oof_path)["window_scores"]
    from ml.train import _score
    from ml.train_data import _clip_windows

    windows, _ = _clip_windows(data16k.store, val_idx, cfg.inference.window_s, cfg.inference.hop_s)
    whole = 1 / (1 + np.exp(-_score(clf, windows, torch.device("cpu"), 64)))
    np.testing.assert_allclose(oof_windows[: len(windows)], whole, atol=1e-5)
    # What is frozen is the pretrained trunk (the whole trunk, or its front end); the rest trained.
    fresh = build_classifier(cfg, "mn_mtt")
    for (k, a), b in zip(clf.model.trunk.named_buffers(), fresh.model.trunk.buffers(), strict=True):
        assert torch.equal(a, b), k
    assert not torch.equal(clf.model.head[-1].weight, fresh.model.head[-1].weight)
    mid_trained = not torch.equal(clf.model.trunk.mid[0].weight, fresh.model.trunk.mid[0].weight)
    assert mid_trained == (freeze == "front_end")


def test_head_views_and_head_steps_share_the_time_budget(smoke_cfg, data16k, tmp_path):
    # A budget far below one view: one view is embedded, then the head gets its third of the budget: one
    # step (at least one always runs) of the first epoch, although 10^5 epochs were asked for.
    cfg = _with_member_train(smoke_cfg, "mn_mtt", head_views=50, epochs=100_000, time_budget_s=1e-3)
    hooks = LocalHooks(tmp_path / "work")
    r = fit(cfg, "mn_mtt", 0, out_dir=tmp_path / "out", hooks=hooks, data=data16k)
    assert r.epochs_run == 1 and hooks.history[0]["cache_views"] == 1
    assert hooks.history[0]["samples"] == cfg.member_train("mn_mtt").batch_size
    # A budget the views cannot use up (2 views): the head trains for the rest of it, then stops.
    cfg = _with_member_train(
        smoke_cfg, "mn_mtt", head_views=2, epochs=100_000, early_stopping_patience=10**6, time_budget_s=8.0
    )
    hooks = LocalHooks(tmp_path / "work2")
    r = fit(cfg, "mn_mtt", 0, out_dir=tmp_path / "out2", hooks=hooks, data=data16k)
    rows = hooks.history
    assert rows[0]["cache_views"] == 2 and 1 < r.epochs_run < 100_000
    head_s = sum(h["train_s"] for h in rows)
    assert max(8.0 - rows[0]["cache_s"], 8.0 / 3) <= head_s < max(8.0 - rows[0]["cache_s"], 8.0 / 3) + 2.0


def test_label_smoothing_pulls_targets_towards_one_half():
    import torch

    from ml.config import load_config
    from ml.train import smooth_targets

    y = torch.tensor([[0.0, 1.0, 0.5]])
    assert smooth_targets(y, 0.0) is y
    torch.testing.assert_close(smooth_targets(y, 0.1), torch.tensor([[0.05, 0.95, 0.5]]))
    cfg = load_config()
    assert cfg.member_train("res_ls").label_smoothing == 0.1
    assert cfg.member_train("res_genre").label_smoothing == 0.0
