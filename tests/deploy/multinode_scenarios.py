"""Multi-node scenarios on a local ``ray.cluster_utils.Cluster``, one per process (run by test_multinode.py).

``python tests/deploy/multinode_scenarios.py SCENARIO --work DIR --data ROOT --cache DIR --out RESULT.json``

A ``Cluster`` cannot coexist with a ``ray.init()``-ed Ray in the same process (the pytest session may hold
the ``ray_session`` fixture's local Ray), so every scenario runs in its own interpreter, started by the test
with its own ``RAY_TMPDIR``: the cluster's address file then lands there, not in ``/tmp/ray``, and a plain
``ray.init()`` of a concurrent test run never attaches to this cluster by accident.

Every cluster has a head with **0 CPUs** (as ``cluster.yaml`` and the KubeRay manifests do) and worker
nodes named in the JSON result by role (``gpu1``, ``cpu``, …), some with a *logical* GPU: no CUDA exists, so
GPU-scheduled code falls back to the CPU, as in the rest of the test suite. All nodes share this machine's
disk, which stands in for the shared file system (NFS/EFS) a real cluster needs for ``runs_dir``, the data
cache and Ray Train's ``storage_path``.

Scenarios (each writes facts as JSON; the test asserts on them):

* ``train`` — one cluster (``gpu1``, ``gpu2``: 1 CPU + 1 logical GPU each; ``cpu``: 1 CPU), two phases of
  the real ``ray_jobs.train.train`` on the smoke profile:
  ``spread`` — one member × 2 folds, a whole GPU per trial: where each Train worker / Tune trial ran;
  ``node_loss`` — one fold for ``EPOCHS`` epochs on CPU with ``cpus_per_trial=1`` (so the Train worker never
  shares a 1-CPU node with its Tune trial and Train controller); once the Train controller has registered
  the checkpoint of epoch 1, the worker's node is killed (SIGKILL of its raylet and workers, no draining):
  does the job finish, resuming from a checkpoint on another node?
* ``serve`` — the Serve app (one untrained smoke member at 2 replicas asking for a quarter GPU each, 1
  ingress) on a CPU node and two GPU nodes: where replicas land; then a GPU node with a member replica (not
  the ingress) is killed while a client keeps posting requests: is the lost replica replaced, and do
  requests keep succeeding?
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# Node death is noticed after health_check_failure_threshold missed checks of health_check_period_ms
# (defaults 5 × 3 s); a faster detector keeps the scenarios short without changing what they show.
HEAD_SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
TRAIN_WORKER_CLASS = "RayTrainWorker"  # Ray Train V2's worker actor
TRAIN_CONTROLLER_CLASS = "TrainController"
TUNE_TRIAL_CLASS = "ImplicitFunc"  # Tune's actor class of a function trainable
EPOCHS = 6  # the node-loss phase
SERVE_MEMBER = "res_genre"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Nodes:
    """A ``Cluster`` with a 0-CPU head and named worker nodes, and this driver connected to it."""

    def __init__(self, workers: dict[str, dict[str, Any]]) -> None:
        import ray
        from ray.cluster_utils import Cluster

        t0 = time.monotonic()
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": HEAD_SYSTEM_CONFIG},
        )
        head = self.cluster.head_node
        assert head is not None
        self.by_name: dict[str, Any] = {"head": head}
        for name, args in workers.items():
            self.by_name[name] = self.cluster.add_node(**args)
        self.cluster.wait_for_nodes()
        self.names = {node.node_id: name for name, node in self.by_name.items()}
        ray.init(
            address=self.cluster.address,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        )
        self.started_s = time.monotonic() - t0
        log(f"cluster up in {self.started_s:.1f} s: {ray.cluster_resources()}")

    def name(self, node_id: str | None) -> str:
        return self.names.get(node_id or "", f"unknown:{node_id}")

    def kill(self, name: str) -> float:
        """Kill a worker node the hard way (SIGKILL, no draining); returns the seconds it took."""
        t0 = time.monotonic()
        self.cluster.remove_node(self.by_name[name], allow_graceful=False)
        return time.monotonic() - t0

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


def actors(nodes: Nodes) -> list[dict[str, Any]]:
    """Every actor the GCS knows (alive and dead), with the node it ran on.

    The public ``ray.util.state.list_actors`` needs the dashboard, which these clusters do not start (a
    2-core machine); the GCS actor table behind it has the same facts.
    """
    from ray._private import state as ray_state

    out = []
    for a in ray_state.actors().values():
        out.append(
            {
                "id": a.get("ActorID"),
                "class": a.get("ActorClassName"),
                "name": a.get("Name"),
                "node": nodes.name((a.get("Address") or {}).get("NodeID")),
                "state": a.get("State"),
                "start_ms": a.get("StartTime"),
                "end_ms": a.get("EndTime"),
                "pid": a.get("Pid"),
            }
        )
    return sorted(out, key=lambda a: a["start_ms"] or 0)


def trial_actors(all_actors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Tune trial actors: function trainables (``run_trial``) run as ``ImplicitFunc`` actors.

    The GCS records the class as ``ImplicitFunc`` or by its qualified name
    (``wrap_function.<locals>.ImplicitFunc``), depending on whether the class was exported before.
    """
    return [a for a in all_actors if str(a["class"]).split(".")[-1] == TUNE_TRIAL_CLASS]


