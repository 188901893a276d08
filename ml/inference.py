"""Windowed inference: one :class:`Predictor` per ensemble member, and the fused per-file result.

A long excerpt is cut into windows (``window_s`` long, every ``hop_s``; the tail is covered by one window
aligned to the end), the windows of many files are batched together through every fold model of a member
(their sigmoid outputs averaged), and per-file scores come from aggregating the windows (`mean`, `max`,
`s2`). The ensemble result fuses members with weights and per-class thresholds from an
:class:`~ml.ensemble.EnsembleSpec`. The same code runs in evaluation, `mpic predict` and Serve.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml import metrics
from ml.audio import Audio, resample_tensor
from ml.checkpoint import MODEL_FILE, CheckpointError, load_classifier
from ml.fusion import aggregate
from ml.models import Classifier


def window_starts(duration_s: float, window_s: float, hop_s: float) -> np.ndarray:
    """Window start times in seconds covering ``[0, duration_s)``; at least one window.

    Starts are 0, hop, 2·hop, … while a whole window fits; if audio remains after the last one, a final
    window aligned to the end is added. A clip shorter than one window gets a single (zero-padded) window.
    Times are in seconds so members at different sample rates get the same windows.
    """
    if duration_s <= window_s:
        return np.zeros(1)
    n = math.floor((duration_s - window_s) / hop_s + 1e-9) + 1
    starts = np.arange(n) * hop_s
    if starts[-1] + window_s < duration_s - 1e-6:
        starts = np.append(starts, duration_s - window_s)
    return starts


def window_offsets(starts_s: np.ndarray, sample_rate: int) -> np.ndarray:
    """Window starts in samples: ``round(start_s * sample_rate)`` (half to even), as int64."""
    return np.rint(np.asarray(starts_s, dtype=np.float64) * sample_rate).astype(np.int64)


def frame_tensor(wave: torch.Tensor, sample_rate: int, starts_s: np.ndarray, window_s: float) -> torch.Tensor:
    """Cut windows starting at ``starts_s`` seconds out of a 1-D tensor → (W, window_samples), zero-padded.

    Runs on the wave's device with no loop over windows: evenly spaced starts (all of them, or all but the
    final end-aligned one) are one strided view (``unfold``) copied once; the remaining starts are gathered.
    """
    size = round(window_s * sample_rate)
    offs = window_offsets(starts_s, sample_rate)
    if len(offs) == 0:
        return wave.new_zeros((0, size))
    need = int(offs.max()) + size
    if need > wave.shape[-1]:
        wave = torch.nn.functional.pad(wave, (0, need - wave.shape[-1]))
    step = int(offs[1] - offs[0]) if len(offs) > 1 else 1
    regular = 1
    if step > 0 and offs[0] == 0:
        same = offs == np.arange(len(offs)) * step
        regular = len(offs) if same.all() else int(np.argmin(same))
    if offs[0] != 0 or step <= 0:
        regular = 0
    parts = []
    if regular:
        parts.append(wave.unfold(0, size, step)[:regular])
    if regular < len(offs):
        rest = torch.as_tensor(offs[regular:], device=wave.device)
        parts.append(wave[rest[:, None] + torch.arange(size, device=wave.device)])
    return torch.cat(parts) if len(parts) > 1 else parts[0].contiguous()


def frame_windows(wave: np.ndarray, sample_rate: int, starts_s: np.ndarray, window_s: float) -> np.ndarray:
    """Cut windows starting at ``starts_s`` seconds into a (W, window_samples) float32 array (zero-padded)."""
    t = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return frame_tensor(t, sample_rate, starts_s, window_s).numpy()


def as_tensor(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 1-D tensor sharing ``wave``'s memory where possible.

    Arrays from Ray's object store are read-only views of shared memory; torch warns that it cannot
    protect them from writes, but nothing here writes to an input wave, so the warning is silenced.
    """
    if isinstance(wave, torch.Tensor):
        return wave.float()
    arr = np.asarray(wave)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(arr)


@dataclass
class Segment:
    """Scores of one window."""

    start_s: float
    end_s: float
    scores: dict[str, float]


