"""``musicnn``: the pretrained musicnn tagger (Pons & Serra 2019) as a frozen trunk, plus a trainable head.

musicnn was trained on real recordings (MagnaTagATune, or the Million Song Dataset) to predict 50 tags from
3-s patches of its own log-mel input (:class:`ml.features.MusicnnMelFrontEnd`, kind ``musicnn_mel``). This
module is a PyTorch port of its graph (``musicnn/models.py``, ``build_musicnn`` with 64 mid-end filters and
200 back-end units) whose weights are read from the ``musicnn`` wheel's TF checkpoints
(:mod:`ml.pretrained.musicnn`); the test suite checks it against outputs of the original TensorFlow graph.

The network, on a (T frames x 96 mels) input:

* input BatchNorm (one channel);
* front end: two *timbral* convolutions spanning 7 frames x 38 / 67 mel bands (204 filters each, time padded
  by 3, frequency 'valid') and three *temporal* convolutions spanning 128 / 64 / 32 frames x 1 band (51
  filters each, TF 'same' padding: the odd extra frame goes after); each ReLU → BatchNorm → max over
  frequency → 561 channels per frame;
* mid end: three 1-D convolutions over time (64 filters, 7 frames, ReLU → BatchNorm), the 2nd and 3rd with
  residual connections; the front end's 561 channels and the three 64-channel outputs are concatenated
  (753 channels per frame);
* back end: max and mean over all frames (so any length works; musicnn was trained on 187 frames, 3 s),
  interleaved per channel ([max_0, mean_0, max_1, ...], TF's flatten order) → BatchNorm (the *pooled*
  embedding, 1506 values) → Dense 200 + ReLU → BatchNorm (the *penultimate* embedding) → Dense 50 (the tag
  logits; their sigmoid is musicnn's *taggram*).

TF → PyTorch: conv kernels HWIO (time, freq, in, out) → OIHW, the mid-end's full-width 2-D convolutions are
1-D convolutions over time, dense kernels (in, out) are transposed, every BatchNorm uses TF1's epsilon 1e-3
and the moving statistics. Dropout only existed in training, so the port has none.

The trunk is always in inference mode: its BatchNorms use the pretrained statistics even while the
classifier trains. With ``freeze: true`` (the default) its tensors are non-persistent buffers: they get no
gradient, are not in the optimiser, and are not written into checkpoints (a checkpoint holds the head only
and the trunk is re-read from the wheel, whose SHA-256 is checked, when the model is rebuilt). With
``freeze: front_end`` only the front end is fixed that way: the mid end and the dense layer train from their
pretrained values (at a fraction of the learning rate, :meth:`Musicnn.param_groups`) and are saved with the
head. The fixed part's output (:meth:`Musicnn.embed`) is what training caches and what the fold models of a
member share at inference; :meth:`Musicnn.head_logits` runs the rest.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Annotated, Any, ClassVar, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ml.models.base import MODELS, ModelArgs, MpicModel
from ml.pretrained import musicnn as weights_store

_BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's default
_N_MELS = 96
_TIMBRAL = ((7, 38), (7, 67))  # (frames, mel bands): int(0.4 * 96), int(0.7 * 96)
_TEMPORAL = (128, 64, 32)  # frames
_FRONT_FILTERS = (204, 51)  # int(1.6 * 128), int(1.6 * 32)
_MID_FILTERS = 64
_BACK_UNITS = 200
_N_TAGS = 50
FRONT_CHANNELS = 2 * _FRONT_FILTERS[0] + 3 * _FRONT_FILTERS[1]  # 561
MID_CHANNELS = FRONT_CHANNELS + 3 * _MID_FILTERS  # 753
EMBEDDING_SIZES = {"pooled": 2 * MID_CHANNELS, "penultimate": _BACK_UNITS, "taggram": _N_TAGS}

Embedding = Literal["pooled", "penultimate", "taggram"]


class FrozenBatchNorm(nn.Module):
    """BatchNorm in inference form over dim 1: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    The statistics are fixed, non-persistent buffers (they come from the checkpoint in the wheel); unlike
    ``nn.BatchNorm*`` there is no training mode and no ``num_batches_tracked``.
    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(self, n: int, eps: float = _BN_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n), persistent=False)
        self.register_buffer("running_var", torch.ones(n), persistent=False)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (B, C, ...) with the stored statistics."""
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class MusicnnTrunk(nn.Module):
    """musicnn's graph up to its tag logits; always in inference mode (see the module docstring).

    ``forward`` takes musicnn_mel features (B, 1, 96, T) and returns the requested outputs among
    ``pooled`` (B, 1506), ``penultimate`` (B, 200) and ``logits`` (B, 50).
    """

    def __init__(self) -> None:
        super().__init__()
        self.bn_input = FrozenBatchNorm(1)
        self.timbral = nn.ModuleList([nn.Conv2d(1, _FRONT_FILTERS[0], k) for k in _TIMBRAL])
        self.timbral_bn = nn.ModuleList([FrozenBatchNorm(_FRONT_FILTERS[0]) for _ in _TIMBRAL])
        self.temporal = nn.ModuleList([nn.Conv2d(1, _FRONT_FILTERS[1], (k, 1)) for k in _TEMPORAL])
        self.temporal_bn = nn.ModuleList([FrozenBatchNorm(_FRONT_FILTERS[1]) for _ in _TEMPORAL])
        c_in = [FRONT_CHANNELS, _MID_FILTERS, _MID_FILTERS]
        self.mid = nn.ModuleList([nn.Conv1d(c, _MID_FILTERS, 7, padding=3) for c in c_in])
        self.mid_bn = nn.ModuleList([FrozenBatchNorm(_MID_FILTERS) for _ in c_in])
        self.pool_bn = FrozenBatchNorm(2 * MID_CHANNELS)
        self.dense = nn.Linear(2 * MID_CHANNELS, _BACK_UNITS)
        self.dense_bn = FrozenBatchNorm(_BACK_UNITS)
        self.out = nn.Linear(_BACK_UNITS, _N_TAGS)
        super().train(False)

    def train(self, mode: bool = True) -> Self:
        """Stay in inference mode: the pretrained BatchNorm statistics are never updated."""
        return super().train(False)

    def load_tf(self, tf: dict[str, np.ndarray]) -> None:
        """Copy musicnn's TF variables (checkpoint names → arrays, TF layouts) into this module."""

        def t(name: str) -> Tensor:
            return torch.from_numpy(np.array(tf[name], dtype=np.float32))

        def conv(mod: nn.Conv2d | nn.Conv1d, i: int) -> None:
            name = f"conv2d_{i}" if i else "conv2d"
            k = t(f"{name}/kernel")  # (kh, kw, in, out)
            # a Conv1d is full-width over the channel axis: (7, C, 1, out) → (out, C, 7); else HWIO → OIHW
            k = k[:, :, 0, :].permute(2, 1, 0) if isinstance(mod, nn.Conv1d) else k.permute(3, 2, 0, 1)
            mod.weight.copy_(k)
            assert mod.bias is not None
            mod.bias.copy_(t(f"{name}/bias"))

        def bn(mod: FrozenBatchNorm, i: int) -> None:
            name = f"batch_normalization_{i}" if i else "batch_normalization"
            mod.weight.copy_(t(f"{name}/gamma"))
            mod.bias.copy_(t(f"{name}/beta"))
            mod.running_mean.copy_(t(f"{name}/moving_mean"))
            mod.running_var.copy_(t(f"{name}/moving_variance"))

        def dense(mod: nn.Linear, name: str) -> None:
            mod.weight.copy_(t(f"{name}/kernel").T)
            mod.bias.copy_(t(f"{name}/bias"))

        # variable names follow the order in which musicnn/models.py creates its layers
        with torch.no_grad():
            bn(self.bn_input, 0)
            convs = [*self.timbral, *self.temporal, *self.mid]
            bns = [*self.timbral_bn, *self.temporal_bn, *self.mid_bn]
            for i, (c, b) in enumerate(zip(convs, bns, strict=True)):
                conv(c, i)
                bn(b, i + 1)
            bn(self.pool_bn, len(bns) + 1)
            dense(self.dense, "dense")
            bn(self.dense_bn, len(bns) + 2)
            dense(self.out, "dense_1")

    def front(self, feats: Tensor) -> Tensor:
        """The front end's output (B, 561, T) of musicnn_mel features (B, 1, 96, T)."""
        x = self.bn_input(feats.transpose(2, 3))  # (B, 1, T, 96): TF's (time, freq) layout
        front: list[Tensor] = []
        padded = F.pad(x, (0, 0, 3, 3))
        for conv, bn in zip(self.timbral, self.timbral_bn, strict=True):
            y = F.relu(conv(padded))  # (B, 204, T, 96 - kw + 1)
            front.append(bn(y).amax(dim=3))
        for conv, bn, k in zip(self.temporal, self.temporal_bn, _TEMPORAL, strict=True):
            y = F.relu(conv(F.pad(x, (0, 0, (k - 1) // 2, k // 2))))  # TF 'same': extra frame after
            front.append(bn(y).amax(dim=3))
        return torch.cat(front, dim=1)

    def back(
        self, h: Tensor, upto: Literal["pooled", "penultimate", "logits"] = "logits"
    ) -> dict[str, Tensor]:
        """Mid end and back end of a front-end output ``h`` (B, 561, T); keys as :meth:`forward`."""
        mids = [h]
        for i, (conv, bn) in enumerate(zip(self.mid, self.mid_bn, strict=True)):
            y = bn(F.relu(conv(mids[-1])))
            mids.append(y if i == 0 else y + mids[-1])
        m = torch.cat(mids, dim=1)  # (B, 753, T)
        pooled = torch.stack([m.amax(dim=2), m.mean(dim=2)], dim=2).flatten(1)  # [max_0, mean_0, max_1, ...]
        out = {"pooled": self.pool_bn(pooled)}
        if upto == "pooled":
            return out
        out["penultimate"] = self.dense_bn(F.relu(self.dense(out["pooled"])))
        if upto == "penultimate":
            return out
        out["logits"] = self.out(out["penultimate"])
        return out

    def forward(
        self, feats: Tensor, upto: Literal["pooled", "penultimate", "logits"] = "logits"
    ) -> dict[str, Tensor]:
        """Outputs of features (B, 1, 96, T), up to ``upto``; keys ``pooled``, ``penultimate``, ``logits``."""
        return self.back(self.front(feats), upto)

    def front_end_modules(self) -> list[nn.Module]:
        """The modules of the front end (what ``freeze: front_end`` keeps fixed)."""
        return [self.bn_input, *self.timbral, *self.timbral_bn, *self.temporal, *self.temporal_bn]


def _freeze(module: nn.Module) -> None:
    """Turn every parameter into a non-persistent buffer: no gradient, no optimiser, no state-dict entry."""
    for m in module.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            delattr(m, name)
            m.register_buffer(name, p.detach().requires_grad_(False), persistent=False)


Freeze = bool | Literal["front_end"]


def pretrained_trunk(
    weights: weights_store.Weights = "mtt", *, wheel: str | None = None, freeze: Freeze = True
) -> MusicnnTrunk:
    """Musicnn's trunk with its pretrained weights from the wheel (see :mod:`ml.pretrained.musicnn`).

    Args:
        weights: ``mtt`` (MagnaTagATune) or ``msd`` (Million Song Dataset).
        wheel: Wheel path; None: ``$MPIC_MUSICNN_WHEEL`` or the default location.
        freeze: Which parameters become non-persistent buffers (no gradient, not in state dicts): all
            (True), none (False) or the front end's only (``"front_end"``).

    Raises:
        MusicnnWeightsError: The wheel is missing or not musicnn 0.1.0's (the message says what to run).
    """
    trunk = MusicnnTrunk()
    trunk.load_tf(weights_store.load_weights(weights, wheel))
    if freeze == "front_end":
        for m in trunk.front_end_modules():
            _freeze(m)
    elif freeze:
        _freeze(trunk)
    return trunk


class MusicnnArgs(ModelArgs):
    """Arguments of ``musicnn`` (section ``models.musicnn``)."""

    weights: Literal["mtt", "msd"] = "mtt"
    """Pretrained weights: MagnaTagATune (``mtt``) or Million Song Dataset (``msd``) musicnn."""
    freeze: Freeze = True
    """Which of the trunk's weights stay fixed: all (``true``: only the head trains, checkpoints hold the
    head alone), the front end's (``front_end``: the mid end — three 1-D convolutions over time — and the
    dense layer train from their pretrained values, with their BatchNorm scales and offsets; the front end,
    95 % of the trunk's compute, is what the head cache stores: 561 x 63 floats, 141 kB, per 1-s crop
    instead of one embedding; on the demo's unheard sample libraries no better than ``true`` within noise,
    docs/benchmarks.md), or none (``false``: end to end). BatchNorm statistics always stay the pretrained
    ones."""
    trunk_lr_scale: Annotated[float, Field(gt=0, le=1)] = 0.3
    """Learning rate of the trunk's trainable weights as a fraction of the member's (``freeze`` not true):
    small steps keep them near the real-music solution."""
    embedding: Embedding = "penultimate"
    """What the head sees: ``pooled`` (1506: max + mean over time of the mid-end, normalised),
    ``penultimate`` (200) or ``taggram`` (the 50 tag probabilities)."""
    head_hidden: Annotated[int, Field(ge=0, le=4096)] = 0
    """Hidden units of the head (0: a linear head on the embedding)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.2
    """Dropout on the embedding (and on the hidden layer) while training."""
    wheel: str | None = None
    """The musicnn wheel; null: ``$MPIC_MUSICNN_WHEEL`` or ``.cache/mpic/wheels/`` (relative paths are
    relative to the project directory). ``$MPIC_MUSICNN_WHEEL`` wins when set."""
    cpu_chunk_frames: Annotated[int, Field(ge=0)] = 256
    """On CPU the trunk runs on chunks of about this many frames (whole examples, at least one; 0: the whole
    batch at once); results are identical. Its timbral maps are ~48 kB per frame, and keeping a chunk's in
    the CPU caches makes a batch of 32 3-s windows 3x cheaper than one pass (measured: 44 vs 134 CPU-ms per
    window)."""


@MODELS.register("musicnn")
class Musicnn(MpicModel):
    """Pretrained musicnn trunk (frozen by default) → embedding → new head with our labels.

    At the defaults (MTT weights, frozen, penultimate embedding, linear head) 2,211 trainable parameters for
    11 classes on top of the 787 k fixed ones; needs the ``musicnn_mel`` front end; any length of at least
    4 frames (musicnn was trained on 3-s patches: 187 frames).
    """

    Args = MusicnnArgs
    param_range = (1_000, 2_000_000)
    min_frames = 4
    front_end_kinds: ClassVar[tuple[str, ...]] = ("musicnn_mel",)

    def __init__(self, n_classes: int, n_bins: int, n_frames: int, args: MusicnnArgs) -> None:
        super().__init__(n_classes, n_bins, n_frames, args)
        if n_bins != _N_MELS:
            raise ValueError(
                f"musicnn needs the musicnn_mel front end ({_N_MELS} mel bands), got {n_bins} bins"
            )
        self.cpu_chunk_frames = args.cpu_chunk_frames  # the base class's per-example chunking stays off
        self.freeze: Freeze = args.freeze
        self.weights = args.weights
        self.embedding: Embedding = args.embedding
        self.trunk_lr_scale = args.trunk_lr_scale
        self.trunk = pretrained_trunk(args.weights, wheel=args.wheel, freeze=args.freeze)
        if args.freeze == "front_end":  # layers past the embedding would train for nothing: keep them fixed
            tail: dict[str, list[nn.Module]] = {
                "pooled": [self.trunk.dense, self.trunk.dense_bn, self.trunk.out],
                "penultimate": [self.trunk.out],
            }
            for m in tail.get(args.embedding, []):
                _freeze(m)
        dim = EMBEDDING_SIZES[args.embedding]
        layers: list[nn.Module] = [nn.Dropout(args.dropout)]
        if args.head_hidden:
            layers += [nn.Linear(dim, args.head_hidden), nn.ReLU(inplace=True), nn.Dropout(args.dropout)]
            dim = args.head_hidden
        layers.append(nn.Linear(dim, n_classes))
        self.head = nn.Sequential(*layers)

    def _upto(self) -> Literal["pooled", "penultimate", "logits"]:
        """The trunk output the embedding is read from (and how far the trunk runs)."""
        return "logits" if self.embedding == "taggram" else self.embedding

    def _embedding(self, out: dict[str, Tensor]) -> Tensor:
        emb = out[self._upto()]
        return torch.sigmoid(emb) if self.embedding == "taggram" else emb

    def embed(self, feats: Tensor) -> Tensor:
        """The fixed part's output for musicnn_mel features (B, 1, 96, T).

        The embedding (B, D) the head sees when the whole trunk is frozen; the front end's output
        (B, 561, T) with ``freeze: front_end``; with ``freeze: false`` the embedding, with gradients.
        """
        chunk = max(1, self.cpu_chunk_frames // feats.shape[3]) if self.cpu_chunk_frames else 0
        parts = feats.split(chunk) if feats.device.type == "cpu" and 0 < chunk < feats.shape[0] else [feats]
        if self.freeze == "front_end":
            with torch.no_grad():
                return torch.cat([self.trunk.front(p) for p in parts])
        with torch.no_grad() if self.freeze else nullcontext():
            return torch.cat([self._embedding(self.trunk(p, upto=self._upto())) for p in parts])

    def frozen_embedding_key(self) -> str | None:
        """What :meth:`embed` computes, when it is fixed (fold models share it), else None.

        ``musicnn/<weights>/<embedding>`` (frozen trunk), ``musicnn/<weights>/front_end``, or None.
        """
        if self.freeze == "front_end":
            return f"musicnn/{self.weights}/front_end"
        return f"musicnn/{self.weights}/{self.embedding}" if self.freeze else None

    def head_logits(self, emb: Tensor) -> Tensor:
        """Logits (B, n_classes) of an :meth:`embed` output (the trainable mid end first, if any)."""
        if self.freeze == "front_end":
            emb = self._embedding(self.trunk.back(emb, upto=self._upto()))
        return self.head(emb)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups: the trunk's trainable weights at ``trunk_lr_scale`` × ``lr``."""
        trunk = [p for p in self.trunk.parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": list(self.head.parameters()), "lr": lr}]
        if trunk:
            groups.append({"params": trunk, "lr": lr * self.trunk_lr_scale})
        return groups

    def logits(self, feats: Tensor) -> Tensor:
        """(B, 1, 96, T) → (B, n_classes)."""
        return self.head_logits(self.embed(feats))
