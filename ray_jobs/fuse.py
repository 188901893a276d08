"""Fusion search on Ray Tune: weights on the simplex, aggregation and per-class thresholds.

``ray job submit --working-dir . -- python -m ray_jobs.fuse [--profile P] [--set k=v]`` or ``mpic fuse``.
Each Tune trial scores one candidate (a weight per member — 0 drops it — and an aggregation) on the
members' out-of-fold predictions, which are put in the object store once and passed by reference. The
per-class thresholds of a candidate are fitted on the same out-of-fold *training* predictions. Two
deterministic baselines (equal weights; coordinate search) run beside it. Every trial is logged to MLflow
under one parent run; the chosen spec — naming the registered member versions whose out-of-fold
predictions it was fitted on, the fused and each member's own per-class thresholds — is registered as the
next version of ``mpic-<namespace>-ensemble-<ensemble>`` (the champion rule decides whether the alias
moves) and copied to ``runs_dir/ensembles/<ensemble>/spec-v<version>.json``. Everything stays in the
config's namespace (profile).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray import tune

from ml import fusion, tracking
from ml import oof as oofmod
from ml.config import Config
from ml.ensemble import EnsembleSpec, MemberRef, save_spec
from ml.inference import member_dirs
from ray_jobs.common import add_config_args, init_ray, parse

log = logging.getLogger(__name__)

WEIGHT_STEP = 0.05  # weights are drawn on a 0.05 grid so that exactly 0 (drop the member) is reachable


def _trial(config: dict[str, Any], oof: oofmod.OOFSet, objective: str) -> None:
    """One Tune trial: the objective of a candidate on the OOF predictions."""
    weights = {m: float(config[f"w_{m}"]) for m in oof.members}
    if sum(weights.values()) <= 0:
        tune.report({"objective": -1.0, "valid": 0})
        return
    value, _, _ = oofmod.score_candidate(oof, weights, config["aggregation"], objective)
    tune.report({"objective": float(value), "valid": 1})


def _norm(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {m: round(w / total, 6) for m, w in weights.items()}


def _seed_points(members: Sequence[str], aggregations: Sequence[str]) -> list[dict[str, Any]]:
    """Equal weights and each member alone, for every aggregation: the search starts from the baselines."""
    pts = []
    for agg in aggregations:
        pts.append({"aggregation": agg, **{f"w_{m}": 1.0 for m in members}})
        if len(members) > 1:
            for m in members:
                pts.append({"aggregation": agg, **{f"w_{o}": (1.0 if o == m else 0.0) for o in members}})
    return pts


def fuse(cfg: Config, *, members: Sequence[str] | None = None, register: bool = True) -> dict[str, Any]:
    """Search fusion weights/aggregation/thresholds on OOF predictions; save and register the spec.

    Args:
        cfg: Project configuration (``fusion`` section: objective, num_samples, aggregations, seed).
        members: Members to fuse (default: the selected ensemble's).
        register: Log to MLflow and register the spec (tests may switch it off).

    Returns:
        A summary: the chosen spec, baselines and per-candidate OOF metrics, and the spec's path.
    """
    t0 = time.perf_counter()
    fc = cfg.fusion
    names = list(members or cfg.ensemble_members)
    oof = oofmod.load_oof_set(cfg, names, fc.aggregations)
    obj = fc.objective

    # ---- deterministic baselines (plain numpy) ----------------------------------------------------
    baselines: dict[str, Any] = {}
    for agg in fc.aggregations:
        v, th, fused = oofmod.score_candidate(oof, fusion.equal_weights(names), agg, obj)
        baselines[f"equal/{agg}"] = {"objective": v, **oofmod.summary(oof, fused, th)}
        for m in names:
            v, th, fused = oofmod.score_candidate(oof, {m: 1.0}, agg, obj)
            baselines[f"{m}/{agg}"] = {"objective": v, **oofmod.summary(oof, fused, th)}
    coord_best: tuple[float, str, dict[str, float]] | None = None
    for agg in fc.aggregations:
        res = fusion.coordinate_search(oof.scores[agg], oof.y_true, objective=obj, aggregation=agg)
        if coord_best is None or res.value > coord_best[0]:
            coord_best = (res.value, agg, dict(res.weights))
    assert coord_best is not None
    baselines["coordinate"] = {
        "objective": coord_best[0],
        "aggregation": coord_best[1],
        "weights": coord_best[2],
    }

    # ---- Ray Tune search ---------------------------------------------------------------------------
    init_ray(cfg)
    space: dict[str, Any] = {"aggregation": tune.choice(list(fc.aggregations))}
    space.update({f"w_{m}": tune.quniform(0.0, 1.0, WEIGHT_STEP) for m in names})
    seeds = _seed_points(names, fc.aggregations)
    search = tune.search.BasicVariantGenerator(points_to_evaluate=seeds, random_state=fc.seed)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, oof=oof, objective=obj), {"cpu": 0.25}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="objective",
            mode="max",
            num_samples=max(fc.num_samples, len(seeds)),
            search_alg=search,
            max_concurrent_trials=fc.max_concurrent_trials,
            reuse_actors=True,  # a trial is milliseconds of numpy: never pay a process start per trial
        ),
        run_config=tune.RunConfig(
            name=f"fuse-{cfg.ensemble}-{int(time.time())}", storage_path=str(cfg.ray.storage_path), verbose=0
        ),
    )
    grid = tuner.fit()
    trials = []
    for r in (grid[i] for i in range(len(grid))):
        if r.error or not r.metrics or not r.metrics.get("valid") or r.config is None:
            continue
        conf = r.config
        trials.append(
            {
                "objective": float(r.metrics["objective"]),
                "aggregation": conf["aggregation"],
                "weights": {m: float(conf[f"w_{m}"]) for m in names},
            }
        )
    if not trials:
        raise RuntimeError("the fusion search produced no valid trial")
    best = max(trials, key=lambda t: t["objective"])
    tune_value = best["objective"]

    # ---- the chosen spec -----------------------------------------------------------------------------
    chosen_w, chosen_agg, source = best["weights"], best["aggregation"], "tune"
    if coord_best[0] > tune_value + 1e-12:  # report honestly and keep the better answer
        chosen_w, chosen_agg, source = coord_best[2], coord_best[1], "coordinate"
    value, thresholds, fused = oofmod.score_candidate(oof, chosen_w, chosen_agg, obj)
    member_th = {}
    for m in names:
        _, th_m, _ = oofmod.score_candidate(oof, {m: 1.0}, cfg.members[m].aggregation, obj)
        member_th[m] = [float(x) for x in th_m]
    refs = {
        m: MemberRef(checkpoints=[str(p / "model.pt") for p in member_dirs(cfg.runs_dir, m)]) for m in names
    }
    if register and cfg.mlflow.enabled:
        _attach_registry_versions(cfg, refs)
        spec_name = tracking.spec_model_name(cfg)
    else:
        spec_name = None
    spec = EnsembleSpec(
        ensemble=cfg.ensemble,
        labels=cfg.label_codes,
        members=refs,
        weights=_norm({m: chosen_w.get(m, 0.0) for m in names}),
        aggregation=chosen_agg,
        thresholds=[float(x) for x in thresholds],
        objective=obj,
        value=float(value),
        source=source,
        details={
            "n_clips": len(oof.paths),
            "n_trials": len(trials),
            "tune_best": tune_value,
            "baselines": baselines,
            "oof": oofmod.summary(oof, fused, thresholds),
            "member_thresholds": member_th,
            "search_seconds": round(time.perf_counter() - t0, 2),
        },
    )
    mlflow_info: dict[str, Any] | None = None
    if spec_name is not None:
        mlflow_info = _log_mlflow(cfg, spec, trials, baselines)
        spec.registered_model = spec_name
        path = save_spec(cfg, spec, int(mlflow_info["version"]))
    else:
        path = save_spec(cfg, spec)
    out: dict[str, Any] = {
        "spec_path": str(path),
        "version": spec.version,
        "objective": obj,
        "value": value,
        "tune_best": tune_value,
        "weights": spec.weights,
        "aggregation": chosen_agg,
        "source": source,
        "baselines": baselines,
        "n_trials": len(trials),
        "oof": spec.details["oof"],
    }
    if mlflow_info is not None:
        out["mlflow"] = mlflow_info
        out["registered_model"] = spec_name
        out["champion"] = mlflow_info["champion"]
    return out


def _attach_registry_versions(cfg: Config, refs: dict[str, MemberRef]) -> None:
    """Name the registered member version holding exactly the fold checkpoints the OOF predictions came from.

    That version need not be the member's champion (the champion rule may have kept an older one), so it
    is found by the checkpoints' sha256. A member whose checkpoints are not registered keeps only its
    checkpoint paths.
    """
    for m, ref in refs.items():
        shas = {int(Path(p).parent.name[len("fold") :]): tracking.file_sha256(p) for p in ref.checkpoints}
        mv = tracking.find_member_version(cfg, m, shas) if shas else None
        if mv is not None:
            ref.registered_model, ref.version = tracking.registered_model_name(cfg, m), str(mv.version)
        else:
            log.warning("member %r: no registered version holds the checkpoints in %s", m, cfg.runs_dir)


def _log_mlflow(
    cfg: Config, spec: EnsembleSpec, trials: list[dict[str, Any]], baselines: dict[str, Any]
) -> dict[str, Any]:
    """A parent run for the search, one nested run per trial, the spec registered as a versioned artifact."""
    parent = tracking.start_run(cfg, kind="fuse_job", name=f"fuse-{cfg.ensemble}", reuse=False)
    try:
        tracking.log_params(
            cfg,
            parent,
            {
                "objective": spec.objective,
                "num_samples": cfg.fusion.num_samples,
                "aggregations": ",".join(cfg.fusion.aggregations),
                "members": ",".join(spec.members),
            },
        )
        for i, t in enumerate(trials):
            rid = tracking.start_run(
                cfg, kind="fuse_trial", name=f"trial-{i:04d}", parent_run_id=parent, reuse=False
            )
            tracking.log_params(
                cfg, rid, {"aggregation": t["aggregation"], **{f"w_{m}": w for m, w in t["weights"].items()}}
            )
            tracking.log_metrics(cfg, rid, {"objective": t["objective"]})
            tracking.end_run(cfg, rid)
        flat = {f"baseline/{k.replace('/', '_')}": float(v["objective"]) for k, v in baselines.items()}
        tracking.log_metrics(
            cfg,
            parent,
            {
                spec.objective: float(spec.value or 0.0),
                "tune_best": float(spec.details["tune_best"]),
                **flat,
                **{f"oof_{k}": float(v) for k, v in spec.details["oof"].items()},
            },
        )
        reg = tracking.register_spec(
            cfg, spec, {spec.objective: float(spec.value or 0.0)}, parent_run_id=parent
        )
    except BaseException:
        tracking.end_run(cfg, parent, "FAILED")
        raise
    tracking.end_run(cfg, parent)
    return {
        "parent_run_id": parent,
        "registered_model": reg.name,
        "version": reg.version,
        "champion": reg.champion,
        "ui": tracking.ui_url(cfg, parent),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ray_jobs.fuse [--config P] [--profile P] [--set k=v …]`."""
    _, cfg = parse(add_config_args(argparse.ArgumentParser(prog="ray_jobs.fuse", description=__doc__)), argv)
    result = fuse(cfg)
    best = result["value"]
    print(
        f"fused {len(result['weights'])} members: {cfg.fusion.objective}={best:.4f} "
        f"(tune {result['tune_best']:.4f}, coordinate {result['baselines']['coordinate']['objective']:.4f}); "
        f"weights {result['weights']} aggregation {result['aggregation']} → {result['spec_path']}"
    )
    if "registered_model" in result:
        print(
            f"registered {result['registered_model']} version {result['version']}"
            f"{' (champion)' if result['champion'] else ' (the champion rule kept the current champion)'}"
        )
    return 0 if math.isfinite(best) else 1


if __name__ == "__main__":
    raise SystemExit(main())
