"""The analysis pipeline gives the same predictions as before the serving rework (issue 14).

Before: the ingress decoded, resampled each file once per member rate (``ml.audio.resample``), cut windows
with a Python loop and sent (W, S) float32 windows to ``Predictor.score_windows``. Now: every member gets
the decoded song at its own rate and resamples, frames and scores it itself (``Predictor.score_songs``),
with the windows of many songs in one batch. The reference below is the old path, written out; both must
agree within 1e-4 on every file score and every window score.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from ml.audio import decode, resample
from ml.config import Config, deep_merge
from ml.inference import (
    EnsemblePredictor,
    Predictor,
    build_result,
    frame_tensor,
    frame_windows,
    fuse_windows,
    window_starts,
)
from ml.service import LocalBackend, RunSettings, Song, analyze

TOL = 1e-4


def _old_frame_windows(wave: np.ndarray, rate: int, starts_s: np.ndarray, window_s: float) -> np.ndarray:
    """The pre-rework framing loop (kept here as the reference)."""
    size = round(window_s * rate)
    out = np.zeros((len(starts_s), size), dtype=np.float32)
    for i, s in enumerate(starts_s):
        a = round(s * rate)
        chunk = wave[a : a + size]
        out[i, : len(chunk)] = chunk
    return out


def _tone(seconds: float, rate: int, f0: float, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    w = 0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.8 * t))
    w += 0.05 * np.random.default_rng(int(f0)).standard_normal(len(t))
    return np.stack([w, 0.7 * w], axis=1).astype(np.float32) if channels == 2 else w.astype(np.float32)


def _wav(wave: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cfg(smoke_cfg: Config) -> Config:
    """Smoke config, ``res_bpm`` on a 16 kHz front end (two member rates) and 0.5-s hops (overlapping)."""
    data = deep_merge(
        smoke_cfg.snapshot(),
        {
            "front_ends": {
                "mel_small": {
                    "kind": "mel",
                    "sample_rate": 16000,
                    "n_fft": 512,
                    "win_length": 400,
                    "hop_length": 160,
                    "n_mels": 64,
                    "f_min": 30,
                    "norm": "instance",
                }
            },
            "members": {"res_bpm": {"front_end": "mel_small"}},
            "inference": {"hop_s": 0.5},
        },
    )
    return Config.model_validate(data)


@pytest.fixture(scope="module")
def uploads() -> list[tuple[str, bytes]]:
    return [
        ("stereo44.wav", _wav(_tone(3.3, 44100, 330.0, channels=2), 44100)),
        ("mono48.wav", _wav(_tone(2.05, 48000, 220.0), 48000, "FLOAT")),
        ("mono22.wav", _wav(_tone(1.7, 22050, 523.0), 22050)),
        ("short16.wav", _wav(_tone(0.4, 16000, 440.0), 16000)),
        ("odd.wav", _wav(_tone(2.6, 44101, 262.0), 44101)),  # an odd rate: the bounded-ratio resampler
    ]


def _reference(cfg: Config, predictors: dict[str, Predictor], uploads: list[tuple[str, bytes]]) -> list[Any]:
    inf = cfg.inference
    weights = dict.fromkeys(predictors, 1.0)
    out = []
    for name, data in uploads:
        audio = decode(data, None, max_seconds=cfg.audio.max_seconds, silence_dbfs=cfg.audio.silence_dbfs)
        starts = window_starts(audio.duration_s, inf.window_s, inf.hop_s)
        per_member = {}
        for m, p in predictors.items():
            wave = resample(audio.wave, audio.sample_rate, p.sample_rate)
            per_member[m] = p.score_windows(_old_frame_windows(wave, p.sample_rate, starts, inf.window_s))
        scores, windows = fuse_windows(per_member, weights, "mean")
        th = [0.5] * len(cfg.labels)
        out.append(build_result(name, audio, scores, windows, starts, cfg.label_codes, th, inf.window_s))
    return out


def test_analyze_matches_the_pre_rework_pipeline(cfg: Config, uploads: list[tuple[str, bytes]]) -> None:
    backend = LocalBackend.from_config(cfg, allow_untrained=True)
    assert {p.sample_rate for p in backend.predictors.values()} == {22050, 16000}
    expected = _reference(cfg, backend.predictors, uploads)
    got = asyncio.run(
        analyze(
            cfg,
            backend,
            uploads,
            settings=RunSettings(dict.fromkeys(backend.members, 1.0), (0.5,) * len(cfg.labels), "mean"),
        )
    )
    assert backend.batches == len(backend.members)  # all five songs in one batch per member
    for g, e in zip(got, expected, strict=True):
        assert g.error is None and g.file == e.file
        assert g.duration_s == pytest.approx(e.duration_s)
        np.testing.assert_allclose(list(g.scores.values()), list(e.scores.values()), atol=TOL, rtol=0)
        assert [s.start_s for s in g.segments] == [s.start_s for s in e.segments]
        for gs, es in zip(g.segments, e.segments, strict=True):
            np.testing.assert_allclose(list(gs.scores.values()), list(es.scores.values()), atol=TOL, rtol=0)
    # the in-process ensemble (mpic predict) agrees as well
    ens = EnsemblePredictor(
        backend.predictors, dict.fromkeys(backend.members, 1.0), [0.5] * 11, "mean", cfg=cfg
    )
    for g, e in zip(got, ens.predict(uploads), strict=True):
        np.testing.assert_allclose(list(g.scores.values()), list(e.scores.values()), atol=TOL, rtol=0)


def test_score_songs_equals_framing_then_scoring(cfg: Config) -> None:
    """Songs of different rates and lengths batched together score as each one framed and scored alone."""
    p = LocalBackend.from_config(cfg, ["res_genre"], allow_untrained=True).predictors["res_genre"]
    p.batch_size = 4  # several forward passes and a song split across them
    inf = cfg.inference
    songs = []
    for secs, rate in ((3.3, 44100), (0.3, 22050), (5.0, 48000), (1.0, 22050)):
        w = _tone(secs, rate, 200.0 + secs)
        songs.append((w, rate, window_starts(len(w) / rate, inf.window_s, inf.hop_s)))
    got = p.score_songs(songs)
    for (w, rate, starts), out in zip(songs, got, strict=True):
        framed = _old_frame_windows(resample(w, rate, p.sample_rate), p.sample_rate, starts, inf.window_s)
        np.testing.assert_allclose(out, p.score_windows(framed), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("window_s", "hop_s", "rate"), [(1.0, 1.0, 22050), (1.0, 0.5, 16000), (0.37, 0.11, 8000)]
)
@pytest.mark.parametrize("seconds", [0.2, 1.0, 2.345, 7.0])
def test_frame_windows_equal_the_loop(window_s: float, hop_s: float, rate: int, seconds: float) -> None:
    wave = np.random.default_rng(1).standard_normal(round(seconds * rate)).astype(np.float32)
    starts = window_starts(seconds, window_s, hop_s)
    expected = _old_frame_windows(wave, rate, starts, window_s)
    assert np.array_equal(frame_windows(wave, rate, starts, window_s), expected)
    # irregular starts take the gather path
    odd = np.sort(np.random.default_rng(2).uniform(0, seconds, 5))
    assert np.array_equal(
        frame_windows(wave, rate, odd, window_s), _old_frame_windows(wave, rate, odd, window_s)
    )
    assert frame_tensor(torch.from_numpy(wave), rate, starts, window_s).is_contiguous()


def test_song_carries_one_array_for_every_member() -> None:
    s = Song(np.zeros(100, np.float32), 22050, np.zeros(1))
    assert s.windows == 1 and s.cache == {}