def smoke_config(args: argparse.Namespace, sub: str, *extra: str) -> Any:
    """The smoke profile with this run's data, cache and scratch folders (``--work``/``sub``)."""
    from ml.config import load_config

    work = Path(args.work) / sub
    return load_config(
        ROOT / "config.yml",
        profile="smoke",
        overrides=[
            f"data.root={args.data}",
            f"data.cache_dir={args.cache}",
            f"runs_dir={work / 'runs'}",
            f"ray.storage_path={work / 'ray_results'}",
            f"mlflow.backend_store_uri=sqlite:///{work / 'mlflow.db'}",
            f"mlflow.artifacts_destination={work / 'mlflow-artifacts'}",
            "mlflow.enabled=false",  # the node facts come from Ray; MLflow is covered by tests/ray_jobs
            *extra,
        ],
    )


def fold_facts(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        key: {
            "status": f["status"],
            "epochs_run": f["epochs_run"],
            "history_epochs": [int(r["epoch"]) for r in f["history"]],
            "reported_epochs": f["reported_epochs"],
            "resumed_at_epoch": f["resumed_at_epoch"],
            "error": f["error"],
        }
        for key, f in summary["folds"].items()
    }


# ---- scenarios ------------------------------------------------------------------------------------------


def phase_spread(args: argparse.Namespace, nodes: Nodes) -> dict[str, Any]:
    """One member × 2 folds, a whole logical GPU per trial: the two trials must use the two GPU nodes."""
    from ray_jobs.train import train

    # Ray Train's storage as a URI (file:// here, s3:// on a cluster): the driver fetches the final
    # checkpoints through pyarrow's file system, as it would from S3.
    storage = Path(args.work) / "spread" / "ray_results"
    cfg = smoke_config(
        args,
        "spread",
        "train.gpus_per_trial=1",
        "train.cpus_per_trial=0.5",
        f"ray.storage_path={storage.as_uri()}",
    )
    t0 = time.monotonic()
    summary = train(cfg, members=["res_genre"])
    wall = time.monotonic() - t0
    acts = actors(nodes)
    return {
        "train_wall_s": wall,
        "trained": summary["trained"],
        "failed": summary["failed"],
        "use_gpu": summary["use_gpu"],
        "max_concurrent_trials": summary["max_concurrent_trials"],
        "folds": fold_facts(summary),
        "train_workers": [a for a in acts if a["class"] == TRAIN_WORKER_CLASS],
        "controllers": [a for a in acts if a["class"] == TRAIN_CONTROLLER_CLASS],
        "trial_actors": trial_actors(acts),
        "storage_path": str(cfg.ray.storage_path),
        "fold_runs_in_storage": sorted(p.name for p in storage.glob("res_genre-fold*") if p.is_dir()),
        "published": sorted(str(p.relative_to(cfg.runs_dir)) for p in cfg.runs_dir.glob("*/fold*/model.pt")),
    }


