"""Mixing: levels, pan, rooms and the bus sum of rendered parts, normalised to a drawn peak."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.data import fx
from ml.data.synth.base import _r, _Retry
from ml.data.synth.parts import _Part
from ml.data.synth.render import _Renderer
from ml.data.synth.styles import _STYLES


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _dbfs(x: np.ndarray) -> float:
    return 20.0 * math.log10(max(_rms(x), 1e-12))


def _active_fraction(x: np.ndarray, floor_dbfs: float, frame: int = 2048) -> float:
    """Share of ``frame``-sample frames (46 ms at 44.1 kHz) of a stereo signal above ``floor_dbfs``."""
    n = x.shape[1] // frame
    if n == 0:
        return 0.0
    frames = x[:, : n * frame].reshape(2, n, frame)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=(0, 2)))
    return float(np.mean(rms > 10 ** (floor_dbfs / 20)))


def _pan(x: np.ndarray, pan: float) -> np.ndarray:
    """Constant-power pan in [-1, 1], unity gain at the centre."""
    angle = (pan + 1) * math.pi / 4
    gains = np.array([math.cos(angle), math.sin(angle)], dtype=np.float32)[:, None] * math.sqrt(2)
    return x * gains


@dataclass(frozen=True)
class _Room:
    irs: np.ndarray | None  # [2, L] unit-energy impulse responses (left, right), None = dry
    wet: float
    rt60: float
    info: dict[str, Any] = field(default_factory=dict)


def _draw_room(rng: np.random.Generator, genre: str, sample_rate: int) -> _Room:
    """A dry room (15 %) or a synthetic one: genre decay range, early reflections, two-band tail, width."""
    if rng.random() < 0.15:
        return _Room(None, 0.0, 0.0, {"dry": True})
    lo, hi = _STYLES[genre].rt60
    rt60 = float(rng.uniform(lo * 0.7, hi * 1.3))
    wet = float(rng.uniform(0.05, 0.4))
    irs, info = fx.synth_ir(
        rng,
        sample_rate,
        rt60,
        predelay_s=float(rng.uniform(0.0, 0.04)),
        width=float(rng.uniform(0.3, 1.0)),
    )
    return _Room(irs, wet, rt60, {**info, "wet": round(wet, 3)})


def _reverb(x: np.ndarray, room: _Room) -> np.ndarray:
    """Mix ``x`` [2, n] with its convolution by the room IRs; output length n (tail cut)."""
    if room.irs is None or room.wet == 0:
        return x
    wet = fx.convolve(x, room.irs)
    return (math.sqrt(1 - room.wet) * x + math.sqrt(room.wet) * wet).astype(np.float32)


def _fade(x: np.ndarray, sample_rate: int, seconds: float = 0.01) -> np.ndarray:
    n = min(int(seconds * sample_rate), x.shape[1] // 2)
    if n <= 0:
        return x
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    y = x.copy()
    y[:, :n] *= ramp
    y[:, -n:] *= ramp[::-1]
    return y


def _render_parts(renderer: _Renderer, parts: Sequence[_Part], n: int) -> dict[str, np.ndarray]:
    """Render, shape (drive, EQ, compression), unit-normalise, apply gain and pan; sum into buses.

    Empty/silent parts are skipped.
    """
    buses: dict[str, np.ndarray] = {}
    sr = renderer.sample_rate
    for part in parts:
        if not part.inst.notes:
            continue
        audio, part.preset = renderer.render(part.inst, part.library, n, part.fx.get("gens"))
        if _rms(audio) < 1e-7:
            continue
        audio = fx.apply_drive(audio, part.fx.get("drive"), sr)
        audio = fx.apply_eq(audio, part.fx.get("eq") or [], sr)
        audio = fx.apply_compressor(audio, part.fx.get("compressor"), sr)
        level = _rms(audio)
        if level < 1e-7:
            continue
        audio = _pan(audio / level * 10 ** (part.gain_db / 20), part.pan).astype(np.float32)
        buses[part.bus] = buses[part.bus] + audio if part.bus in buses else audio
    return buses


def _finish(
    rng: np.random.Generator, buses: dict[str, np.ndarray], room: _Room, sample_rate: int
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """Reverb every bus, add drawn noise, normalise the peak; returns scaled buses, their sum and params."""
    wet = {name: _reverb(x, room) for name, x in buses.items()}
    mix = sum(wet.values(), np.zeros_like(next(iter(wet.values()))))
    noise_params = fx.draw_noise(rng)
    if noise_params is not None:
        noise = fx.make_noise(rng, noise_params, mix.shape, sample_rate)
        wet["noise"] = noise * (_rms(mix) * 10 ** (-noise_params["snr_db"] / 20))
        mix = mix + wet["noise"]
    peak = float(np.max(np.abs(mix)))
    if peak <= 0:
        raise _Retry("silent mix")
    peak_db = -float(rng.uniform(0.5, 6.0))  # peak between -6 and -0.5 dBFS
    gain = 10 ** (peak_db / 20) / peak
    info = {"noise": noise_params, "peak_dbfs": _r(peak_db, 2)}
    return {k: v * gain for k, v in wet.items()}, mix * gain, info
