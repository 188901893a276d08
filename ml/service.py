"""The analysis flow behind the HTTP API, without HTTP: backends, fusion settings, decode → fan out → fuse.

:func:`analyze` is what both the FastAPI app (:mod:`serve.api`) and any other front end call: decode each
upload once (in a worker thread) at its own rate, place the windows, send each member the song (one compact
float32 mono array, :class:`Song`) concurrently through a :class:`Backend` (in-process :class:`LocalBackend`,
or Ray Serve deployment handles in :mod:`serve.ingress`), which resample, frame and score on the member's
device with the windows of many songs batched together; then fuse and build per-file results. The fusion
settings (:class:`Fusion`: weights, aggregation, thresholds) come from the ensemble spec and can be swapped
live (:class:`FusionUpdate`, :func:`apply_fusion_update`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ml.audio import Audio, AudioError, decode
from ml.config import Aggregation, Config
from ml.ensemble import SPEC_FORMAT, EnsembleSpec, SpecError, load_spec, member_checkpoints
from ml.inference import FileResult, Predictor, build_result, fuse_windows, window_starts

log = logging.getLogger("mpic.service")


Loader = Callable[[Config, str, torch.device], Predictor]


# ---- backends -----------------------------------------------------------------------------------------


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


class AnalysisObserver(Protocol):
    """Told by :func:`analyze` what it did (metrics); found as the backend's optional ``observer``."""

    def decoded(self, decoded: Decoded, seconds: float) -> None:
        """One upload was decoded (or failed to: ``decoded.error``) in ``seconds``."""
        ...

    def finished(self, results: Sequence[FileResult]) -> None:
        """One :func:`analyze` call ended with these per-file results."""
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


# ---- fusion settings (spec + live overrides) -----------------------------------------------------------


class WeightsError(ValueError):
    """Request or config weights that cannot be used; the message says why."""


@dataclass(frozen=True)
class Fusion:
    """What the multi-model endpoint applies: weights over the served members, thresholds, aggregation."""

    weights: dict[str, float]
    thresholds: tuple[float, ...]
    aggregation: str
    ensemble: str = ""
    version: int | None = None
    source: str = "default"
    registered_model: str | None = None
    # per member: its own thresholds, fitted by `mpic fuse` on its out-of-fold predictions alone
    member_thresholds: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def stamp(self) -> dict[str, Any]:
        """What an answer says about the ensemble that produced it (see :func:`ml.ensemble.stamp`)."""
        return {
            "name": self.ensemble,
            "registered_model": self.registered_model,
            "version": self.version if self.registered_model else None,
            "source": self.source,
        }


class FusionBox:
    """A swappable :class:`Fusion` (the ingress replaces it on ``reconfigure``; requests read it once)."""

    def __init__(self, fusion: Fusion) -> None:
        """Hold ``fusion``."""
        self.current = fusion

    def set(self, fusion: Fusion) -> None:
        """Swap in new settings; in-flight requests keep the ones they started with."""
        self.current = fusion


class FusionUpdate(BaseModel):
    """The ingress ``user_config``: change fusion without restarting anything.

    Applied over the spec the app was built with: ``spec_path`` (a ``spec-v<N>.json`` file) or an inline
    ``spec`` replaces it, then ``weights`` / ``thresholds`` / ``aggregation`` override single fields. An
    empty update restores the built-in spec.
    """

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] | None = None
    thresholds: float | list[float] | dict[str, float] | None = None
    aggregation: Aggregation | None = None
    spec_path: str | None = None
    spec: dict[str, Any] | None = None


