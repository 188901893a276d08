from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import ml.data.irmas as irmas
from ml.data.irmas import (
    IrmasLayoutError,
    TrainTags,
    build_manifest,
    format_train_name,
    parse_train_name,
    scan_irmas,
)

LABELS = ["cel", "cla", "flu", "gac", "gel", "org", "pia", "sax", "tru", "vio", "voi"]
SR = 8000


def _wav(path: Path, seconds: float = 0.5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), np.stack([np.sin(2 * np.pi * 440 * t)] * 2, axis=1) * 0.3, SR, subtype="PCM_16")


def _make_irmas(root: Path) -> None:
    train = root / "IRMAS-TrainingData"
    good = [
        "cel/008__[cel][nod][cla]0058__1.wav",
        "cel/008__[cel][nod][cla]0058__2.wav",
        "cel/008__[cel][nod][cla]0058__3.wav",
        "cel/009__[cel][dru][pop_roc]0060__1.wav",
        "pia/[pia][cla]1308__1.wav",
        "pia/[pia][cla]1308__3.wav",
        "cla/[cla][jaz_blu]0001__1.wav",
        "cla/010__[cla][nod][cla]0077__2.wav",  # clarinet (first bracket) in a classical piece (last)
    ]
    for rel in good:
        _wav(train / rel)
    _wav(train / "cel" / "cello_take_1.wav")  # unparsable
    _wav(train / "cel" / "[vio][cla]0001__1.wav")  # tag disagrees with folder
    _wav(train / "xyz" / "[xyz][cla]0001__1.wav")  # unknown label code
    (train / "gac").mkdir(parents=True)
    (train / "gac" / "[gac][cou_fol]0002__1.wav").write_bytes(b"")  # zero-byte
    (train / "README.txt").write_text("not audio")
    (train / "pia" / ".DS_Store").write_bytes(b"\0")

    part1 = root / "IRMAS-TestingData-Part1" / "Part1"
    _wav(part1 / "02 - Hit Or Miss-1.wav", 1.5)
    (part1 / "02 - Hit Or Miss-1.txt").write_text("voi\t\n\n gel \r\n")
    _wav(part1 / "03 - bad-1.wav")
    (part1 / "03 - bad-1.txt").write_text("gel\nxyz\n")  # unknown code
    _wav(part1 / "04 - orphan-1.wav")  # no .txt
    _wav(part1 / "05 - empty-1.wav")
    (part1 / "05 - empty-1.txt").write_text("\n  \n")
    test = root / "IRMAS-TestingData"
    _wav(test / "other-2.wav", 2.0)
    (test / "other-2.txt").write_text("pia\npia\n")


@pytest.fixture()
def irmas_root(tmp_path: Path) -> Path:
    root = tmp_path / "irmas"
    _make_irmas(root)
    return root


