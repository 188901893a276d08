"""Synthetic IRMAS-style data set rendered with FluidSynth from programmatically composed MIDI.

Every item (a training "recording" cut into 3-s clips, or a test excerpt) is composed from a drawn genre
style: tempo, meter, key, chord progression, a predominant part and an accompaniment (bass, chords, GM
drums). Each part (stem) is rendered separately with a drawn General MIDI sample library, placed with a
known level, passed through a drawn room (exponentially decaying noise impulse response) and summed, so
the level of every labelled instrument in the written file is known and checked: a label is only written
when its stem is clearly audible (above :data:`MIN_STEM_DBFS` in the final mix).

Randomness: item ``i`` of kind ``k`` (0 = training recording, 1 = test excerpt) draws everything from
``np.random.SeedSequence(seed, spawn_key=(k, i))``, so the output depends on ``seed`` and the item, not on
the worker count or completion order. FluidSynth renders through the float API (no dither) with its own
reverb and chorus off and a full reset after every stem, so a stem does not depend on what the worker
rendered before.

Only the two sample libraries this project ships with are used by default (:func:`default_soundfonts`):
``TimGM6mb.sf2`` from ``pretty_midi`` and Debian's ``FluidR3_GM.sf2``.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import functools
import json
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pretty_midi
import soundfile as sf
from tqdm import tqdm

from ml.data import additive, fx
from ml.data.activity import HOP_S, activity_record, clip_labels
from ml.data.irmas import GENRES, MIX_DIR, TRAIN_DIR, format_train_name
from ml.data.libraries import ADDITIVE, LIBRARIES, get_library, resolve_library

TEST_DIR = "IRMAS-TestingData"
META_NAME = "synth_meta.json"
STEMS_DIR = "_stems"
TRAIN_CLIP_S = 3.0
MIN_STEM_DBFS = -45.0  # a labelled stem quieter than this in the written mix is treated as silence
MIN_LEAD_MARGIN_DB = 3.0  # predominant stem over the accompaniment, per training clip
MIN_ACTIVE_FRACTION = 0.6  # share of 46-ms frames in which the predominant stem sounds, per training clip
MAX_BELOW_LOUDEST_DB = 20.0  # a test instrument this far under the loudest labelled one counts as inaudible
MAX_ATTEMPTS = 12

DEFAULT_GM_PROGRAMS: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {
        "cel": (42,),
        "cla": (71,),
        "flu": (73,),
        "gac": (24, 25),
        "gel": (26, 27, 29, 30),
        "org": (16, 17, 19),
        "pia": (0, 1),
        "sax": (64, 65, 66),
        "tru": (56,),
        "vio": (40,),
        "voi": (52, 53),
    }
)
"""Label code -> 0-based General MIDI programs that render that instrument."""

DEFAULT_RANGES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "cel": (36, 76),
        "cla": (50, 89),
        "flu": (60, 96),
        "gac": (40, 81),
        "gel": (40, 86),
        "org": (36, 84),
        "pia": (33, 96),
        "sax": (46, 81),
        "tru": (54, 82),
        "vio": (55, 100),
        "voi": (48, 79),
    }
)
"""Label code -> playable MIDI pitch range (inclusive) used to place parts in a plausible register."""

GENERIC_RANGE = (48, 84)

_SCALES: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {
        "maj": (0, 2, 4, 5, 7, 9, 11),
        "min": (0, 2, 3, 5, 7, 8, 10),
        "dor": (0, 2, 3, 5, 7, 9, 10),
        "mix": (0, 2, 4, 5, 7, 9, 10),
        "blues": (0, 3, 5, 6, 7, 10),
    }
)
_QUALITIES: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {
        "maj": (0, 4, 7),
        "min": (0, 3, 7),
        "7": (0, 4, 7, 10),
        "maj7": (0, 4, 7, 11),
        "min7": (0, 3, 7, 10),
        "dim": (0, 3, 6),
        "sus4": (0, 5, 7),
    }
)
_NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

Progression = tuple[str, tuple[tuple[int, str], ...]]  # (scale, ((root offset from tonic, quality), ...))


@dataclass(frozen=True)
class _GenreStyle:
    tempo: tuple[float, float]  # BPM range
    meters: tuple[int, ...]  # beats per bar choices
    drums_prob: float
    swing: bool
    progressions: tuple[Progression, ...]
    chord_programs: tuple[int, ...]
    bass_programs: tuple[int, ...]
    drum_kits: tuple[int, ...]  # GM drum kits (bank 128 presets)
    comp_styles: tuple[str, ...]
    bass_style: str
    drum_style: str
    rt60: tuple[float, float]  # room decay range in seconds


_TWELVE_BAR = ((0, "7"),) * 4 + ((5, "7"),) * 2 + ((0, "7"),) * 2 + ((7, "7"), (5, "7"), (0, "7"), (7, "7"))

_STYLES: Mapping[str, _GenreStyle] = MappingProxyType(
    {
        "pop_roc": _GenreStyle(
            tempo=(88, 140),
            meters=(4,),
            drums_prob=0.85,
            swing=False,
            progressions=(
                ("maj", ((0, "maj"), (7, "maj"), (9, "min"), (5, "maj"))),
                ("maj", ((0, "maj"), (5, "maj"), (7, "maj"), (5, "maj"))),
                ("min", ((0, "min"), (8, "maj"), (3, "maj"), (10, "maj"))),
                ("mix", ((0, "maj"), (10, "maj"), (5, "maj"), (0, "maj"))),
            ),
            chord_programs=(0, 4, 16, 18, 25, 27, 29, 30, 48, 89),
            bass_programs=(33, 34, 38),
            drum_kits=(0, 16),
            comp_styles=("strum8", "block", "power"),
            bass_style="eighths",
            drum_style="rock",
            rt60=(0.2, 0.8),
        ),
        "cou_fol": _GenreStyle(
            tempo=(80, 132),
            meters=(4, 4, 3),
            drums_prob=0.5,
            swing=False,
            progressions=(
                ("maj", ((0, "maj"), (5, "maj"), (0, "maj"), (7, "maj"))),
                ("maj", ((0, "maj"), (0, "maj"), (5, "maj"), (7, "7"))),
                ("maj", ((0, "maj"), (7, "maj"), (9, "min"), (5, "maj"))),
                ("min", ((0, "min"), (10, "maj"), (8, "maj"), (10, "maj"))),
            ),
            chord_programs=(24, 25, 0, 21, 46, 105),
            bass_programs=(32, 33),
            drum_kits=(0, 8),
            comp_styles=("boomchick", "arp", "strum8"),
            bass_style="rootfifth",
            drum_style="country",
            rt60=(0.2, 0.9),
        ),
        "cla": _GenreStyle(
            tempo=(56, 112),
            meters=(4, 3),
            drums_prob=0.0,
            swing=False,
            progressions=(
                ("maj", ((0, "maj"), (5, "maj"), (7, "7"), (0, "maj"))),
                ("maj", ((0, "maj"), (9, "min"), (2, "min"), (7, "7"))),
                (
                    "maj",
                    (
                        (0, "maj"),
                        (7, "maj"),
                        (9, "min"),
                        (4, "min"),
                        (5, "maj"),
                        (0, "maj"),
                        (5, "maj"),
                        (7, "7"),
                    ),
                ),
                ("min", ((0, "min"), (5, "min"), (7, "7"), (0, "min"))),
                ("min", ((0, "min"), (8, "maj"), (2, "dim"), (7, "7"))),
            ),
            chord_programs=(48, 49, 0, 46, 6, 19),
            bass_programs=(43, 70, 58),
            drum_kits=(0,),
            comp_styles=("sustain", "arp", "alberti"),
            bass_style="sustain",
            drum_style="none",
            rt60=(0.6, 1.4),
        ),
        "jaz_blu": _GenreStyle(
            tempo=(80, 170),
            meters=(4,),
            drums_prob=0.8,
            swing=True,
            progressions=(
                ("maj", ((2, "min7"), (7, "7"), (0, "maj7"), (9, "7"))),
                ("blues", _TWELVE_BAR),
                ("maj", ((0, "maj7"), (9, "min7"), (2, "min7"), (7, "7"))),
                ("dor", ((0, "min7"), (0, "min7"), (5, "7"), (5, "7"))),
            ),
            chord_programs=(0, 4, 5, 26, 17, 11),
            bass_programs=(32, 33),
            drum_kits=(32, 40, 0),
            comp_styles=("charleston", "block"),
            bass_style="walking",
            drum_style="swing",
            rt60=(0.3, 1.0),
        ),
        "lat_sou": _GenreStyle(
            tempo=(90, 130),
            meters=(4,),
            drums_prob=0.85,
            swing=False,
            progressions=(
                ("min", ((0, "min7"), (5, "min7"), (7, "7"), (0, "min7"))),
                ("maj", ((2, "min7"), (7, "7"), (0, "maj7"), (0, "maj7"))),
                ("dor", ((0, "min7"), (5, "7"), (0, "min7"), (5, "7"))),
                ("maj", ((0, "maj"), (5, "maj"), (7, "7"), (5, "maj"))),
            ),
            chord_programs=(0, 4, 24, 25, 11, 12, 16),
            bass_programs=(32, 33, 35),
            drum_kits=(0, 8, 24),
            comp_styles=("montuno", "strum8"),
            bass_style="tumbao",
            drum_style="latin",
            rt60=(0.2, 0.9),
        ),
    }
)

# Mild IRMAS-like genre preferences of the predominant instrument (weight 1 when absent).
_GENRE_BIAS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "cel": {"cla": 2.5},
        "vio": {"cla": 2.5},
        "flu": {"cla": 2.0},
        "cla": {"cla": 2.0, "jaz_blu": 1.5},
        "gel": {"pop_roc": 2.5, "jaz_blu": 1.5},
        "gac": {"cou_fol": 2.5, "pop_roc": 1.5},
        "sax": {"jaz_blu": 2.5},
        "tru": {"jaz_blu": 2.0, "lat_sou": 2.0},
        "voi": {"pop_roc": 2.0},
        "org": {"cla": 1.5, "jaz_blu": 1.5},
    }
)
# Program families (program // 8) that can comp with chords: piano, chromatic percussion, organ, guitar.
_POLYPHONIC_FAMILIES = frozenset({0, 1, 2, 3})
_NON_LABEL_BACKING = (88, 89, 90, 91, 94, 95, 11, 12)  # pads, vibraphone, marimba: fallback chord pool
_NON_LABEL_BASS = (32, 33, 34, 35)  # acoustic, finger, pick, fretless: fit every genre


class SynthError(RuntimeError):
    """Rendering failed (missing library, or no audible result after the bounded number of re-draws)."""


@dataclass(frozen=True)
class SynthReport:
    """Result of :func:`synthesize`.

    Attributes:
        train_files: Training clips written.
        test_files: Test excerpts written (``.wav`` files; each has a ``.txt`` beside it).
        mix_files: Multi-instrument training clips written.
        seconds: Wall-clock time of the run.
        out_dir: The output directory.
    """

    train_files: int
    test_files: int
    seconds: float
    out_dir: Path = field(default_factory=Path)
    mix_files: int = 0


# ---------------------------------------------------------------------------------------------- libraries
def _library_of(name_or_path: str | Path) -> str:
    """Registry name of a library given by name or by the path of one of its registered files."""
    key = str(name_or_path).strip()
    if "/" not in key and not key.lower().endswith(".sf2"):
        return get_library(key).name  # a name: unknown -> ValueError listing the valid ones
    path = Path(key).expanduser()
    for lib in LIBRARIES.values():
        if any(path.name == f.name for f in lib.paths()[:1]):
            if not path.is_file():
                raise FileNotFoundError(f"sample library {key!r} not found at {path}")
            return lib.name
    if not path.is_file():
        raise FileNotFoundError(f"sample library {key!r} not found at {path}")
    raise ValueError(f"{path} is not a registered sample library; valid names: {', '.join(LIBRARIES)}")


def resolve_soundfont(name_or_path: str | Path) -> Path:
    """The main SoundFont file of a registered library, given by name or by its file path.

    Args:
        name_or_path: A registry name (see :mod:`ml.data.libraries`; ``"fluidr3"`` is ``fluidr3_gm``)
            or the path of a registered library's main file. Other files are refused.

    Returns:
        The absolute path of an existing file.

    Raises:
        FileNotFoundError: If the library is not installed or the path does not exist.
        ValueError: If the path is not a registered library's file.
    """
    lib = resolve_library(_library_of(name_or_path))
    if not lib.paths():
        raise ValueError(f"library {lib.name!r} is a synthesiser, not a SoundFont")
    return lib.paths()[0].resolve()


def default_soundfonts() -> list[Path]:
    """The main files of TimGM6mb (always) and FluidR3_GM (when installed).

    Returns:
        Existing ``.sf2`` paths.
    """
    out = [resolve_soundfont("timgm6mb")]
    if get_library("fluidr3_gm").paths()[0].is_file():
        out.append(resolve_soundfont("fluidr3_gm"))
    return out


def resolve_programs(
    labels: Sequence[str], overrides: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """GM programs per label: ``overrides`` first, then :data:`DEFAULT_GM_PROGRAMS`.

    Args:
        labels: Label codes that need programs.
        overrides: Label code -> programs, replacing the defaults of that code.

    Returns:
        Label code -> tuple of programs, for every code in ``labels``.

    Raises:
        ValueError: If a code has no programs or a program is outside 0..127.
    """
    out: dict[str, tuple[int, ...]] = {}
    for code in labels:
        progs = tuple(int(p) for p in (overrides or {}).get(code, DEFAULT_GM_PROGRAMS.get(code, ())))
        if not progs:
            raise ValueError(f"no General MIDI program for label {code!r}: add it to the programs mapping")
        bad = [p for p in progs if not 0 <= p <= 127]
        if bad:
            raise ValueError(f"label {code!r}: programs must be 0..127, got {bad}")
        out[code] = progs
    return out


# ---------------------------------------------------------------------------------------------- rendering
# fluid_gen_type numbers (SoundFont 2.01 generators) used as per-channel offsets by fluid_synth_set_gen.
GEN_VIBLFOTOPITCH, GEN_FILTERFC, GEN_FILTERQ, GEN_VIBLFOFREQ = 6, 8, 9, 24
GEN_VOLENVATTACK, GEN_VOLENVRELEASE, GEN_FINETUNE = 34, 38, 52
_GEN_NAMES: Mapping[str, int] = MappingProxyType(
    {
        "filter_fc_cents": GEN_FILTERFC,
        "filter_q_cb": GEN_FILTERQ,
        "attack_timecents": GEN_VOLENVATTACK,
        "release_timecents": GEN_VOLENVRELEASE,
        "vibrato_depth_cents": GEN_VIBLFOTOPITCH,
        "vibrato_rate_cents": GEN_VIBLFOFREQ,
        "fine_tune_cents": GEN_FINETUNE,
    }
)


@dataclass(frozen=True)
class Preset:
    """Where a requested GM program is found in a library (see :meth:`_Renderer.preset`).

    Attributes:
        file: Index of the library's SoundFont file.
        bank: Bank number (128 = drum kits).
        program: Program actually used (differs from the requested one after a fallback).
        name: Preset name in the SoundFont.
    """

    file: int
    bank: int
    program: int
    name: str


class _Renderer:
    """Renders stems with FluidSynth; every sample library is read from disk once per process.

    A reused FluidSynth instance keeps state across ``system_reset`` (voice slots left by earlier notes
    change later output by up to -70 dBFS), which would make a stem depend on what the worker rendered
    before. So every stem gets a fresh instance; one long-lived "anchor" instance per library keeps the
    library in FluidSynth's sample cache, so the fresh instance only re-reads the preset table (~30 ms for
    FluidR3_GM instead of loading 140 MB).
    """

    _SETTINGS: Mapping[str, int] = MappingProxyType(
        # Reverb/chorus off (the room is ours, per recording); no mlock of 140 MB of samples.
        {"synth.reverb.active": 0, "synth.chorus.active": 0, "synth.lock-memory": 0}
    )

    def __init__(self, sample_rate: int) -> None:
        try:
            import fluidsynth
        except (ImportError, OSError) as exc:
            raise SynthError(
                f"pyfluidsynth/libfluidsynth is not available ({exc}): install libfluidsynth3"
            ) from exc
        self._fluidsynth: Any = fluidsynth
        self.sample_rate = sample_rate
        self._anchors: dict[str, tuple[Any, list[int]]] = {}
        self._presets: dict[tuple[str, int, bool], Preset | None] = {}
        # pyfluidsynth only wraps the dithered 16-bit writer; the float writer has no dither state.
        proto = ctypes.CFUNCTYPE(
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        )
        self._write_float = proto(("fluid_synth_write_float", fluidsynth._fl))
        # Generator offsets (NRPN-style, added to every voice's preset value) are not wrapped either.
        set_gen = fluidsynth._fl.fluid_synth_set_gen
        set_gen.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_float]
        set_gen.restype = ctypes.c_int
        self._set_gen = set_gen

    def _load(self, library: str) -> tuple[Any, list[int]]:
        lib = resolve_library(library)
        synth = self._fluidsynth.Synth(gain=0.2, samplerate=float(self.sample_rate), **self._SETTINGS)
        sfids = []
        for path in lib.paths():
            sfid = synth.sfload(str(path))
            if sfid < 0:
                synth.delete()
                raise SynthError(f"FluidSynth could not load {path} (library {library!r})")
            sfids.append(sfid)
        return synth, sfids

    def _anchor(self, library: str) -> tuple[Any, list[int]]:
        hit = self._anchors.get(library)
        if hit is None:
            hit = self._anchors[library] = self._load(library)
        return hit

    def _find(self, library: str, bank: int, program: int) -> Preset | None:
        synth, sfids = self._anchor(library)
        for i, sfid in enumerate(sfids):
            name = synth.sfpreset_name(sfid, bank, program)
            if name is not None:
                return Preset(i, bank, program, str(name))
        return None

    def preset(self, library: str, program: int, is_drum: bool = False) -> Preset | None:
        """The preset that renders ``program`` in ``library``, with a recorded fallback.

        Melodic: the library's banks in order (GS variations first for ``fluidr3_gs``), then the nearest
        program of the same GM family (program // 8) in bank 0, then the nearest program in bank 0. Drums:
        the requested kit, else the standard kit 0, else None (the library has no drum kits).
        """
        key = (library, program, is_drum)
        if key not in self._presets:
            found: Preset | None = None
            if get_library(library).kind == ADDITIVE:  # our synthesiser has a voice for every program
                found = Preset(0, 128 if is_drum else 0, program, additive.voice_for(program, is_drum))
            elif is_drum:
                found = self._find(library, 128, program) or self._find(library, 128, 0)
            else:
                for bank in get_library(library).melodic_banks:
                    found = found or self._find(library, bank, program)
                order = sorted(range(128), key=lambda q: (q // 8 != program // 8, abs(q - program), q))
                for q in order:
                    found = found or self._find(library, 0, q)
            self._presets[key] = found
        return self._presets[key]

    def has_preset(self, library: str, program: int, is_drum: bool = False) -> bool:
        """Whether ``program`` itself (no fallback) exists in one of the library's banks."""
        hit = self.preset(library, program, is_drum)
        return hit is not None and hit.program == program

    def render(
        self,
        inst: pretty_midi.Instrument,
        library: str,
        n_samples: int,
        gens: Mapping[str, float] | None = None,
    ) -> tuple[np.ndarray, Preset]:
        """Render one instrument to float32 stereo ``[2, n_samples]`` (FluidSynth's full-scale is 1.0).

        Args:
            inst: The notes, bends and controllers (channel 10 / bank 128 when ``is_drum``).
            library: Registry name.
            n_samples: Output length.
            gens: Generator offsets by name (see ``_GEN_NAMES``), applied on the channel before the
                first note.

        Returns:
            The audio and the preset used.

        Raises:
            SynthError: If the library has no preset for the program (drums: no kit at all).
        """
        preset = self.preset(library, inst.program, inst.is_drum)
        if preset is None:
            raise SynthError(f"library {library!r} has no preset for GM program {inst.program}")
        if get_library(library).kind == ADDITIVE:
            return additive.render(inst, self.sample_rate, n_samples, gens), preset
        self._anchor(library)  # keep the library cached while fresh instances come and go
        synth, sfids = self._load(library)
        try:
            chan = 9 if inst.is_drum else 0
            synth.program_select(chan, sfids[preset.file], preset.bank, preset.program)
            for name, value in (gens or {}).items():
                self._set_gen(synth.synth, chan, _GEN_NAMES[name], float(value))
            return self._render(synth, chan, inst, n_samples), preset
        finally:
            synth.delete()

    def _render(self, synth: Any, chan: int, inst: pretty_midi.Instrument, n_samples: int) -> np.ndarray:
        sr = self.sample_rate
        # (sample, order, kind, a, b): note-offs before other events before note-ons at one instant.
        events: list[tuple[int, int, str, int, int]] = []
        for n in inst.notes:
            events.append((round(n.start * sr), 2, "on", n.pitch, n.velocity))
            events.append((round(n.end * sr), 0, "off", n.pitch, 0))
        for b in inst.pitch_bends:
            events.append((round(b.time * sr), 1, "bend", b.pitch, 0))
        for c in inst.control_changes:
            events.append((round(c.time * sr), 1, "cc", c.number, c.value))
        events.sort()
        out = np.zeros((2, n_samples), dtype=np.float32)
        left, right = out[0].ctypes.data, out[1].ctypes.data
        pos = 0
        # Events between writes take effect at FluidSynth's next 64-sample block: the timing grid is the
        # same for every render because every render starts on a fresh instance.
        for sample, _, kind, a, b in events:
            sample = min(max(sample, 0), n_samples)
            if sample > pos:
                self._write_float(synth.synth, sample - pos, left, pos, 1, right, pos, 1)
                pos = sample
            if kind == "on":
                synth.noteon(chan, a, b)
            elif kind == "off":
                synth.noteoff(chan, a)
            elif kind == "bend":
                synth.pitch_bend(chan, a)
            else:
                synth.cc(chan, a, b)
        if pos < n_samples:
            self._write_float(synth.synth, n_samples - pos, left, pos, 1, right, pos, 1)
        return out

    def close(self) -> None:
        for synth, _ in self._anchors.values():
            synth.delete()
        self._anchors.clear()


@functools.cache
def _process_renderer(sample_rate: int) -> _Renderer:
    # Worker-process cache: each pool process loads every sample library at most once (FluidR3 is 140 MB).
    return _Renderer(sample_rate)


# ---------------------------------------------------------------------------------------------- composition
Note = tuple[float, float, int, int]  # (start beat, duration in beats, MIDI pitch, velocity)


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
    song: _Song,
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


# ---------------------------------------------------------------------------------------------- mixing
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


# ---------------------------------------------------------------------------------------------- items
TRAIN, TEST, MIX = 0, 1, 2  # item kinds (the first element of an item's seed spawn key)


@dataclass(frozen=True)
class _Job:
    kind: int  # TRAIN, TEST or MIX
    index: int
    seed: int
    out_dir: str
    sample_rate: int
    library: str  # every stem of an item comes from this library
    programs: tuple[tuple[str, tuple[int, ...]], ...]  # label -> programs (all labels)
    labels: tuple[str, ...]
    save_stems: bool
    label: str = ""  # training: the predominant label
    n_clips: int = 0  # training and mixes: clips cut from this recording
    prefix: int = 0  # training: per-label recording number
    recording: int = 0  # training: global recording id
    name: str = ""  # test: file name stem; mixes: the recording's name stem


class _Retry(Exception):
    """This draw produced an inaudible labelled stem; draw again."""


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


def _family(program: int) -> int:
    return program // 8


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


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


def _range(code: str) -> tuple[int, int]:
    return DEFAULT_RANGES.get(code, GENERIC_RANGE)


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
    song: _Song,
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


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.ascontiguousarray(audio.T), sample_rate, subtype=subtype)


