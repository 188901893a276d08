"""Music tables: General MIDI programs and ranges per label, scales, chords and genre styles.

Everything here is data or a lookup in it; the composers (:mod:`ml.data.synth.compose`) and the
arrangement (:mod:`ml.data.synth.parts`) draw from these tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

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


def _family(program: int) -> int:
    return program // 8


def _range(code: str) -> tuple[int, int]:
    return DEFAULT_RANGES.get(code, GENERIC_RANGE)


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