def test_scan_records_groups_and_tags(irmas_root: Path) -> None:
    manifest, rejected = scan_irmas(irmas_root, LABELS)
    by_path = {r.path: r for r in manifest}
    train = {p: r for p, r in by_path.items() if r.split == "train"}
    assert sorted(train) == sorted(
        f"IRMAS-TrainingData/{p}"
        for p in [
            "cel/008__[cel][nod][cla]0058__1.wav",
            "cel/008__[cel][nod][cla]0058__2.wav",
            "cel/008__[cel][nod][cla]0058__3.wav",
            "cel/009__[cel][dru][pop_roc]0060__1.wav",
            "pia/[pia][cla]1308__1.wav",
            "pia/[pia][cla]1308__3.wav",
            "cla/[cla][jaz_blu]0001__1.wav",
            "cla/010__[cla][nod][cla]0077__2.wav",
        ]
    )
    cel1 = by_path["IRMAS-TrainingData/cel/008__[cel][nod][cla]0058__1.wav"]
    assert cel1.labels == ("cel",) and cel1.genre == "cla" and cel1.drums is False
    assert cel1.duration_s == pytest.approx(0.5)
    groups = {r.group for r in train.values()}
    assert groups == {
        "cel/008__[cel][nod][cla]0058",
        "cel/009__[cel][dru][pop_roc]0060",
        "pia/[pia][cla]1308",
        "cla/[cla][jaz_blu]0001",
        "cla/010__[cla][nod][cla]0077",
    }
    assert sum(r.group == "cel/008__[cel][nod][cla]0058" for r in train.values()) == 3
    pia = by_path["IRMAS-TrainingData/pia/[pia][cla]1308__3.wav"]
    assert pia.genre == "cla" and pia.drums is None and pia.labels == ("pia",)
    assert by_path["IRMAS-TrainingData/cel/009__[cel][dru][pop_roc]0060__1.wav"].drums is True
    clar = by_path["IRMAS-TrainingData/cla/010__[cla][nod][cla]0077__2.wav"]
    assert clar.labels == ("cla",) and clar.genre == "cla"
    assert by_path["IRMAS-TrainingData/cla/[cla][jaz_blu]0001__1.wav"].genre == "jaz_blu"

    test = {p: r for p, r in by_path.items() if r.split == "test"}
    assert sorted(test) == [
        "IRMAS-TestingData-Part1/Part1/02 - Hit Or Miss-1.wav",
        "IRMAS-TestingData/other-2.wav",
    ]
    hit = test["IRMAS-TestingData-Part1/Part1/02 - Hit Or Miss-1.wav"]
    assert hit.labels == ("gel", "voi")  # canonical label order, whitespace stripped
    assert hit.group == "02 - Hit Or Miss-1" and hit.genre is None and hit.drums is None and hit.fold is None
    assert hit.duration_s == pytest.approx(1.5)
    assert test["IRMAS-TestingData/other-2.wav"].labels == ("pia",)  # duplicates collapse

    reasons = {r.path: r.reason for r in rejected}
    assert set(reasons) == {
        "IRMAS-TrainingData/cel/cello_take_1.wav",
        "IRMAS-TrainingData/cel/[vio][cla]0001__1.wav",
        "IRMAS-TrainingData/xyz/[xyz][cla]0001__1.wav",
        "IRMAS-TrainingData/gac/[gac][cou_fol]0002__1.wav",
        "IRMAS-TestingData-Part1/Part1/03 - bad-1.wav",
        "IRMAS-TestingData-Part1/Part1/04 - orphan-1.wav",
        "IRMAS-TestingData-Part1/Part1/05 - empty-1.wav",
    }
    assert "unparsable" in reasons["IRMAS-TrainingData/cel/cello_take_1.wav"]
    assert "disagrees" in reasons["IRMAS-TrainingData/cel/[vio][cla]0001__1.wav"]
    assert "unknown label code 'xyz'" in reasons["IRMAS-TrainingData/xyz/[xyz][cla]0001__1.wav"]
    assert "audio" in reasons["IRMAS-TrainingData/gac/[gac][cou_fol]0002__1.wav"]
    assert "xyz" in reasons["IRMAS-TestingData-Part1/Part1/03 - bad-1.wav"]
    assert "missing label file" in reasons["IRMAS-TestingData-Part1/Part1/04 - orphan-1.wav"]
    assert "no labels" in reasons["IRMAS-TestingData-Part1/Part1/05 - empty-1.wav"]
    assert [r.path for r in manifest] == sorted(r.path for r in manifest)


def test_zero_frame_wav_rejected(tmp_path: Path) -> None:
    path = tmp_path / "IRMAS-TrainingData" / "cel" / "[cel][cla]0001__1.wav"
    path.parent.mkdir(parents=True)
    sf.write(str(path), np.zeros((0, 2)), SR)  # valid header, no frames
    manifest, rejected = scan_irmas(tmp_path, LABELS)
    assert len(manifest) == 0 and [r.reason for r in rejected] == ["zero-length audio"]


def test_strict_raises_with_rejects(irmas_root: Path) -> None:
    with pytest.raises(IrmasLayoutError, match="7 malformed") as info:
        scan_irmas(irmas_root, LABELS, strict=True)
    assert len(info.value.rejected) == 7
    assert "cello_take_1.wav" in str(info.value)


def test_no_irmas_folders(tmp_path: Path) -> None:
    (tmp_path / "something").mkdir()
    with pytest.raises(IrmasLayoutError, match="no IRMAS data"):
        scan_irmas(tmp_path, LABELS)
    with pytest.raises(IrmasLayoutError, match="not a directory"):
        scan_irmas(tmp_path / "missing", LABELS)