def _write_sidecar(wav: Path, data: Mapping[str, Any]) -> None:
    wav.with_suffix(".json").write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def _save_stems(out_dir: Path, rel: str, buses: Mapping[str, np.ndarray], sample_rate: int) -> None:
    base = out_dir / STEMS_DIR / rel[: -len(".wav")]
    for name, audio in buses.items():
        # Float WAV keeps stems exact; libsndfile adds a PEAK chunk with a timestamp, so compare samples.
        _write_wav(base / f"{name}.wav", audio, sample_rate, subtype="FLOAT")


def _train_genre(rng: np.random.Generator, code: str) -> str:
    bias = _GENRE_BIAS.get(code, {})
    return str(_wpick(rng, GENRES, [bias.get(g, 1.0) for g in GENRES]))


def _render_info(
    job: _Job, song: _Song, room: _Room, finish: Mapping[str, Any], parts: Sequence[_Part]
) -> dict[str, Any]:
    """The sidecar's ``render`` object: everything drawn for the item, so a clip can be explained."""
    return {
        "seed": job.seed,
        "item": [job.kind, job.index],
        "sample_rate": job.sample_rate,
        "genre": song.genre,
        "tempo": song.tempo,
        "meter": song.beats_per_bar,
        "key": song.key_name(),
        "room": room.info,
        **finish,
        "parts": [_part_info(p) for p in parts],
    }


