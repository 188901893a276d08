"""Leave-one-library-out: how well the ensemble recognises instruments played by sounds it never heard.

Every rendered clip records the sample library it came from (manifest ``library``). Libraries that share
samples form a *family* (FluidR3_GM and FluidR3_GS are one family): holding out one of them while training
on the other would leak the very sounds the protocol hides. For each family ``F``:

1. training set: the training clips (single-instrument and polyphonic) of every other family;
2. members train on it with the usual recipe, validating on folds *of those clips*;
3. fusion weights, window aggregation and per-class thresholds are fitted on their out-of-fold
   predictions — still without ``F``;
4. the fused ensemble is scored on ``F``'s test excerpts only.

The report gives each held-out family's micro/macro-F1, LRAP, mAP, per-class F1 and the cardinality named
against the truth, next to the trivial every-instrument answer, and their means over families.
:func:`check_no_leak` is asserted at every step where the held-out family could slip in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml import fusion, metrics
from ml.config import Config
from ml.data.manifest import ClipRecord, Manifest
from ml.evaluate import member_window_scores
from ml.inference import load_member, member_dirs, pick_device
from ml.oof import load_oof_set
from ml.train import FitResult, LocalHooks, fit
from ml.train_data import train_data_from_records

TRIVIAL = "every instrument (trivial)"
ENSEMBLE = "fused ensemble"
SUMMARY_KEYS = ("micro_f1", "macro_f1", "lrap", "map", "cardinality_pred", "cardinality_true")


class LoloError(ValueError):
    """The data set cannot be split by sample library (library unknown, fewer than two families, …)."""


def default_family(library: str) -> str:
    """The sample-sharing family of a library name (its registry entry; the name itself when unknown)."""
    from ml.data.libraries import library_family

    return library_family(library)


@dataclass(frozen=True)
class HoldOut:
    """One leave-one-family-out split of a manifest."""

    family: str
    train: tuple[ClipRecord, ...]  # training clips of every other family
    test: tuple[ClipRecord, ...]  # test excerpts of this family


def split_families(
    manifest: Manifest, family_of: Callable[[str], str] = default_family
) -> dict[str, HoldOut]:
    """One :class:`HoldOut` per family that has test excerpts, in sorted order.

    Raises:
        LoloError: If a clip has no recorded library, or fewer than two families have data.
    """
    unknown = [r.path for r in manifest if not r.library]
    if unknown:
        raise LoloError(
            f"{len(unknown)} clip(s) have no recorded sample library (e.g. {unknown[0]!r}); the protocol "
            "needs data rendered by `mpic synth` with several libraries"
        )
    fam = {r.path: family_of(r.library) for r in manifest}
    train_fams = {fam[r.path] for r in manifest if r.split == "train"}
    test_fams = sorted({fam[r.path] for r in manifest if r.split == "test"})
    if len(train_fams | set(test_fams)) < 2 or not test_fams:
        raise LoloError(
            f"leave-one-library-out needs at least two library families with test excerpts; found training "
            f"families {sorted(train_fams)} and test families {test_fams}"
        )
    out = {}
    for f in test_fams:
        train = tuple(r for r in manifest if r.split == "train" and fam[r.path] != f)
        test = tuple(r for r in manifest if r.split == "test" and fam[r.path] == f)
        if not train:
            raise LoloError(f"holding out {f!r} leaves no training clips")
        out[f] = HoldOut(f, train, test)
    return out


def check_no_leak(
    paths: Sequence[str],
    records: Mapping[str, ClipRecord],
    family: str,
    family_of: Callable[[str], str],
    what: str,
) -> None:
    """Raise if any of ``paths`` (manifest paths, or OOF mixture names built from them) is of ``family``.

    Raises:
        AssertionError: Naming the offending clip and the step (``what``) where it leaked in.
    """
    for p in paths:
        # OOF mixtures are named "mix<r>:<path>+<path>…" (ml.train_data.heldout_mixtures)
        parts = p.split(":", 1)[1].split("+") if p.startswith("mix") and ":" in p else [p]
        for part in parts:
            rec = records.get(part)
            if rec is None:
                raise AssertionError(f"{what}: {part!r} is not a clip of the manifest")
            if family_of(rec.library) == family:
                raise AssertionError(f"{what}: held-out family {family!r} leaked in through {part!r}")


def _report(
    y: np.ndarray,
    scores: np.ndarray,
    thresholds: Sequence[float],
    labels: list[str],
    max_labels: int | None = None,
) -> dict[str, Any]:
    r = metrics.evaluate(y, scores, np.asarray(thresholds, dtype=np.float64), labels, max_labels)
    return {
        **{k: round(float(r[k]), 4) for k in SUMMARY_KEYS},
        "per_class_f1": {c: round(float(v["f1"]), 4) for c, v in r["per_class"].items()},
    }


def trivial_report(y: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Answering every instrument for every excerpt: the floor F1 figures are read against."""
    return _report(y, np.full(y.shape, 0.5, dtype=np.float32), [0.5] * len(labels), labels)


