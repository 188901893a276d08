"""Inference benchmark: the limit of this hardware (in-process) against the product (Serve over HTTP).

* **Limit** — the configured ensemble scored in this process on pre-decoded, pre-framed windows
  (:meth:`ml.inference.Predictor.score_windows`, per member and all members one after the other as
  :class:`~ml.inference.EnsemblePredictor` does), in audio-seconds per wall second; plus, as an extra row,
  :meth:`EnsemblePredictor.predict` on WAV bytes (decode and resample included).
* **Product** — the same checkpoints served by the Serve application (:mod:`serve.app`) on a local Ray,
  loaded by N closed-loop HTTP clients (N = 1, 4, 16, 64) posting synthetic songs of 10 s and 60 s
  (44.1 kHz 16-bit stereo WAV) to ``/analyze_files/multi_model``: throughput, latency percentiles, errors,
  CPU seconds per Serve process, batch sizes and replica counts.
* **Ratio** — product throughput at saturation (the N with the highest throughput) ÷ fused limit, in the
  same run.

The ensemble is self-contained: k fold checkpoints per member with deterministic random weights are written
into the benchmark's work folder (speed does not depend on the weights); ``--trained`` uses the trained
checkpoints under ``runs_dir`` instead. Both measurements load exactly the same files with the normal
loaders. On a machine with CUDA the limit is also measured on the GPU (batch size tuned) and GPU utilisation
is sampled during the HTTP load.

Run: ``python -m bench.inference [--quick] [--trained] [--no-write]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench import common, procs
from ml.config import Config, apply_override

NAME = "inference"
ROUTE = "/analyze_files/multi_model"
SONG_RATE = 44100
SONG_SECONDS = (10.0, 60.0)
CLIENTS = (1, 4, 16, 64)
QUICK_SONG_SECONDS = (10.0,)
QUICK_CLIENTS = (1, 16)
GPU_BATCH_SIZES = (64, 128, 256, 512)
TARGET_CLIENTS = 16  # the ratio target (issue 14) is stated at this many clients
TARGET_RATIO = 0.9  # HTTP ÷ in-process throughput (issue 14)
TARGET_OVERHEAD_MS = 3.0  # Serve CPU per audio-second beyond the models' own (issue 14)


@dataclass(frozen=True)
class Plan:
    """How long each part runs (full or quick)."""

    limit_s: float  # per limit row
    song_seconds: tuple[float, ...]
    clients: tuple[int, ...]
    settle_min_s: float  # after raising N, at least this long before measuring …
    settle_max_s: float  # … and until every client finished a request, at most this long
    measure_s: float  # the measurement window of one point
    limit_again: bool  # re-measure the fused limit after the HTTP load (noise estimate)
    quick_limit: bool  # fewer limit rows


FULL = Plan(6.0, SONG_SECONDS, CLIENTS, 3.0, 45.0, 18.0, True, False)
QUICK = Plan(1.0, QUICK_SONG_SECONDS, QUICK_CLIENTS, 2.0, 6.0, 6.0, False, True)


# ---- synthetic songs -----------------------------------------------------------------------------------


def song(seconds: float, *, seed: int = 0, sample_rate: int = SONG_RATE) -> np.ndarray:
    """A deterministic music-like stereo signal (n, 2) float32 in [-1, 1].

    Chords of harmonic notes with attack/decay envelopes and vibrato, a bass line, a little noise and
    per-channel panning; a new chord every half to one and a half seconds.
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    out = np.zeros((n, 2), dtype=np.float64)
    pos = 0.0
    while pos < seconds:
        dur = float(rng.uniform(0.5, 1.5))
        a, b = round(pos * sample_rate), min(n, round((pos + dur) * sample_rate))
        if b <= a:
            break
        tt = t[a:b] - pos
        env = np.minimum(1.0, tt / 0.02) * np.exp(-tt * float(rng.uniform(0.5, 3.0)))
        root = 110.0 * 2 ** (int(rng.integers(0, 24)) / 12)
        for k, semis in enumerate((0, 4, 7, 12)[: int(rng.integers(2, 5))]):
            f0 = root * 2 ** (semis / 12)
            vib = 1 + 0.004 * np.sin(2 * np.pi * 5.5 * tt + k)
            note = sum(np.sin(2 * np.pi * h * f0 * vib * tt) / h**1.5 for h in range(1, 7))
            pan = float(rng.uniform(0.2, 0.8))
            out[a:b, 0] += env * note * pan
            out[a:b, 1] += env * note * (1 - pan)
        bass = np.sin(2 * np.pi * root / 2 * tt) * np.exp(-tt * 1.5)
        out[a:b] += 0.5 * bass[:, None]
        pos += dur
    out += 0.01 * rng.standard_normal(out.shape)
    out *= 0.5 / max(1e-9, float(np.max(np.abs(out))))
    return out.astype(np.float32)


def wav_bytes(wave: np.ndarray, sample_rate: int = SONG_RATE) -> bytes:
    """16-bit PCM WAV of a (n, channels) or (n,) float wave."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def multipart(name: str, data: bytes, content_type: str = "audio/wav") -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one ``files`` part, built once; ``(body, content_type)``."""
    boundary = uuid.UUID(int=zlib.crc32(data)).hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# ---- the benchmark's own ensemble ----------------------------------------------------------------------


def ensemble_members(cfg: Config) -> list[str]:
    """The members of the configured ensemble."""
    return list(cfg.ensembles[cfg.ensemble])


def write_random_checkpoints(cfg: Config, runs_dir: Path) -> dict[str, list[str]]:
    """k fold checkpoints per member with deterministic random weights: ``runs/<member>/fold<i>/model.pt``.

    No ensemble is registered: the benchmark loads them as the equal-weights spec of ``runs_dir``
    (:func:`ml.ensemble.load_spec` with ``"equal"``, i.e. ``version="equal"`` for Serve).
    """
    import torch

    from ml.checkpoint import MODEL_FILE, CheckpointMeta, save_classifier
    from ml.models import build_classifier

    if runs_dir.exists():
        shutil.rmtree(runs_dir)
    out: dict[str, list[str]] = {}
    for m in ensemble_members(cfg):
        out[m] = []
        for fold in range(cfg.folds.k):
            torch.manual_seed(zlib.crc32(f"{m}/fold{fold}".encode()))
            model = build_classifier(cfg, m).eval()
            path = runs_dir / m / f"fold{fold}" / MODEL_FILE
            save_classifier(path, model, CheckpointMeta(spec=model.spec(), member=m, fold=fold))
            out[m].append(str(path))
    return out


