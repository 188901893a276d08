"""The model base class, the architecture registry and argument validation.

Every architecture is an :class:`MpicModel`: it maps features ``(B, 1, n_bins, T)`` from a front end to
multi-label logits ``(B, n_classes)`` (the sigmoid and the BCE loss live outside), declares its arguments as a
frozen pydantic model ``Args`` (the keys of its ``models.<arch>`` section in ``config.yml``) and documents the
parameter count it is expected to have for 11 classes at its intended input size in ``param_range`` (the
test suite holds it to that).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from ml.config import ConfigError
from ml.registry import Registry

A = TypeVar("A", bound=BaseModel)


class ModelArgs(BaseModel):
    """Base of every architecture's ``Args``: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validate_args(schema: type[A], values: Mapping[str, Any] | None, where: str) -> A:
    """Validate ``values`` against ``schema``, raising :class:`ConfigError` that names ``where.<key>``.

    Args:
        schema: The pydantic model (extra keys forbidden) describing the arguments.
        values: The raw arguments, e.g. ``cfg.models["rescnn"]`` or an augmentation step's parameters.
        where: Dotted config path of the section, e.g. ``models.rescnn`` or ``members.m.augment.0``.

    Returns:
        The validated arguments, defaults filled in.

    Raises:
        ConfigError: One line per bad key: ``<where>.<key>: <problem>``; unknown keys list the valid ones.
    """
    try:
        return schema.model_validate(dict(values or {}))
    except ValidationError as e:
        lines = []
        for err in e.errors():
            path = ".".join([where, *(str(p) for p in err["loc"])])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = f"unknown key; valid keys: {sorted(schema.model_fields)}"
            lines.append(f"  {path}: {msg}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None


class MpicModel(nn.Module):
    """Base class of every architecture: features (B, 1, n_bins, T) → logits (B, n_classes).

    Class attributes:
        Args: The pydantic model of the architecture's arguments (extra keys forbidden, frozen).
        param_range: (low, high) expected parameter count for 11 classes at the intended input size.
        fixed_frames: True when the network only accepts ``n_frames`` frames (a Flatten → Dense head, as in
            the seed models); such models run on fixed windows, which is how inference works anyway.
        min_frames: Fewest frames a variable-length model accepts.
        front_end_kinds: The front-end kinds the model works with (None: any); a pretrained network only
            understands the input it was trained on.

    Subclasses implement :meth:`logits`. :meth:`forward` checks the input shape and, on CPU in eval mode,
    runs large batches in chunks of ``cpu_chunk`` examples: the results are identical, and on a 2-core CPU a
    chunk's activations stay cache- and allocator-friendly (a batch of 64 runs up to 2x faster that way).
    """

    Args: ClassVar[type[BaseModel]] = ModelArgs
    param_range: ClassVar[tuple[int, int]] = (0, 10**9)
    fixed_frames: ClassVar[bool] = False
    min_frames: ClassVar[int] = 1
    front_end_kinds: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, n_classes: int, n_bins: int, n_frames: int, args: BaseModel) -> None:
        super().__init__()
        if n_classes < 1 or n_bins < 1 or n_frames < 1:
            raise ValueError(f"sizes must be positive: {n_classes=}, {n_bins=}, {n_frames=}")
        self.n_classes = n_classes
        self.n_bins = n_bins
        self.n_frames = n_frames
        self.args = args
        self.cpu_chunk = 0

    def logits(self, feats: Tensor) -> Tensor:
        """The network proper: (B, 1, n_bins, T) → (B, n_classes), shapes already checked."""
        raise NotImplementedError

    def forward(self, feats: Tensor) -> Tensor:
        """Multi-label logits (B, n_classes) of features (B, 1, n_bins, T)."""
        if feats.ndim != 4 or feats.shape[1] != 1 or feats.shape[2] != self.n_bins:
            raise ValueError(
                f"{type(self).__name__} expects features shaped (batch, 1, {self.n_bins}, frames), "
                f"got {tuple(feats.shape)}"
            )
        t = feats.shape[3]
        if self.fixed_frames and t != self.n_frames:
            raise ValueError(
                f"{type(self).__name__} is a fixed-window model built for {self.n_bins}x{self.n_frames} "
                f"features; got {t} frames: cut the audio into windows of the classifier's window_samples"
            )
        if t < self.min_frames:
            raise ValueError(f"{type(self).__name__} needs at least {self.min_frames} frames, got {t}")
        chunk = self.cpu_chunk
        if chunk and not self.training and feats.device.type == "cpu" and feats.shape[0] > chunk:
            return torch.cat([self.logits(part) for part in feats.split(chunk)])
        return self.logits(feats)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups at learning rate ``lr``: every trainable parameter in one (the default).

        A model overrides it to train parts at other rates (a pretrained trunk at a fraction of ``lr``).
        """
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def frozen_embedding_key(self) -> str | None:
        """Identity of a fixed (pretrained, frozen) part this model applies before its trained head.

        Models returning the same key compute the same :meth:`embed` of the same features, so the fold
        models of a member can share it (:class:`ml.inference.Predictor` runs it once per batch); None (the
        default): everything is trained, nothing to share.
        """
        return None

    def embed(self, feats: Tensor) -> Tensor:
        """The frozen part's output for features (B, 1, n_bins, T) (models with a frozen embedding only)."""
        raise NotImplementedError(f"{type(self).__name__} has no frozen embedding")

    def head_logits(self, emb: Tensor) -> Tensor:
        """Logits (B, n_classes) of an :meth:`embed` output (models with a frozen embedding only)."""
        raise NotImplementedError(f"{type(self).__name__} has no frozen embedding")

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return f"n_classes={self.n_classes}, n_bins={self.n_bins}, n_frames={self.n_frames}"


MODELS: Registry[type[MpicModel]] = Registry("architecture")


def build_model(
    arch: str, arch_args: Mapping[str, Any] | None, *, n_classes: int, n_bins: int, n_frames: int
) -> MpicModel:
    """Build a registered architecture from its ``models.<arch>`` config section.

    Args:
        arch: Registry name, e.g. ``rescnn``.
        arch_args: The section's keys (validated against the architecture's ``Args``).
        n_classes: Output size.
        n_bins: Frequency bins of the features.
        n_frames: Frames of one window at the size the model is built for.

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: Unknown architecture (lists the valid names) or bad arguments (names
            ``models.<arch>.<key>`` and the valid keys).
    """
    if arch not in MODELS:
        raise ConfigError(f"models.{arch}: unknown architecture {arch!r}; valid: {MODELS.names()}")
    cls = MODELS.get(arch)
    args = validate_args(cls.Args, arch_args, f"models.{arch}")
    return cls(n_classes, n_bins, n_frames, args)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
