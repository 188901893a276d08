"""A short check for a CUDA host: GPU training trials, GPU Serve replicas, the quick inference bench.

``python -m bench --gpu-check --out DIR`` (or ``make gpu-check OUT=DIR``) runs, each step in its own process
(its own Ray instance) with a time limit, everything written under ``DIR``:

1. **environment** — torch, CUDA, the GPUs (``nvidia-smi -L``), cores;
2. **data** — the ``smoke`` profile's synthetic data set (rendered, or ``--data`` when the host cannot render:
   rendering needs libfluidsynth);
3. **train** — ``python -m ray_jobs.train --profile smoke`` with GPU trials (``train.gpus_per_trial=0.5``: two
   trials share the GPU), all runs, caches and MLflow store under ``DIR/work``; GPU utilisation is sampled;
   the fold checkpoints must exist afterwards;
4. **inference** — ``python -m bench.inference --quick`` (the default ensemble, random weights): the
   in-process limit on CPU and GPU (batch sweep), then the Serve application with GPU member replicas under
   1, 16 and 64 HTTP clients; per Serve process CPU ms per audio-second, songs per batch, GPU utilisation.

On a host without CUDA the GPU parts are skipped and the summary says so (training runs only with
``--cpu-train``; the inference bench runs on the CPU), so the check itself can be tested anywhere. The
summary is printed and written to ``DIR/gpu_check.json`` (the inference result to ``DIR/inference.json``,
logs to ``DIR/*.log``). The exit status is 0 when every step that ran passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import common
from bench.inference import GpuSampler

PROFILE = "smoke"
TRAIN_TIMEOUT_S = 240
BENCH_TIMEOUT_S = 300
CLIENTS = (1, 16, 64)


def _log(msg: str) -> None:
    print(f"[gpu-check] {msg}", flush=True)


def environment() -> dict[str, Any]:
    """torch/CUDA versions, GPUs and cores."""
    import torch

    out: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "usable_cores": common.usable_cores(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        out["nvidia_smi"] = r.stdout.strip().splitlines()
    return out


def smoke_overrides(work: Path, data: Path) -> list[str]:
    """``--set`` overrides that keep every file of the check under ``work`` (data under ``data``)."""
    return [
        f"data.root={data}",
        f"data.cache_dir={work / 'cache'}",
        f"runs_dir={work / 'runs'}",
        f"ray.storage_path={work / 'ray_results'}",
        f"mlflow.backend_store_uri=sqlite:///{work / 'mlflow.db'}",
        f"mlflow.artifacts_destination={work / 'mlflow-artifacts'}",
    ]


def ensure_data(root: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Render the smoke data set at ``root`` unless it is there."""
    from ml.config import load_config
    from ml.data.synth import synthesize_config

    if (root / "IRMAS-TrainingData").is_dir():
        return {"status": "ok", "rendered": False, "root": str(root)}
    cfg = load_config(profile=PROFILE, overrides=list(overrides))
    t0 = time.perf_counter()
    synthesize_config(cfg, root, workers=min(4, common.usable_cores()), progress=False)
    secs = round(time.perf_counter() - t0, 1)
    return {"status": "ok", "rendered": True, "root": str(root), "seconds": secs}


def _run(cmd: list[str], log: Path, timeout_s: float) -> tuple[int, float]:
    """Run ``cmd`` with output to ``log``; ``(exit status, seconds)``; 124 on timeout."""
    t0 = time.perf_counter()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as f:
        try:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s, env=env)
            rc = done.returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, round(time.perf_counter() - t0, 1)


def train_step(out: Path, overrides: Sequence[str], *, gpu: bool) -> dict[str, Any]:
    """Smoke training on a local Ray with GPU trials (CPU trials when ``gpu`` is False)."""
    sets = [*overrides, f"train.gpus_per_trial={0.5 if gpu else 0}"]
    cmd = [sys.executable, "-m", "ray_jobs.train", "--profile", PROFILE, "--json"]
    for s in sets:
        cmd += ["--set", s]
    sampler = GpuSampler()
    sampler.start()
    t0 = time.monotonic()
    rc, secs = _run(cmd, out / "train.log", TRAIN_TIMEOUT_S)
    util = sampler.mean(t0, time.monotonic())
    peak = max((v for _, v in sampler.samples), default=None)
    sampler.stop()
    runs = Path(next(s.split("=", 1)[1] for s in overrides if s.startswith("runs_dir=")))
    ckpts = sorted(str(p.relative_to(runs)) for p in runs.glob("*/fold*/model.pt"))
    summary = _json_tail((out / "train.log").read_text(errors="replace"))
    ok = rc == 0 and len(ckpts) > 0
    return {
        "status": "ok" if ok else ("timeout" if rc == 124 else "failed"),
        "exit": rc,
        "seconds": secs,
        "device": "cuda" if gpu else "cpu",
        "use_gpu": (summary or {}).get("use_gpu"),
        "checkpoints": ckpts,
        "gpu_util_mean_percent": util,
        "gpu_util_peak_percent": peak,
        "log": str(out / "train.log"),
    }