def test_only_test_folder(tmp_path: Path) -> None:
    _wav(tmp_path / "IRMAS-TestingData-Part3" / "x.wav")
    (tmp_path / "IRMAS-TestingData-Part3" / "x.txt").write_text("cel\n")
    manifest, rejected = scan_irmas(tmp_path, LABELS)
    assert [(r.split, r.labels) for r in manifest] == [("test", ("cel",))] and rejected == []


@pytest.mark.parametrize(
    ("name", "tags"),
    [
        ("008__[cel][nod][cla]0058__1.wav", TrainTags("cel", False, "cla", "0058", 1, "008")),
        ("[pia][cla]1308__3.wav", TrainTags("pia", None, "cla", "1308", 3, None)),
        ("[cla][dru][jaz_blu]0001__2.wav", TrainTags("cla", True, "jaz_blu", "0001", 2, None)),
        ("123__[cla][cla]0042__11.wav", TrainTags("cla", None, "cla", "0042", 11, "123")),
        ("[voi][lat_sou]2001__1.wav", TrainTags("voi", None, "lat_sou", "2001", 1, None)),
    ],
)
def test_parse_train_name(name: str, tags: TrainTags) -> None:
    assert parse_train_name(name) == tags
    assert (
        format_train_name(tags.instrument, tags.genre, tags.recording, tags.clip, tags.drums, tags.prefix)
        == name
    )


@pytest.mark.parametrize(
    "name",
    [
        "cello.wav",
        "[cel][nod]0058__1.wav",  # no genre
        "[cel][nod][rock]0058__1.wav",  # unknown genre
        "[cel][cla]0058.wav",  # no clip number
        "[cel][cla]0058__1.mp3",
        "008_[cel][cla]0058__1.wav",
        "[cel][xxx][cla]0058__1.wav",  # bad drums tag
        "[cel][cla]__1.wav",  # no recording id
    ],
)
def test_parse_train_name_rejects(name: str) -> None:
    with pytest.raises(ValueError, match="unparsable"):
        parse_train_name(name)


def test_format_train_name_pads() -> None:
    assert (
        format_train_name("gel", "pop_roc", 7, 2, drums=True, prefix=3)
        == "003__[gel][dru][pop_roc]0007__2.wav"
    )
    with pytest.raises(ValueError, match="genre"):
        format_train_name("gel", "metal", 7, 2)


def test_build_manifest_cache_reused_and_invalidated(irmas_root: Path, tmp_path: Path, monkeypatch) -> None:
    calls = []
    real_scan = irmas.scan_irmas

    def counting_scan(*args, **kwargs):
        calls.append(1)
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(irmas, "scan_irmas", counting_scan)
    cache = tmp_path / "cache" / "manifest.csv"
    first = build_manifest(irmas_root, LABELS, cache)
    assert len(calls) == 1 and cache.is_file()
    side = json.loads((cache.parent / "manifest.csv.json").read_text())
    assert len(side["rejected"]) == 7 and side["records"] == len(first) == 10

    second = build_manifest(irmas_root, LABELS, cache)
    assert len(calls) == 1, "unchanged data set must reuse the cache"
    assert second == first

    # a changed mtime invalidates
    wav = irmas_root / "IRMAS-TrainingData/pia/[pia][cla]1308__1.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    build_manifest(irmas_root, LABELS, cache)
    assert len(calls) == 2

    # a new file invalidates and shows up
    _wav(irmas_root / "IRMAS-TrainingData/pia/[pia][cla]1308__2.wav")
    third = build_manifest(irmas_root, LABELS, cache)
    assert len(calls) == 3 and len(third) == 11

    # a removed file invalidates
    (irmas_root / "IRMAS-TrainingData/pia/[pia][cla]1308__2.wav").unlink()
    assert len(build_manifest(irmas_root, LABELS, cache)) == 10 and len(calls) == 4

    # a different label set invalidates (different rejects)
    fewer = build_manifest(irmas_root, [lab for lab in LABELS if lab != "cla"], cache)
    assert len(calls) == 5 and not any("cla" in r.labels for r in fewer)

    # a corrupt sidecar is ignored, not fatal
    (cache.parent / "manifest.csv.json").write_text("{not json")
    assert build_manifest(irmas_root, LABELS, cache) == first
    assert len(calls) == 6
    build_manifest(irmas_root, LABELS, cache)
    assert len(calls) == 6


