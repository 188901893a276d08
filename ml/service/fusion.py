"""Fusion settings: the ensemble spec's weights, thresholds and aggregation, and their live overrides.

:func:`fusion_from_spec` turns a spec into the :class:`Fusion` the multi-model endpoint applies;
:class:`FusionBox` holds the current one so the ingress can swap it (:class:`FusionUpdate`,
:func:`apply_fusion_update`); :func:`validate_weights` / :func:`parse_weights` check request weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ml.config import Aggregation, Config
from ml.ensemble import SPEC_FORMAT, EnsembleSpec, SpecError


class WeightsError(ValueError):
    """Request or config weights that cannot be used; the message says why."""


@dataclass(frozen=True)
class Fusion:
    """What the multi-model endpoint applies: weights over the served members, thresholds, aggregation."""

    weights: dict[str, float]
    thresholds: tuple[float, ...]
    aggregation: str
    ensemble: str = ""
    version: int | None = None
    source: str = "default"
    registered_model: str | None = None
    # per member: its own thresholds, fitted by `mpic fuse` on its out-of-fold predictions alone
    member_thresholds: dict[str, tuple[float, ...]] = field(default_factory=dict)
    max_instruments: int | None = None  # at most this many instruments named per file (the spec's)

    def stamp(self) -> dict[str, Any]:
        """What an answer says about the ensemble that produced it (see :func:`ml.ensemble.stamp`)."""
        return {
            "name": self.ensemble,
            "registered_model": self.registered_model,
            "version": self.version if self.registered_model else None,
            "source": self.source,
        }


class FusionBox:
    """A swappable :class:`Fusion` (the ingress replaces it on ``reconfigure``; requests read it once)."""

    def __init__(self, fusion: Fusion) -> None:
        """Hold ``fusion``."""
        self.current = fusion

    def set(self, fusion: Fusion) -> None:
        """Swap in new settings; in-flight requests keep the ones they started with."""
        self.current = fusion


class FusionUpdate(BaseModel):
    """The ingress ``user_config``: change fusion without restarting anything.

    Applied over the spec the app was built with: ``spec_path`` (a ``spec-v<N>.json`` file) or an inline
    ``spec`` replaces it, then ``weights`` / ``thresholds`` / ``aggregation`` override single fields. An
    empty update restores the built-in spec.
    """

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] | None = None
    thresholds: float | list[float] | dict[str, float] | None = None
    aggregation: Aggregation | None = None
    spec_path: str | None = None
    spec: dict[str, Any] | None = None


def validate_weights(raw: Any, served: Sequence[str], *, known: Collection[str] = ()) -> dict[str, float]:
    """Check a ``{member: weight}`` object; members left out get weight 0.

    Raises:
        WeightsError: not an object, unknown or unserved member, a weight that is not a finite number
            ``>= 0``, or no positive weight at all.
    """
    if not isinstance(raw, Mapping):
        raise WeightsError('weights must be a JSON object {"member": weight, ...}')
    unknown = sorted(k for k in raw if k not in served)
    if unknown:
        not_served = [k for k in unknown if k in known]
        if not_served:
            raise WeightsError(
                f"members {not_served} are not deployed in this service; served: {list(served)}"
            )
        raise WeightsError(f"unknown members {unknown}; valid: {list(served)}")
    out: dict[str, float] = {}
    for m in served:
        v = raw.get(m, 0.0)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise WeightsError(f"weight of {m!r} must be a number, got {v!r}")
        if not math.isfinite(v):
            raise WeightsError(f"weight of {m!r} must be finite, got {v}")
        if v < 0:
            raise WeightsError(f"weight of {m!r} must be >= 0, got {v}")
        out[m] = float(v)
    if not any(v > 0 for v in out.values()):
        raise WeightsError("at least one member needs a positive weight (all weights are zero)")
    return out


def parse_weights(text: str, served: Sequence[str], *, known: Collection[str] = ()) -> dict[str, float]:
    """Parse the ``weights`` form field (JSON) and validate it with :func:`validate_weights`."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise WeightsError(f"weights is not valid JSON ({e})") from None
    return validate_weights(raw, served, known=known)


def _check_thresholds(values: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(t) for t in values)
    bad = [t for t in out if not (0.0 < t < 1.0)]
    if bad:
        raise ValueError(f"thresholds must lie in (0, 1), got {bad}")
    return out