def _json_tail(text: str) -> dict[str, Any] | None:
    """The last top-level JSON object printed in ``text`` (``ray_jobs.train --json``), if any."""
    start = text.rfind("\n{")
    while start >= 0:
        try:
            value = json.loads(text[start + 1 :])
            return value if isinstance(value, dict) else None
        except ValueError:
            start = text.rfind("\n{", 0, start)
    return None


def inference_step(out: Path, clients: Sequence[int]) -> dict[str, Any]:
    """The quick inference bench (Serve with GPU replicas when CUDA exists), result to ``inference.json``."""
    result_path = out / "inference.json"
    cmd = [sys.executable, "-m", "bench.inference", "--quick", "--out", str(result_path)]
    cmd += ["--clients", *map(str, clients)]
    rc, secs = _run(cmd, out / "inference.log", BENCH_TIMEOUT_S)
    res: dict[str, Any] = {"status": "ok" if rc == 0 else ("timeout" if rc == 124 else "failed")}
    res.update(exit=rc, seconds=secs, log=str(out / "inference.log"))
    if result_path.is_file():
        res.update(inference_summary(json.loads(result_path.read_text())))
    return res


def inference_summary(r: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks for, from a ``bench.inference`` result."""
    lim, rat = r["limit"], r["ratio"]
    pts = r["product"]["points"]
    best = max(pts, key=lambda p: p["throughput_audio_s_per_s"], default=None)
    gpu = lim.get("gpu")
    devices = sorted({b.get("device") for p in pts for b in (p.get("batching") or {}).values() if b})
    out: dict[str, Any] = {
        "cpu_limit_audio_s_per_s": lim.get("fused_cpu"),
        "gpu_limit_audio_s_per_s": gpu["fused"]["audio_s_per_s"] if gpu else None,
        "gpu_limit_batch_size": gpu["batch_size"] if gpu else None,
        "member_devices": devices,
        "ratio": rat.get("ratio"),
        "limit_device": rat.get("limit_device"),
        "points": [
            {
                "clients": p["clients"],
                "song_s": p["song_s"],
                "audio_s_per_s": round(p["throughput_audio_s_per_s"], 1),
                "p99_s": p["latency_s"].get("p99"),
                "errors": p["errors"],
                "serve_cpu_ms_per_audio_s": round(1000 * p["serve_cpu_s_per_audio_s"], 2)
                if p.get("serve_cpu_s_per_audio_s")
                else None,
                "cpu_ms_per_audio_s_by_process": p.get("cpu_ms_per_audio_s"),
                "songs_per_batch": {m: b.get("songs_per_batch") for m, b in (p.get("batching") or {}).items()}
                or None,
                "gpu_util_percent": p.get("gpu_util_percent"),
            }
            for p in pts
        ],
    }
    if best and gpu:
        out["http_vs_gpu_limit"] = best["throughput_audio_s_per_s"] / gpu["fused"]["audio_s_per_s"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.gpu_check --out DIR [--data DIR] [--cpu-train] [--skip-train] [--skip-bench]``."""
    p = argparse.ArgumentParser(prog="python -m bench --gpu-check", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for results, logs and the work files")
    p.add_argument("--data", type=Path, help="a rendered smoke data set (when this host cannot render one)")
    p.add_argument("--cpu-train", action="store_true", help="without CUDA, still train (CPU trials)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    args = p.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    if work.exists():  # this check's own scratch space from an earlier run of it, never anything else
        shutil.rmtree(work)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": {}}
    env = report["environment"] = environment()
    cuda = bool(env["cuda_available"])
    _log(f"torch {env['torch']}, CUDA {'yes: ' + ', '.join(env['gpus']) if cuda else 'NOT available'}")
    if not cuda:
        _log("no CUDA device: the GPU parts (GPU trials, GPU replicas, GPU limit) are SKIPPED")
    steps = report["steps"]
    data = (args.data or work / "data").resolve()
    overrides = smoke_overrides(work, data)
    if args.skip_train:
        steps["train"] = {"status": "skipped", "reason": "--skip-train"}
    elif not cuda and not args.cpu_train:
        reason = "no CUDA device for GPU trials (--cpu-train trains on the CPU)"
        steps["train"] = {"status": "skipped", "reason": reason}
    else:
        try:
            steps["data"] = ensure_data(data, overrides)
        except Exception as e:  # e.g. no libfluidsynth on the host: say how to go on
            error = f"{type(e).__name__}: {e}; pass --data DIR (a rendered smoke data set)"
            steps["data"] = {"status": "failed", "error": error}
        if steps["data"]["status"] == "ok":
            _log("training the smoke profile" + (" with GPU trials" if cuda else " on CPU"))
            steps["train"] = train_step(out, overrides, gpu=cuda)
        else:
            steps["train"] = {"status": "skipped", "reason": "no data (see the data step)"}
        _log(f"train: {steps['train']['status']}")
    if args.skip_bench:
        steps["inference"] = {"status": "skipped", "reason": "--skip-bench"}
    else:
        _log("quick inference bench" + (" (Serve with GPU replicas)" if cuda else " (CPU only)"))
        steps["inference"] = inference_step(out, args.clients)
        if cuda and steps["inference"].get("member_devices") not in (None, ["cuda"]):
            steps["inference"]["status"] = "failed"
            steps["inference"]["error"] = f"member replicas ran on {steps['inference']['member_devices']}"
        _log(f"inference: {steps['inference']['status']}")
    report["cuda"] = cuda
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    ran = [s for s in steps.values() if s["status"] != "skipped"]
    report["ok"] = all(s["status"] == "ok" for s in ran)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(render_summary(report), flush=True)
    _log(f"wrote {out / 'gpu_check.json'}")
    return 0 if report["ok"] else 1


def render_summary(report: dict[str, Any]) -> str:
    """A few human lines of a check report."""
    env = report["environment"]
    lines = [
        "",
        "== gpu-check summary ==",
        f"host: {', '.join(env['gpus']) or 'no GPU'}; torch {env['torch']} (CUDA {env['cuda_version']}); "
        f"{env['usable_cores']} cores; wall {report['wall_s']:.0f} s; ok={report['ok']}",
    ]
    if not report["cuda"]:
        lines.append("NOTE: no CUDA device, GPU parts skipped")
    for name, s in report["steps"].items():
        extra = s.get("reason") or s.get("error") or ""
        lines.append(f"- {name}: {s['status']} {s.get('seconds', '')} {extra}".rstrip())
    tr = report["steps"].get("train", {})
    if tr.get("checkpoints"):
        lines.append(
            f"  train: {len(tr['checkpoints'])} fold checkpoints on {tr['device']}, GPU util mean "
            f"{tr.get('gpu_util_mean_percent')} % peak {tr.get('gpu_util_peak_percent')} %"
        )
    inf = report["steps"].get("inference", {})
    if "points" in inf:
        lines.append(
            f"  limit: CPU {inf['cpu_limit_audio_s_per_s']:.0f} audio-s/s"
            + (
                f", GPU {inf['gpu_limit_audio_s_per_s']:.0f} (batch {inf['gpu_limit_batch_size']})"
                if inf.get("gpu_limit_audio_s_per_s")
                else ""
            )
            + f"; member replicas on {inf['member_devices']}"
        )
        for pt in inf["points"]:
            lines.append(
                f"  N={pt['clients']:>3} {pt['song_s']:g}-s songs: {pt['audio_s_per_s']} audio-s/s, "
                f"p99 {pt['p99_s'] if pt['p99_s'] is None else round(pt['p99_s'], 2)} s, "
                f"errors {pt['errors']}, Serve CPU {pt['serve_cpu_ms_per_audio_s']} ms/audio-s "
                f"{pt['cpu_ms_per_audio_s_by_process']}, "
                f"songs/batch {pt['songs_per_batch']}, GPU {pt['gpu_util_percent']} %"
            )
        if inf.get("http_vs_gpu_limit") is not None:
            lines.append(f"  HTTP ÷ GPU limit: {inf['http_vs_gpu_limit']:.2f} (target ≥ 0.3)")
        elif inf.get("ratio") is not None:
            lines.append(f"  HTTP ÷ {inf['limit_device']} limit: {inf['ratio']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
