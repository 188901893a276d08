"""`mpic predict` (CLI path) and the HTTP API give the same answer, naming the same registered version."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from ml import tracking
from ml.config import Config, load_config
from ml.ensemble import default_spec, load_spec
from ml.service import LocalBackend
from mpic.cli import main
from serve.api import create_api

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def overrides(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    tmp = tmp_path_factory.mktemp("cli")
    return [
        f"data.cache_dir={tmp / 'cache'}",
        f"mlflow.backend_store_uri=sqlite:///{tmp / 'mlflow.db'}",
        f"mlflow.artifacts_destination={tmp / 'mlflow-artifacts'}",
    ]


@pytest.fixture(scope="module")
def cfg(overrides: list[str]) -> Config:
    return load_config(ROOT / "config.yml", "smoke", overrides)


@pytest.fixture(scope="module")
def registered(cfg: Config) -> dict[str, Any]:
    """A registered ensemble (untrained members, fitted-looking thresholds) that is the champion."""
    spec = default_spec(cfg)
    spec.weights = {"res_genre": 0.7, "res_bpm": 0.3}
    n = len(cfg.labels)
    spec.thresholds = [0.2 + 0.05 * i for i in range(n)]
    spec.details = {"member_thresholds": {"res_genre": [0.3] * n, "res_bpm": [0.6] * n}}
    spec.source = "tune"
    reg = tracking.register_spec(cfg, spec, {"macro_f1": 0.5})
    return {"name": reg.name, "version": int(reg.version)}


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    t = np.arange(int(2.6 * 44100)) / 44100
    wave = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 660 * t)
    p = tmp_path_factory.mktemp("songs") / "song.wav"
    sf.write(p, wave.astype(np.float32), 44100)
    return p


def cli(args: list[str], overrides: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    sets = [x for o in overrides for x in ("--set", o)]
    code = main([*args, "--config", str(ROOT / "config.yml"), "--profile", "smoke", *sets])
    out = capsys.readouterr()
    return code, out.out, out.err


def http(cfg: Config, path: str, song: Path, data: dict[str, str] | None = None) -> httpx.Response:
    spec = load_spec(cfg, allow_untrained=True)
    app = create_api(cfg, LocalBackend.from_config(cfg, spec=spec, allow_untrained=True), spec=spec)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            files = [("files", (song.name, song.read_bytes()))]
            return await c.post(path, files=files, data=data or {})

    return asyncio.run(go())


def same_answer(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("labels", "aggregation", "ensemble", "model"):
        assert a[key] == b[key], key
    for key in ("weights", "thresholds"):
        assert a[key] == pytest.approx(b[key]), key
    [ra], [rb] = a["results"], b["results"]
    assert ra["scores"] == pytest.approx(rb["scores"], abs=1e-5)
    assert ra["instruments"] == rb["instruments"]
    assert [s["start_s"] for s in ra["segments"]] == [s["start_s"] for s in rb["segments"]]
    for sa, sb in zip(ra["segments"], rb["segments"], strict=True):
        assert sa["scores"] == pytest.approx(sb["scores"], abs=1e-5)


def test_predict_and_http_multi_model_agree(
    cfg: Config, overrides: list[str], registered: dict[str, Any], song: Path, capsys: Any
) -> None:
    code, out, err = cli(["predict", str(song), "--untrained"], overrides, capsys)
    assert code == 0, err
    got = json.loads(out)
    got["results"][0]["file"] = song.name  # the CLI keeps the path as given
    r = http(cfg, "/analyze_files/multi_model", song)
    assert r.status_code == 200, r.text
    same_answer(got, r.json())
    assert got["ensemble"] == {
        "name": "default",
        "registered_model": registered["name"],
        "version": registered["version"],
        "source": "tune",
    }
    assert registered["name"] == "mpic-smoke-ensemble-default"  # the profile's own registered model
    assert f"{registered['name']} version {registered['version']}" in err
    assert list(got["thresholds"].values()) == pytest.approx([0.2 + 0.05 * i for i in range(len(cfg.labels))])


def test_predict_model_and_http_single_model_agree(
    cfg: Config, overrides: list[str], registered: dict[str, Any], song: Path, capsys: Any
) -> None:
    code, out, err = cli(["predict", str(song), "--untrained", "--model", "res_bpm"], overrides, capsys)
    assert code == 0, err
    got = json.loads(out)
    got["results"][0]["file"] = song.name
    r = http(cfg, "/analyze_files/single_model", song, {"model": "res_bpm"})
    same_answer(got, r.json())
    assert set(got["thresholds"].values()) == {0.6}  # the member's own fitted thresholds
    assert got["model"] == "res_bpm" and got["ensemble"]["version"] == registered["version"]


def test_predict_csv_names_the_version(
    overrides: list[str], registered: dict[str, Any], song: Path, capsys: Any
) -> None:
    code, out, _ = cli(["predict", str(song), "--untrained", "--format", "csv"], overrides, capsys)
    assert code == 0
    [row] = list(csv.DictReader(io.StringIO(out)))
    assert (row["ensemble"], row["version"]) == (registered["name"], str(registered["version"]))


def test_predict_errors_match_the_api(
    overrides: list[str], registered: dict[str, Any], tmp_path: Path, capsys: Any
) -> None:
    short = tmp_path / "short.wav"
    sf.write(short, np.full(100, 0.1, np.float32), 44100)  # shorter than audio.min_seconds
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    code, out, _ = cli(["predict", str(short), str(text), "--untrained"], overrides, capsys)
    assert code == 1
    errors = [r["error"] for r in json.loads(out)["results"]]
    assert errors[0].startswith("too_short: ") and errors[1].startswith("undecodable: ")


def test_nothing_registered_is_a_clear_error(tmp_path: Path, song: Path, capsys: Any) -> None:
    fresh = [
        f"data.cache_dir={tmp_path / 'cache'}",
        f"mlflow.backend_store_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"mlflow.artifacts_destination={tmp_path / 'a'}",
    ]
    code, out, err = cli(["predict", str(song)], fresh, capsys)
    assert code == 2 and out == ""
    assert "mpic-smoke-ensemble-default" in err and "run `mpic fuse --profile smoke` first" in err
    code, _, err = cli(["predict", str(song), "--version", "4"], fresh, capsys)
    assert code == 2 and "no version or alias '4'" in err


def test_python_dash_m_entry_points() -> None:
    import subprocess
    import sys

    for mod in ("mpic", "mpic.cli"):
        r = subprocess.run(
            [sys.executable, "-m", mod, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0 and "predict" in r.stdout, r.stderr


def test_evaluate_attaches_test_metrics_to_the_registered_version(
    cfg: Config, overrides: list[str], registered: dict[str, Any], song: Path, tmp_path: Path, capsys: Any
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for name, labels in (("a", "pia\nvio\n"), ("b", "gel\n")):
        (plain / f"{name}.wav").write_bytes(song.read_bytes())
        (plain / f"{name}.txt").write_text(labels)
    out = tmp_path / "report.json"
    args = ["evaluate", "--data", str(plain), "--untrained", "--format", "json", "--output", str(out)]
    code, _, err = cli(args, overrides, capsys)
    assert code == 0, err
    assert f"test metrics attached to {registered['name']} version {registered['version']}" in err
    report = json.loads(out.read_text())["ensemble"]
    c = tracking.client(cfg)
    mv = c.get_model_version(registered["name"], str(registered["version"]))
    assert float(mv.tags["test.macro_f1"]) == pytest.approx(report["macro_f1"], rel=1e-5)
    run = c.get_run(mv.run_id)
    assert run.data.metrics["test/macro_f1"] == pytest.approx(report["macro_f1"])
    assert {"test/report.json", "test/per_class_f1.png"} <= {
        f.path for f in c.list_artifacts(mv.run_id, "test")
    }
