from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

import ml.data.libraries as libraries
from ml.data.libraries import (
    LIBRARIES,
    get_library,
    installed_libraries,
    library_family,
    library_names,
    resolve_library,
)
from ml.data.synth import DEFAULT_GM_PROGRAMS, DEFAULT_RANGES, Preset, _Renderer

SR = 22050


def _dbfs(x: np.ndarray) -> float:
    return 20 * math.log10(max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-12))


def test_registry_names_and_families() -> None:
    assert library_names() == ["timgm6mb", "fluidr3_gm", "fluidr3_gs", "csound_gm", "opl3"]
    assert library_family("fluidr3_gm") == library_family("fluidr3_gs") == "fluidr3"
    # csound's GM bank reuses TimGM6mb samples: one family, so holding one out holds out both
    assert library_family("csound_gm") == library_family("timgm6mb") == "timgm"
    assert library_family("opl3") == "opl3"
    assert library_family("") == ""  # real recordings
    assert get_library("FluidR3").name == "fluidr3_gm"  # the old config name still resolves
    with pytest.raises(ValueError, match="valid names: timgm6mb, fluidr3_gm, fluidr3_gs, csound_gm, opl3"):
        get_library("musicbox")
    with pytest.raises(ValueError, match="unknown sample library"):
        library_family("nope")


def test_missing_file_names_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libraries, "SF2_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install csound-soundfont"):
        resolve_library("csound_gm")
    with pytest.raises(FileNotFoundError, match="fluid-soundfont-gs"):
        resolve_library("fluidr3_gs")
    assert installed_libraries() == ["timgm6mb"]  # pretty_midi's file does not live in SF2_DIR


@pytest.fixture(scope="module")
def renderer():
    r = _Renderer(SR)
    yield r
    r.close()


def _render_batch(name: str, presets: list[tuple[Preset, int]], drums: Preset | None) -> list[np.ndarray]:
    """One fresh FluidSynth per library: the presets one after another, each note in its own 0.25-s slot."""
    import fluidsynth

    synth = fluidsynth.Synth(gain=0.2, samplerate=float(SR), **_Renderer._SETTINGS)
    try:
        sfids = [synth.sfload(str(p)) for p in resolve_library(name).paths()]
        slot = SR // 4
        out = []
        jobs = [(0, p, pitch) for p, pitch in presets]
        if drums is not None:
            jobs.append((9, drums, 38))
        for chan, preset, pitch in jobs:
            synth.program_select(chan, sfids[preset.file], preset.bank, preset.program)
            synth.noteon(chan, pitch, 100)
            audio = synth.get_samples(slot).astype(np.float64) / 32768
            synth.noteoff(chan, pitch)
            synth.get_samples(SR // 2)  # let the release die away before the next preset
            out.append(audio)
        return out
    finally:
        synth.delete()


@pytest.mark.parametrize("name", list(LIBRARIES))
def test_every_library_renders_every_label(renderer: _Renderer, name: str) -> None:
    """Each label's every program: the preset exists in the library and a short note is clearly audible."""
    resolve_library(name)  # installed (Makefile APT_PACKAGES)
    wanted: list[tuple[str, int, Preset, int]] = []
    for code, programs in DEFAULT_GM_PROGRAMS.items():
        lo, hi = DEFAULT_RANGES[code]
        for program in programs:
            preset = renderer.preset(name, program)
            assert preset is not None and preset.program == program, (name, code, program, preset)
            wanted.append((code, program, preset, (lo + hi) // 2))
    kit = renderer.preset(name, 0, is_drum=True)
    assert kit is not None and kit.bank == 128  # every allowed library has a standard drum kit (channel 10)
    audio = _render_batch(name, [(p, pitch) for _, _, p, pitch in wanted], kit)
    for (code, program, _, _), x in zip(wanted, audio, strict=False):
        assert _dbfs(x) > -50.0, (name, code, program, _dbfs(x))
    assert _dbfs(audio[-1]) > -60.0, (name, "drums")


def test_renderer_path_renders_a_label(renderer: _Renderer) -> None:
    inst = pretty_midi.Instrument(program=40)
    inst.notes.append(pretty_midi.Note(velocity=100, pitch=76, start=0.0, end=0.25))
    for name in ("opl3", "fluidr3_gs"):
        audio, used = renderer.render(inst, name, round(0.3 * SR))
        assert used == renderer.preset(name, 40) and _dbfs(audio) > -50.0


def test_fallbacks_are_recorded(renderer: _Renderer) -> None:
    # fluidr3_gs prefers the GS variation bank: 12-string guitar for program 25, GS organ for 16
    assert renderer.preset("fluidr3_gs", 25) == renderer.preset("fluidr3_gs", 25)
    gs = renderer.preset("fluidr3_gs", 25)
    assert gs is not None and (gs.bank, gs.program) == (8, 25)
    plain = renderer.preset("fluidr3_gs", 0)
    assert plain is not None and (plain.bank, plain.program) == (0, 0)  # no variation: bank 0
    # a kit the library lacks falls back to the standard kit
    opl = renderer.preset("opl3", 40, is_drum=True)
    assert opl is not None and (opl.bank, opl.program) == (128, 0)
    # generator offsets change the sound (filter cutoff down: less high-frequency energy)
    inst = pretty_midi.Instrument(program=73)
    inst.notes.append(pretty_midi.Note(velocity=100, pitch=79, start=0.0, end=0.25))
    dry, _ = renderer.render(inst, "timgm6mb", SR // 4)
    dark, _ = renderer.render(inst, "timgm6mb", SR // 4, {"filter_fc_cents": -4000.0})

    def hf(x: np.ndarray) -> float:
        spec = np.abs(np.fft.rfft(x[0]))
        return float(spec[len(spec) // 4 :].sum() / spec.sum())

    assert hf(dark) < 0.7 * hf(dry)
