"""Training throughput: the Ray Train trial against a bare PyTorch loop, and fold-parallel scaling.

Run with ``python -m bench.training [--quick] [--member NAME] [--no-write]`` (``make bench`` runs it).

1. **One member, one fold, three ways, in the same run** (alternating, repeated; the medians are kept):

   * *bare loop*: a minimal hand-written PyTorch loop in this process over the same decode-once cache
     (:func:`ml.train_data.load_train_data`), the same model (:func:`ml.models.build_classifier` at the
     training crop), the same cropper, augmenter, optimiser and loss as :func:`ml.train.fit`; no validation,
     no checkpoints;
   * *fit in-process*: :func:`ml.train.fit` with :class:`ml.train.LocalHooks` (our loop without Ray);
   * *Ray Train trial*: :func:`ray_jobs.train.train` for ``members=[m], folds=[0]`` (a Tune grid of one
     TorchTrainer), starting its own local Ray.

   All three run ``epochs × steps_per_epoch`` steps of the same batch size with the same number of torch
   threads. The *steady-state* rate is the median over the epochs after the first (the first warms up
   allocators and caches); the bare loop is timed in chunks of ``steps_per_epoch`` steps the same way.
   ``data_share`` is the time to draw, crop and move a batch ÷ the step time. The *end-to-end* rate is the
   samples trained ÷ the wall time of the whole call (model build, validation, checkpoints, OOF scoring,
   and for Ray: start-up, scheduling, reports, MLflow logging).

2. **Fold-parallel scaling**: 1, 2 and 4 folds of the same member trained concurrently (one trial each,
   1 CPU and 1 torch thread per trial, or 1 GPU per trial where GPUs exist) on one local Ray that has
   enough logical CPUs for all of them. The aggregate rate is the sum over trials of their training rates
   (they overlap); the end-to-end aggregate is all samples ÷ the wall time of the ``train()`` call.

Everything lives under ``<cache_dir>/bench/training/``: a small synthetic IRMAS-style data set rendered
once with :mod:`ml.data.synth`, its decoded cache, and a fresh runs folder / Ray storage per measurement
(so ``train()`` never skips a fold it finds finished) plus an own MLflow store; the demo's runs are
untouched.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import common
from bench.common import derive
from ml.config import Config
from ray_jobs.train import TRIAL_DRIVER_CPUS

NAME = "training"
TARGET_RATIO = 0.9

# Sizes of the two modes (2-core budget: full ≤ 6 min, quick ≤ 75 s, Ray start-up included).
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "train_clips": 110,
        # ~3-s epochs: with 1-s epochs the median caught Ray's start-up bursts (0.85 vs 0.92 measured)
        "epochs": 4,
        "steps_per_epoch": 30,
        "repeats": 2,
        "scaling_trials": [1, 2, 4],
        "scaling_epochs": 4,
        "scaling_steps_per_epoch": 16,
    },
    "quick": {
        "train_clips": 22,
        "epochs": 2,
        "steps_per_epoch": 4,
        "repeats": 1,
        "scaling_trials": [1, 2],
        "scaling_epochs": 2,
        "scaling_steps_per_epoch": 4,
    },
}


# ---- pure parts (unit-tested) ---------------------------------------------------------------------------


def steady(values: Sequence[float]) -> float:
    """Median of per-epoch figures after the first epoch (the first warms up); the only one if just one."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return float("nan")
    return float(statistics.median(vals[1:] if len(vals) > 1 else vals))


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return None
    return a / b


