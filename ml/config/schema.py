"""The configuration schema: the frozen pydantic models of every ``config.yml`` section and :class:`Config`.

Unknown keys are refused (``extra="forbid"``); :func:`_format_errors` turns a pydantic validation error
into a :class:`ConfigError` that names each bad dotted path and, where the schema knows them, the
allowed keys. Reading files, profiles and overrides is :mod:`ml.config.loading`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAMESPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

Aggregation = Literal["mean", "max", "s2"]
Objective = Literal["macro_f1", "micro_f1", "lrap"]


class ConfigError(ValueError):
    """A configuration file, profile or override is invalid; the message names every bad path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Label(_Strict):
    """One instrument class: a short code (used in file names, APIs, CSV) and a display name."""

    code: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,15}$")]
    name: str


class AudioConfig(_Strict):
    """Limits applied by the one audio decoder (`ml.audio`)."""

    max_seconds: Annotated[float, Field(gt=0)] = 600.0
    min_seconds: Annotated[float, Field(ge=0)] = 0.05
    silence_dbfs: float = -70.0


class DataConfig(_Strict):
    """Where the IRMAS-layout data set lives and where derived files (manifest, caches) go."""

    root: Path = Path("data/demo")
    cache_dir: Path = Path(".cache/mpic")
    test_root: Path | None = None


class ScoresConfig(_Strict):
    """Multi-instrument items composed from public-domain scores of the music21 corpus (ml.data.scores)."""

    test_share: Annotated[float, Field(ge=0, le=1)] = 0.0  # of the test excerpts
    mix_share: Annotated[float, Field(ge=0, le=1)] = 0.0  # of the training mixes
    # names are checked against the installed corpus when the synthesiser runs (no music21 lookup here)
    collections: Annotated[list[str], Field(min_length=1)] = [
        "bach",
        "palestrina",
        "monteverdi",
        "mozart",
        "haydn",
    ]
    max_pieces: Annotated[int, Field(ge=1)] = 60  # per collection
    tempo: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (60.0, 120.0)

    @field_validator("tempo")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"tempo must be [lowest, highest], got {list(value)}")
        return value


class SynthConfig(_Strict):
    """Synthetic IRMAS-style data set rendered with several sample libraries (``ml.data.libraries``)."""

    train_clips: Annotated[int, Field(ge=1)] = 440
    train_mixes: Annotated[int, Field(ge=0)] = 0
    test_excerpts: Annotated[int, Field(ge=0)] = 40  # per library
    seed: int = 0
    libraries: Annotated[list[str], Field(min_length=1)] = ["timgm6mb"]
    sample_rate: Annotated[int, Field(ge=8000)] = 44100
    clips_per_recording: Annotated[int, Field(ge=1)] = 3
    workers: Annotated[int, Field(ge=1)] | None = None
    programs: dict[str, list[Annotated[int, Field(ge=0, le=127)]]] = {}
    scores: ScoresConfig = ScoresConfig()

    @property
    def soundfonts(self) -> list[str]:
        """Deprecated name of :attr:`libraries` (read-only), for callers written before the registry."""
        return list(self.libraries)

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        # ``soundfonts`` was the key before the library registry; it still reads as ``libraries``.
        if isinstance(data, dict) and "soundfonts" in data:
            if "libraries" in data:
                raise ValueError("give synth.libraries only (synth.soundfonts is its old name)")
            data = {**data, "libraries": data["soundfonts"]}
            del data["soundfonts"]
        return data

    @field_validator("libraries")
    @classmethod
    def _unique_libraries(cls, value: list[str]) -> list[str]:
        # Names are checked against ml.data.libraries by `mpic synth` (importing ml.data here would slow
        # every command that reads the configuration).
        names = [v.strip().lower() for v in value]
        if len(set(names)) != len(names):
            raise ValueError(f"libraries must be unique, got {value}")
        return names


class FoldsConfig(_Strict):
    """Cross-validation folds: label-stratified, grouped by source recording — or one fold per library family.

    ``by: library`` makes every validation fold a sample-library family the fold's model never heard, so
    early stopping, fusion weights and thresholds are fitted on predictions for unheard sounds (what the
    users' music is); ``k`` must then equal the number of families in the training data.
    """

    k: Annotated[int, Field(ge=2, le=20)] = 5
    seed: int = 0
    by: Literal["recording", "library"] = "recording"


