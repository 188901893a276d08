"""ml.train_data: the training split with folds, held-out mixtures, activity-labelled crops, library folds."""

from __future__ import annotations

import numpy as np
import pytest

from ml.train_data import heldout_mixtures, load_train_data


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


def test_heldout_mixtures_have_disjoint_parts_and_are_deterministic(smoke_cfg, data):
    _, val = data.split(0)
    paths = [data.manifest.records[i].path for i in val]
    waves, y, names = heldout_mixtures(data.store, data.targets, val, paths, per_clip=2, seed=3)
    again = heldout_mixtures(data.store, data.targets, val, paths, per_clip=2, seed=3)
    assert names == again[2] and all(np.array_equal(a, b) for a, b in zip(waves, again[0], strict=True))
    assert 0 < len(waves) <= 2 * len(val) and y.shape == (len(waves), len(smoke_cfg.labels))
    by_path = {p: data.targets[i] for p, i in zip(paths, val, strict=True)}
    for wave, labels, name in zip(waves, y, names, strict=True):
        parts = name.split(":", 1)[1].split("+")
        assert 2 <= len(parts) <= 3 and parts[0] in by_path
        part_labels = np.stack([by_path[p] for p in parts])
        assert (part_labels.sum(0) <= 1).all()  # parts never share an instrument
        np.testing.assert_array_equal(labels, part_labels.max(0))
        assert len(wave) == data.store.clip(int(val[paths.index(parts[0])])).shape[0]
        assert np.isfinite(wave).all() and 0 < np.abs(wave).max() <= 1.0 + 1e-6


def test_crops_are_labelled_by_the_instruments_active_in_them():
    """A stem that rests during a crop is not a label of that crop; clips without activity keep theirs."""
    import torch

    from ml.data.cache import ClipStore
    from ml.train_data import Cropper, TrainData

    sr, n = 100, 300  # 3-s clips at 100 Hz, 0.1-s activity frames → 30 frames per clip
    store = ClipStore(
        data=np.zeros(2 * n, np.float32),
        offsets=np.array([0, n, 2 * n]),
        tempo=np.full(2, np.nan, np.float32),
        sample_rate=sr,
        paths=("a.wav", "b.wav"),
    )
    targets = np.array([[1, 1, 0], [1, 0, 1]], np.float32)
    activity = np.zeros((2, 3, 30), np.float32)
    activity[0, 0, :] = 1  # label 0 plays throughout clip 0
    activity[0, 1, :10] = 1  # label 1 only in the first second of clip 0
    data = TrainData(
        manifest=None,  # type: ignore[arg-type]
        store=store,
        targets=targets,
        genre=np.full(2, -1),
        folds=np.zeros(2, np.int64),
        activity=activity,
        has_activity=np.array([True, False]),
    )
    cropper = Cropper(data, crop=100, device=torch.device("cpu"), min_active=0.3)
    idx = torch.tensor([0, 0, 1])
    got = cropper._targets(idx, torch.tensor([0, 200, 150]), cropper.lengths[idx])
    assert got.tolist() == [[1, 1, 0], [1, 0, 0], [1, 0, 1]]
    # a crop straddling the end of label 1's activity: 0.5 s of 1 s active ≥ 0.3 → labelled
    assert cropper._targets(idx[:1], torch.tensor([50]), cropper.lengths[:1]).tolist() == [[1, 1, 0]]
    waves, tg = cropper(idx, torch.Generator().manual_seed(0))
    assert waves.shape == (3, 100) and tg.shape == (3, 3)


def test_library_folds_validate_each_family_on_sounds_unheard_in_training():
    from ml.data.manifest import ClipRecord
    from ml.train_data import library_folds

    def rec(path: str, lib: str) -> ClipRecord:
        return ClipRecord(path=path, split="train", duration_s=3.0, labels=("pia",), group=path, library=lib)

    recs = [rec("a", "timgm6mb"), rec("b", "csound_gm"), rec("c", "opl3"), rec("d", "fluidr3_gs")]
    folds = {r.path: r.fold for r in library_folds(recs, 3)}
    # families sorted: fluidr3, opl3, timgm (TimGM6mb and the csound bank share samples: one family)
    assert folds == {"a": 2, "b": 2, "c": 1, "d": 0}
    with pytest.raises(ValueError, match=r"folds\.k=3"):
        library_folds(recs, 5)
    with pytest.raises(ValueError, match=r"folds\.by=recording"):
        library_folds([*recs, rec("e", "")], 3)
