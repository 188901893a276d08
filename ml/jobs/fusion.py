"""The fusion job (no Ray): baselines, the chosen ensemble spec, MLflow and the registry.

:func:`run` scores deterministic baselines on the members' out-of-fold predictions (equal weights, each
member alone, coordinate search), asks the injected :data:`Search` (Ray Tune in `ray_jobs/fuse.py`) for
candidates, keeps the best, fits its per-class thresholds on the same out-of-fold predictions, and
registers the spec — naming the registered member versions whose out-of-fold predictions it was fitted
on — as the next version of ``mpic-<namespace>-ensemble-<ensemble>`` (the champion rule decides whether
the alias moves). MLflow gets one ``fuse_job`` run holding every candidate as ONE table
(``fusion/trials.json``, not a run per trial), and the registered version's run gets the spec's
out-of-fold evaluation (metrics and a per-class F1 plot).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ml import fusion, tracking
from ml import oof as oofmod
from ml.config import Config
from ml.ensemble import EnsembleSpec, MemberRef, save_spec
from ml.inference import member_dirs
from ml.metrics import evaluate

log = logging.getLogger(__name__)

TRIALS_TABLE = "fusion/trials.json"

Search = Callable[[Config, oofmod.OOFSet, Sequence[str]], list[dict[str, Any]]]
"""``search(cfg, oof, members) -> [{"objective", "aggregation", "weights": {member: w}}]``."""


def seed_points(members: Sequence[str], aggregations: Sequence[str]) -> list[dict[str, Any]]:
    """Equal weights and each member alone, for every aggregation: the search starts from the baselines."""
    pts = []
    for agg in aggregations:
        pts.append({"aggregation": agg, **{f"w_{m}": 1.0 for m in members}})
        if len(members) > 1:
            for m in members:
                pts.append({"aggregation": agg, **{f"w_{o}": (1.0 if o == m else 0.0) for o in members}})
    return pts


def _norm(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {m: round(w / total, 6) for m, w in weights.items()}


def baselines(
    cfg: Config, oof: oofmod.OOFSet, names: Sequence[str]
) -> tuple[dict[str, Any], tuple[float, str, dict[str, float]]]:
    """Equal weights and each member alone per aggregation, and the coordinate search's best."""
    fc, obj = cfg.fusion, cfg.fusion.objective
    out: dict[str, Any] = {}
    for agg in fc.aggregations:
        v, th, fused = oofmod.score_candidate(oof, fusion.equal_weights(list(names)), agg, obj)
        out[f"equal/{agg}"] = {"objective": v, **oofmod.summary(oof, fused, th)}
        for m in names:
            v, th, fused = oofmod.score_candidate(oof, {m: 1.0}, agg, obj)
            out[f"{m}/{agg}"] = {"objective": v, **oofmod.summary(oof, fused, th)}
    coord_best: tuple[float, str, dict[str, float]] | None = None
    for agg in fc.aggregations:
        res = fusion.coordinate_search(oof.scores[agg], oof.y_true, objective=obj, aggregation=agg)
        if coord_best is None or res.value > coord_best[0]:
            coord_best = (res.value, agg, dict(res.weights))
    assert coord_best is not None
    out["coordinate"] = {"objective": coord_best[0], "aggregation": coord_best[1], "weights": coord_best[2]}
    return out, coord_best


