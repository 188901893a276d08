"""Fixtures of the Ray job tests: the smoke data set and one smoke training run, once per session."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ml.config import Config, scoped_environ


@pytest.fixture(scope="session")
def smoke_training(
    smoke_cfg: Config, smoke_data: Path, ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Config, dict[str, Any], float]]:
    """One `ray_jobs.train` run of the smoke ensemble (2 members × 2 folds) on the session's Ray.

    Own runs_dir / Ray storage / MLflow store; the decoded-audio cache is shared with the session. The
    trials ask for a quarter of the test cluster's logical GPU each (so all four run at once and exercise
    the GPU path, falling back to the CPU), and ``res_genre`` fold 0 fails once after epoch 0 (fault
    injection) so its resume from the checkpoint can be checked. Yields (config, summary, wall seconds).
    """
    from ray_jobs.train import FAIL_EPOCH_ENV, FAIL_ONLY_ENV

    tmp = tmp_path_factory.mktemp("train-job")
    cfg = smoke_cfg.model_copy(
        update={
            "runs_dir": tmp / "runs",
            "train": smoke_cfg.train.model_copy(update={"gpus_per_trial": 0.25}),
            "ray": smoke_cfg.ray.model_copy(update={"storage_path": tmp / "ray_results"}),
            "mlflow": smoke_cfg.mlflow.model_copy(
                update={
                    "backend_store_uri": f"sqlite:///{tmp / 'mlflow.db'}",
                    "artifacts_destination": str(tmp / "mlflow-artifacts"),
                    "experiment": "mpic-train-job-test",
                }
            ),
        }
    )
    from ray_jobs.train import train

    with scoped_environ({FAIL_EPOCH_ENV: "0", FAIL_ONLY_ENV: "res_genre/0"}):
        t0 = time.perf_counter()
        summary = train(cfg)
        wall = time.perf_counter() - t0
    yield cfg, summary, wall
