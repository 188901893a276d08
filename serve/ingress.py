"""The FastAPI ingress deployment: the :func:`serve.api.create_api` app over member deployment handles.

The app is built on the replica (``__serve_build_asgi_app__``), so nothing is loaded at import time. The
fusion settings (weights, thresholds, aggregation, or a whole new spec) change without downtime through
the deployment's ``user_config`` (see :class:`ml.service.FusionUpdate`): Serve calls ``reconfigure`` on the
running replicas and requests already in flight finish with the settings they started with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from ml.config import Config
from ml.ensemble import EnsembleSpec
from ml.service import (
    FusionBox,
    MemberUnavailableError,
    Song,
    apply_fusion_update,
    config_sample_rate,
    fusion_from_spec,
)
from serve.api import create_api
from serve.metrics import IngressMetrics, instrument

log = logging.getLogger("mpic.serve")

# A replica that dies with requests in flight (crash, OOM kill, node loss) fails those requests with an actor
# error; they are sent again (to another replica, or to the replacement Serve starts) this many times.
RETRIES = 2
RETRY_BACKOFF_S = 0.5


class ServeBackend:
    """:class:`ml.service.Backend` over member deployment handles.

    Requests that die with their replica are retried (``RETRIES``, with backoff); the request timeout of the
    API bounds the whole. Backpressure (the member's queue is full) and a member still down after the retries
    become :class:`~ml.service.MemberUnavailableError` naming the member, which the API answers with 503 and
    ``Retry-After``.
    """

    def __init__(
        self,
        cfg: Config,
        handles: Mapping[str, DeploymentHandle],
        *,
        retries: int = RETRIES,
        metrics: IngressMetrics | None = None,
    ) -> None:
        """Wrap one handle per served member (sample rates come from the configured front ends).

        ``metrics`` records each member call's latency and is the analysis ``observer``.
        """
        self.observer = metrics
        self.handles = dict(handles)
        self.members = list(self.handles)
        self.retries = retries
        self.retry_after_s = cfg.serve.retry_after_s
        self._rates = {m: config_sample_rate(cfg, m) for m in self.members}

    def sample_rate(self, member: str) -> int:
        """The member's configured front-end rate (the replica refuses to start if its models differ)."""
        return self._rates[member]

    async def score(self, member: str, song: Song) -> np.ndarray:
        """One song to the member deployment (batched there with concurrent songs).

        The wave goes into Ray's object store once per song (``ray.put``, kept in ``song.cache``); every
        member gets the reference, which Ray resolves to a zero-copy read-only array in the replica.
        """
        ref = song.cache.get("ray_ref")
        if ref is None:
            ref = song.cache["ray_ref"] = ray.put(song.wave)
        t0 = time.perf_counter()
        for attempt in range(self.retries + 1):
            try:
                result: np.ndarray = await self.handles[member].score.remote(
                    ref, song.sample_rate, song.starts_s
                )
                if self.observer is not None:
                    self.observer.member_scored(member, time.perf_counter() - t0)
                return result
            except BackPressureError as e:
                retry = e.retry_after_s if e.retry_after_s is not None else self.retry_after_s
                raise MemberUnavailableError(member, f"overloaded ({e})", retry_after_s=retry) from e
            except DeploymentUnavailableError as e:
                raise MemberUnavailableError(
                    member, f"deployment unavailable ({e})", retry_after_s=self.retry_after_s
                ) from e
            except RayActorError as e:
                if attempt == self.retries:
                    raise MemberUnavailableError(
                        member,
                        f"its replica died and {self.retries} retries failed ({type(e).__name__})",
                        retry_after_s=self.retry_after_s,
                    ) from e
                log.warning("member %r: replica lost (%s), retry %d", member, type(e).__name__, attempt + 1)
                await asyncio.sleep(RETRY_BACKOFF_S * (attempt + 1))
        raise AssertionError("unreachable")

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
        self.metrics = IngressMetrics()
        self.backend = ServeBackend(cfg, members, metrics=self.metrics)
        self.fusion = FusionBox(fusion_from_spec(cfg, spec, self.backend.members))

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The FastAPI app, sharing this replica's swappable fusion settings, with metrics."""
        app: FastAPI = instrument(create_api(self.cfg, self.backend, fusion=self.fusion), self.metrics)
        return app

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Apply a fusion ``user_config`` (:class:`ml.service.FusionUpdate`); ``{}`` restores the spec."""
        self.fusion.set(apply_fusion_update(self.cfg, self.spec, user_config, self.backend.members))
