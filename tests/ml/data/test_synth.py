from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

import ml.data.synth.items as synth_items
from ml.data.activity import CLIP_MIN_FRACTION, clip_labels, load_activity, stem_activity
from ml.data.irmas import parse_train_name, scan_irmas
from ml.data.synth import (
    DEFAULT_GM_PROGRAMS,
    MIN_STEM_DBFS,
    SynthError,
    default_soundfonts,
    plan_mixes,
    plan_train,
    resolve_programs,
    resolve_soundfont,
    synthesize,
)

SMALL_LABELS = ["cel", "flu", "gac", "gel", "sax"]
LIBS = ["timgm6mb", "csound_gm"]  # the two small libraries: seconds to load in every worker
SMALL = {
    "labels": SMALL_LABELS,
    "programs": DEFAULT_GM_PROGRAMS,
    "train_clips": 10,
    "train_mixes": 3,
    "test_excerpts": 1,  # per library
    "seed": 3,
    "libraries": LIBS,
    "progress": False,
}


def _dbfs(x: np.ndarray) -> float:
    return 20 * math.log10(max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-12))


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file the synthesiser wrote, by relative path.

    Float stem WAVs carry a libsndfile PEAK chunk with a wall-clock timestamp, so for them the decoded
    samples are hashed; data set files (16-bit WAV, .txt, meta) are hashed byte for byte.
    """
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        data = sf.read(str(p), dtype="float32")[0].tobytes() if "_stems" in p.parts else p.read_bytes()
        out[p.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("synth_small")
    report = synthesize(out, workers=2, save_stems=True, **SMALL)
    assert (report.train_files, report.mix_files, report.test_files) == (10, 3, 2)
    return out, json.loads((out / "synth_meta.json").read_text())


def test_layout_reads_back_as_irmas(small_run: tuple[Path, dict[str, Any]]) -> None:
    out, meta = small_run
    manifest, rejected = scan_irmas(out, SMALL_LABELS)
    assert rejected == []
    train = manifest.filter("train", predicate=lambda r: r.path.startswith("IRMAS-TrainingData/"))
    mixes = manifest.filter("train", predicate=lambda r: r.path.startswith("IRMAS-TrainingData-Mix/"))
    test = manifest.filter("test")
    assert len(train) == 10 and len(mixes) == 3 and len(test) == 2
    for rec in train:
        folder = rec.path.split("/")[1]
        tags = parse_train_name(rec.path.rsplit("/", 1)[1])
        assert rec.labels == (folder,) == (tags.instrument,)
        assert tags.prefix is not None and tags.drums is not None  # NNN__[code][dru|nod][genre]RRRR__k
        info = sf.info(str(out / rec.path))
        assert info.frames == 3 * info.samplerate  # exactly 3.0 s
        assert info.subtype == "PCM_16"
    # round-robin: 2 clips per label, one from each library -> one recording (group) per label and library
    assert sorted(r.labels[0] for r in train) == sorted(SMALL_LABELS * 2)
    assert len({r.group for r in train}) == 10
    for lab in SMALL_LABELS:
        assert sorted(r.library for r in train if r.labels == (lab,)) == sorted(LIBS)
    # mixes: 2 + 1 clips over the libraries; the clips of one recording share a group
    assert sorted(r.library for r in mixes) == sorted(["timgm6mb", "timgm6mb", "csound_gm"])
    assert len({r.group for r in mixes}) == 2 and all(r.group.startswith("mix/") for r in mixes)
    for rec in mixes:
        assert rec.duration_s == 3.0 and 1 <= len(rec.labels) <= 4
    # test excerpts: test_excerpts per library
    assert sorted(r.library for r in test) == sorted(LIBS)
    for rec in test:
        assert 5.0 <= rec.duration_s <= 20.0
        assert 1 <= len(rec.labels) <= 4
    assert meta["seed"] == 3 and meta["libraries"] == LIBS
    assert meta["soundfonts"] == ["TimGM6mb.sf2", "sf_GMbank.sf2"]
    assert meta["counts"]["train_files"] == 10 and meta["counts"]["test_files"] == 2
    assert meta["counts"]["mix_files"] == 3


def test_meta_matches_files(small_run: tuple[Path, dict[str, Any]]) -> None:
    out, meta = small_run
    manifest, _ = scan_irmas(out, SMALL_LABELS)
    by_path = {r.path: r for r in manifest}
    assert sorted(by_path) == sorted(f["path"] for f in meta["files"])
    for f in meta["files"]:
        rec = by_path[f["path"]]
        assert tuple(f["labels"]) == rec.labels
        assert f["group"] == rec.group
        assert f["library"] == rec.library
        if f["kind"] != "train":
            txt = (out / f["path"]).with_suffix(".txt").read_text().split()
            assert txt == f["labels"]
        side = json.loads((out / f["path"]).with_suffix(".json").read_text())
        assert (
            side["library"] == f["library"] and side["labels"] == f["labels"] and side["group"] == f["group"]
        )
        assert set(side["activity"]["labels"]) >= set(f["labels"])
        assert side["render"]["seed"] == 3 and side["render"]["parts"] == f["parts"]
        for p in f["parts"]:
            assert p["library"] == f["library"] and p["preset"] is not None
            if p["label"] == "gel":
                assert p["drive"]["kind"] in ("clean", "crunch", "distortion")
        # every labelled part was rendered with one of that label's programs
        lead = [p for p in f["parts"] if p["label"] is not None]
        assert {p["label"] for p in lead} >= set(f["labels"])
        for p in lead:
            assert p["program"] in DEFAULT_GM_PROGRAMS[p["label"]]
        # unlabelled backing never uses a labelled program
        if f["split"] == "test":
            labelled = {q for lab in SMALL_LABELS for q in DEFAULT_GM_PROGRAMS[lab]}
            assert all(p["is_drum"] or p["program"] not in labelled for p in f["parts"] if p["label"] is None)


def test_labelled_stems_really_sound(small_run: tuple[Path, dict[str, Any]]) -> None:
    out, meta = small_run
    for f in meta["files"]:
        mix, _ = sf.read(str(out / f["path"]), always_2d=True)
        stem_dir = out / "_stems" / f["path"][: -len(".wav")]
        stems = {p.stem: sf.read(str(p), always_2d=True)[0] for p in stem_dir.glob("*.wav")}
        # the written mix is the sum of the stems (up to 16-bit rounding): stem levels are the truth
        np.testing.assert_allclose(sum(stems.values()), mix, atol=2.5 / 32768)
        levels = {name: _dbfs(x) for name, x in stems.items()}
        for name, level in levels.items():
            assert level == pytest.approx(f["stem_dbfs"][name], abs=0.05)
        for lab in f["labels"]:
            assert levels[lab] > MIN_STEM_DBFS, (f["path"], lab, levels)
        act = load_activity(out / f["path"], SMALL_LABELS)
        assert act is not None and act.shape == (
            len(SMALL_LABELS),
            math.ceil(mix.shape[0] / (sf.info(str(out / f["path"])).samplerate * 0.1)),
        )
        if f["kind"] == "mix":
            # activity is the stems' rule re-computed; labels = active in >= 30 % of the frames
            sr = sf.info(str(out / f["path"])).samplerate
            float_mix = sum(stems.values())  # the mix before 16-bit rounding, as the generator saw it
            recomputed = {
                lab: stem_activity(stems[lab].T, float_mix.T, sr).tolist()
                for lab in SMALL_LABELS
                if lab in stems
            }
            assert f["labels"] == clip_labels(recomputed, SMALL_LABELS)
            side = json.loads((out / f["path"]).with_suffix(".json").read_text())
            for lab, row in recomputed.items():
                assert side["activity"]["labels"][lab] == row
                assert (np.mean(row) >= CLIP_MIN_FRACTION) == (lab in f["labels"])
        elif f["kind"] == "train":
            (lab,) = f["labels"]
            others = [x for name, x in stems.items() if name != lab]
            if others:  # predominant: clearly louder than everything else together
                assert levels[lab] - _dbfs(sum(others)) >= 3.0, (f["path"], levels)
        else:
            # nothing labelled is missing: every labelled program part is in the labels
            assert set(stems) - {"backing", "noise"} == set(f["labels"])


def test_deterministic_for_seed_and_independent_of_workers(
    small_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = small_run
    again = tmp_path / "again"
    synthesize(again, workers=1, save_stems=True, **SMALL)
    assert _digest(again) == _digest(out)  # wavs, sidecars, label files and meta, byte for byte

    other = tmp_path / "other"
    synthesize(other, workers=2, **{**SMALL, "seed": 4})
    a = sf.read(str(sorted((out / "IRMAS-TrainingData" / "cel").glob("*.wav"))[0]))[0]
    b = sf.read(str(sorted((other / "IRMAS-TrainingData" / "cel").glob("*.wav"))[0]))[0]
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert (
        _digest(other)["IRMAS-TestingData/synth_csound_gm_0001.wav"]
        != _digest(out)["IRMAS-TestingData/synth_csound_gm_0001.wav"]
    )
    mix = "IRMAS-TrainingData-Mix/mix_timgm6mb_0001__1.wav"
    assert _digest(other)[mix] != _digest(out)[mix]


def test_silent_predominant_part_is_redrawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synth_items._lead_notes
    calls: list[int] = []

    def first_call_silent(*args: Any, **kwargs: Any) -> list[Any]:
        calls.append(1)
        return [] if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(synth_items, "_lead_notes", first_call_silent)
    synthesize(
        tmp_path,
        labels=["vio"],
        programs=DEFAULT_GM_PROGRAMS,
        train_clips=2,
        test_excerpts=0,
        seed=0,
        soundfonts=default_soundfonts()[:1],
        workers=1,
        progress=False,
    )
    meta = json.loads((tmp_path / "synth_meta.json").read_text())
    assert len(meta["files"]) == 2
    for f in meta["files"]:
        assert f["attempts"] >= 2 and f["labels"] == ["vio"]
        assert f["stem_dbfs"]["vio"] > MIN_STEM_DBFS


def test_always_silent_predominant_part_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth_items, "_lead_notes", lambda *a, **k: [])
    with pytest.raises(SynthError, match="no audible result"):
        synthesize(
            tmp_path,
            labels=["vio"],
            programs=DEFAULT_GM_PROGRAMS,
            train_clips=1,
            test_excerpts=0,
            seed=0,
            soundfonts=default_soundfonts()[:1],
            workers=1,
            progress=False,
        )


def test_silent_test_instrument_is_not_labelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth_items, "_lead_notes", lambda *a, **k: [])
    synthesize(
        tmp_path,
        labels=SMALL_LABELS,
        programs=DEFAULT_GM_PROGRAMS,
        train_clips=0,
        test_excerpts=3,
        seed=5,
        soundfonts=default_soundfonts()[:1],
        workers=1,
        progress=False,
    )
    meta = json.loads((tmp_path / "synth_meta.json").read_text())
    assert len(meta["files"]) == 3
    for f in meta["files"]:
        (silent,) = [p["label"] for p in f["parts"] if p["role"] == "lead"]
        assert silent not in f["labels"] and f["labels"]
        assert f["dropped"][silent] == "rendered silent"
        assert (tmp_path / f["path"]).with_suffix(".txt").read_text().split() == f["labels"]


def test_existing_output_needs_overwrite(small_run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = small_run
    with pytest.raises(FileExistsError, match="overwrite"):
        synthesize(out, workers=1, **SMALL)


def test_default_size_run_is_fast_and_balanced(tmp_path: Path) -> None:
    labels = list(DEFAULT_GM_PROGRAMS)
    t0 = time.perf_counter()
    report = synthesize(
        tmp_path,
        labels=labels,
        programs=DEFAULT_GM_PROGRAMS,
        train_clips=22,
        test_excerpts=1,
        seed=1,
        libraries=LIBS,
        workers=2,
        progress=False,
    )
    elapsed = time.perf_counter() - t0
    assert elapsed < 60, f"22 clips + 2 excerpts took {elapsed:.1f} s"
    assert (report.train_files, report.test_files) == (22, 2)
    manifest, rejected = scan_irmas(tmp_path, labels)
    assert rejected == [] and len(manifest) == 24
    counts = {lab: sum(r.labels == (lab,) for r in manifest.filter("train")) for lab in labels}
    assert set(counts.values()) == {2}


def test_plan_train() -> None:
    assert plan_train(list("abcdefghijk"), 22, 3) == [(c, "", 2) for c in "abcdefghijk"]
    plan = plan_train(["a", "b", "c", "d"], 10, 2)
    assert sum(n for _, _, n in plan) == 10
    per = {c: sum(n for lab, _, n in plan if lab == c) for c in "abcd"}
    assert per == {"a": 3, "b": 3, "c": 2, "d": 2}
    assert all(n <= 2 for _, _, n in plan)
    assert plan_train(["a", "b"], 0, 3) == []
    # per label, clips spread evenly over libraries; the remainder rotates so library totals balance
    libs = ["x", "y", "z", "w"]
    plan = plan_train(list("abcdefghijk"), 440, 3, libs)
    per_pair = {
        (lab, lib): sum(n for la, li, n in plan if (la, li) == (lab, lib))
        for lab in "abcdefghijk"
        for lib in libs
    }
    assert set(per_pair.values()) == {10}
    plan = plan_train(list("abcdefghijk"), 22, 3, libs)
    totals = [sum(n for _, li, n in plan if li == lib) for lib in libs]
    assert sum(totals) == 22 and max(totals) - min(totals) <= 1
    assert all(len({li for la, li, _ in plan if la == lab}) == 2 for lab in "abcdefghijk")
    with pytest.raises(ValueError, match="library"):
        plan_train(["a"], 3, 3, [])


def test_plan_mixes() -> None:
    assert plan_mixes(7, 3, ["x", "y"]) == [("x", 3), ("y", 3), ("x", 1)]
    assert plan_mixes(0, 3, ["x"]) == []
    with pytest.raises(ValueError):
        plan_mixes(-1, 3, ["x"])


def test_soundfont_and_program_resolution(tmp_path: Path) -> None:
    tim = resolve_soundfont("timgm6mb")
    assert tim.name == "TimGM6mb.sf2" and tim.is_file()
    assert default_soundfonts()[0] == tim
    assert resolve_soundfont(str(tim)) == tim
    with pytest.raises(FileNotFoundError):
        resolve_soundfont(tmp_path / "none.sf2")
    (tmp_path / "other.sf2").write_bytes(b"RIFF")
    with pytest.raises(ValueError, match="not a registered sample library"):
        resolve_soundfont(tmp_path / "other.sf2")  # only the registry's libraries may be used
    with pytest.raises(ValueError, match="valid names"):
        synthesize(tmp_path / "y", **{**SMALL, "libraries": ["timgm6mb", "bogus"]})
    assert not (tmp_path / "y").exists()  # refused before anything was written
    assert resolve_programs(["cel", "new"], {"new": [5]}) == {"cel": (42,), "new": (5,)}
    with pytest.raises(ValueError, match="no General MIDI program"):
        resolve_programs(["new"])
    with pytest.raises(ValueError, match=r"0\.\.127"):
        resolve_programs(["cel"], {"cel": [128]})
    with pytest.raises(ValueError, match="no GM programs"):
        synthesize(
            tmp_path / "x",
            labels=["cel", "new"],
            programs=DEFAULT_GM_PROGRAMS,
            train_clips=1,
            test_excerpts=0,
            seed=0,
            soundfonts=default_soundfonts(),
            progress=False,
        )
