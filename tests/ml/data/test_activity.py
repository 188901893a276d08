from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml.data.activity import (
    FLOOR_DBFS,
    REL_DB,
    activity_record,
    clip_labels,
    frame_rms,
    load_activity,
    stem_activity,
    window_targets,
)

SR = 1000  # 100 samples per 100-ms frame


def _tone(frames: int, level_db: float) -> np.ndarray:
    t = np.arange(frames * 100) / SR
    return np.stack([np.sin(2 * np.pi * 50 * t)] * 2) * np.sqrt(2) * 10 ** (level_db / 20)


def test_frame_rms_of_a_known_signal() -> None:
    x = _tone(5, -20.0)
    np.testing.assert_allclose(frame_rms(x, SR), 0.1, rtol=1e-6)
    assert frame_rms(x[:, :250], SR).shape == (3,)  # a short last frame counts


def test_stem_activity_rule() -> None:
    loud = _tone(10, -10.0)
    quiet = _tone(10, -10.0 - REL_DB - 5)  # buried 30 dB under the mix
    audible = _tone(10, -10.0 - REL_DB + 5)  # 20 dB under: still active
    mix = loud + quiet + audible
    assert stem_activity(loud, mix, SR).tolist() == [1] * 10
    assert stem_activity(quiet, mix, SR).tolist() == [0] * 10
    assert stem_activity(audible, mix, SR).tolist() == [1] * 10
    # alone but under the absolute floor: inactive
    faint = _tone(10, FLOOR_DBFS - 5)
    assert stem_activity(faint, faint, SR).tolist() == [0] * 10
    # a stem that rests for the second half
    half = loud.copy()
    half[:, 500:] = 0
    assert stem_activity(half, half + audible, SR).tolist() == [1] * 5 + [0] * 5


def test_clip_labels_need_thirty_percent() -> None:
    act = {"pia": [1] * 3 + [0] * 7, "vio": [1] * 2 + [0] * 8, "cel": [1] * 10}
    assert clip_labels(act, ["cel", "pia", "vio"]) == ["cel", "pia"]
    assert clip_labels(act, ["vio", "pia"]) == ["pia"]  # order follows the given label order


def _write(tmp_path: Path, activity: dict) -> Path:
    wav = tmp_path / "clip.wav"
    wav.write_bytes(b"")
    (tmp_path / "clip.json").write_text(json.dumps({"library": "opl3", "activity": activity}))
    return wav


def test_load_activity(tmp_path: Path) -> None:
    rec = activity_record({"pia": _tone(4, -10), "vio": np.zeros((2, 400))}, _tone(4, -10), SR)
    wav = _write(tmp_path, rec)
    act = load_activity(wav, ["cel", "pia", "vio"])
    assert act is not None and act.dtype == np.float32
    np.testing.assert_array_equal(act, [[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert load_activity(tmp_path / "none.wav", ["pia"]) is None  # no sidecar: real recording
    (tmp_path / "clip.json").write_text(json.dumps({"library": "opl3"}))
    assert load_activity(wav, ["pia"]) is None  # sidecar without activity
    _write(tmp_path, {"hop_s": 0.1, "labels": {"pia": [1, 0], "vio": [1]}})
    with pytest.raises(ValueError, match="differ in length"):
        load_activity(wav, ["pia"])
    _write(tmp_path, {"hop_s": 0.1, "labels": {"pia": [1, 2]}})
    with pytest.raises(ValueError, match="0/1"):
        load_activity(wav, ["pia"])


def test_window_targets() -> None:
    act = np.array([[1] * 10 + [0] * 20, [0] * 15 + [1] * 15, [1] * 30], dtype=np.float32)  # 3 s at 0.1 s
    np.testing.assert_array_equal(window_targets(act, 0.1, 0.0, 1.0, 0.5), [1, 0, 1])
    np.testing.assert_array_equal(window_targets(act, 0.1, 1.0, 1.0, 0.5), [0, 1, 1])
    np.testing.assert_array_equal(window_targets(act, 0.1, 2.0, 1.0, 0.5), [0, 1, 1])
    # a window starting mid-frame is weighted exactly: 0.55..1.55 -> row 0 active 0.45 s, row 1 0.05 s
    np.testing.assert_array_equal(window_targets(act, 0.1, 0.55, 1.0, 0.45), [1, 0, 1])
    np.testing.assert_array_equal(window_targets(act, 0.1, 0.55, 1.0, 0.46), [0, 0, 1])
    # past the end counts as inactive
    np.testing.assert_array_equal(window_targets(act, 0.1, 2.5, 1.0, 0.5), [0, 1, 1])
    np.testing.assert_array_equal(window_targets(act, 0.1, 2.5, 1.0, 0.51), [0, 0, 0])
    with pytest.raises(ValueError):
        window_targets(act, 0.1, 0.0, 0.0, 0.5)
    with pytest.raises(ValueError):
        window_targets(act, 0.1, 0.0, 1.0, 0.0)
