"""Accuracy benchmark: the seed's recipe against ours, equal training budget, same- and cross-library tests.

Both recipes train on one generated IRMAS-style training set rendered with one permitted sample library
(TimGM6mb) and are evaluated on two sets of generated test excerpts: the *same* compositions rendered
with TimGM6mb (same library) and with FluidR3_GM (the other library: cross-library generalisation, the
closest this project can get to "music it has never heard"). Every member trains on the same folds for
the same number of seconds of training steps (``train.time_budget_s``), so a recipe whose steps are
expensive (the seed's 9-M-parameter CQT CNN) gets fewer of them — that is the trade-off on this hardware.

Decision thresholds come from the training folds only (per class, fitted on the held-out fold's
predictions: its single-instrument clips plus polyphonic mixtures of them, ``train.oof_mixtures``), never
from the test excerpts. Ensembles:

* the seed ensemble as published (weights 0.36 / 0.46 / 0.18, threshold 0.5; its write-up tuned the
  threshold on the test set, which is not repeated here);
* the seed ensemble with the published weights and thresholds from the training folds;
* the seed ensemble and ours with weights, window aggregation and thresholds searched on the training
  folds (our fusion procedure), and ours searched on the single clips only (the ablation of the mixtures).

Run: ``python -m bench.accuracy [--quick]`` (part of ``make bench``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    derive,
    load,
    md_table,
    parser,
    pyplot,
    save_figure,
    stopwatch,
    usable_cores,
    work_dir,
    write_result,
)
from ml import fusion, metrics
from ml.config import Config
from ml.data.synth import META_NAME, synthesize
from ml.evaluate import member_window_scores, test_excerpts
from ml.inference import load_member, pick_device
from ml.oof import load_oof_set
from ml.train import MIX_PREFIX, LocalHooks, fit, load_train_data

NAME = "accuracy"
TRAIN_LIBRARY = "timgm6mb"
OTHER_LIBRARY = "fluidr3"
# The seed's final ensemble (Lumen 2023 write-up, ../shared/reference): weighted sum of the scores of
# model2 + genre mixing, model2 + BPM mixing and model3, threshold 0.5.
SEED_ENSEMBLE = "seed"
SEED_PUBLISHED_WEIGHTS = {"seed_cqt_genre": 0.36, "seed_cqt_bpm": 0.46, "seed_mel": 0.18}
SEED_PUBLISHED_THRESHOLD = 0.5
# Published results on the real IRMAS test set (../shared/reference/lumen2023-solution-notes.md).
PUBLISHED_IRMAS = [
    ("Han et al. 2017 (CNN, fixed threshold)", 0.602, 0.503),
    ("the Lumen 2023 ensemble (threshold tuned on test)", 0.628, 0.552),
    ("Reghunath & Rajan 2022 (Swin-T voting)", 0.66, 0.62),
    ("Lekshmi & Rajan 2023 (late fusion CNNs)", 0.69, 0.62),
    ("a fine-tuned PaSST transformer (not peer reviewed)", 0.688, 0.617),
]
TEST_SETS = ("same", "cross")


@dataclass(frozen=True)
class Size:
    """How big one benchmark run is."""

    train_clips: int
    test_excerpts: int
    budget_s: float  # seconds of training steps per member (validation not counted)
    steps_per_epoch: int  # short epochs: the budget ends close to an epoch boundary
    fold: int = 0
    train_seed: int = 11
    test_seed: int = 12


FULL = Size(train_clips=440, test_excerpts=40, budget_s=75.0, steps_per_epoch=8)
QUICK = Size(train_clips=44, test_excerpts=6, budget_s=4.0, steps_per_epoch=2)


# ---- data ------------------------------------------------------------------------------------------------


def _meta_matches(root: Path, *, train_clips: int, test_excerpts: int, seed: int, library: str) -> bool:
    try:
        meta = json.loads((root / META_NAME).read_text())
    except (OSError, ValueError):
        return False
    counts = meta.get("counts", {})
    return (
        meta.get("seed") == seed
        and counts.get("train_files") == train_clips
        and counts.get("test_files") == test_excerpts
        and len(meta.get("soundfonts", [])) == 1
        and library in meta["soundfonts"][0].lower().replace("_", "").replace("-", "")
    )


def render(
    cfg: Config, root: Path, *, train_clips: int, test_excerpts: int, seed: int, library: str
) -> dict[str, Any]:
    """Render (or reuse) a data set with one sample library; returns what was done and how long it took."""
    if _meta_matches(root, train_clips=train_clips, test_excerpts=test_excerpts, seed=seed, library=library):
        return {"root": str(root), "library": library, "reused": True, "seconds": 0.0}
    rep = synthesize(
        root,
        labels=cfg.label_codes,
        programs=cfg.synth.programs,
        train_clips=train_clips,
        test_excerpts=test_excerpts,
        seed=seed,
        soundfonts=[library],
        sample_rate=cfg.synth.sample_rate,
        clips_per_recording=cfg.synth.clips_per_recording,
        progress=False,
        overwrite=True,
    )
    return {"root": str(root), "library": library, "reused": False, "seconds": round(rep.seconds, 1)}


def same_compositions(a: Path, b: Path) -> tuple[int, int]:
    """How many test excerpts of ``a`` have the same label set as the same-named excerpt of ``b``."""
    files = sorted((a / "IRMAS-TestingData").glob("*.txt"))
    same = sum(
        1
        for f in files
        if (b / "IRMAS-TestingData" / f.name).is_file()
        and sorted(f.read_text().split()) == sorted((b / "IRMAS-TestingData" / f.name).read_text().split())
    )
    return same, len(files)


# ---- training and scoring --------------------------------------------------------------------------------


def train_member(cfg: Config, member: str, fold: int, data: Any) -> dict[str, Any]:
    """Fit one member on every fold but ``fold`` for the configured budget; a summary of the run."""
    out = Path(cfg.runs_dir) / member / f"fold{fold}"
    shutil.rmtree(out, ignore_errors=True)  # fresh: never resume an earlier benchmark's run
    hooks = LocalHooks(out / "work")
    with stopwatch() as t:
        res = fit(cfg, member, fold, out_dir=out, hooks=hooks, data=data, device=pick_device())
    shutil.rmtree(out / "work", ignore_errors=True)
    hist = hooks.history
    train_s = sum(h["train_s"] for h in hist)
    samples = sum(h["samples"] for h in hist)
    return {
        "epochs": len(hist),
        "best_epoch": res.best_epoch,
        "samples": int(samples),
        "train_s": round(train_s, 1),
        "wall_s": round(t["s"], 1),
        "samples_per_s": round(samples / train_s, 1) if train_s else None,
        "val": {k: round(float(v), 4) for k, v in res.metrics.items() if k.startswith("val_")},
    }


def _fit_member_thresholds(
    oof_scores: Mapping[str, np.ndarray], y: np.ndarray, objective: str
) -> dict[str, np.ndarray]:
    return {m: fusion.fit_thresholds(y, s, objective=objective) for m, s in oof_scores.items()}


def search_fusion(
    scores_by_agg: Mapping[str, Mapping[str, np.ndarray]], y: np.ndarray, objective: str
) -> fusion.FusionResult:
    """Our fusion procedure on out-of-fold scores: weights × aggregation, per-class thresholds."""
    best: fusion.FusionResult | None = None
    for agg, member_scores in scores_by_agg.items():
        r = fusion.coordinate_search(member_scores, y, objective=objective, aggregation=agg)
        if best is None or r.value > best.value + 1e-12:
            best = r
    assert best is not None
    return best


@dataclass
class EnsembleRule:
    """How an ensemble turns member window scores into decisions."""

    name: str
    members: list[str]
    weights: dict[str, float]
    aggregation: str
    thresholds: list[float]
    note: str

    def scores(self, windows: Mapping[str, Sequence[np.ndarray]]) -> np.ndarray:
        """Fused (N, C) excerpt scores from per-member lists of (W_i, C) window scores."""
        used = [m for m in self.members if self.weights.get(m, 0.0) > 0]
        stacked = np.stack([fusion.aggregate_batch(windows[m], self.aggregation) for m in used])
        return fusion.fuse(stacked, np.array([self.weights[m] for m in used]))


def _report(
    y: np.ndarray, scores: np.ndarray, thresholds: Sequence[float] | np.ndarray, labels: list[str]
) -> dict[str, Any]:
    r = metrics.evaluate(y, scores, np.asarray(thresholds), labels)
    return {
        **{k: round(float(r[k]), 4) for k in ("micro_f1", "macro_f1", "lrap", "map")},
        "cardinality_pred": round(float(r["cardinality_pred"]), 3),
        "cardinality_true": round(float(r["cardinality_true"]), 3),
        "per_class_f1": {c: round(float(v["f1"]), 3) for c, v in r["per_class"].items()},
    }


TRIVIAL = "baseline: every instrument in every excerpt"


def trivial_baseline(y: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Scores of answering every label for every excerpt (no model): the floor a model must clear.

    With ~2.5 of 11 instruments per excerpt this already earns a macro-F1 near 0.37, so F1 figures are
    read against it; LRAP (threshold-free) gives it the chance level.
    """
    return _report(y, np.full(y.shape, 0.5, dtype=np.float32), [0.5] * len(labels), labels)


