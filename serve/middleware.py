"""ASGI middleware of the API."""

from __future__ import annotations

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from serve.deps import too_large


class ContentLengthLimit:
    """Reject a declared body larger than the limit with a JSON 413 before anything is read.

    Bodies without a Content-Length are cut off by FastAPI's per-route ``max_body_size``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, prefix: str) -> None:
        """Guard the routes under ``prefix`` of ``app``."""
        self.app, self.max_bytes, self.prefix = app, max_bytes, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 413 for an oversized declared body, else pass through."""
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(self.prefix):
            for k, v in scope.get("headers", []):
                if k == b"content-length":
                    try:
                        size = int(v)
                    except ValueError:
                        size = -1
                    if size > self.max_bytes:
                        resp = JSONResponse(
                            {"detail": too_large(f"the upload of {size} bytes", self.max_bytes)},
                            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
                            headers={"Connection": "close"},
                        )
                        await resp(scope, receive, send)
                        return
        await self.app(scope, receive, send)