class SpecAugmentConfig(_Strict):
    """SpecAugment-style masking, applied by a front end in training mode only."""

    freq_masks: Annotated[int, Field(ge=0)] = 0
    freq_width: Annotated[int, Field(ge=1)] = 8
    time_masks: Annotated[int, Field(ge=0)] = 0
    time_width: Annotated[int, Field(ge=1)] = 10


class MelConfig(_Strict):
    """Log-mel front end (torchaudio)."""

    kind: Literal["mel"] = "mel"
    sample_rate: Annotated[int, Field(ge=4000)] = 16000
    n_fft: Annotated[int, Field(ge=64)] = 1024
    win_length: Annotated[int, Field(ge=16)] = 400
    hop_length: Annotated[int, Field(ge=1)] = 160
    n_mels: Annotated[int, Field(ge=8)] = 64
    f_min: Annotated[float, Field(ge=0)] = 30.0
    f_max: float | None = None
    top_db: Annotated[float, Field(gt=0)] = 80.0
    # pcen: per-channel energy normalisation of the mel power instead of dB (top_db unused)
    norm: Literal["max", "instance", "none", "pcen"] = "instance"
    spec_augment: SpecAugmentConfig = SpecAugmentConfig()

    @model_validator(mode="after")
    def _check(self) -> MelConfig:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must be <= n_fft ({self.n_fft})")
        if self.f_max is not None and not self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"f_max must lie in (f_min, sample_rate/2] = ({self.f_min}, {self.sample_rate / 2}]"
            )
        return self


class CqtConfig(_Strict):
    """Constant-Q front end (nnAudio)."""

    kind: Literal["cqt"] = "cqt"
    sample_rate: Annotated[int, Field(ge=4000)] = 22050
    hop_length: Annotated[int, Field(ge=1)] = 256
    n_bins: Annotated[int, Field(ge=8)] = 96
    bins_per_octave: Annotated[int, Field(ge=4)] = 12
    f_min: Annotated[float, Field(gt=0)] = 32.70
    top_db: Annotated[float, Field(gt=0)] = 80.0
    norm: Literal["max", "instance", "none"] = "max"
    spec_augment: SpecAugmentConfig = SpecAugmentConfig()

    @model_validator(mode="after")
    def _check(self) -> CqtConfig:
        top = self.f_min * 2 ** (self.n_bins / self.bins_per_octave)
        if top >= self.sample_rate / 2:
            raise ValueError(
                f"the top CQT bin ({top:.0f} Hz) must stay below Nyquist ({self.sample_rate / 2:.0f} Hz): "
                "lower n_bins or f_min"
            )
        return self


class MusicnnMelConfig(_Strict):
    """musicnn's input (Pons & Serra 2019): 16 kHz, 512-point FFT, hop 256, 96 mels, log10(10000 x + 1).

    The pretrained ``musicnn`` trunk only works on exactly this representation, so everything but the level
    handling, the padding and SpecAugment is fixed.
    """

    kind: Literal["musicnn_mel"] = "musicnn_mel"
    sample_rate: Literal[16000] = 16000
    n_fft: Literal[512] = 512
    hop_length: Literal[256] = 256
    n_mels: Literal[96] = 96
    # RMS every wave is scaled to before analysis (-20 dBFS, as the other front ends); null keeps the input
    # level as musicnn's extractor does (its training audio was commercial music at roughly that level).
    target_rms: Annotated[float, Field(gt=0)] | None = 0.1
    # centred frames: "reflect" as the librosa releases musicnn was trained with; "constant" = zeros
    pad_mode: Literal["reflect", "constant"] = "reflect"
    spec_augment: SpecAugmentConfig = SpecAugmentConfig()


AnyFrontEndConfig = MelConfig | CqtConfig | MusicnnMelConfig
FrontEndConfig = Annotated[AnyFrontEndConfig, Field(discriminator="kind")]


class AugmentStep(BaseModel):
    """One augmentation by registry name; extra keys are that augmentation's parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    p: Annotated[float, Field(ge=0, le=1)] = 1.0

    @property
    def params(self) -> dict[str, Any]:
        """The augmentation's own parameters (everything but ``name`` and ``p``)."""
        return dict(self.model_extra or {})


