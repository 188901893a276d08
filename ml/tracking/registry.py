"""The Model Registry of a namespace: member and ensemble versions, the champion alias, downloads.

* one **member run** per registered member version (``mpic.kind=member``) holding the member's fold
  checkpoints as an MLflow pyfunc model (:class:`ml.tracking.pyfunc.MemberModel`), registered as a
  version of ``{prefix}-{member}``;
* one **ensemble-spec run** per registered ensemble version (``mpic.kind=ensemble_spec``): the spec
  (``spec/spec.json``, what :func:`load_registered_spec` reads) and, when every weighted member has fold
  checkpoints, the whole ensemble as a self-contained pyfunc model (``model/``,
  :class:`ml.tracking.pyfunc.EnsembleModel`: weights, spec, thresholds, signature, input example and the
  ``ml`` code) that the version points at, so ``mlflow.pyfunc.load_model("models:/<name>@champion")``
  works outside this repository. Evaluation metrics and a per-class F1 plot are attached to that run
  (:func:`attach_evaluation`).

Champion rule (:func:`promote`): the alias ``cfg.mlflow.alias`` moves to a new version when its score
is not worse than the score of the version the alias points at now (ties move the alias to the newer
version); a version without a score never takes the alias from one with a score. The first version always
gets it. The score of a member is its mean validation LRAP over folds (:data:`MEMBER_SCORE`: it needs no
decision threshold, while the per-epoch validation F1s use the one fixed threshold and the per-class
thresholds are only fitted by the fusion step — on folds that hold out an unheard library those F1s sit
near 0); the score of an ensemble spec is the fusion objective on the out-of-fold predictions. Every
version records what its score measures (``TAG_SCORE_METRIC``); scores on different metrics are not
compared: the newer version takes the alias, with a warning (this happens once, when a namespace registered
under an older rule or another fusion objective gets its first version under the current one).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
from mlflow.exceptions import MlflowException

from ml.config import Config
from ml.tracking.pyfunc import save_ensemble_model, save_member_model
from ml.tracking.runs import end_run, member_params, start_run
from ml.tracking.store import (
    KIND_MEMBER,
    KIND_SPEC,
    MAX_PARAM_LEN,
    MODEL_ARTIFACT,
    SPEC_ARTIFACT,
    SPEC_FILE,
    TAG_FOLD_RUNS,
    TAG_FOLD_SHAS,
    TAG_JOB_KEY,
    TAG_KIND,
    TAG_MEMBER,
    TAG_MODEL_SHA,
    TAG_SCORE,
    TAG_SCORE_METRIC,
    TAG_SPEC_SHA,
    client,
    file_sha256,
    fingerprint,
    fold_shas_tag,
    log_artifact_json,
    log_metrics,
    log_params,
    quote,
    registered_model_name,
    search_runs,
    spec_model_name,
)

log = logging.getLogger(__name__)

MEMBER_SCORE = "val_lrap"
"""The per-fold validation metric whose mean over folds scores a member version (higher is better)."""


@dataclass(frozen=True)
class Registration:
    """A registered model version and whether it holds the champion alias."""

    name: str
    version: str
    run_id: str
    score: float | None
    champion: bool
    created: bool


def _metric_of(version: Any) -> str | None:
    """What the version's score measures; None for versions registered before it was recorded."""
    metric = version.tags.get(TAG_SCORE_METRIC)
    return str(metric) if metric else None


def _score_of(version: Any) -> float | None:
    try:
        v = float(version.tags.get(TAG_SCORE, "nan"))
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def model_versions(cfg: Config, name: str) -> list[Any]:
    """Every version of the registered model ``name`` (empty when it does not exist)."""
    try:
        return list(client(cfg).search_model_versions(f"name={quote(name)}"))
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


def promote(cfg: Config, name: str, version: str, score: float | None, metric: str | None = None) -> bool:
    """Apply the champion rule (see the module doc) to ``version``; True if the alias points at it after.

    Args:
        cfg: Project configuration (registry, alias).
        name: Registered model name.
        version: The candidate version.
        score: Its score (higher is better), or None.
        metric: What ``score`` measures (``TAG_SCORE_METRIC``); compared with the current champion's.
    """
    current = champion_version(cfg, name)
    if current is not None and not _takes_alias_from(cfg, name, version, score, metric, current):
        return False
    client(cfg).set_registered_model_alias(name, cfg.mlflow.alias, str(version))
    return True


def _takes_alias_from(
    cfg: Config, name: str, version: str, score: float | None, metric: str | None, current: Any
) -> bool:
    """Whether ``version`` (scored ``score`` on ``metric``) takes the alias from the ``current`` champion."""
    if str(current.version) == str(version):
        return True
    cur = _score_of(current)
    if cur is None:
        return True
    if score is None:
        return False
    if _metric_of(current) == metric:
        return score >= cur
    # not comparable: only a newer version moves the alias (``promote`` also runs when an older version
    # is registered again, which must not take the alias back from a newer champion)
    if int(version) < int(current.version):
        return False
    log.warning(
        "%s: version %s scores %s, champion version %s scores %s; not comparable, so the newer version takes "
        "the alias %r",
        name,
        version,
        metric or "an unrecorded metric",
        current.version,
        _metric_of(current) or "an unrecorded metric",
        cfg.mlflow.alias,
    )
    return True


