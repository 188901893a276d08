"""The training job's driver (no Ray): which trials to run, what happened to each, MLflow, registration.

:func:`run` drives one job: skip (member, fold)s whose final files already match, open the job's MLflow
run, hand the rest to the injected :class:`GridRunner` (Ray Tune in `ray_jobs/train.py`) which calls back
:meth:`TrainJob.record_row` for every epoch and :meth:`TrainJob.complete` / :meth:`TrainJob.fail` as trials
end, then register every member whose folds are all trained and summarise. Each epoch's metrics go to
the fold's MLflow run as they arrive (:func:`ml.tracking.runs.log_epoch`), so the UI charts a fold while
it trains; a completed trial's files are published to ``runs_dir`` and its run completed at once, so a job
killed half-way keeps its finished folds.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlflow.exceptions import MlflowException

from ml import tracking
from ml.checkpoint import MODEL_FILE
from ml.config import Config
from ml.jobs.faults import FaultInjection
from ml.jobs.folds import check_conflicts, finished_fold, fold_dir, publish
from ml.jobs.plan import job_key, plan_resources, prebuild_caches, select
from ml.oof import OOF_FILE

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("val_micro_f1", "val_macro_f1", "val_lrap", "val_loss")
CHECKPOINT_PATH_KEY = "checkpoint_path"
"""The result key naming the uploaded checkpoint of a report (Ray's own Tune bridge uses the same name)."""
# What a Ray Tune result adds to the metrics a worker reports: bookkeeping, not learning curves.
RUNNER_KEYS = frozenset(
    {
        "timestamp",
        "time_this_iter_s",
        "time_total_s",
        "time_since_restore",
        "training_iteration",
        "iterations_since_restore",
        "pid",
        "done",
        "final",
        "resumed",
        CHECKPOINT_PATH_KEY,
        "checkpoint_dir_name",
        "should_checkpoint",
        "node_ip",
        "hostname",
        "date",
        "trial_id",
        "experiment_id",
        "experiment_tag",
        "config",
    }
)

Key = tuple[str, int]


class TrainJobError(RuntimeError):
    """Some (member, fold) trials failed; ``summary`` holds what did finish."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        """Carry the job summary with the message."""
        super().__init__(message)
        self.summary = summary


@dataclass
class FoldOutcome:
    """What happened to one (member, fold) in this job."""

    member: str
    fold: int
    status: str  # trained | skipped | logged | failed
    metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: int = -1
    epochs_run: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    reported_epochs: list[int] = field(default_factory=list)
    resumed_at_epoch: int | None = None
    run_id: str | None = None
    model_path: str | None = None
    oof_path: str | None = None
    error: str | None = None


class TrainJob:
    """Driver-side state of one training job (the grid runner's callbacks land here)."""

    def __init__(
        self,
        cfg: Config,
        fold_keys: dict[str, str],
        key: str,
        parent_run_id: str | None,
        fetch_checkpoint: Callable[[str, Path], None],
    ) -> None:
        """State of a job; ``fetch_checkpoint(path, dest)`` copies a reported checkpoint to a folder."""
        self.cfg = cfg
        self.fold_keys = fold_keys
        self.key = key
        self.parent_run_id = parent_run_id
        self.fetch_checkpoint = fetch_checkpoint
        self.outcomes: dict[Key, FoldOutcome] = {}
        self.rows: dict[Key, list[dict[str, Any]]] = {}
        self.live_runs: dict[Key, str] = {}

    def record_row(self, key: Key, result: dict[str, Any]) -> None:
        """One reported result of a trial: remember it and log an epoch's metrics to the fold's run now."""
        self.rows.setdefault(key, []).append(dict(result))
        if not self.cfg.mlflow.enabled or result.get("final") or "epoch" not in result:
            return
        row = {k: v for k, v in result.items() if k not in RUNNER_KEYS}
        try:
            run_id = self.live_runs.get(key)
            if run_id is None:
                run_id = tracking.open_live_fold(
                    self.cfg,
                    member=key[0],
                    fold=key[1],
                    fold_key=self.fold_keys[key[0]],
                    parent_run_id=self.parent_run_id,
                    job_key=self.key,
                )
                self.live_runs[key] = run_id
            tracking.log_epoch(self.cfg, run_id, row)
        except MlflowException as e:  # live curves are a convenience; the final run is logged anyway
            log.warning("could not log epoch of %s/fold%s: %s", *key, e)

    def complete(self, key: Key, result: dict[str, Any] | None) -> FoldOutcome:
        """A trial finished: publish its files and complete its MLflow run (idempotent)."""
        member, fold = key
        if key in self.outcomes and self.outcomes[key].status != "failed":
            return self.outcomes[key]
        path = (result or {}).get(CHECKPOINT_PATH_KEY)
        if not path or not (result or {}).get("final"):
            return self.fail(key, f"trial ended without a final checkpoint (last result: {result})")
        with tempfile.TemporaryDirectory(prefix="mpic-final-") as tmp:
            self.fetch_checkpoint(str(path), Path(tmp))
            info = publish(self.cfg, member, fold, Path(tmp))
        out = self._outcome(member, fold, "trained", info)
        every = self.rows.get(key, [])
        rows = [r for r in every if not r.get("final") and "epoch" in r]
        out.reported_epochs = [int(r["epoch"]) for r in rows]
        resumed = [int(r["epoch"]) for r in rows if r.get("resumed")]
        if resumed:
            out.resumed_at_epoch = resumed[0]
        elif any(r.get("final") and r.get("resumed") for r in every):
            # resumed from a checkpoint with every epoch done (killed before the driver published it)
            out.resumed_at_epoch = out.epochs_run
        self.outcomes[key] = out
        return out

    def fail(self, key: Key, error: str) -> FoldOutcome:
        """A trial failed: record why and close its live run as FAILED."""
        out = FoldOutcome(key[0], key[1], "failed", error=error)
        self.outcomes[key] = out
        live = self.live_runs.pop(key, None)
        if live is not None:
            try:
                tracking.end_run(self.cfg, live, "FAILED")
            except MlflowException as e:
                log.warning("could not close run %s: %s", live, e)
        return out

    def adopt(self, member: str, fold: int, info: dict[str, Any]) -> FoldOutcome:
        """A (member, fold) finished earlier: reuse its FINISHED run, or log it from its files."""
        status, run_id = "skipped", None
        if self.cfg.mlflow.enabled:
            found = tracking.find_fold_run(
                self.cfg, member, fold, self.fold_keys[member], info["model_sha256"]
            )
            if found is None:
                status, run_id = "logged", self._log(member, fold, info)
            else:
                run_id = found.run_id
        out = self._outcome(member, fold, status, info, log_run=False)
        out.run_id = run_id
        self.outcomes[(member, fold)] = out
        return out

    def _outcome(
        self, member: str, fold: int, status: str, info: dict[str, Any], *, log_run: bool = True
    ) -> FoldOutcome:
        d = fold_dir(self.cfg, member, fold)
        out = FoldOutcome(
            member,
            fold,
            status,
            metrics=dict(info.get("metrics", {})),
            best_epoch=int(info.get("best_epoch", -1)),
            epochs_run=int(info.get("epochs_run", 0)),
            history=list(info.get("history", [])),
            model_path=str(d / MODEL_FILE),
            oof_path=str(d / OOF_FILE),
        )
        if log_run and self.cfg.mlflow.enabled:
            out.run_id = self._log(member, fold, info)
        return out

    def _log(self, member: str, fold: int, info: dict[str, Any]) -> str:
        d = fold_dir(self.cfg, member, fold)
        run_id, _ = tracking.log_fold(
            self.cfg,
            member=member,
            fold=fold,
            fold_key=self.fold_keys[member],
            model_path=d / MODEL_FILE,
            oof_path=d / OOF_FILE,
            history=info.get("history", []),
            best=info.get("metrics", {}),
            parent_run_id=self.parent_run_id,
            job_key=self.key,
            extra_params={"best_epoch": info.get("best_epoch"), "world_size": info.get("world_size", 1)},
            extra_tags={"mpic.device": str(info.get("device", ""))},
            run_id=self.live_runs.pop((member, fold), None),
        )
        return run_id


class GridRunner(Protocol):
    """Runs the (member, fold) trials of a job, reporting through the job's callbacks."""

    def __call__(
        self,
        job: TrainJob,
        todo: Sequence[Key],
        *,
        use_gpu: bool,
        concurrency: int,
        fault: FaultInjection | None,
    ) -> None:
        """Run every trial in ``todo``; call ``job.record_row``, ``job.complete`` and ``job.fail``."""


@dataclass(frozen=True)
class Plan:
    """A validated training job, checked against ``runs_dir`` before anything starts."""

    cfg: Config
    members: list[str]
    folds: list[int]
    fold_keys: dict[str, str]
    key: str
    fault: FaultInjection | None


def prepare(
    cfg: Config,
    members: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    *,
    overwrite: bool = False,
) -> Plan:
    """Validate the selection and refuse to overwrite finished folds of another configuration.

    Raises:
        ValueError: Unknown members or folds out of range.
        RunsDirConflictError: See :func:`ml.jobs.folds.check_conflicts`.
    """
    names, fold_list = select(cfg, members, folds)
    fold_keys = {m: tracking.member_fingerprint(cfg, m) for m in names}
    check_conflicts(cfg, [(m, f) for m in names for f in fold_list], fold_keys, overwrite=overwrite)
    return Plan(
        cfg, names, fold_list, fold_keys, job_key(cfg, names, fold_list), FaultInjection.from_env(cfg)
    )


def run(
    plan: Plan,
    grid: GridRunner,
    resources: dict[str, float],
    fetch_checkpoint: Callable[[str, Path], None],
) -> dict[str, Any]:
    """Run a prepared job: adopt finished folds, train the rest through ``grid``, register, summarise.

    Args:
        plan: From :func:`prepare`.
        grid: Runs the trials (Ray Tune in `ray_jobs/train.py`).
        resources: The cluster's total resources (sizes the concurrency).
        fetch_checkpoint: Copies a reported final checkpoint (a path in the runner's storage) to a folder.

    Returns:
        The summary (see ``ray_jobs.train.train``).

    Raises:
        TrainJobError: If some trials failed (after everything else was logged); carries the summary.
    """
    cfg = plan.cfg
    t_start = time.perf_counter()
    parent: str | None = None
    try:
        exp_id = None
        if cfg.mlflow.enabled:
            exp_id = tracking.setup(cfg)
            tracking.fail_orphaned_runs(cfg)
            parent = tracking.start_run(
                cfg,
                kind=tracking.KIND_TRAIN_JOB,
                name=f"train-{cfg.ensemble}-{plan.key[:8]}",
                job_key=plan.key,
            )
            _log_job_params(cfg, parent, plan)
        job = TrainJob(cfg, plan.fold_keys, plan.key, parent, fetch_checkpoint)
        todo: list[Key] = []
        for m in plan.members:
            for f in plan.folds:
                info = finished_fold(cfg, m, f, plan.fold_keys[m])
                if info is None:
                    todo.append((m, f))
                else:
                    job.adopt(m, f, info)
        use_gpu, concurrency = plan_resources(cfg, plan.members, resources, len(todo))
        cache_s: dict[int, float] = {}
        if todo:
            cache_s = prebuild_caches(cfg, sorted({m for m, _ in todo}))
            print(
                f"training {len(todo)} (member, fold) trials, {concurrency} at a time "
                f"({'GPU' if use_gpu else 'CPU'}); "
                f"skipping {len(plan.folds) * len(plan.members) - len(todo)} finished"
            )
            grid(job, todo, use_gpu=use_gpu, concurrency=concurrency, fault=plan.fault)
            for k in todo:
                if k not in job.outcomes:
                    job.fail(k, "trial did not run")
        registered = register(cfg, job, plan.members) if cfg.mlflow.enabled else {}
        summary = summarise(cfg, job, plan, registered, use_gpu, concurrency, exp_id)
        summary["cache_build_s"] = cache_s
        summary["wall_s"] = time.perf_counter() - t_start
        failed = summary["failed"]
        if parent is not None:
            _log_job_end(cfg, parent, summary)
            tracking.end_run(cfg, parent, "FAILED" if failed else "FINISHED")
        print_summary(summary, cfg.inference.threshold)
        if failed:
            raise TrainJobError(f"{len(failed)} trial(s) failed: {failed}", summary)
        return summary
    except TrainJobError:
        raise
    except BaseException:
        if parent is not None:
            tracking.end_run(cfg, parent, "FAILED")
        raise


def _log_job_params(cfg: Config, parent: str, plan: Plan) -> None:
    try:
        tracking.log_params(
            cfg,
            parent,
            {
                "ensemble": cfg.ensemble,
                "members": list(plan.members),
                "folds": list(plan.folds),
                "folds.k": cfg.folds.k,
                **{f"fold_key.{m}": k for m, k in plan.fold_keys.items()},
            },
        )
        tracking.log_config(cfg, parent)
    except MlflowException as e:  # parameters of a re-opened run are immutable; identical ones are fine
        log.warning("could not log job parameters: %s", e)


def register(cfg: Config, job: TrainJob, names: Sequence[str]) -> dict[str, Any]:
    """Register each member whose k folds all have a FINISHED run (from this job or earlier ones)."""
    out: dict[str, Any] = {}
    for m in names:
        folds: dict[int, tuple[str, str | Path, dict[str, float]]] = {}
        for f in range(cfg.folds.k):
            o = job.outcomes.get((m, f))
            if o is not None and o.status != "failed" and o.run_id and o.model_path:
                folds[f] = (o.run_id, o.model_path, o.metrics)
                continue
            info = finished_fold(cfg, m, f, job.fold_keys[m])
            found = info and tracking.find_fold_run(cfg, m, f, job.fold_keys[m], info["model_sha256"])
            if info and found:
                folds[f] = (found.run_id, fold_dir(cfg, m, f) / MODEL_FILE, dict(info.get("metrics", {})))
        if len(folds) < cfg.folds.k:
            out[m] = {"registered": False, "reason": f"{len(folds)}/{cfg.folds.k} folds trained"}
            continue
        reg = tracking.register_member(cfg, m, folds, parent_run_id=job.parent_run_id, job_key=job.key)
        out[m] = {"registered": True, **asdict(reg)}
    return out


def _mean(values: Sequence[float]) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else float("nan")


def _member_summary(outs: Sequence[FoldOutcome]) -> dict[str, Any]:
    ok = [o for o in outs if o.status != "failed"]
    s: dict[str, Any] = {k: _mean([o.metrics.get(k, float("nan")) for o in ok]) for k in SUMMARY_KEYS}
    s["samples_per_s"] = _mean([_mean([r.get("samples_per_s", float("nan")) for r in o.history]) for o in ok])
    s["data_share"] = _mean([_mean([r.get("data_share", float("nan")) for r in o.history]) for o in ok])
    s["folds"] = sorted(o.fold for o in ok)
    s["failed_folds"] = sorted(o.fold for o in outs if o.status == "failed")
    return s


def summarise(
    cfg: Config,
    job: TrainJob,
    plan: Plan,
    registered: dict[str, Any],
    use_gpu: bool,
    concurrency: int,
    exp_id: str | None,
) -> dict[str, Any]:
    """The job's summary: per member, per fold, what was trained, skipped and failed, where to look."""
    outs = [job.outcomes[(m, f)] for m in plan.members for f in plan.folds if (m, f) in job.outcomes]
    members = {}
    for m in plan.members:
        members[m] = {**_member_summary([o for o in outs if o.member == m]), "registry": registered.get(m)}
    return {
        "job_key": job.key,
        "ensemble": cfg.ensemble,
        "members": members,
        "folds": {f"{o.member}/{o.fold}": asdict(o) for o in outs},
        "trained": [f"{o.member}/{o.fold}" for o in outs if o.status == "trained"],
        "skipped": [f"{o.member}/{o.fold}" for o in outs if o.status in ("skipped", "logged")],
        "failed": [f"{o.member}/{o.fold}" for o in outs if o.status == "failed"],
        "use_gpu": use_gpu,
        "max_concurrent_trials": concurrency,
        "parent_run_id": job.parent_run_id,
        "experiment_id": exp_id,
        "mlflow_ui": tracking.ui_url(cfg, job.parent_run_id, exp_id) if cfg.mlflow.enabled else None,
        "runs_dir": str(cfg.runs_dir),
    }


def _log_job_end(cfg: Config, parent: str, summary: dict[str, Any]) -> None:
    metrics: dict[str, float] = {
        "trained": len(summary["trained"]),
        "skipped": len(summary["skipped"]),
        "failed": len(summary["failed"]),
        "wall_s": summary["wall_s"],
    }
    for m, s in summary["members"].items():
        for k in (*SUMMARY_KEYS, "samples_per_s", "data_share"):
            metrics[f"{m}/{k}"] = s[k]
    tracking.log_metrics(cfg, parent, metrics)
    tracking.log_artifact_json(cfg, parent, summary, "summary.json")


def print_summary(summary: dict[str, Any], threshold: float) -> None:
    """One line per member and a total, for the job's log.

    Validation LRAP comes first: it needs no decision. The F1 figures are at the one fixed ``threshold``
    the per-epoch validation uses (``inference.threshold``); the per-class thresholds that serving uses
    are fitted later by the fusion step, so on folds that hold out an unheard library, where scores stay
    low, these F1s can be near 0 while the ranking is fine.
    """
    for m, s in summary["members"].items():
        reg = s.get("registry") or {}
        tag = (
            f" → {reg.get('name')} v{reg.get('version')}{' (champion)' if reg.get('champion') else ''}"
            if reg.get("registered")
            else ""
        )
        print(
            f"{m}: validation LRAP {s['val_lrap']:.3f}, loss {s['val_loss']:.3f}, "
            f"micro/macro-F1 {s['val_micro_f1']:.3f}/{s['val_macro_f1']:.3f} at the fixed threshold "
            f"{threshold:g} (per-class thresholds: the fusion step) over folds {s['folds']}, "
            f"{s['samples_per_s']:.1f} samples/s, data share {s['data_share']:.0%}{tag}"
        )
    print(
        f"trained {len(summary['trained'])}, skipped {len(summary['skipped'])}, "
        f"failed {len(summary['failed'])} "
        f"in {summary['wall_s']:.0f} s; checkpoints in {summary['runs_dir']}"
    )
    if summary.get("mlflow_ui"):
        print(f"MLflow: {summary['mlflow_ui']} (start the UI with `make mlflow` or `mpic mlflow`)")
