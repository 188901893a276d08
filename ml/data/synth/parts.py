"""Arrangement: the parts (stems) of an item with their program, performance, sound and level.

A part is composed notes plus everything drawn about how it is played (articulation, velocity, timing)
and how it sounds (generator offsets, EQ, compression, drive); :mod:`ml.data.synth.mixing` renders it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pretty_midi

from ml.data import fx
from ml.data.synth.base import _Job, _r
from ml.data.synth.compose import (
    Note,
    _bass,
    _Clock,
    _comp,
    _drums,
    _instrument,
    _melody,
    _pick,
    _Song,
    _window,
    _wpick,
)
from ml.data.synth.render import Preset, _Renderer
from ml.data.synth.styles import (
    _NON_LABEL_BACKING,
    _NON_LABEL_BASS,
    _POLYPHONIC_FAMILIES,
    _STYLES,
    _family,
    _range,
)


@dataclass
class _Part:
    bus: str  # mixing bus: a label code, "accompaniment"/"backing", or "noise"
    role: str
    label: str | None
    inst: pretty_midi.Instrument
    library: str
    gain_db: float
    pan: float
    perf: dict[str, Any] = field(default_factory=dict)  # performance: articulation, velocity, timing
    fx: dict[str, Any] = field(default_factory=dict)  # sound: generator offsets, EQ, compressor, drive
    preset: Preset | None = None  # set when rendered


def _performance(rng: np.random.Generator, program: int, is_drum: bool = False) -> dict[str, Any]:
    """How a stem is played: articulation (note-length factor), velocity curve and timing jitter."""
    if is_drum:
        return {
            "jitter_s": _r(rng.uniform(0.002, 0.008), 4),
            "velocity_scale": _r(rng.uniform(0.8, 1.15)),
            "velocity_offset": int(rng.integers(-10, 11)),
        }
    style = str(_wpick(rng, ("staccato", "normal", "legato"), (0.2, 0.5, 0.3)))
    lo, hi = {"staccato": (0.35, 0.6), "normal": (0.8, 0.95), "legato": (1.0, 1.08)}[style]
    return {
        "articulation_style": style,
        "articulation": _r(rng.uniform(lo, hi)),
        "jitter_s": _r(rng.uniform(0.002, 0.02), 4),
        "velocity_scale": _r(rng.uniform(0.75, 1.15)),
        "velocity_offset": int(rng.integers(-12, 13)),
    }


def _perf_kwargs(perf: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("jitter_s", "velocity_scale", "velocity_offset", "articulation")
    return {k: perf[k] for k in keys if k in perf}


def _stem_fx(
    rng: np.random.Generator, program: int, is_drum: bool, label: str | None, sample_rate: int
) -> dict[str, Any]:
    """Sound of a stem: FluidSynth generator offsets, random EQ, compression and (electric guitar) drive."""
    gens: dict[str, float] = {}
    if not is_drum:
        sustained = _family(program) not in _POLYPHONIC_FAMILIES
        if rng.random() < 0.6:
            gens["filter_fc_cents"] = _r(rng.uniform(-2400, 0), 1)  # darker (presets mostly start open)
        if rng.random() < 0.3:
            gens["filter_q_cb"] = _r(rng.uniform(0, 90), 1)
        gens["attack_timecents"] = _r(rng.uniform(-400, 1500) if sustained else rng.uniform(-300, 300), 1)
        gens["release_timecents"] = _r(rng.uniform(-1200, 1200), 1)
        if sustained:
            gens["vibrato_depth_cents"] = _r(rng.uniform(0, 25), 2)
            gens["vibrato_rate_cents"] = _r(rng.uniform(-600, 600), 1)
        gens["fine_tune_cents"] = _r(rng.uniform(-10, 10), 2)
    return {
        "gens": gens,
        "eq": fx.draw_eq(rng, sample_rate),
        "compressor": fx.draw_compressor(rng, 0.4),
        "drive": fx.draw_drive(rng, sample_rate) if label == "gel" else None,
    }


def _choose_program(
    rng: np.random.Generator,
    pool: Sequence[int],
    fallback: Sequence[int],
    banned_families: set[int],
    avoid: set[int],
    prefer: float,
) -> int | None:
    """Pick a backing program outside ``banned_families``.

    With probability ``prefer`` (or when the genre ``pool`` has nothing allowed) the program comes from
    the ones that do not sound like any label (family not shared with a program in ``avoid``), drawn from
    ``pool`` and ``fallback``; otherwise from the genre ``pool``.
    """
    avoid_families = {_family(a) for a in avoid}
    allowed = [p for p in pool if _family(p) not in banned_families]
    unlabelled = [
        p
        for p in dict.fromkeys([*pool, *fallback])  # ordered de-duplication keeps draws reproducible
        if _family(p) not in banned_families and _family(p) not in avoid_families
    ]
    if unlabelled and (not allowed or rng.random() < prefer):
        return int(_pick(rng, unlabelled))
    return int(_pick(rng, allowed)) if allowed else None


def _label_program(
    rng: np.random.Generator, renderer: _Renderer, library: str, programs: Sequence[int]
) -> int:
    """A label's program that the library has; if it has none of them, the renderer's fallback applies."""
    usable = [p for p in programs if renderer.has_preset(library, p)]
    return int(_pick(rng, usable or list(programs)))


def _lead_notes(rng: np.random.Generator, song: _Song, code: str, program: int, velocity: int) -> list[Note]:
    """The predominant part: a melody, optionally with chords or as an arpeggio for chordal instruments."""
    lo, hi = _range(code)
    density = str(_wpick(rng, ("low", "mid", "high"), (0.3, 0.45, 0.25)))
    polyphonic = _family(program) in _POLYPHONIC_FAMILIES
    style = (
        str(_wpick(rng, ("melody", "melody_chords", "arp"), (0.4, 0.35, 0.25))) if polyphonic else "melody"
    )
    if style == "arp":
        return _comp(rng, song, _window(rng, lo, min(hi, 84), (12, 16)), "arp", velocity)
    window = _window(rng, lo, hi, (12, 19))
    notes = _melody(
        rng,
        song,
        window,
        density=density,
        rest_prob=float(rng.uniform(0.03, 0.12)),
        velocity=velocity,
        legato=float(rng.uniform(0.8, 1.0)),
    )
    if style == "melody_chords":
        low = (max(lo, window[0] - 14), max(lo + 7, window[0] - 1))
        notes += _comp(rng, song, low, "block", velocity - 10)
    return notes


def _make_part(
    rng: np.random.Generator,
    job: _Job,
    song: _Clock,
    notes: Sequence[Note],
    program: int,
    *,
    bus: str,
    role: str,
    label: str | None,
    name: str,
    gain_db: float,
    pan: float,
    is_drum: bool = False,
    detune_cents: float = 0.0,
    modulation: int = 0,
) -> _Part:
    perf = _performance(rng, program, is_drum)
    inst = _instrument(
        rng,
        song,
        notes,
        program,
        is_drum=is_drum,
        name=name,
        detune_cents=detune_cents,
        modulation=modulation,
        **_perf_kwargs(perf),
    )
    sound = _stem_fx(rng, program, is_drum, label, job.sample_rate)
    return _Part(bus, role, label, inst, job.library, gain_db, pan, perf, sound)


def _accompaniment(
    rng: np.random.Generator,
    renderer: _Renderer,
    job: _Job,
    song: _Song,
    banned_families: set[int],
    avoid: set[int],
    prefer: float,
    bus: str,
    *,
    want_chords: bool = True,
    want_bass: bool = True,
) -> tuple[list[_Part], bool]:
    """Bass, chord and drum parts of the backing; returns the parts and whether drums play."""
    style = _STYLES[song.genre]
    parts: list[_Part] = []
    if want_bass:
        bass_prog = _choose_program(rng, style.bass_programs, _NON_LABEL_BASS, banned_families, avoid, 0.9)
        if bass_prog is not None:
            notes = _bass(rng, song, (28, 55), style.bass_style, int(rng.integers(70, 105)))
            parts.append(
                _make_part(
                    rng,
                    job,
                    song,
                    notes,
                    bass_prog,
                    bus=bus,
                    role="bass",
                    label=None,
                    name="bass",
                    gain_db=float(rng.uniform(-2, 2)),
                    pan=float(rng.uniform(-0.2, 0.2)),
                    detune_cents=float(rng.uniform(-8, 8)),
                )
            )
    if want_chords:
        chord_prog = _choose_program(
            rng, style.chord_programs, _NON_LABEL_BACKING, banned_families, avoid, prefer
        )
        if chord_prog is not None:
            comp_style = str(_pick(rng, style.comp_styles))
            window = _window(rng, 48, 79, (12, 16))
            notes = _comp(rng, song, window, comp_style, int(rng.integers(55, 95)))
            parts.append(
                _make_part(
                    rng,
                    job,
                    song,
                    notes,
                    chord_prog,
                    bus=bus,
                    role="chords",
                    label=None,
                    name="chords",
                    gain_db=float(rng.uniform(-4, 1)),
                    pan=float(rng.uniform(-0.7, 0.7)),
                    detune_cents=float(rng.uniform(-10, 10)),
                )
            )
    drums = style.drum_style != "none" and rng.random() < style.drums_prob
    if drums:
        kit = int(_pick(rng, style.drum_kits))
        notes = _drums(rng, song, style.drum_style, int(rng.integers(70, 110)))
        part = _make_part(
            rng,
            job,
            song,
            notes,
            kit,
            bus=bus,
            role="drums",
            label=None,
            name="drums",
            gain_db=float(rng.uniform(-3, 2)),
            pan=float(rng.uniform(-0.1, 0.1)),
            is_drum=True,
        )
        if renderer.preset(job.library, kit, True) is None:  # a library without drum kits: no drums
            drums = False
        else:
            parts.append(part)
    return parts, drums


def _part_info(part: _Part) -> dict[str, Any]:
    preset = part.preset
    return {
        "role": part.role,
        "label": part.label,
        "program": int(part.inst.program),
        "is_drum": bool(part.inst.is_drum),
        "library": part.library,
        "preset": None
        if preset is None
        else {"bank": preset.bank, "program": preset.program, "name": preset.name, "file": preset.file},
        "notes": len(part.inst.notes),
        "gain_db": _r(part.gain_db, 2),
        "pan": _r(part.pan),
        "performance": part.perf,
        **part.fx,
    }