def with_runs_dir(cfg: Config, runs_dir: Path) -> Config:
    """``cfg`` with ``runs_dir`` pointing at ``runs_dir`` (what Serve and the loaders read)."""
    data = cfg.snapshot()
    apply_override(data, f"runs_dir={runs_dir.resolve()}")
    return Config.model_validate(data)


# ---- the limit: in-process, no HTTP, no Ray ------------------------------------------------------------


def _repeat(
    fn: Callable[[], Any], seconds: float, clock: Callable[[], float] = time.process_time
) -> tuple[int, float, float]:
    """Call ``fn`` (once to warm up) then until ``seconds`` have passed, at least once.

    Returns ``(calls, wall_s, cpu_s)``; ``cpu_s`` by ``clock`` (this process's CPU time, all threads).
    """
    fn()  # warm-up
    n, t0, c0 = 0, time.perf_counter(), clock()
    while n < 1 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n, time.perf_counter() - t0, clock() - c0


def audio_seconds_per_s(windows: int, hop_s: float, calls: int, wall_s: float) -> float:
    """Audio-seconds processed per wall second: ``windows × hop_s`` per call."""
    return windows * hop_s * calls / wall_s if wall_s > 0 else 0.0


def measure_limit(
    cfg: Config,
    *,
    device: str,
    seconds: float,
    threads: int | None = None,
    batch_size: int | None = None,
    members: bool = True,
    concurrent: bool = False,
    predict_song_s: float | None = None,
) -> dict[str, Any]:
    """Per-member and fused window throughput on ``device``; optionally predict() on WAV bytes.

    ``threads`` sets torch's intra-op threads (process-wide). Fused scoring runs the members one after the
    other (as :class:`EnsemblePredictor`), or with ``concurrent`` each member in its own Python thread at
    the same time (torch releases the GIL), the way Serve runs members in separate replicas; its fused rate
    is then the slowest member's.
    """
    import torch

    from ml.audio import resample
    from ml.ensemble import EQUAL, load_spec
    from ml.inference import load_ensemble

    if threads is not None:
        torch.set_num_threads(threads)
    ens = load_ensemble(cfg, load_spec(cfg, EQUAL), device=device)
    if batch_size is not None:
        for p in ens.predictors.values():
            p.batch_size = batch_size
    hop = ens.hop_s
    bs = next(iter(ens.predictors.values())).batch_size
    n_windows = bs  # one whole batch per call (score_windows cuts larger inputs into batch_size chunks)
    wave = song(n_windows * hop + ens.window_s, seed=1).mean(axis=1)
    windows: dict[str, Any] = {}
    for m, p in ens.predictors.items():
        _, w = p.windows_for(resample(wave, SONG_RATE, p.sample_rate))
        w = w[:n_windows]
        windows[m] = torch.from_numpy(w).to(device) if device != "cpu" else w
    active = [m for m in ens.predictors if ens.weights.get(m, 0.0) > 0]

    def sync() -> None:
        if device != "cpu":
            torch.cuda.synchronize()

    def one(m: str) -> Callable[[], None]:
        def call() -> None:
            ens.predictors[m].score_windows(windows[m])
            sync()

        return call

    rows: dict[str, Any] = {}
    if members:
        for m in ens.predictors:
            calls, wall, cpu = _repeat(one(m), seconds)
            rows[m] = {
                "audio_s_per_s": audio_seconds_per_s(n_windows, hop, calls, wall),
                "cpu_s_per_audio_s": cpu / (n_windows * hop * calls),
                "calls": calls,
            }

    if concurrent:
        counts: dict[str, tuple[int, float, float]] = {}

        def worker(m: str) -> None:
            counts[m] = _repeat(one(m), seconds, clock=time.thread_time)

        workers = [threading.Thread(target=worker, args=(m,)) for m in active]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        rates = {m: audio_seconds_per_s(n_windows, hop, c, w) for m, (c, w, _) in counts.items()}
        fused_row: dict[str, Any] = {
            "audio_s_per_s": min(rates.values()),
            "cpu_s_per_audio_s": sum(cpu / (n_windows * hop * c) for c, _, cpu in counts.values()),
            "members_concurrent": rates,
        }
    else:

        def fused() -> None:
            for m in active:
                ens.predictors[m].score_windows(windows[m])
            sync()

        calls, wall, cpu = _repeat(fused, seconds)
        fused_row = {
            "audio_s_per_s": audio_seconds_per_s(n_windows, hop, calls, wall),
            "cpu_s_per_audio_s": cpu / (n_windows * hop * calls),
            "calls": calls,
        }
    out: dict[str, Any] = {
        "device": device,
        "settings": {"threads": threads, "batch_size": batch_size, "concurrent": concurrent},
        "torch_threads": torch.get_num_threads(),
        "concurrent_members": concurrent,
        "batch_size": bs,
        "windows_per_call": n_windows,
        "members": rows,
        "fused": fused_row,
    }
    if predict_song_s:
        secs = predict_song_s
        data = wav_bytes(song(secs, seed=2))
        calls, wall, cpu = _repeat(lambda: ens.predict([("song.wav", data)]), seconds)
        out["predict_wav"] = {
            "song_s": secs,
            "audio_s_per_s": secs * calls / wall,
            "cpu_s_per_audio_s": cpu / (secs * calls),
            "calls": calls,
        }
    return out


