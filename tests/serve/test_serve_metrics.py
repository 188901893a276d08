"""Serve application metrics on Ray's Prometheus endpoint, after a few real requests to the session's app."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from ml.config import Config
from serve.metrics import error_reason, route_of
from tests.serve.conftest import chord, encode

MULTI = "/analyze_files/multi_model"
EXPORT_WAIT_S = 60.0  # Ray's metrics agent exports what replicas recorded every few seconds
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def scrape() -> str:
    """The Prometheus text of the session Ray's node (its metrics agent's export port)."""
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    r = httpx.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=30)
    r.raise_for_status()
    return r.text


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m["name"] == name:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m["labels"] or ""))
            out.append((labels, float(m["value"])))
    return out


def total(text: str, name: str, **where: str) -> float:
    return sum(v for lab, v in samples(text, name) if all(lab.get(k) == w for k, w in where.items()))


def test_error_reason_and_route_tags_stay_bounded() -> None:
    assert error_reason("too_long: 700 s exceeds 600 s") == "too_long"
    assert error_reason("undecodable: could not decode") == "undecodable"
    assert error_reason("a file name: with colons") == "other"
    assert route_of(MULTI) == MULTI and route_of("/no/such/page/123") == "other"


def test_requests_show_up_in_prometheus_metrics(serve_url: str, serve_cfg: Config) -> None:
    sr = 22050
    good = [("files", (f"tone{i}.wav", encode(chord(2.0 + i, sr), sr, "WAV"))) for i in range(2)]
    bad = [("files", ("garbage.wav", b"not audio" * 100))]
    r = httpx.post(f"{serve_url}{MULTI}", files=[*good, *bad], timeout=120)
    assert r.status_code == 200, r.text
    too_many = [("files", (f"x{i}.wav", b"RIFF")) for i in range(serve_cfg.serve.limits.max_files + 1)]
    assert httpx.post(f"{serve_url}{MULTI}", files=too_many, timeout=60).status_code == 413
    r = httpx.post(f"{serve_url}{MULTI}", files=good[:1], data={"weights": "{bad"}, timeout=60)
    assert r.status_code == 422

    wanted = {
        "ray_mpic_audio_seconds_total": lambda t: total(t, "ray_mpic_audio_seconds_total") >= 5.0,
        "files ok": lambda t: total(t, "ray_mpic_files_total", outcome="ok") >= 2,
        "files failed": lambda t: total(t, "ray_mpic_files_failed_total", reason="undecodable") >= 1,
        "decode": lambda t: total(t, "ray_mpic_decode_seconds_count", outcome="ok") >= 2,
        "member latency": lambda t: all(
            total(t, "ray_mpic_member_latency_seconds_count", member=m) >= 2 for m in ("res_genre", "res_bpm")
        ),
        "413": lambda t: total(t, "ray_mpic_rejections_total", code="413", route=MULTI) >= 1,
        "422": lambda t: total(t, "ray_mpic_rejections_total", code="422", route=MULTI) >= 1,
        "batches": lambda t: (
            total(t, "ray_mpic_member_batch_seconds_count", member="res_bpm", device="cpu") >= 1
        ),
        # the gauge is exported every few seconds: a scrape may show a value from while requests ran, so
        # wait until the export shows every request finished (nothing left in progress)
        "in flight back to 0": lambda t: (
            bool(samples(t, "ray_mpic_requests_in_flight"))
            and total(t, "ray_mpic_requests_in_flight") == pytest.approx(0.0)
        ),
    }
    deadline = time.monotonic() + EXPORT_WAIT_S
    missing = list(wanted)
    text = ""
    while time.monotonic() < deadline:
        text = scrape()
        missing = [k for k, check in wanted.items() if not check(text)]
        if not missing:
            break
        time.sleep(2)
    mpic = "\n".join(line for line in text.splitlines() if "mpic_" in line)
    assert not missing, f"not (yet) exported after {EXPORT_WAIT_S:g} s: {missing}\n{mpic[-4000:]}"
    # Serve's tags come with the application's metrics: which app and which deployment recorded them
    (labels, _), *_ = samples(text, "ray_mpic_member_batch_seconds_count")
    assert labels.get("application") and labels.get("deployment", "").startswith("member")
    (labels, _), *_ = samples(text, "ray_mpic_audio_seconds_total")
    assert labels.get("deployment") == "ingress"
