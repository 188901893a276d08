"""``mpic_additive``: the project's own synthesiser, written in numpy (no samples from any library).

It renders a ``pretty_midi.Instrument`` note by note with a voice chosen by the General MIDI program:

- piano: inharmonic partials (stiff string, ``f_k = k f0 sqrt(1 + B k^2)``), per-partial decay (high
  partials die first), a short hammer noise;
- plucked strings (acoustic/electric guitar, bass, harp, pizzicato): Karplus-Strong, computed one delay
  period at a time (a numpy block per period, not a Python loop per sample) and pitch-corrected by
  resampling;
- bowed strings (violin, cello, ensembles): sawtooth-like harmonics through fixed body resonances, slow
  bow attack, vibrato, bow noise;
- voice and choir: a glottal source (harmonics falling 12 dB/octave) shaped by the formants of a vowel
  drawn per note;
- winds: flute (nearly sinusoidal + breath noise), clarinet (odd harmonics), saxophone and double reeds
  (formant-shaped harmonics, breath), brass (brightness rising with loudness and over the attack);
- organ (drawbar harmonics, tremolo), mallets (inharmonic modes), synth leads and pads;
- drums on channel 10: kick and toms (pitch-swept sines), snare (noise + tone), hats and cymbals
  (differentiated noise), cowbell, congas, claves, shaker.

Randomness (vowels, drawbars, noise) is seeded from the instrument's content, so a part renders the
same every time. The FluidSynth generator offsets that ``ml.data.synth`` draws map onto the voice:
filter cutoff -> a low-pass on the stem, attack/release -> envelope times, vibrato depth/rate and fine
tuning -> the pitch curve (filter resonance has no equivalent and is ignored).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pretty_midi

from ml.data import fx

VOICES = (
    "piano",
    "mallet",
    "organ",
    "guitar_ac",
    "guitar_el",
    "bass",
    "bowed",
    "pluck",
    "string_ens",
    "voice",
    "brass",
    "sax",
    "double_reed",
    "clarinet",
    "flute",
    "synth_lead",
    "pad",
)

# Vowel formants (Hz) and bandwidths (Hz) of a mid voice: F1, F2, F3.
_VOWELS: Mapping[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "a": ((730.0, 1090.0, 2440.0), (90.0, 110.0, 160.0)),
    "e": ((530.0, 1840.0, 2480.0), (60.0, 100.0, 150.0)),
    "i": ((310.0, 2200.0, 2960.0), (50.0, 120.0, 170.0)),
    "o": ((570.0, 840.0, 2410.0), (70.0, 80.0, 160.0)),
    "u": ((340.0, 870.0, 2240.0), (50.0, 70.0, 140.0)),
}


def voice_for(program: int, is_drum: bool = False) -> str:
    """The voice that renders a General MIDI program (``"drums"`` on channel 10)."""
    if is_drum:
        return "drums"
    fam = program // 8
    if fam == 0:
        return "pluck" if program in (6, 7) else "piano"
    if fam == 1:
        return "mallet"
    if fam == 2:
        return "organ" if program <= 20 else "double_reed"  # accordion, harmonica: free reeds
    if fam == 3:
        return "guitar_ac" if program <= 25 else "guitar_el"
    if fam == 4:
        return "bass"
    if fam == 5:
        return {45: "pluck", 46: "pluck", 47: "mallet"}.get(program, "bowed")
    if fam == 6:
        return "voice" if program in (52, 53, 54) else ("brass" if program == 55 else "string_ens")
    if fam == 7:
        return "brass"
    if fam == 8:
        if program <= 67:
            return "sax"
        return "clarinet" if program == 71 else "double_reed"
    if fam == 9:
        return "flute"
    if fam == 10:
        return "synth_lead"
    return "pad"


def _env(
    n: int, sr: int, attack: float, release_at: int, release: float, decay_tau: float | None = None
) -> np.ndarray:
    """Attack ramp, optional exponential decay, release ramp starting at sample ``release_at``."""
    t = np.arange(n) / sr
    e = np.minimum(1.0, t / max(attack, 1e-4))
    if decay_tau is not None:
        e = e * np.exp(-t / decay_tau)
    rel = np.ones(n)
    if release_at < n:
        tail = (np.arange(n - release_at) / sr) / max(release, 1e-3)
        rel[release_at:] = np.clip(1.0 - tail, 0.0, 1.0) ** 2
    return e * rel


def _phase(
    f0: float, n: int, sr: int, vib_cents: float, vib_hz: float, rng: np.random.Generator
) -> np.ndarray:
    """Phase (radians) of a fundamental with vibrato (delayed onset) and slight drift."""
    t = np.arange(n) / sr
    onset = np.clip(t / 0.25, 0.0, 1.0)
    cents = vib_cents * onset * np.sin(2 * np.pi * vib_hz * t + rng.uniform(0, 2 * np.pi))
    freq = f0 * 2 ** (cents / 1200)
    return 2 * np.pi * np.cumsum(freq) / sr


def _formant_gain(freqs: np.ndarray, centers: tuple[float, ...], widths: tuple[float, ...]) -> np.ndarray:
    g = np.zeros_like(freqs)
    for i, (c, w) in enumerate(zip(centers, widths, strict=True)):
        g += (0.6**i) / (1 + ((freqs - c) / (w / 2)) ** 2)
    return g + 0.02


def _karplus(f0: float, n: int, sr: int, tau: float, rng: np.random.Generator, bright: float) -> np.ndarray:
    """Karplus-Strong pluck, one delay period per numpy step, resampled to the exact pitch."""
    period = max(2, int(sr / f0))
    m = int(n * (sr / f0) / period) + period + 2  # samples at the integer period before resampling
    y = np.zeros(m)
    burst = rng.uniform(-1, 1, period)
    pick = max(1, int(period * rng.uniform(0.1, 0.3)))  # pick position: comb-filtered excitation
    burst = burst - np.roll(burst, pick) * 0.5
    if bright < 1:  # softer pluck: smooth the burst
        k = max(1, int((1 - bright) * 6))
        burst = np.convolve(burst, np.ones(k) / k, mode="same")
    y[:period] = burst
    g = math.exp(-period / (sr * tau))
    start = period
    while start < m:
        stop = min(start + period, m)
        prev = y[start - period : stop - period]
        prev2 = (
            y[start - period - 1 : stop - period - 1]
            if start - period - 1 >= 0
            else np.concatenate(([0.0], y[start - period : stop - period - 1]))
        )
        y[start:stop] = g * 0.5 * (prev + prev2)
        start = stop
    # the loop sounds at sr / (period + 0.5); stretch it to f0
    ratio = (sr / (period + 0.5)) / f0
    src = np.arange(n) * (1 / ratio) if ratio > 0 else np.arange(n)
    return np.interp(src, np.arange(m), y, right=0.0)


_TABLE = 2048


def _table(amps: np.ndarray) -> np.ndarray:
    """One period of a waveform with sine harmonics of ``amps`` (harmonic 1 first), closed for interp."""
    spec = np.zeros(_TABLE // 2 + 1, dtype=np.complex128)
    k = min(len(amps), _TABLE // 2 - 1)
    spec[1 : k + 1] = -0.5j * _TABLE * np.asarray(amps[:k])
    tab = np.fft.irfft(spec, _TABLE)
    return np.append(tab, tab[0])


_GRID = np.arange(_TABLE + 1, dtype=np.float64)


def _osc(tab: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Wavetable oscillator (linear interpolation in one period): O(samples) per note, not O(harmonics)."""
    return np.interp(np.mod(phase, 2 * np.pi) * (_TABLE / (2 * np.pi)), _GRID, tab)