def limit_section(cfg: Config, plan: Plan) -> dict[str, Any]:
    """The limit on CPU and, when CUDA exists, on the GPU (batch size tuned).

    CPU, three ways: members one after the other with as many torch threads as usable cores (what
    ``EnsemblePredictor`` does by default), the same with one thread, and members concurrently with one
    thread each. The *limit* is the best fused figure of the three (an upper bound the product can be held
    to: on a busy machine torch's multi-threaded kernels can lose a lot to oversubscription).
    """
    import torch

    cores = common.usable_cores()
    default_threads = torch.get_num_threads()
    seq_threads = sorted({cores, 1}, reverse=True)
    out: dict[str, Any] = {"usable_cores": cores, "torch_threads": cores, "cpu": None, "gpu": None}
    song_s = None if plan.quick_limit else max(plan.song_seconds)  # quick: no predict() row
    out["cpu"] = measure_limit(
        cfg,
        device="cpu",
        seconds=plan.limit_s,
        threads=cores,
        members=not plan.quick_limit,
        predict_song_s=song_s,
    )
    variants = {f"sequential, {cores} threads": out["cpu"]}
    for t in seq_threads[1:] if not plan.quick_limit else []:
        variants[f"sequential, {t} thread"] = measure_limit(
            cfg, device="cpu", seconds=plan.limit_s, threads=t, members=not plan.quick_limit
        )
    if cores > 1 and len([m for m in ensemble_members(cfg)]) > 1:
        variants["concurrent members, 1 thread each"] = measure_limit(
            cfg, device="cpu", seconds=plan.limit_s, threads=1, members=False, concurrent=True
        )
    out["cpu_variants"] = variants
    best = max(variants, key=lambda k: variants[k]["fused"]["audio_s_per_s"])
    out["best_cpu"] = best
    out["fused_cpu"] = variants[best]["fused"]["audio_s_per_s"]
    torch.set_num_threads(default_threads)
    if torch.cuda.is_available():
        tuned = []
        for bs in GPU_BATCH_SIZES:
            r = measure_limit(cfg, device="cuda", seconds=plan.limit_s, batch_size=bs, members=False)
            tuned.append({"batch_size": bs, "fused_audio_s_per_s": r["fused"]["audio_s_per_s"]})
        best_bs = max(tuned, key=lambda r: r["fused_audio_s_per_s"])["batch_size"]
        gpu = measure_limit(
            cfg, device="cuda", seconds=plan.limit_s, batch_size=best_bs, predict_song_s=song_s
        )
        out["gpu"] = {**gpu, "batch_sweep": tuned, "name": torch.cuda.get_device_name(0)}
    return out


# ---- the product: Serve over HTTP ----------------------------------------------------------------------


@dataclass
class Rec:
    """One request: start and end (s, on the load's clock), HTTP status (-1: client error), audio seconds."""

    start: float
    end: float
    status: int
    audio_s: float
    error: str = ""


def summarize_window(recs: Sequence[Rec], t0: float, t1: float) -> dict[str, Any]:
    """Requests that finished inside ``[t0, t1)``: throughput (audio-s/s of 200s), latency, errors."""
    done = [r for r in recs if t0 <= r.end < t1]
    ok = [r for r in done if r.status == 200]
    errors: dict[str, int] = {}
    for r in done:
        if r.status != 200:
            errors[str(r.status)] = errors.get(str(r.status), 0) + 1
    wall = t1 - t0
    lat = common.percentiles([r.end - r.start for r in ok])
    return {
        "wall_s": wall,
        "requests": len(done),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_statuses": errors,
        "error_examples": sorted({r.error for r in done if r.error})[:3],
        "throughput_audio_s_per_s": sum(r.audio_s for r in ok) / wall if wall > 0 else 0.0,
        "requests_per_s": len(ok) / wall if wall > 0 else 0.0,
        "latency_s": lat,
    }


CLIENT_ROLE = "client (this process)"


def serve_cpu_cost(point: dict[str, Any]) -> float | None:
    """CPU seconds the Serve processes (all but the load generator) spent per audio-second served."""
    tput = point.get("throughput_audio_s_per_s") or 0.0
    cores = sum(v for k, v in (point.get("cpu_cores") or {}).items() if k != CLIENT_ROLE)
    return cores / tput if tput > 0 and cores > 0 else None


def cpu_ms_per_audio_s(point: dict[str, Any]) -> dict[str, float]:
    """CPU milliseconds per audio-second served, per process role (ingress, each member, proxy, …)."""
    tput = point.get("throughput_audio_s_per_s") or 0.0
    if tput <= 0:
        return {}
    return {k: round(1000 * v / tput, 2) for k, v in (point.get("cpu_cores") or {}).items()}


