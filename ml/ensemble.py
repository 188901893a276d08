"""The ensemble spec: which members (and which trained versions), their weights, aggregation, thresholds.

Training writes none; `mpic fuse` registers one as a version of the registered model
``mpic-<namespace>-ensemble-<ensemble>`` in the MLflow Model Registry and applies the champion alias (a
copy is kept as ``runs_dir/ensembles/<ensemble>/spec-v<N>.json``). Serve, `mpic evaluate`, `mpic predict`
and batch jobs load it through ONE loader, :func:`load_spec`: by alias (``champion`` by default) or
version number, never "the newest file". :func:`stamp` is what every answer says about the spec it used.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ml.config import Config

EQUAL = "equal"
"""The spec reference of the untuned baseline: equal weights, the config's fixed threshold."""

SPEC_FORMAT = "mpic-ensemble/1"


class SpecError(ValueError):
    """An ensemble spec that is malformed or does not fit the config it is used with."""


class SpecNotFoundError(LookupError):
    """No registered ensemble spec answers the reference (alias, version); the message says what to run."""


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
    # at most this many instruments named per file (the highest-scoring of those over their thresholds)
    max_instruments: int | None = None
    objective: str = "macro_f1"
    value: float | None = None
    version: int = 0
    created: float = field(default_factory=time.time)
    source: str = "default"
    details: dict[str, Any] = field(default_factory=dict)
    registered_model: str | None = None  # set by the loader: the registry name ``version`` belongs to

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
        if self.max_instruments is not None and not (
            isinstance(self.max_instruments, int) and self.max_instruments >= 1
        ):
            raise SpecError(
                f"max_instruments must be a whole number >= 1 or null, got {self.max_instruments!r}"
            )

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
    """Folder holding the local copies of the selected ensemble's specs (inside the namespace's runs_dir)."""
    return cfg.runs_dir / "ensembles" / cfg.ensemble


def save_spec(cfg: Config, spec: EnsembleSpec, version: int | None = None) -> Path:
    """Write ``spec`` as ``spec-v<version>.json`` (default: the next local number) and return its path.

    The fusion job passes the registry version, so the file and the registered version share a number.
    The same spec already there is kept; a different one (left by an MLflow store that was since
    replaced) is moved aside to ``spec-v<N>.<time>.replaced.json``, never overwritten.
    """
    folder = spec_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    spec.version = version if version is not None else max((v for v, _ in _versions(folder)), default=0) + 1
    path = folder / f"spec-v{spec.version}.json"
    text = spec.to_json()
    if path.exists():
        old = path.read_text()
        if _body(old) == _body(text):
            return path
        path.rename(path.with_name(f"spec-v{spec.version}.{int(time.time())}.replaced.json"))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _body(text: str) -> Any:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        return None
    raw.pop("created", None)
    return raw


