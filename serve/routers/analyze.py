"""``POST /analyze_files/single_model`` and ``/multi_model``: upload, analyse, answer (JSON or a download).

The flow (:func:`ml.service.analyze_files`): decode each upload once, place the windows, score with every
member concurrently through the backend, fuse, build the results. With ``windows=true`` the answer also
carries every scored member's per-window scores and what is needed to fuse them again
(:class:`~serve.schemas.WindowsInfo`): the multi-model endpoint then scores every served member, also those
with weight 0, so a client (the web page) can re-weigh and re-threshold without uploading again.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile, status
from fastapi.responses import Response

from ml.results import RESULTS_BASENAME, payload_to_json, results_to_csv
from ml.service import (
    AnalyzedFile,
    Fusion,
    RunSettings,
    ScoringError,
    WeightsError,
    analyze_files,
    multi_model_settings,
    parse_weights,
    results_document,
    single_model_settings,
)
from serve.deps import ApiState, State, read_uploads
from serve.schemas import AnalyzeResponse, ErrorResponse

MULTI_PATH = "/analyze_files/multi_model"
SINGLE_PATH = "/analyze_files/single_model"
WINDOW_DIGITS = 6  # member window scores: finer than the 4 digits of fused scores, so re-fusing matches

Format = Literal["json", "csv"]

RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
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

FilesParam = Annotated[list[UploadFile], File(description="audio files (WAV, FLAC, MP3, OGG, …)")]
FormatQuery = Annotated[Format | None, Query(alias="format", description="download as json or csv")]
FormatForm = Annotated[Format | None, Form(alias="format", description="same as the query parameter")]
ThresholdForm = Annotated[float | None, Form(gt=0, lt=1, description="one threshold for every class (0, 1)")]
_WINDOWS_DOC = (
    "also return every member's per-window scores (`results[].windows`) and how to fuse them "
    "(`windows`); the multi-model endpoint then scores every served member, also those with weight 0"
)
WindowsQuery = Annotated[bool | None, Query(alias="windows", description=_WINDOWS_DOC)]
WindowsForm = Annotated[bool | None, Form(alias="windows", description="same as the query parameter")]

router = APIRouter(tags=["analysis"])


def _window_rows(scores: Any) -> list[list[float]]:
    return [[round(float(v), WINDOW_DIGITS) for v in row] for row in scores]


def _add_windows(
    state: ApiState, fusion: Fusion, settings: RunSettings, payload: dict[str, Any], files: list[AnalyzedFile]
) -> None:
    """Put the per-member window scores into ``payload`` (results in the order of ``files``)."""
    cfg = state.cfg
    scored = [m for m in state.backend.members if any(m in f.member_scores for f in files)]
    if not scored:  # no file decoded: the members that would have been scored
        scored = [m for m in state.backend.members if m in settings.weights]
    payload["windows"] = {
        "members": scored,
        "window_s": cfg.inference.window_s,
        "aggregation": settings.aggregation,
        "member_weights": {m: float(settings.weights.get(m, 0.0)) for m in scored},
        "member_thresholds": {
            m: dict(
                zip(
                    cfg.label_codes,
                    fusion.member_thresholds.get(m) or (cfg.inference.threshold,) * len(cfg.labels),
                    strict=True,
                )
            )
            for m in scored
        },
    }
    for entry, f in zip(payload["results"], files, strict=True):
        if f.starts_s is None:
            continue
        entry["windows"] = {
            "starts_s": [round(float(s), 3) for s in f.starts_s],
            "members": {m: _window_rows(f.member_scores[m]) for m in scored if m in f.member_scores},
        }


async def _run(
    state: ApiState,
    uploads: list[tuple[str, bytes]],
    settings: RunSettings,
    fusion: Fusion,
    fmt: Format | None,
    *,
    windows: bool,
) -> AnalyzeResponse | Response:
    cfg, limits = state.cfg, state.cfg.serve.limits
    also = [m for m in state.backend.members if m in settings.weights] if windows else []
    try:
        files = await asyncio.wait_for(
            analyze_files(
                cfg,
                state.backend,
                uploads,
                settings=settings,
                also_score=also,
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
    payload = results_document(cfg, fusion, settings, [f.result for f in files])
    if windows:
        _add_windows(state, fusion, settings, payload, files)
    if fmt == "csv":
        return Response(
            results_to_csv(cfg.label_codes, payload["results"], ensemble=payload["ensemble"]),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f"attachment; filename={RESULTS_BASENAME}.csv"},
        )
    if fmt == "json":
        return Response(
            payload_to_json(payload),
            media_type="application/json",
            headers={"Content-Disposition": f"attachment; filename={RESULTS_BASENAME}.json"},
        )
    return AnalyzeResponse.model_validate(payload)


@router.post(
    SINGLE_PATH,
    response_model=AnalyzeResponse,
    response_model_exclude_unset=True,  # `windows` only when asked for
    responses={**RESULT_RESPONSES, 404: {"model": ErrorResponse, "description": "unknown model"}},
    summary="Analyse files with one ensemble member",
    description="Thresholds: `threshold` if given, else the member's own per-class thresholds fitted by "
    "`mpic fuse` on its out-of-fold predictions (the config's `inference.threshold` before any fusion).",
)
async def analyze_single(
    state: State,
    files: FilesParam,
    model_form: Annotated[str | None, Form(alias="model", description="member name (GET /models)")] = None,
    model_query: Annotated[str | None, Query(alias="model", description="member name (GET /models)")] = None,
    threshold: ThresholdForm = None,
    format_form: FormatForm = None,
    format_query: FormatQuery = None,
    windows_form: WindowsForm = None,
    windows_query: WindowsQuery = None,
) -> AnalyzeResponse | Response:
    """One member alone, with its own aggregation and thresholds."""
    members = state.backend.members
    name = model_form or model_query or state.default_model
    if name not in members:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"unknown model {name!r}; valid models: {', '.join(members)}"
        )
    uploads = await read_uploads(state, files)
    fusion = state.fusion.current
    settings = single_model_settings(state.cfg, fusion, name, threshold=threshold)
    return await _run(
        state,
        uploads,
        settings,
        fusion,
        format_query or format_form,
        windows=bool(windows_query or windows_form),
    )


@router.post(
    MULTI_PATH,
    response_model=AnalyzeResponse,
    response_model_exclude_unset=True,  # `windows` only when asked for
    responses=RESULT_RESPONSES,
    summary="Analyse files with the fused ensemble",
    description="Weights default to the fusion spec's; members with weight 0 are not called (with "
    "`windows=true` they are scored but not fused). Thresholds: `threshold` if given, else the spec's "
    "per-class thresholds.",
)
async def analyze_multi(
    state: State,
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
    windows_form: WindowsForm = None,
    windows_query: WindowsQuery = None,
) -> AnalyzeResponse | Response:
    """The fused ensemble, with the spec's or the request's weights."""
    fusion = state.fusion.current
    cfg, members = state.cfg, state.backend.members
    if weights is not None and weights.strip():
        try:
            w = parse_weights(weights, members, known=cfg.members)
        except WeightsError as e:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from None
    else:
        w = dict(fusion.weights)
    uploads = await read_uploads(state, files)
    settings = multi_model_settings(cfg, fusion, weights=w, threshold=threshold)
    want_windows = bool(windows_query or windows_form)
    if want_windows:  # score every served member: the client may raise a weight from 0 later
        settings = replace(settings, weights={m: settings.weights.get(m, 0.0) for m in members})
    return await _run(state, uploads, settings, fusion, format_query or format_form, windows=want_windows)
