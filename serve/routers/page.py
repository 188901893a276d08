"""The web page (``GET /``, ``/static``) and the API documentation pages (``/docs``, ``/redoc``).

Swagger UI and ReDoc run from assets shipped by the ``fastapi-offline`` package (served under
``/docs-assets``), never from a CDN, so the documentation renders on a machine without internet.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from serve.deps import State

DOCS_ASSETS = "/docs-assets"
FAVICON = "/static/favicon.svg"
# The docs pages may load nothing from elsewhere: ReDoc's sidebar badge would fetch its logo from a CDN.
# Inline script/style: FastAPI's pages start Swagger UI / ReDoc with an inline script.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)

router = APIRouter(include_in_schema=False)


def docs_assets_dir() -> Path:
    """Folder of ``swagger-ui-bundle.js``, ``swagger-ui.css`` and ``redoc.standalone.js``."""
    return Path(str(files("fastapi_offline") / "static"))


@router.get("/")
async def index(state: State) -> Response:
    """The web page, or a pointer to the API docs when it is not installed."""
    page = state.static_dir / "index.html"
    if page.is_file():
        return FileResponse(page, media_type="text/html")
    return HTMLResponse(
        "<!doctype html><title>mpic</title><h1>mpic</h1>"
        '<p>The web page is not installed. See <a href="/docs">the API docs</a>.</p>'
    )


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over ``/openapi.json`` with local assets (a CSP keeps it from loading anything else)."""
    root = request.scope.get("root_path", "")
    app = request.app
    html = get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}{app.swagger_ui_oauth2_redirect_url}",
        swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{FAVICON}",
        swagger_ui_parameters=app.swagger_ui_parameters,
    )
    html.headers["Content-Security-Policy"] = DOCS_CSP
    return html


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    """Swagger UI's OAuth2 redirect page (FastAPI's default path)."""
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc over ``/openapi.json`` with local assets, no web fonts, and nothing from elsewhere (CSP)."""
    root = request.scope.get("root_path", "")
    app = request.app
    html = get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{FAVICON}",
        with_google_fonts=False,
    )
    html.headers["Content-Security-Policy"] = DOCS_CSP
    return html


def install_page(app: FastAPI, static_dir: Path) -> None:
    """Add the page and docs routes and mount their static folders on ``app``."""
    app.include_router(router)
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_dir()), name="docs-assets")
    if static_dir.is_dir():
        app.mount("/static", StaticFiles(directory=static_dir), name="static")
