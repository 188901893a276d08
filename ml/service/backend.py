"""Who runs the models: the :class:`Backend` protocol, the :class:`Song` it scores, the in-process backend.

A backend scores one decoded song (:class:`Song`) with one member and batches concurrent calls; the
in-process :class:`LocalBackend` runs the members' predictors in worker threads, the Ray Serve one
(:mod:`serve.ingress`) calls deployment handles. :func:`load_predictor` and :func:`check_predictor` load a
member and check it fits the config the windows are framed with.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ml.config import Config
from ml.ensemble import EnsembleSpec, load_spec, member_checkpoints
from ml.inference import Predictor

Loader = Callable[[Config, str, torch.device], Predictor]


@dataclass(eq=False)
class Song:
    """One decoded upload as the members receive it: compact, decoded once, resampled by each member.

    Attributes:
        wave: (S,) float32 mono samples at ``sample_rate`` (the file's own rate: each member resamples to
            its rate on its own device, inside its batch).
        sample_rate: Rate of ``wave`` (Hz).
        starts_s: Window starts in seconds, the same for every member (:func:`ml.inference.window_starts`).
        cache: Scratch space for a backend (the Serve backend keeps the object-store reference of ``wave``
            here, so every member reads the one copy).
    """

    wave: np.ndarray
    sample_rate: int
    starts_s: np.ndarray
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def windows(self) -> int:
        """Number of windows."""
        return len(self.starts_s)


class Backend(Protocol):
    """What the API needs from whoever runs the models.

    ``health(member)`` is optional: a backend without it is reported as ``{"status": "ok"}``. So is an
    ``observer`` attribute (an :class:`AnalysisObserver`, e.g. the Serve ingress's metrics), which
    :func:`analyze` tells about each decode and each request's results.
    """

    members: list[str]

    def sample_rate(self, member: str) -> int:
        """The rate (Hz) the member's models run at (reported by ``/models``)."""
        ...

    async def score(self, member: str, song: Song) -> np.ndarray:
        """Sigmoid scores (W, C) of one song's windows (resampled, framed and scored by the member).

        Backends batch concurrent calls (windows of many songs in one forward pass) and may raise
        :class:`MemberUnavailableError`; any other exception is reported as the member failing.
        """
        ...


def check_predictor(
    cfg: Config, member: str, predictor: Predictor, *, expect_rate: int | None = None
) -> None:
    """Fail clearly when a member's models do not fit the config the API frames windows with."""
    if predictor.labels != cfg.label_codes:
        raise ValueError(
            f"member {member!r}: model labels {predictor.labels} differ from config {cfg.label_codes}"
        )
    if not math.isclose(predictor.window_s, cfg.inference.window_s, rel_tol=1e-6):
        raise ValueError(
            f"member {member!r}: models use {predictor.window_s} s windows, the config "
            f"inference.window_s is {cfg.inference.window_s} s"
        )
    if expect_rate is not None and predictor.sample_rate != expect_rate:
        raise ValueError(
            f"member {member!r}: models expect {predictor.sample_rate} Hz but the config front end gives "
            f"{expect_rate} Hz; retrain or fix front_ends"
        )


def config_sample_rate(cfg: Config, member: str) -> int:
    """A member's input rate according to its configured front end."""
    return int(cfg.front_ends[cfg.members[member].front_end].sample_rate)


def load_predictor(
    cfg: Config,
    member: str,
    device: torch.device | str = "cpu",
    *,
    checkpoints: Sequence[str] | None = None,
    allow_untrained: bool = False,
) -> Predictor:
    """The default member loader: the fold checkpoints the ensemble spec names.

    With ``allow_untrained`` a member without checkpoints gets deterministic random weights.
    """
    from ml.inference import load_member

    return load_member(
        cfg, member, checkpoints=checkpoints or None, device=device, allow_untrained=allow_untrained
    )


class LocalBackend:
    """In-process backend (no Ray).

    Scoring runs in worker threads (``asyncio.to_thread``), one forward per member at a time (a lock per
    member keeps torch from oversubscribing the cores). Songs that arrive while a member is busy are
    batched: the next forward takes all of them (like ``@serve.batch`` in the Serve backend), so a request
    with many files, or many concurrent requests, fill batches with windows of many songs.
    """

    def __init__(self, predictors: Mapping[str, Predictor], *, max_batch_songs: int = 64) -> None:
        """Serve these predictors, keyed by member name; at most ``max_batch_songs`` songs per forward."""
        if not predictors:
            raise ValueError("LocalBackend needs at least one predictor")
        self.predictors = dict(predictors)
        self.members = list(self.predictors)
        self.max_batch_songs = max_batch_songs
        self._locks = {m: threading.Lock() for m in self.predictors}
        # per (member, event loop): songs waiting for the next forward, and the task running forwards
        self._pending: dict[tuple[str, int], list[tuple[Song, asyncio.Future[np.ndarray]]]] = {}
        self._drains: dict[tuple[str, int], asyncio.Task[None]] = {}
        self.batches = 0
        self.songs = 0

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        members: Sequence[str] | None = None,
        *,
        spec: EnsembleSpec | None = None,
        allow_untrained: bool = False,
        device: torch.device | str = "cpu",
        loader: Loader | None = None,
    ) -> LocalBackend:
        """Load ``members`` (default: the spec's members with a positive weight) in this process.

        ``spec`` defaults to :func:`ml.ensemble.load_spec` (the registered champion).
        """
        spec = spec or load_spec(cfg, allow_untrained=allow_untrained)
        names = list(members) if members else [m for m, w in spec.weights.items() if w > 0]
        dev = torch.device(device)
        predictors = {}
        for m in names:
            if loader is not None:
                p = loader(cfg, m, dev)
            else:
                ckpts = member_checkpoints(cfg, spec, m) if m in spec.members else None
                p = load_predictor(cfg, m, dev, checkpoints=ckpts, allow_untrained=allow_untrained)
            check_predictor(cfg, m, p)
            predictors[m] = p
        return cls(predictors)

    def sample_rate(self, member: str) -> int:
        """The predictor's own rate (checkpoints are self-describing)."""
        return int(self.predictors[member].sample_rate)

    async def score(self, member: str, song: Song) -> np.ndarray:
        """Queue the song for the member's next batch and wait for its scores."""
        if member not in self.predictors:
            raise KeyError(f"unknown member {member!r}")
        loop = asyncio.get_running_loop()
        key = (member, id(loop))
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.setdefault(key, []).append((song, fut))
        if key not in self._drains:
            self._drains[key] = asyncio.create_task(self._drain(key))
        return await fut

    async def _drain(self, key: tuple[str, int]) -> None:
        member, pending = key[0], self._pending[key]
        try:
            while pending:
                batch = pending[: self.max_batch_songs]
                del pending[: len(batch)]
                batch = [(s, f) for s, f in batch if not f.done()]  # callers that gave up
                if not batch:
                    continue
                try:
                    scores = await asyncio.to_thread(self._score, member, [s for s, _ in batch])
                except Exception as e:
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(e)
                    continue
                for (_, f), out in zip(batch, scores, strict=True):
                    if not f.done():
                        f.set_result(out)
        finally:  # also when the loop shuts down: nobody may wait forever on a queued song
            del self._drains[key]
            for _, f in self._pending.pop(key, []):
                f.cancel()

    def _score(self, member: str, songs: Sequence[Song]) -> list[np.ndarray]:
        with self._locks[member]:
            self.batches += 1
            self.songs += len(songs)
            return self.predictors[member].score_songs([(s.wave, s.sample_rate, s.starts_s) for s in songs])

    async def health(self, member: str) -> dict[str, Any]:
        """Device and process of the in-process predictor."""
        p = self.predictors[member]
        return {
            "status": "ok",
            "device": str(p.device),
            "pid": os.getpid(),
            "sample_rate": p.sample_rate,
            "gpu_ids": [],
        }


class MemberUnavailableError(RuntimeError):
    """A backend cannot reach a member now: overloaded (queue full) or its replicas are gone.

    Backends raise it after their own bounded retries; ``retry_after_s`` hints when to try again.
    """

    def __init__(self, member: str, reason: str, *, retry_after_s: float | None = None) -> None:
        """Name the member and the reason."""
        super().__init__(f"member {member!r} is unavailable: {reason}")
        self.member = member
        self.retry_after_s = retry_after_s