class TrainConfig(_Strict):
    """Training recipe shared by every member unless the member overrides a field."""

    epochs: Annotated[int, Field(ge=1)] = 30
    batch_size: Annotated[int, Field(ge=1)] = 64
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    # training targets pulled towards 1/2 by this much (y (1 - ls) + ls / 2); validation uses the true ones
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    optimizer: Literal["adam", "adamw"] = "adamw"
    monitor: Literal["val_loss", "val_lrap", "val_macro_f1"] = "val_loss"
    early_stopping_patience: Annotated[int, Field(ge=1)] = 7
    lr_patience: Annotated[int, Field(ge=1)] = 3
    lr_factor: Annotated[float, Field(gt=0, lt=1)] = 0.1
    min_lr: Annotated[float, Field(ge=0)] = 1e-6
    crop_s: Annotated[float, Field(gt=0)] = 1.0
    steps_per_epoch: Annotated[int, Field(ge=1)] | None = None
    # Stop once this many seconds went into training steps (validation not counted): equal-budget
    # comparisons of recipes whose steps cost very different amounts (bench/accuracy.py).
    time_budget_s: Annotated[float, Field(gt=0)] | None = None
    # Out-of-fold predictions also cover this many multi-instrument mixtures per held-out clip (2-3
    # held-out clips with disjoint labels), so thresholds fitted on them expect polyphonic test music
    # rather than the single-instrument training clips alone. 0: single clips only.
    oof_mixtures: Annotated[int, Field(ge=0, le=8)] = 1
    val_windows_hop_s: Annotated[float, Field(gt=0)] = 1.0
    # A training crop is labelled with the clip's instruments that play in at least this fraction of it
    # (clips with recorded per-label activity, e.g. rendered polyphonic clips); others keep clip labels.
    crop_min_active: Annotated[float, Field(ge=0, le=1)] = 0.3
    # Members with a frozen pretrained trunk (musicnn, freeze: true): embed this many augmented passes over
    # the training clips once, then train only the head on the cached embeddings, head_passes passes over
    # them per epoch (ml/head_cache.py). Under time_budget_s the views stop at 2/3 of it and the head trains
    # for the rest, at least 1/3 (ml.train.HEAD_BUDGET_SHARE). 0: every step runs the trunk.
    head_views: Annotated[int, Field(ge=0)] = 0
    # With head_views: passes over the cached embeddings per epoch (an epoch ends with validation and a
    # checkpoint report, which costs more than a pass of the head).
    head_passes: Annotated[int, Field(ge=1)] = 4
    amp: bool = True
    seed: int = 0
    num_workers: Annotated[int, Field(ge=1)] = 1
    cpus_per_trial: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_trial: Annotated[float, Field(ge=0, le=8)] = 1.0
    use_gpu: bool | None = None  # None: when the cluster has GPUs now; True: also before workers scale up
    torch_threads: Annotated[int, Field(ge=1)] | None = None
    max_concurrent_trials: Annotated[int, Field(ge=1)] | None = None
    max_failures: Annotated[int, Field(ge=0)] = 2
    folds: list[int] | None = None


class MemberConfig(_Strict):
    """A named ensemble entry: architecture + front end + training recipe (augmentation, overrides)."""

    arch: str
    front_end: str
    augment: list[AugmentStep] = []
    train: dict[str, Any] = {}
    aggregation: Aggregation = "mean"
    description: str = ""


class InferenceConfig(_Strict):
    """Windowed inference over excerpts of any length."""

    window_s: Annotated[float, Field(gt=0)] = 1.0
    hop_s: Annotated[float, Field(gt=0)] = 0.5
    batch_size: Annotated[int, Field(ge=1)] = 64
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    fold_models: Literal["all", "best"] = "all"


class FusionConfig(_Strict):
    """The fusion-weight / aggregation / threshold search on out-of-fold predictions."""

    objective: Objective = "macro_f1"
    # name at most this many instruments per file: of those over their thresholds, the highest scores
    # (null: no cap). Written into the ensemble spec by `mpic fuse`; a prior, not fitted (docs/benchmarks.md)
    max_instruments: Annotated[int, Field(ge=1)] | None = None
    num_samples: Annotated[int, Field(ge=1)] = 200
    aggregations: list[Aggregation] = ["mean", "max", "s2"]
    seed: int = 0
    # a candidate is milliseconds of numpy: the Tune loop, not the trials, is the cost, and more trial actors
    # only add processes (2-core machine: 24 candidates 79 s unbounded, 32 s at 8, 18 s at 2; the demo's 200
    # candidates 54 s at 8, 41 s at 2)
    max_concurrent_trials: Annotated[int, Field(ge=1)] = 2


