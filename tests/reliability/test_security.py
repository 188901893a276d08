"""Safe defaults: loopback binds, nothing public in cluster.yaml, API key, CORS off, no leftovers, no paths.

* Serve (config, ``run_local``, ``python -m serve.api``), MLflow (``mpic mlflow``) and the Ray dashboard
  (``init_ray``, ``run_local``) bind 127.0.0.1 unless configured otherwise, in every profile; the running
  Serve proxy of this session listens on the loopback address only.
* ``cluster.yaml`` opens no port (SSH forwarding only); see also tests/deploy/test_cluster_yaml.py.
* Optional API key (``X-API-Key``; ``serve.api_key`` or ``$MPIC_API_KEY``), off by default; CORS off.
* Uploads live in memory or in anonymous temp files that are closed (so gone) after every request, good or
  bad; a model is only ever chosen by name from the served members, never from a path in a request; errors
  never carry server paths or tracebacks.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI

from ml.config import Config, ServeConfig, load_config
from serve.api import API_KEY_ENV, API_KEY_HEADER, create_api
from tests.reliability.corpus import MB, encode, tone
from tests.serve.conftest import derive_config

ROOT = Path(__file__).resolve().parents[2]
MULTI = "/analyze_files/multi_model"
SINGLE = "/analyze_files/single_model"
LOOPBACK = "127.0.0.1"


def wav(seconds: float = 1.0) -> bytes:
    return encode(tone(seconds, 22050), 22050, "WAV", "PCM_16")


# ---- binds ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [None, "smoke", "demo", "full"])
def test_config_binds_loopback_in_every_profile(profile: str | None) -> None:
    cfg = load_config(ROOT / "config.yml", profile=profile)
    assert cfg.serve.host == LOOPBACK
    assert cfg.mlflow.host == LOOPBACK
    assert cfg.ray.dashboard_host == LOOPBACK
    assert cfg.serve.api_key is None and cfg.serve.cors_origins == []
    s = ServeConfig()  # the code defaults too, for configs that leave the keys out
    assert (s.host, s.api_key, s.cors_origins) == (LOOPBACK, None, [])
    assert s.max_queued_requests > 0 and s.limits.request_timeout_s > 0


def test_serve_config_file_binds_loopback() -> None:
    doc = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    assert doc["http_options"]["host"] == LOOPBACK
    assert doc["http_options"]["request_timeout_s"] > 0  # the proxy ends a request that takes too long


def test_mlflow_server_binds_loopback(smoke_cfg: Config) -> None:
    from ml.tracking import server_command

    cmd = server_command(smoke_cfg)
    assert cmd[cmd.index("--host") + 1] == LOOPBACK


def test_local_ray_dashboard_binds_loopback(smoke_cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from ray_jobs import common

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert common.init_ray(smoke_cfg) is True
    assert calls[-1]["address"] == "local" and calls[-1]["dashboard_host"] == LOOPBACK


def test_run_local_binds_loopback(smoke_cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mpic serve``: local Ray with the dashboard on 127.0.0.1, Serve HTTP on 127.0.0.1, bounded timeout."""
    import ray

    import serve.app as app_mod

    inits: list[dict[str, Any]] = []
    deployed: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: inits.append(kw))
    monkeypatch.setattr(app_mod, "deploy", lambda config, **kw: deployed.append(dict(config)))
    url = app_mod.run_local(smoke_cfg, blocking=False, allow_untrained=True)
    assert url.startswith(f"http://{LOOPBACK}:")
    assert inits[-1]["dashboard_host"] == LOOPBACK
    http = deployed[-1]["http_options"]
    assert http["host"] == LOOPBACK and 0 < http["request_timeout_s"] <= 600


def test_running_serve_proxy_listens_on_loopback_only(serve_url: str) -> None:
    """The session's Serve HTTP port, as the kernel sees it: bound to 127.0.0.1, never to all interfaces."""
    port = int(serve_url.rsplit(":", 1)[1])
    binds = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if int(p, 16) == port and state == "0A":  # LISTEN
                binds.append(addr)
    assert binds and all(a in ("0100007F", "00000000000000000000000001000000") for a in binds), binds


def test_cluster_yaml_opens_no_port() -> None:
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert raw["provider"]["security_group"]["IpPermissions"] == []  # SSH only (Ray's default rule)
    head = " ".join(raw["head_start_ray_commands"])
    assert f"--dashboard-host={LOOPBACK}" in head
    for opt in raw["docker"].get("run_options", []):
        assert not opt.startswith(("-p", "--publish", "--network host", "--net=host")), opt
    assert "0.0.0.0" not in (ROOT / "cluster.yaml").read_text()


# ---- API key and CORS ----------------------------------------------------------------------------------


