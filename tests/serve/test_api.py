"""The FastAPI app without Ray: LocalBackend with untrained (deterministic) members, and fake backends."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import soundfile as sf
import yaml
from fastapi import FastAPI

import ml.service.analysis as analysis_mod
from ml.config import Config, deep_merge
from ml.ensemble import EnsembleSpec, MemberRef, default_spec, save_spec
from ml.inference import EnsemblePredictor
from ml.service import (
    FusionUpdate,
    LocalBackend,
    Song,
    WeightsError,
    apply_fusion_update,
    parse_weights,
    validate_weights,
)
from serve.api import STATIC_DIR, create_api

MULTI = "/analyze_files/multi_model"
SINGLE = "/analyze_files/single_model"
SERVED = ["res_genre", "res_bpm"]


def derive(cfg: Config, **sections: Any) -> Config:
    return Config.model_validate(deep_merge(cfg.snapshot(), sections))


def files_of(audio_files: dict[str, Path], *keys: str) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (audio_files[k].name, audio_files[k].read_bytes())) for k in keys]


def wav_bytes(seconds: float = 1.5, sr: int = 22050, amp: float = 0.2) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (amp * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, format="WAV")
    return buf.getvalue()


def by_file(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["file"]: r for r in body["results"]}


# ---- fakes ---------------------------------------------------------------------------------------------


class SpyBackend:
    """Wraps a backend, records calls and the most calls in flight at once."""

    def __init__(self, inner: Any, delay_s: float = 0.0) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.members = list(inner.members)
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        self.inflight = self.max_inflight = 0

    def sample_rate(self, member: str) -> int:
        return int(self.inner.sample_rate(member))

    async def score(self, member: str, song: Song) -> np.ndarray:
        self.calls.append((member, (song.windows, len(song.wave))))
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.delay_s)
            return np.asarray(await self.inner.score(member, song))
        finally:
            self.inflight -= 1


class FakeBackend:
    """Three members at two sample rates; window i of member m scores class 0 as base*i/(W-1), others base."""

    BASE: ClassVar[dict[str, float]] = {"res_genre": 0.2, "res_bpm": 0.6, "seed_mel": 0.9}
    RATES: ClassVar[dict[str, int]] = {"res_genre": 22050, "res_bpm": 22050, "seed_mel": 44100}

    def __init__(self, n_labels: int, fail: bool = False, delay_s: float = 0.0) -> None:
        self.members = list(self.BASE)
        self.n_labels, self.fail, self.delay_s = n_labels, fail, delay_s
        self.songs: dict[str, list[Song]] = {m: [] for m in self.members}

    def sample_rate(self, member: str) -> int:
        return self.RATES[member]

    async def score(self, member: str, song: Song) -> np.ndarray:
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("replica exploded")
        self.songs[member].append(song)
        n = song.windows
        out = np.full((n, self.n_labels), self.BASE[member], dtype=np.float32)
        out[:, 0] = np.linspace(0, self.BASE[member], n) if n > 1 else self.BASE[member]
        return out

    async def health(self, member: str) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("replica exploded")
        return {"device": "cpu", "pid": 1, "gpu_ids": []}


def fake_spec(cfg: Config, **kw: Any) -> EnsembleSpec:
    args: dict[str, Any] = {
        "ensemble": "fake",
        "labels": cfg.label_codes,
        "members": {m: MemberRef() for m in FakeBackend.BASE},
        "weights": {"res_genre": 1.0, "res_bpm": 1.0, "seed_mel": 2.0},
        "aggregation": "max",
        "thresholds": [0.3 + 0.05 * i for i in range(len(cfg.labels))],
        "version": 7,
        "source": "fusion",
    }
    args.update(kw)
    return EnsembleSpec(**args)


# ---- the real flow with LocalBackend -------------------------------------------------------------------


def test_multi_model_matches_in_process_ensemble(
    local_client: Any, local_backend: LocalBackend, api_cfg: Config, audio_files: dict[str, Path]
) -> None:
    r = local_client.post(MULTI, files=files_of(audio_files, "wav", "flac", "mp3", "short"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert "content-disposition" not in r.headers
    body = r.json()
    assert body["labels"] == api_cfg.label_codes
    assert body["weights"] == {"res_genre": 0.5, "res_bpm": 0.5}
    assert body["thresholds"] == dict.fromkeys(api_cfg.label_codes, api_cfg.inference.threshold)
    assert [x["file"] for x in body["results"]] == ["stereo.wav", "tones.flac", "clip.mp3", "short.wav"]
    spec = default_spec(api_cfg)
    ref = EnsemblePredictor(
        local_backend.predictors, spec.weights, spec.thresholds, spec.aggregation, cfg=api_cfg, spec=spec
    )
    cap = body["max_instruments"]
    assert cap == spec.max_instruments
    expected = ref.predict(
        [(p.name, p.read_bytes()) for p in (audio_files[k] for k in ("wav", "flac", "mp3", "short"))]
    )
    for got, exp in zip(body["results"], expected, strict=True):
        e = exp.to_dict()
        assert got["duration_s"] == pytest.approx(e["duration_s"], abs=1e-3)
        assert got["scores"] == pytest.approx(e["scores"], abs=2e-4)
        assert len(got["segments"]) == len(e["segments"]) >= 1
        assert [s["start_s"] for s in got["segments"]] == [s["start_s"] for s in e["segments"]]
        assert got["instruments"] == e["instruments"]
        passing = [c for c in api_cfg.label_codes if got["scores"][c] >= 0.5]
        assert set(got["instruments"]) <= set(passing)  # the cap names the highest of those, no other
        assert len(got["instruments"]) == min(len(passing), cap or len(passing))
        assert got["silent"] is False
    # segments: 1-s windows every hop_s, the last aligned to the end
    flac = by_file(body)["tones.flac"]
    expected_starts = {0.5: [0.0, 0.5, 0.7], 1.0: [0.0, 0.7]}[api_cfg.inference.hop_s]
    assert [s["start_s"] for s in flac["segments"]] == expected_starts
    assert flac["segments"][-1]["end_s"] == pytest.approx(1.7, abs=1e-3)
    assert by_file(body)["short.wav"]["segments"][0]["end_s"] == pytest.approx(0.4, abs=1e-3)


def test_single_model_and_weights_select_members(
    api_cfg: Config,
    local_backend: LocalBackend,
    audio_files: dict[str, Path],
    client_for: Callable[[FastAPI], Any],
) -> None:
    spy = SpyBackend(local_backend)
    c = client_for(create_api(api_cfg, spy))
    r = c.post(SINGLE, files=files_of(audio_files, "flac", "mp3"), data={"model": "res_bpm"})
    assert r.status_code == 200, r.text
    assert {m for m, _ in spy.calls} == {"res_bpm"} and len(spy.calls) == 2
    single = r.json()
    assert single["weights"] == {"res_bpm": 1.0}
    # the default model, by query parameter too
    r = c.post(f"{SINGLE}?model=res_genre", files=files_of(audio_files, "flac"))
    assert r.status_code == 200 and r.json()["weights"] == {"res_genre": 1.0}
    r = c.post(SINGLE, files=files_of(audio_files, "flac"))
    assert r.json()["weights"] == {api_cfg.default_model: 1.0}
    # weight 0: the member is not called, and the result equals that of the other member alone
    spy.calls.clear()
    r = c.post(
        MULTI, files=files_of(audio_files, "flac", "mp3"), data={"weights": '{"res_genre": 0, "res_bpm": 3}'}
    )
    assert r.status_code == 200, r.text
    assert {m for m, _ in spy.calls} == {"res_bpm"}
    multi = r.json()
    assert multi["weights"] == {"res_bpm": 1.0}
    for a, b in zip(multi["results"], single["results"], strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-6)
    # unequal weights: file scores are the weighted mean of the members' scores
    only = {
        m: by_file(c.post(SINGLE, files=files_of(audio_files, "mp3"), data={"model": m}).json())["clip.mp3"]
        for m in SERVED
    }
    r = c.post(MULTI, files=files_of(audio_files, "mp3"), data={"weights": '{"res_genre": 1, "res_bpm": 3}'})
    got = by_file(r.json())["clip.mp3"]["scores"]
    assert (
        only["res_genre"]["scores"] != only["res_bpm"]["scores"]
    )  # the members differ, so this means something
    for code, value in got.items():
        assert value == pytest.approx(
            0.25 * only["res_genre"]["scores"][code] + 0.75 * only["res_bpm"]["scores"][code], abs=2e-4
        )


def test_members_are_called_concurrently(
    api_cfg: Config,
    local_backend: LocalBackend,
    audio_files: dict[str, Path],
    client_for: Callable[[FastAPI], Any],
) -> None:
    spy = SpyBackend(local_backend, delay_s=0.2)
    c = client_for(create_api(api_cfg, spy))
    r = c.post(MULTI, files=files_of(audio_files, "wav", "flac", "mp3"))
    assert r.status_code == 200
    assert len(spy.calls) == 6  # 3 files x 2 members, one call each
    assert spy.max_inflight == 6  # all in flight together (asyncio.gather), not one after the other


def test_decode_once_and_send_every_member_the_same_song(
    api_cfg: Config,
    audio_files: dict[str, Path],
    client_for: Callable[[FastAPI], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One decode per file; every member (whatever its rate) gets the same compact song, not windows."""
    decodes: list[int] = []
    real_decode = analysis_mod.decode

    def counting_decode(*a: Any, **kw: Any) -> Any:
        decodes.append(1)
        return real_decode(*a, **kw)

    monkeypatch.setattr(analysis_mod, "decode", counting_decode)
    fake = FakeBackend(len(api_cfg.labels))
    c = client_for(create_api(api_cfg, fake, spec=fake_spec(api_cfg)))
    r = c.post(MULTI, files=files_of(audio_files, "wav", "flac"))
    assert r.status_code == 200, r.text
    assert len(decodes) == 2
    for i in range(2):
        songs = [fake.songs[m][i] for m in fake.members]
        assert all(s is songs[0] for s in songs)  # one object: one array for all members (22.05 and 44.1 kHz)
        song = songs[0]
        assert song.wave.ndim == 1 and song.wave.dtype == np.float32 and song.wave.flags.c_contiguous
        assert song.sample_rate == sf.info(str(audio_files[("wav", "flac")[i]])).samplerate  # not resampled
        assert song.windows == len(song.starts_s) >= 1


