"""Fixtures for the HTTP API: an in-process app (LocalBackend, untrained deterministic members) and one
real Ray Serve deployment per test session (``serve_url``), both built from the smoke config.

``serve_url`` (also used by the web-page tests) is the base URL of the Serve HTTP proxy, e.g.
``http://127.0.0.1:54321``; the fixture returns only once ``/healthz`` reports every member ok.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi import FastAPI

from ml.config import Config, deep_merge
from ml.service import LocalBackend
from serve.api import create_api

SERVE_READY_TIMEOUT_S = 300.0
# The Serve deployment gives one member two replicas so tests can check replica counts come from config.
TWO_REPLICA_MEMBER = "res_bpm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def derive_config(cfg: Config, **sections: Any) -> Config:
    """``cfg`` with some sections deep-merged (e.g. ``serve={"api_key": "k"}``)."""
    return Config.model_validate(deep_merge(cfg.snapshot(), sections))


def chord(
    seconds: float, sr: int, freqs: tuple[float, ...] = (220.0, 330.0, 440.0), amp: float = 0.2
) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = np.zeros_like(t)
    for k, f in enumerate(freqs):
        wave += np.sin(2 * np.pi * f * t) * (1 + 0.3 * np.sin(2 * np.pi * (k + 1) * 0.7 * t))
    return (amp * wave / len(freqs)).astype(np.float32)


def encode(wave: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


class AsgiClient:
    """A synchronous client over ``httpx.ASGITransport`` (in-process, no network), one event loop."""

    def __init__(self, app: FastAPI) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver", timeout=120
        )

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return self._loop.run_until_complete(self._client.request(method, url, **kw))

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def options(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("OPTIONS", url, **kw)

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


@pytest.fixture(scope="session")
def audio_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small test uploads written with soundfile: WAV (stereo, 44.1 kHz), FLAC (22.05 kHz), MP3, silence."""
    d = tmp_path_factory.mktemp("uploads")
    stereo = np.stack([chord(2.3, 44100), chord(2.3, 44100, (261.6, 392.0))], axis=1)
    files = {
        "wav": (d / "stereo.wav", encode(stereo, 44100, "WAV", "PCM_16")),
        "flac": (d / "tones.flac", encode(chord(1.7, 22050, (523.3, 659.3)), 22050, "FLAC")),
        "mp3": (d / "clip.mp3", encode(chord(3.1, 44100, (110.0, 165.0, 196.0)), 44100, "MP3")),
        "short": (d / "short.wav", encode(chord(0.4, 16000), 16000, "WAV")),
        "silent": (d / "silence.wav", encode(np.zeros(22050, np.float32), 22050, "WAV")),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {k: p for k, (p, _) in files.items()}


@pytest.fixture(scope="session")
def api_cfg(smoke_cfg: Config) -> Config:
    """The smoke config with ``res_bpm`` on its own 16 kHz front end.

    Untrained members are built with the same seed, so with the same architecture and front end both
    smoke members would score identically and fusion would be untestable; a distinct front end makes
    them differ and makes the service resample to two rates.
    """
    return derive_config(
        smoke_cfg,
        front_ends={
            "mel_small": {
                "kind": "mel",
                "sample_rate": 16000,
                "n_fft": 512,
                "win_length": 400,
                "hop_length": 160,
                "n_mels": 64,
                "f_min": 30,
                "norm": "instance",
            },
        },
        members={"res_bpm": {"front_end": "mel_small"}},
    )


@pytest.fixture(scope="session")
def local_backend(api_cfg: Config) -> LocalBackend:
    """The ensemble's members, untrained (seeded, so every process builds the same weights)."""
    return LocalBackend.from_config(api_cfg, allow_untrained=True)


@pytest.fixture(scope="session")
def local_app(api_cfg: Config, local_backend: LocalBackend) -> FastAPI:
    return create_api(api_cfg, local_backend)


@pytest.fixture(scope="session")
def local_client(local_app: FastAPI) -> Iterator[AsgiClient]:
    """Synchronous client on the in-process app (no network, no Ray)."""
    c = AsgiClient(local_app)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def client_for() -> Iterator[Callable[[FastAPI], AsgiClient]]:
    """Factory of in-process clients for apps a test builds itself (closed after the test)."""
    made: list[AsgiClient] = []

    def make(app: FastAPI) -> AsgiClient:
        made.append(AsgiClient(app))
        return made[-1]

    yield make
    for c in made:
        c.close()


@pytest.fixture(scope="session")
def local_url(local_app: FastAPI) -> Iterator[str]:
    """The in-process app under uvicorn on a free 127.0.0.1 port (no Ray), e.g. for browser tests."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(local_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-local-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def serve_cfg(api_cfg: Config) -> Config:
    """The config of the session's Serve deployment: ``api_cfg`` with one member at two replicas."""
    return derive_config(
        api_cfg, serve={"member_autoscaling": {TWO_REPLICA_MEMBER: {"min_replicas": 2, "max_replicas": 2}}}
    )


def wait_healthy(url: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/healthz", timeout=15)
            last = r.text
            if r.status_code == 200 and r.json().get("ok"):
                return dict(r.json())
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.5)
    raise TimeoutError(f"{url}/healthz not ok after {timeout_s:g} s: {last}")


@pytest.fixture(scope="session")
def serve_url(ray_session: None, serve_cfg: Config) -> Iterator[str]:
    """A real Ray Serve deployment of the smoke ensemble (untrained members) on the session's Ray.

    HTTP listens on a free 127.0.0.1 port (or wherever an already running Serve listens). Deployed
    declaratively, as ``mpic serve`` does, so tests can swap the fusion ``user_config`` in place.
    """
    from ray import serve

    from serve.app import APP_NAME, AppArgs, deploy, serve_config
    from tests.serve_state import serve_http_url

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    deploy(
        serve_config(AppArgs(config_data=serve_cfg.snapshot(), allow_untrained=True)),
        timeout_s=SERVE_READY_TIMEOUT_S,
    )
    url = serve_http_url()
    wait_healthy(url, SERVE_READY_TIMEOUT_S)
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):  # teardown must not mask test failures
            serve.delete(APP_NAME)
