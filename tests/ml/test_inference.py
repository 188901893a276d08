import io

import numpy as np
import pytest
import soundfile as sf
import torch

from ml.inference import EnsemblePredictor, Predictor, frame_windows, fuse_windows, pick_device, window_starts


class BandEnergy(torch.nn.Module):
    """A fake classifier: class c's logit grows with the energy of FFT band c (deterministic)."""

    def __init__(self, sample_rate: int, n_classes: int = 3, bias: float = 0.0) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.n_classes = n_classes
        self.bias = bias
        self.calls = 0

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        spec = torch.fft.rfft(wave).abs()
        bands = torch.stack([b.mean(-1) for b in spec.chunk(self.n_classes, dim=-1)], -1)
        return 20 * (bands / (bands.sum(-1, keepdim=True) + 1e-9) - 0.5) + self.bias


def test_window_starts_cover_the_file():
    np.testing.assert_allclose(window_starts(3.0, 1.0, 0.5), [0, 0.5, 1, 1.5, 2])
    np.testing.assert_allclose(window_starts(3.2, 1.0, 1.0), [0, 1, 2, 2.2])  # tail window aligned to end
    np.testing.assert_allclose(window_starts(0.3, 1.0, 0.5), [0])
    assert len(window_starts(60.0, 1.0, 0.5)) == 119


def test_frame_windows_pads_and_slices():
    wave = np.arange(25, dtype=np.float32)
    w = frame_windows(wave, 10, np.array([0.0, 1.5]), 1.0)
    assert w.shape == (2, 10)
    np.testing.assert_array_equal(w[0], np.arange(10))
    np.testing.assert_array_equal(w[1, :10], np.r_[np.arange(15, 25), np.zeros(0)])
    short = frame_windows(np.ones(3, np.float32), 10, np.array([0.0]), 1.0)
    np.testing.assert_array_equal(short[0], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])


def make_predictor(member="a", n_models=2, batch_size=4, bias=0.0):
    models = [BandEnergy(8000, bias=bias) for _ in range(n_models)]
    return Predictor(
        member, models, ["lo", "mid", "hi"], window_s=1.0, hop_s=0.5, batch_size=batch_size
    ), models


def test_predictor_batches_windows_of_many_files_and_averages_folds():
    pred, models = make_predictor()
    t = np.arange(8000 * 3) / 8000
    low = np.sin(2 * np.pi * 200 * t).astype(np.float32)
    high = np.sin(2 * np.pi * 3500 * t[:12000]).astype(np.float32)
    out = pred.score_waves([low, high])
    assert [o.shape for o in out] == [(5, 3), (2, 3)]
    assert (out[0].argmax(1) == 0).all() and (out[1].argmax(1) == 2).all()
    # 7 windows in batches of 4 → 2 forward calls per fold model, for both files together
    assert [m.calls for m in models] == [2, 2]


def test_fuse_windows_weights_and_drops():
    a = np.array([[0.9, 0.1], [0.7, 0.1]], np.float32)
    b = np.array([[0.1, 0.9], [0.1, 0.5]], np.float32)
    file_scores, windows = fuse_windows({"a": a, "b": b}, {"a": 3.0, "b": 1.0}, "mean")
    np.testing.assert_allclose(file_scores, 0.75 * a.mean(0) + 0.25 * b.mean(0), rtol=1e-6)
    np.testing.assert_allclose(windows, 0.75 * a + 0.25 * b, rtol=1e-6)
    only_a, _ = fuse_windows({"a": a, "b": b}, {"a": 1.0, "b": 0.0}, "max")
    np.testing.assert_allclose(only_a, a.max(0))
    with pytest.raises(ValueError, match="positive weight"):
        fuse_windows({"a": a}, {"a": 0.0}, "mean")


def test_ensemble_predictor_runs_the_http_pipeline(smoke_cfg):
    """predict() is ml.service.analyze: too-short audio fails with the API's min_seconds error."""
    from ml.config import Config

    data = three_label_cfg(smoke_cfg).snapshot()
    data["audio"]["min_seconds"] = 0.5
    cfg = Config.model_validate(data)
    pa, _ = make_predictor("a")
    ens = EnsemblePredictor({"a": pa}, {"a": 1.0}, [0.5] * 3, "mean", cfg=cfg)
    short = wav_bytes(np.full(800, 0.1, np.float32), 8000)  # 0.1 s
    [res] = ens.predict([("short.wav", short)])
    assert res.error is not None and res.error.startswith("too_short: ")
    with pytest.raises(ValueError, match="needs the config"):
        EnsemblePredictor({"a": pa}, {"a": 1.0}, [0.5] * 3, "mean").predict([("x.wav", short)])