def validate_weights(raw: Any, served: Sequence[str], *, known: Collection[str] = ()) -> dict[str, float]:
    """Check a ``{member: weight}`` object; members left out get weight 0.

    Raises:
        WeightsError: not an object, unknown or unserved member, a weight that is not a finite number
            ``>= 0``, or no positive weight at all.
    """
    if not isinstance(raw, Mapping):
        raise WeightsError('weights must be a JSON object {"member": weight, ...}')
    unknown = sorted(k for k in raw if k not in served)
    if unknown:
        not_served = [k for k in unknown if k in known]
        if not_served:
            raise WeightsError(
                f"members {not_served} are not deployed in this service; served: {list(served)}"
            )
        raise WeightsError(f"unknown members {unknown}; valid: {list(served)}")
    out: dict[str, float] = {}
    for m in served:
        v = raw.get(m, 0.0)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise WeightsError(f"weight of {m!r} must be a number, got {v!r}")
        if not math.isfinite(v):
            raise WeightsError(f"weight of {m!r} must be finite, got {v}")
        if v < 0:
            raise WeightsError(f"weight of {m!r} must be >= 0, got {v}")
        out[m] = float(v)
    if not any(v > 0 for v in out.values()):
        raise WeightsError("at least one member needs a positive weight (all weights are zero)")
    return out