def test_build_manifest_strict_with_cache(irmas_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "m.csv"
    build_manifest(irmas_root, LABELS, cache)
    with pytest.raises(IrmasLayoutError, match="7 malformed"):
        build_manifest(irmas_root, LABELS, cache, strict=True)


def test_build_manifest_without_cache(irmas_root: Path) -> None:
    assert len(build_manifest(irmas_root, LABELS)) == 10


def _side(wav: Path, **data: object) -> None:
    wav.with_suffix(".json").write_text(json.dumps(data))


def test_mix_folder_sidecars_and_libraries(irmas_root: Path, tmp_path: Path) -> None:
    mix = irmas_root / "IRMAS-TrainingData-Mix"
    for k, labels in enumerate((["pia", "voi"], ["voi", "cel"], ["pia"]), start=1):
        wav = mix / f"mix_opl3_0001__{k}.wav"
        _wav(wav)
        wav.with_suffix(".txt").write_text("\n".join(labels) + "\n")
        _side(wav, library="opl3", labels=labels, group="mix/mix_opl3_0001")
    _wav(mix / "mix_timgm6mb_0002__1.wav")  # no sidecar: group from the name, library unknown ("")
    (mix / "mix_timgm6mb_0002__1.txt").write_text("gel\ngac\n")
    _wav(mix / "mix_x__1.wav")  # no labels
    _side(irmas_root / "IRMAS-TrainingData/cel/008__[cel][nod][cla]0058__1.wav", library="fluidr3_gm")
    _side(irmas_root / "IRMAS-TestingData/other-2.wav", library="csound_gm", group="ignored for test")
    manifest, rejected = scan_irmas(irmas_root, LABELS)
    by_path = {r.path: r for r in manifest}
    mixes = [r for r in manifest if r.path.startswith("IRMAS-TrainingData-Mix/")]
    assert [(r.split, r.labels, r.group, r.library) for r in mixes] == [
        ("train", ("pia", "voi"), "mix/mix_opl3_0001", "opl3"),
        ("train", ("cel", "voi"), "mix/mix_opl3_0001", "opl3"),  # canonical label order
        ("train", ("pia",), "mix/mix_opl3_0001", "opl3"),
        ("train", ("gac", "gel"), "mix/mix_timgm6mb_0002", ""),
    ]
    assert any(r.path.endswith("mix_x__1.wav") and "missing label file" in r.reason for r in rejected)
    assert by_path["IRMAS-TrainingData/cel/008__[cel][nod][cla]0058__1.wav"].library == "fluidr3_gm"
    assert by_path["IRMAS-TrainingData/cel/008__[cel][nod][cla]0058__2.wav"].library == ""  # real: no sidecar
    other = by_path["IRMAS-TestingData/other-2.wav"]
    assert other.library == "csound_gm" and other.group == "other-2"

    # a malformed sidecar rejects its clip with the reason
    (irmas_root / "IRMAS-TrainingData/cel/008__[cel][nod][cla]0058__2.json").write_text("[1, 2")
    _, rejected = scan_irmas(irmas_root, LABELS)
    assert any("0058__2.wav" in r.path and "sidecar" in r.reason for r in rejected)


def test_sidecar_change_invalidates_the_cache(irmas_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "m.csv"
    wav = irmas_root / "IRMAS-TrainingData/pia/[pia][cla]1308__1.wav"
    _side(wav, library="opl3")
    first = build_manifest(irmas_root, LABELS, cache)
    assert {r.path: r.library for r in first}[wav.relative_to(irmas_root).as_posix()] == "opl3"
    _side(wav, library="fluidr3_gm", pad="x" * 10)  # the sidecar changes size: the fingerprint changes
    second = build_manifest(irmas_root, LABELS, cache)
    assert {r.path: r.library for r in second}[wav.relative_to(irmas_root).as_posix()] == "fluidr3_gm"
    # a mix folder appearing invalidates too
    mix = irmas_root / "IRMAS-TrainingData-Mix"
    _wav(mix / "m__1.wav")
    (mix / "m__1.txt").write_text("pia\n")
    assert len(build_manifest(irmas_root, LABELS, cache)) == len(second) + 1
