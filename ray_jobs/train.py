"""Fold-parallel training of the ensemble on Ray: a Ray Tune grid over (member × fold), one TorchTrainer each.

Run it on a cluster with::

    ray job submit --working-dir . -- python -m ray_jobs.train --profile demo --base-dir "$PWD"

or locally (a Ray instance is started for the run) with ``python -m ray_jobs.train [--profile P]
[--set k=v …]`` / ``mpic train``.

How it works:

* Each Tune trial is a *function trainable* that builds and fits a :class:`ray.train.torch.TorchTrainer`
  (the Train V2 pattern; ``Tuner(trainer)`` is deprecated). Per-epoch metrics flow to Tune through
  :class:`ray.tune.integration.ray_train.TuneReportCallback`; a driver-side Tune callback records them
  and, as soon as a trial completes, copies its final ``model.pt`` + ``oof.npz`` to
  ``runs_dir/<member>/fold<k>/`` and logs the nested MLflow run, so a job killed half-way keeps its
  finished folds.
* Each Train worker runs :func:`ml.train.fit` with hooks that forward checkpoints to
  ``ray.train.report`` and resume from ``ray.train.get_checkpoint()``. ``FailureConfig(max_failures)``
  restarts a failed worker group from its last epoch checkpoint; the Train run name is derived from the
  (member, fold, config fingerprint), so a re-submitted job also resumes an unfinished fold from its last
  epoch (Train V2 restores a run of the same name and storage path).
* A (member, fold) whose final files in ``runs_dir`` were trained with *another* configuration is never
  silently replaced: the job refuses (:class:`RunsDirConflictError`, naming ``--overwrite``) before it
  trains anything. ``runs_dir`` is the profile's own (``<cache_dir>/<profile>/runs``), so another profile
  never collides.
* A (member, fold) whose final files exist in ``runs_dir`` (matching the config fingerprint and checkpoint
  hash) and whose MLflow run is FINISHED is skipped; if only the MLflow run is missing (a job killed between
  copying and logging) it is logged from the files without retraining.
* After the grid every member with all folds trained is registered in the MLflow Model Registry (one
  version = all fold checkpoints) and the champion alias is applied (:func:`ml.tracking.promote`).

Fault injection (tests, drills): ``MPIC_FAIL_ONCE_AT_EPOCH=<n>`` makes a worker raise once right after
reporting epoch ``n``'s checkpoint (``MPIC_FAIL_ONCE_ONLY=member/fold[,…]`` limits it to some trials; marker
files under ``MPIC_FAIL_MARKER_DIR``, default ``runs_dir/.faults``, make it happen once).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ml.config import Config
from ray_jobs import common

log = logging.getLogger(__name__)

FAIL_EPOCH_ENV = "MPIC_FAIL_ONCE_AT_EPOCH"
FAIL_ONLY_ENV = "MPIC_FAIL_ONCE_ONLY"
FAIL_MARKER_ENV = "MPIC_FAIL_MARKER_DIR"
RESULT_FILE = "result.json"
MODEL_FILE = "model.pt"
OOF_FILE = "oof.npz"
TRIAL_DRIVER_CPUS = 0.1  # the Tune trial only launches and watches its TorchTrainer
# Ray starts worker processes at nice 15 (RAY_worker_niceness), so a Train worker doing the actual work
# loses the CPU to every nice-0 process: Ray's own (raylet, GCS, dashboard, the driver) and anything else
# on the node. The Train workers run at normal priority, like a plain PyTorch process (and like the driver
# of a `ray job submit`); the coordination actors (Tune trial, Train controller) stay at nice 15.
WORKER_ENV_VARS = {"RAY_worker_niceness": "0"}
SUMMARY_KEYS = ("val_micro_f1", "val_macro_f1", "val_lrap", "val_loss")


class TrainJobError(RuntimeError):
    """Some (member, fold) trials failed; ``summary`` holds what did finish."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class RunsDirConflictError(RuntimeError):
    """``runs_dir`` holds finished folds trained with another configuration; the message says what to do."""


