"""Loading the configuration: find the file, merge a profile, apply ``--set`` overrides, derive the namespace.

Every entry point (:func:`load_config`, :func:`config_from_dict`) ends in one validation against
:class:`~ml.config.schema.Config`; :func:`add_config_args` gives every command the same flags.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ml.config.schema import Config, ConfigError, _format_errors

# The repository root (this file is ml/config/loading.py): where the project's own config.yml lives.
PROJECT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_NAME = "config.yml"
CONFIG_ENV = "MPIC_CONFIG"
PROFILE_ENV = "MPIC_PROFILE"

DEFAULT_NAMESPACE = "default"
DEFAULT_CACHE_DIR = ".cache/mpic"


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (``1``, ``[a, b]``)."""
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE with a dotted key, e.g. train.epochs=3")
    key, _, text = override.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {override!r}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML: {e}") from None
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ConfigError(
                    f"--set {key}: {'.'.join(parts[: i + 1])} is not a valid list index"
                ) from None
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is not a section")
        node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise ConfigError(f"--set {key}: {last} is not a valid list index") from None
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {key}: {'.'.join(parts[:-1])} is not a section")


def find_config(path: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the config file: explicit path, ``$MPIC_CONFIG``, ``./config.yml``, then the project's own."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p.resolve()
    env = os.environ.get(CONFIG_ENV)
    if env:
        return find_config(env)
    for candidate in (Path.cwd() / DEFAULT_CONFIG_NAME, PROJECT_DIR / DEFAULT_CONFIG_NAME):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"no {DEFAULT_CONFIG_NAME} in {Path.cwd()} or {PROJECT_DIR}; pass --config PATH")


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make known path settings absolute against ``base`` (URIs such as s3:// are left alone)."""

    def fix(section: dict[str, Any] | None, key: str) -> None:
        if not isinstance(section, dict):
            return
        v = section.get(key)
        if isinstance(v, str | Path) and str(v) and "://" not in str(v) and not Path(v).is_absolute():
            section[key] = str((base / v).resolve())

    fix(raw.get("data"), "root")
    fix(raw.get("data"), "cache_dir")
    fix(raw.get("data"), "test_root")
    fix(raw, "runs_dir")
    fix(raw.get("ray"), "storage_path")
    fix(raw.get("serve"), "models_dir")
    fix(raw.get("mlflow"), "artifacts_destination")
    ml = raw.get("mlflow")
    if isinstance(ml, dict):
        uri = ml.get("backend_store_uri")
        prefix = "sqlite:///"
        if isinstance(uri, str) and uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            ml["backend_store_uri"] = prefix + str((base / uri[len(prefix) :]).resolve())


def load_config(
    path: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    overrides: Iterable[str] = (),
    *,
    base_dir: Path | None = None,
) -> Config:
    """Load, merge a profile, apply overrides, resolve paths and validate.

    Args:
        path: Config file; see :func:`find_config` for the search order when None.
        profile: Name of a profile under ``profiles:`` (``$MPIC_PROFILE`` when None).
        overrides: ``a.b=value`` strings, applied after the profile.
        base_dir: Directory relative paths are resolved against (default: the config file's).

    Returns:
        The validated, frozen configuration.

    Raises:
        ConfigError: Naming each bad path and, where known, the allowed values.
    """
    cfg_path = find_config(path)
    try:
        raw = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{cfg_path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg_path}: the top level must be a mapping")
    return config_from_dict(raw, profile=profile, overrides=overrides, base_dir=base_dir or cfg_path.parent)


def config_from_dict(
    raw: Mapping[str, Any],
    profile: str | None = None,
    overrides: Iterable[str] = (),
    *,
    base_dir: Path | None = None,
) -> Config:
    """Validate an in-memory config mapping (with its ``profiles``) exactly as :func:`load_config` does."""
    data = copy.deepcopy(dict(raw))
    profiles = data.pop("profiles", {}) or {}
    profile = profile or os.environ.get(PROFILE_ENV) or None
    if profile:
        if profile not in profiles:
            raise ConfigError(f"profile: unknown profile {profile!r}; valid: {sorted(profiles)}")
        data = deep_merge(data, profiles[profile] or {})
        data["profile"] = profile
    for ov in overrides:
        apply_override(data, ov)
    base = (base_dir or Path.cwd()).resolve()
    _resolve_paths(data, base)
    derive_namespace(data, profile, base)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None


def derive_namespace(data: dict[str, Any], profile: str | None, base: Path) -> None:
    """Fill the namespace and the settings derived from it into a merged, path-resolved config mapping.

    Explicit values win. The namespace is ``namespace`` if set; else, when ``runs_dir`` is set
    explicitly, ``<profile>-<sha256(runs_dir)[:8]>`` (another runs location is another namespace); else
    the profile name (``default`` without a profile). Derived: ``runs_dir = <cache_dir>/<ns>/runs``,
    ``ray.storage_path = <cache_dir>/<ns>/ray_results``, ``mlflow.experiment`` and
    ``mlflow.registered_model_prefix`` = ``mpic-<ns>``.
    """
    prof = profile or DEFAULT_NAMESPACE
    ns = data.get("namespace")
    runs = data.get("runs_dir")
    if not ns:
        if runs:
            digest = hashlib.sha256(str(runs).encode()).hexdigest()[:8]
            ns = f"{prof}-{digest}"
        else:
            ns = prof
    data["namespace"] = ns
    section = data.get("data")
    cache = section.get("cache_dir") if isinstance(section, dict) else None
    cache_dir = Path(str(cache)) if cache else (base / DEFAULT_CACHE_DIR).resolve()
    if not runs:
        data["runs_dir"] = str(cache_dir / str(ns) / "runs")
    ray_section = data.setdefault("ray", {})
    if isinstance(ray_section, dict) and not ray_section.get("storage_path"):
        ray_section["storage_path"] = str(cache_dir / str(ns) / "ray_results")
    mlflow_section = data.setdefault("mlflow", {})
    if isinstance(mlflow_section, dict):
        for key in ("experiment", "registered_model_prefix"):
            if not mlflow_section.get(key):
                mlflow_section[key] = f"mpic-{ns}"


def parse_cli_overrides(values: Sequence[str] | None) -> list[str]:
    """Flatten repeated ``--set`` arguments (each may hold several comma-free ``k=v`` pairs)."""
    return [v for v in (values or []) if v]


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config``, ``--profile`` and repeated ``--set KEY=VALUE`` (every mpic command)."""
    parser.add_argument("--config", help="config file (default: $MPIC_CONFIG, ./config.yml, the project's)")
    parser.add_argument("--profile", help="profile from config.yml: smoke, demo, full, … ($MPIC_PROFILE)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )
    return parser