def saturation(points: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The point with the highest throughput."""
    return max(points, key=lambda p: p["throughput_audio_s_per_s"], default=None)


def ratio(product_audio_s_per_s: float, limit_audio_s_per_s: float) -> float | None:
    """Product ÷ limit (None without a limit)."""
    return product_audio_s_per_s / limit_audio_s_per_s if limit_audio_s_per_s > 0 else None


# -- process CPU accounting (this process's descendants: the Ray started here) --


def _role(cmd: str) -> str:
    """The Serve role of a process from its command line (a replica by its deployment's name)."""
    if "ray::ServeReplica:" in cmd:
        return cmd.split("ray::ServeReplica:", 1)[1].split()[0].split(":")[-1].split(".")[0]
    for marker, role in (("ray::ProxyActor", "proxy"), ("ray::ServeController", "controller")):
        if marker in cmd:
            return role
    return "ray (other)"


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """``{pid: (role, cpu seconds)}`` of this process (role ``client``) and its descendants."""
    out: dict[int, tuple[str, float]] = {}
    me = procs.cpu_seconds(os.getpid())
    if me is not None:
        out[os.getpid()] = (CLIENT_ROLE, me)
    for pid, cmd in procs.tree().items():
        cpu = procs.cpu_seconds(pid)
        if cpu is not None:
            out[pid] = (_role(cmd), cpu)
    return out


def cpu_by_role(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], wall: float
) -> dict:
    """Cores used per role between two snapshots (CPU seconds ÷ wall seconds)."""
    out: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        prev = before.get(pid, (role, 0.0))[1]
        out[role] = out.get(role, 0.0) + max(0.0, cpu - prev)
    return {r: round(v / wall, 3) for r, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0.005 * wall}


class GpuSampler(threading.Thread):
    """GPU utilisation (%) once a second (``nvidia-smi`` or ``torch.cuda.utilization``); idle without GPUs."""

    def __init__(self) -> None:
        super().__init__(name="gpu-util", daemon=True)
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()
        import torch

        self.enabled = torch.cuda.is_available()

    @staticmethod
    def read() -> float | None:
        """Mean utilisation over the visible GPUs now, None when unknown."""
        if shutil.which("nvidia-smi"):
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                vals = [float(v) for v in out.split()]
                return sum(vals) / len(vals) if vals else None
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
        try:
            import torch

            return float(torch.cuda.utilization())
        except Exception:
            return None

    def run(self) -> None:
        while self.enabled and not self._halt.is_set():
            v = self.read()
            if v is not None:
                self.samples.append((time.monotonic(), v))
            self._halt.wait(1.0)

    def mean(self, t0: float, t1: float) -> float | None:
        """Mean utilisation between two ``time.monotonic()`` instants."""
        vals = [v for t, v in self.samples if t0 <= t < t1]
        return sum(vals) / len(vals) if vals else None

    def stop(self) -> None:
        self._halt.set()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A local Ray with the Serve application of ``cfg`` on a free port (shut down on exit)."""

    def __init__(self, cfg: Config) -> None:
        """Remember the config; :meth:`start` starts Ray and deploys."""
        self.cfg = cfg
        self.url = ""
        self.serve_config: dict[str, Any] = {}
        self.startup_s = 0.0

    def start(self) -> str:
        """Start Ray (usable cores, GPUs only when CUDA exists), deploy, wait for /healthz."""
        import httpx
        import ray
        import torch
        from ray import serve

        from serve.app import AppArgs, deploy, serve_config

        t0 = time.perf_counter()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        with self.cfg.ray.local_environment():  # as `mpic serve` starts a local Ray
            ray.init(
                address="local",
                num_cpus=int(common.machine_info()["usable_cores"] or 1),
                num_gpus=torch.cuda.device_count(),
                include_dashboard=False,
                log_to_driver=False,
            )
        port = free_port()
        http = {
            "host": "127.0.0.1",
            "port": port,
            "request_timeout_s": self.cfg.serve.limits.request_timeout_s + 10,
        }
        serve.start(http_options=http)
        self.serve_config = serve_config(
            AppArgs(config_data=self.cfg.snapshot(), version="equal"), http_options=http
        )
        deploy(self.serve_config, timeout_s=300)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                r = httpx.get(f"{self.url}/healthz", timeout=15)
                if r.status_code == 200 and r.json().get("ok"):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}/healthz not ok")
            time.sleep(0.5)
        self.startup_s = time.perf_counter() - t0
        return self.url

    def replicas(self) -> dict[str, int]:
        """Running replicas per deployment."""
        from ray import serve

        from serve.app import APP_NAME

        app = serve.status().applications.get(APP_NAME)
        if app is None:
            return {}
        # replica_states counts replicas per ReplicaState (a str enum)
        return {
            d: sum(n for state, n in s.replica_states.items() if state == "RUNNING")
            for d, s in app.deployments.items()
        }

    def member_info(self) -> dict[str, Any]:
        """``/healthz`` member info (one replica each): batches, items, threads, device."""
        import httpx

        try:
            return dict(httpx.get(f"{self.url}/healthz", timeout=30).json().get("members", {}))
        except (httpx.HTTPError, ValueError):
            return {}

    def stop(self) -> None:
        """Shut Serve and this Ray down (only the instance started here)."""
        import ray
        from ray import serve

        with contextlib.suppress(Exception):
            serve.shutdown()
        with contextlib.suppress(Exception):
            ray.shutdown()


@dataclass
class LoadState:
    """Clients of one closed-loop load (shared by the client tasks and the controller)."""

    recs: list[Rec] = field(default_factory=list)
    done_by: dict[int, int] = field(default_factory=dict)  # client → requests finished
    stop: bool = False


async def ramp(
    url: str,
    body: bytes,
    content_type: str,
    audio_s: float,
    clients: Sequence[int],
    plan: Plan,
    *,
    on_point: Callable[[int, str, float, float], None] | None = None,
    timeout_s: float = 300.0,
) -> tuple[list[Rec], list[tuple[int, float, float]]]:
    """Closed-loop clients raised step by step to each N in ``clients``; ``(records, [(N, t0, t1)])``.

    After each raise the load settles (at least ``settle_min_s``, until every client has finished a
    request, at most ``settle_max_s``), then a ``measure_s`` window is recorded. The clients keep running
    between points, so no drain is needed until the end. ``on_point(N, phase, t0, t1)`` is called with
    phase ``"start"`` (t0 = window start) and ``"end"``.
    """
    import httpx

    loop = asyncio.get_running_loop()
    state = LoadState()
    windows: list[tuple[int, float, float]] = []
    limits = httpx.Limits(max_connections=max(clients) + 4, max_keepalive_connections=max(clients) + 4)
    headers = {"content-type": content_type}
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout_s), limits=limits) as c:

        async def client(i: int) -> None:
            while not state.stop:
                start = loop.time()
                try:
                    r = await c.post(ROUTE, content=body, headers=headers)
                    err = "" if r.status_code == 200 else f"{r.status_code}: {r.text[:200]}"
                    state.recs.append(Rec(start, loop.time(), r.status_code, audio_s, err))
                except httpx.HTTPError as e:
                    state.recs.append(Rec(start, loop.time(), -1, audio_s, f"{type(e).__name__}: {e}"))
                state.done_by[i] = state.done_by.get(i, 0) + 1

        tasks: list[asyncio.Task[None]] = []
        try:
            for n in clients:
                base = {i: state.done_by.get(i, 0) for i in range(n)}
                raised = loop.time()
                while len(tasks) < n:
                    tasks.append(asyncio.create_task(client(len(tasks))))
                while True:
                    await asyncio.sleep(0.1)
                    waited = loop.time() - raised
                    settled = all(state.done_by.get(i, 0) > base[i] for i in range(n))
                    if waited >= plan.settle_max_s or (settled and waited >= plan.settle_min_s):
                        break
                t0 = loop.time()
                if on_point:
                    on_point(n, "start", t0, t0)
                await asyncio.sleep(plan.measure_s)
                t1 = loop.time()
                windows.append((n, t0, t1))
                if on_point:
                    on_point(n, "end", t0, t1)
        finally:
            state.stop = True
            _, pending = await asyncio.wait(tasks, timeout=timeout_s) if tasks else (set(), set())
            for t in pending:
                t.cancel()
    return state.recs, windows


def product_section(cfg: Config, plan: Plan) -> dict[str, Any]:
    """Deploy, warm up, load with each song length and N; per-point throughput, latency and resources."""
    server = Server(cfg)
    gpu = GpuSampler()
    try:
        server.start()
        gpu.start()
        out: dict[str, Any] = {
            "url_port": server.url.rsplit(":", 1)[1],
            "startup_s": server.startup_s,
            "serve_config": server.serve_config,
            "serve": cfg.serve.model_dump(mode="json"),
            "points": [],
        }
        for secs in plan.song_seconds:
            data = wav_bytes(song(secs, seed=int(secs)))
            body, ctype = multipart(f"song{secs:g}s.wav", data)
            # Warm-up: a few requests one after the other (first-call costs, connection set-up).
            import httpx

            for _ in range(2):
                httpx.post(f"{server.url}{ROUTE}", content=body, headers={"content-type": ctype}, timeout=300)
            marks: dict[int, dict[str, Any]] = {}

            def on_point(n: int, phase: str, t0: float, t1: float, marks: dict[int, Any] = marks) -> None:
                if phase == "start":
                    marks[n] = {"cpu": cpu_snapshot(), "info": server.member_info(), "mono": time.monotonic()}
                else:
                    m = marks[n]
                    wall = time.monotonic() - m["mono"]
                    m["cpu_cores"] = cpu_by_role(m.pop("cpu"), cpu_snapshot(), wall)
                    m["info_after"] = server.member_info()
                    m["replicas"] = server.replicas()
                    m["gpu_util"] = gpu.mean(m["mono"], time.monotonic())

            recs, windows = asyncio.run(
                ramp(server.url, body, ctype, secs, plan.clients, plan, on_point=on_point)
            )
            for n, t0, t1 in windows:
                point = {"song_s": secs, "clients": n, **summarize_window(recs, t0, t1)}
                m = marks.get(n, {})
                point["cpu_cores"] = m.get("cpu_cores", {})
                point["serve_cpu_s_per_audio_s"] = serve_cpu_cost(point)
                point["cpu_ms_per_audio_s"] = cpu_ms_per_audio_s(point)
                point["replicas"] = m.get("replicas", {})
                point["gpu_util_percent"] = m.get("gpu_util")
                point["batching"] = _batching(m.get("info", {}), m.get("info_after", {}))
                out["points"].append(point)
                print(
                    f"  song {secs:g} s, N={n}: {point['throughput_audio_s_per_s']:.1f} audio-s/s, "
                    f"p50 {point['latency_s']['p50'] or float('nan'):.2f} s, errors {point['errors']}, "
                    f"cores {point['cpu_cores']}",
                    flush=True,
                )
        out["member_info"] = server.member_info()
        out["replicas"] = server.replicas()
        return out
    finally:
        gpu.stop()
        server.stop()


def _batching(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per member: forward passes and songs per pass during a point (from ``/healthz`` counters)."""
    out = {}
    for m, a in after.items():
        b = before.get(m, {})
        if b.get("pid") != a.get("pid"):
            continue
        batches = int(a.get("batches", 0)) - int(b.get("batches", 0))
        items = int(a.get("items", 0)) - int(b.get("items", 0))
        out[m] = {
            "batches": batches,
            "songs_per_batch": round(items / batches, 2) if batches else None,
            "num_threads": a.get("num_threads"),
            "device": a.get("device"),
        }
    return out


# ---- report --------------------------------------------------------------------------------------------


def compute_ratio(result: dict[str, Any]) -> dict[str, Any]:
    """Saturation per song length and overall, and product ÷ fused limit (CPU, or GPU when served on one)."""
    limit = result["limit"]
    served_gpu = any(
        (b or {}).get("device", "").startswith("cuda")
        for p in result["product"]["points"]
        for b in p.get("batching", {}).values()
    )
    if served_gpu and limit.get("gpu"):
        gpu = limit["gpu"]
        device, how, fused = "cuda", f"batch {gpu['batch_size']}", [gpu["fused"]["audio_s_per_s"]]
    else:
        device, how, fused = "cpu", limit["best_cpu"], [limit["fused_cpu"]]
        if limit.get("fused_after"):
            fused.append(limit["fused_after"]["audio_s_per_s"])
    fused_limit = sum(fused) / len(fused)
    per_length = {}
    for secs in sorted({p["song_s"] for p in result["product"]["points"]}):
        sat = saturation([p for p in result["product"]["points"] if p["song_s"] == secs])
        if sat is not None:
            per_length[f"{secs:g}"] = {
                "clients": sat["clients"],
                "throughput_audio_s_per_s": sat["throughput_audio_s_per_s"],
                "ratio": ratio(sat["throughput_audio_s_per_s"], fused_limit),
            }
    best = saturation(result["product"]["points"])
    # CPU cost: in-process the cheapest way per fused audio-second, vs the Serve processes at saturation.
    costs = [
        v["fused"].get("cpu_s_per_audio_s")
        for v in (limit.get("cpu_variants") or {}).values()
        if v["fused"].get("cpu_s_per_audio_s")
    ]
    limit_cost = min(costs) if costs and device == "cpu" else None
    serve_cost = best.get("serve_cpu_s_per_audio_s") if best else None
    # The serving overhead: Serve's CPU per audio-second beyond what the models cost in-process (on a GPU
    # the models' CPU share is small, so there all of Serve's CPU counts).
    overhead = None
    if serve_cost is not None:
        overhead = serve_cost - limit_cost if limit_cost is not None else serve_cost
    at16 = [p for p in result["product"]["points"] if p["clients"] == TARGET_CLIENTS]
    best16 = max(at16, key=lambda p: p["throughput_audio_s_per_s"], default=None)
    return {
        "serve_overhead_cpu_s_per_audio_s": overhead,
        "clients_target": TARGET_CLIENTS,
        "ratio_at_target_clients": ratio(best16["throughput_audio_s_per_s"], fused_limit) if best16 else None,
        "p99_at_target_clients": best16["latency_s"]["p99"] if best16 else None,
        "limit_cpu_s_per_audio_s": limit_cost,
        "serve_cpu_s_per_audio_s": serve_cost,
        "cpu_cost_ratio": limit_cost / serve_cost if limit_cost and serve_cost else None,
        "limit_device": device,
        "limit_how": how,
        "fused_limit_audio_s_per_s": fused_limit,
        "per_song_length": per_length,
        "song_s": best["song_s"] if best else None,
        "clients": best["clients"] if best else None,
        "product_audio_s_per_s": best["throughput_audio_s_per_s"] if best else None,
        "ratio": ratio(best["throughput_audio_s_per_s"], fused_limit) if best else None,
        "target": TARGET_RATIO,
    }


def headline_text(result: dict[str, Any]) -> str:
    """The sentence docs/benchmarks.md and the README quote."""
    r = result["ratio"]
    if r.get("ratio") is None:
        return "no product measurement"
    cost = f", CPU-cost ratio {r['cpu_cost_ratio']:.2f}" if r.get("cpu_cost_ratio") else ""
    return (
        f"Serve over HTTP ÷ in-process limit at saturation = **{r['ratio']:.2f}** "
        f"({r['product_audio_s_per_s']:.1f} ÷ {r['fused_limit_audio_s_per_s']:.1f} audio-s/s, "
        f"{r['song_s']:g}-s songs, {r['clients']} clients{cost}; target ≥ {r['target']})"
    )


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def render_markdown(result: dict[str, Any], *, figures: dict[str, str] | None = None) -> str:
    """The "## Inference" report fragment from a result dict (no I/O)."""
    lim, prod, rat = result["limit"], result["product"], result["ratio"]
    m = result.get("machine", {})
    cores = m.get("usable_cores")
    lines = [
        "## Inference",
        "",
        "What the serving path delivers compared with what the models alone can do on this machine.",
        "",
        f"- **Ensemble**: `{result['ensemble']}` = {', '.join(f'`{x}`' for x in result['members'])}, "
        f"{result['folds']} fold models each, window {result['window_s']:g} s, hop {result['hop_s']:g} s. "
        + (
            "Trained checkpoints."
            if result.get("trained")
            else "Fold checkpoints with deterministic random weights written by the benchmark (speed "
            "does not depend on the weights)."
        )
        + " The limit and the product load exactly the same checkpoint files.",
        "- **Limit**: in-process, no HTTP, no Ray: pre-decoded, pre-framed windows "
        f"({lim['cpu']['windows_per_call']} per call, batches of {lim['cpu']['batch_size']}) through "
        "`Predictor.score_windows`, per member and *fused* (all members on the same windows), "
        "audio-seconds per wall second = windows × hop ÷ wall time. Fused three ways: members one after "
        f"the other as `EnsemblePredictor` does, with {lim['torch_threads']} torch threads (the usable "
        "cores) and with 1; and members concurrently in threads with 1 torch thread each (as Serve runs "
        "them, one replica per member). **The limit is the best of these.** Extra row: "
        "`EnsemblePredictor.predict` on a WAV (decode and resample included).",
        f"- **Product**: the Serve application (`serve.app`) on a local Ray with {cores} CPUs, "
        f"N closed-loop HTTP clients posting the same synthetic song (44.1 kHz 16-bit stereo WAV) to "
        f"`{ROUTE}`; after each raise of N the load settles, then a {result['plan']['measure_s']:g}-s "
        "window is measured: throughput = audio-seconds of successful responses finished in the window ÷ "
        "window; latency percentiles of those responses.",
        f"- **Serve config**: member replicas `num_cpus` {prod['serve']['num_cpus']}, ingress "
        f"`num_cpus` {prod['serve'].get('ingress_num_cpus')}, `max_batch_size` "
        f"{prod['serve']['max_batch_size']}, `batch_wait_timeout_s` {prod['serve']['batch_wait_timeout_s']}, "
        f"autoscaling {json.dumps(prod['serve']['autoscaling'])}; replicas at the end: "
        f"{json.dumps(prod.get('replicas', {}))}.",
    ]
    if cores is not None and cores <= 4:
        lines.append(
            f"- **Caveat**: only {cores} cores: the HTTP proxy, the ingress (decode, resample, framing, "
            "JSON), the member replicas and the load generator itself all share them with the models, "
            "and other work on the machine adds noise."
        )
    load0, load1 = m.get("load_average_at_start"), result.get("load_average_at_end")
    if load0 and load1:
        lines.append(
            f"- **Machine load** (1-min load average) at the start {load0[0]:.1f}, at the end {load1[0]:.1f} "
            f"on {cores} cores: other work shared the CPUs; the CPU-cost ratio below is the steadier figure."
        )
    variants = lim.get("cpu_variants") or {}
    multi = [v for k, v in variants.items() if not k.endswith("1 thread") and not v.get("concurrent_members")]
    single = [v for k, v in variants.items() if k.endswith("1 thread")]
    if multi and single and multi[0]["fused"]["audio_s_per_s"] < 0.7 * single[0]["fused"]["audio_s_per_s"]:
        lines.append(
            f"- **Threads**: {multi[0]['torch_threads']} torch threads scored far slower than 1 here — "
            "multi-threaded kernels stall when other processes hold the cores (oversubscription); Serve's "
            "member replicas run 1 thread each."
        )
    if result.get("quick"):
        lines.append("- **Quick run**: short windows, fewer points; the figures are noisy.")
    lines += ["", "### Limit (in-process)", ""]
    rows: list[list[Any]] = []
    variants = lim.get("cpu_variants") or {"default": lim["cpu"]}
    for how, d in variants.items():
        for name, r in d["members"].items():
            rows.append([name, how, d["device"], d["batch_size"], _fmt(r["audio_s_per_s"], 1)])
    for how, d in variants.items():
        v = _fmt(d["fused"]["audio_s_per_s"], 1)
        best = how == lim.get("best_cpu")
        rows.append(
            ["**fused**" if best else "fused", how, d["device"], d["batch_size"], f"**{v}**" if best else v]
        )
    if lim.get("fused_after"):
        rows.append(
            [
                "fused, again after the HTTP load",
                lim.get("best_cpu"),
                "cpu",
                lim["cpu"]["batch_size"],
                _fmt(lim["fused_after"]["audio_s_per_s"], 1),
            ]
        )
    for d in (lim["cpu"], lim.get("gpu")):
        if d and d.get("predict_wav"):
            rows.append(
                [
                    f"`EnsemblePredictor.predict`, {d['predict_wav']['song_s']:g}-s WAV",
                    f"{d['torch_threads']} threads" if d["device"] == "cpu" else "",
                    d["device"],
                    d["batch_size"],
                    _fmt(d["predict_wav"]["audio_s_per_s"], 1),
                ]
            )
    gpu = lim.get("gpu")
    if gpu:
        for name, r in gpu["members"].items():
            rows.append([name, gpu.get("name", ""), "cuda", gpu["batch_size"], _fmt(r["audio_s_per_s"], 1)])
        g = _fmt(gpu["fused"]["audio_s_per_s"], 1)
        rows.append(["fused", gpu.get("name", ""), "cuda", gpu["batch_size"], g])
    lines.append(common.md_table(["model", "how", "device", "batch", "audio-s/s"], rows))
    if not lim.get("gpu"):
        lines += [
            "",
            "No GPU on this machine: the GPU rows (batch size sweep, utilisation) are not measured.",
        ]
    lines += ["", "### Product (Serve over HTTP)", ""]
    prow = []
    for p in prod["points"]:
        lat = p["latency_s"]
        cores_used = p.get("cpu_cores", {})
        prow.append(
            [
                f"{p['song_s']:g}",
                p["clients"],
                _fmt(p["throughput_audio_s_per_s"], 1),
                _fmt(p["requests_per_s"], 2),
                _fmt(lat["p50"]),
                _fmt(lat["p95"]),
                _fmt(lat["p99"]),
                p["errors"],
                ", ".join(
                    f"{k} {v}"
                    for k, v in (p.get("batching") or {}).items()
                    if isinstance(v, dict)
                    for v in [v.get("songs_per_batch")]
                )
                or "—",
                _fmt(sum(cores_used.values()), 2) if cores_used else "—",
                _fmt(1000 * p["serve_cpu_s_per_audio_s"], 1) if p.get("serve_cpu_s_per_audio_s") else "—",
            ]
        )
    lines.append(
        common.md_table(
            [
                "song s",
                "N",
                "audio-s/s",
                "req/s",
                "p50 s",
                "p95 s",
                "p99 s",
                "errors",
                "songs/batch",
                "cores busy",
                "Serve CPU ms per audio-s",
            ],
            prow,
        )
    )
    if rat.get("ratio") is not None:
        per = "; ".join(
            f"{k} s songs: {v['throughput_audio_s_per_s']:.1f} audio-s/s at N={v['clients']} "
            f"(ratio {v['ratio']:.2f})"
            for k, v in rat["per_song_length"].items()
        )
        lines += [
            "",
            f"**Ratio at saturation: {rat['ratio']:.2f}** "
            f"(product {rat['product_audio_s_per_s']:.1f} audio-s/s "
            f"with {rat['song_s']:g}-s songs at N={rat['clients']} ÷ fused limit "
            f"{rat['fused_limit_audio_s_per_s']:.1f} audio-s/s, {rat['limit_device']}, {rat['limit_how']}"
            + (", mean of before and after the HTTP load" if lim.get("fused_after") else "")
            + "; "
            f"target ≥ {rat['target']}). "
            f"Per song length: {per}.",
        ]
    if rat.get("ratio_at_target_clients") is not None:
        lines += [
            "",
            f"At N={rat['clients_target']}: ratio **{rat['ratio_at_target_clients']:.2f}** "
            f"(target ≥ {TARGET_RATIO:g}), p99 {rat['p99_at_target_clients']:.2f} s.",
        ]
    if rat.get("serve_overhead_cpu_s_per_audio_s") is not None:
        lines += [
            "",
            f"Serving overhead (Serve CPU per audio-second beyond the models' in-process cost): "
            f"**{1000 * rat['serve_overhead_cpu_s_per_audio_s']:.1f} ms** (target ≤ {TARGET_OVERHEAD_MS:g}).",
        ]
    if rat.get("cpu_cost_ratio") is not None:
        lines += [
            "",
            "On a shared machine wall-clock throughput moves with whatever else runs; CPU time does not. "
            f"In-process the cheapest fused scoring costs {1000 * rat['limit_cpu_s_per_audio_s']:.1f} ms of "
            f"CPU per audio-second; the Serve processes spent {1000 * rat['serve_cpu_s_per_audio_s']:.1f} ms "
            f"at saturation: **CPU-cost ratio {rat['cpu_cost_ratio']:.2f}** (limit cost ÷ product cost; "
            "1.0 = no serving overhead).",
        ]
    sat = saturation(prod["points"])
    if sat and sat.get("cpu_cores"):
        tput = sat["throughput_audio_s_per_s"] or 0.0
        parts = ", ".join(
            f"{k} {v:.2f} cores" + (f" ({1000 * v / tput:.1f} ms/audio-s)" if tput > 0 else "")
            for k, v in sat["cpu_cores"].items()
        )
        lines += [
            "",
            f"Where the CPU went at saturation ({sat['song_s']:g}-s songs, N={sat['clients']}): {parts}.",
        ]
    gpu_vals = [p.get("gpu_util_percent") for p in prod["points"] if p.get("gpu_util_percent") is not None]
    if gpu_vals:
        lines += ["", f"GPU utilisation during the HTTP load: mean {np.mean(gpu_vals):.0f} %."]
    for note in result.get("notes", []):
        lines += ["", note]
    for caption, link in (figures or {}).items():
        lines += ["", f"![{caption}]({link})"]
    return "\n".join(lines)


def plot(result: dict[str, Any], *, suffix: str = "") -> dict[str, str]:
    """Throughput vs N (limit as a line) and latency percentiles vs N; ``{caption: link}``."""
    plt = common.pyplot()
    pts = result["product"]["points"]
    lengths = sorted({p["song_s"] for p in pts})
    figs: dict[str, str] = {}
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for secs in lengths:
        ps = [p for p in pts if p["song_s"] == secs]
        ax.plot(
            [p["clients"] for p in ps],
            [p["throughput_audio_s_per_s"] for p in ps],
            "o-",
            label=f"{secs:g}-s songs",
        )
    lim = result["ratio"]["fused_limit_audio_s_per_s"]
    ax.axhline(lim, color="k", ls="--", lw=1, label=f"fused limit ({lim:.0f})")
    ax.axhline(TARGET_RATIO * lim, color="grey", ls=":", lw=1, label=f"{TARGET_RATIO:g} × limit (target)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients N")
    ax.set_ylabel("audio-seconds / s")
    ax.set_ylim(bottom=0)
    ax.set_title("Serve throughput vs in-process limit")
    ax.legend(fontsize=8)
    figs["Throughput vs clients"] = common.save_figure(fig, f"inference_throughput{suffix}")
    plt.close(fig)
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 3.4), squeeze=False)
    for ax, secs in zip(axes[0], lengths, strict=True):
        ps = [p for p in pts if p["song_s"] == secs]
        for q, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
            ax.plot([p["clients"] for p in ps], [p["latency_s"][q] or np.nan for p in ps], style, label=q)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients N")
        ax.set_ylabel("latency (s)")
        ax.set_title(f"{secs:g}-s songs")
        ax.legend(fontsize=8)
    figs["Latency percentiles vs clients"] = common.save_figure(fig, f"inference_latency{suffix}")
    plt.close(fig)
    return figs


