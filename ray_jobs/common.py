"""What every Ray job shares: ``--config/--profile/--set`` parsing and connecting to (or starting) Ray.

Submitting a job with ``ray job submit --working-dir . -- python -m ray_jobs.<job>`` runs the driver inside
Ray's unpacked copy of the working directory, so relative paths in ``config.yml`` (``.cache/mpic/…``) would
resolve into that temporary copy. Pass ``--base-dir /abs/project`` (or set ``MPIC_BASE_DIR`` through
``--runtime-env-json '{"env_vars": {"MPIC_BASE_DIR": "…"}}'``) so checkpoints, the MLflow store and caches
land somewhere that outlives the job.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml.config import PROJECT_DIR, Config, load_config
from ml.config import add_config_args as config_args
from ml.models import check_members

log = logging.getLogger(__name__)

BASE_DIR_ENV = "MPIC_BASE_DIR"
# Never shipped to a cluster with the working directory: data, caches, environments, outputs.
WORKING_DIR_EXCLUDES = [
    ".venv/",
    "data/",
    ".cache/",
    "runs/",
    "mlruns/",
    "test-artifacts/",
    ".git/",
    "**/__pycache__/",
    "*.db",
    ".mypy_cache/",
    ".ruff_cache/",
    ".pytest_cache/",
]


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config``, ``--profile``, repeated ``--set KEY=VALUE`` and ``--base-dir``."""
    config_args(parser)
    parser.add_argument(
        "--base-dir",
        default=None,
        help=f"resolve relative paths of the config against this folder (${BASE_DIR_ENV}; "
        "default: the config file's folder)",
    )
    return parser


def in_ray_job() -> bool:
    """True inside a driver started by `ray job submit`."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config named by parsed :func:`add_config_args` arguments."""
    base = getattr(args, "base_dir", None) or os.environ.get(BASE_DIR_ENV)
    if base is None and in_ray_job():
        log.warning(
            "running as a Ray job without --base-dir/$%s: relative paths in the config resolve "
            "inside the job's temporary working directory and are lost when it is cleaned up",
            BASE_DIR_ENV,
        )
    cfg = load_config(
        args.config, args.profile, list(args.overrides or []), base_dir=Path(base).resolve() if base else None
    )
    check_members(cfg)
    return cfg


def init_ray(cfg: Config, **kwargs: Any) -> bool:
    """Connect to the configured Ray cluster, reuse an initialised one, or start a local one.

    Order: an already initialised Ray in this process (tests) is reused; inside a `ray job submit` driver,
    or with ``$RAY_ADDRESS`` set, the job's cluster; ``cfg.ray.address`` (shipping this project as the
    runtime-env working directory unless it runs as a job); otherwise a fresh local Ray with
    ``cfg.ray.num_cpus`` / ``num_gpus`` (None: detected).

    Returns:
        True if this call started or connected Ray (the caller should ``ray.shutdown()`` when done).
    """
    import ray

    if ray.is_initialized():
        return False
    if in_ray_job() or os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
    elif cfg.ray.address:
        runtime_env = {"working_dir": str(PROJECT_DIR), "excludes": WORKING_DIR_EXCLUDES}
        ray.init(address=cfg.ray.address, runtime_env=kwargs.pop("runtime_env", runtime_env), **kwargs)
    else:
        with cfg.ray.local_environment():  # the local Ray's processes start with ray.env
            ray.init(
                address="local",
                num_cpus=_maybe_int(cfg.ray.num_cpus),
                num_gpus=_maybe_int(cfg.ray.num_gpus),
                dashboard_host=cfg.ray.dashboard_host,
                **kwargs,
            )
    return True


def _maybe_int(v: float | None) -> int | None:
    return None if v is None else int(v)


def cluster_resources() -> dict[str, float]:
    """Total logical resources of the connected cluster (CPU, GPU, …)."""
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, Config]:
    """Parse ``argv`` and load the config."""
    args = parser.parse_args(None if argv is None else list(argv))
    return args, config_from_args(args)