def _attempt_train(rng: np.random.Generator, renderer: _Renderer, job: _Job) -> dict[str, Any]:
    programs = dict(job.programs)
    sr = job.sample_rate
    clip_n = round(TRAIN_CLIP_S * sr)
    lead_in = float(rng.uniform(0.2, 1.0))
    n = round(lead_in * sr) + job.n_clips * clip_n
    genre = _train_genre(rng, job.label)
    song = _draw_song(rng, genre, n / sr)
    program = _label_program(rng, renderer, job.library, programs[job.label])
    velocity = int(rng.integers(70, 115))
    lead_notes = _lead_notes(rng, song, job.label, program, velocity)
    sustained = _family(program) not in _POLYPHONIC_FAMILIES
    lead = _make_part(
        rng,
        job,
        song,
        lead_notes,
        program,
        bus=job.label,
        role="lead",
        label=job.label,
        name=job.label,
        gain_db=0.0,
        pan=float(rng.uniform(-0.25, 0.25)),
        detune_cents=float(rng.uniform(-12, 12)),
        modulation=int(rng.integers(0, 50)) if sustained else 0,
    )
    labelled = {p for progs in programs.values() for p in progs}
    backing, drums = _accompaniment(
        rng, renderer, job, song, {_family(p) for p in programs[job.label]}, labelled, 0.35, "accompaniment"
    )
    buses = _render_parts(renderer, [lead, *backing], n)
    if job.label not in buses:
        raise _Retry("predominant part rendered silent")
    if "accompaniment" in buses:
        margin_db = float(rng.uniform(6, 12))  # predominant over accompaniment, whole recording
        acc = buses["accompaniment"]
        buses["accompaniment"] = acc * (
            _rms(buses[job.label]) * 10 ** (-margin_db / 20) / max(_rms(acc), 1e-12)
        )
    room = _draw_room(rng, genre, sr)
    buses, mix, finish = _finish(rng, buses, room, sr)

    files: list[dict[str, Any]] = []
    cuts: list[
        tuple[str, int, int, dict[str, Any]]
    ] = []  # (relative path, first sample, end sample, activity)
    start0 = round(lead_in * sr)
    group = ""
    for k in range(job.n_clips):
        s0, s1 = start0 + k * clip_n, start0 + (k + 1) * clip_n
        lead_db = _dbfs(buses[job.label][:, s0:s1])
        acc_db = _dbfs(buses["accompaniment"][:, s0:s1]) if "accompaniment" in buses else -240.0
        active = _active_fraction(buses[job.label][:, s0:s1], MIN_STEM_DBFS - 5)
        if lead_db < MIN_STEM_DBFS:
            raise _Retry(f"clip {k + 1}: predominant stem at {lead_db:.1f} dBFS")
        if lead_db - acc_db < MIN_LEAD_MARGIN_DB:
            raise _Retry(f"clip {k + 1}: predominant only {lead_db - acc_db:.1f} dB over accompaniment")
        if active < MIN_ACTIVE_FRACTION:
            raise _Retry(f"clip {k + 1}: predominant sounds in only {active:.0%} of the clip")
        name = format_train_name(job.label, genre, job.recording, k + 1, drums=drums, prefix=job.prefix)
        group = f"{job.label}/{name.rsplit('__', 1)[0]}"  # same rule as the IRMAS reader
        rel = f"{TRAIN_DIR}/{job.label}/{name}"
        activity = activity_record({job.label: buses[job.label][:, s0:s1]}, mix[:, s0:s1], sr)
        cuts.append((rel, s0, s1, activity))
        files.append(
            {
                "path": rel,
                "split": "train",
                "labels": [job.label],
                "start_s": round(s0 / sr, 6),
                "stem_dbfs": {bus: round(_dbfs(x[:, s0:s1]), 2) for bus, x in buses.items()},
                "lead_active": round(active, 3),
            }
        )
    out_dir = Path(job.out_dir)
    render = _render_info(job, song, room, finish, [lead, *backing])
    for (rel, s0, s1, activity), info in zip(cuts, files, strict=True):
        _write_wav(out_dir / rel, mix[:, s0:s1], sr)
        _write_sidecar(
            out_dir / rel,
            {
                "library": job.library,
                "labels": [job.label],
                "group": group,
                "start_s": info["start_s"],
                "render": render,
                "activity": activity,
            },
        )
        if job.save_stems:
            _save_stems(out_dir, rel, {b: x[:, s0:s1] for b, x in buses.items()}, sr)
    return {
        "kind": "train",
        "group": group,
        "label": job.label,
        "library": job.library,
        "genre": genre,
        "drums": drums,
        "tempo": song.tempo,
        "meter": song.beats_per_bar,
        "key": song.key_name(),
        "room": room.info,
        "parts": [_part_info(p) for p in (lead, *backing)],
        "files": files,
    }