def parse_weights(text: str, served: Sequence[str], *, known: Collection[str] = ()) -> dict[str, float]:
    """Parse the ``weights`` form field (JSON) and validate it with :func:`validate_weights`."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise WeightsError(f"weights is not valid JSON ({e})") from None
    return validate_weights(raw, served, known=known)


def _check_thresholds(values: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(t) for t in values)
    bad = [t for t in out if not (0.0 < t < 1.0)]
    if bad:
        raise ValueError(f"thresholds must lie in (0, 1), got {bad}")
    return out


def fusion_from_spec(
    cfg: Config, spec: EnsembleSpec, served: Sequence[str], *, strict: bool = False
) -> Fusion:
    """Fusion settings of ``spec`` restricted to the ``served`` members.

    Args:
        cfg: The configuration (labels, default threshold).
        spec: The fusion spec.
        served: Members the backend serves.
        strict: Fail when the spec gives a positive weight to a member that is not served (used for live
            updates; at build time a members subset legitimately drops some).
    """
    spec.check_against(cfg)
    missing = [m for m, w in spec.weights.items() if w > 0 and m not in served]
    if strict and missing:
        raise WeightsError(
            f"the spec weights members {missing} that are not deployed; served: {list(served)}"
        )
    weights = {m: float(spec.weights.get(m, 0.0)) for m in served}
    if not any(w > 0 for w in weights.values()):
        raise WeightsError(f"the spec gives none of the served members {list(served)} a positive weight")
    thresholds = spec.thresholds or [cfg.inference.threshold] * len(cfg.labels)
    member_th: dict[str, tuple[float, ...]] = {}
    for m, th in (spec.details.get("member_thresholds") or {}).items():
        if m in served and len(th) == len(cfg.labels):
            member_th[m] = _check_thresholds(th)
    return Fusion(
        weights=weights,
        thresholds=_check_thresholds(thresholds),
        aggregation=spec.aggregation,
        ensemble=spec.ensemble,
        version=spec.version,
        source=spec.source,
        registered_model=spec.registered_model,
        member_thresholds=member_th,
    )


def apply_fusion_update(
    cfg: Config, base: EnsembleSpec, update: Mapping[str, Any] | FusionUpdate | None, served: Sequence[str]
) -> Fusion:
    """The fusion settings for an ingress ``user_config`` (see :class:`FusionUpdate`).

    Raises:
        ValueError: A malformed update (unknown keys, bad weights/thresholds, unreadable spec).
    """
    try:
        upd = update if isinstance(update, FusionUpdate) else FusionUpdate.model_validate(dict(update or {}))
    except ValidationError as e:
        raise ValueError(f"invalid fusion user_config: {e}") from None
    spec = base
    strict = False
    if upd.spec_path:
        try:
            spec = EnsembleSpec.from_json(Path(upd.spec_path).read_text())
        except OSError as e:
            raise ValueError(f"cannot read spec_path {upd.spec_path!r}: {e}") from None
        strict = True
    elif upd.spec is not None:
        spec = EnsembleSpec.from_json(json.dumps({"format": SPEC_FORMAT, **upd.spec}))
        strict = True
    try:
        fusion = fusion_from_spec(cfg, spec, served, strict=strict)
    except SpecError as e:
        raise ValueError(str(e)) from None
    weights = fusion.weights
    if upd.weights is not None:
        weights = validate_weights(upd.weights, served, known=cfg.members)
    thresholds = list(fusion.thresholds)
    if isinstance(upd.thresholds, dict):
        unknown = sorted(set(upd.thresholds) - set(cfg.label_codes))
        if unknown:
            raise ValueError(f"thresholds for unknown labels {unknown}; valid: {cfg.label_codes}")
        thresholds = [
            float(upd.thresholds.get(c, t)) for c, t in zip(cfg.label_codes, thresholds, strict=True)
        ]
    elif isinstance(upd.thresholds, list):
        if len(upd.thresholds) != len(cfg.labels):
            raise ValueError(f"{len(upd.thresholds)} thresholds for {len(cfg.labels)} labels")
        thresholds = list(upd.thresholds)
    elif upd.thresholds is not None:
        thresholds = [float(upd.thresholds)] * len(cfg.labels)
    source = (
        fusion.source
        if upd.weights is None and upd.thresholds is None and upd.aggregation is None
        else f"{fusion.source}+user_config"
    )
    return Fusion(
        weights=weights,
        thresholds=_check_thresholds(thresholds),
        aggregation=upd.aggregation or fusion.aggregation,
        ensemble=fusion.ensemble,
        version=fusion.version,
        source=source,
        registered_model=fusion.registered_model,
        member_thresholds=fusion.member_thresholds,
    )


# ---- the analysis flow --------------------------------------------------------------------------------


@dataclass
class Decoded:
    """One upload after decoding: its audio and the windows the members score, or why it failed."""

    name: str
    audio: Audio | None = None
    error: str | None = None
    song: Song | None = None


class MemberUnavailableError(RuntimeError):
    """A backend cannot reach a member now: overloaded (queue full) or its replicas are gone.

    Backends raise it after their own bounded retries; ``retry_after_s`` hints when to try again.
    """

    def __init__(self, member: str, reason: str, *, retry_after_s: float | None = None) -> None:
        """Name the member and the reason."""
        super().__init__(f"member {member!r} is unavailable: {reason}")
        self.member = member
        self.retry_after_s = retry_after_s


class ScoringError(RuntimeError):
    """A member failed to score (backend down, overloaded or broken); the whole request fails (503).

    The message names the member; ``retry_after_s`` is set when the backend said when to retry.
    """

    def __init__(
        self, message: str, *, member: str | None = None, retry_after_s: float | None = None
    ) -> None:
        """The message (naming the member), the member and an optional retry hint."""
        super().__init__(message)
        self.member = member
        self.retry_after_s = retry_after_s


def place_windows(cfg: Config, name: str, audio: Audio) -> Decoded:
    """A decoded file with its windows placed (:func:`ml.inference.window_starts`), ready to score."""
    starts = window_starts(audio.duration_s, cfg.inference.window_s, cfg.inference.hop_s)
    return Decoded(name, audio=audio, song=Song(audio.wave, audio.sample_rate, starts))


def decode_upload(cfg: Config, name: str, data: bytes) -> Decoded:
    """Decode one file once, at its own rate, with the config's limits, and place its windows.

    What :func:`analyze` runs for every upload (in a worker thread), and what a batch job runs on its CPU
    workers before handing the audio to the scoring actors. Undecodable, too long, too short or empty
    audio gives a :class:`Decoded` with ``error`` (``"<code>: <message>"``), never an exception.
    """
    try:
        audio = decode(
            data,
            None,
            max_seconds=min(cfg.audio.max_seconds, cfg.serve.limits.max_seconds),
            min_seconds=cfg.audio.min_seconds,
            silence_dbfs=cfg.audio.silence_dbfs,
        )
    except AudioError as e:
        return Decoded(name, error=f"{e.code}: {e}")
    except Exception as e:
        log.warning("decoding %r failed unexpectedly: %r", name, e)
        return Decoded(name, error=f"undecodable: could not decode the audio ({type(e).__name__})")
    return place_windows(cfg, name, audio)


@dataclass
class AnalyzedFile:
    """One upload's result and the per-window scores of every member that scored it.

    Attributes:
        result: The fused :class:`FileResult` (an error result when the file failed).
        starts_s: Window starts in seconds (``None`` when the file failed).
        member_scores: Member → (W, C) sigmoid scores (label order), for every member scored: the ones
            fused and any extra ones asked for (see :func:`analyze_files`); empty when the file failed.
    """

    result: FileResult
    starts_s: np.ndarray | None = None
    member_scores: dict[str, np.ndarray] = field(default_factory=dict)


async def analyze(
    cfg: Config,
    backend: Backend,
    uploads: Sequence[tuple[str, bytes]],
    *,
    weights: Mapping[str, float],
    thresholds: Sequence[float],
    aggregation: str,
) -> list[FileResult]:
    """Decode, window, score with every positively weighted member concurrently, fuse (see module doc).

    Raises:
        ScoringError: A backend call failed.
    """
    files = await analyze_files(
        cfg, backend, uploads, weights=weights, thresholds=thresholds, aggregation=aggregation
    )
    return [f.result for f in files]


async def analyze_files(
    cfg: Config,
    backend: Backend,
    uploads: Sequence[tuple[str, bytes]],
    *,
    weights: Mapping[str, float],
    thresholds: Sequence[float],
    aggregation: str,
    also_score: Collection[str] = (),
) -> list[AnalyzedFile]:
    """:func:`analyze`, also returning every member's per-window scores.

    Args:
        cfg: The configuration (limits, windows, labels).
        backend: Scores the members; its optional ``observer`` (:class:`AnalysisObserver`) is told of
            every decode and of the results.
        uploads: ``(name, bytes)`` of each file.
        weights: Member → fusion weight; members with a positive weight are scored and fused.
        thresholds: Per-class thresholds (label order).
        aggregation: Window aggregation of the fused file scores.
        also_score: Served members to score as well although their weight is 0 (their window scores are
            returned, not fused), so a client can re-weigh without sending the audio again.

    Raises:
        ScoringError: A backend call failed.
        WeightsError: No served member has a positive weight, or ``also_score`` names one not served.
    """
    if not any(weights.get(m, 0.0) > 0 for m in backend.members):
        raise WeightsError("no served member has a positive weight")
    observer: AnalysisObserver | None = getattr(backend, "observer", None)

    def timed_decode(name: str, data: bytes) -> tuple[Decoded, float]:
        t0 = time.perf_counter()
        return decode_upload(cfg, name, data), time.perf_counter() - t0

    timed = await asyncio.gather(*(asyncio.to_thread(timed_decode, name, data) for name, data in uploads))
    if observer is not None:
        for d, seconds in timed:
            observer.decoded(d, seconds)
    files = await score_decoded_files(
        cfg,
        backend,
        [d for d, _ in timed],
        weights=weights,
        thresholds=thresholds,
        aggregation=aggregation,
        also_score=also_score,
    )
    if observer is not None:
        observer.finished([f.result for f in files])
    return files


async def score_decoded(
    cfg: Config,
    backend: Backend,
    decoded: Sequence[Decoded],
    *,
    weights: Mapping[str, float],
    thresholds: Sequence[float],
    aggregation: str,
) -> list[FileResult]:
    """Score decoded files with every positively weighted member concurrently and fuse, in input order.

    The second half of :func:`analyze` (batch jobs decode elsewhere); a file that failed to decode gets its
    error result.

    Raises:
        ScoringError: A backend call failed.
    """
    files = await score_decoded_files(
        cfg, backend, decoded, weights=weights, thresholds=thresholds, aggregation=aggregation
    )
    return [f.result for f in files]


async def score_decoded_files(
    cfg: Config,
    backend: Backend,
    decoded: Sequence[Decoded],
    *,
    weights: Mapping[str, float],
    thresholds: Sequence[float],
    aggregation: str,
    also_score: Collection[str] = (),
) -> list[AnalyzedFile]:
    """:func:`score_decoded` with every scored member's per-window scores (see :func:`analyze_files`).

    Raises:
        ScoringError: A backend call failed.
        WeightsError: No served member has a positive weight, or ``also_score`` names one not served.
    """
    active = [m for m in backend.members if weights.get(m, 0.0) > 0]
    if not active:
        raise WeightsError("no served member has a positive weight")
    unknown = sorted(set(also_score) - set(backend.members))
    if unknown:
        raise WeightsError(f"members {unknown} are not served; served: {list(backend.members)}")
    scored = [m for m in backend.members if m in active or m in also_score]
    inf = cfg.inference
    jobs = [(d, m) for d in decoded if d.song is not None for m in scored]

    async def score(d: Decoded, m: str) -> np.ndarray:
        assert d.song is not None
        try:
            return await backend.score(m, d.song)
        except MemberUnavailableError as e:
            raise ScoringError(str(e), member=e.member, retry_after_s=e.retry_after_s) from e
        except Exception as e:
            log.exception("member %r failed to score", m)
            raise ScoringError(f"member {m!r} failed to score: {type(e).__name__}: {e}", member=m) from e

    tasks = [asyncio.ensure_future(score(d, m)) for d, m in jobs]
    try:
        outputs = await asyncio.gather(*tasks)
    finally:  # one member failed (or the request timed out): stop waiting for the others
        for t in tasks:
            t.cancel()
    n_labels = len(cfg.labels)
    per_file: dict[int, dict[str, np.ndarray]] = {}
    for (d, m), out in zip(jobs, outputs, strict=True):
        arr = np.asarray(out, dtype=np.float32)
        n_windows = d.song.windows if d.song is not None else 0
        if arr.shape != (n_windows, n_labels):
            raise ScoringError(
                f"member {m!r} returned scores of shape {arr.shape}, expected {(n_windows, n_labels)}",
                member=m,
            )
        per_file.setdefault(id(d), {})[m] = arr
    files: list[AnalyzedFile] = []
    for d in decoded:
        if d.audio is None or d.song is None:
            files.append(AnalyzedFile(FileResult(file=d.name, error=d.error or "could not decode")))
            continue
        member_scores = per_file[id(d)]
        fused_in = {m: member_scores[m] for m in active}
        file_scores, fused = fuse_windows(fused_in, weights, aggregation)
        result = build_result(
            d.name,
            d.audio,
            file_scores,
            fused,
            d.song.starts_s,
            cfg.label_codes,
            thresholds,
            inf.window_s,
        )
        files.append(AnalyzedFile(result, d.song.starts_s, member_scores))
    return files


# ---- what a request runs with, and the answer it gets (HTTP, CLI, evaluation, batch jobs) ----------------


@dataclass(frozen=True)
class RunSettings:
    """The weights, thresholds and aggregation one analysis runs with, and which endpoint semantics."""

    weights: dict[str, float]
    thresholds: tuple[float, ...]
    aggregation: str
    model: str | None = None  # the member of a single-model run


def single_model_settings(
    cfg: Config, fusion: Fusion, member: str, *, threshold: float | None = None
) -> RunSettings:
    """One member alone: its aggregation and its own fitted per-class thresholds.

    Thresholds: ``threshold`` for every class if given; else the member's thresholds fitted by `mpic fuse`
    on its out-of-fold predictions (``details.member_thresholds`` of the spec); else the config's fixed
    ``inference.threshold`` (before any fusion).
    """
    if threshold is not None:
        th: tuple[float, ...] = _check_thresholds([threshold] * len(cfg.labels))
    else:
        th = fusion.member_thresholds.get(member) or (float(cfg.inference.threshold),) * len(cfg.labels)
    return RunSettings({member: 1.0}, th, cfg.members[member].aggregation, model=member)


def multi_model_settings(
    cfg: Config,
    fusion: Fusion,
    *,
    weights: Mapping[str, float] | None = None,
    threshold: float | None = None,
) -> RunSettings:
    """The fused ensemble: the spec's weights (or ``weights``), its thresholds (or one ``threshold``)."""
    w = dict(fusion.weights if weights is None else weights)
    th = (
        _check_thresholds([threshold] * len(cfg.labels))
        if threshold is not None
        else tuple(fusion.thresholds)
    )
    return RunSettings(w, th, fusion.aggregation)


