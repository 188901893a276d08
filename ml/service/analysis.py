"""The analysis flow: decode each upload once → place the windows → score through a backend → fuse.

:func:`analyze` (and :func:`analyze_files`, which also returns every member's window scores) is what the
HTTP API runs; :func:`decode_upload` and :func:`score_decoded` are its two halves (batch jobs decode on
other workers); :func:`analyze_stream` / :func:`analyze_sources` run it without an event loop, a chunk of
files at a time (CLI, evaluation, batch tagging).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ml.audio import Audio, AudioError, decode
from ml.config import Config
from ml.inference import FileResult, build_result, fuse_windows, window_starts
from ml.service.backend import Backend, MemberUnavailableError, Song
from ml.service.fusion import WeightsError
from ml.service.settings import RunSettings

log = logging.getLogger("mpic.service")


class AnalysisObserver(Protocol):
    """Told by :func:`analyze` what it did (metrics); found as the backend's optional ``observer``."""

    def decoded(self, decoded: Decoded, seconds: float) -> None:
        """One upload was decoded (or failed to: ``decoded.error``) in ``seconds``."""
        ...

    def finished(self, results: Sequence[FileResult]) -> None:
        """One :func:`analyze` call ended with these per-file results."""
        ...


@dataclass
class Decoded:
    """One upload after decoding: its audio and the windows the members score, or why it failed."""

    name: str
    audio: Audio | None = None
    error: str | None = None
    song: Song | None = None


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
    settings: RunSettings,
) -> list[FileResult]:
    """Decode, window, score with every positively weighted member concurrently, fuse (see module doc).

    Raises:
        ScoringError: A backend call failed.
    """
    files = await analyze_files(
        cfg,
        backend,
        uploads,
        settings=settings,
    )
    return [f.result for f in files]


async def analyze_files(
    cfg: Config,
    backend: Backend,
    uploads: Sequence[tuple[str, bytes]],
    *,
    settings: RunSettings,
    also_score: Collection[str] = (),
) -> list[AnalyzedFile]:
    """:func:`analyze`, also returning every member's per-window scores.

    Args:
        cfg: The configuration (limits, windows, labels).
        backend: Scores the members; its optional ``observer`` (:class:`AnalysisObserver`) is told of
            every decode and of the results.
        uploads: ``(name, bytes)`` of each file.
        settings: What the files run with (:class:`~ml.service.settings.RunSettings`): members with a
            positive weight are scored and fused with its window aggregation, then its per-class
            thresholds and cap on the instruments named per file (:func:`ml.metrics.decide`) decide.
        also_score: Served members to score as well although their weight is 0 (their window scores are
            returned, not fused), so a client can re-weigh without sending the audio again.

    Raises:
        ScoringError: A backend call failed.
        WeightsError: No served member has a positive weight, or ``also_score`` names one not served.
    """
    if not any(settings.weights.get(m, 0.0) > 0 for m in backend.members):
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
        settings=settings,
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
    settings: RunSettings,
) -> list[FileResult]:
    """Score decoded files with every positively weighted member concurrently and fuse, in input order.

    The second half of :func:`analyze` (batch jobs decode elsewhere); a file that failed to decode gets its
    error result.

    Raises:
        ScoringError: A backend call failed.
    """
    files = await score_decoded_files(
        cfg,
        backend,
        decoded,
        settings=settings,
    )
    return [f.result for f in files]


async def score_decoded_files(
    cfg: Config,
    backend: Backend,
    decoded: Sequence[Decoded],
    *,
    settings: RunSettings,
    also_score: Collection[str] = (),
) -> list[AnalyzedFile]:
    """:func:`score_decoded` with every scored member's per-window scores (see :func:`analyze_files`).

    Raises:
        ScoringError: A backend call failed.
        WeightsError: No served member has a positive weight, or ``also_score`` names one not served.
    """
    active = [m for m in backend.members if settings.weights.get(m, 0.0) > 0]
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
        file_scores, fused = fuse_windows(fused_in, settings.weights, settings.aggregation)
        result = build_result(
            d.name,
            d.audio,
            file_scores,
            fused,
            d.song.starts_s,
            cfg.label_codes,
            settings.thresholds,
            inf.window_s,
            max_instruments=settings.max_instruments,
        )
        files.append(AnalyzedFile(result, d.song.starts_s, member_scores))
    return files


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
    settings: RunSettings,
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
                    cfg,
                    backend,
                    uploads,
                    settings=settings,
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
    settings: RunSettings,
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
            settings=settings,
            chunk=chunk,
        )
        for r in part
    ]