def _test_roles(
    rng: np.random.Generator, codes: Sequence[str], programs: Mapping[str, int]
) -> dict[str, str]:
    roles: dict[str, str] = {}
    for i, code in enumerate(codes):
        if i == 0:
            roles[code] = "lead"
        elif _family(programs[code]) in _POLYPHONIC_FAMILIES and "comp" not in roles.values():
            roles[code] = "comp"
        elif _family(programs[code]) in _POLYPHONIC_FAMILIES:
            roles[code] = "arp"
        elif _range(code)[0] <= 40 and "bassline" not in roles.values() and rng.random() < 0.5:
            roles[code] = "bassline"
        else:
            roles[code] = str(_pick(rng, ("counter", "pad")))
    return roles


@dataclass
class _Multi:
    """A rendered multi-instrument recording (test excerpt or training mix) before it is written."""

    codes: list[str]
    parts: list[_Part]
    final: dict[str, np.ndarray]
    mix: np.ndarray
    levels: dict[str, float]
    dropped: dict[str, str]
    song: _Song
    room: _Room
    finish: dict[str, Any]
    drums: bool


def _compose_multi(
    rng: np.random.Generator,
    renderer: _Renderer,
    job: _Job,
    seconds: float,
    counts: tuple[tuple[int, ...], tuple[float, ...]],
) -> _Multi:
    """Compose, render and mix 1-4 labelled instruments plus unlabelled backing (one song, one library).

    Labelled stems that end up inaudible in the mix (see :data:`MIN_STEM_DBFS`,
    :data:`MAX_BELOW_LOUDEST_DB`) are removed from the mix, not only from the labels.
    """
    programs = dict(job.programs)
    sr = job.sample_rate
    n = round(seconds * sr)
    n_inst = min(len(job.labels), int(_wpick(rng, *counts)))
    codes = [job.labels[i] for i in rng.choice(len(job.labels), size=n_inst, replace=False)]
    genre = str(_pick(rng, GENRES))
    song = _draw_song(rng, genre, seconds)
    chosen = {c: _label_program(rng, renderer, job.library, programs[c]) for c in codes}
    roles = _test_roles(rng, codes, chosen)
    parts: list[_Part] = []
    for code in codes:
        lo, hi = _range(code)
        prog, role = chosen[code], roles[code]
        velocity = int(rng.integers(65, 112))
        if role == "lead":
            notes = _lead_notes(rng, song, code, prog, velocity)
        elif role in ("comp", "arp"):
            window = _window(rng, max(lo, 45), min(hi, 80), (12, 16))
            comp_style = str(_pick(rng, _STYLES[genre].comp_styles)) if role == "comp" else "arp"
            notes = _comp(rng, song, window, comp_style, velocity - 8)
        elif role == "bassline":
            notes = _bass(rng, song, (lo, min(hi, lo + 21)), _STYLES[genre].bass_style, velocity)
        elif role == "pad":
            notes = _comp(rng, song, _window(rng, lo, hi, (8, 12)), "sustain", velocity - 10)
        else:  # counter-melody: sparser, in its own register
            notes = _melody(
                rng,
                song,
                _window(rng, lo, hi, (10, 16)),
                density="low",
                rest_prob=0.15,
                velocity=velocity - 6,
                legato=0.95,
            )
        sustained = _family(prog) not in _POLYPHONIC_FAMILIES
        parts.append(
            _make_part(
                rng,
                job,
                song,
                notes,
                prog,
                bus=code,
                role=role,
                label=code,
                name=code,
                gain_db=0.0 if role == "lead" else float(rng.uniform(-6, 0)),
                pan=float(rng.uniform(-0.6, 0.6)),
                detune_cents=float(rng.uniform(-12, 12)),
                modulation=int(rng.integers(0, 50)) if sustained else 0,
            )
        )
    # Audible unlabelled backing must not sound like any label: ban every labelled program family.
    labelled = {p for progs in programs.values() for p in progs}
    banned = {_family(p) for p in labelled}
    has_comp = any(r in ("comp", "arp") for r in roles.values())
    has_bass = "bassline" in roles.values()
    backing, drums = _accompaniment(
        rng,
        renderer,
        job,
        song,
        banned,
        labelled,
        1.0,
        "backing",
        want_chords=not has_comp and rng.random() < 0.5,
        want_bass=not has_bass and rng.random() < 0.8,
    )
    buses = _render_parts(renderer, [*parts, *backing], n)
    present = [c for c in codes if c in buses]
    if "backing" in buses and present:
        ref = float(np.mean([_rms(buses[c]) for c in present]))
        margin_db = float(rng.uniform(6, 14))
        buses["backing"] = buses["backing"] * (
            ref * 10 ** (-margin_db / 20) / max(_rms(buses["backing"]), 1e-12)
        )
    room = _draw_room(rng, genre, sr)
    dropped: dict[str, str] = {c: "rendered silent" for c in codes if c not in buses}
    noise_rng_state = rng.bit_generator.state  # the same noise draw for every re-mix below
    for _ in range(len(codes) + 1):
        rng.bit_generator.state = noise_rng_state
        final, mix, finish = _finish(rng, buses, room, sr)
        final, mix = {k: _fade(v, sr) for k, v in final.items()}, _fade(mix, sr)  # no clicks at the cuts
        levels = {c: _dbfs(final[c]) for c in codes if c in final}
        if not levels:
            raise _Retry("no labelled instrument audible")
        loudest = max(levels.values())
        bad = {
            c: f"{db:.1f} dBFS"
            for c, db in levels.items()
            if db < MIN_STEM_DBFS
            or db < loudest - MAX_BELOW_LOUDEST_DB
            or _active_fraction(final[c], MIN_STEM_DBFS - 5) < 0.3
        }
        if not bad:
            break
        for c, why in bad.items():  # remove the inaudible stem from the mix, not only from the labels
            dropped[c] = why
            del buses[c]
    else:
        raise _Retry("labelled stems stayed inaudible")
    return _Multi(codes, [*parts, *backing], final, mix, levels, dropped, song, room, finish, drums)