def _versions(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for p in folder.glob("spec-v*.json"):
        m = re.fullmatch(r"spec-v(\d+)\.json", p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


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
        max_instruments=cfg.fusion.max_instruments,
        source="default",
    )


def equal_spec(cfg: Config, *, allow_untrained: bool = False) -> EnsembleSpec:
    """The untuned baseline (reference ``equal``): :func:`default_spec` over the namespace's trained members.

    The members' fold checkpoints in ``runs_dir`` are pinned into the spec, so it names what it uses.

    Raises:
        SpecNotFoundError: A member has no checkpoints (unless ``allow_untrained``).
    """
    from ml.inference import member_dirs

    ckpts = {m: [str(d / "model.pt") for d in member_dirs(cfg.runs_dir, m)] for m in cfg.ensemble_members}
    missing = [m for m, c in ckpts.items() if not c]
    if missing and not allow_untrained:
        raise SpecNotFoundError(
            f"members {missing} have no checkpoints under {cfg.runs_dir}; run `mpic train{_profile_arg(cfg)}`"
        )
    spec = default_spec(cfg, ckpts)
    spec.source = EQUAL
    return spec


def _profile_arg(cfg: Config) -> str:
    return f" --profile {cfg.profile}" if cfg.profile else ""


def load_spec(
    cfg: Config, ref: str | int | Path | None = None, *, allow_untrained: bool = False
) -> EnsembleSpec:
    """THE loader of the ensemble to serve, evaluate or predict with.

    Args:
        cfg: Project configuration; its namespace selects the registered model
            (``mpic-<namespace>-ensemble-<ensemble>``).
        ref: ``None`` or an alias (default ``cfg.mlflow.alias``, i.e. ``champion``); a version number
            (``3`` or ``"3"``); ``"equal"`` for the untuned baseline (:func:`equal_spec`); or the path of a
            spec JSON file (``*.json``).
        allow_untrained: When nothing is registered under the default alias, return the equal-weights
            spec without checkpoints (members get deterministic random weights) instead of failing.

    Returns:
        The spec; for a registered one ``version`` is the registry version and ``registered_model`` its
        name.

    Raises:
        SpecNotFoundError: Nothing is registered (the message names the command to run) or the version or
            alias does not exist.
        SpecError: The spec does not fit the config (labels).
    """
    alias = cfg.mlflow.alias
    if isinstance(ref, Path) or (isinstance(ref, str) and ref.endswith(".json")):
        path = Path(ref)
        if not path.is_file():
            raise SpecNotFoundError(f"spec file not found: {path}")
        from_file = EnsembleSpec.from_json(path.read_text())
        from_file.check_against(cfg)
        return from_file
    if ref == EQUAL:
        return equal_spec(cfg, allow_untrained=allow_untrained)
    default_ref = ref is None or str(ref) == alias
    from ml import tracking

    name = tracking.spec_model_name(cfg)
    hint = f"run `mpic fuse{_profile_arg(cfg)}` first"
    spec: EnsembleSpec | None = None
    if cfg.mlflow.enabled:
        try:
            spec = tracking.load_registered_spec(cfg, None if default_ref else ref)
        except LookupError:
            raise SpecNotFoundError(
                f"registered model {name!r} has no version or alias {str(ref)!r}; "
                f"versions are listed by `mpic mlflow{_profile_arg(cfg)}`"
            ) from None
    if spec is not None:
        return spec
    if default_ref and allow_untrained:
        spec = default_spec(cfg)
        spec.source = "untrained"
        return spec
    why = (
        "MLflow is disabled (mlflow.enabled: false), so nothing is registered"
        if not cfg.mlflow.enabled
        else f"no ensemble is registered as {name!r} with alias {alias!r}"
    )
    raise SpecNotFoundError(f"{why}: {hint} (or pass --version equal for untuned equal weights)")


def member_checkpoints(cfg: Config, spec: EnsembleSpec, member: str) -> list[str]:
    """Local fold checkpoint paths of ``member`` as ``spec`` names them (empty: none, i.e. untrained).

    A registered member version (``registered_model`` + ``version``) is downloaded from the registry
    (cached); otherwise the spec's checkpoint paths are used.

    Raises:
        SpecNotFoundError: The member version is not in the registry and the spec has no usable paths.
    """
    ref = spec.members.get(member)
    if ref is None:
        raise SpecError(
            f"member {member!r} is not in ensemble spec {spec.ensemble!r}: {sorted(spec.members)}"
        )
    if ref.registered_model and ref.version and cfg.mlflow.enabled:
        from ml import tracking

        try:
            return [
                str(p) for p in tracking.download_member(cfg, member, ref.version, name=ref.registered_model)
            ]
        except LookupError as e:
            if not ref.checkpoints or not all(Path(p).is_file() for p in ref.checkpoints):
                raise SpecNotFoundError(str(e)) from None
    missing = [p for p in ref.checkpoints if not Path(p).is_file()]
    if missing:
        raise SpecNotFoundError(f"member {member!r}: checkpoints named by the spec are gone: {missing}")
    return list(ref.checkpoints)


def stamp(spec: EnsembleSpec) -> dict[str, Any]:
    """What an answer says about the ensemble that produced it: name, registered name, version, source.

    ``version`` is the registry version, or None for a spec that is not registered (``equal``,
    ``untrained``, a spec file).
    """
    return {
        "name": spec.ensemble,
        "registered_model": spec.registered_model,
        "version": spec.version if spec.registered_model else None,
        "source": spec.source,
    }
