"""`ray job submit` against a real `ray start --head` with token authentication: train, fuse, tag (smoke).

What a user does (docs/deploy.md, "A local cluster"), command for command: start a head node from the
project's virtualenv with ``RAY_AUTH_MODE=token`` and a token in ``RAY_AUTH_TOKEN``; submit
``python -m ray_jobs.train --profile smoke --base-dir BASE`` and then ``ray_jobs.fuse`` with
``--working-dir`` the repository; wait until each is SUCCEEDED; the MLflow store under BASE then holds the
finished training and fusion runs, and the registry's champion alias names the fused ensemble; a
``ray_jobs.tag`` job then tags the smoke test excerpts with that champion (Ray Data, real checkpoints).

The cluster is this test's own: its temp dir (``--temp-dir`` and ``RAY_TMPDIR``, so no other ``ray.init()``
on the machine finds and joins it), its own ports, its own token. It is stopped by signalling only the
processes whose command line names that temp dir (and their children): ``ray stop`` would stop every Ray
on the machine.

Opt-in (minutes): ``MPIC_LIVE_TESTS=1 pytest -m live`` (``make test-live``; ``.ci/run`` runs it).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import procs
from ml.config import load_config

ROOT = Path(__file__).resolve().parents[2]
LIVE_ENV = "MPIC_LIVE_TESTS"
JOB_LIMIT_S = 600.0

pytestmark = [
    pytest.mark.live,
    pytest.mark.slow,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(
        not os.environ.get(LIVE_ENV), reason=f"starts its own Ray cluster (minutes): set {LIVE_ENV}=1"
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    address: str  # the dashboard (jobs API)
    env: dict[str, str]  # what a user's shell has: the venv activated, the token exported
    temp_dir: Path
    base: Path
    ray: str
    data: Path  # the smoke data set, relative to base

    def ray_cmd(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.ray, *args],
            env=env or self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _cluster_processes(temp_dir: Path) -> list[int]:
    """Pids of the cluster under ``temp_dir``: processes naming it on their command line, and descendants."""
    named = {pid for pid in procs.parents() if str(temp_dir) in procs.cmdline(pid)}
    # children of the raylet (workers, job drivers) whose command lines may not name it
    mine = named | set(procs.descendants(*named)) if named else set()
    mine.discard(os.getpid())
    return sorted(mine)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"  # a zombie has exited


def stop_cluster(temp_dir: Path, grace_s: float = 15.0) -> None:
    """`ray stop` for one cluster only: SIGTERM its processes, SIGKILL those left after ``grace_s``."""
    pids = _cluster_processes(temp_dir)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    time.sleep(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, smoke_data: Path) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("live-base")
    cfg = load_config(ROOT / "config.yml", "smoke", base_dir=base)
    # the smoke data set where the smoke profile looks for it below --base-dir (rendered once per session)
    Path(cfg.data.root).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.data.root).symlink_to(smoke_data, target_is_directory=True)

    temp_dir = Path(tempfile.mkdtemp(prefix="mpicjs-", dir="/tmp"))  # short: Ray's socket paths live below
    venv_bin = Path(sys.executable).parent
    ray = str(venv_bin / "ray")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"RAY_ADDRESS", "PYTHONPATH"} and not k.startswith("RAY_JOB")
    }
    env.update(
        # `source .venv/bin/activate`: the job's `python` is the venv's (else: No module named 'ray')
        PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv_bin.parent),
        RAY_TMPDIR=str(temp_dir),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(24),
        OMP_NUM_THREADS="1",
    )
    dash = free_port()
    start = [
        *("start", "--head", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}"),
        *(f"--port={free_port()}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1"),
        *(f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"),
        *(f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"),
        *(f"--metrics-export-port={free_port()}", "--num-cpus=4", "--num-gpus=0", "--disable-usage-stats"),
    ]
    c = Cluster(f"http://127.0.0.1:{dash}", env, temp_dir, base, ray, Path(cfg.data.root).relative_to(base))
    try:
        t0 = time.perf_counter()
        r = c.ray_cmd(*start, timeout=180)
        assert r.returncode == 0, f"ray start failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        print(f"ray start --head: {time.perf_counter() - t0:.0f} s")
        yield c
    finally:
        stop_cluster(temp_dir)
        left = [p for p in _cluster_processes(temp_dir) if _alive(p)]
        assert not left, f"processes of the test cluster outlived it: {left}"
        shutil.rmtree(temp_dir, ignore_errors=True)


def job_status(c: Cluster, sid: str) -> str:
    """The status `ray job status` prints: "Job 'ID' succeeded|failed|was stopped", else "...: RUNNING"."""
    r = c.ray_cmd("job", "status", "--address", c.address, sid)
    text = r.stdout + r.stderr
    for phrase, status in (("succeeded", "SUCCEEDED"), ("failed", "FAILED"), ("was stopped", "STOPPED")):
        if f"Job '{sid}' {phrase}" in text:
            return status
    m = re.search(rf"Status for job '{re.escape(sid)}': (\w+)", text)
    if m is None:
        raise AssertionError(f"unexpected `ray job status` output (rc={r.returncode}):\n{text[-2000:]}")
    return m.group(1)


def submit(c: Cluster, module: str, *args: str) -> tuple[str, float]:
    """`ray job submit` ``python -m <module> --profile smoke --base-dir BASE [args]``; wait until it ends."""
    sid = f"{module.split('.')[-1]}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    r = c.ray_cmd(
        *("job", "submit", "--address", c.address, "--working-dir", str(ROOT), "--submission-id", sid),
        *("--no-wait", "--", "python", "-m", module, "--profile", "smoke", "--base-dir", str(c.base)),
        *args,
    )
    assert r.returncode == 0, f"ray job submit failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    status = "PENDING"
    while time.perf_counter() - t0 < JOB_LIMIT_S:
        status = job_status(c, sid)
        if status in {"SUCCEEDED", "FAILED", "STOPPED"}:
            break
        time.sleep(3)
    wall = time.perf_counter() - t0
    if status != "SUCCEEDED":
        logs = c.ray_cmd("job", "logs", "--address", c.address, sid)
        c.ray_cmd("job", "stop", "--address", c.address, sid)
        pytest.fail(f"job {sid} ended {status} after {wall:.0f} s; log tail:\n{logs.stdout[-5000:]}")
    print(f"{module}: SUCCEEDED in {wall:.0f} s")
    return status, wall


def test_token_is_required(cluster: Cluster) -> None:
    without = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN"}
    without["RAY_AUTH_TOKEN"] = "not-the-token"
    r = cluster.ray_cmd("job", "list", "--address", cluster.address, env=without)
    assert r.returncode != 0, r.stdout
    ok = cluster.ray_cmd("job", "list", "--address", cluster.address)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_train_fuse_and_tag_jobs(cluster: Cluster) -> None:
    from ml import tracking
    from ml.ensemble import load_spec

    submit(cluster, "ray_jobs.train")
    submit(cluster, "ray_jobs.fuse")

    cfg = load_config(ROOT / "config.yml", "smoke", base_dir=cluster.base)
    client = tracking.client(cfg)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    assert exp is not None, f"no MLflow experiment {cfg.mlflow.experiment} under {cluster.base}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_kind: dict[str, list[str]] = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get(tracking.TAG_KIND, ""), []).append(r.info.status)
    assert by_kind.get(tracking.KIND_TRAIN_JOB) == ["FINISHED"], by_kind
    assert by_kind.get("fuse_job") == ["FINISHED"], by_kind
    n_folds = len(cfg.ensembles[cfg.ensemble]) * cfg.folds.k
    assert by_kind.get(tracking.KIND_FOLD, []).count("FINISHED") == n_folds, by_kind

    spec = load_spec(cfg)  # the champion alias
    assert spec.registered_model == tracking.spec_model_name(cfg) and spec.version
    mv = client.get_model_version_by_alias(spec.registered_model, cfg.mlflow.alias)
    assert int(mv.version) == int(spec.version)
    assert set(spec.members) == set(cfg.ensembles[cfg.ensemble])
    assert all(ref.registered_model and ref.version for ref in spec.members.values())

    # tag the test excerpts with the champion; relative paths are relative to --base-dir
    excerpts = cluster.data / "IRMAS-TestingData"
    submit(cluster, "ray_jobs.tag", "--input", str(excerpts), "--output", "tags.parquet")
    import pyarrow.parquet as pq

    rows = pq.read_table(cluster.base / "tags.parquet").to_pylist()
    expected = {str(p.resolve()) for p in (cluster.base / excerpts).rglob("*.wav")}
    assert {str(Path(r["file"]).resolve()) for r in rows} == expected and len(rows) == len(expected) > 0
    assert all(r["error"] is None for r in rows), rows
    assert {(r["ensemble"], r["version"]) for r in rows} == {(spec.registered_model, int(spec.version))}
