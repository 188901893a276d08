"""A local Ray started by mpic (jobs, `mpic serve`) spawns its processes with ``ray.env``, and only them."""

from __future__ import annotations

import os
from typing import Any

import pytest

from ml.config import Config


def _capture(calls: list[dict[str, Any]], env: dict[str, str]) -> Any:
    def init(**kw: Any) -> None:
        calls.append({k: os.environ.get(k) for k in env})

    return init


def test_jobs_start_a_local_ray_with_ray_env(smoke_cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from ray_jobs import common

    env = dict(smoke_cfg.ray.env)
    assert env  # config.yml sets Serve's control-loop and metrics intervals
    for k in env:
        monkeypatch.delenv(k, raising=False)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", _capture(calls, env))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert common.init_ray(smoke_cfg) is True
    assert calls == [env]
    assert not any(k in os.environ for k in env)  # the driver's own environment is left as it was


def test_mpic_serve_starts_a_local_ray_with_ray_env(
    smoke_cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    import serve.app as app_mod

    env = dict(smoke_cfg.ray.env)
    for k in env:
        monkeypatch.delenv(k, raising=False)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", _capture(calls, env))
    monkeypatch.setattr(app_mod, "deploy", lambda config, **kw: None)
    app_mod.run_local(smoke_cfg, blocking=False, allow_untrained=True)
    assert calls == [env]
    assert not any(k in os.environ for k in env)