def _multi_meta(kind: str, group: str, job: _Job, m: _Multi, files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": kind,
        "group": group,
        "library": job.library,
        "genre": m.song.genre,
        "drums": m.drums,
        "tempo": m.song.tempo,
        "meter": m.song.beats_per_bar,
        "key": m.song.key_name(),
        "room": m.room.info,
        "parts": [_part_info(p) for p in m.parts],
        "dropped": m.dropped,
        "files": files,
    }


def _attempt_test(rng: np.random.Generator, renderer: _Renderer, job: _Job) -> dict[str, Any]:
    sr = job.sample_rate
    seconds = float(np.round(rng.uniform(5.0, 20.0), 2))
    m = _compose_multi(rng, renderer, job, seconds, ((1, 2, 3, 4), (0.25, 0.35, 0.25, 0.15)))
    labels = [c for c in job.labels if c in m.levels]  # canonical label order
    rel = f"{TEST_DIR}/{job.name}.wav"
    out_dir = Path(job.out_dir)
    _write_wav(out_dir / rel, m.mix, sr)
    (out_dir / TEST_DIR / f"{job.name}.txt").write_text("".join(f"{c}\n" for c in labels), encoding="utf-8")
    _write_sidecar(
        out_dir / rel,
        {
            "library": job.library,
            "labels": labels,
            "group": job.name,
            "render": _render_info(job, m.song, m.room, m.finish, m.parts),
            "activity": activity_record({c: m.final[c] for c in labels}, m.mix, sr),
        },
    )
    if job.save_stems:
        _save_stems(out_dir, rel, m.final, sr)
    files = [
        {
            "path": rel,
            "split": "test",
            "labels": labels,
            "duration_s": seconds,
            "stem_dbfs": {bus: round(_dbfs(x), 2) for bus, x in m.final.items()},
        }
    ]
    return _multi_meta("test", job.name, job, m, files)