def test_fusion_uses_spec_weights_aggregation_thresholds(
    api_cfg: Config, client_for: Callable[[FastAPI], Any]
) -> None:
    fake = FakeBackend(len(api_cfg.labels))
    spec = fake_spec(api_cfg)
    c = client_for(create_api(api_cfg, fake, spec=spec))
    r = c.post(MULTI, files=[("files", ("x.wav", wav_bytes(3.0)))])
    body = r.json()
    assert body["weights"] == {"res_genre": 0.25, "res_bpm": 0.25, "seed_mel": 0.5}
    assert body["aggregation"] == "max"
    assert list(body["thresholds"].values()) == pytest.approx(spec.thresholds)
    scores = body["results"][0]["scores"]
    fused = 0.25 * 0.2 + 0.25 * 0.6 + 0.5 * 0.9  # max over windows = base for every class
    assert all(v == pytest.approx(fused, abs=1e-4) for v in scores.values())
    thr = dict(zip(api_cfg.label_codes, spec.thresholds, strict=True))
    assert body["results"][0]["instruments"] == [c for c in api_cfg.label_codes if fused >= thr[c]]
    assert 0 < len(body["results"][0]["instruments"]) < len(api_cfg.labels)  # the thresholds matter
    # threshold override applies to every class
    r = c.post(MULTI, files=[("files", ("x.wav", wav_bytes(3.0)))], data={"threshold": "0.7"})
    assert r.json()["thresholds"] == dict.fromkeys(api_cfg.label_codes, 0.7)
    assert r.json()["results"][0]["instruments"] == []
    r = c.post(MULTI, files=[("files", ("x.wav", wav_bytes(3.0)))], data={"threshold": "0.01"})
    assert r.json()["results"][0]["instruments"] == api_cfg.label_codes
    # segments are the weighted mean of the members' windows
    seg = r.json()["results"][0]["segments"]
    assert seg[-1]["scores"][api_cfg.label_codes[0]] == pytest.approx(fused, abs=1e-4)
    assert seg[0]["scores"][api_cfg.label_codes[0]] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("bad", ["0", "1", "1.5", "-0.1", "nan", "abc"])