def wav_bytes(wave, sr):
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV")
    return buf.getvalue()


def three_label_cfg(smoke_cfg):
    """The smoke config with the fake predictors' three labels and 0.5-s hops."""
    from ml.config import Config

    data = smoke_cfg.snapshot()
    data["labels"] = [{"code": c, "name": c} for c in ("lo", "mid", "hi")]
    data["inference"]["hop_s"] = 0.5
    return Config.model_validate(data)


def test_ensemble_predictor_end_to_end_with_errors_beside_results(smoke_cfg):
    pa, _models_a = make_predictor("a")
    pb, models_b = make_predictor("b", bias=-5.0)
    ens = EnsemblePredictor(
        {"a": pa, "b": pb}, {"a": 1.0, "b": 1.0}, [0.5, 0.5, 0.5], "mean", cfg=three_label_cfg(smoke_cfg)
    )
    t = np.arange(44100 * 2) / 44100
    good = wav_bytes(np.sin(2 * np.pi * 300 * t).astype(np.float32), 44100)
    silent = wav_bytes(np.zeros(8000, np.float32), 8000)
    res = ens.predict(
        [("good.wav", good), ("bad.wav", b"garbage"), ("quiet.wav", silent), ("gone.wav", "/nonexistent.wav")]
    )
    assert [r.file for r in res] == ["good.wav", "bad.wav", "quiet.wav", "gone.wav"]
    assert res[1].error and res[1].error.startswith("undecodable: ")  # the HTTP API's error text
    assert res[3].error and res[3].error.startswith("unreadable: ")
    assert res[0].duration_s == pytest.approx(2.0)
    assert res[0].instruments == ["lo"]
    assert len(res[0].segments) == 3 and res[0].segments[-1].end_s == pytest.approx(2.0)
    assert res[2].silent and res[2].instruments == []
    d = res[0].to_dict()
    assert set(d) >= {"file", "duration_s", "scores", "instruments", "segments"}
    # weight 0 → the member is never called
    calls_before = [m.calls for m in models_b]
    ens.predict([("good.wav", good)], weights={"a": 1.0, "b": 0.0})
    assert [m.calls for m in models_b] == calls_before


def test_pick_device_respects_scheduler():
    assert pick_device([]).type == "cpu"
    # a (logical) GPU assigned but no CUDA available → CPU fallback, never a crash
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device(["0"]).type == expected


def test_fold_models_share_one_spectrogram_with_identical_scores(smoke_cfg):
    from ml.models import build_classifier

    models = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        models.append(build_classifier(smoke_cfg, "res_genre").eval())
    pred = Predictor("res_genre", models, smoke_cfg.label_codes, window_s=1.0, hop_s=1.0)
    assert pred.shared_front_end
    x = torch.randn(5, models[0].window_samples) * 0.1
    with torch.inference_mode():
        expected = torch.stack([torch.sigmoid(m(x)) for m in models]).mean(0).numpy()
    np.testing.assert_allclose(pred.score_windows(x), expected, rtol=1e-5, atol=1e-6)


def test_ensemble_predictor_names_at_most_the_spec_cap(smoke_cfg):
    """The spec's max_instruments reaches the answer through the one pipeline; without it, every label."""
    from types import SimpleNamespace

    pa, _ = make_predictor("a", bias=5.0)  # white noise fills every band: each label over its threshold
    cfg = three_label_cfg(smoke_cfg)
    noise = 0.1 * np.random.default_rng(0).standard_normal(44100 * 2)
    song = wav_bytes(noise.astype(np.float32), 44100)
    free = EnsemblePredictor({"a": pa}, {"a": 1.0}, [0.5] * 3, "mean", cfg=cfg)
    [r_free] = free.predict([("song.wav", song)])
    assert r_free.instruments == ["lo", "mid", "hi"]
    capped = EnsemblePredictor(
        {"a": pa}, {"a": 1.0}, [0.5] * 3, "mean", cfg=cfg, spec=SimpleNamespace(max_instruments=2)
    )
    [r_cap] = capped.predict([("song.wav", song)])
    top2 = sorted(r_free.scores, key=lambda c: -r_free.scores[c])[:2]
    assert r_cap.instruments == [c for c in ("lo", "mid", "hi") if c in top2]
    assert r_cap.scores == r_free.scores  # the cap changes the decision, never the scores
