"""Bad input → a clear 4xx (or a per-file error beside good results); the service stays up.

Every case of the generated corpus (``corpus.py``) goes to both endpoints of the in-process app, and every
case that is not tens of megabytes also to the real Ray Serve deployment. Afterwards ``/healthz`` is fine
and a normal request still succeeds.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest

from ml.config import Config
from tests.reliability.conftest import report
from tests.reliability.corpus import ENDPOINTS, GOOD_NAME, Case, build_corpus, check, encode, good_wav, tone

SERVED = ["res_genre", "res_bpm"]
MAX_REQUEST_S = 20.0  # every answer, good or bad, is quick (the biggest case is a 50-MB upload)


@pytest.fixture(scope="module")
def corpus(api_cfg: Config) -> list[Case]:
    return build_corpus(api_cfg, SERVED)


def run_corpus(post: Any, cases: list[Case]) -> tuple[list[dict[str, Any]], list[str]]:
    rows, problems = [], []
    for case in cases:
        for endpoint, expect in case.expect.items():
            t0 = time.perf_counter()
            r = post(ENDPOINTS[endpoint], **case.request())
            took = time.perf_counter() - t0
            found = check(case, endpoint, r.status_code, r.headers, r.content)
            rows.append(
                {
                    "case": case.id,
                    "endpoint": endpoint,
                    "kind": case.kind,
                    "status": r.status_code,
                    "expected": expect.status,
                    "ok": not found,
                    "s": round(took, 3),
                }
            )
            if took > MAX_REQUEST_S:
                found.append(f"took {took:.1f} s")
            problems += [f"{case.id} [{endpoint}]: {p}" for p in found]
    return rows, problems


def assert_still_up(get: Any, post: Any) -> None:
    h = get("/healthz")
    assert h.status_code == 200 and h.json()["ok"] is True, h.text
    for endpoint in ENDPOINTS.values():
        r = post(endpoint, files=[("files", (GOOD_NAME, good_wav(), "audio/wav"))])
        assert r.status_code == 200, r.text
        assert "scores" in r.json()["results"][0]


def test_corpus_is_broad(corpus: list[Case], api_cfg: Config) -> None:
    pairs = [(c.id, e) for c in corpus for e in c.expect]
    assert len(corpus) >= 40 and len(pairs) >= 80
    assert len({c.id for c in corpus}) == len(corpus)
    kinds = Counter(c.kind for c in corpus)
    assert kinds["file"] >= 30 and kinds["request"] >= 15, kinds
    statuses = {e.status for c in corpus for e in c.expect.values()}
    assert {200, 400, 404, 413, 422} <= statuses
    codes = {e.code for c in corpus for e in c.expect.values() if e.code}
    assert codes == {"undecodable", "empty", "too_short", "too_long", "invalid_samples"}


def test_corpus_in_process(local_client: Any, corpus: list[Case]) -> None:
    t0 = time.perf_counter()
    rows, problems = run_corpus(local_client.post, corpus)
    assert_still_up(local_client.get, local_client.post)
    report(
        "bad-input-in-process",
        {
            "cases": len(corpus),
            "requests": len(rows),
            "passed": sum(r["ok"] for r in rows),
            "by_status": dict(Counter(r["status"] for r in rows)),
            "wall_s": round(time.perf_counter() - t0, 1),
            "rows": rows,
        },
    )
    assert not problems, "\n".join(problems)


def test_corpus_over_serve(serve_url: str, corpus: list[Case]) -> None:
    """The same answers through the Serve HTTP proxy and the ingress replica (the 50-MB cases stay local)."""
    cases = [c for c in corpus if not c.heavy]
    t0 = time.perf_counter()
    with httpx.Client(base_url=serve_url, timeout=httpx.Timeout(60.0)) as client:
        rows, problems = run_corpus(client.post, cases)
        assert_still_up(client.get, client.post)
    report(
        "bad-input-serve",
        {
            "cases": len(cases),
            "requests": len(rows),
            "passed": sum(r["ok"] for r in rows),
            "by_status": dict(Counter(r["status"] for r in rows)),
            "wall_s": round(time.perf_counter() - t0, 1),
            "rows": rows,
        },
    )
    assert not problems, "\n".join(problems)


def test_limits_follow_the_config(api_cfg: Config, local_backend: Any, client_for: Any) -> None:
    """The byte, file and seconds limits are the config's: tighter settings bite at the new values."""
    from serve.api import create_api
    from tests.serve.conftest import derive_config

    cfg = derive_config(
        api_cfg, serve={"limits": {"max_upload_bytes": 200_000, "max_files": 2, "max_seconds": 2.0}}
    )
    c = client_for(create_api(cfg, local_backend))
    corpus = build_corpus(cfg, SERVED)
    wanted = {"too-many-files", "over-size-limit", "declared-over-limit", "too-long"}
    cases = [x for x in corpus if x.id in wanted]
    assert len(cases) == 4 and "3 files" in next(x for x in cases if x.id == "too-many-files").what
    _, problems = run_corpus(c.post, cases)
    assert not problems, "\n".join(problems)
    # 2.5 s: fine for the session app, over this app's 2-s limit
    r = c.post(ENDPOINTS["multi"], files=[("files", ("x.wav", encode(tone(2.5, 8000), 8000, "WAV")))])
    assert r.json()["results"][0]["error"] == "too_long: 2.5 s is longer than the limit of 2 s"
    limits = c.get("/models").json()["limits"]
    assert limits == {"max_upload_bytes": 200_000, "max_files": 2, "max_seconds": 2.0}
