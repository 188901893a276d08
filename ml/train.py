"""Training of one (member, fold): plain PyTorch, no Ray inside.

:func:`fit` is the whole loop; the caller injects :class:`Hooks` to report per-epoch metrics and
checkpoints (Ray Train's ``ray.train.report`` in `ray_jobs/train.py`, a local folder in tests and the
CLI) and to find the checkpoint to resume from. Clips come from the decode-once cache
(:mod:`ml.train_data`); each step draws random ``crop_s`` crops of the training clips, mixes/augments the
batch on the device, featurises it with the member's front end (SpecAugment in training mode) and takes a
BCE step. Validation scores every window of the held-out fold's clips, which also gives the out-of-fold
predictions the fusion is fitted on (written with :func:`ml.oof.save_oof`).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ml import metrics
from ml.augment import Batch, build_augmenter
from ml.checkpoint import MODEL_FILE, CheckpointMeta, save_classifier
from ml.config import Config
from ml.fusion import aggregate
from ml.head_cache import EmbeddingCache, build_cache, has_frozen_trunk, window_embeddings
from ml.inference import pick_device
from ml.models import Classifier, build_classifier, classifier_spec
from ml.oof import OOF_FILE, save_oof
from ml.train_data import Cropper, TrainData, _clip_windows, _wave_windows, heldout_mixtures, load_train_data

STATE_FILE = "train_state.pt"
# With train.head_views, the share of time_budget_s kept for the head's steps: the views stop at the rest
# (after the pass that crosses it) and the head trains until the budget is spent, but at least this share.
HEAD_BUDGET_SHARE = 1 / 3


class Hooks(Protocol):
    """How a training run talks to its runner."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """Publish one epoch's metrics and (optionally) a checkpoint folder (copied by the runner)."""

    def latest_checkpoint(self) -> Path | None:
        """A folder holding the checkpoint to resume from, or None for a fresh start."""


class LocalHooks:
    """Hooks for running without Ray: checkpoints kept in ``folder``, metrics to a callback."""

    def __init__(
        self, folder: str | Path, on_report: Callable[[dict[str, float]], None] | None = None
    ) -> None:
        """Keep the newest checkpoint in ``folder/checkpoint``."""
        self.folder = Path(folder)
        self.on_report = on_report
        self.history: list[dict[str, float]] = []

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """Record metrics; copy the checkpoint folder over the previous one."""
        self.history.append(dict(metrics))
        if self.on_report:
            self.on_report(metrics)
        if checkpoint_dir is not None:
            dest = self.folder / "checkpoint"
            tmp = self.folder / "checkpoint.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint_dir, tmp)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)

    def latest_checkpoint(self) -> Path | None:
        """The kept checkpoint folder, if any."""
        p = self.folder / "checkpoint"
        return p if (p / STATE_FILE).is_file() else None


@dataclass
class FitResult:
    """Outcome of one (member, fold)."""

    member: str
    fold: int
    best_epoch: int
    epochs_run: int
    metrics: dict[str, float]
    model_path: Path
    oof_path: Path
    history: list[dict[str, float]] = field(default_factory=list)


@torch.inference_mode()
def _score(model: Classifier, windows: np.ndarray, device: torch.device, batch: int) -> np.ndarray:
    model.eval()
    out = []
    for a in range(0, len(windows), batch):
        x = torch.from_numpy(windows[a : a + batch]).to(device)
        out.append(model(x).float().cpu())
    return torch.cat(out).numpy()  # logits


def _validate(
    model: Classifier, data: TrainData, val_idx: np.ndarray, cfg: Config, device: torch.device, hop_s: float
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Window-level BCE and clip-level metrics (mean aggregation, fixed threshold) on the held-out fold."""
    windows, owner = _clip_windows(data.store, val_idx, cfg.inference.window_s, hop_s)
    logits = _score(model, windows, device, cfg.inference.batch_size)
    return _val_metrics(logits, owner, data.targets[val_idx], cfg.inference.threshold)


def _val_metrics(
    logits: np.ndarray, owner: np.ndarray, y: np.ndarray, threshold: float
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Validation metrics of window logits (W, C) whose clip positions are ``owner``; clip labels ``y``."""
    y_win = y[owner]
    loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(y_win)))
    probs = 1.0 / (1.0 + np.exp(-logits))
    per_clip = [probs[owner == j] for j in range(len(y))]
    clip_scores = np.stack([aggregate(w, "mean") for w in per_clip])
    y_pred = (clip_scores >= threshold).astype(np.float32)
    return {
        "val_loss": loss,
        "val_micro_f1": float(metrics.micro_f1(y, y_pred)),
        "val_macro_f1": float(metrics.macro_f1(y, y_pred)),
        "val_lrap": float(metrics.lrap(y, clip_scores)),
    }, per_clip


