"""Out-of-fold predictions of the ensemble's members: their files, aligned, and the fusion objective.

Training leaves ``runs_dir/<member>/fold<k>/oof.npz`` (window scores of the held-out clips, written with
:func:`save_oof`; :func:`load_oof` reads one member's back). This module merges them per member, aligns
members on the clips they all scored, aggregates windows per clip with each candidate method once, and
scores a fusion candidate (weights + aggregation) with per-class thresholds fitted on the same out-of-fold
*training* predictions — the test set is never touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml import fusion, metrics
from ml.config import Config
from ml.fusion import aggregate

OOF_FILE = "oof.npz"


def save_oof(
    path: Path,
    *,
    paths: list[str],
    y_true: np.ndarray,
    window_scores: np.ndarray,
    owner: np.ndarray,
    labels: list[str],
) -> Path:
    """Write out-of-fold predictions: per-window scores with their clip, and the clips' true labels."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        paths=np.array(paths),
        y_true=y_true.astype(np.float32),
        window_scores=window_scores,
        owner=owner.astype(np.int64),
        labels=np.array(labels),
    )
    tmp.replace(path)
    return path


@dataclass
class OOF:
    """Out-of-fold predictions of one member over all folds (clip order sorted by path)."""

    paths: list[str]
    y_true: np.ndarray  # (N, C)
    windows: list[np.ndarray]  # N × (W_i, C)
    labels: list[str]

    def aggregated(self, method: str) -> np.ndarray:
        """(N, C) clip scores with aggregation ``method``."""
        return np.stack([aggregate(w, method) for w in self.windows])


def load_oof(files: list[Path]) -> OOF:
    """Merge the per-fold OOF files of one member into one clip-ordered set."""
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    labels: list[str] | None = None
    for f in files:
        z = np.load(f, allow_pickle=False)
        lab = [str(x) for x in z["labels"]]
        if labels is not None and lab != labels:
            raise ValueError(f"{f}: labels {lab} differ from {labels}")
        labels = lab
        owner, ws = z["owner"], z["window_scores"]
        for j, p in enumerate(z["paths"]):
            rows[str(p)] = (z["y_true"][j], ws[owner == j])
    if labels is None:
        raise ValueError("no out-of-fold files given")
    paths = sorted(rows)
    return OOF(paths, np.stack([rows[p][0] for p in paths]), [rows[p][1] for p in paths], labels)


@dataclass
class OOFSet:
    """Aligned out-of-fold clip scores of several members."""

    paths: list[str]
    y_true: np.ndarray  # (N, C)
    labels: list[str]
    scores: dict[str, dict[str, np.ndarray]]  # aggregation → member → (N, C)

    @property
    def members(self) -> list[str]:
        """Member names, in the order given when loading."""
        first = next(iter(self.scores.values()))
        return list(first)


def oof_files(runs_dir: Path, member: str) -> list[Path]:
    """The per-fold OOF files of ``member``."""
    return sorted((runs_dir / member).glob(f"fold*/{OOF_FILE}"))


def load_oof_set(cfg: Config, members: Sequence[str], aggregations: Sequence[str]) -> OOFSet:
    """Load, align (intersection of clips) and aggregate the members' OOF predictions."""
    per_member = {}
    for m in members:
        files = oof_files(cfg.runs_dir, m)
        if not files:
            raise FileNotFoundError(
                f"member {m!r} has no out-of-fold predictions under {cfg.runs_dir / m}; "
                "train it first (mpic train)"
            )
        per_member[m] = load_oof(files)
    common = sorted(set.intersection(*(set(o.paths) for o in per_member.values())))
    if not common:
        raise ValueError("the members' out-of-fold predictions share no clips")
    first = per_member[members[0]]
    if first.labels != cfg.label_codes:
        raise ValueError(f"OOF labels {first.labels} differ from config labels {cfg.label_codes}")
    index = {m: {p: i for i, p in enumerate(o.paths)} for m, o in per_member.items()}
    y = np.stack([first.y_true[index[members[0]][p]] for p in common])
    scores: dict[str, dict[str, np.ndarray]] = {}
    for agg in aggregations:
        scores[agg] = {}
        for m, o in per_member.items():
            rows = [o.windows[index[m][p]] for p in common]
            scores[agg][m] = fusion.aggregate_batch(rows, agg)
    return OOFSet(common, y, list(first.labels), scores)


def score_candidate(
    oof: OOFSet, weights: Mapping[str, float], aggregation: str, objective: str
) -> tuple[float, np.ndarray, np.ndarray]:
    """Objective of one fusion candidate → (value, fitted per-class thresholds, fused (N, C) scores)."""
    members = [m for m in oof.members if weights.get(m, 0.0) > 0]
    if not members:
        raise ValueError("all weights are zero")
    stacked = np.stack([oof.scores[aggregation][m] for m in members])
    fused = fusion.fuse(stacked, np.array([weights[m] for m in members], dtype=np.float64))
    th = fusion.fit_thresholds(oof.y_true, fused, objective=objective)
    return fusion.objective(objective, oof.y_true, fused, th), th, fused


def summary(
    oof: OOFSet, fused: np.ndarray, thresholds: np.ndarray, max_labels: int | None = None
) -> dict[str, float]:
    """micro/macro F1 and LRAP of fused OOF scores at ``thresholds`` (at most ``max_labels`` named)."""
    r = metrics.evaluate(oof.y_true, fused, thresholds, oof.labels, max_labels)
    return {k: float(r[k]) for k in ("micro_f1", "macro_f1", "lrap", "map", "cardinality_pred")}