def _median(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(statistics.median(vals)) if vals else None


WAYS = ("bare", "fit", "ray")
WAY_LABELS = {
    "bare": "bare PyTorch loop",
    "fit": "`ml.train.fit` in-process (LocalHooks)",
    "ray": "Ray Train trial (`ray_jobs.train.train`)",
}


def summarise_comparison(runs: Sequence[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Medians over repetitions of each way's figures, and the ratios against the bare loop.

    Args:
        runs: One dict per repetition: ``{"bare"|"fit"|"ray": {"samples_per_s", "data_share",
            "end_to_end_samples_per_s", …}}``.

    Returns:
        ``{"rows": {way: medians}, "ratio": ray ÷ bare (steady state), "ratio_end_to_end": Ray's end-to-end
        rate ÷ bare steady state, "fit_ratio": fit ÷ bare, "ray_vs_fit": ray ÷ fit, "ratios_per_repeat",
        "target", "meets_target"}``.
    """
    rows: dict[str, dict[str, float | None]] = {}
    for way in WAYS:
        got = [r[way] for r in runs if way in r]
        keys = sorted({k for g in got for k, v in g.items() if isinstance(v, int | float)})
        rows[way] = {k: _median([g.get(k) for g in got]) for k in keys}
    bare = rows.get("bare", {}).get("samples_per_s")
    ratio = _ratio(rows.get("ray", {}).get("samples_per_s"), bare)
    return {
        "rows": rows,
        "ratio": ratio,
        "ratio_end_to_end": _ratio(rows.get("ray", {}).get("end_to_end_samples_per_s"), bare),
        "fit_ratio": _ratio(rows.get("fit", {}).get("samples_per_s"), bare),
        "ray_vs_fit": _ratio(
            rows.get("ray", {}).get("samples_per_s"), rows.get("fit", {}).get("samples_per_s")
        ),
        "ratios_per_repeat": [
            _ratio(r.get("ray", {}).get("samples_per_s"), r.get("bare", {}).get("samples_per_s"))
            for r in runs
        ],
        "target": TARGET_RATIO,
        "meets_target": ratio is not None and ratio >= TARGET_RATIO,
    }


def scaling_points(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add speed-ups against the 1-trial point (aggregate and end-to-end) and per-trial efficiency."""
    first = next((p for p in points if p["trials"] == 1), points[0] if points else None)
    base = first or {}
    out = []
    for p in points:
        q = dict(p)
        q["speedup"] = _ratio(p.get("aggregate_samples_per_s"), base.get("aggregate_samples_per_s"))
        q["speedup_end_to_end"] = _ratio(
            p.get("end_to_end_samples_per_s"), base.get("end_to_end_samples_per_s")
        )
        q["efficiency"] = None if q["speedup"] is None else q["speedup"] / p["trials"]
        out.append(q)
    return out


def _fmt(v: float | None, digits: int = 1) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{100 * v:.1f} %"


def render_markdown(result: dict[str, Any], plot: str | None) -> str:
    """The report's "## Training" section from a result dict (see :func:`run`)."""
    s = result["settings"]
    c = result["comparison"]
    rows = c["rows"]
    bare = rows.get("bare", {}).get("samples_per_s")
    ratio = c.get("ratio")
    verdict = (
        "meets" if c.get("meets_target") else "misses"
    ) + f" the target of ≥ {c.get('target', TARGET_RATIO):g}"
    lines = [
        "## Training",
        "",
        f"Member `{s['member']}`, fold 0 of {s['folds_k']}; {s['train_clips']} synthetic training clips "
        f"(decoded once, {s['sample_rate']} Hz), random {s['crop_s']:g}-s crops, batch {s['batch_size']}, "
        f"{s['epochs']} epochs × {s['steps_per_epoch']} steps, device {s['device']}, "
        f"**{s['threads']} torch thread(s) in every variant** (checked: "
        f"{', '.join(f'{k} {v}' for k, v in s.get('threads_seen', {}).items()) or 'not reported'}). "
        f"{s['repeats']} repetition(s), run alternately (bare → fit → Ray); medians shown.",
        "",
        "Steady state = median over epochs after the first (the bare loop is timed in chunks of "
        f"{s['steps_per_epoch']} steps the same way), training steps only. End-to-end = samples trained ÷ "
        "wall seconds of the whole call (model build, validation, checkpoints, out-of-fold scoring; for Ray "
        "also starting Ray, Tune/Train scheduling, checkpoint reports and MLflow logging). Data share = "
        "time to draw, crop and move the batch ÷ step time.",
        "",
    ]
    table = []
    for way in WAYS:
        r = rows.get(way, {})
        table.append(
            [
                WAY_LABELS[way] + ", steady state",
                _fmt(r.get("samples_per_s")),
                _pct(r.get("data_share")),
                _fmt(_ratio(r.get("samples_per_s"), bare), 3),
            ]
        )
    for way in WAYS:
        r = rows.get(way, {})
        table.append(
            [
                WAY_LABELS[way] + ", end-to-end",
                _fmt(r.get("end_to_end_samples_per_s")),
                "",
                _fmt(_ratio(r.get("end_to_end_samples_per_s"), bare), 3),
            ]
        )
    lines.append(common.md_table(["variant", "samples/s", "data share", "÷ bare loop"], table))
    lines += [
        "",
        f"**Ray Train trial ÷ bare loop (steady state): {_fmt(ratio, 3)}** — {verdict}"
        f" (per repetition: {', '.join(_fmt(x, 3) for x in c.get('ratios_per_repeat', []))}). "
        f"Our loop's own overhead (fit ÷ bare): {_fmt(c.get('fit_ratio'), 3)}; Ray's on top of it "
        f"(Ray ÷ fit): {_fmt(c.get('ray_vs_fit'), 3)}; end-to-end Ray ÷ bare: "
        f"{_fmt(c.get('ratio_end_to_end'), 3)} (fixed start-up costs weigh heavily in a run this short).",
        "",
    ]
    sc = result.get("scaling")
    if sc:
        hw = (
            f"1 GPU per trial ({sc['gpus']} GPU(s))"
            if sc.get("gpus_per_trial")
            else f"no GPU: {sc['cpus_per_trial']:g} CPU and {sc['threads_per_trial']} torch thread per trial"
        )
        ray_start = (
            f"started once in {_fmt(sc['ray_start_s'])} s"
            if sc.get("ray_start_s")
            else "the comparison's last Ray instance, kept running"
        )
        lines += [
            "### Fold-parallel scaling",
            "",
            f"Folds 0…n−1 of `{s['member']}` as concurrent trials of one `train()` call on one local Ray "
            f"({sc['ray_num_cpus']:g} logical CPUs, {ray_start}); {hw}; "
            f"{sc['epochs']} epochs × {sc['steps_per_epoch']} steps of batch {s['batch_size']} per trial. "
            "Aggregate = sum over trials of their steady-state training rates; the trials start a few "
            "seconds apart, so their training overlaps only partly and the sum can exceed what the cores "
            "give together. End-to-end = all samples ÷ wall seconds of the `train()` call (start-up, "
            "scheduling, validation, checkpoints, MLflow included): the saturation shows there.",
            "",
            common.md_table(
                [
                    "trials",
                    "concurrent",
                    "aggregate samples/s",
                    "speed-up",
                    "per-trial samples/s",
                    "end-to-end samples/s",
                    "speed-up (e2e)",
                    "wall s",
                ],
                [
                    [
                        p["trials"],
                        p.get("concurrent"),
                        _fmt(p.get("aggregate_samples_per_s")),
                        _fmt(p.get("speedup"), 2),
                        _fmt(p.get("per_trial_samples_per_s")),
                        _fmt(p.get("end_to_end_samples_per_s")),
                        _fmt(p.get("speedup_end_to_end"), 2),
                        _fmt(p.get("wall_s")),
                    ]
                    for p in sc["points"]
                ],
            ),
            "",
        ]
        if plot:
            lines += [f"![aggregate training samples/s against concurrent trials]({plot})", ""]
    m = result.get("machine_summary") or {}
    lines += [
        f"Caveat: this machine has {m.get('usable_cores', '?')} usable core(s) ({m.get('cpu', '?')}"
        f"{'; GPUs: ' + ', '.join(m['gpus']) if m.get('gpus') else '; no GPU'}), shared with other work. "
        "The logical Ray CPUs are bookkeeping only: with one thread per trial, concurrent trials can at best "
        "use the physical cores, so the aggregate saturates at their number (2 here) and more trials only "
        "share them. Short runs: treat differences of a few per cent as noise"
        + (" (quick mode: a pipeline check, not a measurement)." if result.get("quick") else "."),
    ]
    if result.get("changes"):
        lines += ["", "Changes made to reduce the overhead: " + result["changes"]]
    return "\n".join(lines)


def plot_scaling(points: Sequence[dict[str, Any]], title: str) -> Any:
    """Aggregate samples/s against concurrent trials, with the ideal (linear) line."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [p["trials"] for p in points]
    agg = [p.get("aggregate_samples_per_s") or float("nan") for p in points]
    e2e = [p.get("end_to_end_samples_per_s") or float("nan") for p in points]
    base = agg[0] if agg else float("nan")
    ax.plot(xs, [base * x for x in xs], "--", color="grey", label="ideal (linear)")
    ax.plot(xs, agg, "o-", label="aggregate (training)")
    ax.plot(xs, e2e, "s-", label="end-to-end (train() wall)")
    ax.set_xticks(xs)
    ax.set_xlabel("concurrent trials")
    ax.set_ylabel("samples/s")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# ---- configuration and data --------------------------------------------------------------------------


def bench_config(cfg: Config, member: str, *, quick: bool, threads: int) -> tuple[Config, Path]:
    """The benchmark's own config (data, cache, runs, MLflow, Ray storage under the work dir) and work dir."""
    mode = "quick" if quick else "full"
    st = SETTINGS[mode]
    wd = common.work_dir(cfg, NAME) / mode
    mt = f"members.{member}.train"
    over = [
        f"data.root={wd / 'data'}",
        f"data.cache_dir={wd / 'cache'}",
        "data.test_root=null",
        f"runs_dir={wd / 'runs'}",
        f"ray.storage_path={wd / 'ray_results'}",
        "ray.address=null",
        f"mlflow.backend_store_uri=sqlite:///{wd / 'mlflow.db'}",
        f"mlflow.artifacts_destination={wd / 'mlflow-artifacts'}",
        "mlflow.tracking_uri=null",
        "mlflow.experiment=mpic-bench-training",
        f"synth.train_clips={st['train_clips']}",
        "synth.test_excerpts=0",
        "train.folds=null",
        "train.max_concurrent_trials=null",
        # the member's own recipe must not override the benchmark's sizes
        f"{mt}.epochs={st['epochs']}",
        f"{mt}.steps_per_epoch={st['steps_per_epoch']}",
        f"{mt}.early_stopping_patience=1000",
        f"{mt}.cpus_per_trial={threads}",
        f"{mt}.torch_threads={threads}",
        f"{mt}.num_workers=1",
        f"{mt}.max_failures=0",
        f"{mt}.time_budget_s=null",
    ]
    return derive(cfg, over), wd


def ensure_data(cfg: Config) -> dict[str, Any]:
    """Render the synthetic training set once (reused when present); returns what was done."""
    from ml.data.synth import synthesize_config

    root = Path(cfg.data.root)
    if (root / "IRMAS-TrainingData").is_dir():
        return {"rendered": False, "seconds": 0.0}
    t0 = time.perf_counter()
    synthesize_config(
        cfg, root, test_excerpts=0, workers=min(2, os.cpu_count() or 1), progress=False, overwrite=True
    )
    return {"rendered": True, "seconds": time.perf_counter() - t0}


def fresh_run_dirs(cfg: Config, wd: Path, tag: str) -> Config:
    """``cfg`` with an empty runs folder and Ray storage of its own (nothing finished to skip or restore)."""
    d = wd / "measure" / tag
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return derive(cfg, [f"runs_dir={d / 'runs'}", f"ray.storage_path={d / 'ray_results'}"])


# ---- the three ways ------------------------------------------------------------------------------------


def bare_loop(cfg: Config, member: str, data: Any, fold: int, *, threads: int) -> dict[str, Any]:
    """A minimal PyTorch loop over the same data, model, cropper, augmenter, optimiser and loss as fit()."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ml.augment import Batch, build_augmenter
    from ml.inference import pick_device
    from ml.models import build_classifier
    from ml.train import build_optimizer
    from ml.train_data import Cropper

    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    tc = cfg.member_train(member)
    device = pick_device()
    torch.manual_seed(tc.seed * 1000 + fold)
    model = build_classifier(cfg, member, window_s=tc.crop_s).to(device)
    sr = model.sample_rate
    augmenter = build_augmenter(cfg.members[member].augment, sr).to(device)
    opt = build_optimizer(model, tc)
    use_amp = tc.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    gen = torch.Generator().manual_seed(tc.seed * 7919 + fold)
    cropper = Cropper(data, round(tc.crop_s * sr), device, tc.crop_min_active)
    genre = torch.from_numpy(data.genre)
    tempo = torch.from_numpy(data.store.tempo.astype(np.float32))
    train_t = torch.from_numpy(data.split(fold)[0])
    bs, steps = tc.batch_size, tc.steps_per_epoch or 1
    model.train()
    augmenter.train()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rates, shares = [], []
    for _epoch in range(tc.epochs):
        perm = train_t[torch.randperm(len(train_t), generator=gen)]
        t_chunk, t_data = time.perf_counter(), 0.0
        for step in range(steps):
            t0 = time.perf_counter()
            a = (step * bs) % len(perm)
            idx = perm[a : a + bs]
            if len(idx) < min(bs, len(perm)):
                idx = torch.cat([idx, perm[: bs - len(idx)]])
            wave, target = cropper(idx, gen)
            batch = Batch(
                wave=wave,
                target=target,
                genre=genre[idx].to(device),
                tempo=tempo[idx].to(device),
            )
            sync()
            t_data += time.perf_counter() - t0
            batch = augmenter(batch, gen)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss = F.binary_cross_entropy_with_logits(model(batch.wave).float(), batch.target)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            float(loss.detach())
        sync()
        dt = time.perf_counter() - t_chunk
        rates.append(steps * bs / dt)
        shares.append(t_data / dt)
    wall = time.perf_counter() - t_start
    return {
        "samples_per_s": steady(rates),
        "data_share": steady(shares),
        "end_to_end_samples_per_s": tc.epochs * steps * bs / wall,
        "wall_s": wall,
        "threads": float(torch.get_num_threads()),
    }


def _from_history(history: Sequence[dict[str, float]], wall: float) -> dict[str, Any]:
    samples = sum(float(h.get("samples", float("nan"))) for h in history)
    out: dict[str, Any] = {
        "samples_per_s": steady([h["samples_per_s"] for h in history]),
        "data_share": steady([h["data_share"] for h in history]),
        "end_to_end_samples_per_s": samples / wall,
        "wall_s": wall,
        "epochs": float(len(history)),
    }
    keep = ("samples_per_s", "data_share", "samples", "train_s", "torch_threads")
    out["history"] = [{k: float(h[k]) for k in keep if k in h} for h in history]
    if history and "torch_threads" in history[-1]:
        out["threads"] = float(history[-1]["torch_threads"])
    return out


def fit_in_process(cfg: Config, member: str, data: Any, fold: int, wd: Path) -> dict[str, Any]:
    """ml.train.fit without Ray (LocalHooks): its per-epoch rates and its end-to-end rate."""
    import torch

    from ml.train import LocalHooks, fit

    d = wd / "measure" / "fit"
    shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    res = fit(cfg, member, fold, out_dir=d / "out", hooks=LocalHooks(d / "work"), data=data)
    wall = time.perf_counter() - t0
    out = _from_history(res.history, wall)
    out.setdefault("threads", float(torch.get_num_threads()))
    return out


def ray_trial(cfg: Config, member: str, fold: int, *, ray_start_s: float) -> dict[str, Any]:
    """ray_jobs.train.train for one (member, fold) on the running local Ray: the trial's rates, end-to-end.

    The end-to-end rate counts the Ray start-up (``ray_start_s``, measured by the caller) as ``train()``
    would when it starts Ray itself; ``train_wall_s`` is the call alone.
    """
    from ray_jobs.train import train

    t0 = time.perf_counter()
    summary = train(cfg, members=[member], folds=[fold])
    wall = time.perf_counter() - t0
    out = _from_history(summary["folds"][f"{member}/{fold}"]["history"], wall + ray_start_s)
    out["train_wall_s"] = wall
    out["ray_start_s"] = ray_start_s
    return out


def start_ray(cfg: Config) -> float:
    """Start the local Ray ``train()`` would start (``cfg.ray``); returns the seconds it took."""
    import ray

    from ray_jobs import common as rcommon

    if ray.is_initialized():
        ray.shutdown()
    t0 = time.perf_counter()
    rcommon.init_ray(cfg)
    return time.perf_counter() - t0


def stop_ray() -> None:
    """Shut down the Ray this process started (never ``ray stop``: other Ray instances are not ours)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def compare(cfg: Config, wd: Path, member: str, *, repeats: int, threads: int) -> dict[str, Any]:
    """Bare loop, fit in-process and the Ray trial, alternately, ``repeats`` times.

    Ray runs only for the Ray trial (started before it, timed, shut down after it) so the other two see no
    Ray processes; the last repetition leaves it running for :func:`scaling`.
    """
    import torch

    from ml.train_data import load_train_data
    from ray_jobs.train import member_sample_rate

    data = load_train_data(cfg, member_sample_rate(cfg, member))
    runs: list[dict[str, dict[str, Any]]] = []
    for rep in range(repeats):
        run: dict[str, dict[str, Any]] = {}
        stop_ray()
        torch.set_num_threads(threads)
        run["bare"] = bare_loop(cfg, member, data, 0, threads=threads)
        _log(f"rep {rep}: bare loop {run['bare']['samples_per_s']:.1f} samples/s")
        run["fit"] = fit_in_process(cfg, member, data, 0, wd)
        _log(f"rep {rep}: fit in-process {run['fit']['samples_per_s']:.1f} samples/s")
        ray_start_s = start_ray(cfg)
        run["ray"] = ray_trial(fresh_run_dirs(cfg, wd, f"ray-{rep}"), member, 0, ray_start_s=ray_start_s)
        _log(
            f"rep {rep}: Ray trial {run['ray']['samples_per_s']:.1f} samples/s "
            f"(Ray start {ray_start_s:.1f} s, train() {run['ray']['train_wall_s']:.1f} s)"
        )
        runs.append(run)
    out = summarise_comparison(runs)
    out["runs"] = runs
    out["train_clips_in_fold"] = len(data.split(0)[0])
    return out


def scaling_config(cfg: Config, member: str, *, quick: bool) -> Config:
    """Per trial 1 CPU and 1 torch thread (or 1 GPU where there are GPUs), the scaling run's sizes."""
    st = SETTINGS["quick" if quick else "full"]
    mt = f"members.{member}.train"
    return derive(
        cfg,
        [
            f"{mt}.cpus_per_trial=1",
            f"{mt}.torch_threads=1",
            f"{mt}.gpus_per_trial={1 if cfg.ray.num_gpus else 0}",
            f"{mt}.epochs={st['scaling_epochs']}",
            f"{mt}.steps_per_epoch={st['scaling_steps_per_epoch']}",
        ],
    )


def scaling(
    cfg: Config, wd: Path, member: str, *, quick: bool, reuse: dict[int, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """1, 2, 4 concurrent folds (quick: 1, 2) in one ``train()`` call each, on the running local Ray.

    ``reuse`` maps a trial count to a point measured already with the same settings (quick mode: the
    comparison's Ray trial is the 1-trial point).
    """
    import ray

    from ray_jobs.train import train

    st = SETTINGS["quick" if quick else "full"]
    trials = [n for n in st["scaling_trials"] if n <= cfg.folds.k]
    scfg = scaling_config(cfg, member, quick=quick)
    ray_start = 0.0
    if not ray.is_initialized():
        ray_start = start_ray(scfg)
    points = []
    try:
        for n in trials:
            if reuse and n in reuse:
                points.append(dict(reuse[n]))
                continue
            ncfg = fresh_run_dirs(scfg, wd, f"scale-{n}")
            t1 = time.perf_counter()
            summary = train(ncfg, members=[member], folds=list(range(n)))
            wall = time.perf_counter() - t1
            histories = [f["history"] for f in summary["folds"].values()]
            points.append(scaling_point(n, histories, wall, int(summary["max_concurrent_trials"])))
            agg = points[-1]["aggregate_samples_per_s"]
            _log(f"scaling {n}: aggregate {agg:.1f} samples/s, wall {wall:.1f} s")
    finally:
        stop_ray()
    tc = scfg.member_train(member)
    return {
        "ray_num_cpus": float(scfg.ray.num_cpus or 0),
        "ray_start_s": ray_start or None,
        "cpus_per_trial": float(tc.cpus_per_trial),
        "threads_per_trial": tc.torch_threads,
        "gpus": int(scfg.ray.num_gpus or 0),
        "gpus_per_trial": tc.gpus_per_trial if scfg.ray.num_gpus else 0,
        "epochs": tc.epochs,
        "steps_per_epoch": tc.steps_per_epoch,
        "points": scaling_points(points),
    }


def scaling_point(
    n: int, histories: Sequence[Sequence[dict[str, float]]], wall: float, concurrent: int
) -> dict[str, Any]:
    """One scaling measurement from its trials' histories and the ``train()`` wall time."""
    rates = [steady([h["samples_per_s"] for h in hist]) for hist in histories]
    samples = sum(float(h.get("samples", 0.0)) for hist in histories for h in hist)
    return {
        "trials": n,
        "concurrent": concurrent,
        "aggregate_samples_per_s": float(sum(rates)),
        "per_trial_samples_per_s": float(statistics.mean(rates)) if rates else None,
        "end_to_end_samples_per_s": samples / wall,
        "wall_s": wall,
    }


def _log(msg: str) -> None:
    print(f"[bench.training] {msg}", file=sys.stderr, flush=True)


# ---- entry points --------------------------------------------------------------------------------------


def run(cfg: Config, *, quick: bool, member: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run the training benchmark (see the module docstring); returns the result dict.

    ``threads`` (default: the usable cores; quick mode: 1, so that its Ray trial is also the 1-trial point
    of the scaling run) is the torch thread count of all three variants and the compared trial's CPUs.
    """
    t0 = time.perf_counter()
    member = member or cfg.ensemble_members[0]
    if member not in cfg.members:
        raise ValueError(f"unknown member {member!r}; valid: {sorted(cfg.members)}")
    st = SETTINGS["quick" if quick else "full"]
    threads = threads or (1 if quick else common.usable_cores())
    gpus = len(common.machine_info()["gpus"])
    bcfg, wd = bench_config(cfg, member, quick=quick, threads=threads)
    # one local Ray shape for everything: the compared trial (threads CPUs + its Tune driver) or the
    # largest scaling point (n trials × (1 CPU + driver)), whichever needs more logical CPUs
    need = max(threads + TRIAL_DRIVER_CPUS, max(st["scaling_trials"]) * (1 + TRIAL_DRIVER_CPUS))
    bcfg = derive(bcfg, [f"ray.num_cpus={math.ceil(need - 1e-9)}", f"ray.num_gpus={gpus}"])
    synth = ensure_data(bcfg)
    how = f"rendered in {synth['seconds']:.1f} s" if synth["rendered"] else "reused"
    _log(f"data in {bcfg.data.root} ({how})")
    try:
        comparison = compare(bcfg, wd, member, repeats=st["repeats"], threads=threads)
        reuse = None
        same = scaling_config(bcfg, member, quick=quick).member_train(member)
        tc = bcfg.member_train(member)
        if (tc.cpus_per_trial, tc.torch_threads, tc.epochs, tc.steps_per_epoch) == (
            same.cpus_per_trial,
            same.torch_threads,
            same.epochs,
            same.steps_per_epoch,
        ) and not gpus:
            last = comparison["runs"][-1]["ray"]
            reuse = {1: scaling_point(1, [last["history"]], last["train_wall_s"], 1)}
        scale = scaling(bcfg, wd, member, quick=quick, reuse=reuse)
    finally:
        stop_ray()
    tc = bcfg.member_train(member)
    fe = bcfg.front_ends[bcfg.members[member].front_end]
    machine = common.machine_info()
    threads_seen = {
        way: int(comparison["rows"][way]["threads"])
        for way in WAYS
        if comparison["rows"][way].get("threads") is not None
    }
    return {
        "quick": quick,
        "settings": {
            "member": member,
            "folds_k": bcfg.folds.k,
            "train_clips": st["train_clips"],
            "train_clips_in_fold": comparison.pop("train_clips_in_fold"),
            "sample_rate": int(fe.sample_rate),
            "crop_s": tc.crop_s,
            "batch_size": tc.batch_size,
            "epochs": tc.epochs,
            "steps_per_epoch": tc.steps_per_epoch,
            "repeats": st["repeats"],
            "threads": threads,
            "threads_seen": threads_seen,
            "cpus_per_trial": tc.cpus_per_trial,
            "ray_num_cpus": bcfg.ray.num_cpus,
            "device": "cuda" if gpus else "cpu",
            "data_rendered_s": synth["seconds"],
            "scaling_reuses_comparison_trial": reuse is not None,
        },
        "comparison": comparison,
        "scaling": scale,
        "machine_summary": {k: machine[k] for k in ("cpu", "usable_cores", "logical_cores", "gpus")},
        "changes": CHANGES,
        "wall_s": time.perf_counter() - t0,
    }


# What was changed in ml/train.py / ray_jobs/train.py after measuring (quoted in the report).
CHANGES = (
    "Ray starts its worker processes at nice 15, so the Train worker that does the work lost the CPU to "
    "every normal-priority process on the node (Ray's own raylet/GCS/dashboard/driver, anything else). "
    "`ray_jobs/train.py` now starts Train workers with `RAY_worker_niceness=0` (RunConfig "
    "`worker_runtime_env`), like a plain PyTorch process. Measured alternately with 2 threads: on a quiet "
    "machine no change (ratio ≈ 0.89 before and after, 4 pairs each); with one other busy process on the "
    "2 cores the trial went from 13 samples/s (÷ bare 71 = 0.19) to 68 samples/s (÷ bare 80 = 0.85). "
    "The history rows of `ml.train.fit` now carry `torch_threads`, so the thread count inside the Ray "
    "worker is checked, not assumed."
)


def headline_text(result: dict[str, Any]) -> str:
    """The sentence docs/benchmarks.md and the README quote."""
    c, st = result["comparison"], result["settings"]
    pts = {p["trials"]: p for p in result["scaling"]["points"]} if result.get("scaling") else {}
    best = max(pts.values(), key=lambda p: p.get("speedup") or 0.0) if pts else None
    scale = f"; fold-parallel speed-up {best['speedup']:.2f}× at {best['trials']} trials" if best else ""
    return (
        f"Ray Train trial ÷ bare PyTorch loop = **{_fmt(c['ratio'], 2)}** steady state "
        f"({st['member']}, {st['threads']} threads; target ≥ {TARGET_RATIO}), "
        f"data path {_pct(c['rows']['ray'].get('data_share'))} of step time{scale}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.training [--quick] [--member M] [--threads N] [--no-write] [--set …]``."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--member", help="member to train (default: the ensemble's first)")
    p.add_argument(
        "--threads", type=int, help="torch threads / CPUs of the compared trial (default: usable cores)"
    )
    args = p.parse_args(None if argv is None else list(argv))
    cfg = common.load(args)
    result = run(cfg, quick=args.quick, member=args.member, threads=args.threads)
    result["headline_text"] = headline_text(result)
    c = result["comparison"]
    plot = None
    if not args.no_write:
        fig = plot_scaling(
            result["scaling"]["points"], f"fold-parallel training, {result['settings']['member']}"
        )
        plot = common.save_figure(fig, "training_scaling")
    md = render_markdown(result, plot)
    if args.no_write:
        print(md)
    else:
        path = common.write_result(NAME, result, md, quick=args.quick)
        print(md)
        print(f"\nwrote {path}")
    print(
        f"\nRay trial ÷ bare loop: {_fmt(c['ratio'], 3)} (end-to-end {_fmt(c['ratio_end_to_end'], 3)}); "
        f"{result['wall_s']:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
