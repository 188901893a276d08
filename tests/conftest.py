"""Shared fixtures: one Ray instance per test session, the smoke config, synthetic audio helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ml.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"  # screenshots and reports for people to look at (git-ignored)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def smoke_cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The `smoke` profile with every writable location inside a session temp dir."""
    tmp = tmp_path_factory.mktemp("smoke")
    return load_config(
        ROOT / "config.yml",
        profile="smoke",
        overrides=[
            f"data.root={tmp / 'data'}",
            f"data.cache_dir={tmp / 'cache'}",
            f"runs_dir={tmp / 'runs'}",
            f"ray.storage_path={tmp / 'ray_results'}",
            f"mlflow.backend_store_uri=sqlite:///{tmp / 'mlflow.db'}",
            f"mlflow.artifacts_destination={tmp / 'mlflow-artifacts'}",
        ],
    )


@pytest.fixture(scope="session")
def smoke_data(smoke_cfg: Config) -> Path:
    """The smoke profile's synthetic IRMAS-style data at ``smoke_cfg.data.root`` (a few seconds to render)."""
    from ml.data.synth import synthesize_config

    root = Path(smoke_cfg.data.root)
    if (root / "IRMAS-TrainingData").is_dir():
        return root
    synthesize_config(smoke_cfg, root, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session: 8 logical CPUs and 1 logical GPU on a 2-core machine.

    The logical GPU lets tests check GPU scheduling; code must fall back to the CPU because no CUDA
    device exists (the device is chosen from ray.get_gpu_ids() *and* torch.cuda availability).
    """
    import ray

    from ml.config import load_config

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    with load_config().ray.local_environment():  # as mpic starts a local Ray (Serve's controller, proxy)
        ray.init(
            num_cpus=8,
            num_gpus=1,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        )
    try:
        yield
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()


def tone(freq: float, seconds: float, sr: int, amp: float = 0.3) -> np.ndarray:
    """A sine tone (float32), handy for audio fixtures."""
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