def run(
    cfg: Config, search: Search, *, members: Sequence[str] | None = None, register: bool = True
) -> dict[str, Any]:
    """Search fusion weights/aggregation/thresholds on OOF predictions; save and register the spec.

    Args:
        cfg: Project configuration (``fusion`` section: objective, num_samples, aggregations, seed).
        search: Produces the candidates (Ray Tune in `ray_jobs/fuse.py`).
        members: Members to fuse (default: the selected ensemble's).
        register: Log to MLflow and register the spec (tests may switch it off).

    Returns:
        A summary: the chosen spec, baselines and per-candidate OOF metrics, the spec's path and, when
        registered, ``registered_model``, ``version``, ``champion`` and ``mlflow``.
    """
    t0 = time.perf_counter()
    fc = cfg.fusion
    names = list(members or cfg.ensemble_members)
    oof = oofmod.load_oof_set(cfg, names, fc.aggregations)
    obj = fc.objective
    base, coord_best = baselines(cfg, oof, names)
    trials = search(cfg, oof, names)
    if not trials:
        raise RuntimeError("the fusion search produced no valid trial")
    best = max(trials, key=lambda t: t["objective"])
    tune_value = best["objective"]

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
    registering = register and cfg.mlflow.enabled
    if registering:
        attach_registry_versions(cfg, refs)
    spec = EnsembleSpec(
        ensemble=cfg.ensemble,
        labels=cfg.label_codes,
        members=refs,
        weights=_norm({m: chosen_w.get(m, 0.0) for m in names}),
        aggregation=chosen_agg,
        thresholds=[float(x) for x in thresholds],
        max_instruments=cfg.fusion.max_instruments,
        objective=obj,
        value=float(value),
        source=source,
        details={
            "n_clips": len(oof.paths),
            "n_trials": len(trials),
            "tune_best": tune_value,
            "baselines": base,
            "oof": oofmod.summary(oof, fused, thresholds, cfg.fusion.max_instruments),
            "member_thresholds": member_th,
            "search_seconds": round(time.perf_counter() - t0, 2),
        },
    )
    mlflow_info: dict[str, Any] | None = None
    if registering:
        report = evaluate(oof.y_true, fused, thresholds, cfg.label_codes, cfg.fusion.max_instruments)
        mlflow_info = log_fusion(cfg, spec, trials, base, report)
        spec.registered_model = tracking.spec_model_name(cfg)
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
        "baselines": base,
        "n_trials": len(trials),
        "oof": spec.details["oof"],
    }
    if mlflow_info is not None:
        out["mlflow"] = mlflow_info
        out["registered_model"] = mlflow_info["registered_model"]
        out["champion"] = mlflow_info["champion"]
    return out


def attach_registry_versions(cfg: Config, refs: dict[str, MemberRef]) -> None:
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


def trials_table(trials: Sequence[dict[str, Any]], members: Sequence[str]) -> list[dict[str, Any]]:
    """One flat row per candidate (``trial``, ``objective``, ``aggregation``, ``w_<member>``), best first."""
    ranked = sorted(enumerate(trials), key=lambda it: -float(it[1]["objective"]))
    return [
        {
            "trial": i,
            "objective": float(t["objective"]),
            "aggregation": t["aggregation"],
            **{f"w_{m}": float(t["weights"].get(m, 0.0)) for m in members},
        }
        for i, t in ranked
    ]


def log_fusion(
    cfg: Config,
    spec: EnsembleSpec,
    trials: list[dict[str, Any]],
    base: dict[str, Any],
    report: dict[str, Any],
) -> dict[str, Any]:
    """A ``fuse_job`` run with the candidates as one table; the spec registered with its evaluation."""
    parent = tracking.start_run(cfg, kind=tracking.KIND_FUSE_JOB, name=f"fuse-{cfg.ensemble}", reuse=False)
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
        tracking.log_table(cfg, parent, trials_table(trials, list(spec.members)), TRIALS_TABLE)
        flat = {f"baseline/{k.replace('/', '_')}": float(v["objective"]) for k, v in base.items()}
        tracking.log_metrics(
            cfg,
            parent,
            {
                spec.objective: float(spec.value or 0.0),
                "tune_best": float(spec.details["tune_best"]),
                "n_trials": float(len(trials)),
                **flat,
                **{f"oof_{k}": float(v) for k, v in spec.details["oof"].items()},
            },
        )
        reg = tracking.register_spec(
            cfg,
            spec,
            {spec.objective: float(spec.value or 0.0)},
            parent_run_id=parent,
            evaluation=report,
        )
    except BaseException:
        tracking.end_run(cfg, parent, "FAILED")
        raise
    tracking.end_run(cfg, parent)
    return {
        "parent_run_id": parent,
        "spec_run_id": reg.run_id,
        "registered_model": reg.name,
        "version": reg.version,
        "champion": reg.champion,
        "ui": tracking.ui_url(cfg, parent),
    }
