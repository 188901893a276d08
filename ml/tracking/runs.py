"""Runs of a namespace's experiment: jobs, (member, fold) runs with live per-epoch metrics, orphans.

* one **parent run** per job (``mpic.kind=train_job``), identified by a ``mpic.job_key`` tag: the same
  job submitted again re-opens its parent run instead of creating another;
* one **nested run per (member, fold)** (``mpic.kind=fold``). It is opened when the fold's first epoch
  reaches the driver (:func:`open_live_fold`) and every epoch's metrics are logged as they come
  (:func:`log_epoch`, ``step`` = epoch), so the UI charts a fold while it trains; :func:`log_fold`
  completes it with the member's parameters, the best epoch's metrics (``best/…``), the checkpoint
  (``checkpoint/model.pt``), the out-of-fold predictions (``oof/oof.npz``), the history and a config
  snapshot (``config/``). It is identified by ``mpic.member``, ``mpic.fold`` and ``mpic.fold_key`` (a
  fingerprint of everything that determines the trained weights, see
  :func:`ml.tracking.store.member_fingerprint`) and by the checkpoint's sha256: logging the same fold
  again returns the existing run, a run left RUNNING by a killed job is marked FAILED.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.config import Config
from ml.tracking.store import (
    KIND_FOLD,
    PARENT_TAG,
    TAG_FOLD,
    TAG_FOLD_KEY,
    TAG_HOST,
    TAG_JOB_KEY,
    TAG_KIND,
    TAG_LIVE,
    TAG_MEMBER,
    TAG_MODEL_SHA,
    TAG_PID,
    TAG_SUPERSEDED,
    client,
    file_sha256,
    log_artifact_json,
    log_config,
    log_file,
    log_history,
    log_metrics,
    log_params,
    search_runs,
    setup,
)


def start_run(
    cfg: Config,
    *,
    kind: str,
    name: str,
    job_key: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    reuse: bool = True,
) -> str:
    """Start (or, with ``reuse`` and a ``job_key``, re-open) a run and return its id.

    A run of the same ``kind`` and ``job_key`` (and parent) is re-opened (status RUNNING again) instead of
    creating a duplicate, so a re-submitted job keeps one run. The run is tagged with this host and
    process, which lets :func:`fail_orphaned_runs` close it if the process dies.
    """
    exp = setup(cfg)
    c = client(cfg)
    all_tags = {TAG_KIND: kind, TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()), **(tags or {})}
    if job_key is not None:
        all_tags[TAG_JOB_KEY] = job_key
    if parent_run_id is not None:
        all_tags[PARENT_TAG] = parent_run_id
    if reuse and job_key is not None:
        ident = {TAG_KIND: kind, TAG_JOB_KEY: job_key}
        if parent_run_id is not None:
            ident[PARENT_TAG] = parent_run_id
        existing = search_runs(cfg, ident, experiment_id=exp)
        if existing:
            run_id = existing[0].info.run_id
            c.update_run(run_id, status="RUNNING")
            for k in (TAG_HOST, TAG_PID):
                c.set_tag(run_id, k, all_tags[k])
            return str(run_id)
    run = c.create_run(exp, tags=all_tags, run_name=name)
    return str(run.info.run_id)


def end_run(cfg: Config, run_id: str, status: str = "FINISHED") -> None:
    """Terminate a run (FINISHED, FAILED or KILLED)."""
    client(cfg).set_terminated(run_id, status=status)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphaned_runs(
    cfg: Config, kinds: Iterable[str] | None = None, *, keep: Iterable[str] = ()
) -> list[str]:
    """Mark RUNNING mpic runs whose process (on this host) is gone as FAILED; returns their ids.

    Runs started on another host are left alone (their liveness cannot be checked from here); the
    per-(member, fold) and per-member runs are also closed by :func:`log_fold` / :func:`register_member`
    when the same work is logged again, and a job's parent run is re-opened by the same job.
    """
    host = socket.gethostname()
    keep_ids = set(keep)
    wanted = None if kinds is None else set(kinds)
    closed = []
    for run in search_runs(cfg, {}, status="RUNNING"):
        t = run.data.tags
        if TAG_KIND not in t or (wanted is not None and t[TAG_KIND] not in wanted):
            continue
        if run.info.run_id in keep_ids or t.get(TAG_HOST) != host:
            continue
        try:
            pid = int(t.get(TAG_PID, ""))
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            end_run(cfg, run.info.run_id, "FAILED")
            closed.append(run.info.run_id)
    return closed


# ---- per-(member, fold) runs -------------------------------------------------------------------------


def member_params(cfg: Config, member: str) -> dict[str, Any]:
    """Flat parameters describing a member: architecture, front end, augmentation and training recipe."""
    m = cfg.members[member]
    params: dict[str, Any] = {
        "member": member,
        "arch": m.arch,
        "front_end": m.front_end,
        "aggregation": m.aggregation,
        "augment": [{"name": a.name, "p": a.p, **a.params} for a in m.augment],
        "folds.k": cfg.folds.k,
        "folds.seed": cfg.folds.seed,
        "data.root": str(cfg.data.root),
    }
    params.update({f"model.{k}": v for k, v in cfg.models.get(m.arch, {}).items()})
    fe = cfg.front_ends[m.front_end].model_dump(mode="json")
    params.update({f"fe.{k}": v for k, v in fe.items()})
    params.update({f"train.{k}": v for k, v in cfg.member_train(member).model_dump(mode="json").items()})
    return params


@dataclass(frozen=True)
class FoldRun:
    """A FINISHED (member, fold) run."""

    run_id: str
    member: str
    fold: int
    fold_key: str
    model_sha256: str
    metrics: dict[str, float]


def _fold_ident(member: str, fold: int, fold_key: str) -> dict[str, str]:
    return {TAG_KIND: KIND_FOLD, TAG_MEMBER: member, TAG_FOLD: str(fold), TAG_FOLD_KEY: fold_key}


def find_fold_run(
    cfg: Config, member: str, fold: int, fold_key: str, model_sha256: str | None = None
) -> FoldRun | None:
    """The newest FINISHED run of (member, fold, fold_key), optionally also matching the checkpoint hash."""
    for run in search_runs(cfg, _fold_ident(member, fold, fold_key), status="FINISHED"):
        t = run.data.tags
        if t.get(TAG_SUPERSEDED) == "true":
            continue
        if model_sha256 is not None and t.get(TAG_MODEL_SHA) != model_sha256:
            continue
        best = {k[len("best/") :]: v for k, v in run.data.metrics.items() if k.startswith("best/")}
        return FoldRun(run.info.run_id, member, fold, fold_key, t.get(TAG_MODEL_SHA, ""), best)
    return None


def log_fold(
    cfg: Config,
    *,
    member: str,
    fold: int,
    fold_key: str,
    model_path: str | Path,
    oof_path: str | Path,
    history: Sequence[Mapping[str, float]],
    best: Mapping[str, float],
    parent_run_id: str | None = None,
    job_key: str | None = None,
    extra_params: Mapping[str, Any] | None = None,
    extra_tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> tuple[str, bool]:
    """Log one trained (member, fold) as a nested run; returns ``(run_id, created)``.

    With ``run_id`` (the run :func:`open_live_fold` opened while the fold trained) that run is completed:
    it gets the checkpoint hash, the artifacts, the best metrics and whatever epochs of ``history`` it
    does not hold yet; otherwise a new run is created with everything.

    Idempotent: if a FINISHED run with the same (member, fold, fold_key) and checkpoint hash exists, its
    id is returned and nothing is logged (``created`` False). Unfinished runs of the same identity (a job
    killed while logging: RUNNING, or FAILED by :func:`fail_orphaned_runs`) are marked FAILED and, once the
    new run is complete, deleted (MLflow's soft delete; ``mlflow gc`` purges them); older FINISHED runs for
    other checkpoints are tagged ``mpic.superseded``.
    """
    sha = file_sha256(model_path)
    existing = find_fold_run(cfg, member, fold, fold_key, sha)
    if existing is not None:
        return existing.run_id, False
    half_written = []
    live = run_id
    for run in search_runs(cfg, _fold_ident(member, fold, fold_key)):
        if run.info.run_id == live:
            continue
        if run.info.status == "RUNNING":
            end_run(cfg, run.info.run_id, "FAILED")
        if run.info.status == "FINISHED":
            client(cfg).set_tag(run.info.run_id, TAG_SUPERSEDED, "true")
        else:
            half_written.append(run.info.run_id)
    tags = {
        TAG_MEMBER: member,
        TAG_FOLD: str(fold),
        TAG_FOLD_KEY: fold_key,
        TAG_MODEL_SHA: sha,
        **(extra_tags or {}),
    }
    if live is None:
        run_id = start_run(
            cfg,
            kind=KIND_FOLD,
            name=f"{member}-fold{fold}",
            job_key=job_key,
            parent_run_id=parent_run_id,
            tags=tags,
            reuse=False,
        )
        params = {**member_params(cfg, member), "fold": fold, "fold_key": fold_key, **(extra_params or {})}
    else:
        run_id = live
        for k, v in {**tags, TAG_LIVE: "done"}.items():
            client(cfg).set_tag(run_id, k, v)
        params = dict(extra_params or {})  # the member's parameters were logged when the run opened
    try:
        log_params(cfg, run_id, params)
        logged = {int(m.step) for m in client(cfg).get_metric_history(run_id, _EPOCH_KEY)} if live else set()
        log_history(cfg, run_id, [r for i, r in enumerate(history) if int(r.get("epoch", i)) not in logged])
        best_metrics = {f"best/{k}": float(v) for k, v in best.items() if isinstance(v, int | float)}
        log_metrics(cfg, run_id, {**best_metrics, "epochs_run": float(len(history))})
        log_file(cfg, run_id, model_path, "checkpoint")
        log_file(cfg, run_id, oof_path, "oof")
        log_artifact_json(cfg, run_id, list(history), "history.json")
        log_config(cfg, run_id)
    except BaseException:
        end_run(cfg, run_id, "FAILED")
        raise
    end_run(cfg, run_id, "FINISHED")
    for stale in half_written:  # now that a complete run exists, earlier broken attempts go (soft delete)
        client(cfg).delete_run(stale)
    return run_id, True


def open_live_fold(
    cfg: Config,
    *,
    member: str,
    fold: int,
    fold_key: str,
    parent_run_id: str | None = None,
    job_key: str | None = None,
) -> str:
    """Open the (member, fold) run of a fold that is training now; returns its id.

    The run carries the fold's identity and parameters but no checkpoint hash (so
    :func:`find_fold_run` never takes it for a finished fold) until :func:`log_fold` completes it; if the
    job dies first, :func:`fail_orphaned_runs` or the next :func:`log_fold` of the fold marks it FAILED.
    """
    run_id = start_run(
        cfg,
        kind=KIND_FOLD,
        name=f"{member}-fold{fold}",
        job_key=job_key,
        parent_run_id=parent_run_id,
        tags={TAG_MEMBER: member, TAG_FOLD: str(fold), TAG_FOLD_KEY: fold_key, TAG_LIVE: "true"},
        reuse=False,
    )
    log_params(cfg, run_id, {**member_params(cfg, member), "fold": fold, "fold_key": fold_key})
    return run_id


_EPOCH_KEY = "val_loss"  # every epoch row has it: tells which epochs a live run already holds


def log_epoch(cfg: Config, run_id: str, row: Mapping[str, Any]) -> None:
    """Log one epoch's numeric metrics (``step`` = the row's ``epoch``) on a live fold run."""
    if "epoch" not in row:
        return
    metrics = {k: v for k, v in row.items() if k != "epoch" and isinstance(v, int | float)}
    log_metrics(cfg, run_id, metrics, step=int(row["epoch"]))


def run_history(cfg: Config, run_id: str, keys: Iterable[str]) -> list[dict[str, float]]:
    """Per-step rows of the given metric keys of a run (``epoch`` = step), sorted by step."""
    rows: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client(cfg).get_metric_history(run_id, key):
            rows.setdefault(m.step, {"epoch": float(m.step)})[key] = m.value
    return [rows[s] for s in sorted(rows)]
