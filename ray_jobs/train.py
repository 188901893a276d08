"""Fold-parallel training of the ensemble on Ray: a Ray Tune grid over (member × fold), one TorchTrainer each.

Run it on a cluster with::

    ray job submit --working-dir . -- python -m ray_jobs.train --profile demo --base-dir "$PWD"

or locally (a Ray instance is started for the run) with ``python -m ray_jobs.train [--profile P]
[--set k=v …]`` / ``mpic train``.

This module is the Ray adapter only; the job's logic is in :mod:`ml.jobs` (planning, fault injection,
the worker loop, the driver state machine, publishing to ``runs_dir``, MLflow and the registry):

* Each Tune trial is a *function trainable* (:func:`run_trial`) that builds and fits a
  :class:`ray.train.torch.TorchTrainer` (the Train V2 pattern). Per-epoch metrics flow to Tune through
  a Train ``UserCallback`` whose reports the trial thread passes on with ``tune.report``
  (:func:`fit_reporting`; Ray's ``TuneReportCallback`` can deadlock the trial, see docs/reliability.md);
  a driver-side Tune callback hands them to
  :class:`ml.jobs.driver.TrainJob` (which logs them to the fold's MLflow run as they come) and, as soon
  as a trial completes, publishes its files and completes its MLflow run.
* Each Train worker runs :func:`ml.jobs.worker.fit_fold` over :class:`RayRuntime`
  (``ray.train.report`` / ``ray.train.get_checkpoint``). ``FailureConfig(max_failures)`` restarts a
  failed worker group from its last epoch checkpoint; the Train run name is derived from the (member,
  fold, config fingerprint), so a re-submitted job also resumes an unfinished fold from its last epoch.

Fault injection (tests, drills): see :mod:`ml.jobs.faults` (``MPIC_FAIL_ONCE_AT_EPOCH`` …).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.config import Config
from ml.jobs import driver
from ml.jobs.driver import TrainJob, TrainJobError
from ml.jobs.faults import FAIL_EPOCH_ENV, FAIL_ONLY_ENV, FaultInjection, InjectedFailure
from ml.jobs.folds import RunsDirConflictError, fold_dir
from ml.jobs.plan import TRIAL_DRIVER_CPUS, member_sample_rate, plan_resources, select
from ml.jobs.worker import fit_fold
from ray_jobs import common

log = logging.getLogger(__name__)

__all__ = [
    "FAIL_EPOCH_ENV",
    "FAIL_ONLY_ENV",
    "TRIAL_DRIVER_CPUS",
    "FaultInjection",
    "InjectedFailure",
    "RunsDirConflictError",
    "TrainJobError",
    "fold_dir",
    "main",
    "member_sample_rate",
    "plan_resources",
    "select",
    "train",
]

# Ray starts worker processes at nice 15 (RAY_worker_niceness), so a Train worker doing the actual work
# loses the CPU to every nice-0 process: Ray's own (raylet, GCS, dashboard, the driver) and anything else
# on the node. The Train workers run at normal priority, like a plain PyTorch process (and like the driver
# of a `ray job submit`); the coordination actors (Tune trial, Train controller) stay at nice 15.
WORKER_ENV_VARS = {"RAY_worker_niceness": "0"}


# ---- worker side ---------------------------------------------------------------------------------------


class RayRuntime:
    """:class:`ml.jobs.worker.Runtime` of a Ray Train worker."""

    def __init__(self) -> None:
        """Read rank, world size, run name and device from the Train context."""
        import ray
        import ray.train
        import ray.train.torch

        from ml.inference import pick_device

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.run_name = ctx.get_experiment_name()
        device = pick_device(ray.get_gpu_ids())
        self.device = ray.train.torch.get_device() if device.type == "cuda" else device
        self.prepare_model: Callable[[Any], Any] | None = ray.train.torch.prepare_model

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """``ray.train.report`` (the checkpoint folder is uploaded before it returns)."""
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def resume_into(self, dest: Path) -> bool:
        """Copy ``ray.train.get_checkpoint()`` (after a failure or a restored run) into ``dest``."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return False
        ckpt.to_directory(str(dest))
        return True


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker: :func:`ml.jobs.worker.fit_fold` of one (member, fold)."""
    fit_fold(
        config["cfg"],
        str(config["member"]),
        int(config["fold"]),
        str(config["fold_key"]),
        RayRuntime(),
        config.get("fault"),
    )


# ---- trial (Tune function trainable) -----------------------------------------------------------------


@dataclass(frozen=True)
class TrialSettings:
    """Job-wide settings a trial needs besides its (member, fold)."""

    use_gpu: bool
    fold_keys: dict[str, str]
    fault: FaultInjection | None


# How often the trial thread looks for the next Train report while the trainer runs (seconds).
REPORT_POLL_S = 0.5


def _trial_reporter() -> Any:
    """A Train V2 ``UserCallback`` that queues every report (metrics + checkpoint path) for the trial thread.

    Ray's own ``TuneReportCallback`` hands reports to the trial actor's *main* thread, which forwards them
    into the session's one-slot result queue. In Ray 2.60 that can deadlock: when ``trainer.fit()``
    returns before the main thread has taken the fold's last report, the function wrapper reports its
    end-of-function marker into that queue first, and the main thread then blocks behind the one item only
    it can consume (docs/reliability.md). Here the trial thread itself reports each item with
    ``tune.report``, the ordinary function-trainable path, and returns only once every report is through.
    """
    from ray.train import UserCallback
    from ray.util.queue import Queue

    class TrialReporter(UserCallback):
        def __init__(self) -> None:
            self.queue = Queue(actor_options={"num_cpus": 0})

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            item = dict(metrics[0])  # rank 0's metrics, as TuneReportCallback does
            if checkpoint:  # uploaded already: pass its path, as TuneReportCallback does
                item[driver.CHECKPOINT_PATH_KEY] = checkpoint.path
            self.queue.put(item)

    return TrialReporter()


def fit_reporting(trainer: Any, reporter: Any, report: Callable[[dict[str, Any]], None]) -> None:
    """Run ``trainer.fit()`` in a helper thread while this (the trial) thread passes its results on.

    Returns after ``fit`` has ended *and* every report it queued has been passed on; re-raises what
    ``fit`` raised. All of ``fit``'s reports are queued before it returns (the controller calls the
    callback first), so an empty queue after that means none is left.
    """
    import threading

    from ray.util.queue import Empty

    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # handed to the trial thread, which raises it
            failure.append(e)

    thread = threading.Thread(target=fit, name="mpic-trainer-fit", daemon=True)
    thread.start()
    while True:
        try:
            report(reporter.queue.get(timeout=REPORT_POLL_S))
        except Empty:
            if not thread.is_alive() and reporter.queue.empty():
                break
    thread.join()
    if failure:
        raise failure[0]


def run_trial(config: dict[str, Any], cfg: Config, settings: TrialSettings) -> None:
    """Tune function trainable: build and fit the TorchTrainer of one (member, fold)."""
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    member, fold = str(config["trial"]["member"]), int(config["trial"]["fold"])
    tc = cfg.member_train(member)
    use_gpu = settings.use_gpu and tc.gpus_per_trial > 0
    per_worker: dict[str, float] = {"CPU": tc.cpus_per_trial}
    if use_gpu:
        per_worker["GPU"] = tc.gpus_per_trial
    key = settings.fold_keys[member]
    reporter = _trial_reporter()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg,
            "member": member,
            "fold": fold,
            "fold_key": key,
            "fault": settings.fault,
        },
        # One worker needs no collectives; gloo then also works where a "GPU" is only a logical resource.
        torch_config=TorchConfig(backend="gloo") if tc.num_workers == 1 else None,
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=f"{member}-fold{fold}-{key[:12]}",
            storage_path=str(cfg.ray.storage_path),
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[reporter],
            # a Train V2 RunConfig field (mypy resolves ray.train.RunConfig to the V1 class)
            worker_runtime_env={"env_vars": dict(WORKER_ENV_VARS)},  # type: ignore[call-arg]
        ),
    )
    fit_reporting(trainer, reporter, tune.report)


def _trial_key(trial: Any) -> tuple[str, int]:
    t = trial.config["trial"]
    return str(t["member"]), int(t["fold"])


def trial_name(trial: Any) -> str:
    """Tune trial (and folder) name: ``<member>-fold<k>``."""
    member, fold = _trial_key(trial)
    return f"{member}-fold{fold}"


# ---- driver side ---------------------------------------------------------------------------------------


def fetch_checkpoint(cfg: Config, path: str, dest: Path) -> None:
    """Copy a reported checkpoint (a path in the Train storage) to a local folder."""
    import ray.train

    storage = str(cfg.ray.storage_path)
    if "://" in storage:
        import pyarrow.fs

        fs, _ = pyarrow.fs.FileSystem.from_uri(storage)
        ray.train.Checkpoint(path, filesystem=fs).to_directory(str(dest))
    else:
        ray.train.Checkpoint(path).to_directory(str(dest))


def _make_callback(job: TrainJob) -> Any:
    from ray import tune

    class Collector(tune.Callback):
        """Runs in the driver: hands every result to the job and finishes trials as they complete."""

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            job.record_row(_trial_key(trial), result)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            try:
                job.complete(_trial_key(trial), trial.last_result)
            except Exception as e:  # finished again after the grid; never break Tune's loop
                log.exception("could not finish trial %s", trial_name(trial))
                job.fail(_trial_key(trial), f"{type(e).__name__}: {e}")

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            job.fail(_trial_key(trial), f"trial errored (see {getattr(trial, 'path', '?')})")

    return Collector()


def tune_grid(
    job: TrainJob,
    todo: Sequence[tuple[str, int]],
    *,
    use_gpu: bool,
    concurrency: int,
    fault: FaultInjection | None,
) -> None:
    """:class:`ml.jobs.driver.GridRunner` on Ray Tune: one trial per (member, fold) in ``todo``."""
    from ray import tune

    cfg = job.cfg
    settings = TrialSettings(use_gpu=use_gpu, fold_keys=job.fold_keys, fault=fault)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, cfg=cfg, settings=settings), {"CPU": TRIAL_DRIVER_CPUS}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([{"member": m, "fold": f} for m, f in todo])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=f"train-{cfg.ensemble}-{job.key[:8]}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(cfg.ray.storage_path),
            callbacks=[_make_callback(job)],
            # a lost trial driver (its node died) is retried; the TorchTrainer inside resumes from its
            # last checkpoint because runs are named per (member, fold, fingerprint)
            failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
            verbose=1,
        ),
    )
    grid = tuner.fit()
    for i in range(len(grid)):  # anything the callback could not finish
        res = grid[i]
        trial_cfg = (res.config or {})["trial"]
        k = (str(trial_cfg["member"]), int(trial_cfg["fold"]))
        if k in job.outcomes and job.outcomes[k].status != "failed":
            continue
        if res.error is not None:
            job.fail(k, f"{type(res.error).__name__}: {res.error}")
            continue
        try:
            job.complete(k, dict(res.metrics or {}))
        except Exception as e:
            log.exception("could not finish %s/fold%s", *k)
            job.fail(k, f"{type(e).__name__}: {e}")


def train(
    cfg: Config,
    *,
    members: list[str] | None = None,
    folds: list[int] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train (member × fold) of the selected ensemble on Ray, log to MLflow, register, and summarise.

    Args:
        cfg: Project configuration.
        members: Members to train (default: ``cfg.ensemble_members``).
        folds: Folds to train (default: ``cfg.train.folds`` or all ``cfg.folds.k``).
        overwrite: Replace finished folds in ``runs_dir`` that were trained with another configuration
            (their checkpoints stay in MLflow); without it such a job refuses to start.

    Returns:
        ``{"job_key", "members": {member: {val_micro_f1, val_macro_f1, …, samples_per_s, data_share,
        registry}}, "folds": {"member/fold": FoldOutcome as dict}, "trained", "skipped", "failed",
        "use_gpu", "max_concurrent_trials", "parent_run_id", "mlflow_ui", "wall_s"}``.

    Raises:
        TrainJobError: If some trials failed (after everything else was logged); carries the summary.
        RunsDirConflictError: ``runs_dir`` holds finished folds of another configuration and not
            ``overwrite``.
    """
    import ray

    plan = driver.prepare(cfg, members, folds, overwrite=overwrite)  # refuses before Ray starts
    started = common.init_ray(cfg)
    try:
        return driver.run(
            plan, tune_grid, common.cluster_resources(), lambda p, d: fetch_checkpoint(cfg, p, d)
        )
    finally:
        if started:
            ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ray_jobs.train [--config C] [--profile P] [--set k=v …] [--members …] [--folds …]``."""
    parser = common.add_config_args(
        argparse.ArgumentParser(
            prog="python -m ray_jobs.train",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    parser.add_argument("--members", nargs="+", help="members to train (default: the selected ensemble's)")
    parser.add_argument("--folds", nargs="+", type=int, help="folds to train (default: train.folds or all)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace finished folds trained with another configuration"
    )
    args, cfg = common.parse(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = train(cfg, members=args.members, folds=args.folds, overwrite=args.overwrite)
    except (TrainJobError, RunsDirConflictError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