@dataclass
class FileResult:
    """The per-file result shared by `mpic predict`, `mpic evaluate` and the HTTP API."""

    file: str
    duration_s: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    instruments: list[str] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    silent: bool = False
    error: str | None = None

    def to_dict(self, *, segments: bool = True) -> dict[str, Any]:
        """JSON-serialisable form: the error shape when the file failed."""
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        out: dict[str, Any] = {
            "file": self.file,
            "duration_s": round(float(self.duration_s or 0.0), 3),
            "scores": {k: round(float(v), 4) for k, v in self.scores.items()},
            "instruments": list(self.instruments),
            "silent": self.silent,
        }
        if segments:
            out["segments"] = [
                {
                    "start_s": round(s.start_s, 3),
                    "end_s": round(s.end_s, 3),
                    "scores": {k: round(float(v), 4) for k, v in s.scores.items()},
                }
                for s in self.segments
            ]
        return out


def pick_device(gpu_ids: Sequence[Any] | None = None) -> torch.device:
    """The torch device for a worker: CUDA only when the scheduler assigned this process a GPU.

    Args:
        gpu_ids: GPUs assigned to this process (Ray's ``ray.get_gpu_ids()``); None means "not under a
            scheduler", and then a visible CUDA device is used.
    """
    if gpu_ids is not None:
        return torch.device("cuda") if len(gpu_ids) > 0 and torch.cuda.is_available() else torch.device("cpu")
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class Predictor:
    """All fold models of one member, scoring batches of windows."""

    def __init__(
        self,
        member: str,
        models: Sequence[Classifier],
        labels: Sequence[str],
        *,
        window_s: float,
        hop_s: float,
        aggregation: str = "mean",
        batch_size: int = 64,
        device: torch.device | str = "cpu",
    ) -> None:
        """Wrap fold models that share one spec (labels, front end, window)."""
        if not models:
            raise ValueError(f"member {member!r}: no models to predict with")
        rates = {m.sample_rate for m in models}
        if len(rates) != 1:
            raise ValueError(f"member {member!r}: fold models disagree on sample rate {sorted(rates)}")
        self.member = member
        self.device = torch.device(device)
        self.models = [m.to(self.device).eval() for m in models]
        self.labels = list(labels)
        self.sample_rate = rates.pop()
        self.window_s = window_s
        self.hop_s = hop_s
        self.aggregation = aggregation
        self.batch_size = batch_size
        # Fold models of a member share their front end's settings; when it has no learnt parameters the
        # spectrogram is computed once per batch instead of once per fold model (most of a window's cost
        # for small models).
        fe_configs = {_front_end_key(m) for m in self.models}
        self.shared_front_end = len(fe_configs) == 1 and None not in fe_configs
        # Likewise a frozen pretrained trunk (musicnn) common to the fold models runs once per batch and
        # only the trained heads run per fold model: the trunk is nearly all of such a member's cost.
        emb_keys = {_embedding_key(m) for m in self.models}
        self.shared_embedding = self.shared_front_end and len(emb_keys) == 1 and None not in emb_keys

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[str | Path],
        *,
        member: str | None = None,
        hop_s: float = 0.5,
        aggregation: str = "mean",
        batch_size: int = 64,
        device: torch.device | str = "cpu",
    ) -> Predictor:
        """Load fold checkpoints (files or folders holding ``model.pt``) of one member."""
        models, metas = [], []
        for p in paths:
            model, meta = load_classifier(p, device)
            models.append(model)
            metas.append(meta)
        if not metas:
            raise CheckpointError(f"no checkpoints given for member {member!r}")
        labels = metas[0].labels
        for p, meta in zip(paths, metas, strict=True):
            if meta.labels != labels:
                raise CheckpointError(f"{p}: labels {meta.labels} differ from {labels}")
        return cls(
            member or metas[0].member,
            models,
            labels,
            window_s=float(metas[0].spec["window_s"]),
            hop_s=hop_s,
            aggregation=aggregation,
            batch_size=batch_size,
            device=device,
        )

    @torch.inference_mode()
    def score_windows(self, windows: np.ndarray | torch.Tensor) -> np.ndarray:
        """Sigmoid scores averaged over fold models for (W, S) windows → (W, C) float32."""
        x = torch.as_tensor(windows, dtype=torch.float32)
        if x.ndim != 2:
            raise ValueError(f"windows must be (W, samples), got {tuple(x.shape)}")
        out = np.empty((x.shape[0], len(self.labels)), dtype=np.float32)
        for a in range(0, x.shape[0], self.batch_size):
            xb = x[a : a + self.batch_size].to(self.device, non_blocking=True)
            acc = torch.zeros(xb.shape[0], len(self.labels), device=self.device)
            if self.shared_embedding:
                emb = self.models[0].model.embed(self.models[0].front_end(xb))
                for m in self.models:
                    acc += torch.sigmoid(m.model.head_logits(emb).float())
            elif self.shared_front_end:
                feats = self.models[0].front_end(xb)
                for m in self.models:
                    acc += torch.sigmoid(m.model(feats).float())
            else:
                for m in self.models:
                    acc += torch.sigmoid(m(xb).float())
            out[a : a + xb.shape[0]] = (acc / len(self.models)).cpu().numpy()
        return out

    @torch.inference_mode()
    def score_songs(
        self, songs: Sequence[tuple[np.ndarray | torch.Tensor, int, np.ndarray]]
    ) -> list[np.ndarray]:
        """Window scores of whole songs, batched together → one (W_i, C) array per song.

        Each song is ``(wave, rate, starts_s)``: a mono wave at any ``rate`` (decoded once, not yet
        resampled) and its window starts in seconds. The wave is moved to this predictor's device, resampled
        to :attr:`sample_rate`, framed, and the windows of all songs go through :meth:`score_windows`
        together; everything between the upload and the scores runs on the device, with no loop over windows.
        Songs are grouped so that at most ``16 × batch_size`` windows are framed at once.
        """
        out: list[np.ndarray] = []
        group: list[torch.Tensor] = []
        budget = 16 * self.batch_size

        def flush() -> None:
            if group:
                scores = self.score_windows(torch.cat(group) if len(group) > 1 else group[0])
                out.extend(np.split(scores, np.cumsum([len(g) for g in group])[:-1]))
                group.clear()

        for wave, rate, starts in songs:
            t = as_tensor(wave).to(self.device, non_blocking=True)
            t = resample_tensor(t, int(rate), self.sample_rate)
            group.append(frame_tensor(t, self.sample_rate, starts, self.window_s))
            if sum(len(g) for g in group) >= budget:
                flush()
        flush()
        return out

    def windows_for(self, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(starts_s, windows) of one wave at this member's rate."""
        starts = window_starts(len(wave) / self.sample_rate, self.window_s, self.hop_s)
        return starts, frame_windows(wave, self.sample_rate, starts, self.window_s)

    def score_waves(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Window scores for several waves (at this member's rate), batched together → list of (W_i, C)."""
        framed = [self.windows_for(w)[1] for w in waves]
        if not framed:
            return []
        scores = self.score_windows(np.concatenate(framed))
        splits = np.cumsum([len(f) for f in framed])[:-1]
        return list(np.split(scores, splits))


def _front_end_key(model: Any) -> str | None:
    """A hashable identity of a classifier's front end, or None when it cannot be shared (learnt weights)."""
    fe = getattr(model, "front_end", None)
    if fe is None or not hasattr(model, "model") or any(True for _ in fe.parameters()):
        return None
    config = getattr(fe, "config", None)
    return None if config is None else config.model_dump_json()


def _embedding_key(model: Any) -> str | None:
    """A classifier's frozen-embedding identity (:meth:`ml.models.MpicModel.frozen_embedding_key`) or None."""
    key_fn = getattr(getattr(model, "model", None), "frozen_embedding_key", None)
    return key_fn() if callable(key_fn) else None


def member_dirs(runs_dir: str | Path, member: str) -> list[Path]:
    """The fold checkpoint folders of a trained member (``runs/<member>/fold<k>/model.pt``), sorted."""
    root = Path(runs_dir) / member
    return sorted(p.parent for p in root.glob(f"fold*/{MODEL_FILE}"))


def fuse_windows(
    member_windows: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    aggregation: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse members' (W, C) window scores of one file → (file scores (C,), fused windows (W, C)).

    File scores are the weighted mean of each member's aggregated scores (the quantity the fusion search
    optimises); segments are the weighted mean of window scores. Weights are normalised over the members
    given; members missing from ``member_windows`` or with weight 0 are ignored.
    """
    used = [m for m in member_windows if weights.get(m, 0.0) > 0]
    if not used:
        raise ValueError("no member with a positive weight")
    total = sum(weights[m] for m in used)
    n_w = min(len(member_windows[m]) for m in used)
    file_scores = sum(weights[m] / total * aggregate(member_windows[m], aggregation) for m in used)
    windows = sum(weights[m] / total * member_windows[m][:n_w] for m in used)
    return np.asarray(file_scores, dtype=np.float32), np.asarray(windows, dtype=np.float32)


def build_result(
    name: str,
    audio: Audio,
    file_scores: np.ndarray,
    windows: np.ndarray,
    starts_s: np.ndarray,
    labels: Sequence[str],
    thresholds: Sequence[float] | np.ndarray,
    window_s: float,
    *,
    max_instruments: int | None = None,
) -> FileResult:
    """Assemble a :class:`FileResult`; silent audio is flagged and gets no instruments.

    The instruments are the labels whose score reaches their threshold, at most ``max_instruments`` of
    them (the highest scores; :func:`ml.metrics.decide`), in label order.
    """
    scores = {c: float(s) for c, s in zip(labels, file_scores, strict=True)}
    # float32 thresholds against float32 scores, as the scores are computed (a score equal to its
    # threshold passes; comparing in float64 would round the two apart)
    th32 = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), (len(labels),))
    named = metrics.decide(np.asarray(file_scores, dtype=np.float32)[None, :], th32, max_instruments)[0]
    instruments = [] if audio.silent else [c for c, n in zip(labels, named, strict=True) if n]
    segments = [
        Segment(
            float(a),
            float(min(a + window_s, audio.duration_s)),
            dict(zip(labels, map(float, w), strict=True)),
        )
        for a, w in zip(starts_s, windows, strict=False)
    ]
    return FileResult(
        file=name,
        duration_s=audio.duration_s,
        scores=scores,
        instruments=instruments,
        segments=segments,
        silent=audio.silent,
    )


class EnsemblePredictor:
    """In-process fused prediction over member :class:`Predictor` s.

    :meth:`predict` runs the one analysis pipeline of :func:`ml.service.analyze` (the HTTP API's) through
    an in-process :class:`~ml.service.LocalBackend`, so `mpic predict`, batch jobs and HTTP give the same
    results for the same file.
    """

    def __init__(
        self,
        predictors: Mapping[str, Predictor],
        weights: Mapping[str, float],
        thresholds: Sequence[float] | np.ndarray,
        aggregation: str,
        *,
        cfg: Any = None,
        spec: Any = None,
    ) -> None:
        """Combine member predictors; they must agree on labels and windowing.

        Args:
            predictors: Member name → predictor.
            weights: Member name → fusion weight.
            thresholds: Per-class thresholds (label order).
            aggregation: Window aggregation of the fused file scores.
            cfg: The :class:`~ml.config.Config` the pipeline runs with (limits, windows); needed by
                :meth:`predict`.
            spec: The :class:`~ml.ensemble.EnsembleSpec` these came from (named in every answer).
        """
        if not predictors:
            raise ValueError("an ensemble needs at least one member")
        first = next(iter(predictors.values()))
        for p in predictors.values():
            if p.labels != first.labels:
                raise ValueError(f"member {p.member!r} has labels {p.labels}, expected {first.labels}")
            if (p.window_s, p.hop_s) != (first.window_s, first.hop_s):
                raise ValueError(f"member {p.member!r} windows differ from {first.member!r}'s")
        unknown = sorted(set(weights) - set(predictors))
        if unknown:
            raise ValueError(f"weights for unknown members {unknown}; valid: {sorted(predictors)}")
        self.predictors = dict(predictors)
        self.weights = {m: float(weights.get(m, 0.0)) for m in predictors}
        self.labels = first.labels
        self.window_s, self.hop_s = first.window_s, first.hop_s
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        self.aggregation = aggregation
        self.cfg = cfg
        self.spec = spec
        # the spec's cap on the instruments named per file (none without a spec)
        self.max_instruments: int | None = getattr(spec, "max_instruments", None)

    def warm_up(self, seconds: float = 2.0) -> None:
        """Run every member once on silence so the first real request pays no one-off set-up costs."""
        for p in self.predictors.values():
            p.score_waves([np.zeros(int(seconds * p.sample_rate), dtype=np.float32)])

    def predict(
        self, sources: Sequence[tuple[str, Any]], weights: Mapping[str, float] | None = None
    ) -> list[FileResult]:
        """Predict named sources (path or bytes); a failing file gets an error result, the rest still run."""
        if self.cfg is None:
            raise ValueError("EnsemblePredictor.predict needs the config it runs with (see load_ensemble)")
        from ml.service import LocalBackend, RunSettings, analyze_sources

        settings = RunSettings(
            dict(self.weights if weights is None else weights),
            tuple(float(t) for t in self.thresholds),
            self.aggregation,
            max_instruments=self.max_instruments,
        )
        return analyze_sources(self.cfg, LocalBackend(self.predictors), sources, settings=settings)


def select_checkpoints(paths: Sequence[Path], fold_models: str) -> list[Path]:
    """All fold checkpoints, or (``best``) the one with the lowest validation loss."""
    paths = list(paths)
    if fold_models == "all" or len(paths) <= 1:
        return paths
    from ml.checkpoint import read_checkpoint

    def val_loss(p: Path) -> float:
        return float(read_checkpoint(p)[1].metrics.get("val_loss", math.inf))

    return [min(paths, key=val_loss)]


def load_member(
    cfg: Any,
    member: str,
    *,
    checkpoints: Sequence[str | Path] | None = None,
    device: torch.device | str = "cpu",
    allow_untrained: bool = False,
) -> Predictor:
    """Build one member's :class:`Predictor` from the fold checkpoints an ensemble spec names.

    Args:
        cfg: The project :class:`~ml.config.Config`.
        member: Member name from ``cfg.members``.
        checkpoints: The fold checkpoints (:func:`ml.ensemble.member_checkpoints`); nothing is looked
            up in ``runs_dir`` (which may hold a newer, unregistered training).
        device: Torch device for the models.
        allow_untrained: With no checkpoint, build the member from config with random weights (for
            trying the service before training); otherwise raise :class:`CheckpointError`.
    """
    if member not in cfg.members:
        raise KeyError(f"unknown member {member!r}; valid: {sorted(cfg.members)}")
    paths = [Path(p) for p in checkpoints] if checkpoints else []
    agg = cfg.members[member].aggregation
    inf = cfg.inference
    if paths:
        return Predictor.from_checkpoints(
            select_checkpoints(paths, inf.fold_models),
            member=member,
            hop_s=inf.hop_s,
            aggregation=agg,
            batch_size=inf.batch_size,
            device=device,
        )
    if not allow_untrained:
        raise CheckpointError(
            f"member {member!r}: the ensemble spec names no checkpoints (pass --untrained for random weights)"
        )
    from ml.models import build_classifier

    # Untrained members are deterministic (repeatable tests and demos) but differ from each other, so
    # weighting them still changes the fused scores.
    torch.manual_seed(zlib.crc32(member.encode()))
    model = build_classifier(cfg, member)
    return Predictor(
        member,
        [model],
        cfg.label_codes,
        window_s=inf.window_s,
        hop_s=inf.hop_s,
        aggregation=agg,
        batch_size=inf.batch_size,
        device=device,
    )


def load_ensemble(
    cfg: Any,
    spec: Any = None,
    *,
    device: torch.device | str = "cpu",
    allow_untrained: bool = False,
    members: Sequence[str] | None = None,
) -> EnsemblePredictor:
    """The in-process ensemble of ``spec`` (default: :func:`ml.ensemble.load_spec`, the champion).

    ``members`` loads only these (default: the spec's members with a positive weight).
    """
    from ml.ensemble import load_spec, member_checkpoints

    spec = spec or load_spec(cfg, allow_untrained=allow_untrained)
    names = list(members) if members else [m for m in spec.members if spec.weights.get(m, 0.0) > 0]
    predictors = {
        m: load_member(
            cfg,
            m,
            checkpoints=member_checkpoints(cfg, spec, m) or None,
            device=device,
            allow_untrained=allow_untrained,
        )
        for m in names
    }
    return EnsemblePredictor(
        predictors,
        {m: spec.weights.get(m, 0.0) for m in names},
        spec.thresholds or [cfg.inference.threshold] * len(cfg.labels),
        spec.aggregation,
        cfg=cfg,
        spec=spec,
    )