def smooth_targets(target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Training targets pulled towards 1/2: ``y (1 - ls) + ls / 2`` (unchanged when ``ls`` is 0).

    Args:
        target: (B, C) multi-label targets in [0, 1].
        label_smoothing: ``train.label_smoothing`` in [0, 1).
    """
    return target * (1.0 - label_smoothing) + 0.5 * label_smoothing if label_smoothing else target


def build_optimizer(model: Classifier, tc: Any, net: torch.nn.Module | None = None) -> torch.optim.Optimizer:
    """The optimiser of a classifier (``tc``: its member's training config).

    The network's parameter groups (:meth:`ml.models.MpicModel.param_groups`: a pretrained trunk may train
    at a fraction of ``tc.lr``); any other trainable parameter (the front end's) trains at ``tc.lr``.

    Args:
        model: The classifier (:class:`ml.models.Classifier`).
        tc: Its training config (``optimizer``, ``lr``, ``weight_decay``).
        net: ``model`` as trained, when wrapped for data parallelism (its parameters are ``model``'s).
    """
    net = model if net is None else net
    groups = model.model.param_groups(tc.lr)
    grouped = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in grouped]
    params = groups + ([{"params": rest}] if rest else [])
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)


def fit(
    cfg: Config,
    member: str,
    fold: int,
    *,
    out_dir: str | Path,
    hooks: Hooks | None = None,
    data: TrainData | None = None,
    device: torch.device | None = None,
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> FitResult:
    """Train ``member`` on every fold but ``fold``, validate on ``fold``, save model and OOF predictions.

    Early stopping (best weights restored) and LR-on-plateau on ``train.monitor`` (validation loss in the
    seed recipe; validation LRAP by default, see config.yml);
    a checkpoint (model, optimiser, scheduler, early-stopping state, RNG) is reported every epoch so a
    failed worker resumes where it stopped.

    Args:
        cfg: Project configuration.
        member: Member name (architecture + front end + recipe).
        fold: The held-out fold.
        out_dir: Where ``model.pt`` (best weights, self-describing) and ``oof.npz`` are written.
        hooks: Reporting/resume hooks (default: local checkpoints under ``out_dir``).
        data: Pre-loaded training data at the member's sample rate (loaded when None).
        device: Torch device (default: CUDA if visible, else CPU).
        prepare_model: Wraps the model for distributed training (Ray's ``prepare_model``).
        shard: (rank, world size) of data-parallel training: every rank shuffles with the same seed (so
            the epoch permutation agrees) and takes every ``world``-th batch index, i.e. a disjoint shard.

    Returns:
        The best epoch's metrics and the paths of the written files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hooks = hooks or LocalHooks(out_dir)
    device = device or pick_device()
    tc = cfg.member_train(member)
    mcfg = cfg.members[member]

    def smooth(target: torch.Tensor) -> torch.Tensor:
        return smooth_targets(target, tc.label_smoothing)

    if tc.torch_threads:
        torch.set_num_threads(tc.torch_threads)
    torch.manual_seed(tc.seed * 1000 + fold)
    model = build_classifier(cfg, member, window_s=tc.crop_s).to(device)
    spec = classifier_spec(cfg, member)
    sr = model.sample_rate
    data = data or load_train_data(cfg, sr)
    if data.store.sample_rate != sr:
        raise ValueError(f"training data is at {data.store.sample_rate} Hz, member {member!r} needs {sr} Hz")
    train_idx, val_idx = data.split(fold)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(f"fold {fold}: {len(train_idx)} training and {len(val_idx)} validation clips")
    augmenter = build_augmenter(mcfg.augment, sr, where=f"members.{member}.augment").to(device)
    net = prepare_model(model) if prepare_model else model
    opt = build_optimizer(model, tc, net)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=tc.lr_factor, patience=tc.lr_patience, min_lr=tc.min_lr
    )
    use_amp = tc.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    gen = torch.Generator().manual_seed(tc.seed * 7919 + fold)  # same on every rank: shards stay disjoint
    crop = round(tc.crop_s * sr)
    cropper = Cropper(data, crop, device, tc.crop_min_active)
    genre = torch.from_numpy(data.genre)
    tempo = torch.from_numpy(data.store.tempo.astype(np.float32))
    rank, world = shard
    steps = tc.steps_per_epoch or max(1, math.ceil(len(train_idx) / (tc.batch_size * world)))

    start_epoch, best_loss, bad_epochs, best_epoch = 0, math.inf, 0, -1
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    resume = hooks.latest_checkpoint()
    if resume is not None:
        st = torch.load(resume / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        gen.set_state(st["generator"])
        start_epoch, best_loss, bad_epochs = (
            int(st["epoch"]) + 1,
            float(st["best_loss"]),
            int(st["bad_epochs"]),
        )
        best_epoch, best_state = int(st["best_epoch"]), st["best_state"]
        history = [dict(h) for h in json.loads(st["history"])]

    train_t = torch.from_numpy(train_idx)
    spent = sum(h.get("train_s", 0.0) for h in history)  # training-step seconds so far (for time_budget_s)
    budget = tc.time_budget_s

    def draw(idx: torch.Tensor, g: torch.Generator) -> Batch:
        wave, target = cropper(idx, g)
        batch = Batch(wave=wave, target=target, genre=genre[idx].to(device), tempo=tempo[idx].to(device))
        return augmenter(batch, g)

    # A frozen pretrained trunk: embed augmented views once, then train only the head (ml/head_cache.py).
    # Data-parallel ranks would each train the head outside the DDP wrapper, so they keep the full path.
    cache: EmbeddingCache | None = None
    val_emb: torch.Tensor | None = None
    if tc.head_views and world == 1 and has_frozen_trunk(model):
        model.train()
        augmenter.train()
        cache = build_cache(
            model,
            draw,
            train_t,
            views=tc.head_views,
            batch_size=tc.batch_size,
            seed=tc.seed * 7919 + fold + 1,
            time_budget_s=None if budget is None else budget * (1 - HEAD_BUDGET_SHARE),
        )
        val_windows, val_owner = _clip_windows(
            data.store, val_idx, cfg.inference.window_s, tc.val_windows_hop_s
        )
        val_emb = window_embeddings(model, val_windows, device, cfg.inference.batch_size)
        train_t = torch.arange(len(cache))
        if budget is not None:  # the head's steps get what the views left, and at least their share
            budget = max(budget - cache.seconds, budget * HEAD_BUDGET_SHARE)
        steps = math.ceil(len(cache) / tc.batch_size)  # steps of one pass over the cached views
    for epoch in range(start_epoch, tc.epochs):
        net.train()
        augmenter.train()
        t_epoch = time.perf_counter()
        t_data = 0.0
        loss_sum = 0.0
        steps_done = 0
        perm = train_t[torch.randperm(len(train_t), generator=gen)][rank::world]
        if cache is not None:  # head_passes passes over the cache, each in its own order
            perm = torch.cat(
                [perm]
                + [train_t[torch.randperm(len(train_t), generator=gen)] for _ in range(tc.head_passes - 1)]
            )
        for step in range(steps * (tc.head_passes if cache is not None else 1)):
            if budget is not None and steps_done and spent + time.perf_counter() - t_epoch >= budget:
                break
            t0 = time.perf_counter()
            a = (step * tc.batch_size) % len(perm)
            idx = perm[a : a + tc.batch_size]
            if len(idx) < min(tc.batch_size, len(perm)):  # wrap so every step has a full batch
                idx = torch.cat([idx, perm[: tc.batch_size - len(idx)]])
            if cache is not None:
                emb, target = cache.emb[idx], cache.target[idx]
                t_data += time.perf_counter() - t0
                logits = model.model.head_logits(emb)
                loss = F.binary_cross_entropy_with_logits(logits.float(), smooth(target))
            else:
                wave, target = cropper(idx, gen)
                batch = Batch(
                    wave=wave,
                    target=target,
                    genre=genre[idx].to(device),
                    tempo=tempo[idx].to(device),
                )
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t_data += time.perf_counter() - t0
                batch = augmenter(batch, gen)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    logits = net(batch.wave)
                    loss = F.binary_cross_entropy_with_logits(logits.float(), smooth(batch.target))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += float(loss.detach())
            steps_done += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_time = time.perf_counter() - t_epoch
        spent += train_time
        out_of_time = budget is not None and spent >= budget
        if cache is not None and val_emb is not None:
            model.eval()
            with torch.no_grad():
                val_logits = model.model.head_logits(val_emb).float().cpu().numpy()
            val, _ = _val_metrics(val_logits, val_owner, data.targets[val_idx], cfg.inference.threshold)
        else:
            val, _ = _validate(model, data, val_idx, cfg, device, tc.val_windows_hop_s)
        # lower is better: the loss as is, scores (LRAP, F1) negated
        score = val[tc.monitor] if tc.monitor == "val_loss" else -val[tc.monitor]
        sched.step(score)
        improved = score < best_loss - 1e-6
        if improved:
            best_loss, bad_epochs, best_epoch = score, 0, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        row = {
            "epoch": float(epoch),
            "train_loss": loss_sum / steps_done,
            **val,
            "lr": float(opt.param_groups[0]["lr"]),
            "samples_per_s": steps_done * tc.batch_size / train_time,
            "data_share": t_data / train_time,
            "train_s": train_time,
            "samples": float(steps_done * tc.batch_size),
            "torch_threads": float(torch.get_num_threads()),
            "best_score": abs(best_loss),
        }
        if cache is not None:
            row.update(cache_views=float(cache.views), cache_s=cache.seconds, cache_size=float(len(cache)))
        history.append(row)
        stop = bad_epochs >= tc.early_stopping_patience or epoch == tc.epochs - 1 or out_of_time
        with tempfile.TemporaryDirectory(prefix="mpic-ckpt-") as tmp:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "generator": gen.get_state(),
                    "epoch": epoch,
                    "best_loss": best_loss,
                    "bad_epochs": bad_epochs,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "history": json.dumps(history),
                },
                Path(tmp) / STATE_FILE,
            )
            hooks.report(row, Path(tmp))
        if stop:
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    best = history[best_epoch] if 0 <= best_epoch < len(history) else history[-1]
    model_path = save_classifier(
        out_dir / MODEL_FILE,
        model,
        CheckpointMeta(
            spec=spec,
            member=member,
            fold=fold,
            epoch=best_epoch,
            metrics={k: v for k, v in best.items() if k.startswith("val_")},
        ),
    )
    # Out-of-fold window scores at the serving window/hop: the fusion search aggregates them itself.
    # The trained network already fits serving windows unless it was built for another crop length.
    model_eval = model
    if tc.crop_s != cfg.inference.window_s:
        model_eval = build_classifier(cfg, member).to(device)
        model_eval.load_state_dict(model.state_dict())
    window_s, hop_s = cfg.inference.window_s, cfg.inference.hop_s
    windows, owner = _clip_windows(data.store, val_idx, window_s, hop_s)
    # The held-out clips' windows were embedded for validation already: score them with the (best) head
    # instead of running the frozen trunk over them again; only the mixtures below need the whole model.
    reuse = (
        cache is not None and val_emb is not None and model_eval is model and tc.val_windows_hop_s == hop_s
    )
    n_clip_windows = len(windows) if reuse else 0
    oof_paths = [data.manifest.records[i].path for i in val_idx]
    y_oof = data.targets[val_idx]
    if tc.oof_mixtures:
        mixes, y_mix, mix_names = heldout_mixtures(
            data.store, data.targets, val_idx, oof_paths, per_clip=tc.oof_mixtures, seed=tc.seed * 1000 + fold
        )
        if mixes:
            mw, mo = _wave_windows(mixes, sr, window_s, hop_s)
            windows, owner = np.concatenate([windows, mw]), np.concatenate([owner, mo + len(val_idx)])
            oof_paths, y_oof = oof_paths + mix_names, np.concatenate([y_oof, y_mix])
    parts = []
    if reuse and val_emb is not None:
        model.eval()
        with torch.no_grad():
            parts.append(model.model.head_logits(val_emb).float().cpu().numpy())
    if len(windows) > n_clip_windows:
        parts.append(_score(model_eval, windows[n_clip_windows:], device, cfg.inference.batch_size))
    probs = 1.0 / (1.0 + np.exp(-np.concatenate(parts)))
    oof_path = save_oof(
        out_dir / OOF_FILE,
        paths=oof_paths,
        y_true=y_oof,
        window_scores=probs.astype(np.float32),
        owner=owner,
        labels=cfg.label_codes,
    )
    return FitResult(member, fold, best_epoch, len(history), best, model_path, oof_path, history)
