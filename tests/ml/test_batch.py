"""ml.batch without models: file discovery, the resumable CSV/JSON/Parquet outputs, streaming analysis."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from ml import batch
from ml.config import Config, load_config
from ml.inference import FileResult
from ml.service import RunSettings, Song, analyze_stream

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["cel", "gac", "voi"]


def header(version: int | None = 3, weights: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "labels": LABELS,
        "weights": weights or {"a": 0.5, "b": 0.5},
        "thresholds": dict.fromkeys(LABELS, 0.3),
        "aggregation": "mean",
        "ensemble": {
            "name": "default",
            "registered_model": "mpic-x-ensemble-default" if version else None,
            "version": version,
            "source": "tune" if version else "equal",
        },
        "model": None,
    }


def results(names: list[str]) -> list[FileResult]:
    out = []
    for i, n in enumerate(names):
        if i % 5 == 4:
            out.append(FileResult(file=n, error="too_short: shorter than 0.05 s"))
        else:
            scores = {c: round(0.1 * (i % 9) + 0.05 * j, 4) for j, c in enumerate(LABELS)}
            out.append(FileResult(file=n, duration_s=1.5, scores=scores, instruments=["gac"]))
    return out


def test_discover_recurses_by_extension_skips_hidden_and_dedups(tmp_path: Path) -> None:
    for rel in ["a/x.wav", "a/b/y.FLAC", "a/b/z.mp3", "a/c.ogg", "a/notes.txt", "a/.git/k.wav", "a/._x.wav"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "loose.bin").write_bytes(b"x")
    found = batch.discover([tmp_path / "a", tmp_path / "loose.bin", tmp_path / "a" / "x.wav"])
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["a/b/y.FLAC", "a/b/z.mp3", "a/c.ogg", "a/x.wav", "loose.bin"]  # x.wav once
    with pytest.raises(FileNotFoundError, match=r"no such file or folder: .*nope"):
        batch.discover([tmp_path / "a", tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(batch.BatchError, match="no audio files under"):
        batch.discover([tmp_path / "empty"])


def test_output_format_from_extension(tmp_path: Path) -> None:
    assert [batch.output_format(f"r{e}") for e in (".csv", ".JSON", ".parquet")] == ["csv", "json", "parquet"]
    with pytest.raises(batch.BatchError, match=r"\*\.csv, \*\.json or \*\.parquet"):
        batch.output_format("r.xlsx")


def read_rows(path: Path) -> list[dict[str, Any]]:
    fmt = batch.output_format(path)
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if fmt == "json":
        return list(json.loads(path.read_text())["results"])
    return list(pq.read_table(path).to_pylist())


@pytest.mark.parametrize("ext", [".csv", ".json", ".parquet"])
def test_output_appends_and_resumes_without_losing_rows(tmp_path: Path, ext: str) -> None:
    path = tmp_path / "deep" / f"out{ext}"
    names = [str(tmp_path / f"s{i:02}.wav") for i in range(12)]
    out = batch.open_output(path, LABELS, header())
    assert out.rows == 0 and not out.holds(names[0])
    out.write(results(names[:4]))
    out.write(results(names[4:7]))
    out.close()
    first = read_rows(path)
    assert [r["file"] for r in first] == names[:7]

    again = batch.open_output(path, LABELS, header())  # resume: the same files are known, by absolute path
    assert again.existing == 7 and again.holds(names[6]) and not again.holds(names[7])
    assert again.holds(os.path.relpath(names[0]))  # named relatively in another run: the same file
    again.write(results(names[7:]))
    again.close()
    rows = read_rows(path)
    assert [r["file"] for r in rows] == names
    assert rows[:7] == first  # earlier rows unchanged
    ok = rows[0]
    err = rows[11]  # the 5th of the last write
    if ext == ".json":
        assert (
            ok["ensemble"]["registered_model"] == "mpic-x-ensemble-default" and ok["ensemble"]["version"] == 3
        )
        assert set(ok["scores"]) == set(LABELS) and err["error"].startswith("too_short")
        json.loads(path.read_text())  # valid JSON after appends
    else:
        assert ok["ensemble"] == "mpic-x-ensemble-default" and str(ok["version"]) == "3"
        assert float(ok["voi"]) == pytest.approx(0.1)
        assert err["error"].startswith("too_short") and err["ensemble"] == "mpic-x-ensemble-default"
    if ext == ".parquet":
        assert ok["instruments"] == ["gac"] and err["instruments"] is None
        assert not list(tmp_path.glob("deep/*.tmp"))


@pytest.mark.parametrize("ext", [".csv", ".json", ".parquet"])
def test_foreign_or_corrupt_output_is_refused_and_left_untouched(tmp_path: Path, ext: str) -> None:
    bad = {
        ".csv": b"name,score\nx.wav,1\n",
        ".json": b'{"results": [',
        ".parquet": b"PAR1 not really",
    }[ext]
    path = tmp_path / f"out{ext}"
    path.write_bytes(bad)
    with pytest.raises(batch.OutputError, match=r"not an mpic results file .*left untouched"):
        batch.open_output(path, LABELS, header())
    assert path.read_bytes() == bad


@pytest.mark.parametrize("ext", [".csv", ".json", ".parquet"])
def test_output_of_another_version_or_labels_is_refused(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"out{ext}"
    out = batch.open_output(path, LABELS, header(version=3))
    out.write(results(["a.wav"]))
    out.close()
    before = path.read_bytes()
    with pytest.raises(batch.OutputError, match="version 3") as e:
        batch.open_output(path, LABELS, header(version=4))
    assert "--version" in str(e.value)
    with pytest.raises(batch.OutputError):
        batch.open_output(path, [*LABELS, "pia"], {**header(), "labels": [*LABELS, "pia"]})
    assert path.read_bytes() == before


def test_json_output_refuses_other_weights(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    batch.open_output(path, LABELS, header()).write(results(["a.wav"]))
    with pytest.raises(batch.OutputError, match="weights differ"):
        batch.open_output(path, LABELS, header(weights={"a": 1.0, "b": 0.0}))


def test_csv_cut_off_last_row_is_dropped_and_redone(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    out = batch.open_output(path, LABELS, header())
    out.write(results(["a.wav", "b.wav"]))
    text = path.read_text()
    path.write_text(text[:-7])  # killed in the middle of the last row
    again = batch.open_output(path, LABELS, header())
    assert again.holds("a.wav") and not again.holds("b.wav") and again.notes
    again.write(results(["b.wav"]))
    assert [r["file"] for r in read_rows(path)] == ["a.wav", "b.wav"]


def test_json_from_stdout_is_relaid_for_appending(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    doc = {**header(), "results": [r.to_dict() for r in results(["a.wav"])]}
    path.write_text(json.dumps(doc, indent=2))  # what `mpic predict --format json > out.json` writes
    out = batch.open_output(path, LABELS, header())
    assert out.holds("a.wav") and out.notes
    out.write(results(["b.wav"]))
    rows = read_rows(path)
    assert [r["file"] for r in rows] == ["a.wav", "b.wav"] and rows[0]["ensemble"]["version"] == 3


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(ROOT / "config.yml", "smoke")


class CountingBackend:
    """Scores zeros and records how many songs were scored before each batch returned."""

    def __init__(self, members: list[str], n_labels: int) -> None:
        self.members = members
        self.n_labels = n_labels

    def sample_rate(self, member: str) -> int:
        return 16000

    async def score(self, member: str, song: Song) -> np.ndarray:
        return np.full((song.windows, self.n_labels), 0.25, np.float32)


def test_analyze_stream_yields_each_chunk_before_reading_the_next(cfg: Config, tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(16000 * 2) / 10).astype(np.float32), 16000)
    read: list[int] = []

    def sources() -> Iterator[tuple[str, Any]]:
        for i in range(10):
            read.append(i)
            yield f"s{i}.wav", wav

    backend = CountingBackend(["m"], len(cfg.labels))
    settings = RunSettings({"m": 1.0}, (0.5,) * len(cfg.labels), "mean")
    stream = analyze_stream(cfg, backend, sources(), settings=settings, chunk=4)
    first = next(stream)
    assert [r.file for r in first] == ["s0.wav", "s1.wav", "s2.wav", "s3.wav"]
    assert len(read) <= 5  # the rest of the library is not even opened yet
    rest = [r for part in stream for r in part]
    assert [len(first), len(rest)] == [4, 6] and all(r.error is None for r in first + rest)
    assert first[0].duration_s == pytest.approx(2.0) and first[0].scores[cfg.label_codes[0]] == pytest.approx(
        0.25
    )
