"""A bounded load generator (loopback only) and a memory sampler for the Serve processes.

:func:`run_load` keeps ``clients`` concurrent clients posting the same upload until ``duration_s`` has passed
(or ``max_requests`` were sent, or ``stop`` is set), every request with a client timeout, the whole run with a
hard deadline. :class:`MemorySampler` records the RSS of the Serve controller, HTTP proxy and every replica of
the application once a second.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx

from tests.reliability.conftest import find_descendants, percentile, rss_bytes


@dataclass
class Rec:
    """One request: start (s since the run began), latency, HTTP status (-1: client error), details."""

    t: float
    latency: float
    status: int
    detail: str = ""
    retry_after: str | None = None


def _check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise ValueError(f"load tests only go to the loopback interface, not {url}")


async def _load(
    url: str,
    path: str,
    files: list[tuple[str, tuple[str, bytes, str]]],
    clients: int,
    duration_s: float,
    timeout_s: float,
    max_requests: int,
    stop: threading.Event,
) -> list[Rec]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = t0 + duration_s
    recs: list[Rec] = []
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout_s), limits=limits) as c:

        async def client() -> None:
            nonlocal sent
            while loop.time() < deadline and not stop.is_set() and sent < max_requests:
                sent += 1
                start = loop.time()
                try:
                    r = await c.post(path, files=files)
                    detail = "" if r.status_code == 200 else r.text[:300]
                    recs.append(
                        Rec(
                            start - t0,
                            loop.time() - start,
                            r.status_code,
                            detail,
                            r.headers.get("retry-after"),
                        )
                    )
                except httpx.HTTPError as e:
                    recs.append(Rec(start - t0, loop.time() - start, -1, f"{type(e).__name__}: {e}"))

        await asyncio.wait_for(
            asyncio.gather(*(client() for _ in range(clients))), duration_s + timeout_s + 30
        )
    return recs


def run_load(
    url: str,
    files: list[tuple[str, tuple[str, bytes, str]]],
    *,
    clients: int,
    duration_s: float,
    path: str = "/analyze_files/multi_model",
    timeout_s: float = 60.0,
    max_requests: int = 100_000,
    stop: threading.Event | None = None,
) -> list[Rec]:
    """Run the load to completion in this thread (its own event loop)."""
    _check_loopback(url)
    return asyncio.run(
        _load(url, path, files, clients, duration_s, timeout_s, max_requests, stop or threading.Event())
    )


class LoadThread(threading.Thread):
    """:func:`run_load` in the background; ``stop()`` ends it early, ``join`` is bounded by the caller."""

    def __init__(self, url: str, files: list[tuple[str, tuple[str, bytes, str]]], **kw: Any) -> None:
        super().__init__(name="mpic-load", daemon=True)
        self.url, self.files, self.kw = url, files, kw
        self.stop_event = threading.Event()
        self.recs: list[Rec] = []
        self.error: BaseException | None = None
        self.t0 = time.monotonic()  # Rec.t is relative to (about) this moment

    def run(self) -> None:
        self.t0 = time.monotonic()
        try:
            self.recs = run_load(self.url, self.files, stop=self.stop_event, **self.kw)
        except BaseException as e:
            self.error = e

    def stop(self) -> None:
        self.stop_event.set()


def serve_pids(app: str = "mpic") -> dict[str, int]:
    """``{role: pid}`` of the Serve controller, HTTP proxy and every replica of ``app`` (descendants only)."""
    from tests.serve_state import replica_details

    out: dict[str, int] = {}
    for dep, replicas in replica_details(app).items():
        for i, r in enumerate(replicas):
            if r.get("pid") and r.get("state") == "RUNNING":
                out[f"{dep}#{i}"] = int(r["pid"])
    for marker, role in (("ServeController", "controller"), ("ProxyActor", "proxy")):
        for i, pid in enumerate(find_descendants(f"ray::{marker}")):
            out[f"{role}#{i}" if i else role] = pid
    return out


class MemorySampler(threading.Thread):
    """RSS of each Serve process every ``interval_s`` seconds: ``samples[role] = [(t, bytes), ...]``."""

    def __init__(self, pids: dict[str, int], interval_s: float = 1.0) -> None:
        super().__init__(name="mpic-rss", daemon=True)
        self.pids, self.interval_s = dict(pids), interval_s
        self.samples: dict[str, list[tuple[float, int]]] = {r: [] for r in self.pids}
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            t = time.monotonic() - self.t0
            for role, pid in self.pids.items():
                rss = rss_bytes(pid)
                if rss is not None:
                    self.samples[role].append((t, rss))
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def drift(self, warm_until: float, window_s: float) -> dict[str, dict[str, float]]:
        """Per process: mean RSS over ``[warm_until, warm_until + window_s]`` vs the last ``window_s``."""
        out = {}
        for role, s in self.samples.items():
            if not s:
                continue
            end = s[-1][0]
            base = [v for t, v in s if warm_until <= t <= warm_until + window_s] or [s[0][1]]
            last = [v for t, v in s if t >= end - window_s] or [s[-1][1]]
            b, f = sum(base) / len(base), sum(last) / len(last)
            out[role] = {
                "baseline_mb": round(b / 2**20, 1),
                "final_mb": round(f / 2**20, 1),
                "peak_mb": round(max(v for _, v in s) / 2**20, 1),
                "drift": round(f / b - 1, 4),
            }
        return out


def summarize(recs: list[Rec], wall_s: float) -> dict[str, Any]:
    """Counts, throughput and latency percentiles of a load run."""
    ok = [r.latency for r in recs if r.status == 200]
    statuses: dict[str, int] = {}
    for r in recs:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    return {
        "requests": len(recs),
        "statuses": statuses,
        "throughput_rps": round(len(ok) / wall_s, 2) if wall_s else 0.0,
        "p50_s": round(percentile(ok, 50), 3),
        "p95_s": round(percentile(ok, 95), 3),
        "p99_s": round(percentile(ok, 99), 3),
        "max_s": round(max((r.latency for r in recs), default=float("nan")), 3),
    }
