"""The HTTP API of mpic as a plain FastAPI app (no Ray): ``create_api`` assembles routers and dependencies.

``create_api(cfg, backend)`` builds the app. ``backend`` scores windows for the ensemble members; it is a
:class:`~ml.service.LocalBackend` (in-process predictors, used by tests, the web-page tests and
``python -m serve.api``) or the Ray Serve backend of :mod:`serve.ingress` (member deployment handles).

Where things are:

* :mod:`serve.schemas` — the pydantic response models (every endpoint returns one; /docs shows them);
* :mod:`serve.deps` — :class:`~serve.deps.ApiState` (``app.state.mpic``), the API-key dependency, the
  upload reader with its limits;
* :mod:`serve.routers.analyze` — ``POST /analyze_files/{single,multi}_model`` (the analysis flow is
  :func:`ml.service.analyze_files`: decode once, window, fan out to the members, fuse, build results);
* :mod:`serve.routers.models`, :mod:`serve.routers.health` — ``GET /models``, ``GET /healthz``;
* :mod:`serve.routers.page` — the web page (``/``, ``/static``) and Swagger UI / ReDoc with local assets;
* :mod:`serve.middleware` — the declared-body-size guard (413 before anything is read).

Run it without Ray for development: ``python -m serve.api --profile demo --allow-untrained``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from ml.config import Config
from ml.ensemble import EnsembleSpec, default_spec, load_spec
from ml.service import Backend, FusionBox, LocalBackend, WeightsError, fusion_from_spec
from serve.deps import API_KEY_ENV, API_KEY_HEADER, HEALTH_TIMEOUT_S, ApiState, require_api_key
from serve.middleware import ContentLengthLimit
from serve.routers import analyze, health, models, page
from serve.schemas import AnalyzeResponse, HealthResponse, ModelsResponse

__all__ = [
    "API_KEY_ENV",
    "API_KEY_HEADER",
    "FORM_OVERHEAD_BYTES",
    "HEALTH_TIMEOUT_S",
    "STATIC_DIR",
    "AnalyzeResponse",
    "ApiState",
    "HealthResponse",
    "ModelsResponse",
    "create_api",
    "main",
    "require_api_key",
]

STATIC_DIR = Path(__file__).resolve().parent / "static"
FORM_OVERHEAD_BYTES = 1 << 20  # multipart boundaries and text fields on top of the file bytes


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
        health_timeout_s=HEALTH_TIMEOUT_S,
    )
    limits = cfg.serve.limits
    app = FastAPI(
        title="mpic",
        version="1",
        summary="Multiple predominant instrument classification",
        description=(
            "Upload audio files (WAV, FLAC, MP3, OGG, AIFF, …) and get, for each, the probability of every "
            "instrument class, the instruments over threshold and per-window scores. `single_model` uses one "
            "ensemble member, `multi_model` fuses all members with positive weight; `windows=true` adds "
            "every member's per-window scores so a client can re-weigh without uploading again."
        ),
        docs_url=None,  # served by serve.routers.page with local assets (no CDN)
        redoc_url=None,
    )
    app.state.mpic = state
    body_limit = limits.max_upload_bytes + FORM_OVERHEAD_BYTES
    app.add_middleware(ContentLengthLimit, max_bytes=body_limit, prefix="/analyze_files")
    if cfg.serve.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.serve.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
            expose_headers=["Content-Disposition"],
        )

    protected = [Depends(require_api_key)] if api_key else []
    app.include_router(analyze.router, dependencies=protected, max_body_size=body_limit)
    app.include_router(models.router, dependencies=protected)
    app.include_router(health.router)
    page.install_page(app, state.static_dir)

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
    ap.add_argument("--config", help="config file (default: config.yml)")
    ap.add_argument("--profile", help="config profile, e.g. smoke or demo")
    ap.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    ap.add_argument("--host", help="listen address (default: serve.host)")
    ap.add_argument("--port", type=int, help="listen port (default: serve.port)")
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
