"""The Ray Data tagging job on a local Ray: `mpic predict`'s rows and scores, bad files as rows."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from ml import tracking
from ml.config import load_config
from ml.ensemble import default_spec, load_spec
from mpic.cli import main as mpic_main

ROOT = Path(__file__).resolve().parents[2]
N_GOOD = 9
BAD = ("broken.wav", "empty.flac")


@pytest.fixture(scope="module")
def overrides(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    tmp = tmp_path_factory.mktemp("tag-job")
    return [
        f"data.cache_dir={tmp / 'cache'}",
        f"runs_dir={tmp / 'runs'}",
        f"mlflow.backend_store_uri=sqlite:///{tmp / 'mlflow.db'}",
        f"mlflow.artifacts_destination={tmp / 'mlflow-artifacts'}",
    ]


@pytest.fixture(scope="module")
def registered(overrides: list[str]) -> dict[str, Any]:
    """An untrained ensemble registered as the smoke champion (rows must name its version).

    Its members have no checkpoints, so every run here passes ``--untrained`` (deterministic weights, the
    same in every process): what is checked is the pipeline, not the tags.
    """
    cfg = load_config(ROOT / "config.yml", "smoke", overrides)
    spec = default_spec(cfg)
    spec.source = "tune"
    reg = tracking.register_spec(cfg, spec, {"macro_f1": 0.5})
    return {"name": reg.name, "version": int(reg.version), "cfg": cfg}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tones of several lengths, rates and formats in nested folders, two bad files and non-audio files."""
    root = tmp_path_factory.mktemp("music")
    rng = np.random.default_rng(1)
    for i in range(N_GOOD):
        sr = (16000, 22050, 44100)[i % 3]
        ext = ("wav", "flac", "ogg")[i % 3]
        t = np.arange(int(sr * (1.2 + 0.7 * i))) / sr
        wave = 0.2 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.02 * rng.standard_normal(len(t))
        path = root / ("a" if i < 4 else "b/c") / f"song{i}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), sr)
    (root / "a" / BAD[0]).write_bytes(b"RIFF\x00\x00 not a wave file at all")
    (root / "b" / BAD[1]).write_bytes(b"")
    (root / "a" / "notes.txt").write_text("not audio")
    (root / ".trash").mkdir()
    (root / ".trash" / "old.wav").write_bytes(b"junk")
    return root


def _rows(folder: Path, fmt: str) -> dict[str, dict[str, Any]]:
    files = sorted(p for p in folder.rglob(f"*.{fmt}") if p.is_file())
    assert files, f"no {fmt} files under {folder}"
    rows: list[dict[str, Any]] = []
    for f in files:
        if fmt == "parquet":
            rows += pq.read_table(f).to_pylist()
        else:
            with f.open(newline="") as fh:
                rows += list(csv.DictReader(fh))
    by_file = {r["file"]: r for r in rows}
    assert len(by_file) == len(rows), "a file got two rows"
    return by_file


