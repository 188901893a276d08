"""The HTTP API of mpic as a plain FastAPI app (no Ray): routes, request limits and the analysis flow.

``create_api(cfg, backend)`` builds the app. ``backend`` scores windows for the ensemble members; it is a
:class:`LocalBackend` (in-process predictors, used by tests, the web-page tests and ``python -m serve.api``)
or the Ray Serve backend of :mod:`serve.ingress` (member deployment handles). The request flow is the same
for both:

1. read the uploads, enforcing the total-bytes and file-count limits (413);
2. decode each file once in a worker thread (``ml.audio.decode``; a file that fails gets an error entry
   while the others go on), with the per-file duration limit;
3. place the windows (``window_starts``) once for all members;
4. fan out to every member with a positive weight concurrently: one ``score`` call per member and file with
   the decoded song (float32 mono at the file's rate); the member resamples, frames and scores it on its
   device, and batches the windows of concurrent songs into one forward pass;
5. fuse with ``fuse_windows`` + ``build_result`` and format as JSON or CSV (``ml.results``).

Run it without Ray for development: ``python -m serve.api --profile demo --allow-untrained``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from ml.config import Config
from ml.ensemble import EnsembleSpec, default_spec, load_spec
from ml.inference import Predictor
from ml.results import RESULTS_BASENAME, payload_to_json, results_to_csv, sanitize_filename
from ml.service import (
    Backend,
    Fusion,
    FusionBox,
    LocalBackend,
    RunSettings,
    ScoringError,
    WeightsError,
    analyze,
    fusion_from_spec,
    multi_model_settings,
    parse_weights,
    results_document,
    single_model_settings,
)

log = logging.getLogger("mpic.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_KEY_HEADER = "X-API-Key"
API_KEY_ENV = "MPIC_API_KEY"  # the key from the environment (a cluster secret) when serve.api_key is unset
FORM_OVERHEAD_BYTES = 1 << 20  # multipart boundaries and text fields on top of the file bytes
HEALTH_TIMEOUT_S = 10.0

Format = Literal["json", "csv"]
Loader = Callable[[Config, str, torch.device], Predictor]


# ---- response models (for validation-free responses and an accurate /docs) -----------------------------


class SegmentOut(BaseModel):
    """Fused scores of one analysis window."""

    start_s: float
    end_s: float
    scores: dict[str, float] = Field(description="label code → score")


class FileAnalysis(BaseModel):
    """A successfully analysed file."""

    file: str = Field(description="the uploaded name, sanitised (no directories or control characters)")
    duration_s: float
    scores: dict[str, float] = Field(description="label code → fused file score in [0, 1]")
    instruments: list[str] = Field(description="label codes whose score reaches its threshold")
    silent: bool = Field(description="the file is (nearly) silent; no instruments are reported")
    segments: list[SegmentOut] = Field(description="per-window fused scores")


class FileFailure(BaseModel):
    """A file that could not be analysed (the other files of the request still are)."""

    file: str
    error: str = Field(description="'<code>: <reason>', e.g. 'undecodable: not a readable audio file'")


class EnsembleOut(BaseModel):
    """The ensemble that produced an answer."""

    name: str = Field(description="the ensemble (config `ensembles`)")
    registered_model: str | None = Field(
        description="its registered model in the MLflow Model Registry (null: not registered)"
    )
    version: int | None = Field(description="the registered version (null: not registered)")
    source: str = Field(description="how the spec was made: tune, coordinate, equal, untrained, …")


class AnalyzeResponse(BaseModel):
    """Results of one analysis request (also the body of the ``format=json`` download)."""

    labels: list[str]
    weights: dict[str, float] = Field(description="normalised weights of the members that were called")
    thresholds: dict[str, float]
    aggregation: str
    ensemble: EnsembleOut
    model: str | None = Field(description="the member of a single-model request (null: fused)")
    results: list[FileAnalysis | FileFailure]


class LabelOut(BaseModel):
    """One instrument class."""

    code: str
    name: str


class MemberOut(BaseModel):
    """One served ensemble member."""

    name: str
    arch: str
    front_end: str
    description: str
    sample_rate: int
    aggregation: str
    weight: float


class SpecOut(BaseModel):
    """Where the fusion settings come from."""

    ensemble: str
    registered_model: str | None
    version: int | None
    source: str


class LimitsOut(BaseModel):
    """Request limits."""

    max_upload_bytes: int
    max_files: int
    max_seconds: float


class ModelsResponse(BaseModel):
    """The served members and the fusion settings of the multi-model endpoint."""

    members: list[MemberOut]
    default: str = Field(description="the member the single-model endpoint uses when none is named")
    weights: dict[str, float]
    thresholds: dict[str, float]
    aggregation: str
    labels: list[LabelOut]
    spec: SpecOut
    limits: LimitsOut


class MemberHealth(BaseModel):
    """Health of one member (one replica, when served by Ray)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "error"]
    device: str | None = None
    pid: int | None = None
    gpu_ids: list[str] = []
    error: str | None = None