def test_threshold_validation(local_client: Any, bad: str) -> None:
    r = local_client.post(MULTI, files=[("files", ("a.wav", wav_bytes()))], data={"threshold": bad})
    assert r.status_code == 422, r.text


def test_silent_file_reports_no_instruments(local_client: Any, audio_files: dict[str, Path]) -> None:
    r = local_client.post(MULTI, files=files_of(audio_files, "silent"), data={"threshold": "0.01"})
    res = r.json()["results"][0]
    assert res["silent"] is True and res["instruments"] == []


def test_per_file_errors_beside_success(local_client: Any, audio_files: dict[str, Path]) -> None:
    files = [
        ("files", ("garbage.wav", b"this is not audio at all" * 50)),
        *files_of(audio_files, "flac"),
        ("files", ("empty.mp3", b"")),
    ]
    r = local_client.post(MULTI, files=files)
    assert r.status_code == 200, r.text
    res = by_file(r.json())
    assert set(res["garbage.wav"]) == {"file", "error"} and res["garbage.wav"]["error"].startswith(
        "undecodable"
    )
    assert set(res["empty.mp3"]) == {"file", "error"}
    assert "scores" in res["tones.flac"]


def test_downloads(local_client: Any, api_cfg: Config, audio_files: dict[str, Path]) -> None:
    files = [*files_of(audio_files, "wav", "mp3"), ("files", ("bad.wav", b"nope"))]
    r = local_client.post(f"{MULTI}?format=csv", files=files)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == "attachment; filename=wav-files-instruments-predictions.csv"
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == [
        "file",
        "duration_s",
        "instruments",
        *api_cfg.label_codes,
        "error",
        "ensemble",
        "version",
    ]
    assert {(x["ensemble"], x["version"]) for x in rows} == {("default", "")}  # not registered
    assert [x["file"] for x in rows] == ["stereo.wav", "clip.mp3", "bad.wav"]
    assert float(rows[0]["duration_s"]) == pytest.approx(2.3, abs=1e-3)
    assert rows[2]["error"].startswith("undecodable") and rows[2]["cel"] == ""
    inline = local_client.post(MULTI, files=files).json()
    assert float(rows[1]["pia"]) == pytest.approx(inline["results"][1]["scores"]["pia"], abs=1e-4)
    assert rows[1]["instruments"] == ";".join(inline["results"][1]["instruments"])
    # json download, asked for in the form this time
    r = local_client.post(SINGLE, files=files, data={"format": "json"})
    assert r.status_code == 200
    assert r.headers["content-disposition"] == "attachment; filename=wav-files-instruments-predictions.json"
    body = json.loads(r.content)
    assert set(body) >= {"labels", "weights", "thresholds", "results"} and len(body["results"]) == 3
    assert body["ensemble"] == {
        "name": "default",
        "registered_model": None,
        "version": None,
        "source": "default",
    }
    assert body["model"] == api_cfg.default_model
    assert local_client.post(f"{MULTI}?format=xml", files=files).status_code == 422


