"""Composition: a drawn song (tempo, meter, key, progression) and the notes of its parts.

Melodies, chord comping, bass lines and GM drum patterns in beat time, then turned into humanised
``pretty_midi`` instruments by :func:`_instrument`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import pretty_midi

from ml.data.synth.styles import _NOTE_NAMES, _QUALITIES, _SCALES, _STYLES

Note = tuple[float, float, int, int]  # (start beat, duration in beats, MIDI pitch, velocity)


class _Clock(Protocol):
    """What turns beat-time notes into seconds: a drawn :class:`_Song` or a corpus excerpt."""

    def seconds(self, beat: float) -> float: ...


@dataclass(frozen=True)
class _Song:
    genre: str
    tempo: float  # BPM
    beats_per_bar: int
    tonic: int  # pitch class 0..11
    scale_name: str
    progression: tuple[tuple[int, str], ...]
    bars_per_chord: int
    swing: bool
    n_bars: int

    @property
    def beats(self) -> int:
        return self.n_bars * self.beats_per_bar

    @property
    def scale(self) -> tuple[int, ...]:
        return tuple((self.tonic + s) % 12 for s in _SCALES[self.scale_name])

    def chord_at(self, beat: float) -> tuple[int, tuple[int, ...]]:
        """(root pitch class, chord pitch classes) sounding at ``beat``."""
        bar = int(beat // self.beats_per_bar)
        root_off, quality = self.progression[(bar // self.bars_per_chord) % len(self.progression)]
        root = (self.tonic + root_off) % 12
        return root, tuple((root + iv) % 12 for iv in _QUALITIES[quality])

    def seconds(self, beat: float) -> float:
        """Time of ``beat`` in seconds; swing delays off-beat eighths to the triplet position."""
        if self.swing:
            whole = math.floor(beat)
            frac = beat - whole
            beat = whole + (frac * 4 / 3 if frac <= 0.5 else 2 / 3 + (frac - 0.5) * 2 / 3)
        return beat * 60.0 / self.tempo

    def key_name(self) -> str:
        return f"{_NOTE_NAMES[self.tonic]} {self.scale_name}"


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _wpick(rng: np.random.Generator, seq: Sequence[Any], weights: Sequence[float]) -> Any:
    w = np.asarray(weights, dtype=np.float64)
    return seq[int(rng.choice(len(seq), p=w / w.sum()))]


def _draw_song(rng: np.random.Generator, genre: str, seconds: float) -> _Song:
    style = _STYLES[genre]
    tempo = float(np.round(rng.uniform(*style.tempo), 1))
    bpb = int(_pick(rng, style.meters))
    scale_name, prog = _pick(rng, style.progressions)
    bars_per_chord = 1 if len(prog) > 4 or rng.random() < 0.7 else 2
    bar_s = bpb * 60.0 / tempo
    n_bars = math.ceil(seconds / bar_s) + 1
    return _Song(
        genre, tempo, bpb, int(rng.integers(12)), scale_name, prog, bars_per_chord, style.swing, n_bars
    )


def _window(rng: np.random.Generator, rng_lo: int, rng_hi: int, width: tuple[int, int]) -> tuple[int, int]:
    """A random sub-range of ``[rng_lo, rng_hi]`` spanning about ``width`` semitones."""
    span = rng_hi - rng_lo
    w = min(span, int(rng.integers(width[0], width[1] + 1)))
    lo = rng_lo + int(rng.integers(0, span - w + 1))
    return lo, lo + w


def _pitches(lo: int, hi: int, pcs: Sequence[int]) -> list[int]:
    return [p for p in range(lo, hi + 1) if p % 12 in pcs]


def _nearest(pitch: int, candidates: Sequence[int]) -> int:
    return min(candidates, key=lambda c: (abs(c - pitch), c))


def _voicing(pcs: Sequence[int], center: int, lo: int, hi: int) -> list[int]:
    """Close-position chord: each pitch class once, within an octave around ``center``, clipped to range."""
    out = []
    for pc in pcs:
        p = center - 6 + (pc - (center - 6)) % 12
        while p > hi:
            p -= 12
        while p < lo:
            p += 12
        out.append(p)
    return sorted(set(out))


_DENSITIES: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]] = MappingProxyType(
    {  # note durations in beats and their weights
        "low": ((1.0, 2.0, 3.0, 4.0), (0.35, 0.4, 0.1, 0.15)),
        "mid": ((0.5, 1.0, 1.5, 2.0), (0.35, 0.4, 0.1, 0.15)),
        "high": ((0.25, 0.5, 1.0), (0.2, 0.55, 0.25)),
    }
)


def _melody(
    rng: np.random.Generator,
    song: _Song,
    window: tuple[int, int],
    *,
    density: str,
    rest_prob: float,
    velocity: int,
    legato: float,
) -> list[Note]:
    """A stepwise melody in the key; chord tones on strong beats and long notes."""
    lo, hi = window
    scale = _pitches(lo, hi, song.scale)
    if not scale:
        return []
    durs, weights = _DENSITIES[density]
    if song.tempo > 110 and density == "high":
        durs, weights = durs[1:], weights[1:]  # no sixteenths at fast tempi
    idx = int(rng.integers(len(scale) // 4, max(len(scale) // 4 + 1, 3 * len(scale) // 4)))
    notes: list[Note] = []
    beat, bpb, prev_rest = 0.0, song.beats_per_bar, True
    while beat < song.beats:
        d = float(_wpick(rng, durs, weights))
        in_bar = beat % bpb
        d = min(d, bpb - in_bar)  # do not tie across bar lines
        if not prev_rest and rng.random() < rest_prob:
            beat += d
            prev_rest = True
            continue
        prev_rest = False
        step = int(_wpick(rng, (-4, -2, -1, 0, 1, 2, 4), (0.04, 0.16, 0.3, 0.06, 0.3, 0.1, 0.04)))
        idx += step
        if idx < 0 or idx >= len(scale):  # reflect at the register edges
            idx = -idx if idx < 0 else 2 * (len(scale) - 1) - idx
            idx = min(max(idx, 0), len(scale) - 1)
        pitch = scale[idx]
        strong = in_bar == 0 or (bpb == 4 and in_bar == 2) or d >= 1.5
        if strong:
            tones = _pitches(lo, hi, song.chord_at(beat)[1])
            if tones:
                pitch = _nearest(pitch, tones)
                idx = scale.index(_nearest(pitch, scale))
        accent = 8 if in_bar == 0 else (4 if float(in_bar).is_integer() else 0)
        vel = int(np.clip(velocity + accent + rng.normal(0, 6), 20, 127))
        notes.append((beat, d * legato, pitch, vel))
        beat += d
    return notes


def _comp(
    rng: np.random.Generator, song: _Song, window: tuple[int, int], style: str, velocity: int
) -> list[Note]:
    """Chord accompaniment in a genre pattern, one voicing per chord."""
    lo, hi = window
    center = (lo + hi) // 2
    bpb = song.beats_per_bar
    notes: list[Note] = []

    def vel(extra: float = 0.0) -> int:
        return int(np.clip(velocity + extra + rng.normal(0, 5), 20, 127))

    def chord(
        start: float, dur: float, voicing: Sequence[int], strum: float = 0.0, extra: float = 0.0
    ) -> None:
        for i, p in enumerate(voicing):
            notes.append((start + i * strum, max(dur - i * strum, 0.1), p, vel(extra)))

    for bar in range(song.n_bars):
        b0 = float(bar * bpb)
        root, pcs = song.chord_at(b0)
        v = _voicing(pcs, center, lo, hi)
        if not v:
            continue
        if style in ("block", "sustain"):
            chord(b0, bpb * (0.98 if style == "sustain" else 0.9), v, extra=-6 if style == "sustain" else 0)
        elif style == "strum8":
            for e in range(bpb * 2):
                down = e % 2 == 0
                chord(b0 + e * 0.5, 0.45, v if down else v[::-1], strum=0.02, extra=6 if e % 4 == 0 else 0)
        elif style == "power":
            low = [p for p in (_nearest(lo + 6, _pitches(lo, hi, [root])),) if p + 12 <= 127]
            fifth = [low[0] + 7, low[0] + 12] if low else []
            for e in range(bpb * 2):
                chord(b0 + e * 0.5, 0.42, low + fifth, extra=4 if e % 2 == 0 else -4)
        elif style == "boomchick":
            bass_p = _pitches(lo - 12, lo + 5, [root])
            for beat in range(bpb):
                if bass_p and (beat == 0 if bpb == 3 else beat % 2 == 0):  # waltz: boom-chick-chick
                    notes.append((b0 + beat, 0.9, bass_p[-1], vel(4)))
                else:
                    chord(b0 + beat, 0.6, v, strum=0.015)
        elif style in ("arp", "alberti"):
            seq = [*v, v[0] + 12] if style == "arp" else [v[0], v[-1], v[len(v) // 2], v[-1]]
            if style == "arp" and rng.random() < 0.5:
                seq = seq + seq[-2:0:-1]  # up-down
            for e in range(bpb * 2):
                p = seq[e % len(seq)]
                if p <= 127:
                    notes.append((b0 + e * 0.5, 0.7, p, vel(3 if e % 2 == 0 else -3)))
        elif style == "charleston":
            chord(b0, 0.9, v, extra=2)
            chord(b0 + 1.5, 0.4, v, extra=-2)
            if rng.random() < 0.5:
                chord(b0 + 3.5, 0.4, v, extra=-4)
        elif style == "montuno":
            for onset in (0.0, 1.5, 3.0) if bpb == 4 else (0.0, 1.5):
                chord(b0 + onset, 0.45, v, extra=4 if onset == 0 else 0)
            if bpb == 4 and rng.random() < 0.6:
                chord(b0 + 2.5, 0.3, v, extra=-4)
        else:
            raise ValueError(f"unknown comp style {style!r}")
    return notes


def _bass(
    rng: np.random.Generator, song: _Song, window: tuple[int, int], style: str, velocity: int
) -> list[Note]:
    """A bass line on the chord roots in a genre pattern."""
    lo, hi = window
    bpb = song.beats_per_bar
    notes: list[Note] = []

    def at(pc: int, near: int) -> int:
        cands = _pitches(lo, hi, [pc])
        return _nearest(near, cands) if cands else lo + (pc - lo) % 12

    def vel(extra: float = 0.0) -> int:
        return int(np.clip(velocity + extra + rng.normal(0, 5), 20, 127))

    home = lo + 7
    for bar in range(song.n_bars):
        b0 = float(bar * bpb)
        root, pcs = song.chord_at(b0)
        r = at(root, home)
        fifth = at((root + 7) % 12, r + 5)
        if style == "eighths":
            for e in range(bpb * 2):
                p = r + 12 if (e == bpb * 2 - 1 and rng.random() < 0.3 and r + 12 <= hi) else r
                notes.append((b0 + e * 0.5, 0.45, p, vel(4 if e % 2 == 0 else 0)))
        elif style == "rootfifth":
            notes.append((b0, 0.95, r, vel(4)))
            for beat in range(1, bpb):
                if bpb == 3 or beat == 2:
                    notes.append((b0 + beat, 0.95, fifth if beat == 2 else r, vel()))
        elif style == "walking":
            next_root, _ = song.chord_at(b0 + bpb)
            target = at(next_root, r)
            line = [r]
            tones = _pitches(lo, hi, pcs) or [r]
            while len(line) < bpb - 1:
                line.append(_pick(rng, [t for t in tones if abs(t - line[-1]) <= 7] or tones))
            line.append(target + (1 if rng.random() < 0.5 else -1))
            for beat, p in enumerate(line[:bpb]):
                notes.append((b0 + beat, 0.9, int(np.clip(p, lo, hi)), vel(3 if beat == 0 else 0)))
        elif style == "tumbao":
            next_root, _ = song.chord_at(b0 + bpb)
            if bar == 0:
                notes.append((b0, 1.4, r, vel(2)))
            notes.append((b0 + 1.5, 1.4, fifth, vel(4)))
            notes.append((b0 + bpb - 1.0, 1.0, at(next_root, r), vel(2)))
        elif style == "sustain":
            if rng.random() < 0.5:
                notes.append((b0, bpb * 0.97, r, vel()))
            else:
                half = bpb / 2
                notes.append((b0, half * 0.95, r, vel()))
                notes.append((b0 + half, half * 0.95, fifth, vel(-3)))
        else:
            raise ValueError(f"unknown bass style {style!r}")
    return notes


# GM percussion keys
_KICK, _SNARE, _STICK, _HAT, _PEDAL, _OPEN, _CRASH, _RIDE = 36, 38, 37, 42, 44, 46, 49, 51
_COWBELL, _CONGA_HI, _CONGA_LO, _SHAKER, _CLAVES, _TOMS = 56, 62, 64, 70, 75, (50, 48, 47, 45)


def _drums(rng: np.random.Generator, song: _Song, style: str, velocity: int) -> list[Note]:
    """A GM drum pattern (channel 10) with an occasional fill at the end of 4-bar phrases."""
    bpb = song.beats_per_bar
    notes: list[Note] = []

    def hit(beat: float, key: int, extra: float = 0.0) -> None:
        notes.append((beat, 0.25, key, int(np.clip(velocity + extra + rng.normal(0, 6), 15, 127))))

    for bar in range(song.n_bars):
        b0 = float(bar * bpb)
        fill = bar % 4 == 3 and rng.random() < 0.4
        last = bpb - 1 if fill else bpb
        if bpb == 3:  # waltz
            hit(b0, _KICK, 4)
            for beat in (1, 2):
                hit(b0 + beat, _STICK if style != "rock" else _SNARE, -6)
            for e in range(6):
                hit(b0 + e * 0.5, _HAT, -14)
        elif style in ("rock", "country"):
            for beat in range(last):
                hit(b0 + beat, _KICK if beat % 2 == 0 else (_SNARE if style == "rock" else _STICK), 4)
            if style == "rock" and rng.random() < 0.5:
                hit(b0 + 2.5, _KICK, -6)
            for e in range(last * 2):
                hit(b0 + e * 0.5, _HAT, -10 if e % 2 == 0 else -18)
            if bar == 0 or (bar % 4 == 0 and rng.random() < 0.5):
                hit(b0, _CRASH, -4)
        elif style == "swing":
            for beat in range(last):
                hit(b0 + beat, _RIDE, -6)
                if beat % 2 == 1:
                    hit(b0 + beat + 0.5, _RIDE, -12)
                    hit(b0 + beat, _PEDAL, -12)
                hit(b0 + beat, _KICK, -28)  # feathered kick
            if rng.random() < 0.4:
                hit(b0 + float(rng.integers(0, bpb)) + 0.5, _SNARE, -16)  # comping ghost
        elif style == "latin":
            clave = (0.0, 1.5, 3.0) if bar % 2 == 0 else (1.0, 2.0)  # son clave 3-2
            for onset in clave:
                if onset < last:
                    hit(b0 + onset, _CLAVES, -8)
            hit(b0, _KICK, 0)
            hit(b0 + 2.5, _KICK, -4)
            for e in range(last * 2):
                hit(b0 + e * 0.5, _SHAKER, -18)
            for beat in range(last):
                hit(b0 + beat, _COWBELL if beat % 2 == 0 else _CONGA_LO, -12)
                hit(b0 + beat + 0.5, _CONGA_HI, -10)
        else:
            raise ValueError(f"unknown drum style {style!r}")
        if fill:
            for i in range(4):
                hit(b0 + bpb - 1 + i * 0.25, _TOMS[i], -2)
    return notes


def _instrument(
    rng: np.random.Generator,
    song: _Clock,
    notes: Sequence[Note],
    program: int,
    *,
    is_drum: bool = False,
    name: str = "",
    jitter_s: float = 0.008,
    detune_cents: float = 0.0,
    modulation: int = 0,
    articulation: float = 1.0,
    velocity_scale: float = 1.0,
    velocity_offset: int = 0,
) -> pretty_midi.Instrument:
    """Turn beat-time notes into a pretty_midi instrument with humanised timing, detune and vibrato depth.

    ``articulation`` scales every note's length (staccato < 1 < legato); velocities become
    ``velocity * velocity_scale + velocity_offset`` (clipped to 1..127) to vary the dynamics per stem.
    """
    inst = pretty_midi.Instrument(program=program, is_drum=is_drum, name=name)
    last: dict[int, pretty_midi.Note] = {}
    for beat, dur, pitch, vel in sorted(notes):
        if not 0 <= pitch <= 127:
            continue
        vel = int(np.clip(round(vel * velocity_scale + velocity_offset), 1, 127))
        start = max(0.0, song.seconds(beat) + float(rng.normal(0, jitter_s)))
        end = max(start + 0.04, song.seconds(beat + dur * articulation) + float(rng.normal(0, jitter_s)))
        prev = last.get(pitch)
        if prev is not None and prev.end > start - 0.002:
            # One key cannot sound twice on a channel: a note-off would end both, so release the earlier.
            if start - prev.start < 0.03:
                continue
            prev.end = start - 0.002
        note = pretty_midi.Note(velocity=int(vel), pitch=int(pitch), start=start, end=end)
        inst.notes.append(note)
        last[pitch] = note
    if not is_drum and detune_cents:
        # Default bend range is +-2 semitones = +-8192, so 1 cent = 8192 / 200.
        inst.pitch_bends.append(pretty_midi.PitchBend(pitch=round(detune_cents * 8192 / 200), time=0.0))
    if not is_drum and modulation:
        inst.control_changes.append(pretty_midi.ControlChange(number=1, value=int(modulation), time=0.0))
    return inst
