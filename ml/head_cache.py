"""Training the head of a frozen pretrained trunk on cached embeddings.

A member whose network is a fixed pretrained trunk plus a small trained head (musicnn with
``freeze: true``) spends almost all of an end-to-end training step in the trunk, which never changes. On
a 2-core CPU the musicnn trunk costs ~16 ms per 1-s window, so a 60-s budget sees ~3,000 crops and the
linear head stops far from convergence. With ``train.head_views: N`` the trunk runs once per augmented
view instead: N passes over the training clips (random crops + the member's augmentation, mixing included,
drawn from their own seeded generator so a resumed trial rebuilds the same cache) become a table of
embeddings and crop targets, and the head trains for many cheap epochs on it. Validation windows are
embedded once too. The checkpoint is the usual whole classifier: inference does not know the difference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ml.augment import Batch


@dataclass
class EmbeddingCache:
    """Embeddings (N, D) of augmented training crops with their targets (N, C), on the training device."""

    emb: torch.Tensor
    target: torch.Tensor
    views: float  # passes over the training clips; a fraction when the budget ended one part-way
    seconds: float

    def __len__(self) -> int:
        return int(self.emb.shape[0])


def has_frozen_trunk(model: torch.nn.Module) -> bool:
    """Whether a :class:`ml.models.Classifier`'s network has a frozen embedding and a separate head."""
    key_fn = getattr(getattr(model, "model", None), "frozen_embedding_key", None)
    return callable(key_fn) and key_fn() is not None


@torch.no_grad()
def embed_waves(model: torch.nn.Module, waves: torch.Tensor, batch: int) -> torch.Tensor:
    """Frozen embeddings (B, D) of waves (B, S): the classifier's front end, then its trunk, in chunks."""
    net: Any = model.model
    front_end: Any = model.front_end
    out = [net.embed(front_end(w)) for w in waves.split(batch)]
    return torch.cat(out)


@torch.no_grad()
def build_cache(
    model: torch.nn.Module,
    draw: Callable[[torch.Tensor, torch.Generator], Batch],
    train_idx: torch.Tensor,
    *,
    views: int,
    batch_size: int,
    seed: int,
    time_budget_s: float | None,
) -> EmbeddingCache:
    """Embed ``views`` augmented passes over ``train_idx`` (fewer if ``time_budget_s`` runs out first).

    The first pass always completes (every clip is seen once); after it the budget is checked after every
    batch, so a pass the budget ends part-way adds a random subset of the clips (each pass is a fresh
    permutation) instead of overrunning the budget by up to a whole pass.

    Args:
        model: The classifier (front end + frozen trunk + head); put in training mode by the caller so the
            front end applies its training-time randomness, while the frozen trunk stays fixed.
        draw: Indices → an augmented :class:`Batch` (random crops, then the member's augmentation).
        train_idx: Training clip indices (1-D long tensor).
        views: Passes over the training clips.
        batch_size: Clips per drawn batch.
        seed: Seed of the view generator (the cache is the same on every resume of a trial).
        time_budget_s: Stop once this many seconds were spent, but not before the first pass is complete.

    Returns:
        The cache; ``views`` is the number of passes embedded (fractional when one was cut short).
    """
    gen = torch.Generator().manual_seed(seed)
    embs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    t0 = time.perf_counter()
    n = len(train_idx)
    embedded = 0  # crops embedded so far, over all passes

    def over_budget() -> bool:
        return time_budget_s is not None and time.perf_counter() - t0 >= time_budget_s

    for view in range(views):
        perm = train_idx[torch.randperm(n, generator=gen)]
        for a in range(0, n, batch_size):
            if view > 0 and over_budget():
                break
            b = draw(perm[a : a + batch_size], gen)
            embs.append(embed_waves(model, b.wave, batch_size))
            targets.append(b.target)
            embedded += len(b.target)
        if over_budget():
            break
    return EmbeddingCache(torch.cat(embs), torch.cat(targets), embedded / n, time.perf_counter() - t0)


def window_embeddings(
    model: torch.nn.Module, windows: np.ndarray, device: torch.device, batch: int
) -> torch.Tensor:
    """Frozen embeddings (W, D) of fixed windows (W, S) (validation), in evaluation mode."""
    model.eval()
    return embed_waves(model, torch.from_numpy(windows).to(device), batch)


__all__ = ["EmbeddingCache", "build_cache", "embed_waves", "has_frozen_trunk", "window_embeddings"]