def test_api_key_off_by_default_and_on_by_config_or_env(
    api_cfg: Config, local_backend: Any, client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [("files", ("a.wav", wav()))]
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    open_app = client_for(create_api(api_cfg, local_backend))
    assert open_app.post(MULTI, files=files).status_code == 200
    secret = "k3y-" + os.urandom(8).hex()
    for label, app in [
        ("config", create_api(derive_config(api_cfg, serve={"api_key": secret}), local_backend)),
        ("env", None),
    ]:
        if app is None:
            monkeypatch.setenv(API_KEY_ENV, secret)  # a cluster secret in the replica's environment
            app = create_api(api_cfg, local_backend)
        c = client_for(app)
        for bad in ({}, {API_KEY_HEADER: "wrong"}, {API_KEY_HEADER: secret[:-1]}, {"Authorization": secret}):
            for method, url in (("POST", MULTI), ("POST", SINGLE), ("GET", "/models")):
                r = c.request(method, url, headers=bad, files=files if method == "POST" else None)
                assert r.status_code == 401, (label, bad, url, r.status_code)
                assert secret not in r.text
        assert c.post(MULTI, files=files, headers={API_KEY_HEADER: secret}).status_code == 200
        models = c.get("/models", headers={API_KEY_HEADER: secret})
        assert models.status_code == 200 and secret not in models.text
        assert c.get("/healthz").status_code == 200  # probes stay open
        assert secret not in json.dumps(c.get("/openapi.json").json())


def test_cors_is_off_by_default(local_client: Any) -> None:
    pre = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    r = local_client.options(MULTI, headers=pre)
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    for url in ("/models", "/healthz", "/openapi.json"):
        r = local_client.get(url, headers={"Origin": "http://evil.example"})
        assert not any(h.startswith("access-control-") for h in r.headers), (url, dict(r.headers))


# ---- uploads never outlive the request -----------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_upload_temp_files_are_always_removed(
    api_cfg: Config, local_backend: Any, client_for: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Parts over 1 MB spill to anonymous temp files: every one is closed, whatever the answer was."""
    made: list[Any] = []
    real = tempfile.TemporaryFile

    def recording(*a: Any, **kw: Any) -> Any:
        kw["dir"] = str(tmp_path)  # where any named leftover would show
        f = real(*a, **kw)
        made.append(f)
        return f

    monkeypatch.setattr(tempfile, "TemporaryFile", recording)
    cfg = derive_config(api_cfg, serve={"limits": {"max_upload_bytes": 4 * MB, "max_files": 3}})
    c = client_for(create_api(cfg, local_backend))
    big = wav(40.0)  # 1.7 MB: over the in-memory spool size
    assert len(big) > MB
    requests = {
        200: [("files", ("big.wav", big)), ("files", ("small.wav", wav()))],
        413: [("files", (f"{i}.wav", big)) for i in range(3)],  # over 4 MB in total, refused mid-read
        422: [("files", ("big.wav", big))],  # with a bad threshold
    }
    c.post(MULTI, files=requests[200])  # warm-up (lazy imports, thread pools)
    made.clear()
    fds = open_fds()
    for status, files in requests.items():
        data = {"threshold": "2"} if status == 422 else None
        r = c.post(MULTI, files=files, data=data)
        assert r.status_code == status, r.text
    assert made, "no upload was spooled to a temp file: the test does not test anything"
    assert all(f.closed for f in made), "a spooled upload was left open"
    assert list(tmp_path.iterdir()) == []
    assert open_fds() <= fds


# ---- models by name only; nothing of the server in errors ----------------------------------------------


def test_models_are_chosen_by_name_only(
    local_app: FastAPI, local_client: Any, monkeypatch: pytest.MonkeyPatch, api_cfg: Config
) -> None:
    import torch

    import ml.checkpoint
    import ml.inference

    def forbidden(*a: Any, **kw: Any) -> Any:
        raise AssertionError(f"a request made the server load a model: {a!r}")

    for mod, name in ((torch, "load"), (ml.checkpoint, "load_classifier"), (ml.inference, "load_member")):
        monkeypatch.setattr(mod, name, forbidden)
    ckpt = str(api_cfg.runs_dir / "res_genre" / "fold0" / "model.pt")
    for model in (ckpt, "../../etc/passwd", "/dev/zero", "res_genre/../res_bpm", "RES_GENRE", "res_genre "):
        r = local_client.post(SINGLE, files=[("files", ("a.wav", wav()))], data={"model": model})
        assert r.status_code == 404 and "valid models: res_genre, res_bpm" in r.json()["detail"], model
    # operator-only settings are not request fields: a spec path in a form is ignored
    r = local_client.post(
        MULTI, files=[("files", ("a.wav", wav()))], data={"spec_path": "/etc/passwd", "spec": "{}"}
    )
    assert r.status_code == 200 and r.json()["weights"] == {"res_genre": 0.5, "res_bpm": 0.5}


def test_errors_reveal_nothing_of_the_server(local_client: Any) -> None:
    files = [
        ("files", ("x.flac", b"fLaC" + bytes(60))),
        ("files", ("y.mp3", b"\xff\xfb\x90" + bytes(100))),
        ("files", ("z.wav", b"RIFF\x00\x00\x00\x00WAVEfmt ")),
        ("files", ("../../../proc/self/environ", b"")),
    ]
    for url in (MULTI, SINGLE):
        text = local_client.post(url, files=files).text
        for leak in (str(ROOT), "/tmp", "/proc", "Traceback", "object at 0x", "site-packages"):
            assert leak not in text, (leak, text[:500])
