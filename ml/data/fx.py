"""Seeded audio effects that vary how a rendered stem sounds: EQ, compression, drive, rooms, noise.

Every ``draw_*`` function takes a numpy ``Generator`` and returns a small JSON-able dict of parameters
(written to the clip's sidecar under ``render``); every ``apply_*`` function is a pure function of the
audio and those parameters, so a clip is reproducible from its seed and explainable from its sidecar.
All processing is numpy only (no scipy: importing ``scipy.signal`` costs each render worker 0.5-20 s
depending on the machine's load): filters are applied as their exact frequency responses on one FFT of
the stem (zero-padded, so the short EQ tails do not wrap), the compressor's level detector runs on
1-ms blocks, rooms are one FFT convolution. A few milliseconds per second of stereo audio.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

_PAD_S = 0.25  # zero padding for FFT filtering: longer than any EQ/cabinet filter's ringing


def fast_len(n: int) -> int:
    """The smallest 2^a * 3^b * 5^c >= n: pocketfft is slow on lengths with large prime factors."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35 << max(0, (-(-n // p35) - 1).bit_length())  # times the smallest power of 2 reaching n
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _filter_fft(x: np.ndarray, response: Any, sample_rate: int) -> np.ndarray:
    """Apply a filter given as ``response(freqs_hz) -> complex gains`` to ``x`` ``[channels, n]``."""
    n = x.shape[-1]
    size = fast_len(n + int(_PAD_S * sample_rate))
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    spec = np.fft.rfft(x.astype(np.float64), size, axis=-1) * response(freqs)
    return np.fft.irfft(spec, size, axis=-1)[..., :n]


def _biquad_response(row: np.ndarray, z1: np.ndarray) -> np.ndarray:
    """Frequency response of one SOS row at ``z1 = exp(-j w)``."""
    b0, b1, b2, _, a1, a2 = row
    z2 = z1 * z1
    return (b0 + b1 * z1 + b2 * z2) / (1 + a1 * z1 + a2 * z2)


def _lowpass_mag(freqs: np.ndarray, cutoff_hz: float, order: int = 2) -> np.ndarray:
    """Butterworth magnitude response (applied zero-phase)."""
    return 1.0 / np.sqrt(1.0 + (freqs / cutoff_hz) ** (2 * order))


# ---------------------------------------------------------------------------------------------- EQ


def _peaking(f0: float, gain_db: float, q: float, sr: int) -> np.ndarray:
    """RBJ cookbook peaking biquad as one SOS row."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * f0 / sr
    alpha = math.sin(w0) / (2 * q)
    b = [1 + alpha * a, -2 * math.cos(w0), 1 - alpha * a]
    den = [1 + alpha / a, -2 * math.cos(w0), 1 - alpha / a]
    return np.array([*(np.array(b) / den[0]), 1.0, den[1] / den[0], den[2] / den[0]])


def _shelf(f0: float, gain_db: float, sr: int, high: bool) -> np.ndarray:
    """RBJ cookbook shelving biquad (slope 1) as one SOS row."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * f0 / sr
    cw, alpha = math.cos(w0), math.sin(w0) / 2 * math.sqrt(2)
    sa = 2 * math.sqrt(a) * alpha
    if high:
        b = [
            a * ((a + 1) + (a - 1) * cw + sa),
            -2 * a * ((a - 1) + (a + 1) * cw),
            a * ((a + 1) + (a - 1) * cw - sa),
        ]
        den = [(a + 1) - (a - 1) * cw + sa, 2 * ((a - 1) - (a + 1) * cw), (a + 1) - (a - 1) * cw - sa]
    else:
        b = [
            a * ((a + 1) - (a - 1) * cw + sa),
            2 * a * ((a - 1) - (a + 1) * cw),
            a * ((a + 1) - (a - 1) * cw - sa),
        ]
        den = [(a + 1) + (a - 1) * cw + sa, -2 * ((a - 1) + (a + 1) * cw), (a + 1) + (a - 1) * cw - sa]
    return np.array([*(np.array(b) / den[0]), 1.0, den[1] / den[0], den[2] / den[0]])


