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
from ml.data.synth import DEFAULT_GM_PROGRAMS, DEFAULT_RANGES, Preset
from ml.data.synth.render import _Renderer

SR = 22050


def _dbfs(x: np.ndarray) -> float:
    return 20 * math.log10(max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-12))


def test_registry_names_and_families() -> None:
    assert library_names() == ["timgm6mb", "fluidr3_gm", "fluidr3_gs", "csound_gm", "mpic_additive", "opl3"]
    assert library_family("fluidr3_gm") == library_family("fluidr3_gs") == "fluidr3"
    # csound's GM bank reuses TimGM6mb samples: one family, so holding one out holds out both
    assert library_family("csound_gm") == library_family("timgm6mb") == "timgm"
    assert library_family("opl3") == "opl3" and library_family("mpic_additive") == "mpic_additive"
    assert library_family("") == ""  # real recordings
    assert get_library("FluidR3").name == "fluidr3_gm"  # the old config name still resolves
    with pytest.raises(
        ValueError, match="valid names: timgm6mb, fluidr3_gm, fluidr3_gs, csound_gm, mpic_additive, opl3"
    ):
        get_library("musicbox")
    with pytest.raises(ValueError, match="unknown sample library"):
        library_family("nope")


def test_missing_file_names_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libraries, "SF2_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install csound-soundfont"):
        resolve_library("csound_gm")
    with pytest.raises(FileNotFoundError, match="fluid-soundfont-gs"):
        resolve_library("fluidr3_gs")
    assert installed_libraries() == ["timgm6mb", "mpic_additive"]  # neither lives in SF2_DIR


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
    batch = [(p, pitch) for _, _, p, pitch in wanted]
    if get_library(name).kind == "additive":
        audio = _render_batch_additive(renderer, batch, kit)
    else:
        audio = _render_batch(name, batch, kit)
    for (code, program, _, _), x in zip(wanted, audio, strict=False):
        assert _dbfs(x) > -50.0, (name, code, program, _dbfs(x))
    assert _dbfs(audio[-1]) > -60.0, (name, "drums")


def _render_batch_additive(
    renderer: _Renderer, presets: list[tuple[Preset, int]], drums: Preset | None
) -> list[np.ndarray]:
    out = []
    for preset, pitch in [*presets, *([(drums, 38)] if drums else [])]:
        inst = pretty_midi.Instrument(program=preset.program, is_drum=preset.bank == 128)
        inst.notes.append(pretty_midi.Note(velocity=100, pitch=pitch, start=0.0, end=0.25))
        out.append(renderer.render(inst, "mpic_additive", SR // 4)[0])
    return out


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


def test_additive_voices_are_deterministic_and_pitched() -> None:
    from ml.data import additive

    for program, pitch in ((40, 76), (71, 69), (24, 60), (52, 63), (0, 64), (56, 67)):
        inst = pretty_midi.Instrument(program=program)
        inst.notes.append(pretty_midi.Note(velocity=90, pitch=pitch, start=0.0, end=0.5))
        a = additive.render(inst, SR, SR // 2)
        b = additive.render(inst, SR, SR // 2)
        assert np.array_equal(a, b) and a.shape == (2, SR // 2)
        seg = a[0, SR // 10 : SR // 2].astype(np.float64)
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), 1 << 15))
        freqs = np.fft.rfftfreq(1 << 15, 1 / SR)
        f0 = 440 * 2 ** ((pitch - 69) / 12)
        harmonics = [spec[np.argmin(np.abs(freqs - h * f0))] for h in (1, 2, 3)]
        assert max(harmonics) > 0.2 * spec[freqs > 50].max(), (
            program,
            pitch,
        )  # energy at the note's harmonics
    other = pretty_midi.Instrument(program=40)
    other.notes.append(pretty_midi.Note(velocity=90, pitch=77, start=0.0, end=0.5))
    assert not np.array_equal(additive.render(other, SR, SR // 2), a)
    assert additive.voice_for(73) == "flute" and additive.voice_for(0, is_drum=True) == "drums"
