"""Training data of one member's sample rate: clips, labels, folds, crops and held-out mixtures.

:func:`load_train_data` (or :func:`train_data_from_records` for an explicit clip list) decodes the training
split once into the clip cache and assigns folds (by recording, or one per sample-library family with
:func:`library_folds`). :class:`Cropper` draws the random training crops, labelled by the instruments active
in them; :func:`heldout_mixtures` builds polyphonic out-of-fold examples from held-out clips only. The
training loop that uses them is :mod:`ml.train`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml.config import Config
from ml.data.activity import HOP_S as ACTIVITY_HOP_S
from ml.data.cache import ClipStore, build_store
from ml.data.irmas import GENRES, build_manifest
from ml.data.manifest import ClipRecord, Manifest
from ml.inference import frame_windows, window_starts


@dataclass
class TrainData:
    """The training split of the manifest, decoded at one sample rate, with fold assignments."""

    manifest: Manifest
    store: ClipStore
    targets: np.ndarray  # (N, C) float32 multi-hot
    genre: np.ndarray  # (N,) int64, -1 unknown
    folds: np.ndarray  # (N,) int64
    # (N, C, F) per-label activity in [0, 1] at ACTIVITY_HOP_S frames (clips whose generator recorded
    # it; zeros elsewhere) and (N,) which clips have it: a crop's labels are those active in the crop.
    activity: np.ndarray | None = None
    has_activity: np.ndarray | None = None

    def split(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(train indices, validation indices) for ``fold``."""
        return np.flatnonzero(self.folds != fold), np.flatnonzero(self.folds == fold)


def load_train_data(cfg: Config, sample_rate: int, *, progress: bool = False) -> TrainData:
    """Manifest (with folds) of the training split, decoded once into the cache at ``sample_rate``."""
    manifest = build_manifest(cfg.data.root, cfg.label_codes, cache_path=cfg.data.cache_dir / "manifest.csv")
    train = [r for r in manifest.records if r.split == "train"]
    if not train:
        raise ValueError(
            f"no training clips under {cfg.data.root} (expected IRMAS-TrainingData/<code>/*.wav)"
        )
    return train_data_from_records(cfg, manifest.root, train, sample_rate, progress=progress)


def library_folds(records: Sequence[ClipRecord], k: int) -> list[ClipRecord]:
    """One fold per sample-library family (sorted by name): each fold validates on sounds unheard in training.

    Raises:
        ValueError: If a clip has no recorded library, or the families are not exactly ``k``.
    """
    from dataclasses import replace

    from ml.data.libraries import library_family

    unknown = [r.path for r in records if not r.library]
    if unknown:
        raise ValueError(
            f"folds.by=library needs each clip's sample library; {len(unknown)} clip(s) have none "
            f"(e.g. {unknown[0]!r}): use folds.by=recording for real recordings"
        )
    families = sorted({library_family(r.library) for r in records})
    if len(families) != k:
        raise ValueError(
            f"folds.by=library: folds.k is {k} but the training data holds {len(families)} library "
            f"families {families}; set folds.k={len(families)}"
        )
    index = {f: i for i, f in enumerate(families)}
    return [replace(r, fold=index[library_family(r.library)]) for r in records]