def draw_eq(rng: np.random.Generator, sample_rate: int, max_db: float = 6.0) -> list[dict[str, Any]]:
    """A random EQ: 1-3 peaking bands and, each with probability 0.5, a low and a high shelf.

    Args:
        rng: Random generator.
        sample_rate: Sample rate in Hz (bands stay below 0.4 of it).
        max_db: Largest boost/cut in dB.

    Returns:
        Bands ``{"type": "peak"|"low_shelf"|"high_shelf", "f": Hz, "gain_db", "q"}``.
    """
    top = 0.4 * sample_rate
    bands: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(1, 4))):
        f = float(np.exp(rng.uniform(math.log(120.0), math.log(min(9000.0, top)))))
        bands.append(
            {
                "type": "peak",
                "f": round(f, 1),
                "gain_db": round(float(rng.uniform(-max_db, max_db)), 2),
                "q": round(float(rng.uniform(0.5, 2.5)), 2),
            }
        )
    if rng.random() < 0.5:
        bands.append(
            {
                "type": "low_shelf",
                "f": round(float(rng.uniform(80, 300)), 1),
                "gain_db": round(float(rng.uniform(-6, 4)), 2),
                "q": 0.71,
            }
        )
    if rng.random() < 0.5:
        f = float(rng.uniform(3000, min(9000.0, top)))
        bands.append(
            {
                "type": "high_shelf",
                "f": round(f, 1),
                "gain_db": round(float(rng.uniform(-8, 4)), 2),
                "q": 0.71,
            }
        )
    return bands


def apply_eq(x: np.ndarray, bands: list[Mapping[str, Any]], sample_rate: int) -> np.ndarray:
    """Filter ``x`` ``[channels, n]`` through the bands of :func:`draw_eq`."""
    if not bands:
        return x
    rows = []
    for b in bands:
        if b["type"] == "peak":
            rows.append(_peaking(b["f"], b["gain_db"], b["q"], sample_rate))
        else:
            rows.append(_shelf(b["f"], b["gain_db"], sample_rate, high=b["type"] == "high_shelf"))

    def response(freqs: np.ndarray) -> np.ndarray:
        z1 = np.exp(-2j * np.pi * freqs / sample_rate)
        h = _biquad_response(rows[0], z1)
        for row in rows[1:]:
            h *= _biquad_response(row, z1)
        return h

    return _filter_fft(x, response, sample_rate).astype(np.float32)


# ---------------------------------------------------------------------------------------------- dynamics


def draw_compressor(rng: np.random.Generator, prob: float = 0.5) -> dict[str, Any] | None:
    """A feed-forward compressor setting, or None (no compression) with probability ``1 - prob``."""
    if rng.random() >= prob:
        return None
    return {
        "threshold_db": round(float(rng.uniform(-30, -10)), 2),  # relative to the stem's RMS peak level
        "ratio": round(float(rng.uniform(1.5, 6.0)), 2),
        "attack_ms": round(float(rng.uniform(2, 30)), 2),
        "release_ms": round(float(rng.uniform(40, 300)), 2),
    }


