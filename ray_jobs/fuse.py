"""Fusion search on Ray Tune: weights on the simplex, aggregation and per-class thresholds.

``ray job submit --working-dir . -- python -m ray_jobs.fuse [--profile P] [--set k=v]`` or ``mpic fuse``.
Each Tune trial scores one candidate (a weight per member — 0 drops it — and an aggregation) on the
members' out-of-fold predictions, which are put in the object store once and passed by reference. This
module is the Ray adapter (:func:`tune_search`); baselines, thresholds, the spec, MLflow (the candidates
as one table) and the registry are :func:`ml.jobs.fusion.run`.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import Any

from ray import tune

from ml import oof as oofmod
from ml.config import Config
from ml.jobs import fusion as fusion_job
from ray_jobs.common import add_config_args, init_ray, parse

WEIGHT_STEP = 0.05  # weights are drawn on a 0.05 grid so that exactly 0 (drop the member) is reachable


def _trial(config: dict[str, Any], oof: oofmod.OOFSet, objective: str) -> None:
    """One Tune trial: the objective of a candidate on the OOF predictions."""
    weights = {m: float(config[f"w_{m}"]) for m in oof.members}
    if sum(weights.values()) <= 0:
        tune.report({"objective": -1.0, "valid": 0})
        return
    value, _, _ = oofmod.score_candidate(oof, weights, config["aggregation"], objective)
    tune.report({"objective": float(value), "valid": 1})


def tune_search(cfg: Config, oof: oofmod.OOFSet, names: Sequence[str]) -> list[dict[str, Any]]:
    """:data:`ml.jobs.fusion.Search` on Ray Tune: seeded with the baselines, then random weights."""
    fc = cfg.fusion
    init_ray(cfg)
    space: dict[str, Any] = {"aggregation": tune.choice(list(fc.aggregations))}
    space.update({f"w_{m}": tune.quniform(0.0, 1.0, WEIGHT_STEP) for m in names})
    seeds = fusion_job.seed_points(names, fc.aggregations)
    # the generator bounds the concurrency itself (Tune ignores TuneConfig.max_concurrent_trials for a
    # SearchGenerator): unbounded, every sample starts its own trial actor at once
    search = tune.search.BasicVariantGenerator(
        points_to_evaluate=seeds, random_state=fc.seed, max_concurrent=fc.max_concurrent_trials
    )
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, oof=oof, objective=fc.objective), {"cpu": 0.25}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="objective",
            mode="max",
            num_samples=max(fc.num_samples, len(seeds)),
            search_alg=search,
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
    return trials


def fuse(cfg: Config, *, members: Sequence[str] | None = None, register: bool = True) -> dict[str, Any]:
    """Search fusion weights/aggregation/thresholds on Ray Tune; save and register the spec.

    See :func:`ml.jobs.fusion.run` (arguments and result).
    """
    return fusion_job.run(cfg, tune_search, members=members, register=register)


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