@pytest.fixture(scope="module")
def tagged(
    registered: dict[str, Any], library: Path, ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    from ray_jobs.tag import tag

    out = tmp_path_factory.mktemp("tag-out") / "tags.parquet"
    summary = tag(registered["cfg"], [str(library)], str(out), allow_untrained=True)
    return summary, out


def test_one_row_per_file_with_the_registered_version(
    tagged: tuple[dict[str, Any], Path], registered: dict[str, Any], library: Path
) -> None:
    summary, out = tagged
    rows = _rows(out, "parquet")
    expected = {
        str(p)
        for p in library.rglob("*")
        if p.suffix in {".wav", ".flac", ".ogg"} and ".trash" not in p.parts
    }
    assert set(rows) == expected and len(rows) == N_GOOD + len(BAD)
    assert summary["files"] == N_GOOD + len(BAD) and summary["failed"] == len(BAD)
    assert (summary["ensemble"], summary["version"]) == (registered["name"], registered["version"])
    # the session's Ray has a logical GPU: actors ask for their share and fall back to the CPU
    assert summary["gpus_per_actor"] == registered["cfg"].tag.gpus_per_actor > 0
    for name, r in rows.items():
        assert (r["ensemble"], r["version"]) == (registered["name"], registered["version"])
        if Path(name).name in BAD:
            assert r["error"] and r["duration_s"] is None and r["instruments"] is None
        else:
            assert r["error"] is None and r["duration_s"] > 1.0
            assert all(0.0 <= r[c] <= 1.0 for c in registered["cfg"].label_codes)
    assert rows[str(library / "a" / BAD[0])]["error"].startswith("undecodable")


def test_scores_are_mpic_predicts(
    tagged: tuple[dict[str, Any], Path],
    registered: dict[str, Any],
    library: Path,
    overrides: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Same files, same errors, same instruments; scores equal to `mpic predict`'s within its rounding."""
    from ml.service import LocalBackend, analyze_sources, fusion_from_spec, multi_model_settings

    cfg = registered["cfg"]
    labels = cfg.label_codes
    _, out = tagged
    job = _rows(out, "parquet")
    predicted = tmp_path / "predict.parquet"
    sets = [x for o in overrides for x in ("--set", o)]
    code = mpic_main(
        [
            *("predict", str(library), "--output", str(predicted), "--quiet", "--untrained"),
            *("--config", str(ROOT / "config.yml"), "--profile", "smoke", *sets),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and f"{len(BAD)} failed" in err, err  # exit 1: some files failed
    cli = {r["file"]: r for r in pq.read_table(predicted).to_pylist()}
    assert set(cli) == set(job)
    for name, r in cli.items():
        j = job[name]
        assert (j["error"] is None) == (r["error"] is None), name
        if r["error"] is not None:
            assert j["error"] == r["error"]
            continue
        assert j["instruments"] == r["instruments"], name
        # `mpic predict` stores scores rounded to 4 decimals; the job keeps the pipeline's values
        assert max(abs(j[c] - r[c]) for c in labels) <= 5e-5 + 1e-5, name
        assert j["duration_s"] == pytest.approx(r["duration_s"], abs=1e-3)

    # and unrounded: what `mpic predict` computes in process (LocalBackend + the spec's fusion)
    spec = load_spec(cfg)
    backend = LocalBackend.from_config(cfg, spec=spec, allow_untrained=True)
    settings = multi_model_settings(cfg, fusion_from_spec(cfg, spec, backend.members))
    exact = analyze_sources(cfg, backend, [(n, Path(n)) for n in sorted(job)], settings=settings)
    for res in exact:
        if res.error is None:
            assert max(abs(job[res.file][c] - res.scores[c]) for c in labels) <= 1e-5, res.file


def test_cli_csv_and_refuses_an_existing_output(
    registered: dict[str, Any],
    library: Path,
    overrides: list[str],
    ray_session: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ray_jobs.tag import main

    sets = [x for o in overrides for x in ("--set", o)]
    common = ["--config", str(ROOT / "config.yml"), "--profile", "smoke", *sets, "--untrained"]
    out = tmp_path / "tags"
    code = main(["--input", str(library / "b"), "--output", str(out), "--format", "csv", *common])
    err = capsys.readouterr()
    assert code == 0, err.err
    assert f"version {registered['version']}" in err.out and "1 failed" in err.out
    rows = _rows(out, "csv")
    assert len(rows) == 6  # songs 4..8 and empty.flac under b/
    good = [r for r in rows.values() if not r["error"]]
    assert len(good) == 5 and all(r["version"] == str(registered["version"]) for r in rows.values())
    assert all(isinstance(r["instruments"], str) for r in good)  # `;`-joined, as in `mpic predict` CSV

    before = sorted(p.name for p in out.iterdir())
    code = main(["--input", str(library), "--output", str(out), *common])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before  # untouched

    code = main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "x"), *common])
    assert code == 2 and "no such file or folder" in capsys.readouterr().err


def test_sources_by_uri_like_local_folders(library: Path, tmp_path: Path) -> None:
    """A ``file://`` URI is listed (recursively, by extension, hidden skipped) and read like a folder."""
    from ml import batch

    local = batch.discover_sources([library])
    uris = batch.discover_sources([library.as_uri()])
    assert [u.removeprefix("file://") for u in uris] == local  # same files, same order
    assert len(local) == N_GOOD + len(BAD) and not any(".trash" in u for u in uris)
    assert batch.read_source(uris[0]) == Path(local[0]).read_bytes()
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        batch.discover_sources([(tmp_path / "nope").as_uri()])
    gone = tmp_path / "gone.wav"
    out = batch.decode_batch(
        {"file": np.array([str(gone)], dtype=object)}, load_config(ROOT / "config.yml", "smoke")
    )
    assert out["error"][0].startswith("unreadable") and out["wave"][0] == b""
