"""IRMAS-protocol evaluation of each member and of the fused ensemble on a testing layout.

Excerpts are decoded once per member rate (decode-once cache), cut into windows, scored, aggregated per
excerpt and thresholded with thresholds fitted on *training* out-of-fold predictions (from the ensemble
spec), never on the test data. Reports micro/macro F1, per-class P/R/F1, LRAP, mAP, Hamming score and
label cardinality.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml import metrics
from ml.config import Config
from ml.data.cache import build_store
from ml.data.irmas import build_manifest
from ml.ensemble import EnsembleSpec, resolve_spec
from ml.fusion import aggregate_batch, fuse
from ml.inference import Predictor, load_member


def test_excerpts(cfg: Config, data_root: Path | None = None) -> tuple[list[Path], np.ndarray]:
    """Absolute paths and (N, C) labels of the testing excerpts under ``data_root``."""
    root = Path(data_root or cfg.data.test_root or cfg.data.root)
    manifest = build_manifest(
        root, cfg.label_codes, cache_path=cfg.data.cache_dir / f"manifest-{_slug(root)}.csv"
    )
    test = manifest.filter(split="test")
    if len(test) == 0:
        raise ValueError(
            f"no testing excerpts under {root} (expected IRMAS-TestingData*/NAME.wav + NAME.txt)"
        )
    return [test.abspath(r) for r in test], test.label_matrix(cfg.label_codes)


def _slug(p: Path) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(p.resolve()))[-80:]


def member_window_scores(cfg: Config, predictor: Predictor, paths: Sequence[Path]) -> list[np.ndarray]:
    """(W_i, C) window scores per excerpt, decoding through the cache at the member's rate."""
    store = build_store(paths, predictor.sample_rate, cfg.data.cache_dir, with_tempo=False)
    out: list[np.ndarray] = []
    chunk = 16  # excerpts per batch: bounds memory for 20-s excerpts at 44.1 kHz
    for a in range(0, len(paths), chunk):
        out.extend(predictor.score_waves([store.clip(i) for i in range(a, min(a + chunk, len(paths)))]))
    return out


def evaluate(
    cfg: Config,
    *,
    data_root: Path | None = None,
    members: Sequence[str] | None = None,
    spec: EnsembleSpec | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate members and the fused ensemble; returns a JSON-serialisable report."""
    spec = spec or resolve_spec(cfg)
    names = list(members or spec.members)
    paths, y = test_excerpts(cfg, data_root)
    labels = cfg.label_codes
    fixed = [cfg.inference.threshold] * len(labels)
    member_th: dict[str, list[float]] = spec.details.get("member_thresholds", {})
    reports: dict[str, Any] = {}
    per_member: dict[str, list[np.ndarray]] = {}
    for m in names:
        ref = spec.members.get(m)
        pred = load_member(cfg, m, checkpoints=(ref.checkpoints or None) if ref else None, device=device)
        per_member[m] = member_window_scores(cfg, pred, paths)
        scores = aggregate_batch(per_member[m], cfg.members[m].aggregation)
        reports[m] = metrics.evaluate(y, scores, np.asarray(member_th.get(m, fixed)), labels)
    fused_members = [m for m in names if spec.weights.get(m, 0) > 0]
    out: dict[str, Any] = {
        "n_excerpts": len(paths),
        "labels": labels,
        "members": reports,
        "spec": {
            "version": spec.version,
            "source": spec.source,
            "weights": spec.weights,
            "aggregation": spec.aggregation,
        },
    }
    if fused_members:
        stacked = np.stack([aggregate_batch(per_member[m], spec.aggregation) for m in fused_members])
        fused = fuse(stacked, np.array([spec.weights[m] for m in fused_members]))
        out["ensemble"] = metrics.evaluate(y, fused, np.asarray(spec.thresholds or fixed), labels)
    return out


def format_table(report: dict[str, Any]) -> str:
    """A readable summary table of an evaluation report."""
    rows = [("model", "micro_f1", "macro_f1", "lrap", "map", "hamming", "card_pred", "card_true")]
    items = list(report["members"].items())
    if "ensemble" in report:
        items.append(("ENSEMBLE", report["ensemble"]))
    for name, r in items:
        rows.append(
            (
                name,
                *(
                    f"{r[k]:.3f}"
                    for k in (
                        "micro_f1",
                        "macro_f1",
                        "lrap",
                        "map",
                        "hamming",
                        "cardinality_pred",
                        "cardinality_true",
                    )
                ),
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return f"{report['n_excerpts']} excerpts\n" + "\n".join(lines)