class InjectedFailure(RuntimeError):
    """Raised by the fault-injection hook (``MPIC_FAIL_ONCE_AT_EPOCH``)."""


# ---- fault injection -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultInjection:
    """Fail a trial's worker once, right after it reported the checkpoint of ``epoch``."""

    epoch: int
    marker_dir: str
    only: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, cfg: Config) -> FaultInjection | None:
        """Read the fault-injection settings from the driver's environment (None when unset)."""
        raw = os.environ.get(FAIL_EPOCH_ENV, "").strip()
        if not raw:
            return None
        only = tuple(s.strip() for s in os.environ.get(FAIL_ONLY_ENV, "").split(",") if s.strip())
        marker = os.environ.get(FAIL_MARKER_ENV) or str(cfg.runs_dir / ".faults")
        return cls(epoch=int(raw), marker_dir=marker, only=only)

    def marker(self, member: str, fold: int) -> Path:
        """The file that records that (member, fold) already failed once."""
        return Path(self.marker_dir) / f"{member}-fold{fold}.failed"

    def maybe_fail(self, member: str, fold: int, epoch: int) -> None:
        """Raise :class:`InjectedFailure` the first time (member, fold) reaches ``self.epoch``."""
        if epoch != self.epoch or (self.only and f"{member}/{fold}" not in self.only):
            return
        path = self.marker(member, fold)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "x") as f:
                f.write(f"{time.time()}\n")
        except FileExistsError:
            return
        raise InjectedFailure(
            f"injected failure of {member}/fold{fold} after epoch {epoch} ({FAIL_EPOCH_ENV})"
        )


# ---- planning (no Ray) -----------------------------------------------------------------------------------


def member_sample_rate(cfg: Config, member: str) -> int:
    """The sample rate of a member's front end (the training data is decoded at it)."""
    return int(cfg.front_ends[cfg.members[member].front_end].sample_rate)


def plan_resources(
    cfg: Config, members: Sequence[str], resources: dict[str, float], n_trials: int
) -> tuple[bool, int]:
    """(use GPUs?, max concurrent trials) for the cluster's total ``resources``.

    GPUs are used when the cluster has any and a member asks for some (``gpus_per_trial`` > 0). Unless
    ``cfg.train.max_concurrent_trials`` is set, concurrency is what the limiting resource allows: GPUs ÷
    GPUs per trial when GPUs are used, CPUs ÷ (CPUs per trial + the trial driver's share) in any case;
    at least 1 and at most the number of trials.
    """
    tcs = [cfg.member_train(m) for m in members] or [cfg.train]
    gpus, cpus = float(resources.get("GPU", 0.0)), float(resources.get("CPU", 0.0))
    wants_gpu = any(tc.gpus_per_trial > 0 for tc in tcs)
    # use_gpu=True: GPU workers may not exist yet (an autoscaling cluster starting from zero)
    use_gpu = wants_gpu and (gpus > 0 or cfg.train.use_gpu is True) and cfg.train.use_gpu is not False
    cpu_need = max(tc.cpus_per_trial * tc.num_workers for tc in tcs) + TRIAL_DRIVER_CPUS
    limit = math.floor(cpus / cpu_need + 1e-9)
    if use_gpu:
        gpu_need = max(tc.gpus_per_trial * tc.num_workers for tc in tcs if tc.gpus_per_trial > 0)
        if gpus > 0:
            limit = min(limit, math.floor(gpus / gpu_need + 1e-9))
    n = cfg.train.max_concurrent_trials or limit
    return use_gpu, max(1, min(n, max(1, n_trials)))


