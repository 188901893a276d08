"""The real Ray Serve application over HTTP (one deployment per session, see conftest ``serve_url``)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
from ray import serve

from bench import procs
from ml.audio import resample
from ml.config import Config
from ml.inference import frame_windows, window_starts
from ml.service import LocalBackend
from serve.api import create_api
from serve.app import APP_NAME, AppArgs, deploy, member_deployment_name, serve_config
from tests.serve_state import replica_details, serve_details

MULTI = "/analyze_files/multi_model"
SINGLE = "/analyze_files/single_model"
TIMEOUT = httpx.Timeout(120.0)
TWO_REPLICA_MEMBER = "res_bpm"  # as configured by conftest.serve_cfg


def upload(audio_files: dict[str, Path], *keys: str) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (audio_files[k].name, audio_files[k].read_bytes())) for k in keys]


def by_file(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["file"]: r for r in body["results"]}


def test_healthz_reports_members_on_gpu_scheduled_cpu_replicas(serve_url: str, serve_cfg: Config) -> None:
    r = httpx.get(f"{serve_url}/healthz", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True and set(body["members"]) == {"res_genre", "res_bpm"}
    for info in body["members"].values():
        # the cluster has one logical GPU: each member replica is scheduled with cfg.serve.num_gpus of it...
        assert info["gpu_ids"], info
        assert info["assigned_resources"].get("GPU") == pytest.approx(serve_cfg.serve.num_gpus)
        assert info["assigned_resources"].get("CPU") == pytest.approx(serve_cfg.serve.num_cpus)
        # ...but no CUDA exists, so it computes on the CPU
        assert info["device"] == "cpu"
        assert info["max_batch_size"] == serve_cfg.serve.max_batch_size
        assert info["num_threads"] == 1


def test_replica_counts_and_options_from_config(serve_url: str, serve_cfg: Config) -> None:
    deployments = serve.status().applications[APP_NAME].deployments
    assert set(deployments) == {
        "ingress",
        member_deployment_name("res_genre"),
        member_deployment_name("res_bpm"),
    }
    assert deployments[member_deployment_name(TWO_REPLICA_MEMBER)].replica_states == {"RUNNING": 2}
    assert deployments[member_deployment_name("res_genre")].replica_states == {"RUNNING": 1}
    details = serve_details()["applications"][APP_NAME]["deployments"]
    conf = details[member_deployment_name(TWO_REPLICA_MEMBER)]["deployment_config"]
    assert conf["autoscaling_config"]["min_replicas"] == 2 and conf["autoscaling_config"]["max_replicas"] == 2
    assert conf["max_ongoing_requests"] == serve_cfg.serve.max_ongoing_requests
    assert conf["max_queued_requests"] == serve_cfg.serve.max_queued_requests
    assert conf["ray_actor_options"]["num_gpus"] == pytest.approx(serve_cfg.serve.num_gpus)
    ingress = details["ingress"]["deployment_config"]
    assert ingress["ray_actor_options"]["num_cpus"] == pytest.approx(serve_cfg.serve.ingress_num_cpus)
    # every replica process runs with serve.replica_env (Serve's request-path switches)
    assert serve_cfg.serve.replica_env
    pids = [r["pid"] for replicas in replica_details().values() for r in replicas]
    assert len(pids) == 4
    for pid in pids:
        environ = procs.environ(pid)
        assert {k: environ.get(k) for k in serve_cfg.serve.replica_env} == serve_cfg.serve.replica_env, pid
    # Serve's controller and proxy were started by the local Ray with ray.env (its control loop, metrics)
    assert serve_cfg.ray.env
    system = [pid for pid, cmd in procs.tree().items() if "ServeController" in cmd or "ProxyActor" in cmd]
    assert len(system) >= 2
    for pid in system:
        environ = procs.environ(pid)
        assert {k: environ.get(k) for k in serve_cfg.ray.env} == serve_cfg.ray.env, pid


def test_multi_model_over_http_matches_in_process(
    serve_url: str, serve_cfg: Config, audio_files: dict[str, Path]
) -> None:
    files = [*upload(audio_files, "wav", "flac", "mp3"), ("files", ("garbage.wav", b"not audio" * 100))]
    r = httpx.post(f"{serve_url}{MULTI}", files=files, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"] == serve_cfg.label_codes
    assert body["weights"] == {"res_genre": 0.5, "res_bpm": 0.5}
    res = by_file(body)
    assert list(res) == ["stereo.wav", "tones.flac", "clip.mp3", "garbage.wav"]
    assert res["garbage.wav"]["error"].startswith("undecodable") and "scores" not in res["garbage.wav"]
    # Replicas build the same seeded untrained members as this process: results must agree exactly
    # (up to float noise from batching), which checks decode → windows → member replicas → fusion end to end.
    app = create_api(serve_cfg, LocalBackend.from_config(serve_cfg, allow_untrained=True))

    async def local_post() -> dict[str, Any]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return (await c.post(MULTI, files=files)).json()

    expected = by_file(asyncio.run(local_post()))
    for name in ("stereo.wav", "tones.flac", "clip.mp3"):
        assert res[name]["scores"] == pytest.approx(expected[name]["scores"], abs=2e-4)
        assert len(res[name]["segments"]) == len(expected[name]["segments"])
        assert res[name]["duration_s"] == pytest.approx(expected[name]["duration_s"])


def test_single_model_weights_and_errors_over_http(serve_url: str, audio_files: dict[str, Path]) -> None:
    files = upload(audio_files, "flac", "mp3")
    single = httpx.post(f"{serve_url}{SINGLE}", files=files, data={"model": "res_bpm"}, timeout=TIMEOUT)
    assert single.status_code == 200, single.text
    assert single.json()["weights"] == {"res_bpm": 1.0}
    multi = httpx.post(
        f"{serve_url}{MULTI}", files=files, data={"weights": json.dumps({"res_bpm": 2.0})}, timeout=TIMEOUT
    )
    assert multi.status_code == 200 and multi.json()["weights"] == {"res_bpm": 1.0}
    for a, b in zip(multi.json()["results"], single.json()["results"], strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-6)
    r = httpx.post(f"{serve_url}{SINGLE}", files=files, data={"model": "nope"}, timeout=TIMEOUT)
    assert r.status_code == 404 and "res_genre" in r.json()["detail"] and "res_bpm" in r.json()["detail"]
    for weights, reason in [
        ('{"res_genre": -1}', ">= 0"),
        ('{"res_genre": 0, "res_bpm": 0}', "positive"),
        ('{"nobody": 1}', "unknown"),
        ('{"res_genre": NaN}', "finite"),
        ("not json", "JSON"),
    ]:
        r = httpx.post(f"{serve_url}{MULTI}", files=files, data={"weights": weights}, timeout=TIMEOUT)
        assert r.status_code == 422 and reason in r.json()["detail"], (weights, r.text)


def test_downloads_over_http(serve_url: str, serve_cfg: Config, audio_files: dict[str, Path]) -> None:
    files = [*upload(audio_files, "wav", "flac"), ("files", ("../../etc/passwd", b"\x00\x01"))]
    r = httpx.post(f"{serve_url}{MULTI}", params={"format": "csv"}, files=files, timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["content-disposition"] == "attachment; filename=wav-files-instruments-predictions.csv"
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["file"] for row in rows] == ["stereo.wav", "tones.flac", "passwd"]
    assert rows[2]["error"] and rows[0]["error"] == "" and float(rows[0]["duration_s"]) == pytest.approx(2.3)
    assert set(serve_cfg.label_codes) <= set(rows[0])
    r = httpx.post(f"{serve_url}{SINGLE}", data={"format": "json"}, files=files, timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["content-disposition"] == "attachment; filename=wav-files-instruments-predictions.json"
    body = json.loads(r.content)
    assert [x["file"] for x in body["results"]] == ["stereo.wav", "tones.flac", "passwd"]


def test_models_over_http(serve_url: str, serve_cfg: Config) -> None:
    r = httpx.get(f"{serve_url}/models", timeout=TIMEOUT)
    assert r.status_code == 200
    body = r.json()
    assert [m["name"] for m in body["members"]] == ["res_genre", "res_bpm"]
    assert body["members"][0]["sample_rate"] == 22050 and body["members"][1]["sample_rate"] == 16000
    assert body["members"][1]["arch"] == "rescnn" and body["members"][1]["front_end"] == "mel_small"
    assert body["default"] == serve_cfg.default_model
    assert len(body["labels"]) == len(serve_cfg.labels)
    page = httpx.get(f"{serve_url}/", timeout=TIMEOUT)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert httpx.get(f"{serve_url}/docs", timeout=TIMEOUT).status_code == 200


def test_member_batches_concurrent_songs(serve_url: str, serve_cfg: Config) -> None:
    """Concurrent songs (any rate, any length) are resampled, framed and scored in one batch, split back."""
    handle = serve.get_deployment_handle(member_deployment_name("res_genre"), app_name=APP_NAME)
    local = LocalBackend.from_config(serve_cfg, ["res_genre"], allow_untrained=True).predictors["res_genre"]
    win, hop = serve_cfg.inference.window_s, serve_cfg.inference.hop_s
    rng = np.random.default_rng(0)
    songs = []
    for i, secs in enumerate((1.0, 3.2, 2.0, 5.5, 0.6, 4.0, 2.5, 3.0) * 3):
        rate = (44100, 22050, 48000)[i % 3]
        wave = (0.1 * rng.standard_normal(round(secs * rate))).astype(np.float32)
        songs.append((wave, rate, window_starts(len(wave) / rate, win, hop)))
    responses = [handle.score.remote(ray.put(w), r, st) for w, r, st in songs]
    outputs = [resp.result(timeout_s=120) for resp in responses]
    for (w, r, st), out in zip(songs, outputs, strict=True):
        assert out.shape == (len(st), len(serve_cfg.labels))
        framed = frame_windows(resample(w, r, local.sample_rate), local.sample_rate, st, win)
        np.testing.assert_allclose(out, local.score_windows(framed), atol=2e-5)
    info = handle.info.remote().result(timeout_s=60)
    assert info["max_items_per_batch"] > 1, info  # some songs shared a forward pass
    assert info["max_items_per_batch"] <= serve_cfg.serve.max_batch_size
    with pytest.raises(Exception, match="expects a non-empty 1-D float32 wave"):
        handle.score.remote(np.zeros((2, 1000), np.float32), 22050, np.zeros(1)).result(timeout_s=60)
    with pytest.raises(Exception, match="bad song"):
        handle.score.remote(np.zeros(1000, np.float32), 22050, np.array([5.0])).result(timeout_s=60)


def test_fusion_swap_without_restart(serve_url: str, serve_cfg: Config, audio_files: dict[str, Path]) -> None:
    """A new ingress user_config changes /models and the results; no replica restarts (same actors, pids)."""
    before = replica_details()
    assert sum(len(v) for v in before.values()) == 4
    args = AppArgs(config_data=serve_cfg.snapshot(), allow_untrained=True)
    new = {"weights": {"res_genre": 0.2, "res_bpm": 0.8}, "thresholds": 0.35, "aggregation": "max"}
    try:
        t0 = time.monotonic()
        deploy(serve_config(args, fusion=new), timeout_s=120)
        models = httpx.get(f"{serve_url}/models", timeout=TIMEOUT).json()
        assert models["weights"] == {"res_genre": 0.2, "res_bpm": 0.8}
        assert models["aggregation"] == "max" and set(models["thresholds"].values()) == {0.35}
        assert models["spec"]["source"].endswith("+user_config")
        r = httpx.post(f"{serve_url}{MULTI}", files=upload(audio_files, "flac"), timeout=TIMEOUT)
        assert r.json()["weights"] == pytest.approx({"res_genre": 0.2, "res_bpm": 0.8})
        assert r.json()["aggregation"] == "max"
        after = replica_details()
        assert after == before  # same replica ids, actor ids and pids: reconfigured in place
        assert time.monotonic() - t0 < 60
    finally:
        deploy(serve_config(args, fusion={}), timeout_s=120)
    restored = httpx.get(f"{serve_url}/models", timeout=TIMEOUT).json()
    assert restored["weights"] == {"res_genre": 1.0, "res_bpm": 1.0} and restored["aggregation"] == "mean"
    assert replica_details() == before