def phase_node_loss(args: argparse.Namespace, nodes: Nodes) -> dict[str, Any]:
    """One fold on CPU; the node of its Train worker is killed once a checkpoint is registered."""
    from ray_jobs.train import train

    known = {a["id"] for a in actors(nodes)}
    facts: dict[str, Any] = {"epochs": EPOCHS}
    # A worker needs a whole CPU and its trial 0.1 CPU of a 1-CPU node: they never share a node. Epochs
    # of ~1 s leave time to kill the worker's node mid-run.
    cfg = smoke_config(
        args,
        "node_loss",
        "train.gpus_per_trial=0",
        "train.cpus_per_trial=1",
        f"train.epochs={EPOCHS}",
        "train.steps_per_epoch=10",
        "train.early_stopping_patience=20",
    )
    storage = Path(str(cfg.ray.storage_path))
    done = threading.Event()

    def registered_epochs() -> list[int]:
        """Epochs whose checkpoint the Train controller has registered (what a restart resumes from).

        A checkpoint folder in the storage is not enough: the controller registers a report only when it
        polls the worker, and a worker that dies before that poll loses the report (seen here).
        """
        out: list[int] = []
        for snap in storage.glob("res_genre-fold0-*/checkpoint_manager_snapshot.json"):
            try:
                data = json.loads(snap.read_text())
            except (OSError, ValueError):
                continue
            for r in data.get("checkpoint_results", []):
                if "epoch" in r.get("metrics", {}):
                    out.append(int(r["metrics"]["epoch"]))
        return sorted(out)

    def killer() -> None:
        try:
            deadline = time.monotonic() + args.timeout
            while not done.is_set() and time.monotonic() < deadline:
                epochs = registered_epochs()
                if epochs and max(epochs) >= 1:
                    acts = actors(nodes)
                    alive = [a for a in acts if a["class"] == TRAIN_WORKER_CLASS and a["state"] == "ALIVE"]
                    if not alive:
                        time.sleep(0.1)
                        continue
                    victim = alive[0]["node"]
                    facts["before_kill"] = {
                        "registered_epochs": epochs,
                        "train_workers": alive,
                        "controllers": [a for a in acts if a["class"] == TRAIN_CONTROLLER_CLASS],
                        "trial_actors": [a for a in trial_actors(acts) if a["state"] == "ALIVE"],
                    }
                    facts["killed"] = victim
                    facts["killed_at_s"] = time.monotonic() - t0
                    log(f"killing node {victim} (it runs the Train worker); registered epochs {epochs}")
                    facts["kill_took_s"] = nodes.kill(victim)
                    return
                time.sleep(0.1)
            facts["killer"] = "no registered checkpoint in time"
        except Exception:
            facts["killer"] = traceback.format_exc()

    thread = threading.Thread(target=killer, name="node-killer", daemon=True)
    t0 = time.monotonic()
    thread.start()
    try:
        summary = train(cfg, members=["res_genre"], folds=[0])
    except Exception as e:  # TrainJobError carries the summary
        facts["train_error"] = f"{type(e).__name__}: {e}"
        summary = getattr(e, "summary", None)
    finally:
        done.set()
        thread.join(timeout=30)
    facts["train_wall_s"] = time.monotonic() - t0
    if summary is not None:
        facts.update(trained=summary["trained"], failed=summary["failed"], folds=fold_facts(summary))
    acts = [a for a in actors(nodes) if a["id"] not in known]  # this phase's actors only
    facts["train_workers"] = [a for a in acts if a["class"] == TRAIN_WORKER_CLASS]
    facts["controllers"] = [a for a in acts if a["class"] == TRAIN_CONTROLLER_CLASS]
    facts["trial_actors"] = trial_actors(acts)
    facts["actor_census"] = sorted({f"{a['class']}@{a['node']}:{a['state']}" for a in acts})
    return facts


