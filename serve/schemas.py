"""Response models of the HTTP API (one place for what every endpoint answers, and an accurate /docs).

Every JSON endpoint declares one of these as its ``response_model`` and returns an instance of it; the
analysis endpoints build :class:`AnalyzeResponse` from :func:`ml.service.results_document`, the one answer
shared with `mpic predict` and batch jobs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SegmentOut(BaseModel):
    """Fused scores of one analysis window."""

    start_s: float
    end_s: float
    scores: dict[str, float] = Field(description="label code → score")


class FileWindows(BaseModel):
    """Every scored member's per-window scores of one file (only with ``windows=true``)."""

    starts_s: list[float] = Field(description="window start times (s); windows last `window_s`")
    members: dict[str, list[list[float]]] = Field(
        description="member → one row per window start, one score per label (in `labels` order)"
    )


class FileAnalysis(BaseModel):
    """A successfully analysed file."""

    file: str = Field(description="the uploaded name, sanitised (no directories or control characters)")
    duration_s: float
    scores: dict[str, float] = Field(description="label code → fused file score in [0, 1]")
    instruments: list[str] = Field(description="label codes whose score reaches its threshold")
    silent: bool = Field(description="the file is (nearly) silent; no instruments are reported")
    segments: list[SegmentOut] = Field(description="per-window fused scores")
    windows: FileWindows | None = Field(
        default=None, description="per-member window scores (only with `windows=true`)"
    )


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


class WindowsInfo(BaseModel):
    """How to fuse the per-member window scores again (only with ``windows=true``).

    File scores are ``sum_m w_m · aggregate(windows_m)`` with the weights normalised over the members with
    a positive weight (``aggregate``: `mean` per class, `max` per class, or `s2`: per-class sum divided by
    its largest class); segments are ``sum_m w_m · windows_m``; a label is reported when its file score
    reaches its threshold and the file is not silent.
    """

    members: list[str] = Field(description="the members scored (also those with weight 0)")
    window_s: float = Field(description="length of each window (s)")
    aggregation: str = Field(description="aggregation of the fused file scores: mean, max or s2")
    member_weights: dict[str, float] = Field(
        description="the request's weight of every scored member, as sent (not normalised; 0: not fused)"
    )
    member_thresholds: dict[str, dict[str, float]] = Field(
        description="each member's own per-class thresholds (fitted by `mpic fuse`; the config's "
        "inference.threshold before any fusion)"
    )


class AnalyzeResponse(BaseModel):
    """Results of one analysis request (also the body of the ``format=json`` download)."""

    labels: list[str]
    weights: dict[str, float] = Field(description="normalised weights of the members that were fused")
    thresholds: dict[str, float]
    max_instruments: int | None = Field(
        default=None,
        description=(
            "at most this many instruments are named per file: of those whose score reaches the "
            "threshold, the highest-scoring (null: no cap)"
        ),
    )
    aggregation: str
    ensemble: EnsembleOut
    model: str | None = Field(description="the member of a single-model request (null: fused)")
    windows: WindowsInfo | None = Field(
        default=None, description="how to re-fuse the per-member window scores (only with `windows=true`)"
    )
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
    max_instruments: int | None = Field(
        default=None,
        description=(
            "at most this many instruments are named per file: of those whose score reaches the "
            "threshold, the highest-scoring (null: no cap)"
        ),
    )
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
