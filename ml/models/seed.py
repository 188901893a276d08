"""The seed's two CNNs (the Lumen 2023 solution), rebuilt faithfully in PyTorch.

Both end in Flatten → Dense, so they only accept the window size they were built for (``fixed_frames``):
1-s windows, which is how they were trained and how inference runs (windows of ``inference.window_s``).

Deliberate differences from the Keras originals, none of which changes the architecture:

* the heads emit logits for a multi-label sigmoid/BCE (model3 was trained with softmax);
* BatchNorm uses Keras' epsilon (1e-3) but PyTorch's running-statistics momentum (0.1, Keras' 0.99 is
  0.01 here), so short training runs still end with usable running statistics;
* Keras flattens (H, W, C) and PyTorch (C, H, W): the same Dense layer, with its inputs permuted;
* tensors are channels-last (1.3-2x faster on CPU), and on CPU eval batches run in chunks (``cpu_chunk``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from ml.models.base import MODELS, ModelArgs, MpicModel

_BN_EPS = 1e-3  # Keras' BatchNormalization default
_Pos = Annotated[int, Field(ge=1)]


def _pooled(size: int, pools: Sequence[int]) -> int:
    """Size after a chain of non-overlapping 'valid' max-pools (Keras' default: floor)."""
    for p in pools:
        size //= p
    return size


class Model2Args(ModelArgs):
    """Arguments of ``model2`` (section ``models.model2``); defaults are the seed's."""

    channels: tuple[_Pos, _Pos, _Pos, _Pos] = (64, 128, 256, 640)
    pools: tuple[_Pos, _Pos, _Pos, _Pos] = (2, 2, 3, 3)
    dense: Annotated[int, Field(ge=1)] = 1024
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.2
    dense_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5
    leaky_slope: Annotated[float, Field(ge=0, lt=1)] = 0.3
    cpu_chunk: Annotated[int, Field(ge=0)] = 8


@MODELS.register("model2")
class Model2(MpicModel):
    """The seed's CQT CNN ("model2"), about 8.9 M parameters at 96 x 87 (1 s of CQT at hop 256).

    Four blocks of [Conv 3x3 → Conv 3x3 → BatchNorm → LeakyReLU(0.3) → MaxPool → Dropout(0.2)] with 64 / 128 /
    256 / 640 channels and pools (2,2), (2,2), (3,3), (3,3) ('same' convolutions with bias, no activation
    between the two convolutions, as in the original); then Flatten → Dense 1024 → LeakyReLU → BatchNorm →
    Dropout(0.5) → Dense n_classes. At 96 x 87 the last block leaves 640 x 2 x 2 = 2560 features.
    """

    Args = Model2Args
    param_range = (8_500_000, 10_000_000)
    fixed_frames = True

    def __init__(self, n_classes: int, n_bins: int, n_frames: int, args: Model2Args) -> None:
        super().__init__(n_classes, n_bins, n_frames, args)
        self.cpu_chunk = args.cpu_chunk
        blocks: list[nn.Module] = []
        c_in = 1
        for c, p in zip(args.channels, args.pools, strict=True):
            blocks += [
                nn.Conv2d(c_in, c, 3, padding="same"),
                nn.Conv2d(c, c, 3, padding="same"),
                nn.BatchNorm2d(c, eps=_BN_EPS),
                nn.LeakyReLU(args.leaky_slope),
                nn.MaxPool2d(p),
                nn.Dropout(args.dropout),
            ]
            c_in = c
        self.features = nn.Sequential(*blocks)
        h, w = _pooled(n_bins, args.pools), _pooled(n_frames, args.pools)
        if h < 1 or w < 1:
            raise ValueError(f"model2: pools {list(args.pools)} leave nothing of {n_bins}x{n_frames} bins")
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * h * w, args.dense),
            nn.LeakyReLU(args.leaky_slope),
            nn.BatchNorm1d(args.dense, eps=_BN_EPS),
            nn.Dropout(args.dense_dropout),
            nn.Linear(args.dense, n_classes),
        )
        self.to(memory_format=torch.channels_last)  # oneDNN's fast CPU kernels; also what cuDNN+AMP prefer

    def logits(self, feats: Tensor) -> Tensor:
        """(B, 1, n_bins, n_frames) → (B, n_classes)."""
        return self.head(self.features(feats.contiguous(memory_format=torch.channels_last)))


class Model3Args(ModelArgs):
    """Arguments of ``model3`` (section ``models.model3``); defaults are the seed's."""

    channels: Annotated[tuple[tuple[_Pos, _Pos], ...], Field(min_length=1, max_length=6)] = (
        (8, 16),
        (24, 32),
        (64, 128),
        (256, 512),
    )
    pool: Annotated[int, Field(ge=1)] = 3
    dense: Annotated[int, Field(ge=1)] = 1024
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.25
    dense_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5
    leaky_slope: Annotated[float, Field(ge=0, lt=1)] = 0.33
    cpu_chunk: Annotated[int, Field(ge=0)] = 16


@MODELS.register("model3")
class Model3(MpicModel):
    """The seed's Mel CNN ("model3"), about 2.1 M parameters at 128 x 100 (or 101 centred frames).

    Four blocks of [Conv 3x3 (c1) → LeakyReLU(0.33) → Conv 3x3 (c2) → LeakyReLU(0.33) → MaxPool 3x3 →
    Dropout(0.25)] with channel pairs (8,16), (24,32), (64,128), (256,512); then Flatten → Dense 1024 →
    LeakyReLU → Dropout(0.5) → Dense n_classes (logits for a sigmoid head instead of the seed's softmax). At
    128 x 101 the pools leave 512 x 1 x 1 features.
    """

    Args = Model3Args
    param_range = (2_000_000, 4_000_000)
    fixed_frames = True

    def __init__(self, n_classes: int, n_bins: int, n_frames: int, args: Model3Args) -> None:
        super().__init__(n_classes, n_bins, n_frames, args)
        self.cpu_chunk = args.cpu_chunk
        blocks: list[nn.Module] = []
        c_in = 1
        for c1, c2 in args.channels:
            blocks += [
                nn.Conv2d(c_in, c1, 3, padding="same"),
                nn.LeakyReLU(args.leaky_slope),
                nn.Conv2d(c1, c2, 3, padding="same"),
                nn.LeakyReLU(args.leaky_slope),
                nn.MaxPool2d(args.pool),
                nn.Dropout(args.dropout),
            ]
            c_in = c2
        self.features = nn.Sequential(*blocks)
        pools = [args.pool] * len(args.channels)
        h, w = _pooled(n_bins, pools), _pooled(n_frames, pools)
        if h < 1 or w < 1:
            raise ValueError(f"model3's pools {pools} leave nothing of {n_bins}x{n_frames} features")
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * h * w, args.dense),
            nn.LeakyReLU(args.leaky_slope),
            nn.Dropout(args.dense_dropout),
            nn.Linear(args.dense, n_classes),
        )
        self.to(memory_format=torch.channels_last)  # oneDNN's fast CPU kernels; also what cuDNN+AMP prefer

    def logits(self, feats: Tensor) -> Tensor:
        """(B, 1, n_bins, n_frames) → (B, n_classes)."""
        return self.head(self.features(feats.contiguous(memory_format=torch.channels_last)))