class AutoscalingConfig(_Strict):
    """Ray Serve autoscaling of one member's replica set."""

    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)] = 2
    initial_replicas: Annotated[int, Field(ge=0)] | None = None
    target_ongoing_requests: Annotated[float, Field(gt=0)] = 8.0
    upscale_delay_s: Annotated[float, Field(ge=0)] = 10.0
    downscale_delay_s: Annotated[float, Field(ge=0)] = 60.0

    @model_validator(mode="after")
    def _check(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


class ServeLimits(_Strict):
    """Per-request limits enforced by the ingress."""

    max_upload_bytes: Annotated[int, Field(ge=1024)] = 50 * 1024 * 1024
    max_files: Annotated[int, Field(ge=1)] = 16
    max_seconds: Annotated[float, Field(gt=0)] = 600.0
    request_timeout_s: Annotated[float, Field(gt=0)] = 120.0


class DeviceBatching(_Strict):
    """How a member replica on one kind of device batches: songs per ``@serve.batch``, windows per forward."""

    max_batch_size: Annotated[int, Field(ge=1)] = 64
    batch_wait_timeout_s: Annotated[float, Field(ge=0)] = 0.01
    window_batch_size: Annotated[int, Field(ge=1)] | None = None  # None: inference.batch_size


def _env_text(value: Any) -> Any:
    """An environment value as text (booleans as ``1``/``0``); other types are left for pydantic to refuse."""
    if isinstance(value, bool):
        return str(int(value))
    return str(value) if isinstance(value, int | float) else value


def _env_vars(env: Any) -> Any:
    """Check the names of an environment mapping and turn its values into text.

    `--set serve.replica_env.X=1` and unquoted YAML give numbers and booleans; an environment holds text.
    """
    if not isinstance(env, dict):
        return env
    bad = [k for k in env if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k))]
    if bad:
        raise ValueError(f"not environment variable names: {bad}")
    return {k: _env_text(v) for k, v in env.items()}


