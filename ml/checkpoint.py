"""Self-describing checkpoints: weights plus everything needed to rebuild the classifier.

A checkpoint file holds the classifier spec (architecture and its arguments, front-end settings, labels,
window length), the weights and a little provenance. It loads with ``torch.load(weights_only=True)``: only
tensors and plain Python values are stored, never pickled classes. :func:`load_classifier` is the one
constructor used by training (resume), evaluation, `mpic predict` and Serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ml.models import Classifier, classifier_from_spec

FORMAT = "mpic-checkpoint/1"
MODEL_FILE = "model.pt"


class CheckpointError(ValueError):
    """A file that is not an mpic checkpoint, or one that does not match its own spec."""


@dataclass
class CheckpointMeta:
    """What a checkpoint says about itself besides its weights."""

    spec: dict[str, Any]
    member: str = ""
    fold: int | None = None
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """Label codes in output order."""
        return list(self.spec["labels"])


def save_classifier(path: str | Path, model: Classifier, meta: CheckpointMeta) -> Path:
    """Write a self-describing checkpoint atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "spec": meta.spec,
        "member": meta.member,
        "fold": -1 if meta.fold is None else int(meta.fold),
        "epoch": -1 if meta.epoch is None else int(meta.epoch),
        "metrics": {k: float(v) for k, v in meta.metrics.items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read weights and metadata with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (RuntimeError, ValueError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a loadable checkpoint ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mpic checkpoint (expected format {FORMAT})")
    fold = int(payload.get("fold", -1))
    epoch = int(payload.get("epoch", -1))
    meta = CheckpointMeta(
        spec=payload["spec"],
        member=str(payload.get("member", "")),
        fold=None if fold < 0 else fold,
        epoch=None if epoch < 0 else epoch,
        metrics=dict(payload.get("metrics", {})),
    )
    return payload["state_dict"], meta


def load_classifier(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Classifier, CheckpointMeta]:
    """Rebuild a classifier from its checkpoint, in eval mode on ``device``."""
    state, meta = read_checkpoint(path)
    model = classifier_from_spec(meta.spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the stored spec ({e})") from None
    return model.to(device).eval(), meta
