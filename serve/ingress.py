"""The FastAPI ingress deployment: the :func:`serve.api.create_api` app over member deployment handles.

The app is built on the replica (``__serve_build_asgi_app__``), so nothing is loaded at import time. The
fusion settings (weights, thresholds, aggregation, or a whole new spec) change without downtime through
the deployment's ``user_config`` (see :class:`ml.service.FusionUpdate`): Serve calls ``reconfigure`` on the
running replicas and requests already in flight finish with the settings they started with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from ml.config import Config
from ml.ensemble import EnsembleSpec
from ml.service import FusionBox, apply_fusion_update, config_sample_rate, fusion_from_spec
from serve.api import create_api


class ServeBackend:
    """:class:`ml.service.Backend` over member deployment handles."""

    def __init__(self, cfg: Config, handles: Mapping[str, DeploymentHandle]) -> None:
        """Wrap one handle per served member (sample rates come from the configured front ends)."""
        self.handles = dict(handles)
        self.members = list(self.handles)
        self._rates = {m: config_sample_rate(cfg, m) for m in self.members}

    def sample_rate(self, member: str) -> int:
        """The member's configured front-end rate (the replica refuses to start if its models differ)."""
        return self._rates[member]

    async def score(self, member: str, windows: np.ndarray) -> np.ndarray:
        """One song's windows to the member deployment (batched there with concurrent songs)."""
        result: np.ndarray = await self.handles[member].score.remote(windows)
        return result

    async def health(self, member: str) -> dict[str, Any]:
        """Info from one replica of the member."""
        info: dict[str, Any] = await self.handles[member].info.remote()
        return info


@serve.deployment(name="ingress")
@serve.ingress()
class Ingress:
    """HTTP entry point of the mpic application."""

    def __init__(self, cfg: Config, members: dict[str, DeploymentHandle], spec: EnsembleSpec) -> None:
        """Keep the handles and the built-in spec; the app is built by ``__serve_build_asgi_app__``."""
        self.cfg = cfg
        self.spec = spec
        self.backend = ServeBackend(cfg, members)
        self.fusion = FusionBox(fusion_from_spec(cfg, spec, self.backend.members))

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The FastAPI app, sharing this replica's swappable fusion settings."""
        return create_api(self.cfg, self.backend, fusion=self.fusion)

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Apply a fusion ``user_config`` (:class:`ml.service.FusionUpdate`); ``{}`` restores the spec."""
        self.fusion.set(apply_fusion_update(self.cfg, self.spec, user_config, self.backend.members))
