"""Dependencies of the API routes: the shared state, the API key check and the upload reader.

The state (:class:`ApiState`) lives on ``app.state.mpic``; routes get it with ``Depends(get_state)`` (or
the :data:`State` annotation), so a router never closes over a particular app.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request, UploadFile, status
from fastapi.security import APIKeyHeader

from ml.config import Config
from ml.results import sanitize_filename
from ml.service import Backend, FusionBox

API_KEY_HEADER = "X-API-Key"
API_KEY_ENV = "MPIC_API_KEY"  # the key from the environment (a cluster secret) when serve.api_key is unset
HEALTH_TIMEOUT_S = 10.0


@dataclass
class ApiState:
    """Everything the routes share; ``app.state.mpic``."""

    cfg: Config
    backend: Backend
    fusion: FusionBox
    static_dir: Path
    api_key: str | None = None
    health_timeout_s: float = HEALTH_TIMEOUT_S

    @property
    def default_model(self) -> str:
        """``cfg.default_model`` when served, else the first served member."""
        d = self.cfg.default_model
        return d if d in self.backend.members else self.backend.members[0]


def get_state(request: Request) -> ApiState:
    """Dependency: the app's :class:`ApiState`."""
    state: ApiState = request.app.state.mpic
    return state


State = Annotated[ApiState, Depends(get_state)]

_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description=f"required when the server has a key (serve.api_key or ${API_KEY_ENV})",
)


def require_api_key(state: State, key: Annotated[str | None, Depends(_key_header)]) -> None:
    """Dependency: the ``X-API-Key`` header must match ``serve.api_key`` / ``$MPIC_API_KEY`` (else 401)."""
    expected = state.api_key
    if expected and not (key and secrets.compare_digest(key.encode(), expected.encode())):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            f"missing or invalid {API_KEY_HEADER} header",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )


def fmt_mb(n: int) -> str:
    """Bytes as megabytes for messages (``52.9 MB``)."""
    return f"{n / 1e6:.1f} MB"


def too_large(what: str, limit: int) -> str:
    """The 413 message: what was too large, the limit, and what to do about it."""
    return (
        f"{what} exceeds the limit of {limit} bytes ({fmt_mb(limit)} per request); send compressed audio "
        "instead: FLAC is lossless at about half the size of WAV, MP3 about a tenth"
    )


async def read_uploads(state: ApiState, files: list[UploadFile]) -> list[tuple[str, bytes]]:
    """Read the uploads as ``(sanitised name, bytes)``, enforcing the file-count and total-bytes limits.

    Raises:
        HTTPException: 413 with the limit that was exceeded (and the file it was reached at).
    """
    limits = state.cfg.serve.limits
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
                    too_large(
                        f"the upload (at file {sanitize_filename(f.filename)!r})", limits.max_upload_bytes
                    ),
                )
            chunks.append(chunk)
        out.append((sanitize_filename(f.filename), b"".join(chunks)))
    return out
