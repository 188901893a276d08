"""Out-of-fold predictions of the ensemble's members, aligned, and the fusion objective on them.

Training leaves ``runs_dir/<member>/fold<k>/oof.npz`` (window scores of the held-out clips). This module
merges them per member, aligns members on the clips they all scored, aggregates windows per clip with each
candidate method once, and scores a fusion candidate (weights + aggregation) with per-class thresholds
fitted on the same out-of-fold *training* predictions — the test set is never touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml import fusion, metrics
from ml.config import Config
from ml.train import OOF_FILE, load_oof


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


def summary(oof: OOFSet, fused: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    """micro/macro F1 and LRAP of fused OOF scores at ``thresholds``."""
    r = metrics.evaluate(oof.y_true, fused, thresholds, oof.labels)
    return {k: float(r[k]) for k in ("micro_f1", "macro_f1", "lrap", "map", "cardinality_pred")}