def scenario_train(args: argparse.Namespace) -> dict[str, Any]:
    """Both training phases on one cluster: two 1-GPU nodes and a CPU node, 1 CPU each."""
    nodes = Nodes(
        {
            "gpu1": {"num_cpus": 1, "num_gpus": 1},
            "gpu2": {"num_cpus": 1, "num_gpus": 1},
            "cpu": {"num_cpus": 1},
        }
    )
    try:
        facts: dict[str, Any] = {"cluster_start_s": nodes.started_s}
        facts["spread"] = phase_spread(args, nodes)
        facts["node_loss"] = phase_node_loss(args, nodes)
        return facts
    finally:
        nodes.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wav(seconds: float = 1.0, sr: int = 22050) -> bytes:
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    wave = (0.2 * np.sin(2 * np.pi * 440.0 * t) + 0.1 * np.sin(2 * np.pi * 660.0 * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _replicas(nodes: Nodes) -> dict[str, list[dict[str, Any]]]:
    from serve.app import APP_NAME
    from tests.serve_state import serve_details

    app = serve_details().get("applications", {}).get(APP_NAME, {})
    return {
        dep: [
            {"id": r.get("replica_id"), "state": r.get("state"), "node": nodes.name(r.get("node_id"))}
            for r in d.get("replicas", [])
        ]
        for dep, d in app.get("deployments", {}).items()
    }


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.5)
    raise TimeoutError(f"{what} not reached in {timeout:g} s")


def scenario_serve(args: argparse.Namespace) -> dict[str, Any]:
    """One member at 2 replicas (a quarter GPU each) + 1 ingress replica on a CPU node and two GPU nodes."""
    import httpx
    from ray import serve

    from serve.app import AppArgs, deploy, member_deployment_name, serve_config

    nodes = Nodes(
        {
            "cpu": {"num_cpus": 2},
            "gpu1": {"num_cpus": 2, "num_gpus": 1},
            "gpu2": {"num_cpus": 2, "num_gpus": 1},
        }
    )
    facts: dict[str, Any] = {"cluster_start_s": nodes.started_s}
    stop = threading.Event()
    member = member_deployment_name(SERVE_MEMBER)
    try:
        cfg = smoke_config(
            args,
            "serve",
            f"serve.member_autoscaling={{{SERVE_MEMBER}: {{min_replicas: 2, max_replicas: 2}}}}",
        )
        port = _free_port()
        # All "nodes" share one IP here, so only the head runs an HTTP proxy (EveryNode would bind the
        # port once per node); on a real cluster serve/config.yaml's EveryNode is right.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        t0 = time.monotonic()
        app_args = AppArgs(
            config_data=cfg.snapshot(), allow_untrained=True, use_gpu=True, members=[SERVE_MEMBER]
        )
        deploy(serve_config(app_args), timeout_s=args.timeout / 2)
        facts["deploy_s"] = time.monotonic() - t0
        url = f"http://127.0.0.1:{port}"
        facts["before"] = before = _replicas(nodes)
        facts["healthz"] = httpx.get(f"{url}/healthz", timeout=60).json()
        wav = _wav()

        def post() -> tuple[int, str]:
            r = httpx.post(
                f"{url}/analyze_files/multi_model", files=[("files", ("tone.wav", wav))], timeout=60
            )
            return r.status_code, "" if r.status_code == 200 else r.text[:300]

        facts["first_request"] = post()
        # Lose a GPU node that hosts a member replica but not the (single) ingress replica: the scenario is
        # "a node with a model replica goes away", not "the only ingress goes away".
        ingress_nodes = {r["node"] for r in before.get("ingress", [])}
        candidates = [
            n for n in ("gpu1", "gpu2") if n not in ingress_nodes and n in {r["node"] for r in before[member]}
        ]
        if not candidates:
            raise RuntimeError(f"no GPU node hosts a member replica without the ingress: {before}")
        victim = candidates[0]
        facts["victim"] = victim
        calls: list[dict[str, Any]] = []

        def client() -> None:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    status, err = post()
                except Exception as e:
                    status, err = -1, f"{type(e).__name__}: {e}"
                calls.append({"t": t, "dt": time.monotonic() - t, "status": status, "error": err})

        thread = threading.Thread(target=client, name="client", daemon=True)
        thread.start()
        _wait(lambda: len(calls) >= 5, 60, "5 requests before the kill")
        t_kill = time.monotonic()
        facts["kill_took_s"] = nodes.kill(victim)
        log(f"killed {victim}")

        def recovered() -> bool:
            reps = _replicas(nodes).get(member, [])
            return sum(r["state"] == "RUNNING" and r["node"] != victim for r in reps) == 2

        facts["recovery_s"] = _wait(recovered, args.timeout / 2, "2 RUNNING member replicas again")
        t_back = time.monotonic()
        n = len(calls)
        _wait(lambda: len(calls) >= n + 10, 120, "10 requests after recovery")
        stop.set()
        thread.join(timeout=90)
        facts["after"] = _replicas(nodes)

        def phase(t: float) -> str:
            return "before" if t < t_kill else "during" if t < t_back else "after"

        facts["calls"] = [
            {
                "status": c["status"],
                "error": c["error"],
                "t_from_kill": round(c["t"] - t_kill, 2),
                "dt": round(c["dt"], 2),
                "phase": phase(c["t"]),
            }
            for c in calls
        ]
        return facts
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            serve.shutdown()
        nodes.shutdown()


SCENARIOS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "train": scenario_train,
    "serve": scenario_serve,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--work", required=True, help="scratch folder (runs, Ray storage)")
    p.add_argument("--data", required=True, help="smoke data set root (IRMAS layout)")
    p.add_argument("--cache", required=True, help="decoded-audio cache folder")
    p.add_argument("--out", required=True, help="where to write the JSON facts")
    p.add_argument("--timeout", type=float, default=240.0, help="inner time limit of waits (seconds)")
    args = p.parse_args()
    if not os.environ.get("RAY_TMPDIR"):
        p.error("set RAY_TMPDIR to a private, short folder (keeps this cluster out of /tmp/ray)")
    os.environ.pop("RAY_ADDRESS", None)
    t0 = time.monotonic()
    try:
        facts = SCENARIOS[args.scenario](args)
        facts["ok"] = True
    except Exception:
        facts = {"ok": False, "error": traceback.format_exc()}
    facts["total_s"] = time.monotonic() - t0
    Path(args.out).write_text(json.dumps(facts, indent=2, default=str))
    log(f"{args.scenario}: {'ok' if facts['ok'] else 'FAILED'} in {facts['total_s']:.1f} s")
    return 0 if facts["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
