"""Application metrics of the Serve app, exported on Ray's Prometheus endpoint through ``ray.serve.metrics``.

Ray exports application metrics of every replica through the metrics agent of its node (the endpoint
``http://<node>:<metrics_export_port>/metrics``, the port of ``ray start --metrics-export-port``; Ray
prefixes the names with ``ray_`` and counters get ``_total``) and Serve adds the ``application``,
``deployment`` and ``replica`` tags. docs/observability.md lists them with example PromQL queries.

The ingress records (:class:`IngressMetrics`):

* ``mpic_audio_seconds`` (counter): seconds of audio analysed (files decoded and scored);
* ``mpic_files`` (counter, ``outcome`` = ``ok`` | ``silent`` | ``failed``): files analysed;
* ``mpic_files_failed`` (counter, ``reason``: the error code, e.g. ``undecodable``, ``too_long``): files that
  got an error entry instead of tags;
* ``mpic_decode_seconds`` (histogram, ``outcome`` = ``ok`` | ``failed``): decoding one upload;
* ``mpic_member_latency_seconds`` (histogram, ``member``): one song's round trip from the ingress to a member
  deployment (queueing, transfer, batching and scoring);
* ``mpic_rejections`` (counter, ``code``, ``route``): requests answered with a 4xx/5xx status (413 too large,
  422 bad input, 401 no key, 503 a member overloaded or down, 504 timeout);
* ``mpic_requests_in_flight`` (gauge): analysis requests being processed by this ingress replica.

Each member replica records (:class:`MemberMetrics`) ``mpic_member_batch_seconds`` (histogram: one
``@serve.batch`` forward, resampling to scores) and ``mpic_member_batch_songs`` (histogram: songs per batch),
tagged with ``member`` and ``device``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ml.inference import FileResult
from ml.service import Decoded

LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
BATCH_BOUNDARIES = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
ANALYSIS_PREFIX = "/analyze_files"


def _keys(*names: str) -> Any:
    # ray.serve.metrics annotates tag_keys as Tuple[str] (exactly one key); any tuple of keys works
    return names


def error_reason(error: str) -> str:
    """The code of an error entry (``"too_long: …"`` → ``too_long``), a bounded set of tag values."""
    code = error.split(":", 1)[0].strip()
    return code if code.replace("_", "").isalnum() and len(code) <= 32 else "other"


class IngressMetrics:
    """The ingress's metrics; also the :class:`ml.service.AnalysisObserver` of its backend."""

    def __init__(self) -> None:
        """Create the metrics (inside a Serve replica they carry its application/deployment/replica tags)."""
        self.audio_seconds = Counter(
            "mpic_audio_seconds", description="Seconds of audio analysed (files decoded and scored)."
        )
        self.files = Counter(
            "mpic_files",
            description="Files analysed, by outcome (ok, silent, failed).",
            tag_keys=("outcome",),
        )
        self.files_failed = Counter(
            "mpic_files_failed",
            description="Files answered with an error entry, by error code.",
            tag_keys=("reason",),
        )
        self.decode_seconds = Histogram(
            "mpic_decode_seconds",
            description="Time to decode one upload.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("outcome",),
        )
        self.member_latency = Histogram(
            "mpic_member_latency_seconds",
            description="One song's round trip from the ingress to a member deployment.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("member",),
        )
        self.rejections = Counter(
            "mpic_rejections",
            description="Requests answered with a 4xx/5xx status, by status code and route.",
            tag_keys=_keys("code", "route"),
        )
        self.in_flight = Gauge(
            "mpic_requests_in_flight", description="Analysis requests in progress on this ingress replica."
        )
        self._in_flight = 0
        self.in_flight.set(0)

    # ---- ml.service.AnalysisObserver ----
    def decoded(self, decoded: Decoded, seconds: float) -> None:
        """One upload decoded (or not) in ``seconds``."""
        self.decode_seconds.observe(seconds, tags={"outcome": "ok" if decoded.error is None else "failed"})

    def finished(self, results: Sequence[FileResult]) -> None:
        """A request's files are analysed: count audio seconds and outcomes."""
        seconds = 0.0
        for r in results:
            if r.error is not None:
                self.files.inc(tags={"outcome": "failed"})
                self.files_failed.inc(tags={"reason": error_reason(r.error)})
            else:
                self.files.inc(tags={"outcome": "silent" if r.silent else "ok"})
                seconds += float(r.duration_s or 0.0)
        if seconds > 0:
            self.audio_seconds.inc(seconds)

    def member_scored(self, member: str, seconds: float) -> None:
        """One song came back from ``member`` after ``seconds``."""
        self.member_latency.observe(seconds, tags={"member": member})

    # ---- HTTP ----
    def request_started(self) -> None:
        """An analysis request started."""
        self._in_flight += 1
        self.in_flight.set(self._in_flight)

    def request_ended(self, path: str, code: int) -> None:
        """A request ended with status ``code``."""
        if path.startswith(ANALYSIS_PREFIX):
            self._in_flight -= 1
            self.in_flight.set(self._in_flight)
        if code >= 400:
            self.rejections.inc(tags={"code": str(code), "route": route_of(path)})


def route_of(path: str) -> str:
    """A bounded route tag: the API's routes by name, everything else ``other`` (no tag per URL typed)."""
    for route in (f"{ANALYSIS_PREFIX}/single_model", f"{ANALYSIS_PREFIX}/multi_model", "/models", "/healthz"):
        if path == route:
            return route
    return "/" if path == "/" else "other"


class MetricsMiddleware:
    """Pure ASGI middleware: request status codes and requests in flight into :class:`IngressMetrics`.

    Outermost, so it also sees the answers other middleware gives (413 of the body-size limit, CORS).
    """

    def __init__(self, app: ASGIApp, metrics: IngressMetrics) -> None:
        """Wrap ``app``."""
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, noting the status of the answer."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        code = 500  # an exception that escapes the app is answered 500 by the server
        if path.startswith(ANALYSIS_PREFIX):
            self.metrics.request_started()

        async def send_noting(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting)
        finally:
            self.metrics.request_ended(path, code)


def instrument(app: Any, metrics: IngressMetrics) -> Any:
    """Add :class:`MetricsMiddleware` (outermost) to a FastAPI ``app``; return it."""
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


class MemberMetrics:
    """A member replica's metrics: time and size of each ``@serve.batch`` forward."""

    def __init__(self, member: str, device: str) -> None:
        """Create the metrics, tagged with the member and its device type (``cpu``, ``cuda``)."""
        self.batch_seconds = Histogram(
            "mpic_member_batch_seconds",
            description="One batched forward of a member replica (resample, frame, score).",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=_keys("member", "device"),
        )
        self.batch_songs = Histogram(
            "mpic_member_batch_songs",
            description="Songs per batched forward of a member replica.",
            boundaries=BATCH_BOUNDARIES,
            tag_keys=_keys("member", "device"),
        )
        # a fresh dict each: Serve adds its own tags to the dict it is given, and refuses them given back
        self.batch_seconds.set_default_tags({"member": member, "device": device})
        self.batch_songs.set_default_tags({"member": member, "device": device})

    def batch(self, songs: int, seconds: float) -> None:
        """One forward of ``songs`` songs took ``seconds``."""
        self.batch_seconds.observe(seconds)
        self.batch_songs.observe(songs)
