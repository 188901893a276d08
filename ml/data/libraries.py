"""Registry of the sample libraries ``mpic synth`` may render with.

Only the libraries the project is allowed to train, tune, validate and test on are registered; a name
outside the registry is an error (no arbitrary ``.sf2`` paths), so a forbidden library cannot slip in
through configuration.

Every library belongs to a *family*: libraries that share recorded samples share a family, and the
leave-one-library-out protocol holds out a whole family. Measured on 2026-11-30 (spectral and waveform
correlation of single notes of every label's first program): Debian's csound GM bank reuses TimGM6mb's
samples for most instruments (cello and organ waveforms correlate 1.000, acoustic guitar 0.92, electric
guitar 0.86, piano 0.77), so ``csound_gm`` is in family ``timgm``, not a family of its own. FluidR3_GS is
FluidR3_GM's GS variation presets, so both are family ``fluidr3``. The OPL3 FM bank is synthesised from
FM operators and shares nothing; ``mpic_additive`` (:mod:`ml.data.additive`) is our own numpy
synthesiser, its own family.

The Debian ``fluid-soundfont-gs`` file holds only sound-effect variations (banks 1-8, programs 120-127)
and one SFX drum kit; it is an add-on to FluidR3_GM. So ``fluidr3_gs`` loads both files and prefers the
GS variation banks 8 and 16 (detuned organs, 12-string guitar, ukulele, slow violin, funk guitar, ...)
and the GS drum kits, falling back to bank 0 where no variation exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import pretty_midi

SF2_DIR = Path("/usr/share/sounds/sf2")
ADDITIVE = "additive"
SOUNDFONT = "sf2"


@dataclass(frozen=True)
class SampleLibrary:
    """One registered sample library.

    Attributes:
        name: Registry name (what ``synth.libraries`` lists and the manifest records).
        family: Libraries sharing samples share a family; leave-one-library-out holds out a family.
        kind: ``"sf2"`` (rendered by FluidSynth) or ``"additive"`` (our numpy synthesiser).
        files: SoundFont file names (for ``sf2``), relative to the package's install location.
        package: Where the files come from: a Debian package or ``pretty_midi``.
        melodic_banks: Banks tried in order for a melodic program (GS variations before bank 0).
        description: One line for listings.
    """

    name: str
    family: str
    kind: str
    files: tuple[str, ...]
    package: str
    melodic_banks: tuple[int, ...] = (0,)
    description: str = ""

    def paths(self) -> list[Path]:
        """Absolute paths of the library's SoundFont files (may not exist; see :func:`resolve_library`)."""
        if self.kind != SOUNDFONT:
            return []
        if self.package == "pretty_midi":
            base = Path(pretty_midi.__file__).resolve().parent
            return [base / f for f in self.files]
        return [SF2_DIR / f for f in self.files]


LIBRARIES: Mapping[str, SampleLibrary] = MappingProxyType(
    {
        lib.name: lib
        for lib in (
            SampleLibrary(
                "timgm6mb",
                "timgm",
                SOUNDFONT,
                ("TimGM6mb.sf2",),
                "pretty_midi",
                description="TimGM6mb (6 MB GM)",
            ),
            SampleLibrary(
                "fluidr3_gm",
                "fluidr3",
                SOUNDFONT,
                ("FluidR3_GM.sf2",),
                "fluid-soundfont-gm",
                description="FluidR3 General MIDI (140 MB)",
            ),
            SampleLibrary(
                "fluidr3_gs",
                "fluidr3",
                SOUNDFONT,
                ("FluidR3_GS.sf2", "FluidR3_GM.sf2"),
                "fluid-soundfont-gs",
                melodic_banks=(8, 16, 0),
                description="FluidR3 GS: variation banks 8/16 and GS drum kits before bank 0",
            ),
            SampleLibrary(
                "csound_gm",
                "timgm",
                SOUNDFONT,
                ("sf_GMbank.sf2",),
                "csound-soundfont",
                description="csound's GM bank (shares many samples with TimGM6mb)",
            ),
            SampleLibrary(
                "mpic_additive",
                "mpic_additive",
                ADDITIVE,
                (),
                "ml.data.additive",
                description="our numpy synthesiser: additive, Karplus-Strong and formant voices",
            ),
            SampleLibrary(
                "opl3",
                "opl3",
                SOUNDFONT,
                ("OPL-3_FM_128M.sf2",),
                "opl3-soundfont",
                description="OPL3 FM synthesis bank",
            ),
        )
    }
)
"""Registered libraries by name."""

ALIASES: Mapping[str, str] = MappingProxyType({"fluidr3": "fluidr3_gm"})  # the pre-registry config name


class UnknownLibraryError(ValueError):
    """A sample library name that is not registered; the message lists the valid names."""


def library_names() -> list[str]:
    """Registered library names, in registry order."""
    return list(LIBRARIES)


def get_library(name: str) -> SampleLibrary:
    """Look a library up by name (case-insensitive; ``fluidr3`` is an alias of ``fluidr3_gm``).

    Args:
        name: Registry name.

    Returns:
        The library.

    Raises:
        UnknownLibraryError: For an unknown name; the message lists the valid names.
    """
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    lib = LIBRARIES.get(key)
    if lib is None:
        raise UnknownLibraryError(f"unknown sample library {name!r}; valid names: {', '.join(LIBRARIES)}")
    return lib


def library_family(name: str) -> str:
    """Family of a recorded library name; ``""`` (real recordings, no library) maps to ``""``.

    Args:
        name: A library name as recorded in a manifest, or ``""``.

    Returns:
        The family name, or ``""``.

    Raises:
        ValueError: For a non-empty unknown name.
    """
    return get_library(name).family if name else ""


def resolve_library(name: str) -> SampleLibrary:
    """Look a library up and check that its files are installed.

    Args:
        name: Registry name.

    Returns:
        The library.

    Raises:
        ValueError: For an unknown name.
        FileNotFoundError: If a file is missing; the message names the Debian package that provides it.
    """
    lib = get_library(name)
    for path in lib.paths():
        if not path.is_file():
            how = (
                "it ships with the pretty_midi package"
                if lib.package == "pretty_midi"
                else f"install the Debian package {lib.package} (apt-get install {lib.package})"
            )
            raise FileNotFoundError(f"sample library {lib.name!r}: {path} not found: {how}")
    return lib


def installed_libraries() -> list[str]:
    """Names of the registered libraries whose files are present on this machine."""
    out = []
    for name in LIBRARIES:
        try:
            resolve_library(name)
        except FileNotFoundError:
            continue
        out.append(name)
    return out


__all__ = [
    "LIBRARIES",
    "SampleLibrary",
    "UnknownLibraryError",
    "get_library",
    "installed_libraries",
    "library_family",
    "library_names",
    "resolve_library",
]
