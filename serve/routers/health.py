"""``GET /healthz``: liveness of the API and of every member (503 when any member fails)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response, status

from serve.deps import State
from serve.schemas import HealthResponse, MemberHealth

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "a member is down (it says which and why)"}},
    summary="Liveness of the API and every member",
)
async def healthz(state: State, response: Response) -> HealthResponse:
    """Probe every member (``backend.health``, bounded by the health timeout); ok when all answer."""
    backend = state.backend
    probe = getattr(backend, "health", None)

    async def one(m: str) -> MemberHealth:
        if probe is None:
            return MemberHealth(status="ok")
        try:
            info = await asyncio.wait_for(probe(m), timeout=state.health_timeout_s)
            info = {**info, "gpu_ids": [str(g) for g in info.get("gpu_ids", [])]}
            return MemberHealth.model_validate({"status": "ok", **info})
        except Exception as e:
            return MemberHealth(status="error", error=f"{type(e).__name__}: {e}")

    members = dict(
        zip(backend.members, await asyncio.gather(*(one(m) for m in backend.members)), strict=True)
    )
    ok = all(h.status == "ok" for h in members.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthResponse(ok=ok, members=members)
