"""``GET /models``: the served members and the fusion settings of the multi-model endpoint."""

from __future__ import annotations

from fastapi import APIRouter

from serve.deps import State
from serve.schemas import ErrorResponse, LabelOut, LimitsOut, MemberOut, ModelsResponse, SpecOut

router = APIRouter(tags=["models"])


@router.get(
    "/models",
    response_model=ModelsResponse,
    responses={401: {"model": ErrorResponse}},
    summary="Served members and fusion settings",
)
async def models(state: State) -> ModelsResponse:
    """Members (architecture, front end, rate, weight), labels, thresholds, the spec and the limits."""
    cfg, backend, fu = state.cfg, state.backend, state.fusion.current
    limits = cfg.serve.limits
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
        max_instruments=fu.max_instruments,
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
