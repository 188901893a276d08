"""The ensemble spec: which members (and which trained versions), their weights, aggregation, thresholds.

Training writes none; `mpic fuse` writes one (versioned, and registered in MLflow); Serve and `mpic
evaluate` read the newest. Before any fusion ran, :func:`default_spec` gives equal weights and the
config's fixed threshold, so a freshly trained ensemble can already be served.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ml.config import Config

SPEC_FORMAT = "mpic-ensemble/1"


class SpecError(ValueError):
    """An ensemble spec that is malformed or does not fit the config it is used with."""


@dataclass
class MemberRef:
    """Where one member's fold models come from."""

    checkpoints: list[str] = field(default_factory=list)
    registered_model: str | None = None
    version: str | None = None


@dataclass
class EnsembleSpec:
    """A small, versioned, JSON document describing a fused ensemble."""

    ensemble: str
    labels: list[str]
    members: dict[str, MemberRef]
    weights: dict[str, float]
    aggregation: str = "mean"
    thresholds: list[float] = field(default_factory=list)
    objective: str = "macro_f1"
    value: float | None = None
    version: int = 0
    created: float = field(default_factory=time.time)
    source: str = "default"
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Validate weights and thresholds against members and labels."""
        unknown = sorted(set(self.weights) - set(self.members))
        if unknown:
            raise SpecError(f"weights for unknown members {unknown}; members: {sorted(self.members)}")
        if any(not (w >= 0) for w in self.weights.values()):
            raise SpecError(f"weights must be >= 0: {self.weights}")
        if not any(w > 0 for w in self.weights.values()):
            raise SpecError("at least one member needs a positive weight")
        if self.thresholds and len(self.thresholds) != len(self.labels):
            raise SpecError(f"{len(self.thresholds)} thresholds for {len(self.labels)} labels")

    def to_json(self) -> str:
        """Serialise (stable key order, so equal specs give equal bytes)."""
        return json.dumps({"format": SPEC_FORMAT, **asdict(self)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EnsembleSpec:
        """Parse a spec written by :meth:`to_json`."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"not JSON: {e}") from None
        if raw.pop("format", None) != SPEC_FORMAT:
            raise SpecError(f"not an ensemble spec (expected format {SPEC_FORMAT})")
        try:
            raw["members"] = {k: MemberRef(**v) for k, v in raw["members"].items()}
            return cls(**raw)
        except (TypeError, KeyError) as e:
            raise SpecError(f"malformed ensemble spec: {e}") from None

    def check_against(self, cfg: Config) -> None:
        """Fail clearly when the spec's labels are not the config's."""
        if self.labels != cfg.label_codes:
            raise SpecError(f"spec labels {self.labels} differ from config labels {cfg.label_codes}")


def spec_dir(cfg: Config) -> Path:
    """Folder holding the versioned specs of the selected ensemble."""
    return cfg.runs_dir / "ensembles" / cfg.ensemble


def save_spec(cfg: Config, spec: EnsembleSpec) -> Path:
    """Write ``spec`` as the next version (``spec-v<N>.json``) and return its path."""
    folder = spec_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    spec.version = max((v for v, _ in _versions(folder)), default=0) + 1
    path = folder / f"spec-v{spec.version}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(spec.to_json())
    tmp.replace(path)
    return path


def _versions(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for p in folder.glob("spec-v*.json"):
        m = re.fullmatch(r"spec-v(\d+)\.json", p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_spec(cfg: Config) -> EnsembleSpec | None:
    """The newest saved spec of the selected ensemble, or None."""
    versions = _versions(spec_dir(cfg))
    if not versions:
        return None
    spec = EnsembleSpec.from_json(versions[-1][1].read_text())
    spec.check_against(cfg)
    return spec


def default_spec(cfg: Config, checkpoints: dict[str, list[str]] | None = None) -> EnsembleSpec:
    """Equal weights over the selected ensemble, the config's fixed threshold and aggregation."""
    members = cfg.ensemble_members
    aggs = {cfg.members[m].aggregation for m in members}
    return EnsembleSpec(
        ensemble=cfg.ensemble,
        labels=cfg.label_codes,
        members={m: MemberRef(checkpoints=list((checkpoints or {}).get(m, []))) for m in members},
        weights={m: 1.0 for m in members},
        aggregation=aggs.pop() if len(aggs) == 1 else "mean",
        thresholds=[cfg.inference.threshold] * len(cfg.labels),
        source="default",
    )


def resolve_spec(cfg: Config) -> EnsembleSpec:
    """The spec to serve/evaluate: the newest fused one, else the default."""
    return latest_spec(cfg) or default_spec(cfg)
