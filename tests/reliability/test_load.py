"""Load: 64 concurrent clients on the session's Serve deployment (loopback only, bounded in time and count).

No 5xx other than 503 backpressure, no client-side timeout, memory of every Serve process flat (controller,
HTTP proxy, ingress and member replicas: under 10 % growth after warm-up), p50/p95/p99 reported to
``test-artifacts/reliability/load-*.json``.

The short run (``LOAD_S`` seconds) is part of the normal suite. The long run is opt-in:
``MPIC_LOAD_SECONDS=300 pytest -m slow tests/reliability/test_load.py -s``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import LOAD_SECONDS_ENV, report
from tests.reliability.corpus import encode, tone
from tests.reliability.loadgen import MemorySampler, run_load, serve_pids, summarize

CLIENTS = 64
LOAD_S = 24.0
MAX_DRIFT = 0.10


def check_load(serve_url: str, name: str, duration_s: float) -> dict[str, Any]:
    files = [("files", ("load.wav", encode(tone(1.5, 22050), 22050, "WAV", "PCM_16"), "audio/wav"))]
    httpx.post(f"{serve_url}/analyze_files/multi_model", files=files, timeout=60).raise_for_status()  # warm
    pids = serve_pids()
    assert {"controller", "proxy", "ingress#0", "member_res_genre#0", "member_res_bpm#1"} <= set(pids), pids
    sampler = MemorySampler(pids, interval_s=0.5)
    sampler.start()
    t0 = time.monotonic()
    try:
        recs = run_load(serve_url, files, clients=CLIENTS, duration_s=duration_s, timeout_s=60.0)
    finally:
        wall = time.monotonic() - t0
        time.sleep(1.0)  # one more sample after the last response
        sampler.stop()
    warm = max(5.0, 0.3 * duration_s)
    drift = sampler.drift(warm_until=warm, window_s=max(3.0, 0.15 * duration_s))
    figures = {
        "clients": CLIENTS,
        "duration_s": duration_s,
        **summarize(recs, wall),
        "max_drift": max(d["drift"] for d in drift.values()),
        "memory": drift,
    }
    report(name, figures)
    bad = [r for r in recs if r.status != 200 and r.status != 503]
    assert not bad, f"{len(bad)} requests failed otherwise than 503, e.g. {bad[:3]}"
    for r in recs:
        if r.status == 503:
            assert r.retry_after is not None, r
            assert "backpressure" in r.detail.lower() or "overloaded" in r.detail, r
    assert figures["statuses"].get("200", 0) >= CLIENTS  # it was serving, not just refusing
    assert max(r.latency for r in recs) < 60.0  # nothing hung (the client timeout)
    for role, d in drift.items():
        assert d["drift"] <= MAX_DRIFT, f"{role}: RSS grew {d['drift']:.1%} under load ({d})"
    h = httpx.get(f"{serve_url}/healthz", timeout=30)
    assert h.status_code == 200 and h.json()["ok"], h.text
    return figures


def test_load_short(serve_url: str) -> None:
    check_load(serve_url, "load-short", LOAD_S)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get(LOAD_SECONDS_ENV), reason=f"set {LOAD_SECONDS_ENV}=300 for the long run"
)
def test_load_long(serve_url: str) -> None:
    check_load(serve_url, "load-long", float(os.environ[LOAD_SECONDS_ENV]))
