"""Fixtures of the reliability tests: the API fixtures of ``tests/serve`` plus process and load helpers.

The in-process app (``local_client``) and the session's Ray Serve deployment (``serve_url``) are the ones the
API tests use (imported from ``tests/serve/conftest.py``; a second ``serve_url`` set-up in the same session
redeploys the identical config, which Serve applies without restarting anything).

Long runs are opt-in: ``MPIC_LOAD_SECONDS=300`` (the load test), ``MPIC_LONG_FAULTS=1`` (more replica kills
and the Train-worker kill); see docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from bench import procs
from tests.serve.conftest import (  # noqa: F401  (fixtures, re-exported for this directory)
    api_cfg,
    audio_files,
    client_for,
    local_app,
    local_backend,
    local_client,
    serve_cfg,
    serve_url,
)

ROOT = Path(__file__).resolve().parents[2]
REPORT_DIR = ROOT / "test-artifacts" / "reliability"
LOAD_SECONDS_ENV = "MPIC_LOAD_SECONDS"
LONG_FAULTS_ENV = "MPIC_LONG_FAULTS"


def report(name: str, data: dict[str, Any]) -> Path:
    """Write a figure sheet to ``test-artifacts/reliability/<name>.json`` and print it (``pytest -s``)."""
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    path = REPORT_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"\n[{name}] {json.dumps(data, default=str)[:2000]}")
    return path


# ---- processes (Linux /proc; only descendants of this test process are ever looked at or signalled) ----


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process, None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def find_descendants(marker: str) -> list[int]:
    """Descendant pids whose command line contains ``marker`` (e.g. ``ray::ServeController``)."""
    return [pid for pid, cmd in procs.tree().items() if marker in cmd]


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.25) -> float:
    """Poll until ``predicate()`` is truthy; return the seconds it took (TimeoutError naming ``what``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if predicate():
            return time.monotonic() - t0
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not within {timeout_s:g} s")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


@pytest.fixture
def long_faults() -> bool:
    """Whether the long fault drills were asked for (``MPIC_LONG_FAULTS=1``)."""
    return os.environ.get(LONG_FAULTS_ENV, "") not in ("", "0")