def test_unknown_model_404(local_client: Any) -> None:
    r = local_client.post(SINGLE, files=[("files", ("a.wav", wav_bytes()))], data={"model": "nope"})
    assert r.status_code == 404
    assert "nope" in r.json()["detail"] and all(m in r.json()["detail"] for m in SERVED)


@pytest.mark.parametrize(
    ("weights", "reason"),
    [
        ('{"res_genre": -1, "res_bpm": 1}', ">= 0"),
        ('{"res_genre": 0, "res_bpm": 0}', "positive weight"),
        ("{}", "positive weight"),
        ('{"res_genre": 1, "guitar_hero": 1}', "unknown members"),
        ('{"seed_mel": 1}', "not deployed"),
        ('{"res_genre": NaN}', "finite"),
        ('{"res_genre": Infinity}', "finite"),
        ('{"res_genre": "1"}', "number"),
        ('{"res_genre": true}', "number"),
        ("res_genre=1", "not valid JSON"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_weights_422(local_client: Any, weights: str, reason: str) -> None:
    r = local_client.post(MULTI, files=[("files", ("a.wav", wav_bytes()))], data={"weights": weights})
    assert r.status_code == 422
    assert reason in r.json()["detail"]


def test_no_files_422(local_client: Any) -> None:
    assert local_client.post(MULTI, data={"weights": "{}"}).status_code == 422


def test_models_and_health(local_client: Any, api_cfg: Config) -> None:
    r = local_client.get("/models")
    assert r.status_code == 200
    body = r.json()
    assert [m["name"] for m in body["members"]] == SERVED
    m0 = body["members"][0]
    assert m0 == {
        "name": "res_genre",
        "arch": "rescnn",
        "front_end": "mel_fast",
        "description": api_cfg.members["res_genre"].description,
        "sample_rate": 22050,
        "aggregation": "mean",
        "weight": 1.0,
    }
    assert body["default"] == api_cfg.default_model
    assert body["weights"] == {"res_genre": 1.0, "res_bpm": 1.0}
    assert body["labels"][0] == {"code": "cel", "name": "Cello"} and len(body["labels"]) == len(
        api_cfg.labels
    )
    assert body["spec"] == {
        "ensemble": "default",
        "registered_model": None,
        "version": None,
        "source": "default",
    }
    assert body["aggregation"] == "mean" and set(body["thresholds"]) == set(api_cfg.label_codes)
    assert body["limits"]["max_files"] == api_cfg.serve.limits.max_files
    h = local_client.get("/healthz")
    assert h.status_code == 200 and h.json()["ok"] is True
    assert h.json()["members"]["res_bpm"]["device"] == "cpu"


def test_backend_failures(api_cfg: Config, client_for: Callable[[FastAPI], Any]) -> None:
    fake = FakeBackend(len(api_cfg.labels), fail=True)
    c = client_for(create_api(api_cfg, fake, spec=fake_spec(api_cfg)))
    r = c.post(MULTI, files=[("files", ("a.wav", wav_bytes()))])
    assert r.status_code == 503 and "replica exploded" in r.json()["detail"]
    h = c.get("/healthz")
    assert h.status_code == 503 and h.json()["ok"] is False
    assert h.json()["members"]["seed_mel"]["status"] == "error"
    # a file that fails to decode never reaches the backend: still a 200 with the error entry
    r = c.post(MULTI, files=[("files", ("a.wav", b"garbage"))])
    assert r.status_code == 200 and "error" in r.json()["results"][0]


def test_request_timeout_504(api_cfg: Config, client_for: Callable[[FastAPI], Any]) -> None:
    cfg = derive(api_cfg, serve={"limits": {"request_timeout_s": 0.3}})
    fake = FakeBackend(len(cfg.labels), delay_s=5.0)
    c = client_for(create_api(cfg, fake, spec=fake_spec(cfg)))
    r = c.post(MULTI, files=[("files", ("a.wav", wav_bytes()))])
    assert r.status_code == 504


def test_limits(
    api_cfg: Config,
    local_backend: LocalBackend,
    audio_files: dict[str, Path],
    client_for: Callable[[FastAPI], Any],
) -> None:
    cfg = derive(api_cfg, serve={"limits": {"max_upload_bytes": 400_000, "max_files": 3, "max_seconds": 2.0}})
    c = client_for(create_api(cfg, local_backend))
    # too many files
    r = c.post(MULTI, files=[("files", (f"{i}.wav", wav_bytes(0.2))) for i in range(4)])
    assert r.status_code == 413 and "4 files" in r.json()["detail"]
    # too many file bytes in total (each part small, the sum over the limit)
    r = c.post(MULTI, files=[("files", (f"{i}.wav", wav_bytes(3.2))) for i in range(3)])  # 3 x 141 kB
    assert r.status_code == 413, r.text
    # a declared body far over the limit is refused before it is read
    r = c.post(MULTI, files=[("files", ("big.wav", b"\0" * 2_000_000))])
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]

    # a streamed body without Content-Length is cut off too
    async def stream() -> Any:
        yield b'--BB\r\nContent-Disposition: form-data; name="files"; filename="a.wav"\r\n\r\n'
        for _ in range(30):
            yield b"\0" * 100_000
        yield b"\r\n--BB--\r\n"

    r = c.post(MULTI, content=stream(), headers={"content-type": "multipart/form-data; boundary=BB"})
    assert r.status_code == 413
    # per-file duration limit: the long file fails, the other succeeds
    r = c.post(MULTI, files=files_of(audio_files, "mp3", "flac"))
    assert r.status_code == 200
    res = by_file(r.json())
    assert res["clip.mp3"]["error"].startswith("too_long") and "scores" in res["tones.flac"]


def test_filenames_are_sanitised(local_client: Any) -> None:
    r = local_client.post(
        MULTI,
        files=[("files", ("../../etc/passwd", wav_bytes())), ("files", ("music/albums/x.wav", wav_bytes()))],
    )
    assert [x["file"] for x in r.json()["results"]] == ["passwd", "x.wav"]
    # raw non-UTF-8 bytes and a Windows path in the multipart header
    body = (
        b'--BB\r\nContent-Disposition: form-data; name="files"; filename="C:\\\\dir\\\\caf\xe9\x01.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + wav_bytes() + b"\r\n--BB--\r\n"
    )
    r = local_client.post(MULTI, content=body, headers={"content-type": "multipart/form-data; boundary=BB"})
    assert r.status_code == 200
    name = r.json()["results"][0]["file"]
    assert name.startswith("caf") and name.endswith(".wav") and "\\" not in name and "/" not in name
    assert all(ch.isprintable() for ch in name)


def test_api_key(api_cfg: Config, local_backend: LocalBackend, client_for: Callable[[FastAPI], Any]) -> None:
    c = client_for(create_api(derive(api_cfg, serve={"api_key": "s3cret"}), local_backend))
    files = [("files", ("a.wav", wav_bytes()))]
    assert c.post(MULTI, files=files).status_code == 401
    assert c.post(SINGLE, files=files, headers={"X-API-Key": "wrong"}).status_code == 401
    assert c.get("/models").status_code == 401
    assert c.post(MULTI, files=files, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert c.get("/models", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert c.get("/healthz").status_code == 200  # probes and the page itself stay open
    assert c.get("/").status_code == 200
    assert "APIKeyHeader" in json.dumps(c.get("/openapi.json").json()["components"]["securitySchemes"])
    # without a configured key nothing is required
    assert "securitySchemes" not in create_api(api_cfg, local_backend).openapi().get("components", {})


def test_cors(api_cfg: Config, local_backend: LocalBackend, client_for: Callable[[FastAPI], Any]) -> None:
    c = client_for(create_api(derive(api_cfg, serve={"cors_origins": ["http://ok.example"]}), local_backend))
    pre = {"Origin": "http://ok.example", "Access-Control-Request-Method": "POST"}
    r = c.options(MULTI, headers=pre)
    assert r.headers.get("access-control-allow-origin") == "http://ok.example"
    r = c.get("/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    plain = client_for(create_api(api_cfg, local_backend))
    r = plain.get("/models", headers={"Origin": "http://ok.example"})
    assert "access-control-allow-origin" not in r.headers


def test_page_and_static(
    api_cfg: Config,
    local_backend: LocalBackend,
    tmp_path: Path,
    client_for: Callable[[FastAPI], Any],
    local_client: Any,
) -> None:
    (tmp_path / "index.html").write_text(
        "<!doctype html><title>t</title><script src='/static/app.js'></script>"
    )
    (tmp_path / "app.js").write_text("console.log('hi')")
    c = client_for(create_api(api_cfg, local_backend, static_dir=tmp_path))
    r = c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and "app.js" in r.text
    r = c.get("/static/app.js")
    assert r.status_code == 200 and "console.log" in r.text
    assert c.get("/static/../conftest.py").status_code == 404
    # the project's own page (serve/static) or, before it exists, a placeholder
    r = local_client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    # the page is native ES modules: each must come back as JavaScript, or the browser refuses to run it
    entry = re.search(r'<script type="module" src="(/static/js/main\.js)"></script>', r.text)
    assert entry is not None
    js_dir = STATIC_DIR / "js"
    modules = sorted(js_dir.glob("*.js"))
    assert modules and {m.name for m in modules} >= {"main.js", "dom.js", "fusion.js"}
    for m in modules:
        r = local_client.get(f"/static/js/{m.name}")
        assert r.status_code == 200 and r.text == m.read_text(), m.name
        mime = r.headers["content-type"].split(";")[0]
        assert mime in {"text/javascript", "application/javascript"}, m.name
        for dep in re.findall(r'^import \{[^}]*\} from "\./([\w-]+\.js)";$', r.text, re.M):
            assert (js_dir / dep).is_file(), f"{m.name} imports a missing {dep}"
    missing = client_for(create_api(api_cfg, local_backend, static_dir=tmp_path / "nope"))
    assert missing.get("/").status_code == 200 and missing.get("/static/app.js").status_code == 404


def test_openapi(local_client: Any) -> None:
    doc = local_client.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths) >= {MULTI, SINGLE, "/models", "/healthz"}
    assert "/" not in paths
    for p in (MULTI, SINGLE):
        post = paths[p]["post"]
        ref = post["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
        fields = set(doc["components"]["schemas"][ref]["properties"])
        assert {"files", "threshold", "format"} <= fields
        assert set(post["responses"]) >= {"200", "413", "422"}
        assert "text/csv" in post["responses"]["200"]["content"]
        assert any(q["name"] == "format" and q["in"] == "query" for q in post["parameters"])
    assert "weights" in json.dumps(paths[MULTI]) or "weights" in json.dumps(doc["components"])
    assert "404" in paths[SINGLE]["post"]["responses"]
    assert paths["/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"
    ].endswith("ModelsResponse")
    assert local_client.get("/docs").status_code == 200


# ---- weights and fusion updates (pure functions) --------------------------------------------------------


def test_validate_weights() -> None:
    assert validate_weights({"res_genre": 2}, SERVED) == {"res_genre": 2.0, "res_bpm": 0.0}
    assert parse_weights('{"res_bpm": 0.5, "res_genre": 0.5}', SERVED) == {"res_genre": 0.5, "res_bpm": 0.5}
    with pytest.raises(WeightsError, match="not deployed"):
        validate_weights({"seed_mel": 1}, SERVED, known={"seed_mel"})
    with pytest.raises(WeightsError, match="unknown"):
        validate_weights({"seed_mel": 1}, SERVED)


def test_apply_fusion_update(api_cfg: Config, tmp_path: Path) -> None:
    base = default_spec(api_cfg)
    f = apply_fusion_update(api_cfg, base, None, SERVED)
    assert f.weights == {"res_genre": 1.0, "res_bpm": 1.0} and f.source == "default"
    f = apply_fusion_update(
        api_cfg,
        base,
        {"weights": {"res_genre": 0.2, "res_bpm": 0.8}, "aggregation": "s2", "thresholds": 0.4},
        SERVED,
    )
    assert f.weights == {"res_genre": 0.2, "res_bpm": 0.8} and f.aggregation == "s2"
    assert f.thresholds == (0.4,) * len(api_cfg.labels) and f.source == "default+user_config"
    f = apply_fusion_update(api_cfg, base, {"thresholds": {"pia": 0.9}}, SERVED)
    assert f.thresholds[api_cfg.label_codes.index("pia")] == 0.9 and f.thresholds[0] == 0.5
    # a new spec file (as `mpic fuse` writes it)
    spec = default_spec(api_cfg)
    spec.weights = {"res_genre": 0.1, "res_bpm": 0.9}
    spec.thresholds = [0.3] * len(api_cfg.labels)
    spec.source = "fusion"
    cfg = derive(api_cfg, runs_dir=str(tmp_path / "runs"))
    path = save_spec(cfg, spec)
    f = apply_fusion_update(api_cfg, base, {"spec_path": str(path)}, SERVED)
    assert f.weights == {"res_genre": 0.1, "res_bpm": 0.9} and f.version == 1 and f.source == "fusion"
    inline = json.loads(spec.to_json())
    f = apply_fusion_update(api_cfg, base, FusionUpdate(spec=inline), SERVED)
    assert f.weights["res_bpm"] == 0.9
    cases: list[tuple[dict[str, Any], str]] = [
        ({"weights": {"res_genre": -1}}, ">= 0"),
        ({"weights": {"seed_mel": 1}}, "not deployed"),
        ({"thresholds": [0.5]}, "thresholds for"),
        ({"thresholds": 1.5}, "(0, 1)"),
        ({"thresholds": {"xyz": 0.5}}, "unknown labels"),
        ({"aggregation": "median"}, "aggregation"),
        ({"wieghts": {}}, "wieghts"),
        ({"spec_path": str(tmp_path / "missing.json")}, "cannot read"),
    ]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            apply_fusion_update(api_cfg, base, bad, SERVED)
    wide = EnsembleSpec(
        ensemble="x",
        labels=api_cfg.label_codes,
        members={m: MemberRef() for m in [*SERVED, "seed_mel"]},
        weights={"res_genre": 1, "res_bpm": 1, "seed_mel": 1},
    )
    with pytest.raises(ValueError, match="not deployed"):
        apply_fusion_update(api_cfg, base, {"spec": json.loads(wide.to_json())}, SERVED)


# ---- app building helpers that need no cluster -----------------------------------------------------------


def test_serve_config_file_is_valid() -> None:
    from ray.serve.schema import ServeDeploySchema

    from serve.app import SERVE_CONFIG, AppArgs

    raw = yaml.safe_load(SERVE_CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(raw)
    app = schema.applications[0]
    assert app.import_path == "serve.app:build_app" and app.route_prefix == "/"
    assert schema.http_options.host == "127.0.0.1" and schema.http_options.port == 8080
    AppArgs.model_validate(app.args)
    assert [d.name for d in app.deployments] == ["ingress"]


def test_check_serve_config(api_cfg: Config) -> None:
    from serve.app import AppArgs, check_serve_config, serve_config

    args = AppArgs(config_data=api_cfg.snapshot(), allow_untrained=True)
    check_serve_config(serve_config(args, fusion={"weights": {"res_genre": 1, "res_bpm": 0}}))
    with pytest.raises(ValueError, match=r"application 'mpic'.*>= 0"):
        check_serve_config(serve_config(args, fusion={"weights": {"res_genre": -1}}))
    with pytest.raises(ValueError, match="not deployed"):
        check_serve_config(serve_config(args, fusion={"weights": {"seed_mel": 1}}))
    with pytest.raises(ValueError, match="members"):
        check_serve_config(serve_config(args.model_copy(update={"members": ["nope"]})))


def test_app_args_and_member_options(api_cfg: Config) -> None:
    from serve.app import AppArgs, member_options, served_members

    a = AppArgs.model_validate(
        {
            "overrides": "serve.num_cpus=0.5;serve.port=9000",
            "members": "res_bpm",
            "allow_untrained": "true",
            "config_data": api_cfg.snapshot(),
        }
    )
    cfg = a.load_config()
    assert cfg.serve.num_cpus == 0.5 and cfg.serve.port == 9000 and a.allow_untrained is True
    spec = default_spec(api_cfg)
    assert served_members(spec) == SERVED and served_members(spec, a.members) == ["res_bpm"]
    with pytest.raises(ValueError, match="not in ensemble"):
        served_members(spec, ["seed_mel"])
    cfg = derive(
        api_cfg,
        serve={"num_gpus": 0.25, "member_autoscaling": {"res_bpm": {"min_replicas": 2, "max_replicas": 3}}},
    )
    gpu = member_options(cfg, "res_bpm", has_gpu=True)
    assert gpu["name"] == "member_res_bpm"
    env = {"runtime_env": {"env_vars": dict(cfg.serve.replica_env)}}
    assert cfg.serve.replica_env  # config.yml sets Serve's request-path switches
    assert gpu["ray_actor_options"] == {"num_cpus": cfg.serve.num_cpus, "num_gpus": 0.25, **env}
    bare = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"replica_env": {}})})
    assert "runtime_env" not in member_options(bare, "res_bpm", has_gpu=False)["ray_actor_options"]
    assert gpu["autoscaling_config"]["min_replicas"] == 2 and gpu["autoscaling_config"]["max_replicas"] == 3
    assert gpu["max_ongoing_requests"] == cfg.serve.max_ongoing_requests
    assert gpu["max_queued_requests"] == cfg.serve.max_queued_requests
    assert member_options(cfg, "res_genre", has_gpu=False)["ray_actor_options"]["num_gpus"] == 0
    assert (
        member_options(cfg, "res_genre", has_gpu=False)["autoscaling_config"]["max_replicas"]
        == cfg.serve.autoscaling.max_replicas
    )


def test_single_model_uses_the_members_fitted_thresholds(
    api_cfg: Config, audio_files: dict[str, Path], client_for: Callable[[FastAPI], Any]
) -> None:
    """single_model uses the member's own thresholds fitted by `mpic fuse`, not a fixed 0.5."""
    fake = FakeBackend(len(api_cfg.labels))
    n = len(api_cfg.labels)
    own = {
        "res_genre": [0.05 + 0.01 * i for i in range(n)],
        "res_bpm": [0.55] * n,
        "seed_mel": [0.95] * n,
    }
    spec = fake_spec(api_cfg, details={"member_thresholds": own}, registered_model="mpic-x-ensemble-fake")
    c = client_for(create_api(api_cfg, fake, spec=spec))
    for member in ("res_genre", "res_bpm"):
        body = c.post(SINGLE, files=files_of(audio_files, "wav"), data={"model": member}).json()
        assert list(body["thresholds"].values()) == pytest.approx(own[member])
        assert body["model"] == member and body["weights"] == {member: 1.0}
        assert body["ensemble"] == {
            "name": "fake",
            "registered_model": "mpic-x-ensemble-fake",
            "version": 7,
            "source": "fusion",
        }
        # res_genre's class-0 file score is 0.1 (mean of a 0..0.2 ramp), the others 0.2: its own
        # thresholds (0.05, 0.06, …) report every class where 0.5 would report none
        got = body["results"][0]["instruments"]
        assert got == (api_cfg.label_codes if member == "res_genre" else api_cfg.label_codes[1:])
    # an explicit threshold still wins
    body = c.post(
        SINGLE, files=files_of(audio_files, "wav"), data={"model": "res_genre", "threshold": "0.5"}
    ).json()
    assert set(body["thresholds"].values()) == {0.5} and body["results"][0]["instruments"] == []
    # a spec without member thresholds (before any fusion): the config's fixed threshold
    plain = client_for(create_api(api_cfg, fake, spec=fake_spec(api_cfg)))
    body = plain.post(SINGLE, files=files_of(audio_files, "wav"), data={"model": "res_genre"}).json()
    assert set(body["thresholds"].values()) == {api_cfg.inference.threshold}
    assert c.get("/models").json()["spec"]["registered_model"] == "mpic-x-ensemble-fake"


def test_a_failing_serve_run_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """``deploy`` applies configs with ``serve run``; its failure surfaces with the command's last lines."""
    import subprocess
    import types

    import serve.app as app_mod

    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        out, err = "Running config file\n", "ValueError: bad app\n"
        return subprocess.CompletedProcess(cmd, 1, stdout=out, stderr=err)

    context = types.SimpleNamespace(gcs_address="127.0.0.1:6379")
    monkeypatch.setattr(app_mod.ray, "get_runtime_context", lambda: context)
    monkeypatch.setattr(app_mod.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match=r"serve run failed:\nRunning config file\nValueError: bad app"):
        app_mod._serve_run_config({"applications": []})
    assert calls[0][-4:-1] == ["--non-blocking", "--address", "127.0.0.1:6379"]
    assert calls[0][-1].endswith("serve_config.yaml")

    def too_slow(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(app_mod.subprocess, "run", too_slow)
    with pytest.raises(TimeoutError, match="did not submit the config within 5 s"):
        app_mod._serve_run_config({"applications": []}, timeout_s=5)
