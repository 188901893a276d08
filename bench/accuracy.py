"""Accuracy benchmark: leave one sample library out — instruments played by sounds the models never heard.

One IRMAS-style data set is rendered with several permitted sample libraries (single-instrument 3-s clips,
polyphonic 3-s clips with per-window labels, and multi-instrument test excerpts per library). At the full
size the polyphonic clips and the test excerpts are real compositions (music21 corpus scores,
``synth.scores``): on generated songs the protocol flattered the recipe (bench/findings.md).
For each library *family* (FluidR3_GM and FluidR3_GS count as one) the protocol of :mod:`ml.lolo` trains
on every other family, fits fusion weights and per-class thresholds on their out-of-fold predictions, and
scores the held-out family's test excerpts. Two recipes run through the same protocol with the same
training budget per (member, fold):

* ours — the configured ensemble (``ensemble``) with its own recipe;
* the seed's — the Lumen 2023 ensemble (``ensembles.seed``: model2 × 2 + model3, Adam 1e-4), fused the same
  way (its published threshold 0.5 was tuned on the test set, which is not repeated here).

Every figure is read against the trivial answer *every instrument in every excerpt*.

Run: ``python -m bench.accuracy [--quick] [--no-seed]`` (part of ``make bench``).
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
    usable_cores,
    work_dir,
    write_result,
)
from ml import lolo
from ml.config import Config
from ml.data.irmas import build_manifest
from ml.data.synth import META_NAME, synthesize_config

NAME = "accuracy"
SEED_ENSEMBLE = "seed"
# Published results on the real IRMAS test set (../shared/reference/lumen2023-solution-notes.md).
PUBLISHED_IRMAS = [
    ("Han et al. 2017 (CNN, fixed threshold)", 0.602, 0.503),
    ("the Lumen 2023 ensemble (threshold tuned on test)", 0.628, 0.552),
    ("Reghunath & Rajan 2022 (Swin-T voting)", 0.66, 0.62),
    ("Lekshmi & Rajan 2023 (late fusion CNNs)", 0.69, 0.62),
    ("a fine-tuned PaSST transformer (not peer reviewed)", 0.688, 0.617),
]


@dataclass(frozen=True)
class Size:
    """How big one benchmark run is."""

    libraries: tuple[str, ...]
    train_clips: int  # single-instrument clips, over all libraries
    train_mixes: int  # polyphonic clips, over all libraries
    test_excerpts: int  # per library
    budget_s: float | None  # seconds of training steps per (member, fold); None: the recipe's epochs
    steps_per_epoch: int | None = None
    folds: tuple[int, ...] = (0,)
    seed: int = 21
    corpus_tests: float = 0.0  # share of test excerpts composed from a corpus score (synth.scores.test_share)
    corpus_mixes: float = 0.0  # share of polyphonic clips composed from one (synth.scores.mix_share)


LIBRARIES = ("timgm6mb", "fluidr3_gm", "csound_gm", "opl3", "mpic_additive")
# The full size is the demo profile's data and trial budget (60 s of steps, an epoch of 32 steps between
# validations) with every test excerpt a real composition, so the figures are those of the ensemble
# `make run` serves, on the closest proxy we have for music it never heard.
FULL = Size(
    LIBRARIES,
    train_clips=880,
    train_mixes=1320,
    test_excerpts=24,
    budget_s=60.0,
    steps_per_epoch=32,
    corpus_tests=1.0,
    corpus_mixes=1.0,
)
QUICK = Size(LIBRARIES, train_clips=88, train_mixes=44, test_excerpts=4, budget_s=6.0, steps_per_epoch=2)


def _synth_overrides(size: Size) -> list[str]:
    """``--set`` overrides that make ``cfg.synth`` render ``size``."""
    return [
        f"synth.libraries=[{', '.join(size.libraries)}]",
        f"synth.train_clips={size.train_clips}",
        f"synth.train_mixes={size.train_mixes}",
        f"synth.test_excerpts={size.test_excerpts}",
        f"synth.seed={size.seed}",
        f"synth.scores.test_share={size.corpus_tests}",
        f"synth.scores.mix_share={size.corpus_mixes}",
    ]


def _meta_matches(root: Path, size: Size) -> bool:
    try:
        meta = json.loads((root / META_NAME).read_text())
    except (OSError, ValueError):
        return False
    counts = meta.get("counts", {})
    return (
        meta.get("seed") == size.seed
        and meta.get("libraries") == list(size.libraries)
        and counts.get("train_files") == size.train_clips
        and counts.get("mix_files") == size.train_mixes
        and counts.get("test_files") == size.test_excerpts * len(size.libraries)
        and _shares(meta) == (size.corpus_tests, size.corpus_mixes)
    )


def _shares(meta: Mapping[str, Any]) -> tuple[float, float]:
    scores = meta.get("scores") or {}
    return float(scores.get("test_share", 0.0)), float(scores.get("mix_share", 0.0))


def render(cfg: Config, root: Path, size: Size) -> dict[str, Any]:
    """Render (or reuse) the multi-library data set; what was done and how long it took."""
    if _meta_matches(root, size):
        return {"root": str(root), "reused": True, "seconds": 0.0}
    rep = synthesize_config(derive(cfg, _synth_overrides(size)), root, progress=False, overwrite=True)
    return {"root": str(root), "reused": False, "seconds": round(rep.seconds, 1)}


def run(cfg: Config, *, quick: bool, size: Size | None = None, seed_recipe: bool = True) -> dict[str, Any]:
    """Render the data, run the protocol for our recipe (and the seed's) at equal budgets."""
    size = size or (QUICK if quick else FULL)
    base = work_dir(cfg, NAME) / ("quick" if quick else "full")
    threads = usable_cores()
    overrides = [
        f"data.root={base / 'data'}",
        f"data.cache_dir={base / 'cache'}",
        f"train.torch_threads={threads}",
    ]
    if size.budget_s is not None:
        # the budget decides when to stop; the best weights (by each recipe's monitor) are restored
        overrides += ["train.epochs=100000", f"train.early_stopping_patience={10**6}"]
        overrides += [f"train.time_budget_s={size.budget_s}"]
    if size.steps_per_epoch is not None:
        overrides.append(f"train.steps_per_epoch={size.steps_per_epoch}")
    bcfg = derive(cfg, overrides)
    t0 = time.perf_counter()
    data = render(bcfg, base / "data", size)
    manifest = build_manifest(
        bcfg.data.root, bcfg.label_codes, cache_path=Path(bcfg.data.cache_dir) / "manifest.csv"
    )
    timings = {"render_s": time.perf_counter() - t0}
    recipes = {"ours": list(bcfg.ensemble_members)}
    if seed_recipe:
        recipes["seed"] = list(bcfg.ensembles[SEED_ENSEMBLE])
    reports: dict[str, Any] = {}
    for name, members in recipes.items():
        out = base / f"runs-{name}"
        shutil.rmtree(out, ignore_errors=True)  # the benchmark's own scratch folder: always a fresh run
        t0 = time.perf_counter()
        reports[name] = lolo.run_lolo(bcfg, manifest, out, members=members, folds=size.folds)
        timings[f"{name}_s"] = time.perf_counter() - t0
        print(lolo.format_report(reports[name]), flush=True)
    return {
        "size": asdict(size),
        "data": data,
        "libraries_per_family": {
            f: sorted({r.library for r in manifest if lolo.default_family(r.library) == f})
            for f in reports["ours"]["families"]
        },
        "threads": threads,
        "device": reports["ours"]["device"],
        "recipes": recipes,
        "protocol": reports,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "labels": bcfg.label_codes,
        "torch": torch.__version__,
    }


# ---- report ----------------------------------------------------------------------------------------------


def headline(result: Mapping[str, Any]) -> dict[str, float]:
    """Mean over held-out families: our ensemble, the seed's, the trivial answer."""
    ours = result["protocol"]["ours"]["mean"]
    out = {
        "ours_macro_f1": ours[lolo.ENSEMBLE]["macro_f1"],
        "ours_micro_f1": ours[lolo.ENSEMBLE]["micro_f1"],
        "ours_lrap": ours[lolo.ENSEMBLE]["lrap"],
        "ours_map": ours[lolo.ENSEMBLE]["map"],
        "ours_cardinality": ours[lolo.ENSEMBLE]["cardinality_pred"],
        "true_cardinality": ours[lolo.ENSEMBLE]["cardinality_true"],
        "trivial_macro_f1": ours[lolo.TRIVIAL]["macro_f1"],
        "worst_margin_over_trivial": min(
            f["results"][lolo.ENSEMBLE]["macro_f1"] - f["results"][lolo.TRIVIAL]["macro_f1"]
            for f in result["protocol"]["ours"]["families"].values()
        ),
    }
    if "seed" in result["protocol"]:
        seed = result["protocol"]["seed"]["mean"][lolo.ENSEMBLE]
        out |= {"seed_macro_f1": seed["macro_f1"], "seed_lrap": seed["lrap"]}
    return out


def _family_rows(report: Mapping[str, Any], name: str) -> list[list[Any]]:
    rows = []
    for fam, f in report["families"].items():
        r, t = f["results"][name], f["results"][lolo.TRIVIAL]
        rows.append(
            [
                fam,
                f["n_test_excerpts"],
                r["micro_f1"],
                r["macro_f1"],
                t["macro_f1"],
                r["lrap"],
                r["map"],
                f"{r['cardinality_pred']:.2f} / {r['cardinality_true']:.2f}",
            ]
        )
    m, t = report["mean"][name], report["mean"][lolo.TRIVIAL]
    rows.append(
        [
            "**mean**",
            "",
            m["micro_f1"],
            f"**{m['macro_f1']:.3f}**",
            t["macro_f1"],
            f"**{m['lrap']:.3f}**",
            m["map"],
            f"{m['cardinality_pred']:.2f} / {m['cardinality_true']:.2f}",
        ]
    )
    return rows


def _plot(result: Mapping[str, Any]) -> str:
    plt = pyplot()
    fams = list(result["protocol"]["ours"]["families"])
    series = [("ours", lolo.ENSEMBLE, "our ensemble"), ("ours", lolo.TRIVIAL, "every instrument (trivial)")]
    if "seed" in result["protocol"]:
        series.insert(1, ("seed", lolo.ENSEMBLE, "seed ensemble"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    x = np.arange(len(fams) + 1)
    width = 0.8 / len(series)
    for ax, key, title in zip(axes, ("macro_f1", "lrap"), ("macro-F1", "LRAP"), strict=True):
        for i, (recipe, row, label) in enumerate(series):
            rep = result["protocol"][recipe]
            vals = [rep["families"][f]["results"][row][key] for f in fams] + [rep["mean"][row][key]]
            ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=label)
        ax.set_xticks(x, [*fams, "mean"], fontsize=8)
        ax.set_title(f"{title}, held-out library family")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    link = save_figure(fig, "accuracy")
    plt.close(fig)
    return link


def _share_text(share: float) -> str:
    return {0.0: "none", 1.0: "all"}.get(float(share), f"{float(share):.0%}")


def render_markdown(result: Mapping[str, Any], *, plot: bool = True) -> str:
    """The "## Accuracy" section of docs/benchmarks.md."""
    size = result["size"]
    h = headline(result)
    ours = result["protocol"]["ours"]
    budget = (
        f"**{size['budget_s']:g} s of training steps** per member"
        if size["budget_s"] is not None
        else "the recipe's own epochs and early stopping"
    )
    lines = [
        "## Accuracy: leave one sample library out (`bench/accuracy.py`)",
        "",
        f"One data set, rendered with {', '.join(size['libraries'])}: {size['train_clips']} "
        f"single-instrument and {size['train_mixes']} polyphonic 3-s training clips, {size['test_excerpts']} "
        "multi-instrument test excerpts (5–20 s) per library; "
        f"{_share_text(size.get('corpus_mixes', 0.0))} of the polyphonic clips and "
        f"{_share_text(size.get('corpus_tests', 0.0))} of the test excerpts are real compositions (music21 "
        "corpus scores), the rest generated songs. For each library family the models train on "
        "the other families only (fold "
        f"{', '.join(map(str, size['folds']))} of their clips validates), fusion weights and per-class "
        "thresholds come from those out-of-fold predictions, and the held-out family's excerpts are the "
        "test (`ml.lolo`, which asserts at every step that the held-out family never enters training, "
        f"validation or thresholds). Budget: {budget}, {result['threads']} thread(s), {result['device']}.",
        "",
        f"**Mean over held-out families: macro-F1 {h['ours_macro_f1']:.3f}** (trivial every-instrument "
        f"answer {h['trivial_macro_f1']:.3f}; worst family {h['worst_margin_over_trivial']:+.3f} over "
        "trivial), "
        f"**LRAP {h['ours_lrap']:.3f}**, micro-F1 {h['ours_micro_f1']:.3f}, mAP {h['ours_map']:.3f}; "
        f"{h['ours_cardinality']:.2f} instruments named per excerpt, {h['true_cardinality']:.2f} true.",
        "",
    ]
    if "seed_macro_f1" in h:
        lines += [
            f"The seed's recipe through the same protocol and budget: macro-F1 {h['seed_macro_f1']:.3f}, "
            f"LRAP {h['seed_lrap']:.3f}.",
            "",
        ]
    for recipe, title in (("ours", "Our ensemble"), ("seed", "The seed's ensemble")):
        if recipe not in result["protocol"]:
            continue
        rep = result["protocol"][recipe]
        lines += [
            f"### {title} ({', '.join(result['recipes'][recipe])})",
            "",
            md_table(
                [
                    "held out",
                    "excerpts",
                    "micro-F1",
                    "macro-F1",
                    "trivial macro-F1",
                    "LRAP",
                    "mAP",
                    "named / true",
                ],
                _family_rows(rep, lolo.ENSEMBLE),
            ),
            "",
            "Members alone (mean over held-out families): "
            + "; ".join(
                f"{m} macro-F1 {rep['mean'][m]['macro_f1']:.3f}, LRAP {rep['mean'][m]['lrap']:.3f}"
                for m in result["recipes"][recipe]
            )
            + ".",
            "",
        ]
    labels = result["labels"]
    lines += [
        "Per-class F1 of our ensemble per held-out family:",
        "",
        md_table(
            ["held out", *labels],
            [
                [f, *(ours["families"][f]["results"][lolo.ENSEMBLE]["per_class_f1"][c] for c in labels)]
                for f in ours["families"]
            ]
            + [["mean", *(ours["mean"][lolo.ENSEMBLE]["per_class_f1"][c] for c in labels)]],
        ),
        "",
    ]
    if plot:
        lines += [f"![accuracy]({_plot(result)})", ""]
    lines += [
        "### Published results on the real IRMAS test set — not measured here",
        "",
        "For orientation only: other people's figures on the real IRMAS recordings (2,874 excerpts), copied "
        "from `../shared/reference/`; the figures above are on generated audio and are not comparable.",
        "",
        md_table(["system (published)", "micro-F1", "macro-F1"], [list(r) for r in PUBLISHED_IRMAS]),
        "",
        f"Timings (s): {', '.join(f'{k[:-2]} {v:g}' for k, v in result['timings_s'].items())}.",
    ]
    return "\n".join(lines)


def headline_text(result: Mapping[str, Any]) -> str:
    """The sentence docs/benchmarks.md and the README quote."""
    h = headline(result)
    seed = f"; the seed's recipe {h['seed_macro_f1']:.3f}" if "seed_macro_f1" in h else ""
    return (
        f"leave-one-library-out mean macro-F1 {h['ours_macro_f1']:.3f} "
        f"(trivial {h['trivial_macro_f1']:.3f}), "
        f"LRAP {h['ours_lrap']:.3f}, named {h['ours_cardinality']:.2f} / true {h['true_cardinality']:.2f} "
        f"instruments per excerpt{seed}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.accuracy [--quick] [--no-seed] [--profile P] [--set k=v]``."""
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--no-seed", action="store_true", help="skip the seed recipe (halves the run time)")
    args = p.parse_args(None if argv is None else list(argv))
    cfg = load(args)
    result = run(cfg, quick=args.quick, seed_recipe=not args.no_seed)
    result["headline_text"] = headline_text(result)
    md = render_markdown(result, plot=not args.no_write)
    if not args.no_write:
        write_result(NAME, result, md, quick=args.quick)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
