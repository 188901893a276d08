"""Bounded queues and timeouts: saturated replicas answer 503 + Retry-After instead of queueing for ever.

Two places can refuse work: the Serve HTTP proxy in front of the ingress (its queue of requests waiting for an
ingress replica, ``serve.max_queued_requests``) and the ingress's handle to a member (the same bound per
member). Both answer 503 with ``Retry-After: serve.retry_after_s``; the second names the member. Checked with
fakes in-process, on the session's deployment (its Serve options) and on a deliberately tiny second
application that is flooded.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

import httpx
import numpy as np
import pytest

from ml.config import Config
from ml.service import MemberUnavailableError, Song
from serve.api import create_api
from tests.reliability.conftest import report
from tests.reliability.corpus import encode, tone
from tests.serve.conftest import derive_config

MULTI = "/analyze_files/multi_model"
SINGLE = "/analyze_files/single_model"
BP_APP, BP_ROUTE = "mpic-bp", "/bp"


def wav(seconds: float = 1.0, sr: int = 22050) -> bytes:
    return encode(tone(seconds, sr), sr, "WAV", "PCM_16")


# ---- in-process: the API's answer to an unavailable member ---------------------------------------------


class Unavailable:
    """A backend whose ``res_bpm`` is overloaded (or raises ``exc``)."""

    def __init__(self, cfg: Config, exc: Exception) -> None:
        self.members, self.exc = ["res_genre", "res_bpm"], exc
        self.n_labels = len(cfg.labels)

    def sample_rate(self, member: str) -> int:
        return 22050

    async def score(self, member: str, song: Song) -> np.ndarray:
        if member == "res_bpm":
            raise self.exc
        await asyncio.sleep(0.05)
        return np.full((song.windows, self.n_labels), 0.5, np.float32)


@pytest.mark.parametrize(
    ("exc", "retry_after", "text"),
    [
        (MemberUnavailableError("res_bpm", "overloaded (queue full)", retry_after_s=2.5), "3", "overloaded"),
        (RuntimeError("CUDA error: device-side assert"), None, "RuntimeError"),
    ],
)
def test_member_failure_is_a_503_naming_the_member(
    api_cfg: Config, client_for: Any, exc: Exception, retry_after: str | None, text: str
) -> None:
    c = client_for(create_api(api_cfg, Unavailable(api_cfg, exc)))
    for url in (MULTI, f"{SINGLE}?model=res_bpm"):
        r = c.post(url, files=[("files", ("a.wav", wav()))])
        assert r.status_code == 503, r.text
        detail = r.json()["detail"]
        assert "'res_bpm'" in detail and text in detail
        assert r.headers["retry-after"] == (retry_after or str(math.ceil(api_cfg.serve.retry_after_s)))
    # the other member alone is unaffected
    r = c.post(SINGLE, files=[("files", ("a.wav", wav()))], data={"model": "res_genre"})
    assert r.status_code == 200


def test_every_wait_is_bounded(api_cfg: Config, client_for: Any) -> None:
    """A member that never answers: the request ends at request_timeout_s with 504, the health probe too."""

    class Stuck(Unavailable):
        async def score(self, member: str, windows: np.ndarray) -> np.ndarray:
            await asyncio.sleep(3600)
            raise AssertionError

        async def health(self, member: str) -> dict[str, Any]:
            await asyncio.sleep(3600)
            raise AssertionError

    cfg = derive_config(api_cfg, serve={"limits": {"request_timeout_s": 0.5}})
    import serve.api as api_mod

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(api_mod, "HEALTH_TIMEOUT_S", 0.5)
        c = client_for(create_api(cfg, Stuck(cfg, RuntimeError())))
        t0 = time.monotonic()
        r = c.post(MULTI, files=[("files", ("a.wav", wav()))])
        assert r.status_code == 504 and "0.5 s" in r.json()["detail"]
        h = c.get("/healthz")
        assert h.status_code == 503 and h.json()["members"]["res_bpm"]["error"].startswith("TimeoutError")
        assert time.monotonic() - t0 < 10


# ---- in-process: the Serve backend's mapping of Ray errors ---------------------------------------------


class FakeResponse:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    def __await__(self) -> Any:
        async def go() -> Any:
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

        return go().__await__()


class FakeHandle:
    """``handle.score.remote(wave_ref, rate, starts)`` yields the next scripted outcome."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes, self.calls = list(outcomes), 0
        self.args: list[tuple[Any, ...]] = []
        self.score = self

    def remote(self, *args: Any) -> FakeResponse:
        self.calls += 1
        self.args.append(args)
        return FakeResponse(self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0])


