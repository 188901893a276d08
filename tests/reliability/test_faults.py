"""Faults: a member replica killed under load; a training job killed half-way and submitted again.

Replica kill (session Serve deployment): ``SIGKILL`` one of the two ``res_bpm`` replicas while clients keep
posting. Serve replaces it; requests that were in flight on it are sent again by the ingress (they succeed)
or fail with a 5xx naming the member; nothing hangs; the recovery time (kill → the replacement RUNNING and
``/healthz`` ok) is reported. ``MPIC_LONG_FAULTS=1`` also kills ``res_genre``'s only replica.

Training: a job (two members, fold 0, both trials at once; one member trains 1 epoch, the other 6) runs as
its own driver process on the session's Ray; once the quick fold is finished and the slow one has committed an
epoch checkpoint, the whole driver is ``SIGKILL``-ed. Submitted again, the finished fold is not retrained, the
other resumes from its last committed checkpoint (each later epoch runs once), and MLflow holds exactly one
FINISHED run per fold and one per job, none left RUNNING. ``MPIC_LONG_FAULTS=1`` also ``SIGKILL``-s the Ray
Train worker of the resumed fold mid-epoch (an injected worker failure: tests/ray_jobs/test_train_job.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.procs import descendants
from ml.config import Config
from tests.reliability.conftest import LONG_FAULTS_ENV, find_descendants, report, wait_for
from tests.reliability.corpus import encode, tone
from tests.reliability.loadgen import LoadThread, summarize

ROOT = Path(__file__).resolve().parents[2]


# ---- a member replica killed under load ---------------------------------------------------------------


def running_pids(deployment: str) -> set[int]:
    from tests.serve_state import replica_details

    return {
        int(r["pid"])
        for r in replica_details().get(deployment, [])
        if r.get("state") == "RUNNING" and r.get("pid")
    }


def healthy(url: str) -> bool:
    try:
        r = httpx.get(f"{url}/healthz", timeout=10)
        return r.status_code == 200 and bool(r.json().get("ok"))
    except httpx.HTTPError:
        return False


def kill_replica_under_load(serve_url: str, member: str, clients: int = 16) -> dict[str, Any]:
    deployment = f"member_{member}"
    before = running_pids(deployment)
    assert before, f"no running replica of {deployment}"
    victim = min(before)
    assert victim in descendants(), "only processes of this test session's Ray are ever killed"
    files = [("files", ("k.wav", encode(tone(1.5, 22050), 22050, "WAV", "PCM_16"), "audio/wav"))]
    load = LoadThread(serve_url, files, clients=clients, duration_s=150.0, timeout_s=60.0)
    load.start()
    time.sleep(3.0)
    t_kill = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    replaced_s = wait_for(
        lambda: len(running_pids(deployment)) == len(before) and victim not in running_pids(deployment),
        timeout_s=180,
        what=f"a replacement replica of {deployment}",
        interval_s=0.5,
    )
    healthy_s = wait_for(lambda: healthy(serve_url), timeout_s=60, what="/healthz ok") + replaced_s
    time.sleep(3.0)  # traffic on the recovered deployment
    load.stop()
    load.join(timeout=90)
    assert not load.is_alive(), "the load generator hung"
    assert load.error is None, load.error
    recs, kill_at = load.recs, t_kill - load.t0
    after_kill = [r for r in recs if r.t + r.latency >= kill_at]
    failed = [r for r in recs if r.status != 200]
    ok_after = [r.t + r.latency - kill_at for r in after_kill if r.status == 200]
    figures = {
        "member": member,
        "replicas": len(before),
        "clients": clients,
        "recovery_s": round(replaced_s, 1),
        "healthy_after_s": round(healthy_s, 1),
        "first_success_after_kill_s": round(min(ok_after), 2) if ok_after else None,
        "failed": len(failed),
        "failures": sorted({r.detail[:160] for r in failed})[:5],
        **summarize(recs, max(r.t + r.latency for r in recs)),
    }
    report(f"replica-kill-{member}", figures)
    for r in failed:  # succeeded on retry, or a clear 5xx naming the member
        assert r.status >= 500 and f"'{member}'" in r.detail, r
    assert max(r.latency for r in recs) < 60.0, "a request hung"
    after = httpx.post(f"{serve_url}/analyze_files/multi_model", files=files, timeout=60)
    assert after.status_code == 200, after.text
    return figures


def test_member_replica_killed_under_load(serve_url: str) -> None:
    figures = kill_replica_under_load(serve_url, "res_bpm")
    # the other replica carried on: requests in flight were sent again, none failed
    assert figures["failed"] == 0, figures
    assert figures["first_success_after_kill_s"] is not None and figures["first_success_after_kill_s"] < 15


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get(LONG_FAULTS_ENV), reason=f"set {LONG_FAULTS_ENV}=1 for the long drills"
)
def test_only_replica_killed_under_load(serve_url: str) -> None:
    """No other replica: requests wait for the replacement (bounded) or fail with 503 naming the member."""
    kill_replica_under_load(serve_url, "res_genre")


# ---- a training job killed half-way and submitted again ------------------------------------------------


DRIVER = """
import json, sys
from ml.config import Config
from ray_jobs.train import train
train(Config.model_validate(json.loads(open(sys.argv[1]).read())), folds=[0])
"""
QUICK, SLOW = "res_genre", "res_bpm"  # fold 0 of QUICK finishes while SLOW is still training


def train_cfg(smoke_cfg: Config, tmp: Path, slow_epochs: int = 6) -> Config:
    from tests.serve.conftest import derive_config

    return derive_config(
        smoke_cfg,
        runs_dir=str(tmp / "runs"),
        ray={"storage_path": str(tmp / "ray_results")},
        mlflow={
            "backend_store_uri": f"sqlite:///{tmp / 'mlflow.db'}",
            "artifacts_destination": str(tmp / "mlflow-artifacts"),
            "experiment": "mpic-kill-job",
        },
        # CPU trials (the session's Serve replicas hold fractions of the one logical GPU), both at once
        train={"max_concurrent_trials": 2, "gpus_per_trial": 0},
        members={
            QUICK: {"train": {"epochs": 1}},
            SLOW: {"train": {"epochs": slow_epochs, "steps_per_epoch": 4}},
        },
    )


def committed_epochs(cfg: Config, member: str, fold: int) -> int:
    """Epochs of (member, fold) whose checkpoint Ray Train has committed (its run's manager snapshot)."""
    best = 0
    for snap in Path(cfg.ray.storage_path).glob(f"{member}-fold{fold}-*/checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snap.read_text()).get("checkpoint_results", [])
        except (OSError, ValueError):  # being written
            continue
        epochs = [int(r["metrics"]["epoch"]) + 1 for r in results if "epoch" in r.get("metrics", {})]
        best = max([best, *epochs])
    return best


def mlflow_runs(cfg: Config) -> list[Any]:
    from ml import tracking

    return list(tracking._search(cfg, {}))


def kill_train_worker_mid_epoch(cfg: Config, member: str, after: int) -> int:
    """SIGKILL the (only) Ray Train worker once ``member`` has more than ``after`` committed checkpoints."""
    wait_for(lambda: committed_epochs(cfg, member, 0) > after, 180, "a new epoch checkpoint", 0.1)
    workers = find_descendants("ray::RayTrainWorker")
    assert len(workers) == 1, workers
    os.kill(workers[0], signal.SIGKILL)
    return workers[0]


def test_training_job_killed_and_resubmitted(
    smoke_cfg: Config, smoke_data: Path, ray_session: None, tmp_path: Path, long_faults: bool
) -> None:
    import ray

    from ml import tracking
    from ray_jobs.train import fold_dir, train

    # the slow fold is 1-3 epochs in when the quick one is done (2 cores): 6 epochs leave a margin. On a
    # slower machine it may have committed all of them before the driver published it (CI, 2026-12-02):
    # then the resubmitted fold trains nothing and says it resumed at its last epoch
    # (tests/ml/jobs/test_resume_accounting.py)
    cfg = train_cfg(smoke_cfg, tmp_path, slow_epochs=8 if long_faults else 6)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.snapshot()))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "driver.log"
    done = {m: fold_dir(cfg, m, 0) / "result.json" for m in (QUICK, SLOW)}
    t0 = time.monotonic()
    with open(log, "w") as out:
        driver = subprocess.Popen(  # the job's driver: its own process on this session's Ray
            [sys.executable, "-c", DRIVER, str(cfg_file)], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        wait_for(
            lambda: (
                (done[QUICK].is_file() and committed_epochs(cfg, SLOW, 0) > 0) or driver.poll() is not None
            ),
            timeout_s=300,
            what=f"{QUICK} fold 0 finished and {SLOW} fold 0 checkpointed",
            interval_s=0.1,
        )
        assert driver.poll() is None, log.read_text()[-3000:]
        assert not done[SLOW].exists(), "the slow trial finished before the job could be killed"
        t_kill = time.monotonic()
        driver.send_signal(signal.SIGKILL)  # the whole job: Ray tears down its trials and workers
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
    quick_model = fold_dir(cfg, QUICK, 0) / "model.pt"
    quick_mtime = quick_model.stat().st_mtime_ns
    assert not done[SLOW].exists()
    assert "RUNNING" in {r.info.status for r in mlflow_runs(cfg)}  # the dead driver left its job run open
    epochs_at_kill = committed_epochs(cfg, SLOW, 0)

    # submitted again (in this process, same Ray); the long drill also kills the Train worker mid-epoch
    worker: dict[str, Any] = {}
    if long_faults:
        import threading

        def drill() -> None:
            worker["pid"] = kill_train_worker_mid_epoch(cfg, SLOW, epochs_at_kill)

        watcher = threading.Thread(target=drill, daemon=True)
        watcher.start()
    again = train(cfg, folds=[0])
    took = time.monotonic() - t0

    assert again["skipped"] == [f"{QUICK}/0"] and again["trained"] == [f"{SLOW}/0"], again
    assert quick_model.stat().st_mtime_ns == quick_mtime  # the finished fold was not retrained
    slow = again["folds"][f"{SLOW}/0"]
    # the killed fold went on from its last committed checkpoint: the epochs before it were not trained again
    assert slow["resumed_at_epoch"] is not None and slow["resumed_at_epoch"] >= epochs_at_kill, slow
    # ... and every later epoch ran exactly once (also across a Train worker killed mid-epoch)
    assert slow["reported_epochs"] == list(range(slow["resumed_at_epoch"], cfg.member_train(SLOW).epochs))
    assert [int(r["epoch"]) for r in slow["history"]] == list(range(cfg.member_train(SLOW).epochs))
    runs = mlflow_runs(cfg)
    states = [(r.info.run_name, r.info.status) for r in runs]
    assert all(r.info.status != "RUNNING" for r in runs), states
    jobs = [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == tracking.KIND_TRAIN_JOB]
    assert len(jobs) == 1 and jobs[0].info.status == "FINISHED", states  # re-opened, not duplicated
    folds = [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == tracking.KIND_FOLD]
    assert sorted(r.data.tags[tracking.TAG_MEMBER] for r in folds) == sorted([QUICK, SLOW]), states
    assert all(r.info.status == "FINISHED" for r in folds), states  # one per fold, nothing half-written
    if long_faults:
        assert worker.get("pid") and worker["pid"] not in descendants()
    from mlflow.entities import ViewType

    deleted = tracking.client(cfg).search_runs([tracking.setup(cfg)], run_view_type=ViewType.DELETED_ONLY)
    assert all(r.data.tags.get(tracking.TAG_KIND) == tracking.KIND_FOLD for r in deleted)
    report(
        "training-job-kill",
        {
            "killed_after_s": round(t_kill - t0, 1),
            "total_s": round(took, 1),
            "epochs_at_kill": epochs_at_kill,
            "skipped": again["skipped"],
            "trained": again["trained"],
            "resumed_at_epoch": slow["resumed_at_epoch"],
            "reported_epochs": slow["reported_epochs"],
            "train_worker_killed": worker.get("pid"),
            "half_written_runs_deleted": len(deleted),  # >0 when the kill landed while a fold was logged
            "mlflow_runs": dict(states),
        },
    )