def apply_compressor(x: np.ndarray, params: Mapping[str, Any] | None, sample_rate: int) -> np.ndarray:
    """Compress ``x`` ``[channels, n]``; the threshold is relative to the stem's loudest 10-ms RMS.

    The level detector follows the channel-summed power on 1-ms blocks with separate attack and release
    time constants (a Python loop over blocks, not samples); the gain is interpolated back to samples.
    Make-up gain restores the input RMS.
    """
    if not params:
        return x
    power = np.mean(np.square(x, dtype=np.float64), axis=0)
    n = power.shape[0]
    blk = max(1, int(0.001 * sample_rate))
    nb = -(-n // blk)
    pb = np.pad(power, (0, nb * blk - n)).reshape(nb, blk).mean(axis=1)
    a_att = math.exp(-blk / (params["attack_ms"] * 1e-3 * sample_rate))
    a_rel = math.exp(-blk / (params["release_ms"] * 1e-3 * sample_rate))
    env = np.empty(nb)
    e = 0.0
    for i, v in enumerate(pb.tolist()):
        a = a_att if v > e else a_rel
        e = a * e + (1 - a) * v
        env[i] = e
    level_db = 10 * np.log10(np.maximum(env, 1e-20))
    win = 10  # blocks: the loudest 10-ms stretch is the reference level
    ref_db = 10 * math.log10(max(float(np.max(np.convolve(pb, np.ones(win) / win, mode="same"))), 1e-20))
    over = np.maximum(level_db - (ref_db + params["threshold_db"]), 0.0)
    gain_blocks = 10 ** (-over * (1 - 1 / params["ratio"]) / 20)
    gain = np.interp(np.arange(n), np.arange(nb) * blk + blk / 2, gain_blocks)
    y = x * gain[None, :]
    before, after = float(np.sqrt(np.mean(power))), float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    return (y * (before / after if after > 0 else 1.0)).astype(np.float32)


def draw_drive(rng: np.random.Generator, sample_rate: int) -> dict[str, Any]:
    """An amp-like drive for electric guitar: clean, crunch or distortion, with a cabinet low-pass."""
    kind = str(rng.choice(["clean", "crunch", "distortion"], p=[0.3, 0.4, 0.3]))
    pre_db = {"clean": (0.0, 4.0), "crunch": (6.0, 16.0), "distortion": (16.0, 30.0)}[kind]
    return {
        "kind": kind,
        "pre_gain_db": round(float(rng.uniform(*pre_db)), 2),
        "asymmetry": round(float(rng.uniform(0.0, 0.3)), 3),
        "cab_hz": round(float(rng.uniform(2500.0, min(7000.0, 0.4 * sample_rate))), 1),
    }


def apply_drive(x: np.ndarray, params: Mapping[str, Any] | None, sample_rate: int) -> np.ndarray:
    """Tanh waveshaper (asymmetric bias adds even harmonics) and a 2nd-order Butterworth cabinet low-pass."""
    if not params:
        return x
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    if rms <= 0:
        return x
    g = 10 ** (params["pre_gain_db"] / 20) / (4 * rms)  # drive relative to the stem's level
    bias = params["asymmetry"]
    y = np.tanh(g * x + bias) - math.tanh(bias)
    y = _filter_fft(y, lambda f: _lowpass_mag(f, params["cab_hz"]), sample_rate)
    out_rms = float(np.sqrt(np.mean(np.square(y))))
    return (y * (rms / out_rms if out_rms > 0 else 1.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- rooms


def synth_ir(
    rng: np.random.Generator, sample_rate: int, rt60: float, *, predelay_s: float, width: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """A synthetic stereo room impulse response with early reflections and a two-band tail.

    The tail is exponentially decaying noise whose low band (< a drawn crossover) decays with ``rt60``
    and high band faster (air absorption, drawn ratio); a handful of early reflections (5-80 ms, decaying
    amplitudes) precede it; ``width`` blends the right channel between the left's noise (mono room) and
    independent noise (wide room).

    Returns:
        ``[2, L]`` unit-energy IRs and the drawn parameters.
    """
    n = max(int(rt60 * sample_rate), 16)
    pre = int(predelay_s * sample_rate)
    t = np.arange(n) / sample_rate
    crossover = float(rng.uniform(1500.0, 6000.0))
    hf_ratio = float(rng.uniform(0.3, 0.8))  # high band rt60 as a share of the low band's
    left = rng.standard_normal(n)
    right = width * rng.standard_normal(n) + (1 - width) * left
    size = fast_len(n)
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    split = _lowpass_mag(freqs, min(crossover, 0.45 * sample_rate))
    irs = np.zeros((2, pre + n))
    for ch, noise in enumerate((left, right)):
        low = np.fft.irfft(np.fft.rfft(noise, size) * split, size)[:n]
        high = noise - low
        irs[ch, pre:] = low * np.exp(-6.91 * t / rt60) + high * np.exp(-6.91 * t / (rt60 * hf_ratio))
    n_early = int(rng.integers(3, 9))
    taps = []
    for _ in range(n_early):
        delay = float(rng.uniform(0.005, 0.08))
        idx = pre + int(delay * sample_rate)
        if idx < irs.shape[1]:
            amp = float(rng.uniform(0.3, 1.0)) * math.exp(-delay / 0.05) * 6
            irs[int(rng.integers(2)), idx] += amp * (1 if rng.random() < 0.5 else -1)
            taps.append(round(delay, 4))
    irs /= np.sqrt(np.sum(irs**2, axis=1, keepdims=True)) + 1e-12
    return irs, {
        "rt60": round(rt60, 3),
        "predelay_s": round(predelay_s, 4),
        "width": round(width, 3),
        "crossover_hz": round(crossover, 1),
        "hf_rt60_ratio": round(hf_ratio, 3),
        "early_reflections_s": sorted(taps),
    }


def convolve(x: np.ndarray, irs: np.ndarray) -> np.ndarray:
    """Convolve each channel of ``x`` ``[2, n]`` with its IR; output length n (tail cut)."""
    n = x.shape[1]
    size = fast_len(n + irs.shape[1] - 1)
    spec = np.fft.rfft(x.astype(np.float64), size, axis=1) * np.fft.rfft(irs, size, axis=1)
    return np.fft.irfft(spec, size, axis=1)[:, :n]


# ---------------------------------------------------------------------------------------------- noise


def draw_noise(rng: np.random.Generator) -> dict[str, Any] | None:
    """Background noise (white, pink or brown hiss, or mains hum) at a drawn SNR, or None (40 %)."""
    if rng.random() < 0.4:
        return None
    kind = str(rng.choice(["white", "pink", "brown", "hum"], p=[0.3, 0.35, 0.2, 0.15]))
    return {
        "kind": kind,
        "snr_db": round(float(rng.uniform(30.0, 60.0)), 2),
        "mains_hz": float(rng.choice([50.0, 60.0])) if kind == "hum" else None,
    }


def make_noise(
    rng: np.random.Generator, params: Mapping[str, Any], shape: tuple[int, int], sample_rate: int
) -> np.ndarray:
    """Unit-RMS noise of ``shape`` ``[2, n]`` of the drawn kind (coloured by FFT shaping)."""
    n = shape[1]
    if params["kind"] == "hum":
        t = np.arange(n) / sample_rate
        f0 = params["mains_hz"]
        x = sum(
            (0.6**k) * np.sin(2 * math.pi * f0 * k * t + rng.uniform(0, 2 * math.pi)) for k in range(1, 6)
        )
        x = np.stack([x, x]) + 0.05 * rng.standard_normal(shape)
    else:
        x = rng.standard_normal(shape)
        if params["kind"] != "white":
            exponent = 0.5 if params["kind"] == "pink" else 1.0
            size = fast_len(n)
            spec = np.fft.rfft(x, size, axis=1)
            freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
            spec /= np.maximum(freqs, 20.0) ** exponent
            x = np.fft.irfft(spec, size, axis=1)[:, :n]
    rms = float(np.sqrt(np.mean(np.square(x))))
    return (x / rms if rms > 0 else x).astype(np.float32)


__all__ = [
    "apply_compressor",
    "apply_drive",
    "apply_eq",
    "convolve",
    "draw_compressor",
    "draw_drive",
    "draw_eq",
    "draw_noise",
    "make_noise",
    "synth_ir",
]