def select(
    cfg: Config, members: Sequence[str] | None, folds: Sequence[int] | None
) -> tuple[list[str], list[int]]:
    """Validated members (default: the selected ensemble) and folds (default: ``train.folds`` or all)."""
    names = list(members) if members else cfg.ensemble_members
    unknown = [m for m in names if m not in cfg.members]
    if unknown:
        raise ValueError(f"unknown members {unknown}; valid: {sorted(cfg.members)}")
    chosen = list(folds) if folds is not None else (cfg.train.folds or list(range(cfg.folds.k)))
    bad = [f for f in chosen if not 0 <= int(f) < cfg.folds.k]
    if bad:
        raise ValueError(f"folds {bad} out of range for k={cfg.folds.k}")
    return list(dict.fromkeys(names)), sorted({int(f) for f in chosen})


def job_key(cfg: Config, members: Sequence[str], folds: Sequence[int]) -> str:
    """Identity of a training job: the same members, folds and member fingerprints give the same key."""
    from ml import tracking

    return tracking.fingerprint(
        {
            "ensemble": cfg.ensemble,
            "members": {m: tracking.member_fingerprint(cfg, m) for m in members},
            "folds": list(folds),
        },
        12,
    )


def fold_dir(cfg: Config, member: str, fold: int) -> Path:
    """Where a (member, fold)'s final files live: ``runs_dir/<member>/fold<k>/``."""
    return cfg.runs_dir / member / f"fold{fold}"


