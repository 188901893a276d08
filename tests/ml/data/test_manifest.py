from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.data.manifest import CSV_COLUMNS, ClipRecord, Manifest, ManifestError

HEADER = ",".join(CSV_COLUMNS)


def _records() -> list[ClipRecord]:
    return [
        ClipRecord(
            path="IRMAS-TrainingData/cel/008__[cel][nod][cla]0058__1.wav",
            split="train",
            duration_s=3.0,
            labels=("cel",),
            genre="cla",
            drums=False,
            group="cel/008__[cel][nod][cla]0058",
            fold=2,
        ),
        ClipRecord(
            path="IRMAS-TrainingData/pia/[pia][jaz_blu]1308__3.wav",
            split="train",
            duration_s=2.9999999999999996,
            labels=("pia",),
            genre="jaz_blu",
            drums=None,
            group="pia/[pia][jaz_blu]1308",
            tempo=121.37,
            fold=0,
        ),
        ClipRecord(
            path="IRMAS-TrainingData/gel/001__[gel][dru][pop_roc]0001__1.wav",
            split="train",
            duration_s=3.0,
            labels=("gel",),
            genre="pop_roc",
            drums=True,
            group="gel/001__[gel][dru][pop_roc]0001",
        ),
        ClipRecord(
            path='IRMAS-TestingData-Part1/Part1/02 - Hit, Or "Miss"-1.wav',
            split="test",
            duration_s=17.25,
            labels=("gel", "voi"),
            group='02 - Hit, Or "Miss"-1',
        ),
    ]


def test_csv_round_trip_is_exact(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "data", _records())
    path = tmp_path / "out" / "manifest.csv"
    manifest.write(path)
    back = Manifest.read(path, root=tmp_path / "data")
    assert back == manifest
    assert back.records[1].duration_s == 2.9999999999999996  # floats survive bit-exactly
    assert back.records[0].drums is False and back.records[1].drums is None and back.records[2].drums is True
    assert back.records[3].genre is None and back.records[3].fold is None and back.records[3].tempo is None
    # no temp file left behind by the atomic write
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.csv"]


def test_read_defaults_root_to_csv_dir(tmp_path: Path) -> None:
    Manifest(tmp_path, _records()).write(tmp_path / "m.csv")
    assert Manifest.read(tmp_path / "m.csv").root == tmp_path


def test_header_and_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    Manifest(tmp_path, _records()[3:]).write(path)
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER
    assert lines[1].endswith(',test,17.25,gel;voi,,,"02 - Hit, Or ""Miss""-1",,,')


def test_queries(tmp_path: Path) -> None:
    m = Manifest(tmp_path, _records())
    assert len(m) == 4 and [r.path for r in m] == [r.path for r in _records()]
    assert len(m.filter("train")) == 3 and len(m.filter(split="test")) == 1
    assert [r.fold for r in m.filter(fold=2)] == [2]
    assert len(m.filter("train", exclude_fold=2)) == 2
    assert len(m.filter(predicate=lambda r: "gel" in r.labels)) == 2
    assert m.abspath(m[0]) == tmp_path / "IRMAS-TrainingData/cel/008__[cel][nod][cla]0058__1.wav"
    with pytest.raises(ValueError, match="split"):
        m.filter("valid")


def test_label_matrix(tmp_path: Path) -> None:
    m = Manifest(tmp_path, _records())
    y = m.label_matrix(["cel", "gel", "pia", "voi"])
    assert y.dtype == np.float32 and y.shape == (4, 4)
    np.testing.assert_array_equal(y, [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 1]])
    with pytest.raises(ValueError, match="voi"):
        m.label_matrix(["cel", "gel", "pia"])
    y2 = m.label_matrix(["cel", "gel", "pia"], strict=False)
    np.testing.assert_array_equal(y2[3], [0, 1, 0])
    with pytest.raises(ValueError, match="duplicate"):
        m.label_matrix(["cel", "cel"])


