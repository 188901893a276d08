"""Architectures by name, and the :class:`Classifier` (front end + model) that every stage runs.

``build_classifier(cfg, member)`` builds a member's network from ``config.yml``; ``classifier_spec`` turns
the same information into a JSON-able dict and ``classifier_from_spec`` rebuilds the network from that dict
alone, which is what a checkpoint stores (:mod:`ml.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError
from torch import Tensor, nn

from ml.config import AnyFrontEndConfig, Config, ConfigError, FrontEndConfig
from ml.features import FrontEnd, build_front_end
from ml.models import musicnn as _musicnn  # noqa: F401  (registers "musicnn")
from ml.models import rescnn as _rescnn  # noqa: F401  (registers "rescnn")
from ml.models import seed as _seed  # noqa: F401  (registers "model2", "model3")
from ml.models.base import MODELS, ModelArgs, MpicModel, build_model, count_parameters, validate_args

__all__ = [
    "MODELS",
    "SPEC_VERSION",
    "Classifier",
    "ModelArgs",
    "MpicModel",
    "build_classifier",
    "build_model",
    "check_members",
    "classifier_from_spec",
    "classifier_spec",
    "count_parameters",
    "validate_args",
]

SPEC_VERSION = 1
_FRONT_END_ADAPTER: TypeAdapter[AnyFrontEndConfig] = TypeAdapter(FrontEndConfig)


class Classifier(nn.Module):
    """Front end + model: waves (B, S) at :attr:`sample_rate` → multi-label logits (B, n_classes).

    Windows should be :attr:`window_samples` long (the size the model was built for); fixed-window
    architectures (the seed models) refuse anything else, the others accept any length.
    """

    def __init__(
        self,
        front_end: FrontEnd,
        model: MpicModel,
        *,
        window_s: float,
        labels: list[str],
        arch: str,
        arch_args: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self.front_end = front_end
        self.model = model
        self.window_s = float(window_s)
        self.labels = list(labels)
        self.arch = arch
        self.arch_args = dict(arch_args)

    @property
    def sample_rate(self) -> int:
        """Sample rate (Hz) the waves must have."""
        return self.front_end.sample_rate

    @property
    def window_samples(self) -> int:
        """Samples per window (``round(window_s * sample_rate)``): the crop length the model expects."""
        return round(self.window_s * self.sample_rate)

    @property
    def n_classes(self) -> int:
        """Number of outputs."""
        return len(self.labels)

    def forward(self, wave: Tensor) -> Tensor:
        """Logits (B, n_classes) of waves (B, S); apply a sigmoid for per-label probabilities."""
        return self.model(self.front_end(wave))

    def spec(self) -> dict[str, Any]:
        """The JSON-able description :func:`classifier_from_spec` rebuilds this network from."""
        return {
            "version": SPEC_VERSION,
            "arch": self.arch,
            "arch_args": dict(self.arch_args),
            "front_end": self.front_end.config.model_dump(mode="json"),
            "labels": list(self.labels),
            "window_s": self.window_s,
            "sample_rate": self.sample_rate,
        }


def check_members(cfg: Config) -> None:
    """Validate every member's architecture arguments and augmentation steps now, not when it is built.

    Entry points call it right after loading the config, so that a mistake in ``models.<arch>`` or a
    member's ``augment`` fails at once, naming its path, instead of minutes into a job that builds that
    member last.

    Raises:
        ConfigError: The first member with an unknown architecture or invalid arguments.
    """
    from ml.augment import check_augment  # ml.augment imports ml.models.base

    for name, m in cfg.members.items():
        classifier_spec(cfg, name)
        check_augment(m.augment, f"members.{name}.augment")


def classifier_spec(cfg: Config, member: str, *, window_s: float | None = None) -> dict[str, Any]:
    """Everything needed to rebuild ``member``'s network without the config, as plain JSON values.

    Args:
        cfg: Project configuration.
        member: Member name (its ``arch`` and ``front_end``).
        window_s: Window length the model is built for (default ``cfg.inference.window_s``).

    Returns:
        ``{"version", "arch", "arch_args" (validated, defaults filled in), "front_end" (the front-end
        config), "labels" (codes in output order), "window_s", "sample_rate"}``.

    Raises:
        ConfigError: Unknown member or architecture, or invalid architecture arguments.
    """
    if member not in cfg.members:
        raise ConfigError(f"unknown member {member!r}; valid: {sorted(cfg.members)}")
    m = cfg.members[member]
    if m.arch not in MODELS:
        raise ConfigError(f"members.{member}.arch: unknown architecture {m.arch!r}; valid: {MODELS.names()}")
    args = validate_args(MODELS.get(m.arch).Args, cfg.models.get(m.arch), f"models.{m.arch}")
    fe_cfg = cfg.front_ends[m.front_end]
    return {
        "version": SPEC_VERSION,
        "arch": m.arch,
        "arch_args": args.model_dump(mode="json"),
        "front_end": fe_cfg.model_dump(mode="json"),
        "labels": list(cfg.label_codes),
        "window_s": float(window_s if window_s is not None else cfg.inference.window_s),
        "sample_rate": fe_cfg.sample_rate,
    }


def classifier_from_spec(spec: Mapping[str, Any]) -> Classifier:
    """Rebuild a classifier (untrained weights, training mode) from :func:`classifier_spec`'s dict.

    Raises:
        ConfigError: A spec that is incomplete, from a newer format, or whose parts do not validate.
    """
    missing = [k for k in ("arch", "arch_args", "front_end", "labels", "window_s") if k not in spec]
    if missing:
        raise ConfigError(f"classifier spec lacks {missing}")
    version = int(spec.get("version", SPEC_VERSION))
    if version > SPEC_VERSION:
        raise ConfigError(f"classifier spec version {version} is newer than this code's ({SPEC_VERSION})")
    try:
        fe_cfg = _FRONT_END_ADAPTER.validate_python(spec["front_end"])
    except ValidationError as e:
        raise ConfigError(f"classifier spec: invalid front_end: {e}") from None
    front_end = build_front_end(fe_cfg)
    if "sample_rate" in spec and int(spec["sample_rate"]) != front_end.sample_rate:
        raise ConfigError(
            f"classifier spec: sample_rate {spec['sample_rate']} disagrees with its front end "
            f"({front_end.sample_rate} Hz)"
        )
    window_s = float(spec["window_s"])
    if window_s <= 0:
        raise ConfigError(f"classifier spec: window_s must be positive, got {window_s}")
    labels = [str(x) for x in spec["labels"]]
    n_frames = front_end.frames(round(window_s * front_end.sample_rate))
    arch = str(spec["arch"])
    kinds = MODELS.get(arch).front_end_kinds if arch in MODELS else None
    if kinds is not None and front_end.kind not in kinds:
        raise ConfigError(
            f"classifier spec: architecture {arch!r} needs a front end of kind {list(kinds)}, "
            f"got {front_end.kind!r}"
        )
    model = build_model(
        arch, spec["arch_args"], n_classes=len(labels), n_bins=front_end.n_bins, n_frames=n_frames
    )
    return Classifier(
        front_end,
        model,
        window_s=window_s,
        labels=labels,
        arch=arch,
        arch_args=model.args.model_dump(mode="json"),
    )


def build_classifier(cfg: Config, member: str, *, window_s: float | None = None) -> Classifier:
    """Build ``member``'s classifier (untrained, training mode) from the config.

    Args:
        cfg: Project configuration.
        member: Member name.
        window_s: Window length the model is built for (default ``cfg.inference.window_s``); fixed-window
            models only accept windows of exactly this length.

    Returns:
        The classifier; ``classifier.spec()`` equals ``classifier_spec(cfg, member, window_s=window_s)``.
    """
    return classifier_from_spec(classifier_spec(cfg, member, window_s=window_s))