def _attempt_mix(rng: np.random.Generator, renderer: _Renderer, job: _Job) -> dict[str, Any]:
    """A multi-instrument training recording cut into 3-s clips labelled by per-frame activity."""
    sr = job.sample_rate
    clip_n = round(TRAIN_CLIP_S * sr)
    lead_in = float(rng.uniform(0.2, 1.0))
    start0 = round(lead_in * sr)
    seconds = (start0 + job.n_clips * clip_n) / sr
    m = _compose_multi(rng, renderer, job, seconds, ((2, 3, 4), (0.45, 0.35, 0.2)))
    present = [c for c in job.labels if c in m.levels]
    group = f"mix/{job.name}"
    cuts = []
    for k in range(job.n_clips):
        s0, s1 = start0 + k * clip_n, start0 + (k + 1) * clip_n
        activity = activity_record({c: m.final[c][:, s0:s1] for c in present}, m.mix[:, s0:s1], sr)
        labels = clip_labels(activity["labels"], job.labels)
        if not labels:
            raise _Retry(f"mix clip {k + 1}: no labelled instrument active in 30 % of the frames")
        cuts.append((f"{MIX_DIR}/{job.name}__{k + 1}.wav", s0, s1, activity, labels))
    out_dir = Path(job.out_dir)
    render = _render_info(job, m.song, m.room, m.finish, m.parts)
    files = []
    for rel, s0, s1, activity, labels in cuts:
        _write_wav(out_dir / rel, m.mix[:, s0:s1], sr)
        (out_dir / rel).with_suffix(".txt").write_text("".join(f"{c}\n" for c in labels), encoding="utf-8")
        _write_sidecar(
            out_dir / rel,
            {
                "library": job.library,
                "labels": labels,
                "group": group,
                "start_s": round(s0 / sr, 6),
                "render": render,
                "activity": activity,
            },
        )
        if job.save_stems:
            _save_stems(out_dir, rel, {b: x[:, s0:s1] for b, x in m.final.items()}, sr)
        files.append(
            {
                "path": rel,
                "split": "train",
                "labels": labels,
                "start_s": round(s0 / sr, 6),
                "stem_dbfs": {bus: round(_dbfs(x[:, s0:s1]), 2) for bus, x in m.final.items()},
            }
        )
    return _multi_meta("mix", group, job, m, files)


_ATTEMPTS = {TRAIN: _attempt_train, TEST: _attempt_test, MIX: _attempt_mix}