def train_data_from_records(
    cfg: Config,
    root: str | Path,
    records: Sequence[ClipRecord],
    sample_rate: int,
    *,
    progress: bool = False,
) -> TrainData:
    """Training data from an explicit list of training clips (e.g. every library but a held-out one).

    Folds are assigned among ``records`` only (stratified, grouped by source recording), so validation and
    out-of-fold predictions never see a clip outside them.
    """
    from ml.data.activity import load_activity
    from ml.data.folds import assign_folds

    if cfg.folds.by == "library":
        recs = library_folds(records, cfg.folds.k)
    else:
        recs = assign_folds(records, cfg.label_codes, k=cfg.folds.k, seed=cfg.folds.seed)
    m = Manifest(root=root, records=list(recs))
    paths = [m.abspath(r) for r in m.records]
    store = build_store(paths, sample_rate, cfg.data.cache_dir, progress=progress)
    genre_index = {g: i for i, g in enumerate(GENRES)}
    targets = m.label_matrix(cfg.label_codes)
    acts = [load_activity(p, cfg.label_codes) for p in paths]
    activity = has_activity = None
    if any(a is not None for a in acts):
        n_frames = max(a.shape[1] for a in acts if a is not None)
        activity = np.zeros((len(acts), len(cfg.label_codes), n_frames), np.float32)
        has_activity = np.zeros(len(acts), bool)
        for i, a in enumerate(acts):
            if a is not None:
                activity[i, :, : a.shape[1]] = a
                has_activity[i] = True
    return TrainData(
        manifest=m,
        store=store,
        targets=targets,
        genre=np.array([genre_index.get(r.genre or "", -1) for r in m.records], dtype=np.int64),
        folds=np.array([-1 if r.fold is None else r.fold for r in m.records], dtype=np.int64),
        activity=activity,
        has_activity=has_activity,
    )


