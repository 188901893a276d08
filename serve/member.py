"""One Ray Serve deployment class for every ensemble member.

``MemberModel.options(name=f"member_{m}", ...).bind(cfg, m)`` loads all fold models of member ``m`` on the
device Ray assigned (CUDA only when the replica got a GPU *and* CUDA exists) and scores whole songs: each
call brings one decoded song (a float32 mono array at the file's own rate, read zero-copy from Ray's object
store, where the ingress put it once for all members) and its window starts. Calls from many concurrent songs
are merged by ``@serve.batch``; the batch is resampled, framed and scored on the replica's device
(:meth:`ml.inference.Predictor.score_songs`), so the CPU work per song outside the models is a few copies.
Batch sizes come from ``serve`` in ``config.yml`` (``serve.cuda`` on a GPU replica).
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
from serve.metrics import MemberMetrics

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
        self.metrics = MemberMetrics(member, self.device.type)
        self.n_labels = len(self.predictor.labels)
        self.batches = 0
        self.items = 0
        self.windows = 0
        self.max_items_per_batch = 0
        self.started = time.time()
        batching = cfg.serve.batching(self.device.type)
        if batching.window_batch_size:
            self.predictor.batch_size = batching.window_batch_size
        self._defaults = (batching.max_batch_size, batching.batch_wait_timeout_s)
        self._apply_batching(*self._defaults)
        # Warm up (first-call allocations, the resampling kernels of common rates) so the first request is
        # not slow and a broken model fails here.
        for rate in sorted({self.predictor.sample_rate, 44100, 48000}):
            self.predictor.score_songs([(np.zeros(rate, dtype=np.float32), rate, np.zeros(1))])

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
            uc.get("max_batch_size", self._defaults[0]), uc.get("batch_wait_timeout_s", self._defaults[1])
        )

    async def score(self, wave: np.ndarray, sample_rate: int, starts_s: np.ndarray) -> np.ndarray:
        """Sigmoid scores (W, C) of one song; batched with concurrent calls.

        Args:
            wave: (S,) float32 mono samples (any rate; pass an object-store reference to share one copy).
            sample_rate: Rate of ``wave`` (Hz).
            starts_s: (W,) window starts in seconds.
        """
        w, starts = np.asarray(wave), np.asarray(starts_s, dtype=np.float64)
        if w.ndim != 1 or w.dtype != np.float32 or len(w) == 0:
            raise ValueError(
                f"member {self.member!r} expects a non-empty 1-D float32 wave, got {w.dtype} {w.shape}"
            )
        duration = len(w) / sample_rate if sample_rate > 0 else 0.0
        if (
            sample_rate <= 0
            or starts.ndim != 1
            or len(starts) == 0
            or not np.isfinite(starts).all()
            or starts.min() < 0
            or starts.max() >= max(duration, 1e-9)
        ):
            raise ValueError(
                f"member {self.member!r}: bad song (rate {sample_rate}, {len(w)} samples, window starts "
                f"{starts.shape} in [{starts.min() if starts.size else 0:g}, "
                f"{starts.max() if starts.size else 0:g}] s)"
            )
        return await self.score_batch((w, int(sample_rate), starts))

    @serve.batch(max_batch_size=_DEFAULT_MAX_BATCH, batch_wait_timeout_s=_DEFAULT_WAIT_S)
    async def score_batch(self, songs: list[tuple[np.ndarray, int, np.ndarray]]) -> list[np.ndarray]:
        """Resample, frame and score the windows of many songs together (off the event loop), split back."""
        t0 = time.perf_counter()
        scores = await asyncio.to_thread(self.predictor.score_songs, songs)
        self.metrics.batch(len(songs), time.perf_counter() - t0)
        self.batches += 1
        self.items += len(songs)
        self.windows += sum(len(s[2]) for s in songs)
        self.max_items_per_batch = max(self.max_items_per_batch, len(songs))
        return scores

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
            "windows": self.windows,
            "window_batch_size": self.predictor.batch_size,
            "max_items_per_batch": self.max_items_per_batch,
            "uptime_s": round(time.time() - self.started, 1),
        }

    def check_health(self) -> None:
        """Called periodically by Serve; raising marks the replica unhealthy and replaces it."""
        if self.predictor is None or not self.predictor.models:
            raise RuntimeError(f"member {self.member!r} has no models loaded")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the CUDA device went away")