def finished_fold(cfg: Config, member: str, fold: int, fold_key: str) -> dict[str, Any] | None:
    """The stored result of a completed (member, fold) whose files match ``fold_key``, else None."""
    from ml import tracking

    d = fold_dir(cfg, member, fold)
    if not all((d / f).is_file() for f in (MODEL_FILE, OOF_FILE, RESULT_FILE)):
        return None
    try:
        info = json.loads((d / RESULT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("fold_key") != fold_key or info.get("model_sha256") != tracking.file_sha256(d / MODEL_FILE):
        return None
    return dict(info)


def conflicting_folds(cfg: Config, todo: Sequence[tuple[str, int]], fold_keys: dict[str, str]) -> list[str]:
    """Folds in ``todo`` whose ``runs_dir`` folder holds a finished run of another configuration."""
    out = []
    for m, f in todo:
        d = fold_dir(cfg, m, f)
        try:
            info = json.loads((d / RESULT_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (d / MODEL_FILE).is_file() and info.get("fold_key") not in (None, fold_keys[m]):
            out.append(f"{m}/fold{f}")
    return out


# ---- worker side ---------------------------------------------------------------------------------------


class RayTrainHooks:
    """:class:`ml.train.Hooks` over Ray Train: ``ray.train.report`` and ``ray.train.get_checkpoint``."""

    def __init__(self, member: str, fold: int, rank: int, fault: FaultInjection | None = None) -> None:
        """Hooks of one worker (only rank 0 uploads checkpoints)."""
        self.member, self.fold, self.rank, self.fault = member, fold, rank, fault
        self._resume: Path | None = None
        self._looked = False
        self.resumed = False

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """Report an epoch (and its checkpoint from rank 0); maybe inject the configured failure."""
        import ray.train

        ckpt = None
        if checkpoint_dir is not None and self.rank == 0:
            ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
        ray.train.report({**metrics, "resumed": float(self.resumed)}, checkpoint=ckpt)
        if self.fault is not None and self.rank == 0:
            self.fault.maybe_fail(self.member, self.fold, int(metrics.get("epoch", -1)))

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint Ray Train hands this worker (after a failure or a restored run), copied locally."""
        if self._looked:
            return self._resume
        import ray.train

        self._looked = True
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        local = Path(tempfile.mkdtemp(prefix="mpic-resume-"))
        ckpt.to_directory(str(local))
        self._resume = local
        self.resumed = True
        return local

    def cleanup(self) -> None:
        """Remove the local copy of the resume checkpoint."""
        if self._resume is not None:
            shutil.rmtree(self._resume, ignore_errors=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker: fit one (member, fold) and report the final files as the last checkpoint."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from ml.inference import pick_device
    from ml.train import fit, load_train_data

    cfg: Config = config["cfg"]
    member, fold = str(config["member"]), int(config["fold"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tc = cfg.member_train(member)
    if tc.torch_threads is None:
        torch.set_num_threads(max(1, int(tc.cpus_per_trial)))
    device = pick_device(ray.get_gpu_ids())
    if device.type == "cuda":
        device = ray.train.torch.get_device()
    hooks = RayTrainHooks(member, fold, rank, config.get("fault"))
    try:
        resume = hooks.latest_checkpoint()
        with tempfile.TemporaryDirectory(prefix="mpic-fit-") as tmp:
            out = Path(tmp)
            if resume is not None and (resume / RESULT_FILE).is_file():
                # The run already finished (restored by name): re-publish its final checkpoint.
                for name in (MODEL_FILE, OOF_FILE, RESULT_FILE):
                    shutil.copy2(resume / name, out / name)
                info = json.loads((out / RESULT_FILE).read_text())
            else:
                data = load_train_data(cfg, member_sample_rate(cfg, member))
                res = fit(
                    cfg,
                    member,
                    fold,
                    out_dir=out,
                    hooks=hooks,
                    data=data,
                    device=device,
                    prepare_model=ray.train.torch.prepare_model if world > 1 else None,
                    shard=(rank, world),
                )
                info = {
                    "member": member,
                    "fold": fold,
                    "fold_key": config["fold_key"],
                    "best_epoch": res.best_epoch,
                    "epochs_run": res.epochs_run,
                    "metrics": {k: float(v) for k, v in res.metrics.items()},
                    "history": res.history,
                    "device": str(device),
                    "world_size": world,
                    "run_name": ctx.get_experiment_name(),
                }
                (out / RESULT_FILE).write_text(json.dumps(info, indent=2))
            final = {
                "final": 1.0,
                "best_epoch": float(info["best_epoch"]),
                "epochs_run": float(info["epochs_run"]),
                **{f"best_{k}": float(v) for k, v in info["metrics"].items() if k.startswith("val_")},
            }
            ckpt = ray.train.Checkpoint.from_directory(str(out)) if rank == 0 else None
            ray.train.report(final, checkpoint=ckpt)
    finally:
        hooks.cleanup()


# ---- trial (Tune function trainable) -----------------------------------------------------------------


@dataclass(frozen=True)
class TrialSettings:
    """Job-wide settings a trial needs besides its (member, fold)."""

    use_gpu: bool
    fold_keys: dict[str, str]
    fault: FaultInjection | None


def run_trial(config: dict[str, Any], cfg: Config, settings: TrialSettings) -> None:
    """Tune function trainable: build and fit the TorchTrainer of one (member, fold)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    member, fold = str(config["trial"]["member"]), int(config["trial"]["fold"])
    tc = cfg.member_train(member)
    use_gpu = settings.use_gpu and tc.gpus_per_trial > 0
    per_worker: dict[str, float] = {"CPU": tc.cpus_per_trial}
    if use_gpu:
        per_worker["GPU"] = tc.gpus_per_trial
    key = settings.fold_keys[member]
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
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # a Train V2 UserCallback
            # a Train V2 RunConfig field (mypy resolves ray.train.RunConfig to the V1 class)
            worker_runtime_env={"env_vars": dict(WORKER_ENV_VARS)},  # type: ignore[call-arg]
        ),
    )
    trainer.fit()


def _trial_key(trial: Any) -> tuple[str, int]:
    t = trial.config["trial"]
    return str(t["member"]), int(t["fold"])


def trial_name(trial: Any) -> str:
    """Tune trial (and folder) name: ``<member>-fold<k>``."""
    member, fold = _trial_key(trial)
    return f"{member}-fold{fold}"


# ---- driver side ---------------------------------------------------------------------------------------


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


def _fetch_checkpoint(cfg: Config, path: str, dest: Path) -> None:
    """Copy a reported checkpoint (a path in the Train storage) to a local folder."""
    import ray.train

    storage = str(cfg.ray.storage_path)
    if "://" in storage:
        import pyarrow.fs

        fs, _ = pyarrow.fs.FileSystem.from_uri(storage)
        ray.train.Checkpoint(path, filesystem=fs).to_directory(str(dest))
    else:
        ray.train.Checkpoint(path).to_directory(str(dest))


def _publish(cfg: Config, member: str, fold: int, src: Path) -> dict[str, Any]:
    """Install a trial's final files into ``runs_dir/<member>/fold<k>/`` (result.json written last)."""
    from ml import tracking

    d = fold_dir(cfg, member, fold)
    d.mkdir(parents=True, exist_ok=True)
    (d / RESULT_FILE).unlink(missing_ok=True)  # invalid until the new files are complete
    for name in (MODEL_FILE, OOF_FILE):
        tmp = d / (name + ".tmp")
        shutil.copy2(src / name, tmp)
        tmp.replace(d / name)
    info = json.loads((src / RESULT_FILE).read_text())
    info["model_sha256"] = tracking.file_sha256(d / MODEL_FILE)
    info["published"] = time.time()
    tmp = d / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(d / RESULT_FILE)
    return dict(info)


class _Job:
    """Driver-side state of one training job (also the Tune callback's target)."""

    def __init__(self, cfg: Config, fold_keys: dict[str, str], key: str, parent_run_id: str | None) -> None:
        self.cfg = cfg
        self.fold_keys = fold_keys
        self.key = key
        self.parent_run_id = parent_run_id
        self.outcomes: dict[tuple[str, int], FoldOutcome] = {}
        self.rows: dict[tuple[str, int], list[dict[str, Any]]] = {}

    def record_row(self, key: tuple[str, int], result: dict[str, Any]) -> None:
        self.rows.setdefault(key, []).append(dict(result))

    def complete(self, key: tuple[str, int], result: dict[str, Any] | None) -> FoldOutcome:
        """A trial finished: publish its files and log its MLflow run (idempotent)."""
        member, fold = key
        if key in self.outcomes and self.outcomes[key].status != "failed":
            return self.outcomes[key]
        path = (result or {}).get("checkpoint_path")
        if not path or not (result or {}).get("final"):
            return self.fail(key, f"trial ended without a final checkpoint (last result: {result})")
        with tempfile.TemporaryDirectory(prefix="mpic-final-") as tmp:
            _fetch_checkpoint(self.cfg, str(path), Path(tmp))
            info = _publish(self.cfg, member, fold, Path(tmp))
        out = self._outcome(member, fold, "trained", info)
        rows = [r for r in self.rows.get(key, []) if not r.get("final") and "epoch" in r]
        out.reported_epochs = [int(r["epoch"]) for r in rows]
        resumed = [int(r["epoch"]) for r in rows if r.get("resumed")]
        out.resumed_at_epoch = resumed[0] if resumed else None
        self.outcomes[key] = out
        return out

    def fail(self, key: tuple[str, int], error: str) -> FoldOutcome:
        out = FoldOutcome(key[0], key[1], "failed", error=error)
        self.outcomes[key] = out
        return out

    def _outcome(self, member: str, fold: int, status: str, info: dict[str, Any]) -> FoldOutcome:
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
        if self.cfg.mlflow.enabled:
            out.run_id = self._log(member, fold, info)
        return out

    def _log(self, member: str, fold: int, info: dict[str, Any]) -> str:
        from ml import tracking

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
        )
        return run_id

    def adopt(self, member: str, fold: int, info: dict[str, Any]) -> FoldOutcome:
        """A (member, fold) finished earlier: reuse its FINISHED run, or log it from its files."""
        from ml import tracking

        status, run_id = "skipped", None
        if self.cfg.mlflow.enabled:
            found = tracking.find_fold_run(
                self.cfg, member, fold, self.fold_keys[member], info["model_sha256"]
            )
            if found is None:
                status, run_id = "logged", self._log(member, fold, info)
            else:
                run_id = found.run_id
        out = FoldOutcome(
            member,
            fold,
            status,
            metrics=dict(info.get("metrics", {})),
            best_epoch=int(info.get("best_epoch", -1)),
            epochs_run=int(info.get("epochs_run", 0)),
            history=list(info.get("history", [])),
            run_id=run_id,
            model_path=str(fold_dir(self.cfg, member, fold) / MODEL_FILE),
            oof_path=str(fold_dir(self.cfg, member, fold) / OOF_FILE),
        )
        self.outcomes[(member, fold)] = out
        return out


def _make_callback(job: _Job) -> Any:
    from ray import tune

    class Collector(tune.Callback):
        """Runs in the driver: records per-epoch results and finishes trials as they complete."""

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


def _prebuild_caches(cfg: Config, members: Sequence[str]) -> dict[int, float]:
    """Decode the training data once per distinct sample rate before trials start (no racing writers)."""
    from ml.train import load_train_data

    took = {}
    for sr in sorted({member_sample_rate(cfg, m) for m in members}):
        t0 = time.perf_counter()
        load_train_data(cfg, sr, progress=sys.stderr.isatty())
        took[sr] = time.perf_counter() - t0
    return took


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
        registered}}, "folds": {"member/fold": FoldOutcome as dict}, "trained", "skipped", "failed",
        "use_gpu", "max_concurrent_trials", "parent_run_id", "mlflow_ui", "wall_s"}``.

    Raises:
        TrainJobError: If some trials failed (after everything else was logged); carries the summary.
        RunsDirConflictError: ``runs_dir`` holds finished folds of another configuration and not
            ``overwrite``.
    """
    import ray
    from ray import tune

    from ml import tracking

    t_start = time.perf_counter()
    names, fold_list = select(cfg, members, folds)
    fold_keys = {m: tracking.member_fingerprint(cfg, m) for m in names}
    clash = conflicting_folds(cfg, [(m, f) for m in names for f in fold_list], fold_keys)
    if clash and not overwrite:
        raise RunsDirConflictError(
            f"{cfg.runs_dir} holds finished runs trained with another configuration: {', '.join(clash)}. "
            "Refusing to overwrite them: pass --overwrite to replace them (their checkpoints stay in "
            "MLflow), or train into another namespace (--profile NAME, --set namespace=NAME or "
            "--set runs_dir=PATH)"
        )
    key = job_key(cfg, names, fold_list)
    fault = FaultInjection.from_env(cfg)
    started = common.init_ray(cfg)
    parent: str | None = None
    try:
        exp_id = None
        if cfg.mlflow.enabled:
            exp_id = tracking.setup(cfg)
            tracking.fail_orphaned_runs(cfg)
            parent = tracking.start_run(
                cfg, kind=tracking.KIND_TRAIN_JOB, name=f"train-{cfg.ensemble}-{key[:8]}", job_key=key
            )
            _log_job_params(cfg, parent, names, fold_list, fold_keys)
        job = _Job(cfg, fold_keys, key, parent)

        todo: list[tuple[str, int]] = []
        for m in names:
            for f in fold_list:
                info = finished_fold(cfg, m, f, fold_keys[m])
                if info is None:
                    todo.append((m, f))
                else:
                    job.adopt(m, f, info)

        use_gpu, concurrency = plan_resources(cfg, names, common.cluster_resources(), len(todo))
        cache_s: dict[int, float] = {}
        if todo:
            cache_s = _prebuild_caches(cfg, sorted({m for m, _ in todo}))
            print(
                f"training {len(todo)} (member, fold) trials, {concurrency} at a time "
                f"({'GPU' if use_gpu else 'CPU'}); "
                f"skipping {len(fold_list) * len(names) - len(todo)} finished"
            )
            settings = TrialSettings(use_gpu=use_gpu, fold_keys=fold_keys, fault=fault)
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
                    name=f"train-{cfg.ensemble}-{key[:8]}-{time.strftime('%Y%m%d-%H%M%S')}",
                    storage_path=str(cfg.ray.storage_path),
                    callbacks=[_make_callback(job)],
                    # a lost trial driver (its node died) is retried; the TorchTrainer inside resumes
                    # from its last checkpoint because runs are named per (member, fold, fingerprint)
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
            for k in todo:
                if k not in job.outcomes:
                    job.fail(k, "trial did not run")

        registered = _register(cfg, job, names) if cfg.mlflow.enabled else {}
        summary = _summary(cfg, job, names, fold_list, registered, use_gpu, concurrency, exp_id)
        summary["cache_build_s"] = cache_s
        summary["wall_s"] = time.perf_counter() - t_start
        failed = summary["failed"]
        if parent is not None:
            _log_job_end(cfg, parent, summary)
            tracking.end_run(cfg, parent, "FAILED" if failed else "FINISHED")
        _print_summary(cfg, summary)
        if failed:
            raise TrainJobError(f"{len(failed)} trial(s) failed: {failed}", summary)
        return summary
    except TrainJobError:
        raise
    except BaseException:
        if parent is not None:
            tracking.end_run(cfg, parent, "FAILED")
        raise
    finally:
        if started:
            ray.shutdown()


def _log_job_params(
    cfg: Config, parent: str, names: Sequence[str], folds: Sequence[int], keys: dict[str, str]
) -> None:
    from mlflow.exceptions import MlflowException

    from ml import tracking

    try:
        tracking.log_params(
            cfg,
            parent,
            {
                "ensemble": cfg.ensemble,
                "members": list(names),
                "folds": list(folds),
                "folds.k": cfg.folds.k,
                **{f"fold_key.{m}": k for m, k in keys.items()},
            },
        )
        tracking.log_config(cfg, parent)
    except MlflowException as e:  # parameters of a re-opened run are immutable; identical ones are fine
        log.warning("could not log job parameters: %s", e)


def _register(cfg: Config, job: _Job, names: Sequence[str]) -> dict[str, Any]:
    """Register each member whose k folds all have a FINISHED run (from this job or earlier ones)."""
    from ml import tracking

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


def _summary(
    cfg: Config,
    job: _Job,
    names: Sequence[str],
    folds: Sequence[int],
    registered: dict[str, Any],
    use_gpu: bool,
    concurrency: int,
    exp_id: str | None,
) -> dict[str, Any]:
    from ml import tracking

    outs = [job.outcomes[(m, f)] for m in names for f in folds if (m, f) in job.outcomes]
    members = {}
    for m in names:
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
    from ml import tracking

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


def _print_summary(cfg: Config, summary: dict[str, Any]) -> None:
    for m, s in summary["members"].items():
        reg = s.get("registry") or {}
        tag = (
            f" → {reg.get('name')} v{reg.get('version')}{' (champion)' if reg.get('champion') else ''}"
            if reg.get("registered")
            else ""
        )
        print(
            f"{m}: val micro-F1 {s['val_micro_f1']:.3f}, macro-F1 {s['val_macro_f1']:.3f} "
            f"over folds {s['folds']}, "
            f"{s['samples_per_s']:.1f} samples/s, data share {s['data_share']:.0%}{tag}"
        )
    print(
        f"trained {len(summary['trained'])}, skipped {len(summary['skipped'])}, "
        f"failed {len(summary['failed'])} "
        f"in {summary['wall_s']:.0f} s; checkpoints in {summary['runs_dir']}"
    )
    if summary.get("mlflow_ui"):
        print(f"MLflow: {summary['mlflow_ui']} (start the UI with `make mlflow` or `mpic mlflow`)")


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
