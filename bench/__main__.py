"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks, then refresh docs/benchmarks.md.

``python -m bench --gpu-check --out DIR`` instead runs the short GPU check of :mod:`bench.gpu_check`
(GPU training trials, GPU Serve replicas, the quick inference bench; results under ``DIR``).

Each benchmark runs in its own process (its own Ray instance, memory returned afterwards), one after the
other so they never compete for the cores. A failing benchmark does not stop the others; the exit status
says whether all passed. ``--profile/--set`` are passed on to every benchmark.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence

from bench import report
from bench.common import RESULTS_DIR, machine_info, now_iso

BENCHMARKS = ("training", "inference", "accuracy")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks in sequence and rebuild the report from all results present."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="minutes, not half an hour (noisier figures)")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    p.add_argument("--report-only", action="store_true", help="rebuild docs/benchmarks.md from results/")
    p.add_argument("--gpu-check", action="store_true", help="bench.gpu_check (--out DIR)")
    args, passthrough = p.parse_known_args(None if argv is None else list(argv))
    if args.gpu_check:
        from bench import gpu_check

        return gpu_check.main(passthrough)
    if not args.report_only:
        runs: dict[str, dict[str, float | int]] = {}
        t_all = time.perf_counter()
        for name in args.only or BENCHMARKS:
            cmd = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if args.quick else []), *passthrough]
            print(f"==> {' '.join(cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.call(cmd)
            runs[name] = {"rc": rc, "wall_s": round(time.perf_counter() - t0, 1)}
            print(f"<== bench.{name}: exit {rc} after {runs[name]['wall_s']:.0f} s", flush=True)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / "run.json").write_text(
            json.dumps(
                {
                    "quick": args.quick,
                    "benchmarks": runs,
                    "total_wall_s": round(time.perf_counter() - t_all, 1),
                    "finished_at": now_iso(),
                    "machine": machine_info(),
                },
                indent=2,
            )
            + "\n"
        )
    path = report.build()
    print(f"wrote {path}")
    if args.report_only:
        return 0
    return 0 if all(r["rc"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