# ---- the benchmark ---------------------------------------------------------------------------------------


def run(cfg: Config, *, quick: bool, size: Size | None = None) -> dict[str, Any]:
    """Render the data, train both recipes with equal budgets, fit thresholds on training folds, evaluate."""
    size = size or (QUICK if quick else FULL)
    base = work_dir(cfg, NAME) / ("quick" if quick else "full")
    timings: dict[str, float] = {}
    seed_members = list(cfg.ensembles[SEED_ENSEMBLE])
    our_members = list(cfg.ensembles[cfg.ensemble])
    members = seed_members + our_members
    threads = usable_cores()
    bcfg = derive(
        cfg,
        [
            f"data.root={base / ('train-' + TRAIN_LIBRARY)}",
            f"data.cache_dir={base / 'cache'}",
            f"runs_dir={base / 'runs'}",
            # The budget decides when to stop; best weights (by each recipe's monitor) are restored.
            "train.epochs=100000",
            f"train.early_stopping_patience={10**6}",
            f"train.steps_per_epoch={size.steps_per_epoch}",
            f"train.time_budget_s={size.budget_s}",
            f"train.torch_threads={threads}",
        ],
    )
    objective = bcfg.fusion.objective

    t0 = time.perf_counter()
    # (name, library, training clips, test excerpts, seed): both test sets render the same compositions.
    sets = [
        ("train", TRAIN_LIBRARY, size.train_clips, 0, size.train_seed),
        ("same", TRAIN_LIBRARY, 0, size.test_excerpts, size.test_seed),
        ("cross", OTHER_LIBRARY, 0, size.test_excerpts, size.test_seed),
    ]
    roots = {name: base / f"{'train' if name == 'train' else 'test'}-{lib}" for name, lib, *_ in sets}
    data_info = {
        name: render(bcfg, roots[name], train_clips=n_train, test_excerpts=n_test, seed=seed, library=lib)
        for name, lib, n_train, n_test, seed in sets
    }
    matching, total = same_compositions(roots["same"], roots["cross"])
    timings["render_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    training: dict[str, Any] = {}
    datasets: dict[int, Any] = {}
    for m in members:
        sr = int(bcfg.front_ends[bcfg.members[m].front_end].sample_rate)
        if sr not in datasets:
            datasets[sr] = load_train_data(bcfg, sr)
        training[m] = train_member(bcfg, m, size.fold, datasets[sr])
        print(f"[accuracy] {m}: {training[m]}", flush=True)
    n_train_clips = int((next(iter(datasets.values())).folds != size.fold).sum())
    timings["train_s"] = time.perf_counter() - t0

    # Thresholds, weights and aggregation from the held-out training fold (out-of-fold predictions).
    t0 = time.perf_counter()
    aggs = list(dict.fromkeys(["mean", *bcfg.fusion.aggregations]))
    oof = load_oof_set(bcfg, members, aggs)
    member_agg = {m: bcfg.members[m].aggregation for m in members}
    member_th = _fit_member_thresholds(
        {m: oof.scores[member_agg[m]][m] for m in members}, oof.y_true, objective
    )
    seed_search = search_fusion(
        {a: {m: oof.scores[a][m] for m in seed_members} for a in aggs}, oof.y_true, objective
    )
    ours_search = search_fusion(
        {a: {m: oof.scores[a][m] for m in our_members} for a in aggs}, oof.y_true, objective
    )
    # Ablation: the same search on the single-instrument held-out clips only (before train.oof_mixtures).
    single = np.array([not p.startswith(MIX_PREFIX) for p in oof.paths])
    ours_single = search_fusion(
        {a: {m: oof.scores[a][m][single] for m in our_members} for a in aggs}, oof.y_true[single], objective
    )
    seed_fused_oof = fusion.fuse(
        np.stack([oof.scores["mean"][m] for m in seed_members]),
        np.array([SEED_PUBLISHED_WEIGHTS[m] for m in seed_members]),
    )
    n_labels = len(bcfg.labels)
    rules = [
        EnsembleRule(
            "seed ensemble, as published",
            seed_members,
            dict(SEED_PUBLISHED_WEIGHTS),
            "mean",
            [SEED_PUBLISHED_THRESHOLD] * n_labels,
            "published weights, threshold 0.5",
        ),
        EnsembleRule(
            "seed ensemble, training-fold thresholds",
            seed_members,
            dict(SEED_PUBLISHED_WEIGHTS),
            "mean",
            [float(t) for t in fusion.fit_thresholds(oof.y_true, seed_fused_oof, objective=objective)],
            "published weights, per-class thresholds from the held-out training fold",
        ),
        EnsembleRule(
            "seed ensemble, our fusion",
            seed_members,
            seed_search.weights,
            seed_search.aggregation,
            list(seed_search.thresholds),
            "weights, aggregation and thresholds searched on the held-out training fold",
        ),
        EnsembleRule(
            "our ensemble, single-clip thresholds",
            our_members,
            ours_single.weights,
            ours_single.aggregation,
            list(ours_single.thresholds),
            "as ours, but searched on the single-instrument held-out clips only (no mixtures)",
        ),
        EnsembleRule(
            "our ensemble",
            our_members,
            ours_search.weights,
            ours_search.aggregation,
            list(ours_search.thresholds),
            "weights, aggregation and thresholds searched on the held-out training fold",
        ),
    ]
    oof_reports = {
        m: _report(oof.y_true, oof.scores[member_agg[m]][m], member_th[m], oof.labels) for m in members
    }
    timings["fusion_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    evaluation: dict[str, dict[str, Any]] = {}
    for test_set in TEST_SETS:
        paths, y = test_excerpts(bcfg, roots[test_set])
        windows = {}
        for m in members:
            predictor = load_member(bcfg, m, device=pick_device())
            windows[m] = member_window_scores(bcfg, predictor, paths)
        rows: dict[str, Any] = {}
        for m in members:
            scores = fusion.aggregate_batch(windows[m], member_agg[m])
            rows[m] = _report(y, scores, member_th[m], bcfg.label_codes)
        for rule in rules:
            rows[rule.name] = _report(y, rule.scores(windows), rule.thresholds, bcfg.label_codes)
        rows[TRIVIAL] = trivial_baseline(y, bcfg.label_codes)
        evaluation[test_set] = {"n_excerpts": len(paths), "results": rows}
    timings["evaluate_s"] = time.perf_counter() - t0

    return {
        "size": asdict(size),
        "train_library": TRAIN_LIBRARY,
        "other_library": OTHER_LIBRARY,
        "data": data_info,
        "same_compositions": {"matching_label_sets": matching, "excerpts": total},
        "fold": size.fold,
        "train_clips_used": n_train_clips,
        "validation_clips": int(single.sum()),
        "validation_mixtures": int((~single).sum()),
        "threads": threads,
        "device": str(pick_device()),
        "recipes": {"seed": seed_members, "ours": our_members},
        "training": training,
        "oof": oof_reports,
        "ensembles": [asdict(r) for r in rules],
        "evaluation": evaluation,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "labels": bcfg.label_codes,
        "torch": torch.__version__,
    }


# ---- report ----------------------------------------------------------------------------------------------


def headline(result: Mapping[str, Any]) -> dict[str, float]:
    """Cross-library macro-F1 of the seed recipe (as published, and with our fusion) and of ours."""
    cross = result["evaluation"]["cross"]["results"]
    same = result["evaluation"]["same"]["results"]
    return {
        "seed_published_cross_macro_f1": cross["seed ensemble, as published"]["macro_f1"],
        "seed_thresholds_cross_macro_f1": cross["seed ensemble, training-fold thresholds"]["macro_f1"],
        "seed_our_fusion_cross_macro_f1": cross["seed ensemble, our fusion"]["macro_f1"],
        "ours_cross_macro_f1": cross["our ensemble"]["macro_f1"],
        "ours_single_clip_thresholds_cross_macro_f1": cross["our ensemble, single-clip thresholds"][
            "macro_f1"
        ],
        "trivial_cross_macro_f1": cross[TRIVIAL]["macro_f1"] if TRIVIAL in cross else float("nan"),
        "seed_cross_lrap": cross["seed ensemble, as published"]["lrap"],
        "ours_cross_lrap": cross["our ensemble"]["lrap"],
        "seed_cross_cardinality": cross["seed ensemble, training-fold thresholds"]["cardinality_pred"],
        "ours_cross_cardinality": cross["our ensemble"]["cardinality_pred"],
        "true_cross_cardinality": cross["our ensemble"]["cardinality_true"],
        "seed_published_same_macro_f1": same["seed ensemble, as published"]["macro_f1"],
        "ours_same_macro_f1": same["our ensemble"]["macro_f1"],
    }


def _plot(result: Mapping[str, Any]) -> str:
    plt = pyplot()
    names = list(result["evaluation"]["same"]["results"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    x = np.arange(len(names))
    for ax, key, title in zip(axes, ("macro_f1", "lrap"), ("macro-F1", "LRAP"), strict=True):
        for i, (ts, label) in enumerate(
            (
                ("same", f"same library ({result['train_library']})"),
                ("cross", f"other library ({result['other_library']})"),
            )
        ):
            vals = [result["evaluation"][ts]["results"][n][key] for n in names]
            ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, label=label)
        ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Test excerpts: seed recipe vs ours (equal training budget, thresholds from training folds)")
    fig.tight_layout()
    link = save_figure(fig, "accuracy")
    plt.close(fig)
    return link


def render_markdown(result: Mapping[str, Any], *, plot: bool = True) -> str:
    """The "## Accuracy" section of docs/benchmarks.md."""
    size = result["size"]
    tr = result["training"]
    seed_m, our_m = result["recipes"]["seed"], result["recipes"]["ours"]
    h = headline(result)
    lines = [
        "## Accuracy (`bench/accuracy.py`)",
        "",
        f"Both recipes train on the same generated training set ({size['train_clips']} three-second clips "
        f"rendered with **{result['train_library']}**; fold {result['fold']} held out: "
        f"{result['train_clips_used']} clips train, {result['validation_clips']} validate). Each member gets "
        f"the same **{size['budget_s']:g} s of training steps** on {result['threads']} thread(s) "
        f"({result['device']}); best weights by the recipe's own monitor are kept. Thresholds, fusion "
        "weights and window aggregation come from the held-out *training* fold only: its clips plus "
        f"{result['validation_mixtures']} polyphonic mixtures of them (2–3 held-out clips with different "
        "instruments, `train.oof_mixtures`). The test sets are "
        f"{result['evaluation']['same']['n_excerpts']} generated multi-instrument excerpts (5–20 s) rendered "
        f"with the training library and **the same compositions rendered with {result['other_library']}** "
        f"({result['same_compositions']['matching_label_sets']}/{result['same_compositions']['excerpts']} "
        "identical label sets), which the models never heard.",
        "",
        f"**Cross-library macro-F1: seed recipe {h['seed_published_cross_macro_f1']:.3f} as published "
        f"({h['seed_thresholds_cross_macro_f1']:.3f} with training-fold thresholds, "
        f"{h['seed_our_fusion_cross_macro_f1']:.3f} with our fusion) vs ours "
        f"{h['ours_cross_macro_f1']:.3f}** ({h['ours_single_clip_thresholds_cross_macro_f1']:.3f} with "
        "thresholds and weights from the single held-out clips only). "
        f"Same library: {h['seed_published_same_macro_f1']:.3f} vs {h['ours_same_macro_f1']:.3f}.",
        "",
        f"Read F1 against the trivial answer *every instrument in every excerpt* (cross-library macro-F1 "
        f"{h['trivial_cross_macro_f1']:.3f}): the seed ensemble's training-fold thresholds land low and name "
        f"{h['seed_cross_cardinality']:.1f} instruments per excerpt "
        f"(true {h['true_cross_cardinality']:.1f}), "
        f"which buys F1 without telling instruments apart; ours name {h['ours_cross_cardinality']:.1f}. The "
        f"threshold-free ranking (LRAP) separates the recipes: seed ensemble {h['seed_cross_lrap']:.3f}, "
        f"ours {h['ours_cross_lrap']:.3f}.",
        "",
        "### Training at equal budget",
        "",
        md_table(
            ["member", "recipe", "epochs", "samples seen", "samples/s", "best val LRAP", "best val loss"],
            [
                [
                    m,
                    "seed" if m in seed_m else "ours",
                    tr[m]["epochs"],
                    tr[m]["samples"],
                    tr[m]["samples_per_s"],
                    tr[m]["val"].get("val_lrap"),
                    tr[m]["val"].get("val_loss"),
                ]
                for m in seed_m + our_m
            ],
        ),
        "",
    ]
    for ts, title in (
        ("cross", f"Other library ({result['other_library']}): cross-library"),
        ("same", f"Same library ({result['train_library']})"),
    ):
        rows = result["evaluation"][ts]["results"]
        lines += [
            f"### {title}, {result['evaluation'][ts]['n_excerpts']} excerpts",
            "",
            md_table(
                ["model", "micro-F1", "macro-F1", "LRAP", "mAP", "labels/excerpt (pred / true)"],
                [
                    [
                        n,
                        r["micro_f1"],
                        r["macro_f1"],
                        r["lrap"],
                        r["map"],
                        f"{r['cardinality_pred']:.2f} / {r['cardinality_true']:.2f}",
                    ]
                    for n, r in rows.items()
                ],
            ),
            "",
            "Per-class F1:",
            "",
            md_table(
                ["model", *result["labels"]],
                [[n, *(r["per_class_f1"][c] for c in result["labels"])] for n, r in rows.items()],
            ),
            "",
        ]
    if plot:
        lines += [f"![accuracy]({_plot(result)})", ""]
    lines += [
        "Ensembles: "
        + "; ".join(
            f"*{e['name']}*: "
            + ", ".join(f"{m} {w:.2f}" for m, w in e["weights"].items())
            + f", {e['aggregation']} aggregation ({e['note']})"
            for e in result["ensembles"]
        )
        + ".",
        "",
        "### Published results on the real IRMAS test set — not measured here",
        "",
        "For orientation only: these are other people's figures on the real IRMAS recordings (2,874 "
        "excerpts), copied from `../shared/reference/`; the figures above are on generated audio and are "
        "not comparable.",
        "",
        md_table(["system (published)", "micro-F1", "macro-F1"], [list(r) for r in PUBLISHED_IRMAS]),
        "",
        f"Timings (s): {', '.join(f'{k[:-2]} {v:g}' for k, v in result['timings_s'].items())}.",
    ]
    return "\n".join(lines)


def headline_text(result: Mapping[str, Any]) -> str:
    """The sentence docs/benchmarks.md and the README quote."""
    h = headline(result)
    return (
        f"cross-library macro-F1 (train {result['train_library']}, test {result['other_library']}): "
        "seed recipe "
        f"{h['seed_published_cross_macro_f1']:.3f} as published, {h['seed_our_fusion_cross_macro_f1']:.3f} "
        f"with our fusion; ours {h['ours_cross_macro_f1']:.3f}; trivial every-label answer "
        f"{h['trivial_cross_macro_f1']:.3f}; LRAP seed {h['seed_cross_lrap']:.3f} vs ours "
        f"{h['ours_cross_lrap']:.3f} (equal {result['size']['budget_s']:g}-s training budgets)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.accuracy [--quick] [--profile P] [--set k=v]``."""
    args = parser(__doc__.splitlines()[0]).parse_args(None if argv is None else list(argv))
    cfg = load(args)
    result = run(cfg, quick=args.quick)
    result["headline_text"] = headline_text(result)
    md = render_markdown(result, plot=not args.no_write)
    if args.no_write:
        print(md)
    else:
        write_result(NAME, result, md, quick=args.quick)
        print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
