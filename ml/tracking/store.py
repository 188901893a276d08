"""The MLflow store of a namespace: connection, experiment, names and fingerprints, generic logging.

The tracking URI is ``cfg.mlflow.tracking_uri`` (an MLflow server) or, when unset, the SQL backend store
itself (``cfg.mlflow.backend_store_uri``) — never the ``./mlruns`` file store. Artifacts then go to
``cfg.mlflow.artifacts_destination/<experiment>``, the same place `mlflow server --artifacts-destination`
serves, so the UI started by :func:`server_command` shows everything. The experiment is tagged
``mlflow.experimentKind = custom_model_development`` so the MLflow 3 UI opens it in its model-training
view (runs, metrics charts, models) instead of the GenAI view (traces).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
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
TAG_SCORE_METRIC = "mpic.score_metric"  # what TAG_SCORE measures; scores on other metrics are not compared
TAG_SPEC_SHA = "mpic.spec_sha256"
TAG_HOST = "mpic.host"
TAG_PID = "mpic.pid"
TAG_SUPERSEDED = "mpic.superseded"
TAG_LIVE = "mpic.live"  # a fold run opened when its first epoch arrived (metrics logged while it trains)
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"

KIND_TRAIN_JOB = "train_job"
KIND_FOLD = "fold"
KIND_MEMBER = "member"
KIND_SPEC = "ensemble_spec"
KIND_FUSE_JOB = "fuse_job"

MODEL_ARTIFACT = "model"  # the pyfunc model folder inside a member or ensemble-spec run
SPEC_ARTIFACT = "spec"
SPEC_FILE = "spec.json"

_MAX_BATCH_METRICS = 1000
_MAX_BATCH_PARAMS = 100
MAX_PARAM_LEN = 6000


# The experiment tag the MLflow 3 UI reads to choose its view (verified in mlflow 3.17's UI bundle:
# ``e.find(e => "mlflow.experimentKind" === e.key)``, enum value CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

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


_EXPERIMENT_TAGS = {"mpic.project": "mpic", EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}


def setup(cfg: Config) -> str:
    """Create (if needed) the experiment and return its id.

    With a SQL store the experiment's ``artifact_location`` is ``artifacts_destination/<experiment>``;
    with an MLflow server the server chooses (its ``--artifacts-destination`` proxy). The experiment
    carries :data:`EXPERIMENT_KIND_TAG` (set on older experiments too), so the UI opens its
    model-training view.
    """
    c = client(cfg)
    name = cfg.mlflow.experiment
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # created before the tag existed
            c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return str(exp.experiment_id)
    location = None if _is_remote(tracking_uri(cfg)) else _artifact_root(cfg)
    try:
        return str(c.create_experiment(name, artifact_location=location, tags=_EXPERIMENT_TAGS))
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


# ---- generic run helpers ---------------------------------------------------------------------------


def _now_ms() -> int:
    return int(time.time() * 1000)


def quote(value: str) -> str:
    """``value`` as a quoted string literal of MLflow's search syntax."""
    return "'" + str(value).replace("'", "\\'") + "'"


def search_runs(
    cfg: Config, tags: Mapping[str, str], *, status: str | None = None, experiment_id: str | None = None
) -> list[Run]:
    """Runs of the experiment whose tags equal ``tags`` (newest first)."""
    exp = experiment_id or setup(cfg)
    clauses = [f"tags.`{k}` = {quote(v)}" for k, v in tags.items()]
    if status:
        clauses.append(f"attributes.status = {quote(status)}")
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
        out[str(k)] = s[:MAX_PARAM_LEN]
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


def log_table(cfg: Config, run_id: str, rows: Sequence[Mapping[str, Any]], artifact_file: str) -> None:
    """Log rows (dicts with the same keys) as ONE MLflow table artifact (shown by the UI's table view).

    Args:
        cfg: Project configuration.
        run_id: The run the table belongs to.
        rows: The table's rows; nested values (e.g. a weights dict) are flattened by the caller.
        artifact_file: ``*.json`` path inside the run's artifacts (MLflow's table format).
    """
    import pandas as pd

    client(cfg).log_table(run_id, data=pd.DataFrame(list(rows)), artifact_file=artifact_file)


@contextlib.contextmanager
def quiet(logger: str) -> Iterator[None]:
    """Silence a logger's notices and UserWarnings for the duration (MLflow's chatty save paths)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        log.setLevel(level)
