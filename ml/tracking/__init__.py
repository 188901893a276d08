"""MLflow tracking and Model Registry for mpic (no Ray in here), in three parts behind one small object.

* :mod:`ml.tracking.store` — the namespace's MLflow store: connection, experiment (opened in the UI's
  model-training view), names and fingerprints, generic logging (params, metrics, tables, files);
* :mod:`ml.tracking.runs` — job runs and (member, fold) runs, with per-epoch metrics logged live;
* :mod:`ml.tracking.registry` — member and ensemble versions, the champion rule, downloads; the pyfunc
  models it registers are in :mod:`ml.tracking.pyfunc`.

:class:`Tracker` binds the three to one config (``Tracker(cfg).register_spec(spec, metrics)``). The
module-level functions (``tracking.start_run(cfg, …)``) remain the same API for existing callers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ml.config import Config
from ml.tracking.pyfunc import EnsembleModel, MemberModel, requirements
from ml.tracking.registry import (
    Registration,
    attach_evaluation,
    attach_test_evaluation,
    champion_version,
    download_member,
    find_member_version,
    load_member_pyfunc,
    load_registered_spec,
    model_versions,
    promote,
    register_member,
    register_spec,
)
from ml.tracking.runs import (
    FoldRun,
    end_run,
    fail_orphaned_runs,
    find_fold_run,
    log_epoch,
    log_fold,
    member_params,
    open_live_fold,
    run_history,
    start_run,
)
from ml.tracking.store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    KIND_FOLD,
    KIND_FUSE_JOB,
    KIND_MEMBER,
    KIND_SPEC,
    KIND_TRAIN_JOB,
    MODEL_ARTIFACT,
    PARENT_TAG,
    RUN_NAME_TAG,
    SPEC_ARTIFACT,
    SPEC_FILE,
    TAG_FOLD,
    TAG_FOLD_KEY,
    TAG_FOLD_RUNS,
    TAG_FOLD_SHAS,
    TAG_HOST,
    TAG_JOB_KEY,
    TAG_KIND,
    TAG_LIVE,
    TAG_MEMBER,
    TAG_MODEL_SHA,
    TAG_PID,
    TAG_SCORE,
    TAG_SCORE_METRIC,
    TAG_SPEC_SHA,
    TAG_SUPERSEDED,
    client,
    file_sha256,
    fingerprint,
    fold_shas_tag,
    log_artifact_json,
    log_config,
    log_file,
    log_history,
    log_metrics,
    log_params,
    log_table,
    member_fingerprint,
    registered_model_name,
    search_runs,
    server_command,
    setup,
    spec_model_name,
    tracking_uri,
    ui_url,
)

# Older private names some tests and tools still use.
_search = search_runs
_versions = model_versions


@dataclass(frozen=True)
class Tracker:
    """One namespace's tracking: its experiment, runs and registered models, bound to ``cfg``.

    The one object a job needs: ``Tracker(cfg).start_run(kind=…, name=…)``, ``.log_metrics(run, …)``,
    ``.register_spec(spec, metrics)``, ``.load_spec()``.
    """

    cfg: Config

    @property
    def experiment_id(self) -> str:
        """The namespace's experiment (created on first use)."""
        return setup(self.cfg)

    def start_run(self, **kwargs: Any) -> str:
        """:func:`ml.tracking.runs.start_run` in this namespace."""
        return start_run(self.cfg, **kwargs)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """:func:`ml.tracking.runs.end_run`."""
        end_run(self.cfg, run_id, status)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """:func:`ml.tracking.store.log_params`."""
        log_params(self.cfg, run_id, params)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        """:func:`ml.tracking.store.log_metrics`."""
        log_metrics(self.cfg, run_id, metrics, step)

    def log_table(self, run_id: str, rows: Any, artifact_file: str) -> None:
        """:func:`ml.tracking.store.log_table`."""
        log_table(self.cfg, run_id, rows, artifact_file)

    def log_json(self, run_id: str, obj: Any, artifact_file: str) -> None:
        """:func:`ml.tracking.store.log_artifact_json`."""
        log_artifact_json(self.cfg, run_id, obj, artifact_file)

    def open_live_fold(self, **kwargs: Any) -> str:
        """:func:`ml.tracking.runs.open_live_fold`."""
        return open_live_fold(self.cfg, **kwargs)

    def log_epoch(self, run_id: str, row: Mapping[str, Any]) -> None:
        """:func:`ml.tracking.runs.log_epoch`."""
        log_epoch(self.cfg, run_id, row)

    def log_fold(self, **kwargs: Any) -> tuple[str, bool]:
        """:func:`ml.tracking.runs.log_fold`."""
        return log_fold(self.cfg, **kwargs)

    def register_member(self, member: str, folds: Any, **kwargs: Any) -> Registration:
        """:func:`ml.tracking.registry.register_member`."""
        return register_member(self.cfg, member, folds, **kwargs)

    def register_spec(self, spec: Any, metrics: Mapping[str, float], **kwargs: Any) -> Registration:
        """:func:`ml.tracking.registry.register_spec`."""
        return register_spec(self.cfg, spec, metrics, **kwargs)

    def load_spec(self, version: str | int | None = None) -> Any:
        """:func:`ml.tracking.registry.load_registered_spec`."""
        return load_registered_spec(self.cfg, version)

    def ui_url(self, run_id: str | None = None) -> str:
        """:func:`ml.tracking.store.ui_url`."""
        return ui_url(self.cfg, run_id)

    def model_uri(self, alias: str | None = None) -> str:
        """``models:/<ensemble model>@<alias>`` for ``mlflow.pyfunc.load_model`` (default: the champion)."""
        return f"models:/{spec_model_name(self.cfg)}@{alias or self.cfg.mlflow.alias}"


__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "KIND_FOLD",
    "KIND_FUSE_JOB",
    "KIND_MEMBER",
    "KIND_SPEC",
    "KIND_TRAIN_JOB",
    "MODEL_ARTIFACT",
    "PARENT_TAG",
    "RUN_NAME_TAG",
    "SPEC_ARTIFACT",
    "SPEC_FILE",
    "TAG_FOLD",
    "TAG_FOLD_KEY",
    "TAG_FOLD_RUNS",
    "TAG_FOLD_SHAS",
    "TAG_HOST",
    "TAG_JOB_KEY",
    "TAG_KIND",
    "TAG_LIVE",
    "TAG_MEMBER",
    "TAG_MODEL_SHA",
    "TAG_PID",
    "TAG_SCORE",
    "TAG_SCORE_METRIC",
    "TAG_SPEC_SHA",
    "TAG_SUPERSEDED",
    "EnsembleModel",
    "FoldRun",
    "MemberModel",
    "Registration",
    "Tracker",
    "_search",
    "_versions",
    "attach_evaluation",
    "attach_test_evaluation",
    "champion_version",
    "client",
    "download_member",
    "end_run",
    "fail_orphaned_runs",
    "file_sha256",
    "find_fold_run",
    "find_member_version",
    "fingerprint",
    "fold_shas_tag",
    "load_member_pyfunc",
    "load_registered_spec",
    "log_artifact_json",
    "log_config",
    "log_epoch",
    "log_file",
    "log_fold",
    "log_history",
    "log_metrics",
    "log_params",
    "log_table",
    "member_fingerprint",
    "member_params",
    "model_versions",
    "open_live_fold",
    "promote",
    "register_member",
    "register_spec",
    "registered_model_name",
    "requirements",
    "run_history",
    "search_runs",
    "server_command",
    "setup",
    "spec_model_name",
    "start_run",
    "tracking_uri",
    "ui_url",
]
