"""Per-window member scores (``windows=true``), the typed OpenAPI of the routers, local docs assets."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI

from ml.config import Config, deep_merge
from ml.ensemble import default_spec
from ml.fusion import aggregate
from ml.service import FusionBox, LocalBackend, fusion_from_spec
from serve.api import create_api

MULTI = "/analyze_files/multi_model"
SINGLE = "/analyze_files/single_model"


def files_of(audio_files: dict[str, Path], *keys: str) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (audio_files[k].name, audio_files[k].read_bytes())) for k in keys]


def refuse(body: dict[str, Any], weights: dict[str, float], thresholds: dict[str, float]) -> list[Any]:
    """Fuse the returned member windows again, as the page does: (file scores, instruments, segments)."""
    labels, agg = body["labels"], body["windows"]["aggregation"]
    used = {m: w for m, w in weights.items() if w > 0}
    total = sum(used.values())
    out = []
    for r in body["results"]:
        if "error" in r:
            out.append(None)
            continue
        wins = {m: np.asarray(v, float) for m, v in r["windows"]["members"].items()}
        scores = sum(w / total * aggregate(wins[m], agg) for m, w in used.items())
        segs = sum(w / total * wins[m] for m, w in used.items())
        inst = [] if r["silent"] else [c for c, s in zip(labels, scores, strict=True) if s >= thresholds[c]]
        cap = body.get("max_instruments")
        if cap is not None and len(inst) > cap:  # the highest scores of those over their thresholds
            top = set(sorted(inst, key=lambda c: -scores[labels.index(c)])[:cap])
            inst = [c for c in inst if c in top]
        out.append((dict(zip(labels, scores, strict=True)), inst, segs))
    return out


@pytest.mark.parametrize("aggregation", ["mean", "s2", "max"])
def test_windows_let_a_client_reweigh_without_uploading(
    api_cfg: Config,
    local_backend: LocalBackend,
    audio_files: dict[str, Path],
    client_for: Callable[[FastAPI], Any],
    aggregation: str,
) -> None:
    cfg = api_cfg
    base = fusion_from_spec(cfg, default_spec(cfg), local_backend.members)
    c = client_for(create_api(cfg, local_backend, fusion=FusionBox(replace(base, aggregation=aggregation))))
    files = files_of(audio_files, "wav", "flac", "silent", "short")
    # One member at weight 0: with windows=true it is scored all the same (not fused).
    first = c.post(MULTI, files=files, data={"weights": '{"res_genre": 1, "res_bpm": 0}', "windows": "true"})
    assert first.status_code == 200, first.text
    body = first.json()
    info = body["windows"]
    assert info["members"] == ["res_genre", "res_bpm"]
    assert info["member_weights"] == {"res_genre": 1.0, "res_bpm": 0.0}
    assert body["weights"] == {"res_genre": 1.0}  # fused: only the positive weight
    assert info["aggregation"] == body["aggregation"] == aggregation
    assert info["window_s"] == cfg.inference.window_s
    assert set(info["member_thresholds"]) == {"res_genre", "res_bpm"}
    assert all(set(t) == set(body["labels"]) for t in info["member_thresholds"].values())
    assert body["ensemble"]["name"] == cfg.ensemble
    ok = [r for r in body["results"] if "error" in r or r["windows"]]
    assert len(ok) == len(files)
    for r in body["results"]:
        if "error" in r:
            assert "windows" not in r
            continue
        w = r["windows"]
        assert [s["start_s"] for s in r["segments"]] == pytest.approx(w["starts_s"], abs=1e-3)
        for m in info["members"]:
            assert np.asarray(w["members"][m]).shape == (len(w["starts_s"]), len(body["labels"]))
    # What the client computes for the first weights is the server's answer ...
    for mine, r in zip(
        refuse(body, info["member_weights"], body["thresholds"]), body["results"], strict=True
    ):
        if mine is None:
            continue
        assert mine[0] == pytest.approx(r["scores"], abs=1e-4)
        assert mine[1] == r["instruments"]
    # ... and for other weights, the answer of a new request with those weights.
    for weights in ({"res_genre": 0.3, "res_bpm": 0.7}, {"res_genre": 0.0, "res_bpm": 2.0}):
        again = c.post(MULTI, files=files, data={"weights": json.dumps(weights)}).json()
        assert "windows" not in again and all("windows" not in r for r in again["results"])
        mine_all = refuse(body, weights, again["thresholds"])
        for mine, r in zip(mine_all, again["results"], strict=True):
            if mine is None:
                assert "error" in r
                continue
            assert mine[0] == pytest.approx(r["scores"], abs=1e-4)
            assert mine[1] == r["instruments"]
            segs = np.asarray([[s["scores"][c] for c in again["labels"]] for s in r["segments"]])
            np.testing.assert_allclose(mine[2], segs, atol=1e-4)


def test_windows_single_model_and_query_flag(local_client: Any, audio_files: dict[str, Path]) -> None:
    r = local_client.post(f"{SINGLE}?model=res_bpm&windows=true", files=files_of(audio_files, "wav"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "res_bpm" and body["windows"]["members"] == ["res_bpm"]
    assert list(body["results"][0]["windows"]["members"]) == ["res_bpm"]
    # The JSON download carries them too; without the flag nothing changes.
    d = local_client.post(f"{MULTI}?format=json&windows=true", files=files_of(audio_files, "flac"))
    assert "windows" in json.loads(d.text)["results"][0]
    plain = local_client.post(MULTI, files=files_of(audio_files, "flac")).json()
    assert "windows" not in plain and "windows" not in plain["results"][0]


def test_openapi_is_typed(local_client: Any) -> None:
    doc = local_client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for path in (MULTI, SINGLE):
        op = doc["paths"][path]["post"]
        ok = op["responses"]["200"]["content"]
        assert ok["application/json"]["schema"]["$ref"].endswith("/AnalyzeResponse")
        assert any(p["name"] == "windows" and p["in"] == "query" for p in op["parameters"])
    assert {"FileWindows", "WindowsInfo", "FileAnalysis", "FileFailure"} <= set(schemas)
    assert "windows" in schemas["FileAnalysis"]["properties"]
    health = doc["paths"]["/healthz"]["get"]["responses"]
    assert health["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/HealthResponse")
    assert health["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/HealthResponse")
    assert not {"/", "/docs", "/redoc"} & set(doc["paths"])


def test_docs_assets_are_local(local_client: Any) -> None:
    for page in ("/docs", "/redoc"):
        r = local_client.get(page)
        assert "/docs-assets/" in r.text and "cdn" not in r.text.lower() and "googleapis" not in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        r = local_client.get(f"/docs-assets/{asset}")
        assert r.status_code == 200 and len(r.content) > 100_000


def test_size_limit_message_suggests_compression(
    api_cfg: Config, local_backend: LocalBackend, client_for: Callable[[FastAPI], Any]
) -> None:
    cfg = Config.model_validate(
        deep_merge(api_cfg.snapshot(), {"serve": {"limits": {"max_upload_bytes": 300_000}}})
    )
    c = client_for(create_api(cfg, local_backend))
    for body in (b"\0" * 3_000_000, b"\0" * 500_000):  # refused by the header check / while reading
        r = c.post(MULTI, files=[("files", ("big.wav", body))])
        detail = r.json()["detail"]
        assert r.status_code == 413 and "FLAC" in detail and "MP3" in detail and "MB" in detail, detail
