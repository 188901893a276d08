"""`mpic predict FOLDER --output …`: a library of 50 files tagged, interrupted and resumed, in 3 formats."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from ml import batch, tracking
from ml.config import load_config
from ml.ensemble import default_spec
from mpic.cli import main

ROOT = Path(__file__).resolve().parents[2]
N_FILES = 50


@pytest.fixture(scope="module")
def overrides(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    tmp = tmp_path_factory.mktemp("batch")
    return [
        f"data.cache_dir={tmp / 'cache'}",
        f"mlflow.backend_store_uri=sqlite:///{tmp / 'mlflow.db'}",
        f"mlflow.artifacts_destination={tmp / 'mlflow-artifacts'}",
    ]


@pytest.fixture(scope="module")
def registered(overrides: list[str]) -> dict[str, Any]:
    """An untrained ensemble registered as the profile's champion (rows must name its version)."""
    cfg = load_config(ROOT / "config.yml", "smoke", overrides)
    spec = default_spec(cfg)
    spec.source = "tune"
    reg = tracking.register_spec(cfg, spec, {"macro_f1": 0.5})
    return {"name": reg.name, "version": int(reg.version)}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 short tones in nested folders and three formats, plus files that are not music."""
    root = tmp_path_factory.mktemp("music")
    rng = np.random.default_rng(0)
    sr = 16000
    for i in range(N_FILES):
        sub, ext = [("first", "wav"), ("more/flac", "flac"), ("more/ogg", "ogg")][0 if i < 20 else 1 + i % 2]
        t = np.arange(int(sr * (1.0 + 0.2 * (i % 3)))) / sr
        wave = 0.2 * np.sin(2 * np.pi * (110 + 10 * i) * t) + 0.01 * rng.standard_normal(len(t))
        path = root / sub / f"song{i:02}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), sr)
    (root / "first" / "cover.jpg").write_bytes(b"\xff\xd8 not audio")
    (root / "more" / ".hidden").mkdir()
    (root / "more" / ".hidden" / "x.wav").write_bytes(b"junk")
    return root


def run(args: list[str], overrides: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    sets = [x for o in overrides for x in ("--set", o)]
    code = main([*args, "--config", str(ROOT / "config.yml"), "--profile", "smoke", *sets, "--untrained"])
    out = capsys.readouterr()
    return code, out.out, out.err


def rows_of(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".json":
        return list(json.loads(path.read_text())["results"])
    return list(pq.read_table(path).to_pylist())


def stamp_of(row: dict[str, Any]) -> tuple[str, int]:
    if isinstance(row["ensemble"], dict):
        return row["ensemble"]["registered_model"], row["ensemble"]["version"]
    return row["ensemble"], int(row["version"])


@pytest.mark.parametrize("ext", ["csv", "json", "parquet"])
def test_tag_a_folder_resume_and_no_duplicates(
    ext: str, library: Path, overrides: list[str], registered: dict[str, Any], tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / f"tags.{ext}"
    code, stdout, err = run(["predict", str(library / "first"), "--output", str(out)], overrides, capsys)
    assert code == 0, err
    assert stdout == ""  # results go to the file, the summary to stderr
    first = rows_of(out)
    assert len(first) == 20 and "20 file(s), 0 failed" in err
    assert f"{registered['name']} version {registered['version']}" in err

    code, _, err = run(["predict", str(library), "--output", str(out)], overrides, capsys)
    assert code == 0, err
    assert "30 file(s), 20 already in" in err and "(50 rows)" in err
    rows = rows_of(out)
    files = [r["file"] for r in rows]
    assert len(rows) == N_FILES and len(set(files)) == N_FILES  # 30 new rows, none duplicated
    assert rows[:20] == first  # the earlier rows are kept as they were
    assert {Path(f).name for f in files} == {f"song{i:02}.{e}" for i, e in _names()}
    assert all(stamp_of(r) == (registered["name"], registered["version"]) for r in rows)
    assert all(not r.get("error") for r in rows)
    scores = [float(r["scores"]["cel"] if ext == "json" else r["cel"]) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores) and len(set(scores)) > 1

    code, _, err = run(["predict", str(library), "--output", str(out)], overrides, capsys)
    assert code == 0 and "0 file(s), 50 already in" in err and len(rows_of(out)) == N_FILES


def _names() -> list[tuple[int, str]]:
    return [(i, "wav" if i < 20 else ("flac" if i % 2 == 0 else "ogg")) for i in range(N_FILES)]


def test_interrupted_run_resumes_where_it_stopped(
    library: Path,
    overrides: list[str],
    registered: dict[str, Any],
    tmp_path: Path,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "tags.csv"
    write = batch.ResultsOutput.write
    calls = {"n": 0}

    def write_then_ctrl_c(self: batch.ResultsOutput, results: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third chunk is being written
        write(self, results)

    monkeypatch.setattr(batch.ResultsOutput, "write", write_then_ctrl_c)
    code, _, err = run(["predict", str(library), "--output", str(out), "--quiet"], overrides, capsys)
    assert code == 130 and "interrupted; 32 rows are in" in err and "rerun the same command" in err
    assert len(rows_of(out)) == 32  # two chunks of 16
    monkeypatch.setattr(batch.ResultsOutput, "write", write)
    code, _, err = run(["predict", str(library), "--output", str(out)], overrides, capsys)
    assert code == 0 and "18 file(s), 32 already in" in err
    files = [r["file"] for r in rows_of(out)]
    assert len(files) == N_FILES == len(set(files))


def test_stdout_csv_without_output(
    library: Path, overrides: list[str], registered: dict[str, Any], capsys: Any
) -> None:
    code, stdout, err = run(["predict", str(library / "more" / "ogg"), "--format", "csv"], overrides, capsys)
    assert code == 0, err
    rows = list(csv.DictReader(stdout.splitlines()))
    assert len(rows) == 15 and rows[0]["version"] == str(registered["version"])
