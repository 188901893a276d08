"""A (member, fold)'s final files in the namespace's ``runs_dir``: where they live, publishing, finding.

``runs_dir/<member>/fold<k>/`` holds ``model.pt``, ``oof.npz`` and ``result.json`` (written last, so a
folder without it is incomplete). A (member, fold) whose files were trained with *another* configuration
is never silently replaced (:func:`check_conflicts`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml import tracking
from ml.checkpoint import MODEL_FILE
from ml.config import Config
from ml.oof import OOF_FILE

RESULT_FILE = "result.json"


class RunsDirConflictError(RuntimeError):
    """``runs_dir`` holds finished folds trained with another configuration; the message says what to do."""


def fold_dir(cfg: Config, member: str, fold: int) -> Path:
    """Where a (member, fold)'s final files live: ``runs_dir/<member>/fold<k>/``."""
    return cfg.runs_dir / member / f"fold{fold}"


def finished_fold(cfg: Config, member: str, fold: int, fold_key: str) -> dict[str, Any] | None:
    """The stored result of a completed (member, fold) whose files match ``fold_key``, else None."""
    d = fold_dir(cfg, member, fold)
    if not all((d / f).is_file() for f in (MODEL_FILE, OOF_FILE, RESULT_FILE)):
        return None
    try:
        info = json.loads((d / RESULT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("fold_key") != fold_key or info.get("model_sha256") != tracking.file_sha256(d / MODEL_FILE):
        return None
    return dict(info)


def conflicting_folds(cfg: Config, todo: Sequence[tuple[str, int]], fold_keys: dict[str, str]) -> list[str]:
    """Folds in ``todo`` whose ``runs_dir`` folder holds a finished run of another configuration."""
    out = []
    for m, f in todo:
        d = fold_dir(cfg, m, f)
        try:
            info = json.loads((d / RESULT_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (d / MODEL_FILE).is_file() and info.get("fold_key") not in (None, fold_keys[m]):
            out.append(f"{m}/fold{f}")
    return out


def check_conflicts(
    cfg: Config, todo: Sequence[tuple[str, int]], fold_keys: dict[str, str], *, overwrite: bool
) -> None:
    """Refuse (:class:`RunsDirConflictError`) to replace finished folds of another configuration.

    Raises:
        RunsDirConflictError: Some folds clash and not ``overwrite``; the message names them and the ways
            out.
    """
    clash = conflicting_folds(cfg, todo, fold_keys)
    if clash and not overwrite:
        raise RunsDirConflictError(
            f"{cfg.runs_dir} holds finished runs trained with another configuration: {', '.join(clash)}. "
            "Refusing to overwrite them: pass --overwrite to replace them (their checkpoints stay in "
            "MLflow), or train into another namespace (--profile NAME, --set namespace=NAME or "
            "--set runs_dir=PATH)"
        )


def publish(cfg: Config, member: str, fold: int, src: Path) -> dict[str, Any]:
    """Install a trial's final files from ``src`` into ``runs_dir/<member>/fold<k>/`` (result.json last)."""
    d = fold_dir(cfg, member, fold)
    d.mkdir(parents=True, exist_ok=True)
    (d / RESULT_FILE).unlink(missing_ok=True)  # invalid until the new files are complete
    for name in (MODEL_FILE, OOF_FILE):
        tmp = d / (name + ".tmp")
        shutil.copy2(src / name, tmp)
        tmp.replace(d / name)
    info = json.loads((src / RESULT_FILE).read_text())
    info["model_sha256"] = tracking.file_sha256(d / MODEL_FILE)
    info["published"] = time.time()
    tmp = d / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(d / RESULT_FILE)
    return dict(info)