def test_with_folds_and_tempi(tmp_path: Path) -> None:
    m = Manifest(tmp_path, _records())
    m2 = m.with_folds({m[2].path: 4, m[0].path: None})
    assert [r.fold for r in m2] == [None, 0, 4, None]
    assert [r.fold for r in m] == [2, 0, None, None]  # original untouched
    assert m.with_tempi({m[0].path: 99.5})[0].tempo == 99.5
    with pytest.raises(ManifestError, match="unknown"):
        m.with_folds({"nope.wav": 1})


def test_duplicate_paths_rejected(tmp_path: Path) -> None:
    recs = _records()
    with pytest.raises(ManifestError, match="duplicate"):
        Manifest(tmp_path, [recs[0], recs[0]])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"path": "/abs/x.wav"}, "relative"),
        ({"path": "../x.wav"}, "relative"),
        ({"split": "valid"}, "split"),
        ({"duration_s": float("nan")}, "duration"),
        ({"labels": ("a;b",)}, "label"),
        ({"labels": ("a", "a")}, "duplicate"),
        ({"group": ""}, "group"),
        ({"tempo": -3.0}, "tempo"),
        ({"fold": -1}, "fold"),
    ],
)
def test_record_validation(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {
        "path": "a/x.wav",
        "split": "train",
        "duration_s": 1.0,
        "labels": ("a",),
        "group": "g",
    }
    base.update(kwargs)
    with pytest.raises(ManifestError, match=match):
        ClipRecord(**base)  # type: ignore[arg-type]


GOOD_ROW = "a/x.wav,train,3.0,cel,cla,0,g1,,1,opl3"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("", 1, "empty file"),
        ("path,split,labels\n" + GOOD_ROW, 1, "bad header"),
        (HEADER.replace("fold,library", "library,fold") + "\n" + GOOD_ROW, 1, "bad header"),
        (HEADER.replace(",library", "") + "\n" + GOOD_ROW, 2, "expected 9 columns"),
        (f"{HEADER}\n{GOOD_ROW}\na/y.wav,train,three,cel,cla,0,g1,,1,\n", 3, "duration_s"),
        (f"{HEADER}\n{GOOD_ROW}\n\na/y.wav,train,3.0,cel\n", 4, "expected 10 columns"),
        (f"{HEADER}\na/y.wav,dev,3.0,cel,cla,0,g1,,1,\n", 2, "split"),
        (f"{HEADER}\na/y.wav,train,3.0,cel,cla,maybe,g1,,1,\n", 2, "drums"),
        (f"{HEADER}\na/y.wav,train,3.0,cel,cla,1,g1,,x,\n", 2, "fold"),
        (f"{HEADER}\na/y.wav,train,3.0,cel,cla,1,g1,fast,1,\n", 2, "tempo"),
        (f"{HEADER}\n{GOOD_ROW}\n{GOOD_ROW}\n", 3, "duplicate path"),
        (f'{HEADER}\n"a/y.wav,train\n', 2, "unexpected end of data|expected 10 columns"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ManifestError, match=reason) as info:
        Manifest.read(path)
    assert f"{path}:{line}:" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        Manifest.read(tmp_path / "none.csv")


def test_library_round_trip_and_older_manifests(tmp_path: Path) -> None:
    recs = [
        r.__class__(**{**r.__dict__, "library": lib})
        for r, lib in zip(_records(), ["opl3", "", "timgm6mb", ""], strict=True)
    ]
    manifest = Manifest(tmp_path, recs)
    path = tmp_path / "m.csv"
    manifest.write(path)
    assert path.read_text().splitlines()[0].endswith(",fold,library")
    back = Manifest.read(path, root=tmp_path)
    assert back == manifest and back.libraries_present() == ["", "opl3", "timgm6mb"]
    # a manifest written before the library column existed still reads, with library ""
    old = tmp_path / "old.csv"
    old.write_text(
        "path,split,duration_s,labels,genre,drums,group,tempo,fold\n" + "a/x.wav,train,3.0,cel,cla,0,g1,,1\n"
    )
    (rec,) = Manifest.read(old).records
    assert rec.library == "" and rec.labels == ("cel",) and rec.fold == 1
    with pytest.raises(ManifestError, match="library"):
        ClipRecord(path="a.wav", split="train", duration_s=1.0, labels=("a",), group="g", library=" opl3")
