from __future__ import annotations

import math

import numpy as np

from ml.data import fx

SR = 22050


def _sine(f: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return np.stack([amp * np.sin(2 * np.pi * f * t)] * 2).astype(np.float32)


def _db(x: np.ndarray) -> float:
    return 20 * math.log10(float(np.sqrt(np.mean(np.square(x[:, SR // 4 :], dtype=np.float64)))))


def test_eq_matches_the_band_gains() -> None:
    bands = [{"type": "peak", "f": 1000.0, "gain_db": 6.0, "q": 1.0}]
    np.testing.assert_allclose(_db(fx.apply_eq(_sine(1000), bands, SR)) - _db(_sine(1000)), 6.0, atol=0.1)
    np.testing.assert_allclose(_db(fx.apply_eq(_sine(100), bands, SR)) - _db(_sine(100)), 0.0, atol=0.5)
    shelf = [{"type": "high_shelf", "f": 3000.0, "gain_db": -8.0, "q": 0.71}]
    np.testing.assert_allclose(_db(fx.apply_eq(_sine(9000), shelf, SR)) - _db(_sine(9000)), -8.0, atol=0.5)
    np.testing.assert_allclose(_db(fx.apply_eq(_sine(200), shelf, SR)) - _db(_sine(200)), 0.0, atol=0.3)
    rng = np.random.default_rng(0)
    for b in fx.draw_eq(rng, SR):
        assert 0 < b["f"] < 0.4 * SR and abs(b["gain_db"]) <= 8


def test_compressor_narrows_dynamics_and_keeps_rms() -> None:
    x = np.concatenate([_sine(440, 0.5, 0.05), _sine(440, 0.5, 0.8)], axis=1)
    params = {"threshold_db": -12.0, "ratio": 4.0, "attack_ms": 5.0, "release_ms": 50.0}
    y = fx.apply_compressor(x, params, SR)
    half = x.shape[1] // 2

    def spread(z: np.ndarray) -> float:
        return _db(z[:, half + SR // 10 :]) - _db(z[:, SR // 10 : half])

    assert spread(y) < spread(x) - 3.0
    np.testing.assert_allclose(_db(y), _db(x), atol=0.2)
    assert fx.apply_compressor(x, None, SR) is x


def test_drive_adds_harmonics() -> None:
    x = _sine(220)
    y = fx.apply_drive(x, {"kind": "distortion", "pre_gain_db": 24.0, "asymmetry": 0.2, "cab_hz": 6000.0}, SR)
    spec = np.abs(np.fft.rfft(y[0]))
    freqs = np.fft.rfftfreq(y.shape[1], 1 / SR)
    fundamental = spec[np.argmin(np.abs(freqs - 220))]
    third = spec[np.argmin(np.abs(freqs - 660))]
    assert third > 0.05 * fundamental  # a clean sine has none
    np.testing.assert_allclose(_db(y), _db(x), atol=0.5)


def test_rooms_and_noise_are_seeded() -> None:
    a, info_a = fx.synth_ir(np.random.default_rng(1), SR, 0.8, predelay_s=0.01, width=0.5)
    b, info_b = fx.synth_ir(np.random.default_rng(1), SR, 0.8, predelay_s=0.01, width=0.5)
    assert np.array_equal(a, b) and info_a == info_b
    np.testing.assert_allclose(np.sum(a**2, axis=1), 1.0, rtol=1e-6)
    tail = a[0, int(0.6 * SR) :]
    head = a[0, int(0.01 * SR) : int(0.2 * SR)]
    assert np.sqrt(np.mean(tail**2)) < 0.1 * np.sqrt(np.mean(head**2))  # it decays
    for kind in ("white", "pink", "brown", "hum"):
        params = {"kind": kind, "snr_db": 40.0, "mains_hz": 50.0 if kind == "hum" else None}
        n = fx.make_noise(np.random.default_rng(2), params, (2, SR), SR)
        np.testing.assert_allclose(np.sqrt(np.mean(n.astype(np.float64) ** 2)), 1.0, rtol=1e-3)
