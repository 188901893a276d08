"""One Ray Serve deployment class for every ensemble member.

``MemberModel.options(name=f"member_{m}", ...).bind(cfg, m)`` loads all fold models of member ``m`` on the
device Ray assigned (CUDA only when the replica got a GPU *and* CUDA exists) and scores windows. Calls
from many concurrent songs are merged by ``@serve.batch`` into one forward pass and split back.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import ray
import torch
from ray import serve

from ml.config import Config
from ml.inference import Predictor, pick_device
from ml.service import check_predictor, config_sample_rate, load_predictor

Loader = Callable[[Config, str, torch.device], Predictor]

# Placeholders; the replica sets the configured values in __init__ (and on reconfigure).
_DEFAULT_MAX_BATCH = 64
_DEFAULT_WAIT_S = 0.01


def _assigned_cpus() -> float:
    try:
        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    except Exception:
        return 1.0


@serve.deployment(name="member", ray_actor_options={"num_cpus": 1})
class MemberModel:
    """A replica holding one member's :class:`~ml.inference.Predictor`."""

    def __init__(
        self,
        cfg: Config,
        member: str,
        loader: Loader | None = None,
        *,
        checkpoints: Sequence[str] | None = None,
        allow_untrained: bool = False,
    ) -> None:
        """Load the member on this replica's device.

        Args:
            cfg: Project configuration.
            member: Member name.
            loader: ``loader(cfg, member, device) -> Predictor``; default: the member's checkpoints
                (``checkpoints`` or the newest under ``runs_dir``), random weights with ``allow_untrained``.
            checkpoints: Fold checkpoints from the fusion spec.
            allow_untrained: Build members without checkpoints from config with random weights.
        """
        self.cfg = cfg
        self.member = member
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        self.device = pick_device(self.gpu_ids)
        self.num_threads = max(1, round(_assigned_cpus()))
        torch.set_num_threads(self.num_threads)
        if loader is None:
            self.predictor = load_predictor(
                cfg, member, self.device, checkpoints=checkpoints, allow_untrained=allow_untrained
            )
        else:
            self.predictor = loader(cfg, member, self.device)
        # The ingress frames windows at the configured front-end rate and window length.
        check_predictor(cfg, member, self.predictor, expect_rate=config_sample_rate(cfg, member))
        self.window_samples = round(self.predictor.window_s * self.predictor.sample_rate)
        self.n_labels = len(self.predictor.labels)
        self.batches = 0
        self.items = 0
        self.max_items_per_batch = 0
        self.started = time.time()
        self._apply_batching(cfg.serve.max_batch_size, cfg.serve.batch_wait_timeout_s)
        # Warm up (first-call allocations) so the first request is not slow and a broken model fails here.
        self.predictor.score_windows(np.zeros((1, self.window_samples), dtype=np.float32))

    def _apply_batching(self, max_batch_size: int, wait_s: float) -> None:
        batched = cast(Any, self.score_batch)  # @serve.batch adds the setters
        batched.set_max_batch_size(int(max_batch_size))
        batched.set_batch_wait_timeout_s(float(wait_s))
        self.max_batch_size, self.batch_wait_timeout_s = int(max_batch_size), float(wait_s)

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Live batching changes: ``{"max_batch_size": int, "batch_wait_timeout_s": float}``."""
        uc = dict(user_config or {})
        unknown = sorted(set(uc) - {"max_batch_size", "batch_wait_timeout_s"})
        if unknown:
            raise ValueError(f"unknown member user_config keys {unknown}")
        self._apply_batching(
            uc.get("max_batch_size", self.cfg.serve.max_batch_size),
            uc.get("batch_wait_timeout_s", self.cfg.serve.batch_wait_timeout_s),
        )

    async def score(self, windows: np.ndarray) -> np.ndarray:
        """Sigmoid scores (W, C) of one song's windows (W, S); batched with concurrent calls."""
        w = np.asarray(windows, dtype=np.float32)
        if w.ndim != 2 or w.shape[1] != self.window_samples or len(w) == 0:
            raise ValueError(
                f"member {self.member!r} expects windows of shape (W>0, {self.window_samples}) "
                f"({self.predictor.window_s} s at {self.predictor.sample_rate} Hz), got {w.shape}"
            )
        return await self.score_batch(w)

    @serve.batch(max_batch_size=_DEFAULT_MAX_BATCH, batch_wait_timeout_s=_DEFAULT_WAIT_S)
    async def score_batch(self, windows_list: list[np.ndarray]) -> list[np.ndarray]:
        """Concatenate the windows of many songs, run one forward pass (off the event loop), split back."""
        sizes = [len(w) for w in windows_list]
        scores = await asyncio.to_thread(self.predictor.score_windows, np.concatenate(windows_list))
        self.batches += 1
        self.items += len(windows_list)
        self.max_items_per_batch = max(self.max_items_per_batch, len(windows_list))
        return list(np.split(scores, np.cumsum(sizes)[:-1]))

    def info(self) -> dict[str, Any]:
        """Where and how this replica runs (used by ``/healthz`` and tests)."""
        ctx = ray.get_runtime_context()
        try:
            replica = serve.get_replica_context().replica_tag
        except Exception:
            replica = None
        return {
            "status": "ok",
            "member": self.member,
            "device": str(self.device),
            "gpu_ids": self.gpu_ids,
            "assigned_resources": ctx.get_assigned_resources(),
            "pid": os.getpid(),
            "actor_id": ctx.get_actor_id(),
            "replica": replica,
            "sample_rate": self.predictor.sample_rate,
            "window_s": self.predictor.window_s,
            "num_threads": self.num_threads,
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
            "batches": self.batches,
            "items": self.items,
            "max_items_per_batch": self.max_items_per_batch,
            "uptime_s": round(time.time() - self.started, 1),
        }

    def check_health(self) -> None:
        """Called periodically by Serve; raising marks the replica unhealthy and replaces it."""
        if self.predictor is None or not self.predictor.models:
            raise RuntimeError(f"member {self.member!r} has no models loaded")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the CUDA device went away")
