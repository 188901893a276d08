"""What a request runs with (:class:`RunSettings`) and the answer it gets (:func:`results_document`).

The same for HTTP, the CLI, evaluation and batch jobs: a single member with its own fitted thresholds
(:func:`single_model_settings`) or the fused ensemble (:func:`multi_model_settings`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ml.config import Config
from ml.inference import FileResult
from ml.service.fusion import Fusion, _check_thresholds


@dataclass(frozen=True)
class RunSettings:
    """The weights, thresholds and aggregation one analysis runs with, and which endpoint semantics."""

    weights: dict[str, float]
    thresholds: tuple[float, ...]
    aggregation: str
    model: str | None = None  # the member of a single-model run
    max_instruments: int | None = None  # the spec's cap on the instruments named per file


def single_model_settings(
    cfg: Config, fusion: Fusion, member: str, *, threshold: float | None = None
) -> RunSettings:
    """One member alone: its aggregation and its own fitted per-class thresholds.

    Thresholds: ``threshold`` for every class if given; else the member's thresholds fitted by `mpic fuse`
    on its out-of-fold predictions (``details.member_thresholds`` of the spec); else the config's fixed
    ``inference.threshold`` (before any fusion).
    """
    if threshold is not None:
        th: tuple[float, ...] = _check_thresholds([threshold] * len(cfg.labels))
    else:
        th = fusion.member_thresholds.get(member) or (float(cfg.inference.threshold),) * len(cfg.labels)
    return RunSettings(
        {member: 1.0},
        th,
        cfg.members[member].aggregation,
        model=member,
        max_instruments=fusion.max_instruments,
    )


def multi_model_settings(
    cfg: Config,
    fusion: Fusion,
    *,
    weights: Mapping[str, float] | None = None,
    threshold: float | None = None,
) -> RunSettings:
    """The fused ensemble: the spec's weights (or ``weights``), its thresholds (or one ``threshold``)."""
    w = dict(fusion.weights if weights is None else weights)
    th = (
        _check_thresholds([threshold] * len(cfg.labels))
        if threshold is not None
        else tuple(fusion.thresholds)
    )
    return RunSettings(w, th, fusion.aggregation, max_instruments=fusion.max_instruments)


def results_document(
    cfg: Config,
    fusion: Fusion,
    settings: RunSettings,
    results: Sequence[FileResult],
    *,
    segments: bool = True,
) -> dict[str, Any]:
    """The JSON answer of an analysis, the same for HTTP, `mpic predict` and batch jobs.

    Names the ensemble and version (``ensemble``), the member for a single-model run (``model``), the
    normalised weights of the members called, the thresholds, the cap on instruments named and the
    aggregation (see
    :func:`ml.results.results_payload`).
    """
    from ml.results import results_payload

    used = {m: w for m, w in settings.weights.items() if w > 0}
    total = sum(used.values())
    return results_payload(
        cfg.label_codes,
        {m: w / total for m, w in used.items()},
        list(settings.thresholds),
        results,
        segments=segments,
        aggregation=settings.aggregation,
        ensemble=fusion.stamp(),
        model=settings.model,
        max_instruments=settings.max_instruments,
    )
