"""Planning a training job (no Ray): members and folds, resources and concurrency, the job's identity."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence

from ml import tracking
from ml.config import Config

TRIAL_DRIVER_CPUS = 0.1  # the Tune trial only launches and watches its TorchTrainer


def member_sample_rate(cfg: Config, member: str) -> int:
    """The sample rate of a member's front end (the training data is decoded at it)."""
    return int(cfg.front_ends[cfg.members[member].front_end].sample_rate)


def plan_resources(
    cfg: Config, members: Sequence[str], resources: dict[str, float], n_trials: int
) -> tuple[bool, int]:
    """(use GPUs?, max concurrent trials) for the cluster's total ``resources``.

    GPUs are used when the cluster has any and a member asks for some (``gpus_per_trial`` > 0). Unless
    ``cfg.train.max_concurrent_trials`` is set, concurrency is what the limiting resource allows: GPUs ÷
    GPUs per trial when GPUs are used, CPUs ÷ (CPUs per trial + the trial driver's share) in any case;
    at least 1 and at most the number of trials.
    """
    tcs = [cfg.member_train(m) for m in members] or [cfg.train]
    gpus, cpus = float(resources.get("GPU", 0.0)), float(resources.get("CPU", 0.0))
    wants_gpu = any(tc.gpus_per_trial > 0 for tc in tcs)
    # use_gpu=True: GPU workers may not exist yet (an autoscaling cluster starting from zero)
    use_gpu = wants_gpu and (gpus > 0 or cfg.train.use_gpu is True) and cfg.train.use_gpu is not False
    cpu_need = max(tc.cpus_per_trial * tc.num_workers for tc in tcs) + TRIAL_DRIVER_CPUS
    limit = math.floor(cpus / cpu_need + 1e-9)
    if use_gpu:
        gpu_need = max(tc.gpus_per_trial * tc.num_workers for tc in tcs if tc.gpus_per_trial > 0)
        if gpus > 0:
            limit = min(limit, math.floor(gpus / gpu_need + 1e-9))
    n = cfg.train.max_concurrent_trials or limit
    return use_gpu, max(1, min(n, max(1, n_trials)))


def select(
    cfg: Config, members: Sequence[str] | None, folds: Sequence[int] | None
) -> tuple[list[str], list[int]]:
    """Validated members (default: the selected ensemble) and folds (default: ``train.folds`` or all)."""
    names = list(members) if members else cfg.ensemble_members
    unknown = [m for m in names if m not in cfg.members]
    if unknown:
        raise ValueError(f"unknown members {unknown}; valid: {sorted(cfg.members)}")
    chosen = list(folds) if folds is not None else (cfg.train.folds or list(range(cfg.folds.k)))
    bad = [f for f in chosen if not 0 <= int(f) < cfg.folds.k]
    if bad:
        raise ValueError(f"folds {bad} out of range for k={cfg.folds.k}")
    return list(dict.fromkeys(names)), sorted({int(f) for f in chosen})


def job_key(cfg: Config, members: Sequence[str], folds: Sequence[int]) -> str:
    """Identity of a training job: the same members, folds and member fingerprints give the same key."""
    return tracking.fingerprint(
        {
            "ensemble": cfg.ensemble,
            "members": {m: tracking.member_fingerprint(cfg, m) for m in members},
            "folds": list(folds),
        },
        12,
    )


def prebuild_caches(cfg: Config, members: Sequence[str]) -> dict[int, float]:
    """Decode the training data once per distinct sample rate before trials start (no racing writers).

    Returns:
        Seconds spent per sample rate.
    """
    from ml.train_data import load_train_data

    took = {}
    for sr in sorted({member_sample_rate(cfg, m) for m in members}):
        t0 = time.perf_counter()
        load_train_data(cfg, sr, progress=sys.stderr.isatty())
        took[sr] = time.perf_counter() - t0
    return took
