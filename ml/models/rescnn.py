"""``rescnn``: a small, fast residual CNN for log-mel (or CQT) features of any length.

A MobileNetV2/V3-style network sized for 1-s windows on a 2-core CPU (about 28 M multiply-adds per
96 x 100 window; a batch of 64 windows plus the ``mel_fast`` front end in well under 60 ms):

* per-frequency input normalisation (a BatchNorm over the bins, as PANNs' ``bn0``), so every band is
  standardised across the data set whatever the front end's ``norm``;
* a stride-2 3x3 stem, then four stages at 1/2, 1/4, 1/8 and 1/16 resolution with ``width/2``, ``width``,
  ``2 width`` and ``4 width`` channels; each stage after the first starts with a depthwise stride-2
  convolution (downsampling *before* the 1x1 expansion keeps the large tensors narrow) and continues with
  inverted-residual blocks (1x1 expand → depthwise 3x3 → squeeze-excitation in the last stages → 1x1
  project, identity skip);
* frequency-then-time pooling: mean over the remaining frequency rows, then mean + max over time (or
  per-class attention over time), so 1-s windows and 20-s excerpts run through the same weights;
* a small MLP head with dropout → logits.

Every convolution is followed by BatchNorm; in eval mode the BatchNorm is folded into the convolution on
the fly (one conv instead of conv + normalisation pass). Tensors are channels-last, which oneDNN's depthwise
kernels need to be fast on CPU (NCHW depthwise convolutions are up to 20x slower there) and which also suits
cuDNN with mixed precision.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ml.models.base import MODELS, ModelArgs, MpicModel


class ConvBN(nn.Module):
    """Conv2d (no bias) → BatchNorm2d → optional ReLU; the BatchNorm is folded into the conv in eval mode."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        """(B, c_in, H, W) → (B, c_out, H / stride, W / stride)."""
        bn = self.bn
        if self.training or bn.running_var is None or bn.running_mean is None:
            y = bn(self.conv(x))
        else:
            # y = (conv(x) - mean) * g / sqrt(var + eps) + b  ==  conv'(x) + b'  with a rescaled kernel
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            weight = self.conv.weight * scale.view(-1, 1, 1, 1)
            bias = bn.bias - bn.running_mean * scale
            c = self.conv
            y = F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), c.stride, c.padding, c.dilation, c.groups)
        return F.relu(y, inplace=True) if self.act else y


class SqueezeExcite(nn.Module):
    """Channel gating from global average statistics (Hu et al. 2018), sigmoid gate."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(channels, hidden)
        self.expand = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → same shape, each channel scaled by a gate in (0, 1)."""
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class InvertedResidual(nn.Module):
    """x + project(SE(depthwise(expand(x)))): MobileNetV2's block with an optional SE gate."""

    def __init__(self, channels: int, expansion: int, se: bool) -> None:
        super().__init__()
        hidden = channels * expansion
        self.expand: nn.Module = ConvBN(channels, hidden) if expansion > 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, 3, groups=hidden)
        self.se: nn.Module = SqueezeExcite(hidden, max(8, channels // 4)) if se else nn.Identity()
        self.project = ConvBN(hidden, channels, act=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class Downsample(nn.Module):
    """Depthwise 3x3 stride 2 (on the narrow input) → 1x1 to the next stage's width → ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.depthwise = ConvBN(c_in, c_in, 3, stride=2, groups=c_in, act=False)
        self.pointwise = ConvBN(c_in, c_out)

    def forward(self, x: Tensor) -> Tensor:
        """(B, c_in, H, W) → (B, c_out, ceil(H / 2), ceil(W / 2))."""
        return self.pointwise(self.depthwise(x))


_Blocks = Annotated[int, Field(ge=0, le=8)]


class ResCnnArgs(ModelArgs):
    """Arguments of ``rescnn`` (section ``models.rescnn``)."""

    width: Annotated[int, Field(ge=4, le=512)] = 32
    """Channels of the second stage; the four stages have width/2, width, 2 width and 4 width."""
    blocks: tuple[_Blocks, _Blocks, _Blocks, _Blocks] = (1, 1, 3, 2)
    """Inverted-residual blocks per stage (depth goes where the maps are small and compute is cheap)."""
    expansion: Annotated[int, Field(ge=1, le=8)] = 3
    """Hidden-width multiplier of the inverted-residual blocks of stages 2-4 (stage 1 uses 1)."""
    se: Annotated[int, Field(ge=0, le=4)] = 2
    """Squeeze-excitation in the blocks of the last ``se`` stages (0: none); at 1/4 resolution an SE gate
    costs ~15% of the network's time for little gain, so the default gates stages 3 and 4."""
    head_dim: Annotated[int, Field(ge=1)] | None = None
    """Hidden units of the MLP head (default 8 x width)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.2
    """Dropout before each layer of the head."""
    pooling: Literal["meanmax", "attention"] = "meanmax"
    """Over time after the frequency mean: mean + max, or per-class attention (softmax over frames)."""
    freq_norm: bool = True
    """BatchNorm over the input's frequency bins."""
    cpu_chunk: Annotated[int, Field(ge=0)] = 16
    """Eval-mode CPU batches run in chunks of this many examples (0: never); results are identical."""


@MODELS.register("rescnn")
class ResCnn(MpicModel):
    """Residual depthwise-separable CNN with squeeze-excitation; 0.41 M parameters at the defaults.

    Defaults (width 32, blocks [1, 1, 3, 2], expansion 3, SE in stages 3-4, head 256): 414 k parameters for
    11 classes, about 28 M multiply-adds per 96 x 100 window. Accepts any number of frames >= 16.
    """

    Args = ResCnnArgs
    param_range = (300_000, 600_000)
    min_frames = 16

    def __init__(self, n_classes: int, n_bins: int, n_frames: int, args: ResCnnArgs) -> None:
        super().__init__(n_classes, n_bins, n_frames, args)
        self.cpu_chunk = args.cpu_chunk
        w = args.width
        chans = [max(4, w // 2), w, 2 * w, 4 * w]
        self.freq_norm: nn.Module = nn.BatchNorm1d(n_bins) if args.freq_norm else nn.Identity()
        self.stem = ConvBN(1, chans[0], 3, stride=2)
        layers: list[nn.Module] = []
        c_in = chans[0]
        for stage, (c, n_blocks) in enumerate(zip(chans, args.blocks, strict=True)):
            if stage > 0:
                layers.append(Downsample(c_in, c))
            c_in = c
            for _ in range(n_blocks):
                se = stage >= len(chans) - args.se
                layers.append(InvertedResidual(c, args.expansion if stage > 0 else 1, se))
        self.body = nn.Sequential(*layers)
        hidden = args.head_dim or 8 * w
        self.pooling = args.pooling
        if args.pooling == "attention":
            self.att = nn.Conv1d(c_in, n_classes, 1)
            self.cla = nn.Conv1d(c_in, n_classes, 1)
            self.head: nn.Module = nn.Identity()
        else:
            self.head = nn.Sequential(
                nn.Dropout(args.dropout),
                nn.Linear(c_in, hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(args.dropout),
                nn.Linear(hidden, n_classes),
            )
        self.dropout = nn.Dropout(args.dropout)
        self.to(memory_format=torch.channels_last)

    def logits(self, feats: Tensor) -> Tensor:
        """(B, 1, n_bins, T) → (B, n_classes) for any T >= 16."""
        b, _, f, t = feats.shape
        x = self.freq_norm(feats.reshape(b, f, t)).reshape(b, 1, f, t)
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.body(self.stem(x))  # (B, 4 width, F / 16, T / 16)
        x = x.mean(dim=2)  # frequency first: (B, C, T')
        if self.pooling == "attention":
            x = self.dropout(x)
            att = torch.softmax(self.att(x).clamp(-10, 10), dim=-1)
            return (att * self.cla(x)).sum(dim=-1)
        return self.head(x.mean(dim=-1) + x.amax(dim=-1))