@contextlib.contextmanager
def scoped_environ(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` in this process's environment for the ``with`` block, then restore what was there."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class ServeConfig(_Strict):
    """Ray Serve application: one deployment per member plus a FastAPI ingress.

    ``max_batch_size`` / ``batch_wait_timeout_s`` apply to member replicas on CPU; ``cuda`` replaces them (and
    the windows per forward pass) on GPU replicas, where bigger batches are what makes the GPU pay.
    ``ingress_autoscaling`` defaults to ``autoscaling`` with ``max_replicas`` = the node's CPU count, so the
    ingress (decoding, the only per-song CPU work left) can use every core of a GPU node.
    """

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    default_model: str | None = None
    max_batch_size: Annotated[int, Field(ge=1)] = 64
    batch_wait_timeout_s: Annotated[float, Field(ge=0)] = 0.01
    max_ongoing_requests: Annotated[int, Field(ge=1)] = 128
    max_queued_requests: Annotated[int, Field(ge=-1)] = 256  # per caller; beyond it: 503 + Retry-After
    retry_after_s: Annotated[float, Field(ge=0)] = 1.0  # Retry-After of backpressure/unavailable 503s
    num_cpus: Annotated[float, Field(gt=0)] = 1.0
    num_gpus: Annotated[float, Field(ge=0)] = 0.25
    ingress_num_cpus: Annotated[float, Field(gt=0)] = 0.5
    cuda: DeviceBatching = DeviceBatching(
        max_batch_size=128, batch_wait_timeout_s=0.02, window_batch_size=512
    )
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    member_autoscaling: dict[str, AutoscalingConfig] = {}
    ingress_autoscaling: AutoscalingConfig | None = None
    limits: ServeLimits = ServeLimits()
    api_key: str | None = None
    cors_origins: list[str] = []
    models_dir: Path | None = None
    # environment of every replica process (ingress and members): Serve's request-path switches
    replica_env: dict[str, str] = {}

    @field_validator("replica_env", mode="before")
    @classmethod
    def _env(cls, env: Any) -> Any:
        return _env_vars(env)

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError("max_ongoing_requests must be >= max_batch_size, or batches never fill")
        return self

    def batching(self, device: str) -> DeviceBatching:
        """Member batching on a device type (``"cuda"``: :attr:`cuda`; else the top-level settings).

        A replica never has more than ``max_ongoing_requests`` calls at once, so no batch can be larger.
        """
        if device == "cuda":
            size = min(self.cuda.max_batch_size, self.max_ongoing_requests)
            return self.cuda.model_copy(update={"max_batch_size": size})
        return DeviceBatching(
            max_batch_size=self.max_batch_size, batch_wait_timeout_s=self.batch_wait_timeout_s
        )


class TagConfig(_Strict):
    """The Ray Data tagging job (``python -m ray_jobs.tag``): decode tasks, then pools of scoring actors.

    Files are decoded by Ray tasks of ``decode_cpus`` each; the decoded audio goes to an autoscaling pool
    of ``min_actors``..``max_actors`` actors, each holding the ensemble's members and scoring
    ``batch_size`` files per call, with ``cpus_per_actor`` and, when the cluster has GPUs,
    ``gpus_per_actor`` (fractions share a GPU).
    """

    batch_size: Annotated[int, Field(ge=1)] = 16
    decode_cpus: Annotated[float, Field(gt=0)] = 1.0
    min_actors: Annotated[int, Field(ge=1)] = 1
    max_actors: Annotated[int, Field(ge=1)] = 4
    cpus_per_actor: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_actor: Annotated[float, Field(ge=0)] = 1.0

    @model_validator(mode="after")
    def _check(self) -> TagConfig:
        if self.max_actors < self.min_actors:
            raise ValueError("max_actors must be >= min_actors")
        return self


class MlflowConfig(_Strict):
    """MLflow tracking server (SQL backend store) and registry settings."""

    tracking_uri: str | None = None
    backend_store_uri: str = "sqlite:///.cache/mpic/mlflow.db"
    artifacts_destination: str = ".cache/mpic/mlflow-artifacts"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 5000
    # Both default to ``mpic-<namespace>`` when loaded through load_config (see derive_namespace).
    experiment: str = "mpic"
    registered_model_prefix: str = "mpic"
    alias: str = "champion"
    enabled: bool = True


class RayConfig(_Strict):
    """How jobs reach Ray: an address (cluster) or a local instance started for the run.

    ``env`` is the environment of a local Ray that mpic starts (:meth:`local_environment`): its raylet and
    GCS, and every worker they spawn (Serve's controller and proxy among them) inherit it. A cluster's nodes
    get it where ``ray start`` runs (``cluster.yaml``, ``deploy/kuberay``); Serve replicas also get
    ``serve.replica_env`` wherever they run.
    """

    address: str | None = None
    num_cpus: Annotated[float, Field(gt=0)] | None = None
    num_gpus: Annotated[float, Field(ge=0)] | None = None
    # A local/NFS path or a URI (s3://, gs://): a str, since Path("s3://b/x") would collapse to "s3:/b/x".
    storage_path: str = ".cache/mpic/ray_results"
    dashboard_host: str = "127.0.0.1"
    env: dict[str, str] = {}

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, env: Any) -> Any:
        return _env_vars(env)

    @contextlib.contextmanager
    def local_environment(self) -> Iterator[None]:
        """Set :attr:`env` in this process's environment for the ``with`` block, then restore it.

        Start a local Ray inside the block: its processes are spawned from this one and keep the values
        (Ray reads them at each process's start), while this process's own environment is left as it was.
        """
        with scoped_environ(self.env):
            yield


class Config(_Strict):
    """The whole validated configuration."""

    labels: list[Label]
    audio: AudioConfig = AudioConfig()
    data: DataConfig = DataConfig()
    # The namespace of runs, checkpoints, MLflow experiment and registered names (module doc).
    namespace: Annotated[str, Field(pattern=NAMESPACE_PATTERN)] = "default"
    runs_dir: Path = Path(".cache/mpic/runs")
    synth: SynthConfig = SynthConfig()
    folds: FoldsConfig = FoldsConfig()
    front_ends: dict[str, FrontEndConfig]
    models: dict[str, dict[str, Any]] = {}
    members: dict[str, MemberConfig]
    ensembles: dict[str, list[str]]
    ensemble: str
    train: TrainConfig = TrainConfig()
    inference: InferenceConfig = InferenceConfig()
    fusion: FusionConfig = FusionConfig()
    serve: ServeConfig = ServeConfig()
    tag: TagConfig = TagConfig()
    mlflow: MlflowConfig = MlflowConfig()
    ray: RayConfig = RayConfig()
    profile: str | None = None

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: list[Label]) -> list[Label]:
        codes = [lab.code for lab in v]
        if len(codes) < 2:
            raise ValueError("at least two labels are needed")
        dupes = sorted({c for c in codes if codes.count(c) > 1})
        if dupes:
            raise ValueError(f"duplicate label codes: {dupes}")
        return v

    @model_validator(mode="after")
    def _cross_refs(self) -> Config:
        errors: list[str] = []
        for name, member in self.members.items():
            if member.front_end not in self.front_ends:
                errors.append(
                    f"members.{name}.front_end: unknown front end {member.front_end!r}; "
                    f"valid: {sorted(self.front_ends)}"
                )
            if member.arch not in self.models:
                errors.append(
                    f"members.{name}.arch: {member.arch!r} has no section under `models` "
                    f"(each architecture's settings live in models.<arch>); valid: {sorted(self.models)}"
                )
            bad = sorted(set(member.train) - set(TrainConfig.model_fields))
            if bad:
                errors.append(
                    f"members.{name}.train: unknown keys {bad}; valid: {sorted(TrainConfig.model_fields)}"
                )
        for ens, names in self.ensembles.items():
            if not names:
                errors.append(f"ensembles.{ens}: an ensemble needs at least one member")
            for n in names:
                if n not in self.members:
                    errors.append(f"ensembles.{ens}: unknown member {n!r}; valid: {sorted(self.members)}")
        if self.ensemble not in self.ensembles:
            errors.append(f"ensemble: unknown ensemble {self.ensemble!r}; valid: {sorted(self.ensembles)}")
        elif (
            self.serve.default_model is not None
            and self.serve.default_model not in self.ensembles[self.ensemble]
        ):
            errors.append(
                f"serve.default_model: {self.serve.default_model!r} is not a member of ensemble "
                f"{self.ensemble!r}; valid: {self.ensembles[self.ensemble]}"
            )
        for name in self.serve.member_autoscaling:
            if name not in self.members:
                errors.append(
                    f"serve.member_autoscaling.{name}: unknown member; valid: {sorted(self.members)}"
                )
        if errors:
            raise ValueError("; ".join(errors))
        return self

    # ---- convenience accessors -------------------------------------------------------------------
    @property
    def label_codes(self) -> list[str]:
        """Label codes in model-output order."""
        return [lab.code for lab in self.labels]

    @property
    def ensemble_members(self) -> list[str]:
        """Names of the members of the selected ensemble."""
        return list(self.ensembles[self.ensemble])

    @property
    def default_model(self) -> str:
        """The member used by the single-model endpoint when none is named."""
        return self.serve.default_model or self.ensemble_members[0]

    def member_train(self, member: str) -> TrainConfig:
        """The training recipe of one member: the shared recipe with the member's overrides applied."""
        m = self.members[member]
        if not m.train:
            return self.train
        try:
            return TrainConfig.model_validate({**self.train.model_dump(), **m.train})
        except ValidationError as e:
            raise ConfigError(_format_errors(e, prefix=f"members.{member}.train")) from None

    @property
    def namespace_dir(self) -> Path:
        """This namespace's own folder under the shared cache (``<cache_dir>/<namespace>``)."""
        return self.data.cache_dir / self.namespace

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable dump (for MLflow and checkpoints)."""
        return self.model_dump(mode="json")


_FRONT_END_KINDS = {"mel", "cqt", "musicnn_mel"}  # discriminator tags pydantic puts in error locations


def _format_errors(e: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in e.errors():
        path = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in _FRONT_END_KINDS))
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            parent_fields = _allowed_keys(e, err["loc"])
            if parent_fields:
                msg += f"; valid keys: {parent_fields}"
        lines.append(f"  {path or '<root>'}: {msg}")
    return "invalid configuration:\n" + "\n".join(lines)


def _allowed_keys(e: ValidationError, loc: tuple[Any, ...]) -> list[str] | None:
    model: Any = Config
    for part in loc[:-1]:
        if isinstance(model, type) and issubclass(model, BaseModel) and isinstance(part, str):
            field = model.model_fields.get(part)
            if field is None:
                return None
            ann = field.annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        else:
            model = None
        if model is None:
            return None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return None
