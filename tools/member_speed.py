"""Quick CPU speed check of one member: embedding/inference throughput and training samples/s.

Not part of the test suite or ``make bench`` (which measures the whole training path with Ray); a few
seconds per figure, for comparing members on this machine::

    PYTHONPATH=. python tools/member_speed.py --member mn_mtt [--threads 2] [--batch 32]

1. inference: the member's classifier (front end + network, eval mode, ``torch.inference_mode``) on
   batches of ``--batch`` random windows of 1 s and of 3 s → audio-seconds per second; for ``musicnn``
   members also the frozen embedding alone (front end + trunk, no head);
2. training: forward + BCE loss + backward + AdamW step on batches of ``--batch`` 1-s crops (the training
   crop), the classifier in training mode → samples per second. Data loading and augmentation are not
   included (they are the same for every member).

Each figure is the median of ``--repeats`` timed runs after one warm-up run, as wall-clock rates and as
rates per CPU-second of this process (less sensitive to other processes sharing the CPU; the 1-minute load
average is printed too).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from ml.config import load_config
from ml.models import build_classifier
from ml.models.musicnn import Musicnn


def _median_s(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall seconds, process CPU seconds) of one call, after a warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    """Print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--member", default="mn_mtt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config()
    clf = build_classifier(cfg, args.member)
    sr, b = clf.sample_rate, args.batch
    print(f"member {args.member}: {clf.arch} {clf.arch_args}, {args.threads} threads, batch {b}")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    clf.eval()
    for seconds in (1.0, 3.0):
        x = 0.1 * torch.randn(b, int(seconds * sr))
        with torch.inference_mode():
            t, c = _median_s(lambda x=x: clf(x), args.repeats)
            line = (
                f"inference {seconds:.0f}-s windows: {b * seconds / t:7.1f} audio-s/s wall, "
                f"{b * seconds / c:7.1f} audio-s per CPU-s ({c * 1000 / b:.1f} CPU-ms/window)"
            )
            if isinstance(clf.model, Musicnn):
                model = clf.model
                _, ce = _median_s(lambda x=x, model=model: model.embed(clf.front_end(x)), args.repeats)
                line += f"; embedding alone {b * seconds / ce:7.1f} audio-s per CPU-s"
        print(line)
    clf.train()
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-3)
    x = 0.1 * torch.randn(b, int(cfg.member_train(args.member).crop_s * sr))
    y = (torch.rand(b, clf.n_classes) < 0.2).float()

    def step() -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(clf(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t, c = _median_s(step, args.repeats)
    print(
        f"training: {b / t:7.1f} samples/s wall, {b / c:7.1f} samples per CPU-s ({c * 1000:.0f} CPU-ms/step)"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
