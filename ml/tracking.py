"""MLflow tracking and Model Registry for mpic (no Ray in here).

Layout of what a training job leaves in MLflow (experiment ``cfg.mlflow.experiment``):

* one **parent run** per job (``mpic.kind=train_job``), identified by a ``mpic.job_key`` tag: the same
  job submitted again re-opens its parent run instead of creating another;
* one **nested run per (member, fold)** (``mpic.kind=fold``) with the member's parameters, per-epoch
  metrics (``step`` = epoch), the best epoch's metrics (``best/…``), the checkpoint (``checkpoint/model.pt``),
  the out-of-fold predictions (``oof/oof.npz``), the history and a config snapshot (``config/``). It is
  identified by ``mpic.member``, ``mpic.fold`` and ``mpic.fold_key`` (a fingerprint of everything that
  determines the trained weights, see :func:`member_fingerprint`) and by the checkpoint's sha256: logging the
  same fold again returns the existing run, a run left RUNNING by a killed job is marked FAILED;
* one **member run** per registered version (``mpic.kind=member``) holding the member's fold checkpoints as
  an MLflow pyfunc model (:class:`MemberModel`), registered as a version of ``{prefix}-{member}``.

Champion rule (:func:`promote`): the alias ``cfg.mlflow.alias`` moves to a new version when its score
(mean validation macro-F1 over folds for members, the fusion objective for ensemble specs) is not worse
than the score of the version the alias points at now (ties move the alias to the newer version); a
version without a score never takes the alias from one with a score. The first version always gets it.

The tracking URI is ``cfg.mlflow.tracking_uri`` (an MLflow server) or, when unset, the SQL backend store
itself (``cfg.mlflow.backend_store_uri``) — never the ``./mlruns`` file store. Artifacts then go to
``cfg.mlflow.artifacts_destination/<experiment>``, the same place `mlflow server --artifacts-destination`
serves, so the UI started by :func:`server_command` shows everything.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import yaml
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient

from ml.config import Config

# ---- tag names ---------------------------------------------------------------------------------------
TAG_KIND = "mpic.kind"
TAG_JOB_KEY = "mpic.job_key"
TAG_MEMBER = "mpic.member"
TAG_FOLD = "mpic.fold"
TAG_FOLD_KEY = "mpic.fold_key"
TAG_MODEL_SHA = "mpic.model_sha256"
TAG_FOLD_RUNS = "mpic.fold_runs"
TAG_FOLD_SHAS = "mpic.fold_sha256s"
TAG_SCORE = "mpic.score"
TAG_SPEC_SHA = "mpic.spec_sha256"
TAG_HOST = "mpic.host"
TAG_PID = "mpic.pid"
TAG_SUPERSEDED = "mpic.superseded"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"

KIND_TRAIN_JOB = "train_job"
KIND_FOLD = "fold"
KIND_MEMBER = "member"
KIND_SPEC = "ensemble_spec"

MODEL_ARTIFACT = "model"  # the pyfunc model folder inside a member run
SPEC_ARTIFACT = "spec"
SPEC_FILE = "spec.json"

_MAX_BATCH_METRICS = 1000
_MAX_BATCH_PARAMS = 100
_MAX_PARAM_LEN = 6000


# ---- connection --------------------------------------------------------------------------------------


def tracking_uri(cfg: Config) -> str:
    """The MLflow tracking URI: ``cfg.mlflow.tracking_uri`` or the SQL backend store URI directly."""
    return cfg.mlflow.tracking_uri or cfg.mlflow.backend_store_uri


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


@functools.lru_cache(maxsize=8)
def _client_for(uri: str) -> MlflowClient:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in job logs
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def client(cfg: Config) -> MlflowClient:
    """An :class:`MlflowClient` for the tracking store and model registry (cached per URI)."""
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return _client_for(uri)


def _artifact_root(cfg: Config) -> str:
    dest = cfg.mlflow.artifacts_destination
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in cfg.mlflow.experiment)
    if "://" in dest:
        return dest.rstrip("/") + "/" + slug
    path = Path(dest) / slug
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve().as_uri()


def setup(cfg: Config) -> str:
    """Create (if needed) the experiment and return its id.

    With a SQL store the experiment's ``artifact_location`` is ``artifacts_destination/<experiment>``;
    with an MLflow server the server chooses (its ``--artifacts-destination`` proxy).
    """
    c = client(cfg)
    name = cfg.mlflow.experiment
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return str(exp.experiment_id)
    location = None if _is_remote(tracking_uri(cfg)) else _artifact_root(cfg)
    try:
        return str(c.create_experiment(name, artifact_location=location, tags={"mpic.project": "mpic"}))
    except MlflowException:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def server_command(cfg: Config) -> list[str]:
    """The `mlflow server` command line serving this project's store and artifacts (`make mlflow`)."""
    exe = Path(sys.executable).with_name("mlflow")
    dest = cfg.mlflow.artifacts_destination
    if "://" not in dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
    store = cfg.mlflow.backend_store_uri
    if store.startswith("sqlite:///"):
        Path(store[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return [
        str(exe) if exe.exists() else "mlflow",
        "server",
        "--backend-store-uri",
        store,
        "--artifacts-destination",
        dest,
        "--host",
        cfg.mlflow.host,
        "--port",
        str(cfg.mlflow.port),
    ]


def ui_url(cfg: Config, run_id: str | None = None, experiment_id: str | None = None) -> str:
    """Where the MLflow UI shows the runs: the tracking server, or the one `make mlflow` starts.

    With ``run_id`` (or ``experiment_id``) the URL points at that run (experiment).
    """
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
    else:
        base = f"http://{cfg.mlflow.host}:{cfg.mlflow.port}"
    if run_id is not None and experiment_id is None:
        try:
            experiment_id = str(client(cfg).get_run(run_id).info.experiment_id)
        except MlflowException:
            return base
    if experiment_id is None:
        return base
    if run_id is None:
        return f"{base}/#/experiments/{experiment_id}"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


# ---- fingerprints ------------------------------------------------------------------------------------


def fingerprint(obj: Any, n: int = 16) -> str:
    """A short stable hash of a JSON-serialisable object."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


# Training settings that change how a run is scheduled, not what it learns.
_RESOURCE_FIELDS = {
    "cpus_per_trial",
    "gpus_per_trial",
    "torch_threads",
    "max_concurrent_trials",
    "max_failures",
    "folds",
}


def member_fingerprint(cfg: Config, member: str) -> str:
    """Fingerprint of everything that determines a member's trained fold models and OOF predictions.

    Labels, the member (architecture arguments, front end, augmentation), its training recipe (without
    scheduling settings such as CPUs/GPUs per trial), the folds (k, seed), the data root and the
    validation/OOF windowing. Two jobs with the same fingerprint train the same thing.
    """
    m = cfg.members[member]
    tc = cfg.member_train(member).model_dump(mode="json", exclude=_RESOURCE_FIELDS)
    return fingerprint(
        {
            "labels": cfg.label_codes,
            "member": m.model_dump(mode="json", exclude={"description"}),
            "model": cfg.models.get(m.arch, {}),
            "front_end": cfg.front_ends[m.front_end].model_dump(mode="json"),
            "train": tc,
            "folds": cfg.folds.model_dump(mode="json"),
            "data": str(cfg.data.root),
            "windows": {
                "window_s": cfg.inference.window_s,
                "hop_s": cfg.inference.hop_s,
                "threshold": cfg.inference.threshold,
            },
        }
    )


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def registered_model_name(cfg: Config, member: str) -> str:
    """The registered model of a member: ``{prefix}-{member}``.

    The prefix defaults to ``mpic-<namespace>`` (the profile), so profiles never share versions.
    """
    return f"{cfg.mlflow.registered_model_prefix}-{member}"


def spec_model_name(cfg: Config) -> str:
    """The registered model holding the selected ensemble's fused specs: ``{prefix}-ensemble-{ensemble}``."""
    return f"{cfg.mlflow.registered_model_prefix}-ensemble-{cfg.ensemble}"


def fold_shas_tag(shas: Mapping[int, str]) -> str:
    """The ``mpic.fold_sha256s`` tag value of a member version: ``fold:sha256`` pairs, sorted by fold."""
    return ",".join(f"{k}:{shas[k]}" for k in sorted(shas))


# ---- generic run helpers (also used by the fusion job) ----------------------------------------------


def _now_ms() -> int:
    return int(time.time() * 1000)


def _q(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


def _search(
    cfg: Config, tags: Mapping[str, str], *, status: str | None = None, experiment_id: str | None = None
) -> list[Run]:
    """Runs of the experiment whose tags equal ``tags`` (newest first)."""
    exp = experiment_id or setup(cfg)
    clauses = [f"tags.`{k}` = {_q(v)}" for k, v in tags.items()]
    if status:
        clauses.append(f"attributes.status = {_q(status)}")
    out: list[Run] = []
    token = None
    while True:
        page = client(cfg).search_runs(
            [exp],
            " and ".join(clauses),
            max_results=1000,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def _str_params(params: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in params.items():
        s = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
        out[str(k)] = s[:_MAX_PARAM_LEN]
    return out


def log_params(cfg: Config, run_id: str, params: Mapping[str, Any]) -> None:
    """Log parameters (values JSON-encoded unless already strings), in batches."""
    items = [Param(k, v) for k, v in _str_params(params).items()]
    for a in range(0, len(items), _MAX_BATCH_PARAMS):
        client(cfg).log_batch(run_id, params=items[a : a + _MAX_BATCH_PARAMS])


def log_metrics(cfg: Config, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log finite numeric metrics at ``step`` (0 when None)."""
    ts = _now_ms()
    items = [
        Metric(k, float(v), ts, int(step or 0))
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    ]
    for a in range(0, len(items), _MAX_BATCH_METRICS):
        client(cfg).log_batch(run_id, metrics=items[a : a + _MAX_BATCH_METRICS])


def log_history(
    cfg: Config, run_id: str, history: Sequence[Mapping[str, float]], step_key: str = "epoch"
) -> None:
    """Log per-epoch rows as metric histories (``step`` = the row's ``epoch``)."""
    ts = _now_ms()
    items: list[Metric] = []
    for i, row in enumerate(history):
        step = int(row.get(step_key, i))
        for k, v in row.items():
            if k == step_key or not isinstance(v, int | float) or not math.isfinite(float(v)):
                continue
            items.append(Metric(k, float(v), ts + i, step))
    for a in range(0, len(items), _MAX_BATCH_METRICS):
        client(cfg).log_batch(run_id, metrics=items[a : a + _MAX_BATCH_METRICS])


def log_artifact_json(cfg: Config, run_id: str, obj: Any, artifact_file: str) -> None:
    """Log a JSON-serialisable object as the artifact ``artifact_file`` (e.g. ``"fusion/trials.json"``)."""
    with tempfile.TemporaryDirectory(prefix="mpic-mlflow-") as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        parent = str(Path(artifact_file).parent)
        client(cfg).log_artifact(run_id, str(path), None if parent in ("", ".") else parent)


def log_file(cfg: Config, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Log a local file (or folder) as an artifact."""
    p = Path(path)
    if p.is_dir():
        client(cfg).log_artifacts(run_id, str(p), artifact_path)
    else:
        client(cfg).log_artifact(run_id, str(p), artifact_path)


def log_config(cfg: Config, run_id: str, artifact_dir: str = "config") -> None:
    """Log the config snapshot as ``config/config.yml`` and ``config/config.json``."""
    snap = cfg.snapshot()
    with tempfile.TemporaryDirectory(prefix="mpic-mlflow-") as tmp:
        (Path(tmp) / "config.yml").write_text(yaml.safe_dump(snap, sort_keys=False))
        (Path(tmp) / "config.json").write_text(json.dumps(snap, indent=2, sort_keys=True))
        client(cfg).log_artifacts(run_id, tmp, artifact_dir)


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
        existing = _search(cfg, ident, experiment_id=exp)
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
    for run in _search(cfg, {}, status="RUNNING"):
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
    for run in _search(cfg, _fold_ident(member, fold, fold_key), status="FINISHED"):
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
) -> tuple[str, bool]:
    """Log one trained (member, fold) as a nested run; returns ``(run_id, created)``.

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
    for run in _search(cfg, _fold_ident(member, fold, fold_key)):
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
    run_id = start_run(
        cfg,
        kind=KIND_FOLD,
        name=f"{member}-fold{fold}",
        job_key=job_key,
        parent_run_id=parent_run_id,
        tags=tags,
        reuse=False,
    )
    try:
        log_params(
            cfg,
            run_id,
            {**member_params(cfg, member), "fold": fold, "fold_key": fold_key, **(extra_params or {})},
        )
        log_history(cfg, run_id, history)
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


def run_history(cfg: Config, run_id: str, keys: Iterable[str]) -> list[dict[str, float]]:
    """Per-step rows of the given metric keys of a run (``epoch`` = step), sorted by step."""
    rows: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client(cfg).get_metric_history(run_id, key):
            rows.setdefault(m.step, {"epoch": float(m.step)})[key] = m.value
    return [rows[s] for s in sorted(rows)]


# ---- registry ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """A registered model version and whether it holds the champion alias."""

    name: str
    version: str
    run_id: str
    score: float | None
    champion: bool
    created: bool


class MemberModel(PythonModel):
    """pyfunc wrapper of one member's fold checkpoints (artifacts ``fold<k>/model.pt``).

    ``predict`` takes (W, samples) windows at the member's sample rate (a numpy array or DataFrame) and
    returns (W, C) sigmoid scores averaged over the fold models
    (:meth:`ml.inference.Predictor.score_windows`). Checkpoints load with
    ``torch.load(weights_only=True)``.
    """

    # Inputs are plain arrays converted in predict(); this opts out of MLflow 3's type-hint validation
    # (and its warning that predict() has no hints), as MLflow's own ChatModel does.
    _skip_type_hint_validation = True

    def __init__(self, member: str = "", hop_s: float = 0.5, aggregation: str = "mean") -> None:
        """Remember how the member is scored; the weights come from the artifacts."""
        self.member = member
        self.hop_s = hop_s
        self.aggregation = aggregation
        self.predictor: Any = None

    def load_context(self, context: Any) -> None:
        """Load every fold checkpoint listed in the model's artifacts."""
        from ml.inference import Predictor

        arts = sorted(context.artifacts.items())
        paths = [_fold_checkpoint(Path(p)) for k, p in arts if k.startswith("fold")]
        self.predictor = Predictor.from_checkpoints(
            paths, member=self.member or None, hop_s=self.hop_s, aggregation=self.aggregation
        )

    def predict(self, context, model_input, params=None):
        """Scores for (W, samples) windows → (W, C) float32 numpy array."""
        import numpy as np

        values = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
        return self.predictor.score_windows(np.asarray(values, dtype=np.float32))


def _fold_checkpoint(p: Path) -> Path:
    from ml.checkpoint import MODEL_FILE

    return p / MODEL_FILE if p.is_dir() else p


def _score_of(version: Any) -> float | None:
    try:
        v = float(version.tags.get(TAG_SCORE, "nan"))
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _versions(cfg: Config, name: str) -> list[Any]:
    try:
        return list(client(cfg).search_model_versions(f"name={_q(name)}"))
    except MlflowException:
        return []


def _ensure_registered_model(cfg: Config, name: str, description: str = "") -> None:
    c = client(cfg)
    try:
        c.get_registered_model(name)
    except MlflowException:
        try:
            c.create_registered_model(name, description=description or None)
        except MlflowException:  # created concurrently
            c.get_registered_model(name)


def champion_version(cfg: Config, name: str) -> Any | None:
    """The version the alias ``cfg.mlflow.alias`` points at, or None."""
    try:
        return client(cfg).get_model_version_by_alias(name, cfg.mlflow.alias)
    except MlflowException:
        return None


def promote(cfg: Config, name: str, version: str, score: float | None) -> bool:
    """Apply the champion rule (see the module doc) to ``version``; True if the alias points at it after."""
    current = champion_version(cfg, name)
    if current is not None and str(current.version) == str(version):
        return True
    if current is not None:
        cur = _score_of(current)
        if cur is not None and (score is None or score < cur):
            return False
    client(cfg).set_registered_model_alias(name, cfg.mlflow.alias, str(version))
    return True


def _register(
    cfg: Config, name: str, run_id: str, artifact: str, tags: Mapping[str, str], score: float | None
) -> str:
    _ensure_registered_model(cfg, name)
    c = client(cfg)
    mv = c.create_model_version(
        name,
        f"runs:/{run_id}/{artifact}",
        run_id=run_id,
        tags={**tags, TAG_SCORE: "nan" if score is None else repr(float(score))},
    )
    return str(mv.version)


def register_member(
    cfg: Config,
    member: str,
    folds: Mapping[int, tuple[str, str | Path, Mapping[str, float]]],
    *,
    parent_run_id: str | None = None,
    job_key: str | None = None,
) -> Registration:
    """Register a member's fold checkpoints as one version of ``{prefix}-{member}`` and apply the alias.

    Args:
        cfg: Project configuration.
        member: Member name.
        folds: fold → (fold run id, local ``model.pt`` path, best validation metrics) for every fold.
        parent_run_id: The job's run, under which the member run is nested.
        job_key: Tag for the member run.

    Returns:
        The registration. Registering the same fold runs again returns the existing version
        (``created`` False); the champion rule is applied either way.
    """
    name = registered_model_name(cfg, member)
    fold_runs = ",".join(f"{k}:{folds[k][0]}" for k in sorted(folds))
    fold_shas = fold_shas_tag({k: file_sha256(folds[k][1]) for k in folds})
    scores = [float(v[2]["val_macro_f1"]) for v in folds.values() if "val_macro_f1" in v[2]]
    score = sum(scores) / len(scores) if len(scores) == len(folds) and scores else None
    for mv in _versions(cfg, name):
        if mv.tags.get(TAG_FOLD_RUNS) == fold_runs:
            if TAG_FOLD_SHAS not in mv.tags:  # registered before the tag existed
                client(cfg).set_model_version_tag(name, str(mv.version), TAG_FOLD_SHAS, fold_shas)
            champ = promote(cfg, name, str(mv.version), _score_of(mv))
            return Registration(name, str(mv.version), str(mv.run_id), _score_of(mv), champ, False)
    for run in _search(cfg, {TAG_KIND: KIND_MEMBER, TAG_MEMBER: member, TAG_FOLD_RUNS: fold_runs}):
        if run.info.status == "RUNNING":  # half-written registration of a killed job
            end_run(cfg, run.info.run_id, "FAILED")
    tags = {TAG_MEMBER: member, TAG_FOLD_RUNS: fold_runs}
    run_id = start_run(
        cfg,
        kind=KIND_MEMBER,
        name=f"{member}-registry",
        job_key=job_key,
        parent_run_id=parent_run_id,
        tags=tags,
        reuse=False,
    )
    try:
        mean = {}
        for key in ("val_macro_f1", "val_micro_f1", "val_lrap", "val_loss"):
            vals = [float(v[2][key]) for v in folds.values() if key in v[2]]
            if len(vals) == len(folds):
                mean[f"mean_{key}"] = sum(vals) / len(vals)
        log_metrics(cfg, run_id, mean)
        log_params(cfg, run_id, {**member_params(cfg, member), "folds": sorted(folds)})
        inf = cfg.inference
        with tempfile.TemporaryDirectory(prefix="mpic-member-") as tmp:
            stage = Path(tmp) / "stage"
            artifacts = {}
            for k in sorted(folds):
                d = stage / f"fold{k}"
                d.mkdir(parents=True)
                shutil.copy2(folds[k][1], d / "model.pt")
                artifacts[f"fold{k}"] = str(d)
            model_dir = Path(tmp) / MODEL_ARTIFACT
            with _quiet("mlflow.pyfunc"):  # its CloudPickle notice; the class is imported by reference
                mlflow.pyfunc.save_model(
                    str(model_dir),
                    python_model=MemberModel(member, inf.hop_s, cfg.members[member].aggregation),
                    artifacts=artifacts,
                    pip_requirements=_requirements(),
                    metadata={"member": member, "folds": sorted(folds), "fold_runs": fold_runs},
                )
            client(cfg).log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
        version = _register(
            cfg,
            name,
            run_id,
            MODEL_ARTIFACT,
            {
                TAG_MEMBER: member,
                TAG_FOLD_RUNS: fold_runs,
                TAG_FOLD_SHAS: fold_shas,
                **({TAG_JOB_KEY: job_key} if job_key else {}),
                **{k: repr(v) for k, v in mean.items()},
            },
            score,
        )
        client(cfg).set_tag(run_id, "mpic.registered_version", version)
    except BaseException:
        end_run(cfg, run_id, "FAILED")
        raise
    end_run(cfg, run_id, "FINISHED")
    champ = promote(cfg, name, version, score)
    return Registration(name, version, run_id, score, champ, True)


def find_member_version(cfg: Config, member: str, shas: Mapping[int, str]) -> Any | None:
    """The registered version of ``member`` holding exactly these fold checkpoints (fold → sha256), or None.

    Used by the fusion job to name, in the ensemble spec, the member versions its out-of-fold
    predictions came from (which need not be the member's champion).
    """
    want = fold_shas_tag(shas)
    name = registered_model_name(cfg, member)
    for mv in sorted(_versions(cfg, name), key=lambda v: -int(v.version)):
        tag = mv.tags.get(TAG_FOLD_SHAS)
        if tag is None:  # older version: compare through its fold runs
            try:
                runs = dict(p.split(":", 1) for p in mv.tags.get(TAG_FOLD_RUNS, "").split(",") if p)
                tag = fold_shas_tag(
                    {int(k): client(cfg).get_run(r).data.tags.get(TAG_MODEL_SHA, "") for k, r in runs.items()}
                )
            except (MlflowException, ValueError):
                continue
        if tag == want:
            return mv
    return None


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        log.setLevel(level)


def _requirements() -> list[str]:
    """Pinned requirements of the pyfunc models (skips MLflow's slow requirement inference)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("mlflow", "torch", "torchaudio", "numpy", "nnAudio"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return out


def _resolve_version(cfg: Config, name: str, alias_or_version: str | int | None) -> Any:
    c = client(cfg)
    ref = cfg.mlflow.alias if alias_or_version is None else str(alias_or_version)
    try:
        if ref.isdigit():
            return c.get_model_version(name, ref)
        return c.get_model_version_by_alias(name, ref)
    except MlflowException as e:
        raise LookupError(f"registered model {name!r} has no version or alias {ref!r}") from e


def _download_version(cfg: Config, name: str, mv: Any, artifact: str) -> Path:
    """Download a version's artifact folder into the cache (reused when already complete)."""
    dest = cfg.data.cache_dir / "registry" / name / f"v{mv.version}"
    done = dest / ".complete"
    if done.is_file():
        try:  # the same name and version in another MLflow store is another model: compare the run
            if json.loads(done.read_text()).get("run_id") == mv.run_id:
                return dest / artifact
        except (OSError, json.JSONDecodeError):
            pass
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    client(cfg).download_artifacts(mv.run_id, artifact, str(tmp))
    stamp = {"name": name, "version": str(mv.version), "run_id": mv.run_id}
    (tmp / ".complete").write_text(json.dumps(stamp))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest / artifact


def download_member(
    cfg: Config, member: str, alias_or_version: str | int | None = None, *, name: str | None = None
) -> list[Path]:
    """Local fold checkpoint paths of a registered member version (alias, e.g. ``champion``, or number).

    Args:
        cfg: Project configuration (registry location, cache folder).
        member: Member name.
        alias_or_version: An alias or a version number; default: ``cfg.mlflow.alias``.
        name: The registered model (default: :func:`registered_model_name` of ``member``).

    Returns:
        ``model.pt`` paths sorted by fold, under ``cfg.data.cache_dir/registry/``.

    Raises:
        LookupError: If the member, version or alias is not registered.
    """
    name = name or registered_model_name(cfg, member)
    mv = _resolve_version(cfg, name, alias_or_version)
    root = _download_version(cfg, name, mv, MODEL_ARTIFACT)
    paths = list((root / "artifacts").glob("fold*/model.pt"))
    if not paths:
        raise LookupError(f"{name} version {mv.version} holds no fold checkpoints")
    return sorted(paths, key=lambda p: int(p.parent.name[len("fold") :]))


def load_member_pyfunc(cfg: Config, member: str, alias_or_version: str | int | None = None) -> Any:
    """The registered member as an MLflow pyfunc model (``predict(windows) -> scores``)."""
    name = registered_model_name(cfg, member)
    mv = _resolve_version(cfg, name, alias_or_version)
    return mlflow.pyfunc.load_model(str(_download_version(cfg, name, mv, MODEL_ARTIFACT)))


# ---- ensemble specs (fusion job) ---------------------------------------------------------------------


def register_spec(
    cfg: Config,
    spec: Any,
    metrics: Mapping[str, float],
    *,
    run_id: str | None = None,
    parent_run_id: str | None = None,
) -> Registration:
    """Register a fused ensemble spec as a version of ``{prefix}-ensemble-{ensemble}``.

    Args:
        cfg: Project configuration (registry, namespace).
        spec: An :class:`~ml.ensemble.EnsembleSpec` or the path of its JSON file.
        metrics: Logged on the run; ``metrics[cfg.fusion.objective]`` (else ``metrics["value"]``, else
            the spec's value) is the score the champion rule compares.
        run_id: Log the spec (``spec/spec.json``) on this run; default: a new ``ensemble_spec`` run nested
            under ``parent_run_id``.
        parent_run_id: See ``run_id``.

    Returns:
        The registration. The same spec content registered twice returns the existing version.
    """
    from ml.ensemble import EnsembleSpec

    if not isinstance(spec, EnsembleSpec):
        spec = EnsembleSpec.from_json(Path(spec).read_text())  # validates
    text = spec.to_json()
    body = json.loads(text)
    for volatile in ("created", "version", "registered_model"):
        body.pop(volatile, None)
    sha = fingerprint(body, 64)
    name = spec_model_name(cfg)
    raw = metrics.get(cfg.fusion.objective, metrics.get("value", spec.value))
    score = float(raw) if raw is not None and math.isfinite(float(raw)) else None
    for mv in _versions(cfg, name):
        if mv.tags.get(TAG_SPEC_SHA) == sha:
            champ = promote(cfg, name, str(mv.version), _score_of(mv))
            return Registration(name, str(mv.version), str(mv.run_id), _score_of(mv), champ, False)
    own = run_id is None
    rid = run_id or start_run(
        cfg,
        kind=KIND_SPEC,
        name=f"ensemble-{cfg.ensemble}",
        parent_run_id=parent_run_id,
        tags={TAG_SPEC_SHA: sha},
        reuse=False,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="mpic-spec-") as tmp:
            (Path(tmp) / SPEC_FILE).write_text(text)
            client(cfg).log_artifact(rid, str(Path(tmp) / SPEC_FILE), SPEC_ARTIFACT)
        log_metrics(cfg, rid, {k: float(v) for k, v in metrics.items()})
        members = {
            m: f"{ref.registered_model}:{ref.version}"
            for m, ref in spec.members.items()
            if ref.registered_model and ref.version
        }
        tags = {TAG_SPEC_SHA: sha, "mpic.ensemble": cfg.ensemble, "mpic.namespace": cfg.namespace}
        if members:
            tags["mpic.members"] = json.dumps(members, sort_keys=True)[:_MAX_PARAM_LEN]
        version = _register(cfg, name, rid, SPEC_ARTIFACT, tags, score)
    except BaseException:
        if own:
            end_run(cfg, rid, "FAILED")
        raise
    if own:
        end_run(cfg, rid, "FINISHED")
    champ = promote(cfg, name, version, score)
    return Registration(name, version, rid, score, champ, True)


def load_registered_spec(cfg: Config, version: str | int | None = None) -> Any:
    """The registered ensemble spec: ``version`` (a number or an alias), else the alias ``cfg.mlflow.alias``.

    The returned spec's ``version`` is the registry version and ``registered_model`` the registered name
    (what every answer produced with it names).

    Returns:
        An :class:`~ml.ensemble.EnsembleSpec` checked against ``cfg``'s labels, or None when no version
        holds the default alias (nothing registered yet) and no version was asked for.

    Raises:
        LookupError: If an explicit version or alias does not exist.
    """
    from ml.ensemble import EnsembleSpec

    name = spec_model_name(cfg)
    if version is not None:
        mv = _resolve_version(cfg, name, version)
    else:
        mv = champion_version(cfg, name)
        if mv is None:
            return None
    folder = _download_version(cfg, name, mv, SPEC_ARTIFACT)
    spec = EnsembleSpec.from_json((folder / SPEC_FILE).read_text())
    spec.check_against(cfg)
    spec.version = int(mv.version)
    spec.registered_model = name
    return spec