def _note(
    voice: str,
    f0: float,
    vel: int,
    dur: float,
    sr: int,
    rng: np.random.Generator,
    p: Mapping[str, float],
    extra: Mapping[str, Any],
) -> np.ndarray:
    """One note (mono), including its release tail."""
    loud = (vel / 127) ** 1.5
    atk_x, rel_x = p["attack_scale"], p["release_scale"]
    release = {"piano": 0.25, "organ": 0.06, "bowed": 0.2, "string_ens": 0.35, "voice": 0.15, "pad": 0.6}.get(
        voice, 0.12
    ) * rel_x
    sustain_n = max(1, int(dur * sr))
    plucked = voice in ("piano", "mallet", "guitar_ac", "guitar_el", "bass", "pluck")
    tail = max(release, 1.0 if plucked else release)
    n = sustain_n + int(tail * sr)
    t = np.arange(n) / sr
    nyq = 0.45 * sr
    if voice in ("guitar_ac", "guitar_el", "bass", "pluck"):
        tau = {"guitar_ac": 1.2, "guitar_el": 2.5, "bass": 1.5, "pluck": 0.8}[voice] * (0.8 + 0.4 * loud)
        x = _karplus(f0, n, sr, tau, rng, bright=0.3 + 0.4 * loud)
        return x * loud * _env(n, sr, 0.002 * atk_x, sustain_n, 0.08 * rel_x)
    if voice == "mallet":  # a few inharmonic bar modes: cheap as explicit sines
        ratios = np.array([1.0, 3.93, 9.2, 16.0])
        amps = np.array([1.0, 0.4, 0.15, 0.05])
        keep = ratios * f0 < nyq
        x = np.sum(
            (amps[keep, None] * np.exp(-np.outer(ratios[keep], t) / 1.2))
            * np.sin(2 * np.pi * f0 * np.outer(ratios[keep], t)),
            axis=0,
        )
        return np.asarray(x * loud)
    kmax = int(max(1, min(60, nyq // (f0 * 1.03))))
    k = np.arange(1, kmax + 1, dtype=np.float64)
    hf = k * f0
    ph = _phase(f0, n, sr, p["vibrato_cents"], p["vibrato_hz"], rng)
    noise = 0.0
    if voice == "piano":
        # bright at the hammer, high partials dying first (crossfade to a dull table); two unison strings
        bright = (1 / k**1.1) * (0.3 + loud) ** (k / 10)
        dull = bright * np.exp(-0.5 * (k - 1))
        tau0 = float(np.interp(f0, [30, 1000, 4000], [4.0, 1.2, 0.4]))
        w = np.exp(-t / (0.25 * tau0))
        detune = 2 ** (float(rng.uniform(0.5, 2.0)) / 1200)
        x = sum(
            w * _osc(_table(bright), ph * d) + (1 - w) * _osc(_table(dull), ph * d) for d in (1.0, detune)
        )
        x = x * np.exp(-t / tau0) / 2
        x = x + rng.standard_normal(n) * np.exp(-t / 0.008) * 0.05 * loud  # hammer
        return np.asarray(x * loud * _env(n, sr, 0.002 * atk_x, sustain_n, 0.25 * rel_x))
    if voice == "organ":
        draw = np.asarray(extra["drawbars"])[:kmax]
        x = _osc(_table(draw), ph) * (1 + 0.15 * np.sin(2 * np.pi * extra["tremolo_hz"] * t))
        return np.asarray(x * 0.5 * (0.6 + 0.4 * loud) * _env(n, sr, 0.008 * atk_x, sustain_n, release))
    if voice in ("bowed", "string_ens"):
        body = extra["body"]
        tab = _table((1 / k) * _formant_gain(hf, body[0], body[1]))
        if voice == "string_ens":
            x = np.sum([_osc(tab, ph * 2 ** (d / 1200)) for d in (-8.0, 0.0, 7.0)], axis=0) / 2
            attack = 0.25
        else:
            x = _osc(tab, ph)
            attack = 0.09
        noise = 0.03
    elif voice == "voice":
        centers, widths = _VOWELS[str(rng.choice(list(_VOWELS)))]
        x = _osc(_table((1 / k**2) * _formant_gain(hf, centers, widths) * 8), ph)
        attack, noise = 0.08, 0.01
    elif voice == "flute":
        x = _osc(_table(np.array([1.0, 0.3, 0.12, 0.05, 0.02])[:kmax]), ph)
        attack, noise = 0.06, 0.06
    elif voice == "clarinet":
        x = _osc(_table(np.where(k % 2 == 1, 1 / k, 0.08 / k) * np.exp(-hf / 4000)), ph)
        attack, noise = 0.04, 0.02
    elif voice in ("sax", "double_reed"):
        centers = (550.0, 1500.0, 2600.0) if voice == "sax" else (1100.0, 2700.0, 3800.0)
        x = _osc(_table((1 / k**0.7) * _formant_gain(hf, centers, (300.0, 500.0, 700.0))), ph)
        attack, noise = 0.035, 0.04
    elif voice == "brass":
        # brighter when louder, and the high partials speak after the low ones (crossfade dull -> bright)
        alpha = 2.2 - 1.4 * loud
        w = np.clip(t / 0.08, 0.0, 1.0)
        x = (1 - w) * _osc(_table(1 / k ** (alpha + 1.0)), ph) + w * _osc(_table(1 / k**alpha), ph)
        attack, noise = 0.02, 0.01
    elif voice == "synth_lead":
        tab = _table(1 / k)
        x = (_osc(tab, ph) + _osc(tab, ph * 2 ** (9 / 1200))) / 2
        attack = 0.01
    else:  # pad
        tab = _table((1 / k) / (1 + (hf / 1800) ** 2))
        x = np.sum([_osc(tab, ph * 2 ** (d / 1200)) for d in (-10.0, 0.0, 10.0)], axis=0) / 2
        attack = 0.35
    if noise:  # breath / bow noise, band-limited around the note's register (a moving average: O(n))
        width = max(1, int(sr / (2 * min(4 * f0 + 1500.0, 0.45 * sr))))
        c = np.cumsum(rng.standard_normal(n + width))
        hiss = (c[width:] - c[:-width]) / width
        x = x + noise * np.std(x) / max(float(np.std(hiss)), 1e-12) * hiss
    return np.asarray(x * loud * _env(n, sr, attack * atk_x, sustain_n, release))


def _drum(key: int, vel: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    loud = (vel / 127) ** 1.5
    dur = 1.5 if key in (49, 51, 52, 55, 57, 59) else 0.5
    n = int(dur * sr)
    t = np.arange(n) / sr
    white = rng.standard_normal(n)
    hiss = np.diff(np.diff(white, prepend=0.0), prepend=0.0) / 2  # differentiated twice: high-passed

    def sweep(f_hi: float, f_lo: float, tau: float) -> np.ndarray:
        f = f_lo + (f_hi - f_lo) * np.exp(-t / 0.03)
        return np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / tau)

    if key in (35, 36):
        x = sweep(160, 48, 0.25)
    elif key in (38, 40):
        x = 0.6 * white * np.exp(-t / 0.12) + 0.5 * sweep(240, 180, 0.08)
    elif key == 37:
        x = 0.5 * white * np.exp(-t / 0.01) + np.sin(2 * np.pi * 1100 * t) * np.exp(-t / 0.02)
    elif key in (42, 44):
        x = hiss * np.exp(-t / 0.04)
    elif key == 46:
        x = hiss * np.exp(-t / 0.3)
    elif key in (49, 52, 55, 57):
        x = hiss * np.exp(-t / 1.0)
    elif key in (51, 53, 59):
        bell = sum(np.sin(2 * np.pi * f * t) for f in (2900.0, 4410.0, 5870.0)) / 3
        x = (0.7 * hiss + 0.3 * bell) * np.exp(-t / 0.5)
    elif key in (41, 43, 45, 47, 48, 50):
        base = {41: 80, 43: 95, 45: 110, 47: 130, 48: 150, 50: 180}[key]
        x = sweep(base * 1.6, base, 0.3)
    elif key == 56:
        x = (
            (np.sign(np.sin(2 * np.pi * 540 * t)) + np.sign(np.sin(2 * np.pi * 800 * t)))
            * 0.3
            * np.exp(-t / 0.15)
        )
    elif key in (60, 61, 62, 63, 64):
        base = {60: 420, 61: 330, 62: 350, 63: 300, 64: 220}[key]
        x = sweep(base * 1.2, base, 0.12) + 0.2 * white * np.exp(-t / 0.01)
    elif key == 75:
        x = np.sin(2 * np.pi * 2500 * t) * np.exp(-t / 0.04)
    elif key in (69, 70, 82):
        x = hiss * np.exp(-t / 0.05)
    else:
        x = 0.5 * white * np.exp(-t / 0.06)
    return np.asarray(x * loud)


def _seed(inst: pretty_midi.Instrument) -> int:
    text = repr(
        (inst.program, inst.is_drum, [(round(n.start, 4), n.pitch, n.velocity) for n in inst.notes[:64]])
    )
    return zlib.crc32(text.encode())


def render(
    inst: pretty_midi.Instrument, sample_rate: int, n_samples: int, gens: Mapping[str, float] | None = None
) -> np.ndarray:
    """Render an instrument to float32 stereo ``[2, n_samples]`` (mono voice on both channels).

    Args:
        inst: Notes, pitch bends (the first sets the detune) and controllers (CC1 deepens vibrato).
        sample_rate: Sample rate in Hz.
        n_samples: Output length; notes ringing past it are cut.
        gens: FluidSynth-style generator offsets by name (see ``ml.data.synth``), mapped onto the voice.

    Returns:
        The audio; its level is arbitrary (the mixer normalises stems).
    """
    gens = gens or {}
    rng = np.random.default_rng(_seed(inst))
    voice = voice_for(inst.program, inst.is_drum)
    detune = inst.pitch_bends[0].pitch * 200 / 8192 if inst.pitch_bends else 0.0
    mod = max((c.value for c in inst.control_changes if c.number == 1), default=0)
    params = {
        "attack_scale": 2 ** (gens.get("attack_timecents", 0.0) / 1200),
        "release_scale": 2 ** (gens.get("release_timecents", 0.0) / 1200),
        "vibrato_cents": {"bowed": 14.0, "voice": 25.0, "flute": 8.0, "sax": 6.0, "string_ens": 8.0}.get(
            voice, 2.0
        )
        + gens.get("vibrato_depth_cents", 0.0)
        + mod / 127 * 30,
        "vibrato_hz": float(rng.uniform(4.8, 6.2)) * 2 ** (gens.get("vibrato_rate_cents", 0.0) / 1200),
    }
    tune = 2 ** ((detune + gens.get("fine_tune_cents", 0.0)) / 1200)
    drawbars = rng.uniform(0.0, 1.0, 12)  # harmonics 1..12 of an organ registration
    drawbars[0], drawbars[1] = rng.uniform(0.6, 1.0), rng.uniform(0.2, 0.8)  # fundamental and octave sound
    extra: dict[str, Any] = {
        "drawbars": drawbars,
        "tremolo_hz": float(rng.uniform(5.5, 7.0)),
        "body": (
            ((280.0, 460.0, 2800.0), (120.0, 200.0, 900.0))
            if inst.program in (40, 41)
            else ((100.0, 220.0, 1500.0), (60.0, 120.0, 700.0))
        ),
    }
    out = np.zeros(n_samples)
    hits: dict[int, np.ndarray] = {}  # one recorded-like sample per drum key, scaled by velocity
    for note in inst.notes:
        s0 = round(note.start * sample_rate)
        if s0 >= n_samples:
            continue
        if inst.is_drum:
            if note.pitch not in hits:
                hits[note.pitch] = _drum(note.pitch, 127, sample_rate, rng)
            x = hits[note.pitch] * (note.velocity / 127) ** 1.5
        else:
            f0 = 440.0 * 2 ** ((note.pitch - 69) / 12) * tune
            x = _note(voice, f0, note.velocity, note.end - note.start, sample_rate, rng, params, extra)
        x = x[: n_samples - s0]
        out[s0 : s0 + len(x)] += x
    cut = gens.get("filter_fc_cents", 0.0)
    if cut < 0:
        fc = min(16000.0 * 2 ** (cut / 1200), 0.45 * sample_rate)
        out = fx._filter_fft(out[None, :], lambda f: fx._lowpass_mag(f, fc), sample_rate)[0]
    return np.stack([out, out]).astype(np.float32)


__all__ = ["VOICES", "render", "voice_for"]
