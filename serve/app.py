"""Build and run the mpic Ray Serve application.

* ``serve run serve.app:build_app profile=demo allow_untrained=true`` — the builder with typed arguments;
* ``serve run serve/config.yaml`` / ``serve deploy serve/config.yaml`` — the same through a Serve config;
* :func:`run_local` — what ``mpic serve`` calls: Serve on the local Ray, HTTP on ``serve.host:port``.

The application is one ``MemberModel`` deployment per ensemble member with a positive weight
(``member_<name>``, autoscaling, GPU only when the cluster has one) and the FastAPI ``ingress``. It is
deployed declaratively (:func:`deploy`), so changing only the ingress ``user_config`` (fusion weights,
thresholds, aggregation or a new spec) is a lightweight update: no replica restarts.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import ray
import torch
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment

from ml.config import AutoscalingConfig, Config, ConfigError, apply_override, load_config
from ml.ensemble import EnsembleSpec, load_spec, member_checkpoints
from ml.service import apply_fusion_update
from serve.ingress import Ingress
from serve.member import MemberModel

APP_NAME = "mpic"
IMPORT_PATH = "serve.app:build_app"
INGRESS_NAME = "ingress"
SERVE_CONFIG = Path(__file__).resolve().parent / "config.yaml"
# Deployment states in which an update has been applied (autoscaling may still be moving replicas).
_SETTLED = frozenset({"HEALTHY", "UPSCALING", "DOWNSCALING"})


def member_deployment_name(member: str) -> str:
    """The Serve deployment name of a member."""
    return f"member_{member}"


class AppArgs(BaseModel):
    """Arguments of :func:`build_app`: ``key=value`` on the ``serve run`` command line, ``args:`` in a config.

    The configuration comes from ``config_data`` (a :meth:`Config.snapshot`, as ``run_local`` and the tests
    pass it) or else from ``config`` / ``profile`` / ``overrides`` exactly as on the ``mpic`` command line.
    ``members`` deploys a subset of the ensemble; the ensemble is the registered one the alias
    ``mlflow.alias`` (``champion``) points at, or ``version`` (a number or alias), or ``spec_path`` (a
    spec file) — all through :func:`ml.ensemble.load_spec`;
    ``fusion`` is the initial ingress ``user_config``, ``use_gpu`` forces (or forbids) GPU requests for the
    member replicas (default: when the cluster has GPUs).
    """

    model_config = ConfigDict(extra="forbid")

    config: str | None = None
    profile: str | None = None
    overrides: list[str] = []
    config_data: dict[str, Any] | None = None
    allow_untrained: bool = False
    members: list[str] | None = None
    version: str | None = None
    spec_path: str | None = None
    fusion: dict[str, Any] | None = None
    use_gpu: bool | None = None

    @field_validator("overrides", mode="before")
    @classmethod
    def _split_overrides(cls, v: Any) -> Any:
        # `serve run ... overrides=train.epochs=3` gives one string; a YAML list is accepted too.
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return yaml.safe_load(text)
            return [p for p in (s.strip() for s in text.split(";")) if p]
        return v

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    @field_validator("members", mode="before")
    @classmethod
    def _split_members(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p for p in (s.strip() for s in v.split(",")) if p]
        return v

    @field_validator("fusion", mode="before")
    @classmethod
    def _parse_fusion(cls, v: Any) -> Any:
        return yaml.safe_load(v) if isinstance(v, str) else v

    def load_config(self) -> Config:
        """The validated configuration these arguments describe."""
        if self.config_data is None:
            return load_config(self.config, self.profile, self.overrides)
        data = copy.deepcopy(self.config_data)
        for ov in self.overrides:
            apply_override(data, ov)
        try:
            return Config.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"invalid config_data: {e}") from None

    def load_spec(self, cfg: Config) -> EnsembleSpec:
        """``spec_path`` if given, else the registered ``version`` (default: the alias, ``champion``).

        With ``allow_untrained`` and nothing registered: equal weights over untrained members.
        """
        ref: str | Path | None = Path(self.spec_path) if self.spec_path else self.version
        return load_spec(cfg, ref, allow_untrained=self.allow_untrained)


def _autoscaling(a: AutoscalingConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
    }
    if a.initial_replicas is not None:
        out["initial_replicas"] = a.initial_replicas
    return out


def cluster_has_gpu() -> bool:
    """Whether the Ray cluster has any (logical) GPU.

    Connected to Ray: from its resources. Not connected yet (``serve run serve.app:build_app`` builds the
    app before it starts a local Ray on this machine): whether this machine has a CUDA device.
    """
    if ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0)) > 0
    return torch.cuda.device_count() > 0


def node_cpus() -> int:
    """CPU cores of the largest node of the connected Ray cluster (of this machine when not connected)."""
    if ray.is_initialized():
        try:
            per_node = [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
            if per_node:
                return max(1, int(max(per_node)))
        except Exception:  # the cluster view is a nicety here; fall back to this machine
            pass
    return max(1, os.cpu_count() or 1)


def ingress_autoscaling(cfg: Config) -> AutoscalingConfig:
    """``serve.ingress_autoscaling``, or by default ``serve.autoscaling`` up to one replica per node core.

    The ingress decodes every upload (the one per-song CPU cost that cannot move to the members' devices),
    so on a many-core GPU node it must be able to spread over the cores while the GPU members stay few.
    """
    s = cfg.serve
    if s.ingress_autoscaling is not None:
        return s.ingress_autoscaling
    top = max(s.autoscaling.max_replicas, node_cpus())
    return s.autoscaling.model_copy(update={"max_replicas": top})


def member_options(cfg: Config, member: str, *, has_gpu: bool) -> dict[str, Any]:
    """``MemberModel.options(...)`` of one member, all from ``cfg.serve``."""
    s = cfg.serve
    return {
        "name": member_deployment_name(member),
        "autoscaling_config": _autoscaling(s.member_autoscaling.get(member, s.autoscaling)),
        "max_ongoing_requests": s.max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
        "backpressure_config": backpressure_config(cfg),
        "ray_actor_options": {
            "num_cpus": s.num_cpus,
            "num_gpus": s.num_gpus if has_gpu else 0,
            **replica_runtime_env(cfg),
        },
    }


def replica_runtime_env(cfg: Config) -> dict[str, Any]:
    """The ``ray_actor_options`` entry that sets ``serve.replica_env`` in each replica (none if empty)."""
    env = dict(cfg.serve.replica_env)
    return {"runtime_env": {"env_vars": env}} if env else {}


def backpressure_config(cfg: Config) -> dict[str, Any]:
    """What Serve answers when a caller's queue (``max_queued_requests``) is full: 503 + ``Retry-After``."""
    return {"status_code": 503, "retry_after_s": cfg.serve.retry_after_s}


def served_members(spec: EnsembleSpec, subset: Sequence[str] | None = None) -> list[str]:
    """Members to deploy: the spec's members with a positive weight, or the explicit ``subset``."""
    if subset:
        unknown = [m for m in subset if m not in spec.members]
        if unknown:
            raise ValueError(
                f"members {unknown} are not in ensemble {spec.ensemble!r}; valid: {list(spec.members)}"
            )
        return list(dict.fromkeys(subset))
    return [m for m in spec.members if spec.weights.get(m, 0.0) > 0]


def build_app(args: AppArgs | dict[str, Any] | None = None) -> Application:
    """The Serve application: one ``member_<name>`` deployment per served member and the ``ingress``."""
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    cfg = a.load_config()
    spec = a.load_spec(cfg)
    members = served_members(spec, a.members)
    apply_fusion_update(cfg, spec, a.fusion, members)  # fail here, not in a replica, on bad fusion args
    has_gpu = cluster_has_gpu() if a.use_gpu is None else a.use_gpu
    handles = {
        m: cast(Deployment, MemberModel)
        .options(**member_options(cfg, m, has_gpu=has_gpu))
        .bind(cfg, m, checkpoints=member_checkpoints(cfg, spec, m) or None, allow_untrained=a.allow_untrained)
        for m in members
    }
    ingress = cast(Deployment, Ingress).options(
        name=INGRESS_NAME,
        autoscaling_config=_autoscaling(ingress_autoscaling(cfg)),
        max_ongoing_requests=cfg.serve.max_ongoing_requests,
        max_queued_requests=cfg.serve.max_queued_requests,
        backpressure_config=backpressure_config(cfg),
        ray_actor_options={"num_cpus": cfg.serve.ingress_num_cpus, **replica_runtime_env(cfg)},
        user_config=dict(a.fusion or {}),
    )
    return ingress.bind(cfg, handles, spec)


# ---- declarative deployment ---------------------------------------------------------------------------


def serve_config(
    args: AppArgs,
    *,
    name: str = APP_NAME,
    route_prefix: str = "/",
    fusion: Mapping[str, Any] | None = None,
    http_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Serve config document (the format of ``serve/config.yaml``) for this application.

    ``fusion`` becomes the ingress ``user_config``; redeploying a config that differs only there is a
    lightweight update.
    """
    app: dict[str, Any] = {
        "name": name,
        "route_prefix": route_prefix,
        "import_path": IMPORT_PATH,
        "args": args.model_dump(mode="json", exclude_defaults=True),
    }
    if fusion is not None:
        app["deployments"] = [{"name": INGRESS_NAME, "user_config": dict(fusion)}]
    out: dict[str, Any] = {"applications": [app]}
    if http_options:
        out["http_options"] = dict(http_options)
    return out


def check_serve_config(config: Mapping[str, Any]) -> None:
    """Validate a Serve config and, for this application, its args and ingress ``user_config``.

    A live fusion update is applied to running replicas without rebuilding the app, so a bad one would
    only fail inside them; this catches it before anything is deployed.

    Raises:
        ValueError: Naming the application and what is wrong.
    """
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(dict(config))
    for app in schema.applications:
        if app.import_path != IMPORT_PATH:
            continue
        try:
            a = AppArgs.model_validate(app.args or {})
            cfg = a.load_config()
            spec = a.load_spec(cfg)
            members = served_members(spec, a.members)
            for d in app.deployments:
                if d.name == INGRESS_NAME and isinstance(d.user_config, dict):
                    apply_fusion_update(cfg, spec, d.user_config, members)
        except (ValueError, OSError) as e:
            raise ValueError(f"application {app.name!r}: {e}") from None


def deploy(config: Mapping[str, Any], *, timeout_s: float = 300.0) -> None:
    """Apply a Serve config on the connected Ray, as ``serve deploy`` does, and wait until it runs.

    Public APIs only: :func:`ray.serve.start` (HTTP options, when the config sets them and Serve is not
    running yet), then the ``serve run --non-blocking <config>`` command, which applies the config
    declaratively without the dashboard's REST API (``serve deploy`` needs it; this module's local Ray and
    the test clusters run without a dashboard). Applications in the config that are already running are
    updated in place where Serve can (``user_config``, autoscaling); other declaratively deployed
    applications not in the config are removed.

    Raises:
        ValueError: The config is invalid (before anything is deployed).
        RuntimeError: The ``serve run`` command failed (with its output).
        TimeoutError: Not running after ``timeout_s``.
    """
    from ray.serve.schema import ServeDeploySchema

    check_serve_config(config)
    schema = ServeDeploySchema.model_validate(dict(config))
    # Serve's HTTP options apply only when Serve starts; pass them only when the config sets them (the
    # schema's defaults would otherwise clash, noisily, with an already running Serve). Starting Serve here,
    # not in `serve run`, keeps Serve's own defaults (HTTP on 127.0.0.1) when the config sets none.
    http = schema.http_options.model_dump() if config.get("http_options") else None
    serve.start(http_options=http, proxy_location=schema.proxy_location)
    names = [a.name for a in schema.applications]
    before = _deployed_times(names)
    _serve_run_config(dict(config))
    if timeout_s:
        wait_until_running(names, timeout_s=timeout_s, deployed_after=before)


def _serve_run_config(config: dict[str, Any], *, timeout_s: float = 120.0) -> None:
    """``serve run --non-blocking`` a config document against the connected Ray (returns once submitted)."""
    address = ray.get_runtime_context().gcs_address
    # the `serve` CLI of the interpreter's own environment (a venv need not be on PATH)
    cmd = [sys.executable, "-m", "ray.serve.scripts", "run", "--non-blocking"]
    with tempfile.TemporaryDirectory(prefix="mpic-serve-") as tmp:
        path = Path(tmp) / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        try:
            proc = subprocess.run(
                [*cmd, "--address", address, str(path)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"serve run did not submit the config within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-20:]
        raise RuntimeError("serve run failed:\n" + "\n".join(tail))


def _deployed_times(names: Sequence[str]) -> dict[str, float]:
    apps = serve.status().applications
    return {n: float(apps[n].last_deployed_time_s) for n in names if n in apps}


def wait_until_running(
    names: Sequence[str] = (APP_NAME,),
    *,
    timeout_s: float = 300.0,
    deployed_after: Mapping[str, float] | None = None,
) -> None:
    """Block until the applications are RUNNING and no deployment is updating or unhealthy.

    Args:
        names: Application names.
        timeout_s: How long to wait.
        deployed_after: Previous ``last_deployed_time_s`` per app: wait for a newer deployment first.

    Raises:
        RuntimeError: An application failed to deploy (with Serve's message).
        TimeoutError: Not running after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        apps = serve.status().applications
        pending = []
        for n in names:
            app = apps.get(n)
            if app is None or (
                deployed_after and n in deployed_after and app.last_deployed_time_s <= deployed_after[n]
            ):
                pending.append(n)
                continue
            if app.status == "DEPLOY_FAILED":
                raise RuntimeError(f"Serve application {n!r} failed to deploy: {app.message}")
            unhealthy = [
                d for d, s in app.deployments.items() if getattr(s.status, "value", s.status) not in _SETTLED
            ]
            if app.status != "RUNNING" or unhealthy:
                pending.append(n)
                last = f"{n}: {app.status} {app.message} {unhealthy}"
        if not pending:
            return
        time.sleep(0.5)
    raise TimeoutError(f"Serve applications {list(names)} not running after {timeout_s:g} s ({last})")


def run_local(
    cfg: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    blocking: bool = True,
    allow_untrained: bool = False,
    members: Sequence[str] | None = None,
    fusion: Mapping[str, Any] | None = None,
    version: str | None = None,
    timeout_s: float = 600.0,
) -> str:
    """Serve ``cfg``'s ensemble on Ray (``cfg.ray.address`` or a local instance) and return the URL.

    HTTP listens on ``host:port`` (default ``cfg.serve.host:port``, 127.0.0.1:8080). With ``blocking`` it
    waits for Ctrl-C, then shuts Serve down.
    """
    if not ray.is_initialized():
        local: dict[str, Any] = {} if cfg.ray.address else {"dashboard_host": cfg.ray.dashboard_host}
        # a local Ray's processes (Serve's controller and proxy among them) start with ray.env
        with cfg.ray.local_environment():
            ray.init(
                address=cfg.ray.address,
                num_cpus=None if cfg.ray.num_cpus is None else int(cfg.ray.num_cpus),
                num_gpus=None if cfg.ray.num_gpus is None else int(cfg.ray.num_gpus),
                **local,
            )
    host = host or cfg.serve.host
    port = port or cfg.serve.port
    args = AppArgs(
        config_data=cfg.snapshot(),
        allow_untrained=allow_untrained,
        members=list(members) if members else None,
        version=version,
    )
    spec = args.load_spec(cfg)  # fail here, clearly, when nothing is registered
    print(f"serving ensemble {_describe(spec)}", flush=True)
    http = {"host": host, "port": port, "request_timeout_s": cfg.serve.limits.request_timeout_s + 10}
    deploy(serve_config(args, fusion=fusion, http_options=http), timeout_s=timeout_s)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    print(f"mpic is serving at {url}  (API docs: {url}docs, Ctrl-C to stop)", flush=True)
    if blocking:
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("stopping Serve", flush=True)
            serve.shutdown()
    return url


def _describe(spec: EnsembleSpec) -> str:
    if spec.registered_model:
        return f"{spec.registered_model} version {spec.version} ({spec.source})"
    return f"{spec.ensemble} ({spec.source}, not registered)"
