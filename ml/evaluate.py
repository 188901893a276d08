"""IRMAS-protocol evaluation of each member and of the fused ensemble on a testing layout.

:func:`evaluate` runs every excerpt through the one analysis pipeline (:func:`ml.service.analyze`, the
HTTP API's, through an in-process :class:`~ml.service.LocalBackend`): each member as the single-model
endpoint would (its aggregation and its own thresholds), and the ensemble as the multi-model endpoint
would (the spec's weights, aggregation and thresholds). Thresholds were fitted on *training* out-of-fold
predictions by `mpic fuse`, never on the test data. The report names the ensemble and version it
evaluated and gives micro/macro F1, per-class P/R/F1, LRAP, mAP, Hamming score and label cardinality.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml import metrics
from ml.config import Config
from ml.data.cache import build_store
from ml.data.irmas import TEST_DIR_PREFIX, TRAIN_DIR, build_manifest, read_label_file
from ml.ensemble import EnsembleSpec, load_spec
from ml.inference import Predictor


class EvaluationDataError(ValueError):
    """A ``--data`` folder without usable testing excerpts; the message says what was expected."""


EXPECTED_LAYOUT = (
    "expected IRMAS-TestingData*/NAME.wav + NAME.txt folders, or a plain folder of NAME.wav + NAME.txt "
    "pairs (the .txt lists the label codes present, one per line)"
)


def test_excerpts(cfg: Config, data_root: Path | None = None) -> tuple[list[Path], np.ndarray]:
    """Absolute paths and (N, C) labels of the testing excerpts under ``data_root``.

    ``data_root`` is either an IRMAS layout (``IRMAS-TestingData*`` folders, read through the manifest)
    or a plain folder of audio files each with a ``NAME.txt`` label file beside it (searched
    recursively), like the IRMAS test folders themselves.

    Raises:
        FileNotFoundError: ``data_root`` is not a folder.
        EvaluationDataError: No excerpts, or a plain folder with unlabelled audio or unknown label codes.
    """
    root = Path(data_root or cfg.data.test_root or cfg.data.root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such data folder: {root}")
    if not any(p.is_dir() and p.name.startswith((TEST_DIR_PREFIX, TRAIN_DIR)) for p in root.iterdir()):
        return plain_excerpts(root, cfg.label_codes)
    manifest = build_manifest(
        root, cfg.label_codes, cache_path=cfg.data.cache_dir / f"manifest-{_slug(root)}.csv"
    )
    test = manifest.filter(split="test")
    if len(test) == 0:
        raise EvaluationDataError(f"no testing excerpts under {root} ({EXPECTED_LAYOUT})")
    return [test.abspath(r) for r in test], test.label_matrix(cfg.label_codes)


def plain_excerpts(root: Path, labels: Sequence[str]) -> tuple[list[Path], np.ndarray]:
    """The audio files under ``root`` and their labels from the ``NAME.txt`` beside each (see above).

    Every audio file must have its label file: an evaluation that silently dropped excerpts would
    report metrics of another test set.
    """
    from ml.batch import BatchError, discover

    try:
        audio = discover([root])
    except BatchError:
        raise EvaluationDataError(f"no testing excerpts under {root} ({EXPECTED_LAYOUT})") from None
    order = {c: i for i, c in enumerate(labels)}
    y = np.zeros((len(audio), len(labels)), dtype=np.float32)
    unlabelled: list[str] = []
    bad: list[str] = []
    for i, wav in enumerate(audio):
        txt = wav.with_suffix(".txt")
        if not txt.is_file():
            unlabelled.append(wav.name)
            continue
        codes = read_label_file(txt)
        unknown = [c for c in codes if c not in order]
        if unknown or not codes:
            bad.append(f"{txt.name}: {f'unknown codes {unknown}' if unknown else 'no labels'}")
            continue
        for c in codes:
            y[i, order[c]] = 1.0
    if unlabelled:
        raise EvaluationDataError(
            f"{len(unlabelled)} audio file(s) under {root} have no NAME.txt label file, e.g. "
            f"{unlabelled[:3]} ({EXPECTED_LAYOUT})"
        )
    if bad:
        raise EvaluationDataError(f"bad label files under {root}: {bad[:3]}; valid codes: {list(labels)}")
    return [p.resolve() for p in audio], y


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
    allow_untrained: bool = False,
) -> dict[str, Any]:
    """Evaluate members and the fused ensemble; returns a JSON-serialisable report.

    Args:
        cfg: Project configuration.
        data_root: Folder holding ``IRMAS-TestingData*``, or a plain folder of ``NAME.wav`` + ``NAME.txt``
            pairs (default: ``data.test_root`` or ``data.root``; see :func:`test_excerpts`).
        members: Members to report (default: the spec's).
        spec: The ensemble (default: :func:`ml.ensemble.load_spec`, the registered champion).
        device: Torch device.
        allow_untrained: Members without checkpoints get deterministic random weights (tests, demos).

    Raises:
        ValueError: An excerpt could not be analysed (the message names it and why).
    """
    from ml.service import (
        LocalBackend,
        analyze_sources,
        fusion_from_spec,
        multi_model_settings,
        single_model_settings,
    )

    spec = spec or load_spec(cfg, allow_untrained=allow_untrained)
    names = list(members or spec.members)
    fused_members = [m for m in spec.members if spec.weights.get(m, 0) > 0]
    paths, y = test_excerpts(cfg, data_root)
    labels = cfg.label_codes
    backend = LocalBackend.from_config(
        cfg,
        list(dict.fromkeys([*names, *fused_members])),
        spec=spec,
        device=device,
        allow_untrained=allow_untrained,
    )
    fusion = fusion_from_spec(cfg, spec, backend.members)
    sources = [(str(p), p) for p in paths]

    def run(settings: Any) -> tuple[np.ndarray, list[float]]:
        results = analyze_sources(cfg, backend, sources, settings=settings)
        bad = [f"{r.file}: {r.error}" for r in results if r.error is not None]
        if bad:
            raise ValueError(f"{len(bad)} test excerpt(s) could not be analysed: {bad[:5]}")
        scores = np.asarray([[r.scores[c] for c in labels] for r in results], dtype=np.float32)
        return scores, list(settings.thresholds)

    reports: dict[str, Any] = {}
    for m in names:
        scores, th = run(single_model_settings(cfg, fusion, m))
        reports[m] = metrics.evaluate(y, scores, np.asarray(th), labels, spec.max_instruments)
    out: dict[str, Any] = {
        "n_excerpts": len(paths),
        "labels": labels,
        "members": reports,
        # which ensemble was evaluated: name, registered name, version, source (as every answer says)
        "spec": {
            **fusion.stamp(),
            "weights": spec.weights,
            "aggregation": spec.aggregation,
            "max_instruments": spec.max_instruments,
        },
    }
    if fused_members:
        scores, th = run(multi_model_settings(cfg, fusion))
        out["ensemble"] = metrics.evaluate(y, scores, np.asarray(th), labels, spec.max_instruments)
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
    spec = report.get("spec") or {}
    name = spec.get("registered_model") or spec.get("name") or "ensemble"
    version = spec.get("version")
    which = f"{name} version {version}" if version is not None else f"{name} ({spec.get('source', '?')})"
    return f"{report['n_excerpts']} excerpts, {which}\n" + "\n".join(lines)