@dataclass
class FusionFit:
    """What the held-out-free out-of-fold predictions decided."""

    weights: dict[str, float]
    aggregation: str
    thresholds: list[float]
    member_thresholds: dict[str, list[float]]
    oof: dict[str, Any]
    max_instruments: int | None = None  # the configured cap (fusion.max_instruments), not fitted


def fit_fusion(cfg: Config, members: Sequence[str]) -> tuple[FusionFit, list[str]]:
    """Weights × aggregation × per-class thresholds on the members' OOF predictions under ``cfg.runs_dir``.

    Returns:
        The fit and the OOF clip paths it used (for the leak check).
    """
    aggs = list(dict.fromkeys(["mean", *cfg.fusion.aggregations]))
    oof = load_oof_set(cfg, list(members), aggs)
    objective = cfg.fusion.objective
    best: fusion.FusionResult | None = None
    for agg in aggs:
        r = fusion.coordinate_search(oof.scores[agg], oof.y_true, objective=objective, aggregation=agg)
        if best is None or r.value > best.value + 1e-12:
            best = r
    assert best is not None
    member_th = {
        m: [
            float(t)
            for t in fusion.fit_thresholds(
                oof.y_true, oof.scores[cfg.members[m].aggregation][m], objective=objective
            )
        ]
        for m in members
    }
    fused = fusion.fuse(
        np.stack([oof.scores[best.aggregation][m] for m in members]),
        np.array([best.weights.get(m, 0.0) for m in members]),
    )
    return (
        FusionFit(
            weights={m: float(w) for m, w in best.weights.items()},
            aggregation=best.aggregation,
            thresholds=[float(t) for t in best.thresholds],
            member_thresholds=member_th,
            oof=_report(oof.y_true, fused, best.thresholds, oof.labels, cfg.fusion.max_instruments),
            max_instruments=cfg.fusion.max_instruments,
        ),
        oof.paths,
    )


def _mean_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in SUMMARY_KEYS}
    labels = list(rows[0]["per_class_f1"])
    out["per_class_f1"] = {c: round(float(np.mean([r["per_class_f1"][c] for r in rows])), 4) for c in labels}
    return out