def test_serve_backend_retries_lost_replicas_and_maps_backpressure(
    api_cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.exceptions import ActorDiedError, ActorUnavailableError
    from ray.serve.exceptions import BackPressureError

    import serve.ingress as ingress

    monkeypatch.setattr(ingress, "RETRY_BACKOFF_S", 0.0)
    ok = np.zeros((2, len(api_cfg.labels)), np.float32)
    put: list[np.ndarray] = []
    monkeypatch.setattr(ingress.ray, "put", lambda x: put.append(x) or f"ref{len(put)}")

    def song() -> Song:
        return Song(np.zeros(44100, np.float32), 22050, np.array([0.0, 1.0]))

    w = song()

    def backend(**handles: FakeHandle) -> Any:
        return ingress.ServeBackend(api_cfg, cast(Any, handles))

    # a replica died with the request in flight: sent again, and it works
    h = FakeHandle(ActorDiedError(), ActorUnavailableError("gone", None), ok)
    assert asyncio.run(backend(res_genre=h).score("res_genre", w)) is ok and h.calls == 3
    # the song went into the object store once; every call (and any other member) sends the reference
    assert len(put) == 1 and put[0] is w.wave and {a[0] for a in h.args} == {"ref1"}
    assert h.args[0][1] == 22050 and np.array_equal(h.args[0][2], w.starts_s)
    # still dead after the retries: a clear error naming the member
    h = FakeHandle(ActorDiedError())
    with pytest.raises(MemberUnavailableError, match=r"member 'res_genre' is unavailable: its replica died"):
        asyncio.run(backend(res_genre=h).score("res_genre", w))
    assert h.calls == ingress.RETRIES + 1
    # the member's queue is full: no retry, the member's Retry-After
    h = FakeHandle(BackPressureError(num_queued_requests=4, max_queued_requests=4, retry_after_s=7.0))
    with pytest.raises(MemberUnavailableError, match="overloaded") as e:
        asyncio.run(backend(res_bpm=h).score("res_bpm", w))
    assert e.value.member == "res_bpm" and e.value.retry_after_s == 7.0 and h.calls == 1
    # an error of the member's own (bad input to it) is not retried and not disguised
    h = FakeHandle(ValueError("expects windows of shape"))
    with pytest.raises(ValueError, match="expects windows"):
        asyncio.run(backend(res_genre=h).score("res_genre", w))
    assert h.calls == 1


# ---- the session's Serve deployment: bounded queues configured -----------------------------------------


def test_serve_options_bound_every_queue(serve_url: str, serve_cfg: Config) -> None:
    from serve.app import APP_NAME
    from tests.serve_state import serve_details

    deps = serve_details()["applications"][APP_NAME]["deployments"]
    assert set(deps) == {"ingress", "member_res_genre", "member_res_bpm"}
    for name, d in deps.items():
        conf = d["deployment_config"]
        assert conf["max_queued_requests"] == serve_cfg.serve.max_queued_requests > 0, name
        assert conf["max_ongoing_requests"] == serve_cfg.serve.max_ongoing_requests, name
        assert conf["backpressure_config"] == {
            "status_code": 503,
            "retry_after_s": serve_cfg.serve.retry_after_s,
        }
    http = serve_details()["http_options"]
    assert http["host"] == "127.0.0.1"


# ---- a tiny second application, flooded ----------------------------------------------------------------


def _both_apps(serve_cfg: Config, bp_cfg: Config | None) -> dict[str, Any]:
    """The session app exactly as ``serve_url`` deployed it, plus (or minus) the tiny one."""
    from serve.app import AppArgs, serve_config

    apps = serve_config(AppArgs(config_data=serve_cfg.snapshot(), allow_untrained=True))["applications"]
    if bp_cfg is not None:
        tiny = AppArgs(config_data=bp_cfg.snapshot(), allow_untrained=True, members=["res_genre"])
        apps += serve_config(tiny, name=BP_APP, route_prefix=BP_ROUTE)["applications"]
    return {"applications": apps}


@pytest.fixture(scope="module")
def tiny_app(serve_url: str, serve_cfg: Config) -> Iterator[tuple[str, Config]]:
    """``mpic-bp`` at ``/bp``: one member, one request at a time per replica, a queue of one per caller."""
    from serve.app import deploy

    bp_cfg = derive_config(
        serve_cfg,
        serve={
            "max_batch_size": 1,
            "max_ongoing_requests": 1,
            "max_queued_requests": 1,
            "retry_after_s": 2.5,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "member_autoscaling": {},
        },
    )
    deploy(_both_apps(serve_cfg, bp_cfg), timeout_s=300)
    try:
        yield f"{serve_url}{BP_ROUTE}", bp_cfg
    finally:
        with contextlib.suppress(Exception):
            deploy(_both_apps(serve_cfg, None), timeout_s=120)  # removes mpic-bp, leaves mpic as it was


def test_flooded_ingress_answers_503_with_retry_after(tiny_app: tuple[str, Config]) -> None:
    url, cfg = tiny_app
    body = wav(20.0, 22050)  # 39 windows: long enough to keep the single slot busy

    async def flood(n: int) -> list[tuple[int, dict[str, str], str, float]]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as c:

            async def one() -> tuple[int, dict[str, str], str, float]:
                t0 = time.monotonic()
                r = await c.post(f"{url}{MULTI}", files=[("files", ("a.wav", body))])
                return r.status_code, dict(r.headers), r.text[:300], time.monotonic() - t0

            return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), timeout=120)

    t0 = time.monotonic()
    out = asyncio.run(flood(24))
    wall = time.monotonic() - t0
    statuses = Counter(s for s, *_ in out)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 1 and statuses[503] >= 12, statuses  # 1 running + 1 queued; the rest refused
    for s, headers, text, _ in out:
        if s == 503:
            assert headers.get("retry-after") == str(math.ceil(cfg.serve.retry_after_s)), (headers, text)
    refused = [t for s, _, _, t in out if s == 503]
    report(
        "backpressure-ingress",
        {
            "requests": len(out),
            "statuses": dict(statuses),
            "refused_within_s": round(max(refused), 3),
            "wall_s": round(wall, 2),
        },
    )
    assert max(refused) < 10  # refused at once, not after queueing
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200  # and it is fine afterwards


def test_flooded_member_answers_503_naming_it(tiny_app: tuple[str, Config]) -> None:
    """One request with many files: the ingress's calls to the member overflow the member's queue."""
    url, cfg = tiny_app
    files = [("files", (f"{i}.wav", wav(3.0))) for i in range(cfg.serve.limits.max_files)]
    for _ in range(3):  # which calls are refused depends on timing; one of three tries is plenty
        r = httpx.post(f"{url}{MULTI}", files=files, timeout=60)
        if r.status_code == 503:
            break
        assert r.status_code == 200, r.text
    assert r.status_code == 503, "16 concurrent calls never overflowed a queue of 1"
    assert "member 'res_genre' is unavailable: overloaded" in r.json()["detail"]
    assert r.headers["retry-after"] == str(math.ceil(cfg.serve.retry_after_s))
    ok = httpx.post(f"{url}{MULTI}", files=files[:1], timeout=60)
    assert ok.status_code == 200, ok.text