class Cropper:
    """Draws random fixed-length crops of cached clips as one batched gather (no per-clip Python loop).

    With per-label activity (``TrainData.activity``) each crop is labelled with the clip's labels that
    are active for at least ``min_active`` of the crop: a stem resting during a 1-s crop is not a label
    of that crop.

    Args:
        data: The training clips (their decoded store, targets and optional activity).
        crop: Crop length in samples (clips shorter than that wrap around inside themselves).
        device: Where the drawn batches are put.
        min_active: Share of a crop a label must be active for to stay a label of that crop (clips with
            recorded activity only).
    """

    def __init__(self, data: TrainData, crop: int, device: torch.device, min_active: float) -> None:
        store = data.store
        self.data = torch.from_numpy(np.asarray(store.data))  # shares the memmap's pages
        self.offsets = torch.from_numpy(store.offsets[:-1].copy())
        self.lengths = torch.from_numpy(store.lengths.copy())
        self.targets = torch.from_numpy(data.targets)
        self.crop = crop
        self.device = device
        self.ar = torch.arange(crop)
        self.frames_per_s = 1.0 / ACTIVITY_HOP_S
        self.sample_rate = store.sample_rate
        self.min_active = min_active
        self.cum: torch.Tensor | None = None
        if data.activity is not None and data.has_activity is not None:
            act = torch.from_numpy(data.activity)  # (N, C, F)
            # cumulative sums → the active fraction of any frame range in O(1)
            self.cum = torch.cat([torch.zeros(*act.shape[:2], 1), act.cumsum(dim=2)], dim=2)
            self.known = torch.from_numpy(data.has_activity)

    def __call__(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(waves (B, crop), targets (B, C)) of random crops of clips ``idx``, on the device."""
        lengths = self.lengths[idx]
        room = (lengths - self.crop).clamp(min=0)
        start = (torch.rand(len(idx), generator=gen) * (room + 1).float()).long()
        # wrap inside the clip when it is shorter than the crop (never read the neighbour clip)
        pos = (start[:, None] + self.ar[None, :]) % lengths[:, None]
        waves = self.data[self.offsets[idx][:, None] + pos].to(self.device, non_blocking=True)
        return waves, self._targets(idx, start, lengths).to(self.device)

    def _targets(self, idx: torch.Tensor, start: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        target = self.targets[idx]
        if self.cum is None:
            return target
        n_frames = self.cum.shape[2] - 1
        f0 = (start.double() / self.sample_rate * self.frames_per_s).floor().long().clamp(0, n_frames - 1)
        end = (start + self.crop).clamp(max=lengths)
        f1 = (end.double() / self.sample_rate * self.frames_per_s).ceil().long().clamp(1, n_frames)
        f1 = torch.maximum(f1, f0 + 1)
        cum = self.cum[idx]  # (B, C, F+1)
        active = (
            cum.gather(2, f1[:, None, None].expand(-1, cum.shape[1], 1))
            - cum.gather(2, f0[:, None, None].expand(-1, cum.shape[1], 1))
        ).squeeze(2) / (f1 - f0)[:, None].float()
        keep = (active >= self.min_active).float()
        known = self.known[idx][:, None]
        return torch.where(known, target * keep, target)


def _clip_windows(
    store: ClipStore, idx: np.ndarray, window_s: float, hop_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """All windows of clips ``idx`` → (windows (W, S), owner clip position (W,))."""
    return _wave_windows([store.clip(int(i)) for i in idx], store.sample_rate, window_s, hop_s)


def _wave_windows(
    waves: list[np.ndarray], sr: int, window_s: float, hop_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """All windows of ``waves`` → (windows (W, S), owner wave position (W,))."""
    chunks, owner = [], []
    for j, wave in enumerate(waves):
        starts = window_starts(len(wave) / sr, window_s, hop_s)
        chunks.append(frame_windows(wave, sr, starts, window_s))
        owner.append(np.full(len(starts), j))
    return np.concatenate(chunks), np.concatenate(owner)


MIX_PREFIX = "mix"


def heldout_mixtures(
    store: ClipStore,
    targets: np.ndarray,
    idx: np.ndarray,
    paths: list[str],
    *,
    per_clip: int,
    seed: int,
    max_partners: int = 2,
    partner_gain_db: tuple[float, float] = (-6.0, 0.0),
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Polyphonic examples built only from held-out clips: each clip mixed with 1–``max_partners`` others.

    Partners are held-out clips whose labels are disjoint from the mixture's so far; each part is
    RMS-normalised, partners sit ``partner_gain_db`` below the lead clip (the IRMAS test excerpts have one
    predominant instrument and quieter others). The choice depends only on the clips' labels and
    ``seed``, so members at different sample rates get the same mixtures (their OOF rows align by name).

    Args:
        store: The decoded clips.
        targets: (N, C) multi-hot labels of every clip in ``store``.
        idx: Held-out clip indices.
        paths: Their manifest paths (``paths[j]`` belongs to ``idx[j]``), used to name the mixtures.
        per_clip: Mixtures led by each held-out clip.
        seed: RNG seed (derive it from the fold).
        max_partners: At most this many clips join the lead clip.
        partner_gain_db: Range of the partners' level relative to the lead (dB).

    Returns:
        (waves, (M, C) labels, names ``mix<r>:<lead>+<partner>…``).
    """
    rng = np.random.default_rng(seed)
    held = targets[idx] > 0
    waves: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    names: list[str] = []
    for j in range(len(idx)):
        for r in range(per_clip):
            labels = held[j].copy()
            parts = [j]
            for _ in range(int(rng.integers(1, max_partners + 1))):
                free = np.flatnonzero(~(held & labels).any(axis=1))
                if len(free) == 0:
                    break
                c = int(free[rng.integers(len(free))])
                parts.append(c)
                labels |= held[c]
            if len(parts) == 1:
                continue
            lead = store.clip(int(idx[j])).astype(np.float32)
            mix = np.zeros_like(lead)
            for k, c in enumerate(parts):
                w = lead if k == 0 else np.resize(store.clip(int(idx[c])).astype(np.float32), len(lead))
                gain = 1.0 if k == 0 else 10 ** (rng.uniform(*partner_gain_db) / 20)
                mix += gain * w / (np.sqrt(np.mean(w**2)) + 1e-8)
            waves.append(mix / (np.abs(mix).max() + 1e-8))
            ys.append(labels.astype(np.float32))
            names.append(f"{MIX_PREFIX}{r}:" + "+".join(paths[c] for c in parts))
    n_labels = targets.shape[1]
    return waves, (np.stack(ys) if ys else np.zeros((0, n_labels), np.float32)), names