def run_lolo(
    cfg: Config,
    manifest: Manifest,
    out_dir: str | Path,
    *,
    members: Sequence[str] | None = None,
    families: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    family_of: Callable[[str], str] = default_family,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the protocol; every held-out family trains and fuses under ``out_dir/holdout-<family>``.

    Args:
        cfg: Project configuration (labels, members, training recipe, fusion, folds).
        manifest: The whole data set (every library), e.g. ``build_manifest(cfg.data.root, …)``.
        out_dir: A fresh folder for this protocol run (models, OOF predictions, ``lolo.json``); an existing
            non-empty folder is refused so that no earlier run is overwritten.
        members: Members to train and fuse (default: the configured ensemble).
        families: Families to hold out (default: every family with test excerpts).
        folds: Validation folds (of the remaining libraries' clips) trained per member; their OOF
            predictions fit weights and thresholds. None: every fold (as training does); ``(0,)``: one
            model per member.
        family_of: Library → family (default: :func:`ml.data.libraries.library_family`).
        log: Progress lines.

    Returns:
        A JSON-serialisable report (also written to ``out_dir/lolo.json``).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already holds a protocol run; choose a new --out folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    members = list(members or cfg.ensemble_members)
    unknown = [m for m in members if m not in cfg.members]
    if unknown:
        raise KeyError(f"unknown member(s) {unknown}; valid: {sorted(cfg.members)}")
    splits = split_families(manifest, family_of)
    chosen = list(families or splits)
    bad = [f for f in chosen if f not in splits]
    if bad:
        raise LoloError(f"no test excerpts for family {bad}; families with test excerpts: {sorted(splits)}")
    records = {r.path: r for r in manifest}
    labels = cfg.label_codes
    device = pick_device()
    per_family: dict[str, Any] = {}
    t_start = time.perf_counter()
    for fam in chosen:
        split = splits[fam]
        update: dict[str, Any] = {"runs_dir": out_dir / f"holdout-{fam}"}
        if cfg.folds.by == "library":  # one fold per remaining family
            n_fams = len({family_of(r.library) for r in split.train})
            update["folds"] = cfg.folds.model_copy(update={"k": n_fams})
        hcfg = cfg.model_copy(update=update)
        check_no_leak([r.path for r in split.train], records, fam, family_of, "training set")
        t0 = time.perf_counter()
        training: dict[str, Any] = {}
        datasets: dict[int, Any] = {}
        for m in members:
            sr = int(hcfg.front_ends[hcfg.members[m].front_end].sample_rate)
            if sr not in datasets:
                datasets[sr] = train_data_from_records(hcfg, manifest.root, split.train, sr)
            data = datasets[sr]
            check_no_leak([r.path for r in data.manifest.records], records, fam, family_of, "training data")
            for k in folds if folds is not None else range(hcfg.folds.k):
                fold_dir = Path(hcfg.runs_dir) / m / f"fold{k}"
                res: FitResult = fit(
                    hcfg,
                    m,
                    k,
                    out_dir=fold_dir,
                    hooks=LocalHooks(fold_dir / "work"),
                    data=data,
                    device=device,
                )
                training[f"{m}/fold{k}"] = {
                    "epochs": res.epochs_run,
                    "best_epoch": res.best_epoch,
                    "train_s": round(sum(h.get("train_s", 0.0) for h in res.history), 1),
                    **{k2: round(float(v), 4) for k2, v in res.metrics.items() if k2.startswith("val_")},
                }
                log(f"[lolo] holdout {fam}: {m} fold {k}: {training[f'{m}/fold{k}']}")
        train_s = time.perf_counter() - t0
        fit_, oof_paths = fit_fusion(hcfg, members)
        check_no_leak(oof_paths, records, fam, family_of, "thresholds / fusion (OOF predictions)")
        paths = [manifest.abspath(r) for r in split.test]
        y = Manifest(manifest.root, split.test).label_matrix(labels)
        windows = {
            m: member_window_scores(
                hcfg, load_member(hcfg, m, checkpoints=member_dirs(hcfg.runs_dir, m), device=device), paths
            )
            for m in members
        }
        rows: dict[str, Any] = {}
        for m in members:
            rows[m] = _report(
                y,
                fusion.aggregate_batch(windows[m], hcfg.members[m].aggregation),
                fit_.member_thresholds[m],
                labels,
                fit_.max_instruments,
            )
        used = [m for m in members if fit_.weights.get(m, 0.0) > 0]
        fused = fusion.fuse(
            np.stack([fusion.aggregate_batch(windows[m], fit_.aggregation) for m in used]),
            np.array([fit_.weights[m] for m in used]),
        )
        rows[ENSEMBLE] = _report(y, fused, fit_.thresholds, labels, fit_.max_instruments)
        rows[TRIVIAL] = trivial_report(y, labels)
        per_family[fam] = {
            "libraries": sorted({r.library for r in split.test}),
            "train_libraries": sorted({r.library for r in split.train}),
            "n_train_clips": len(split.train),
            "n_test_excerpts": len(split.test),
            "train_wall_s": round(train_s, 1),
            "training": training,
            "fusion": {
                "weights": fit_.weights,
                "aggregation": fit_.aggregation,
                "thresholds": [round(t, 4) for t in fit_.thresholds],
                "oof": fit_.oof,
            },
            "results": rows,
        }
        r = rows[ENSEMBLE]
        log(
            f"[lolo] holdout {fam}: macro-F1 {r['macro_f1']:.3f} (trivial {rows[TRIVIAL]['macro_f1']:.3f}), "
            f"LRAP {r['lrap']:.3f}, named {r['cardinality_pred']:.2f} / true {r['cardinality_true']:.2f}"
        )
    names = [*members, ENSEMBLE, TRIVIAL]
    report = {
        "protocol": "leave-one-library-family-out",
        "members": members,
        "folds": list(folds) if folds is not None else "all",
        "families": per_family,
        "mean": {n: _mean_rows([per_family[f]["results"][n] for f in chosen]) for n in names},
        "wall_s": round(time.perf_counter() - t_start, 1),
        "device": str(device),
        "labels": labels,
    }
    (out_dir / "lolo.json").write_text(json.dumps(report, indent=2))
    return report


def _row(name: str, clips: str, tests: str, e: Mapping[str, Any], t: Mapping[str, Any]) -> str:
    card = f"{e['cardinality_pred']:.2f}/{e['cardinality_true']:.2f}"
    return (
        f"{name:<12} {clips:>6} {tests:>6} {e['macro_f1']:>9.3f} {t['macro_f1']:>8.3f} {e['micro_f1']:>9.3f} "
        f"{e['lrap']:>6.3f} {e['map']:>6.3f} {card:>11}"
    )


def format_report(report: Mapping[str, Any]) -> str:
    """A plain-text table: one row per held-out family and the mean, ensemble next to trivial."""
    head = (
        f"{'held out':<12} {'clips':>6} {'tests':>6} {'macro-F1':>9} {'trivial':>8} {'micro-F1':>9} "
        f"{'LRAP':>6} {'mAP':>6} {'named/true':>11}"
    )
    lines = [head, "-" * len(head)]
    for fam, f in report["families"].items():
        r = f["results"]
        lines.append(_row(fam, str(f["n_train_clips"]), str(f["n_test_excerpts"]), r[ENSEMBLE], r[TRIVIAL]))
    lines.append(_row("mean", "", "", report["mean"][ENSEMBLE], report["mean"][TRIVIAL]))
    pcf = report["mean"][ENSEMBLE]["per_class_f1"]
    lines.append(
        "per-class F1, mean over held-out families: " + ", ".join(f"{c} {v:.2f}" for c, v in pcf.items())
    )
    return "\n".join(lines)
