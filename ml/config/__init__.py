"""Typed, validated project configuration.

`config.yml` is parsed once into a frozen :class:`Config`. Every command accepts ``--config PATH``,
``--profile NAME`` (a named partial config deep-merged over the base) and ``--set a.b=value`` overrides
(the value is parsed as YAML). An unknown key or a bad value fails with a :class:`ConfigError` naming the
dotted path and, where the schema knows them, the allowed values.

Relative paths are resolved against the directory of the config file, so a loaded config holds absolute
paths and can be shipped to Ray workers as is.

A profile is a **namespace** (:func:`derive_namespace`): unless set explicitly, its ``runs_dir``
(``<cache_dir>/<namespace>/runs``), ``ray.storage_path``, MLflow experiment (``mpic-<namespace>``) and
registered-model prefix (``mpic-<namespace>``) are derived from the namespace name, which is the profile
name (``default`` without one). A config that sets ``runs_dir`` itself (``--set runs_dir=…``) without a
``namespace`` gets ``<profile>-<hash of runs_dir>``, so another runs location never shares MLflow names
with the profile's own. Data caches keyed by content (decoded audio, manifests) stay shared.

Modules: :mod:`ml.config.schema` (the section models and :class:`Config`) and :mod:`ml.config.loading`
(files, profiles, overrides, namespaces, command-line flags); everything is importable from
:mod:`ml.config`.
"""

from ml.config.loading import (
    CONFIG_ENV,
    DEFAULT_CACHE_DIR,
    DEFAULT_CONFIG_NAME,
    DEFAULT_NAMESPACE,
    PROFILE_ENV,
    PROJECT_DIR,
    add_config_args,
    apply_override,
    config_from_dict,
    deep_merge,
    derive_namespace,
    find_config,
    load_config,
    parse_cli_overrides,
)
from ml.config.schema import (
    NAMESPACE_PATTERN,
    Aggregation,
    AnyFrontEndConfig,
    AudioConfig,
    AugmentStep,
    AutoscalingConfig,
    Config,
    ConfigError,
    CqtConfig,
    DataConfig,
    DeviceBatching,
    FoldsConfig,
    FrontEndConfig,
    FusionConfig,
    InferenceConfig,
    Label,
    MelConfig,
    MemberConfig,
    MlflowConfig,
    MusicnnMelConfig,
    Objective,
    RayConfig,
    ServeConfig,
    ServeLimits,
    SpecAugmentConfig,
    SynthConfig,
    TagConfig,
    TrainConfig,
    scoped_environ,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_CONFIG_NAME",
    "DEFAULT_NAMESPACE",
    "NAMESPACE_PATTERN",
    "PROFILE_ENV",
    "PROJECT_DIR",
    "Aggregation",
    "AnyFrontEndConfig",
    "AudioConfig",
    "AugmentStep",
    "AutoscalingConfig",
    "Config",
    "ConfigError",
    "CqtConfig",
    "DataConfig",
    "DeviceBatching",
    "FoldsConfig",
    "FrontEndConfig",
    "FusionConfig",
    "InferenceConfig",
    "Label",
    "MelConfig",
    "MemberConfig",
    "MlflowConfig",
    "MusicnnMelConfig",
    "Objective",
    "RayConfig",
    "ServeConfig",
    "ServeLimits",
    "SpecAugmentConfig",
    "SynthConfig",
    "TagConfig",
    "TrainConfig",
    "add_config_args",
    "apply_override",
    "config_from_dict",
    "deep_merge",
    "derive_namespace",
    "find_config",
    "load_config",
    "parse_cli_overrides",
    "scoped_environ",
]
