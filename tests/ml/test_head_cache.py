"""ml/head_cache.py: augmented views of the training clips embedded once, within the time budget."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from ml.augment import Batch
from ml.head_cache import build_cache

N_CLIPS, BATCH, SECONDS_PER_BATCH = 40, 4, 0.02  # 10 batches a pass, ~0.2 s a pass


class _SlowTrunk(nn.Module):
    """Stands in for a frozen trunk: the embedding is the wave's mean, and every call costs wall time."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(SECONDS_PER_BATCH)
        return x.mean(dim=1, keepdim=True)


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = _SlowTrunk()
        self.front_end = nn.Identity()


def _draw(idx: torch.Tensor, gen: torch.Generator) -> Batch:
    # the clip index as its wave, so the cache shows which clips each pass embedded
    wave = idx.float()[:, None].repeat(1, 8)
    target = torch.zeros(len(idx), 3)
    return Batch(wave, target, torch.full((len(idx),), -1), torch.full((len(idx),), float("nan")))


def _cache(views: int, budget: float | None):
    return build_cache(
        _Model(), _draw, torch.arange(N_CLIPS), views=views, batch_size=BATCH, seed=3, time_budget_s=budget
    )


def test_without_a_budget_every_view_is_a_whole_pass():
    cache = _cache(views=3, budget=None)
    assert cache.views == 3 and len(cache) == 3 * N_CLIPS
    for v in range(3):  # each pass is a permutation of all the clips
        clips = cache.emb[v * N_CLIPS : (v + 1) * N_CLIPS, 0]
        assert sorted(clips.long().tolist()) == list(range(N_CLIPS))


def test_a_budget_ends_a_later_pass_part_way_instead_of_overrunning():
    one_pass = N_CLIPS // BATCH * SECONDS_PER_BATCH
    budget = 1.5 * one_pass
    cache = _cache(views=10, budget=budget)
    assert 1 < cache.views < 2.5 and len(cache) == round(cache.views * N_CLIPS)
    # at most one batch beyond the budget (the check runs before each batch), not a whole pass
    assert cache.seconds < budget + 3 * SECONDS_PER_BATCH + 0.1
    first = cache.emb[:N_CLIPS, 0].long().tolist()
    assert sorted(first) == list(range(N_CLIPS))


def test_the_first_pass_always_completes():
    cache = _cache(views=5, budget=1e-6)
    assert cache.views == pytest.approx(1.0) and len(cache) == N_CLIPS