class HealthResponse(BaseModel):
    """Overall and per-member health."""

    ok: bool
    members: dict[str, MemberHealth]


class ErrorResponse(BaseModel):
    """An error."""

    detail: str


# ---- the app -----------------------------------------------------------------------------------------


class _ContentLengthLimit:
    """Reject a declared body larger than the limit with a JSON 413 before anything is read.

    Bodies without a Content-Length are cut off by FastAPI's per-route ``max_body_size``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, prefix: str) -> None:
        self.app, self.max_bytes, self.prefix = app, max_bytes, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(self.prefix):
            for k, v in scope.get("headers", []):
                if k == b"content-length":
                    try:
                        size = int(v)
                    except ValueError:
                        size = -1
                    if size > self.max_bytes:
                        resp = JSONResponse(
                            {"detail": f"upload of {size} bytes exceeds the limit of {self.max_bytes} bytes"},
                            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
                            headers={"Connection": "close"},
                        )
                        await resp(scope, receive, send)
                        return
        await self.app(scope, receive, send)


@dataclass
class ApiState:
    """Everything the routes share; ``app.state.mpic``."""

    cfg: Config
    backend: Backend
    fusion: FusionBox
    static_dir: Path
    api_key: str | None = None

    @property
    def default_model(self) -> str:
        """``cfg.default_model`` when served, else the first served member."""
        d = self.cfg.default_model
        return d if d in self.backend.members else self.backend.members[0]


_RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Per-file results. With `format=json|csv` the same content comes as a download "
        f"(`Content-Disposition: attachment; filename={RESULTS_BASENAME}.json|.csv`).",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
    401: {
        "model": ErrorResponse,
        "description": "missing or wrong X-API-Key (only when a key is configured)",
    },
    413: {"model": ErrorResponse, "description": "too many files or too many bytes"},
    422: {"description": "invalid parameters (weights, threshold, format, no files)"},
    503: {
        "model": ErrorResponse,
        "description": "a member failed or is overloaded (the detail names it); retry after `Retry-After` s",
    },
    504: {"model": ErrorResponse, "description": "the analysis took longer than the request timeout"},
}


_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description=f"required when the server has a key (serve.api_key or ${API_KEY_ENV})",
)


def require_api_key(request: Request, key: Annotated[str | None, Depends(_key_header)]) -> None:
    """Dependency: the ``X-API-Key`` header must match ``serve.api_key`` / ``$MPIC_API_KEY`` (else 401)."""
    expected = request.app.state.mpic.api_key
    if expected and not (key and secrets.compare_digest(key.encode(), expected.encode())):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            f"missing or invalid {API_KEY_HEADER} header",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )


FilesParam = Annotated[list[UploadFile], File(description="audio files (WAV, FLAC, MP3, OGG, …)")]
FormatQuery = Annotated[Format | None, Query(alias="format", description="download as json or csv")]
FormatForm = Annotated[Format | None, Form(alias="format", description="same as the query parameter")]
ThresholdForm = Annotated[float | None, Form(gt=0, lt=1, description="one threshold for every class (0, 1)")]


def create_api(
    cfg: Config,
    backend: Backend,
    *,
    spec: EnsembleSpec | None = None,
    fusion: FusionBox | None = None,
    static_dir: str | Path | None = None,
) -> FastAPI:
    """Build the FastAPI app.

    Args:
        cfg: The project configuration (limits, labels, members, API key, CORS).
        backend: Scores windows; its ``members`` are the served members.
        spec: Fusion spec, loaded by the caller with :func:`ml.ensemble.load_spec` (default: the
            unregistered equal-weights spec, which answers name as ``version: null``); ignored when
            ``fusion`` is given.
        fusion: A shared :class:`FusionBox` the caller may swap later (the Serve ingress does).
        static_dir: Web page folder (default ``serve/static``): ``GET /`` serves its ``index.html``.
    """
    if not backend.members:
        raise ValueError("the backend serves no members")
    if fusion is None:
        fusion = FusionBox(fusion_from_spec(cfg, spec or default_spec(cfg), backend.members))
    api_key = cfg.serve.api_key or os.environ.get(API_KEY_ENV) or None
    state = ApiState(
        cfg=cfg,
        backend=backend,
        fusion=fusion,
        static_dir=Path(static_dir) if static_dir else STATIC_DIR,
        api_key=api_key,
    )
    limits = cfg.serve.limits
    app = FastAPI(
        title="mpic",
        version="1",
        summary="Multiple predominant instrument classification",
        description=(
            "Upload audio files (WAV, FLAC, MP3, OGG, AIFF, …) and get, for each, the probability of every "
            "instrument class, the instruments over threshold and per-window scores. `single_model` uses one "
            "ensemble member, `multi_model` fuses all members with positive weight."
        ),
    )
    app.state.mpic = state
    app.add_middleware(
        _ContentLengthLimit, max_bytes=limits.max_upload_bytes + FORM_OVERHEAD_BYTES, prefix="/analyze_files"
    )
    if cfg.serve.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.serve.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
            expose_headers=["Content-Disposition"],
        )

    protected = [Depends(require_api_key)] if api_key else []
    body_limit = limits.max_upload_bytes + FORM_OVERHEAD_BYTES

    async def read_uploads(files: list[UploadFile]) -> list[tuple[str, bytes]]:
        if len(files) > limits.max_files:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"{len(files)} files exceed the limit of {limits.max_files} per request",
            )
        out, total = [], 0
        for f in files:
            chunks = []
            while chunk := await f.read(1 << 20):
                total += len(chunk)
                if total > limits.max_upload_bytes:
                    raise HTTPException(
                        status.HTTP_413_CONTENT_TOO_LARGE,
                        f"uploads exceed the limit of {limits.max_upload_bytes} bytes "
                        f"(at file {sanitize_filename(f.filename)!r})",
                    )
                chunks.append(chunk)
            out.append((sanitize_filename(f.filename), b"".join(chunks)))
        return out

    async def run(
        uploads: list[tuple[str, bytes]], settings: RunSettings, fu: Fusion, fmt: Format | None
    ) -> Response:
        try:
            results = await asyncio.wait_for(
                analyze(
                    cfg,
                    backend,
                    uploads,
                    weights=settings.weights,
                    thresholds=settings.thresholds,
                    aggregation=settings.aggregation,
                ),
                timeout=limits.request_timeout_s,
            )
        except TimeoutError:
            raise HTTPException(
                status.HTTP_504_GATEWAY_TIMEOUT, f"analysis took longer than {limits.request_timeout_s:g} s"
            ) from None
        except ScoringError as e:
            retry = e.retry_after_s if e.retry_after_s is not None else cfg.serve.retry_after_s
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                str(e),
                headers={"Retry-After": str(max(0, math.ceil(retry)))},
            ) from None
        payload = results_document(cfg, fu, settings, results)
        if fmt is None:
            return JSONResponse(payload)
        if fmt == "csv":
            return Response(
                results_to_csv(cfg.label_codes, payload["results"], ensemble=payload["ensemble"]),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f"attachment; filename={RESULTS_BASENAME}.csv"},
            )
        return Response(
            payload_to_json(payload),
            media_type="application/json",
            headers={"Content-Disposition": f"attachment; filename={RESULTS_BASENAME}.json"},
        )

    @app.post(
        "/analyze_files/single_model",
        response_model=AnalyzeResponse,
        responses={**_RESULT_RESPONSES, 404: {"model": ErrorResponse, "description": "unknown model"}},
        dependencies=protected,
        max_body_size=body_limit,
        summary="Analyse files with one ensemble member",
        description="Thresholds: `threshold` if given, else the member's own per-class thresholds fitted by "
        "`mpic fuse` on its out-of-fold predictions (the config's `inference.threshold` before any fusion).",
    )
    async def analyze_single(
        files: FilesParam,
        model_form: Annotated[
            str | None, Form(alias="model", description="member name (GET /models)")
        ] = None,
        model_query: Annotated[
            str | None, Query(alias="model", description="member name (GET /models)")
        ] = None,
        threshold: ThresholdForm = None,
        format_form: FormatForm = None,
        format_query: FormatQuery = None,
    ) -> Response:
        name = model_form or model_query or state.default_model
        if name not in backend.members:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"unknown model {name!r}; valid models: {', '.join(backend.members)}",
            )
        uploads = await read_uploads(files)
        fu = state.fusion.current
        settings = single_model_settings(cfg, fu, name, threshold=threshold)
        return await run(uploads, settings, fu, format_query or format_form)

    @app.post(
        "/analyze_files/multi_model",
        response_model=AnalyzeResponse,
        responses=_RESULT_RESPONSES,
        dependencies=protected,
        max_body_size=body_limit,
        summary="Analyse files with the fused ensemble",
        description="Weights default to the fusion spec's; members with weight 0 are not called. Thresholds: "
        "`threshold` if given, else the spec's per-class thresholds.",
    )
    async def analyze_multi(
        files: FilesParam,
        weights: Annotated[
            str | None,
            Form(
                description='JSON object {"member": weight >= 0}; members left out get 0',
                examples=['{"res_genre": 0.7, "res_bpm": 0.3}'],
            ),
        ] = None,
        threshold: ThresholdForm = None,
        format_form: FormatForm = None,
        format_query: FormatQuery = None,
    ) -> Response:
        fu = state.fusion.current
        if weights is not None and weights.strip():
            try:
                w = parse_weights(weights, backend.members, known=cfg.members)
            except WeightsError as e:
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from None
        else:
            w = dict(fu.weights)
        uploads = await read_uploads(files)
        settings = multi_model_settings(cfg, fu, weights=w, threshold=threshold)
        return await run(uploads, settings, fu, format_query or format_form)

    @app.get(
        "/models",
        response_model=ModelsResponse,
        dependencies=protected,
        responses={401: {"model": ErrorResponse}},
        summary="Served members and fusion settings",
    )
    async def models() -> ModelsResponse:
        fu = state.fusion.current
        return ModelsResponse(
            members=[
                MemberOut(
                    name=m,
                    arch=cfg.members[m].arch,
                    front_end=cfg.members[m].front_end,
                    description=cfg.members[m].description,
                    sample_rate=backend.sample_rate(m),
                    aggregation=cfg.members[m].aggregation,
                    weight=fu.weights.get(m, 0.0),
                )
                for m in backend.members
            ],
            default=state.default_model,
            weights=dict(fu.weights),
            thresholds=dict(zip(cfg.label_codes, fu.thresholds, strict=True)),
            aggregation=fu.aggregation,
            labels=[LabelOut(code=lab.code, name=lab.name) for lab in cfg.labels],
            spec=SpecOut(
                ensemble=fu.ensemble,
                registered_model=fu.registered_model,
                version=fu.stamp()["version"],
                source=fu.source,
            ),
            limits=LimitsOut(
                max_upload_bytes=limits.max_upload_bytes,
                max_files=limits.max_files,
                max_seconds=min(limits.max_seconds, cfg.audio.max_seconds),
            ),
        )

    @app.get(
        "/healthz",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse}},
        summary="Liveness of the API and every member",
    )
    async def healthz() -> JSONResponse:
        probe = getattr(backend, "health", None)

        async def one(m: str) -> MemberHealth:
            if probe is None:
                return MemberHealth(status="ok")
            try:
                info = await asyncio.wait_for(probe(m), timeout=HEALTH_TIMEOUT_S)
                info = {**info, "gpu_ids": [str(g) for g in info.get("gpu_ids", [])]}
                return MemberHealth.model_validate({"status": "ok", **info})
            except Exception as e:
                return MemberHealth(status="error", error=f"{type(e).__name__}: {e}")

        members = dict(
            zip(backend.members, await asyncio.gather(*(one(m) for m in backend.members)), strict=True)
        )
        ok = all(h.status == "ok" for h in members.values())
        body = HealthResponse(ok=ok, members=members)
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if ok else 503)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = state.static_dir / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse(
            "<!doctype html><title>mpic</title><h1>mpic</h1>"
            '<p>The web page is not installed. See <a href="/docs">the API docs</a>.</p>'
        )

    if state.static_dir.is_dir():
        app.mount("/static", StaticFiles(directory=state.static_dir), name="static")

    @app.exception_handler(WeightsError)
    async def _weights_error(_: Request, exc: WeightsError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default handler echoes every bad value ("input"): an upload sent as a text field (e.g. a
        # part with an empty file name) would come back in the error. Say where and why, never the value.
        errors = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    return app


# ---- dev mode: uvicorn, no Ray ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m serve.api``: the API with in-process models under uvicorn (no Ray)."""
    from ml.config import load_config

    ap = argparse.ArgumentParser(prog="python -m serve.api", description=main.__doc__)
    ap.add_argument("--config")
    ap.add_argument("--profile")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--host")
    ap.add_argument("--port", type=int)
    ap.add_argument(
        "--allow-untrained", action="store_true", help="random weights for members without checkpoints"
    )
    ap.add_argument("--version", help="registered ensemble version or alias (default: mlflow.alias)")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.profile, args.overrides)
    import uvicorn

    spec = load_spec(cfg, args.version, allow_untrained=args.allow_untrained)
    backend = LocalBackend.from_config(cfg, spec=spec, allow_untrained=args.allow_untrained)
    app = create_api(cfg, backend, spec=spec)
    uvicorn.run(app, host=args.host or cfg.serve.host, port=args.port or cfg.serve.port)


if __name__ == "__main__":
    main()