# ---- entry points --------------------------------------------------------------------------------------


def prepare(cfg: Config, *, trained: bool) -> tuple[Config, dict[str, list[str]]]:
    """The config whose ``runs_dir`` holds the benchmark ensemble (random weights unless ``trained``)."""
    from ml.inference import member_dirs

    if trained:
        ckpts = {m: [str(p) for p in member_dirs(cfg.runs_dir, m)] for m in ensemble_members(cfg)}
        missing = [m for m, c in ckpts.items() if not c]
        if missing:
            raise SystemExit(f"--trained: no checkpoints for {missing} under {cfg.runs_dir}")
        return cfg, ckpts
    runs = common.work_dir(cfg, NAME) / "runs"
    ckpts = write_random_checkpoints(cfg, runs)
    return with_runs_dir(cfg, runs), ckpts


def run(
    cfg: Config,
    *,
    quick: bool,
    trained: bool = False,
    clients: Sequence[int] | None = None,
    song_seconds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Limit, product and ratio (see the module doc); ``clients``/``song_seconds`` replace the plan's."""
    plan = QUICK if quick else FULL
    if clients:
        plan = replace(plan, clients=tuple(sorted(set(clients))))
    if song_seconds:
        plan = replace(plan, song_seconds=tuple(song_seconds))
    t_start = time.perf_counter()
    cfg, ckpts = prepare(cfg, trained=trained)
    print(
        f"[inference] ensemble {cfg.ensemble}: {sorted(ckpts)} ({cfg.folds.k} folds), "
        f"runs_dir {cfg.runs_dir}",
        flush=True,
    )
    with common.stopwatch() as t_lim:
        limit = limit_section(cfg, plan)
    print(
        f"[inference] limit ({t_lim['s']:.0f} s): "
        f"fused {limit['fused_cpu']:.1f} audio-s/s ({limit['best_cpu']})",
        flush=True,
    )
    with common.stopwatch() as t_prod:
        product = product_section(cfg, plan)
    print(f"[inference] product ({t_prod['s']:.0f} s)", flush=True)
    if plan.limit_again:
        import torch

        default_threads = torch.get_num_threads()
        settings = limit["cpu_variants"][limit["best_cpu"]]["settings"]
        again = measure_limit(cfg, device="cpu", seconds=plan.limit_s, members=False, **settings)
        torch.set_num_threads(default_threads)
        limit["fused_after"] = again["fused"]
    result: dict[str, Any] = {
        "ensemble": cfg.ensemble,
        "members": ensemble_members(cfg),
        "folds": cfg.folds.k,
        "trained": trained,
        "checkpoints": ckpts,
        "window_s": cfg.inference.window_s,
        "hop_s": cfg.inference.hop_s,
        "plan": asdict(plan),
        "quick": quick,
        "limit": limit,
        "product": product,
    }
    result["ratio"] = compute_ratio(result)
    result["wall_s"] = time.perf_counter() - t_start
    result["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.inference [--quick] [--trained] [--no-write]``."""
    p = common.parser(__doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--trained", action="store_true", help="use the trained checkpoints under runs_dir")
    p.add_argument("--clients", type=int, nargs="+", metavar="N", help="client counts (default: the plan's)")
    p.add_argument("--song-seconds", type=float, nargs="+", metavar="S", help="song lengths in s")
    p.add_argument("--out", type=Path, help="write the result JSON here (not results/, docs)")
    args = p.parse_args(argv)
    cfg = common.load(args)
    result = run(
        cfg, quick=args.quick, trained=args.trained, clients=args.clients, song_seconds=args.song_seconds
    )
    result["machine"] = common.machine_info()
    result["headline_text"] = headline_text(result)
    r = result["ratio"]
    print(
        f"[inference] ratio at saturation {r['ratio'] if r['ratio'] is None else round(r['ratio'], 3)} "
        f"(product {r['product_audio_s_per_s']} ÷ limit {r['fused_limit_audio_s_per_s']:.1f}); "
        f"wall {result['wall_s']:.0f} s",
        flush=True,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=common.json_default) + "\n")
        print(render_markdown(result))
        print(f"[inference] wrote {args.out}", flush=True)
        return 0
    if args.no_write:
        print(render_markdown(result))
        return 0
    figures = plot(result)
    path = common.write_result(NAME, result, render_markdown(result, figures=figures), quick=args.quick)
    print(f"[inference] wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