def results_document(
    cfg: Config,
    fusion: Fusion,
    settings: RunSettings,
    results: Sequence[FileResult],
    *,
    segments: bool = True,
) -> dict[str, Any]:
    """The JSON answer of an analysis, the same for HTTP, `mpic predict` and batch jobs.

    Names the ensemble and version (``ensemble``), the member for a single-model run (``model``), the
    normalised weights of the members called, the thresholds and the aggregation (see
    :func:`ml.results.results_payload`).
    """
    from ml.results import results_payload

    used = {m: w for m, w in settings.weights.items() if w > 0}
    total = sum(used.values())
    return results_payload(
        cfg.label_codes,
        {m: w / total for m, w in used.items()},
        list(settings.thresholds),
        results,
        segments=segments,
        aggregation=settings.aggregation,
        ensemble=fusion.stamp(),
        model=settings.model,
    )


def _read_source(name: str, src: Any) -> tuple[bytes | None, str | None]:
    if isinstance(src, bytes | bytearray | memoryview):
        return bytes(src), None
    try:
        return Path(src).read_bytes(), None
    except OSError as e:
        return None, f"unreadable: {e.strerror or type(e).__name__}"


def analyze_stream(
    cfg: Config,
    backend: Backend,
    sources: Iterable[tuple[str, Any]],
    *,
    weights: Mapping[str, float],
    thresholds: Sequence[float],
    aggregation: str,
    chunk: int = 16,
) -> Iterator[list[FileResult]]:
    """:func:`analyze` over an iterable of ``(name, path or bytes)``, ``chunk`` files at a time.

    Yields the results of each chunk (in input order) as soon as it is scored, so a caller can write them
    before the next files are even read: at most ``chunk`` files are held in memory, whatever the length
    of ``sources``. A file that cannot be read gets an error result like an undecodable upload.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    it = iter(sources)
    while part := list(itertools.islice(it, chunk)):
        results: list[FileResult | None] = [None] * len(part)
        uploads: list[tuple[str, bytes]] = []
        where: list[int] = []
        for i, (name, src) in enumerate(part):
            data, err = _read_source(name, src)
            if data is None:
                results[i] = FileResult(file=name, error=err)
            else:
                uploads.append((name, data))
                where.append(i)
        if uploads:
            out = asyncio.run(
                analyze(
                    cfg, backend, uploads, weights=weights, thresholds=thresholds, aggregation=aggregation
                )
            )
            for i, r in zip(where, out, strict=True):
                results[i] = r
        yield [r for r in results if r is not None]


def analyze_sources(
    cfg: Config,
    backend: Backend,
    sources: Sequence[tuple[str, Any]],
    *,
    weights: Mapping[str, float],
    thresholds: Sequence[float],
    aggregation: str,
    chunk: int = 16,
) -> list[FileResult]:
    """:func:`analyze` for callers without an event loop (CLI, evaluation, batch jobs).

    ``sources`` are ``(name, path or bytes)``; a file that cannot be read gets an error result like an
    undecodable upload. Files go through :func:`analyze` ``chunk`` at a time (bounded memory; see
    :func:`analyze_stream`).
    """
    return [
        r
        for part in analyze_stream(
            cfg,
            backend,
            sources,
            weights=weights,
            thresholds=thresholds,
            aggregation=aggregation,
            chunk=chunk,
        )
        for r in part
    ]
