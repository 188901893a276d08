"""Stem rendering: sample-library resolution and the FluidSynth / additive renderer.

FluidSynth renders through the float API (no dither) with its own reverb and chorus off, and every stem
gets a fresh instance, so a stem does not depend on what the worker rendered before.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pretty_midi

from ml.data import additive
from ml.data.libraries import ADDITIVE, LIBRARIES, get_library, resolve_library
from ml.data.synth.base import SynthError


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