def fusion_from_spec(
    cfg: Config, spec: EnsembleSpec, served: Sequence[str], *, strict: bool = False
) -> Fusion:
    """Fusion settings of ``spec`` restricted to the ``served`` members.

    Args:
        cfg: The configuration (labels, default threshold).
        spec: The fusion spec.
        served: Members the backend serves.
        strict: Fail when the spec gives a positive weight to a member that is not served (used for live
            updates; at build time a members subset legitimately drops some).
    """
    spec.check_against(cfg)
    missing = [m for m, w in spec.weights.items() if w > 0 and m not in served]
    if strict and missing:
        raise WeightsError(
            f"the spec weights members {missing} that are not deployed; served: {list(served)}"
        )
    weights = {m: float(spec.weights.get(m, 0.0)) for m in served}
    if not any(w > 0 for w in weights.values()):
        raise WeightsError(f"the spec gives none of the served members {list(served)} a positive weight")
    thresholds = spec.thresholds or [cfg.inference.threshold] * len(cfg.labels)
    member_th: dict[str, tuple[float, ...]] = {}
    for m, th in (spec.details.get("member_thresholds") or {}).items():
        if m in served and len(th) == len(cfg.labels):
            member_th[m] = _check_thresholds(th)
    return Fusion(
        weights=weights,
        thresholds=_check_thresholds(thresholds),
        aggregation=spec.aggregation,
        ensemble=spec.ensemble,
        version=spec.version,
        source=spec.source,
        registered_model=spec.registered_model,
        member_thresholds=member_th,
        max_instruments=spec.max_instruments,
    )


def apply_fusion_update(
    cfg: Config, base: EnsembleSpec, update: Mapping[str, Any] | FusionUpdate | None, served: Sequence[str]
) -> Fusion:
    """The fusion settings for an ingress ``user_config`` (see :class:`FusionUpdate`).

    Raises:
        ValueError: A malformed update (unknown keys, bad weights/thresholds, unreadable spec).
    """
    try:
        upd = update if isinstance(update, FusionUpdate) else FusionUpdate.model_validate(dict(update or {}))
    except ValidationError as e:
        raise ValueError(f"invalid fusion user_config: {e}") from None
    spec = base
    strict = False
    if upd.spec_path:
        try:
            spec = EnsembleSpec.from_json(Path(upd.spec_path).read_text())
        except OSError as e:
            raise ValueError(f"cannot read spec_path {upd.spec_path!r}: {e}") from None
        strict = True
    elif upd.spec is not None:
        spec = EnsembleSpec.from_json(json.dumps({"format": SPEC_FORMAT, **upd.spec}))
        strict = True
    try:
        fusion = fusion_from_spec(cfg, spec, served, strict=strict)
    except SpecError as e:
        raise ValueError(str(e)) from None
    weights = fusion.weights
    if upd.weights is not None:
        weights = validate_weights(upd.weights, served, known=cfg.members)
    thresholds = list(fusion.thresholds)
    if isinstance(upd.thresholds, dict):
        unknown = sorted(set(upd.thresholds) - set(cfg.label_codes))
        if unknown:
            raise ValueError(f"thresholds for unknown labels {unknown}; valid: {cfg.label_codes}")
        thresholds = [
            float(upd.thresholds.get(c, t)) for c, t in zip(cfg.label_codes, thresholds, strict=True)
        ]
    elif isinstance(upd.thresholds, list):
        if len(upd.thresholds) != len(cfg.labels):
            raise ValueError(f"{len(upd.thresholds)} thresholds for {len(cfg.labels)} labels")
        thresholds = list(upd.thresholds)
    elif upd.thresholds is not None:
        thresholds = [float(upd.thresholds)] * len(cfg.labels)
    source = (
        fusion.source
        if upd.weights is None and upd.thresholds is None and upd.aggregation is None
        else f"{fusion.source}+user_config"
    )
    return Fusion(
        weights=weights,
        thresholds=_check_thresholds(thresholds),
        aggregation=upd.aggregation or fusion.aggregation,
        ensemble=fusion.ensemble,
        version=fusion.version,
        source=source,
        registered_model=fusion.registered_model,
        member_thresholds=fusion.member_thresholds,
        max_instruments=fusion.max_instruments,
    )
