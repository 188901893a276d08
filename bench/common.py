"""What every benchmark shares: arguments, the machine and versions, result files, percentiles, plots.

Each benchmark (``bench/<name>.py``) is a plain function ``run(cfg, *, quick) -> dict`` plus a tiny
``main()``. It writes ``bench/results/<name>.json`` (machine-readable, with the machine and versions) and a
Markdown fragment ``bench/results/<name>.md`` whose plots live in ``docs/img/bench/``;
:mod:`bench.report` stitches the fragments into ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ml.config import PROJECT_DIR, Config
from ray_jobs.common import add_config_args, config_from_args

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DOCS_DIR = PROJECT_DIR / "docs"
IMG_DIR = DOCS_DIR / "img" / "bench"
REPORT = DOCS_DIR / "benchmarks.md"
# Work folders (data, checkpoints, MLflow store) of the benchmarks: never the demo's runs.
WORK_DIR_NAME = "bench"

PACKAGES = ("torch", "torchaudio", "nnAudio", "ray", "mlflow", "numpy", "fastapi", "uvicorn", "httpx")


def parser(description: str) -> argparse.ArgumentParser:
    """``--quick`` plus the config arguments every mpic job takes (``--config/--profile/--set``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a few-minute version (checks the pipeline, noisy)")
    p.add_argument("--no-write", action="store_true", help="print the results, do not touch results/docs")
    return add_config_args(p)


def load(args: argparse.Namespace) -> Config:
    """The config named by the arguments (the ``demo`` profile unless another is given)."""
    if not args.profile and not os.environ.get("MPIC_PROFILE"):
        args.profile = "demo"
    return config_from_args(args)


def work_dir(cfg: Config, name: str) -> Path:
    """``<cache_dir>/bench/<name>``: a benchmark's own data, checkpoints and stores."""
    d = Path(cfg.data.cache_dir) / WORK_DIR_NAME / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask; all logical cores where there is none)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _gpus() -> list[str]:
    try:
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken CUDA install must not stop a CPU benchmark
        return []


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return (
            out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores (logical and usable), memory, GPUs, OS, Python and package versions, commit."""
    versions: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": _git_commit(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def now_iso() -> str:
    """The current UTC time as ISO 8601 to the second (the ``finished_at`` of results and runs)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_result(name: str, result: dict[str, Any], markdown: str, *, quick: bool) -> Path:
    """Write ``results/<name>.json`` (result, machine, time) and the fragment ``results/<name>.md``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "quick": quick,
        "finished_at": now_iso(),
        "machine": machine_info(),
        **result,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, default=json_default) + "\n")
    (RESULTS_DIR / f"{name}.md").write_text(markdown.rstrip() + "\n")
    return path


def json_default(o: Any) -> Any:
    """``json.dumps(default=…)`` for numpy scalars/arrays and paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": …, "p95": …, "p99": …}`` of ``values`` (None when there are none)."""
    if len(values) == 0:
        return {f"p{q:g}": None for q in qs}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q:g}": float(np.percentile(arr, q)) for q in qs}


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["s"]`` holds the elapsed wall seconds."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - t0


def save_figure(fig: Any, name: str) -> str:
    """Save a matplotlib figure as ``docs/img/bench/<name>.png``; returns the link relative to ``docs/``."""
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG_DIR / f"{name}.png", dpi=110, bbox_inches="tight")
    return f"img/bench/{name}.png"


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats get 3 decimals, None becomes an em dash."""

    def cell(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def derive(cfg: Config, overrides: Sequence[str]) -> Config:
    """``cfg`` with ``--set``-style overrides applied (validated again; relative paths → the project)."""
    from ml.config import config_from_dict

    return config_from_dict(cfg.snapshot(), overrides=list(overrides), base_dir=PROJECT_DIR)