def _run_job(job: _Job, renderer: _Renderer) -> dict[str, Any]:
    rng = np.random.default_rng(np.random.SeedSequence(job.seed, spawn_key=(job.kind, job.index)))
    reasons: list[str] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            meta = _ATTEMPTS[job.kind](rng, renderer, job)
        except _Retry as exc:
            reasons.append(str(exc))
            continue
        meta["attempts"] = attempt
        if reasons:
            meta["redraw_reasons"] = reasons
        return meta
    what = {
        TRAIN: f"training recording {job.recording} ({job.label})",
        TEST: f"test excerpt {job.name}",
        MIX: f"training mix {job.name}",
    }[job.kind]
    raise SynthError(f"{what} ({job.library}): no audible result after {MAX_ATTEMPTS} draws: {reasons}")


def _pool_job(job: _Job) -> dict[str, Any]:
    return _run_job(job, _process_renderer(job.sample_rate))


# ---------------------------------------------------------------------------------------------- driver
def _split_even(total: int, n: int, rotate: int = 0) -> list[int]:
    """``total`` in ``n`` near-equal parts; the remainder goes to parts ``rotate``, ``rotate + 1``, ..."""
    counts = [total // n] * n
    for j in range(total % n):
        counts[(rotate + j) % n] += 1
    return counts


def plan_train(
    labels: Sequence[str], train_clips: int, clips_per_recording: int, libraries: Sequence[str] = ("",)
) -> list[tuple[str, str, int]]:
    """Split ``train_clips`` into recordings: labels round-robin, clips of a label spread over libraries.

    Args:
        labels: Label codes; label ``i`` gets ``train_clips // L`` clips, plus one if ``i < train_clips % L``.
        train_clips: Total number of clips.
        clips_per_recording: Clips cut from one recording (the last one of a label and library may have
            fewer).
        libraries: Library names; a label's clips are split evenly over them (the remainder rotates with
            the label index, so every library also gets about the same total).

    Returns:
        ``(label, library, n_clips)`` per recording, interleaved over labels.

    Raises:
        ValueError: On a negative count, ``clips_per_recording < 1`` or no library.
    """
    if train_clips < 0 or clips_per_recording < 1:
        raise ValueError("train_clips must be >= 0 and clips_per_recording >= 1")
    if not libraries:
        raise ValueError("at least one library is needed")
    n_lab = len(labels)
    per_label = _split_even(train_clips, n_lab) if n_lab else []
    queues: list[list[tuple[str, str, int]]] = []
    for i, code in enumerate(labels):
        recs: list[tuple[str, str, int]] = []
        per_lib = _split_even(per_label[i], len(libraries), rotate=i)
        # interleave libraries inside a label, so a small run still touches every library
        while any(per_lib):
            for j, lib in enumerate(libraries):
                if per_lib[j]:
                    take = min(clips_per_recording, per_lib[j])
                    recs.append((code, lib, take))
                    per_lib[j] -= take
        queues.append(recs)
    plan: list[tuple[str, str, int]] = []
    while any(queues):
        for q in queues:
            if q:
                plan.append(q.pop(0))
    return plan


def plan_mixes(train_mixes: int, clips_per_recording: int, libraries: Sequence[str]) -> list[tuple[str, int]]:
    """Split ``train_mixes`` multi-instrument clips into recordings spread evenly over libraries.

    Args:
        train_mixes: Total number of mix clips.
        clips_per_recording: Clips cut from one recording.
        libraries: Library names.

    Returns:
        ``(library, n_clips)`` per recording, interleaved over libraries.

    Raises:
        ValueError: On a negative count, ``clips_per_recording < 1`` or no library.
    """
    if train_mixes < 0 or clips_per_recording < 1:
        raise ValueError("train_mixes must be >= 0 and clips_per_recording >= 1")
    if not libraries:
        raise ValueError("at least one library is needed")
    remaining = _split_even(train_mixes, len(libraries))
    plan: list[tuple[str, int]] = []
    while any(remaining):
        for j, lib in enumerate(libraries):
            if remaining[j]:
                take = min(clips_per_recording, remaining[j])
                plan.append((lib, take))
                remaining[j] -= take
    return plan


def synthesize(
    out_dir: Path | str,
    *,
    labels: Sequence[str],
    programs: Mapping[str, Sequence[int]],
    train_clips: int,
    test_excerpts: int,
    seed: int,
    libraries: Sequence[str] | None = None,
    soundfonts: Sequence[Path | str] | None = None,
    train_mixes: int = 0,
    sample_rate: int = 44100,
    clips_per_recording: int = 3,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    save_stems: bool = False,
) -> SynthReport:
    """Render a synthetic data set in the IRMAS layout, from several sample libraries.

    Writes ``IRMAS-TrainingData/<code>/NNN__[code][dru|nod][genre]RRRR__k.wav`` (3.0-s clips, one
    predominant instrument), ``IRMAS-TrainingData-Mix/mix_<library>_RRRR__k.wav`` + ``.txt`` (3.0-s
    clips, 2-4 labelled instruments, labels = instruments active in >= 30 % of the 100-ms frames),
    ``IRMAS-TestingData/synth_<library>_NNNN.wav`` + ``.txt`` (5-20 s, 1-4 labelled instruments) and
    ``synth_meta.json`` (seed, libraries, counts, per-file parts and stem levels). Every ``.wav`` has a
    ``.json`` sidecar: ``library``, ``labels``, ``group``, ``render`` (everything drawn) and ``activity``
    (see :mod:`ml.data.activity`). Every item (recording or excerpt) comes from one library.

    Args:
        out_dir: Output directory (created).
        labels: Label codes to render.
        programs: Label code -> GM programs (0-based) that render it; must cover ``labels``
            (see :func:`resolve_programs`).
        train_clips: Total number of single-predominant training clips, spread round-robin over
            ``labels`` and, per label, evenly over the libraries.
        test_excerpts: Test excerpts *per library*.
        seed: Master seed; the output is a function of the seed and arguments, not of ``workers``.
        libraries: Registry names (:mod:`ml.data.libraries`).
        soundfonts: Deprecated spelling of ``libraries`` (names, or paths of registered libraries' files).
        train_mixes: Total number of multi-instrument training clips, spread evenly over the libraries.
        sample_rate: Output sample rate in Hz.
        clips_per_recording: Consecutive 3-s clips cut from one generated recording (one group).
        workers: Processes; default ``os.cpu_count()``; 1 renders in this process. Workers are started
            with ``spawn``, so a calling script needs the usual ``if __name__ == "__main__":`` guard.
        progress: Show a tqdm progress bar.
        overwrite: Replace an earlier synthetic data set in ``out_dir`` (only the folders this function
            writes are removed); otherwise an existing one raises ``FileExistsError``.
        save_stems: Also write each mixing bus per file under ``_stems/`` (float WAV), for checks.

    Returns:
        Counts and wall-clock seconds.

    Raises:
        ValueError: On bad arguments (unknown label programs or library, counts, sample rate).
        FileExistsError: If ``out_dir`` holds a data set and ``overwrite`` is False.
        FileNotFoundError: If a sample library is not installed (the message names its Debian package).
        SynthError: If rendering fails or an item stays inaudible after :data:`MAX_ATTEMPTS` draws.
    """
    t0 = time.perf_counter()
    labels = list(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be non-empty and unique, got {labels}")
    missing = [c for c in labels if not programs.get(c)]
    if missing:
        raise ValueError(f"no GM programs for label(s) {missing}; use resolve_programs() for defaults")
    progs = resolve_programs(labels, programs)
    if train_clips < 0 or test_excerpts < 0 or train_mixes < 0:
        raise ValueError("train_clips, train_mixes and test_excerpts must be >= 0")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be >= 8000 Hz, got {sample_rate}")
    if libraries is not None and soundfonts is not None:
        raise ValueError("give libraries or soundfonts (deprecated), not both")
    names = [_library_of(x) for x in (libraries if libraries is not None else soundfonts or [])]
    if not names:
        raise ValueError("at least one sample library is needed (see ml.data.libraries.library_names())")
    if len(set(names)) != len(names):
        raise ValueError(f"libraries must be unique, got {names}")
    for name in names:
        resolve_library(name)

    out = Path(out_dir)
    ours = [out / TRAIN_DIR, out / MIX_DIR, out / TEST_DIR, out / META_NAME, out / STEMS_DIR]
    existing = [p for p in ours if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a data set ({existing[0].name}); pass overwrite=True")
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)

    base = _Job(
        kind=TRAIN,
        index=0,
        seed=seed,
        out_dir=str(out),
        sample_rate=sample_rate,
        library=names[0],
        programs=tuple(progs.items()),
        labels=tuple(labels),
        save_stems=save_stems,
    )
    jobs: list[_Job] = []
    per_label: dict[str, int] = {}
    for i, (code, lib, n_clips) in enumerate(plan_train(labels, train_clips, clips_per_recording, names)):
        per_label[code] = per_label.get(code, 0) + 1
        jobs.append(
            replace(
                base,
                index=i,
                label=code,
                library=lib,
                n_clips=n_clips,
                prefix=per_label[code],
                recording=i + 1,
            )
        )
    for i, (lib, n_clips) in enumerate(plan_mixes(train_mixes, clips_per_recording, names)):
        jobs.append(
            replace(base, kind=MIX, index=i, library=lib, n_clips=n_clips, name=f"mix_{lib}_{i + 1:04d}")
        )
    for li, lib in enumerate(names):
        jobs += [
            replace(
                base, kind=TEST, index=li * test_excerpts + j, library=lib, name=f"synth_{lib}_{j + 1:04d}"
            )
            for j in range(test_excerpts)
        ]

    n_workers = min(workers if workers is not None else (os.cpu_count() or 1), max(len(jobs), 1))
    if n_workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list[dict[str, Any]] = []
    with tqdm(total=len(jobs), desc="synth", unit="item", disable=not progress) as bar:
        if n_workers == 1:
            renderer = _Renderer(sample_rate)
            try:
                for job in jobs:
                    results.append(_run_job(job, renderer))
                    bar.update()
            finally:
                renderer.close()
        else:
            # spawn: safe even when the caller has threads (torch, Ray); workers import only numpy/fluidsynth.
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
                futures = [pool.submit(_pool_job, job) for job in jobs]
                try:
                    for fut in cf.as_completed(futures):
                        results.append(fut.result())
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise

    files = sorted((dict(f, **_item_fields(r)) for r in results for f in r["files"]), key=lambda f: f["path"])
    train_files = [f for f in files if f["split"] == "train" and f["kind"] == "train"]
    mix_files = [f for f in files if f["kind"] == "mix"]
    test_files = [f for f in files if f["split"] == "test"]
    meta = {
        "generator": "ml.data.synth",
        "seed": seed,
        "sample_rate": sample_rate,
        "labels": labels,
        "programs": {c: list(p) for c, p in progs.items()},
        "libraries": names,
        "soundfonts": [next((p.name for p in get_library(n).paths()), n) for n in names],
        "clips_per_recording": clips_per_recording,
        "min_stem_dbfs": MIN_STEM_DBFS,
        "activity_hop_s": HOP_S,
        "counts": {
            "train_files": len(train_files),
            "mix_files": len(mix_files),
            "test_files": len(test_files),
            "train_recordings": sum(1 for j in jobs if j.kind == TRAIN),
            "mix_recordings": sum(1 for j in jobs if j.kind == MIX),
            "train_per_label": {c: sum(1 for f in train_files if f["labels"] == [c]) for c in labels},
            "mix_per_label": {c: sum(1 for f in mix_files if c in f["labels"]) for c in labels},
            "test_per_label": {c: sum(1 for f in test_files if c in f["labels"]) for c in labels},
            "per_library": {
                n: {
                    "train_files": sum(1 for f in train_files if f["library"] == n),
                    "mix_files": sum(1 for f in mix_files if f["library"] == n),
                    "test_files": sum(1 for f in test_files if f["library"] == n),
                }
                for n in names
            },
        },
        "files": files,
    }
    (out / META_NAME).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return SynthReport(len(train_files), len(test_files), time.perf_counter() - t0, out, len(mix_files))


def _item_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "kind",
        "group",
        "library",
        "genre",
        "drums",
        "tempo",
        "meter",
        "key",
        "room",
        "parts",
        "attempts",
        "dropped",
    )
    return {k: item[k] for k in keys if k in item}



def synthesize_config(cfg: Any, out_dir: Path | str, **overrides: Any) -> SynthReport:
    """:func:`synthesize` with every argument from ``cfg.synth`` (a :class:`~ml.config.Config`).

    The one mapping from the ``synth:`` section to a rendering, shared by ``mpic synth``, the benchmarks and
    the test fixtures; keyword ``overrides`` (e.g. ``workers``, ``progress``, ``test_excerpts``) win.
    """
    s = cfg.synth
    args: dict[str, Any] = {
        "labels": cfg.label_codes,
        "programs": resolve_programs(cfg.label_codes, s.programs),
        "train_clips": s.train_clips,
        "test_excerpts": s.test_excerpts,
        "seed": s.seed,
        "libraries": s.libraries,
        "train_mixes": s.train_mixes,
        "sample_rate": s.sample_rate,
        "clips_per_recording": s.clips_per_recording,
        "workers": s.workers,
    }
    return synthesize(out_dir, **(args | overrides))

__all__ = [
    "DEFAULT_GM_PROGRAMS",
    "DEFAULT_RANGES",
    "GENERIC_RANGE",
    "META_NAME",
    "MIN_STEM_DBFS",
    "TEST_DIR",
    "TRAIN_CLIP_S",
    "Preset",
    "SynthError",
    "SynthReport",
    "default_soundfonts",
    "plan_mixes",
    "plan_train",
    "resolve_programs",
    "resolve_soundfont",
    "synthesize",
    "synthesize_config",
]