def _register(
    cfg: Config,
    name: str,
    run_id: str,
    artifact: str,
    tags: Mapping[str, str],
    score: float | None,
    metric: str,
) -> str:
    _ensure_registered_model(cfg, name)
    c = client(cfg)
    mv = c.create_model_version(
        name,
        f"runs:/{run_id}/{artifact}",
        run_id=run_id,
        tags={**tags, TAG_SCORE: "nan" if score is None else repr(float(score)), TAG_SCORE_METRIC: metric},
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
    scores = [float(v[2][MEMBER_SCORE]) for v in folds.values() if MEMBER_SCORE in v[2]]
    score = sum(scores) / len(scores) if len(scores) == len(folds) and scores else None
    metric = f"mean_{MEMBER_SCORE}"
    for mv in model_versions(cfg, name):
        if mv.tags.get(TAG_FOLD_RUNS) == fold_runs:
            if TAG_FOLD_SHAS not in mv.tags:  # registered before the tag existed
                client(cfg).set_model_version_tag(name, str(mv.version), TAG_FOLD_SHAS, fold_shas)
            champ = promote(cfg, name, str(mv.version), _score_of(mv), _metric_of(mv))
            return Registration(name, str(mv.version), str(mv.run_id), _score_of(mv), champ, False)
    for run in search_runs(cfg, {TAG_KIND: KIND_MEMBER, TAG_MEMBER: member, TAG_FOLD_RUNS: fold_runs}):
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
            model_dir = Path(tmp) / MODEL_ARTIFACT
            save_member_model(
                model_dir,
                member,
                {k: folds[k][1] for k in folds},
                hop_s=inf.hop_s,
                aggregation=cfg.members[member].aggregation,
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
            metric,
        )
        client(cfg).set_tag(run_id, "mpic.registered_version", version)
    except BaseException:
        end_run(cfg, run_id, "FAILED")
        raise
    end_run(cfg, run_id, "FINISHED")
    champ = promote(cfg, name, version, score, metric)
    return Registration(name, version, run_id, score, champ, True)


def find_member_version(cfg: Config, member: str, shas: Mapping[int, str]) -> Any | None:
    """The registered version of ``member`` holding exactly these fold checkpoints (fold → sha256), or None.

    Used by the fusion job to name, in the ensemble spec, the member versions its out-of-fold
    predictions came from (which need not be the member's champion).
    """
    want = fold_shas_tag(shas)
    name = registered_model_name(cfg, member)
    for mv in sorted(model_versions(cfg, name), key=lambda v: -int(v.version)):
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
    evaluation: Mapping[str, Any] | None = None,
) -> Registration:
    """Register a fused ensemble spec as a version of ``{prefix}-ensemble-{ensemble}``.

    The version holds the self-contained :class:`~ml.tracking.pyfunc.EnsembleModel` (``model/``) when
    every weighted member has fold checkpoints, else only the spec (``spec/``, always logged).

    Args:
        cfg: Project configuration (registry, namespace).
        spec: An :class:`~ml.ensemble.EnsembleSpec` or the path of its JSON file.
        metrics: Logged on the run; ``metrics[cfg.fusion.objective]`` (else ``metrics["value"]``, else
            the spec's value) is the score the champion rule compares.
        run_id: Log the spec (``spec/spec.json``) on this run; default: a new ``ensemble_spec`` run nested
            under ``parent_run_id``.
        parent_run_id: See ``run_id``.
        evaluation: An :func:`ml.metrics.evaluate` report of the spec (e.g. on the out-of-fold
            predictions), attached to the run and the version (:func:`attach_evaluation`).

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
    metric = f"fusion_{cfg.fusion.objective}"
    for mv in model_versions(cfg, name):
        if mv.tags.get(TAG_SPEC_SHA) == sha:
            champ = promote(cfg, name, str(mv.version), _score_of(mv), _metric_of(mv))
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
            tags["mpic.members"] = json.dumps(members, sort_keys=True)[:MAX_PARAM_LEN]
        if evaluation is not None:
            tags.update(attach_evaluation(cfg, rid, evaluation))
        artifact = MODEL_ARTIFACT if _log_ensemble_model(cfg, rid, spec, sha) else SPEC_ARTIFACT
        version = _register(cfg, name, rid, artifact, tags, score, metric)
    except BaseException:
        if own:
            end_run(cfg, rid, "FAILED")
        raise
    if own:
        end_run(cfg, rid, "FINISHED")
    champ = promote(cfg, name, version, score, metric)
    return Registration(name, version, rid, score, champ, True)


def _log_ensemble_model(cfg: Config, run_id: str, spec: Any, sha: str) -> bool:
    """Log ``spec`` as a self-contained :class:`EnsembleModel` (``model/``); False when it cannot be built.

    It cannot when a weighted member has no fold checkpoints (a spec fitted on out-of-fold predictions
    alone): then the version holds the spec only, and only this repository's loaders can serve it.
    """
    from ml.ensemble import SpecNotFoundError, member_checkpoints

    weighted = [m for m, w in spec.weights.items() if w > 0]
    try:
        ckpts = {m: member_checkpoints(cfg, spec, m) for m in weighted}
    except SpecNotFoundError as e:
        log.warning("ensemble %s: no self-contained model (%s)", spec.ensemble, e)
        return False
    missing = [m for m, c in ckpts.items() if not c]
    if missing:
        log.warning("ensemble %s: members %s have no checkpoints: spec only", spec.ensemble, missing)
        return False
    with tempfile.TemporaryDirectory(prefix="mpic-ensemble-") as tmp:
        model_dir = Path(tmp) / MODEL_ARTIFACT
        save_ensemble_model(
            model_dir,
            cfg.snapshot(),
            spec.to_json(),
            ckpts,
            cfg.label_codes,
            metadata={"ensemble": spec.ensemble, "namespace": cfg.namespace, "spec_sha256": sha},
            extra_files=ensemble_extras(cfg, weighted),
        )
        client(cfg).log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
    return True


def ensemble_extras(cfg: Config, members: Sequence[str]) -> dict[str, Path]:
    """Files an ensemble model must carry besides checkpoints: the musicnn wheel when a member needs it.

    Raises:
        ml.pretrained.musicnn.MusicnnWeightsError: A musicnn member and no wheel (the message says what to
            run).
    """
    from ml.pretrained.musicnn import resolve_wheel
    from ml.tracking.pyfunc import WHEELS_DIR

    if not any(cfg.members[m].arch == "musicnn" for m in members):
        return {}
    wheel = resolve_wheel(cfg.models.get("musicnn", {}).get("wheel"))
    return {f"{WHEELS_DIR}/{wheel.name}": wheel}


def attach_evaluation(
    cfg: Config, run_id: str, report: Mapping[str, Any], prefix: str = "eval"
) -> dict[str, str]:
    """Attach an evaluation report to a registered version's run: metrics, a per-class F1 plot, the JSON.

    Args:
        cfg: Project configuration.
        run_id: The run of the registered version.
        report: An :func:`ml.metrics.evaluate` report (``macro_f1``, …, ``per_class: {code: {f1, …}}``).
        prefix: Metric-name and artifact-folder prefix (``eval/macro_f1``, ``eval/f1/<code>``).

    Returns:
        Model-version tags with the headline figures (``eval.macro_f1`` …), for :func:`_register`.
    """
    headline = {
        k: float(v) for k, v in report.items() if isinstance(v, int | float) and math.isfinite(float(v))
    }
    per_class = {str(c): float(v["f1"]) for c, v in dict(report.get("per_class", {})).items()}
    log_metrics(
        cfg,
        run_id,
        {
            **{f"{prefix}/{k}": v for k, v in headline.items()},
            **{f"{prefix}/f1/{c}": v for c, v in per_class.items()},
        },
    )
    log_artifact_json(cfg, run_id, dict(report), f"{prefix}/report.json")
    if per_class:
        _log_f1_plot(cfg, run_id, per_class, f"{prefix}/per_class_f1.png", headline.get("macro_f1"))
    return {f"{prefix}.{k}": f"{v:.6g}" for k, v in headline.items()}


def attach_test_evaluation(
    cfg: Config, name: str, version: str | int, report: Mapping[str, Any], prefix: str = "test"
) -> str:
    """Attach `mpic evaluate`'s ensemble report to a registered version: its run and ``test.*`` tags.

    Args:
        cfg: Project configuration.
        name: Registered ensemble model name.
        version: Its version number.
        report: The fused ensemble's :func:`ml.metrics.evaluate` report on the test excerpts.
        prefix: Metric, artifact-folder and tag prefix.

    Returns:
        ``"<name> version <version>"``.
    """
    mv = _resolve_version(cfg, name, str(version))
    tags = attach_evaluation(cfg, mv.run_id, report, prefix=prefix)
    c = client(cfg)
    for k, v in tags.items():
        c.set_model_version_tag(name, str(mv.version), k, v)
    return f"{name} version {mv.version}"


def _log_f1_plot(
    cfg: Config, run_id: str, per_class: Mapping[str, float], artifact_file: str, macro: float | None
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    import matplotlib.pyplot as plt

    codes = list(per_class)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(codes) + 1.5), 3.2))
    ax.bar(codes, [per_class[c] for c in codes], color="#4477aa")
    if macro is not None:
        ax.axhline(macro, color="#cc3311", linestyle="--", linewidth=1, label=f"macro-F1 {macro:.3f}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title("per-class F1 at the fused thresholds")
    fig.tight_layout()
    try:
        client(cfg).log_figure(run_id, fig, artifact_file)
    finally:
        plt.close(fig)


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
