"""Batched, on-device augmentation with multi-label targets, and the tempo estimator BPM mixing needs.

An :class:`Augmenter` applies a member's ``augment`` steps (``config.yml``) in order to a :class:`Batch`
of training crops, in training mode only (identity in eval mode). Each step acts on each example with
probability ``p``; everything is vectorised over the batch and runs on the batch's device. Random numbers
come from the ``torch.Generator`` passed in (a CPU generator; GPU-sized noise is drawn from a device
generator seeded from it), so a run is reproducible.

Steps (registry :data:`AUGMENTATIONS`, arguments validated by each step's ``Args``):

``noise``       Gaussian noise at an SNR drawn from ``snr_db`` relative to each example's RMS (seed: 20 dB).
``gain``        A random gain in ``gain_db`` (default ±6 dB), constant or (``ramp: true``) a fade.
``genre_mix``   Overlay another clip of the same genre with a different label set (the seed's genre
                mixing); examples with no such partner in the batch are left alone.
``bpm_mix``     The seed's BPM mixing: a partner with a different label set, time-stretched by
                ``tempo_self / tempo_partner`` (clamped to [0.7, 1.4]) with a batched phase vocoder (pitch
                kept), wrapped to the crop length and overlaid; skipped where a tempo is unknown.
``random_mix``  Overlay ``k - 1`` random other clips of the batch.
``mixup``       Mixup (Zhang et al. 2018): a weighted sum of two clips at equal RMS, weights λ and 1 − λ
                (λ ~ Beta(α, α), the larger share to the primary), and the same weighted sum of their
                targets: soft labels that say how much of each clip the mix holds.

The other mixes put each partner at a random level ``level_db`` relative to the primary's RMS, then
rescale the mix to the primary's RMS (loudness stays sane however many clips are stacked), and take the
union (max) of the label sets. Note that the front ends RMS-normalise every example and the mix levels and
noise are relative to each example's RMS, so a *constant* ``gain`` cannot change what a model sees;
``ramp: true`` can.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, Field, field_validator
from torch import Tensor, nn

from ml.config import AugmentStep, ConfigError
from ml.models.base import ModelArgs, validate_args
from ml.registry import Registry

_EPS = 1e-8


# ---------------------------------------------------------------------------------------------- batch


@dataclass
class Batch:
    """A training batch: waves with multi-hot targets and the metadata mixing needs.

    Attributes:
        wave: (B, S) float32 mono waves.
        target: (B, C) float32 multi-hot labels.
        genre: (B,) long genre ids, -1 where unknown.
        tempo: (B,) float32 tempo in BPM, nan where unknown.
    """

    wave: Tensor
    target: Tensor
    genre: Tensor
    tempo: Tensor

    def __post_init__(self) -> None:
        b = self.wave.shape[0]
        if self.wave.ndim != 2 or self.target.ndim != 2 or self.target.shape[0] != b:
            raise ValueError(
                f"wave (B, S) and target (B, C) expected: {tuple(self.wave.shape)} {tuple(self.target.shape)}"
            )
        if self.genre.shape != (b,) or self.tempo.shape != (b,):
            raise ValueError(
                f"genre and tempo must be ({b},), got {tuple(self.genre.shape)}, {tuple(self.tempo.shape)}"
            )

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device``."""
        return Batch(*(t.to(device) for t in (self.wave, self.target, self.genre, self.tempo)))

    def __len__(self) -> int:
        return self.wave.shape[0]


# ------------------------------------------------------------------------------------ random helpers


def _uniform(n: int, lo_hi: tuple[float, float], gen: torch.Generator | None, device: torch.device) -> Tensor:
    """(n,) uniform samples in [lo, hi], drawn on the CPU (reproducible on any device) and moved."""
    lo, hi = lo_hi
    return (lo + (hi - lo) * torch.rand(n, generator=gen)).to(device)


def _coin(n: int, p: float, gen: torch.Generator | None, device: torch.device) -> Tensor:
    """(n,) booleans, True with probability p."""
    return (torch.rand(n, generator=gen) < p).to(device)


def _randn_like(x: Tensor, gen: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, on its device.

    Off the CPU it comes from a device generator seeded from ``gen``: no large tensor crosses the bus and
    results stay reproducible.
    """
    if gen is None:
        return torch.randn_like(x)
    if x.device.type == "cpu":
        return torch.randn(x.shape, generator=gen, dtype=x.dtype)
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    dev_gen = torch.Generator(device=x.device).manual_seed(seed)
    return torch.randn(x.shape, generator=dev_gen, device=x.device, dtype=x.dtype)


def _rms(x: Tensor) -> Tensor:
    """(B, 1) RMS of each row of (B, S)."""
    return x.square().mean(dim=-1, keepdim=True).sqrt()


def _pick_partner(valid: Tensor, gen: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """One random partner per row among the True columns of ``valid`` (B, B).

    Returns:
        (partner index (B,), has_partner (B,)); the index is arbitrary where has_partner is False.
    """
    scores = torch.rand(valid.shape, generator=gen).to(valid.device)
    scores = torch.where(valid, scores, torch.full_like(scores, -1.0))
    return scores.argmax(dim=1), valid.any(dim=1)


def _different_labels(target: Tensor) -> Tensor:
    """(B, B) True where two examples' label sets differ."""
    t = target > 0.5
    return (t[:, None, :] != t[None, :, :]).any(dim=-1)


def _overlay(wave: Tensor, partners: Tensor, level_db: Tensor) -> Tensor:
    """Primary + partner scaled to ``level_db`` relative to the primary's RMS, rescaled to the primary's RMS.

    Args:
        wave: (B, S) primaries.
        partners: (B, K, S) clips to overlay.
        level_db: (B, K) partner level relative to the primary (dB).
    """
    rms = _rms(wave)  # (B, 1)
    p_rms = partners.square().mean(dim=-1).sqrt()  # (B, K)
    gain = torch.pow(10.0, level_db / 20.0) * rms / p_rms.clamp_min(_EPS)
    gain = torch.where(p_rms > _EPS, gain, torch.zeros_like(gain))  # silent partners add nothing
    mix = wave + (gain[..., None] * partners).sum(dim=1)
    return mix * (rms / _rms(mix).clamp_min(_EPS))


def _write_back(batch: Batch, idx: Tensor, wave: Tensor, target: Tensor) -> Batch:
    """The batch with rows ``idx`` (n,) replaced by ``wave`` (n, S) and ``target`` (n, C)."""
    return replace(
        batch,
        wave=batch.wave.index_copy(0, idx, wave.to(batch.wave.dtype)),
        target=batch.target.index_copy(0, idx, target.to(batch.target.dtype)),
    )


# ------------------------------------------------------------------------------------ augmentations


def _range(v: float | Sequence[float], *, symmetric: bool = False) -> tuple[float, float]:
    if isinstance(v, int | float):
        return (-abs(float(v)), abs(float(v))) if symmetric else (float(v), float(v))
    lo, hi = (float(x) for x in v)
    return lo, hi


class _RangeArgs(ModelArgs):
    """Shared validation: a number or a [lo, hi] pair with lo <= hi."""

    @field_validator("*", mode="after")
    @classmethod
    def _ordered(cls, v: Any) -> Any:
        if isinstance(v, tuple) and len(v) == 2 and v[0] > v[1]:
            raise ValueError(f"range must be [low, high] with low <= high, got {list(v)}")
        return v


class Augmentation:
    """One augmentation step: ``apply(batch, gen)`` changes the examples picked with probability ``p``."""

    Args: ClassVar[type[BaseModel]] = ModelArgs
    name: ClassVar[str] = ""

    def __init__(self, args: BaseModel, *, p: float, sample_rate: int) -> None:
        self.args = args
        self.p = float(p)
        self.sample_rate = int(sample_rate)

    def apply(self, batch: Batch, gen: torch.Generator | None) -> Batch:
        """The augmented batch (a new object; the input is not modified)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.name}(p={self.p}, {self.args!r})"


AUGMENTATIONS: Registry[type[Augmentation]] = Registry("augmentation")


class NoiseArgs(_RangeArgs):
    """``noise``: SNR in dB, a number or a [low, high] range drawn uniformly per example."""

    snr_db: float | tuple[float, float] = 20.0


@AUGMENTATIONS.register("noise")
class Noise(Augmentation):
    """Additive white Gaussian noise at an exact per-example SNR relative to the example's RMS."""

    Args = NoiseArgs
    name = "noise"

    def apply(self, batch: Batch, gen: torch.Generator | None) -> Batch:
        """Add noise to the picked examples."""
        assert isinstance(self.args, NoiseArgs)
        x = batch.wave
        b, dev = x.shape[0], x.device
        pick = _coin(b, self.p, gen, dev)
        snr = _uniform(b, _range(self.args.snr_db), gen, dev)
        noise = _randn_like(x, gen)
        # scale the drawn noise to exactly rms(x) / 10^(snr/20), so the SNR is the requested one
        target_rms = _rms(x) * torch.pow(10.0, -snr / 20.0)[:, None]
        noise = noise * (target_rms / _rms(noise).clamp_min(_EPS))
        wave = torch.where(pick[:, None], x + noise, x)
        return replace(batch, wave=wave)


class GainArgs(_RangeArgs):
    """``gain``: dB range ([low, high], or a number g for [-g, g]); a constant gain or a ramp."""

    gain_db: float | tuple[float, float] = (-6.0, 6.0)
    ramp: bool = False
    """False: one gain per example. True: the gain moves linearly (in dB) between two draws from the start
    to the end of the clip (a fade / crescendo), which changes the features even after RMS normalisation."""


@AUGMENTATIONS.register("gain")
class Gain(Augmentation):
    """A random gain per example (constant, or a ramp in dB across the clip)."""

    Args = GainArgs
    name = "gain"

    def apply(self, batch: Batch, gen: torch.Generator | None) -> Batch:
        """Scale the picked examples."""
        assert isinstance(self.args, GainArgs)
        x = batch.wave
        b, dev = x.shape[0], x.device
        pick = _coin(b, self.p, gen, dev)
        lo_hi = _range(self.args.gain_db, symmetric=True)
        g0 = _uniform(b, lo_hi, gen, dev)[:, None]  # (B, 1) dB
        if self.args.ramp:
            g1 = _uniform(b, lo_hi, gen, dev)[:, None]
            t = torch.linspace(0.0, 1.0, x.shape[1], device=dev, dtype=x.dtype)[None, :]
            g0 = g0 + (g1 - g0) * t  # (B, S) dB
        scale = torch.pow(10.0, g0 / 20.0)
        return replace(batch, wave=torch.where(pick[:, None], x * scale, x))


class MixArgs(_RangeArgs):
    """Shared mix arguments: each partner's level relative to the primary, in dB ([low, high] or a number)."""

    level_db: float | tuple[float, float] = (-6.0, 0.0)


class _PairMix(Augmentation):
    """Mix each picked example with one partner chosen by :meth:`candidates`."""

    def candidates(self, batch: Batch) -> Tensor:
        """(B, B) boolean: which examples may partner which."""
        raise NotImplementedError

    def partner_waves(self, batch: Batch, idx: Tensor, partner: Tensor) -> Tensor:
        """(n, S) partner waves for primaries ``idx`` (n,) and partners ``partner`` (n,)."""
        return batch.wave[partner]

    def apply(self, batch: Batch, gen: torch.Generator | None) -> Batch:
        """Mix the picked examples that have a valid partner; union of labels."""
        assert isinstance(self.args, MixArgs)
        b, dev = len(batch), batch.wave.device
        valid = self.candidates(batch) & ~torch.eye(b, dtype=torch.bool, device=dev)
        partner, has = _pick_partner(valid, gen)
        pick = _coin(b, self.p, gen, dev) & has
        level = _uniform(b, _range(self.args.level_db), gen, dev)
        idx = pick.nonzero().squeeze(1)
        if idx.numel() == 0:
            return batch
        part = partner[idx]
        waves = self.partner_waves(batch, idx, part)
        mixed = _overlay(batch.wave[idx], waves[:, None, :], level[idx, None])
        return _write_back(batch, idx, mixed, torch.maximum(batch.target[idx], batch.target[part]))


@AUGMENTATIONS.register("genre_mix")
class GenreMix(_PairMix):
    """Overlay a clip of the same (known) genre with a different label set."""

    Args = MixArgs
    name = "genre_mix"

    def candidates(self, batch: Batch) -> Tensor:
        """Same known genre and different labels."""
        g = batch.genre
        same = (g[:, None] == g[None, :]) & (g[:, None] >= 0)
        return same & _different_labels(batch.target)


class BpmMixArgs(MixArgs):
    """``bpm_mix``: stretch-ratio clamp and the phase vocoder's frame length."""

    ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (0.7, 1.4)
    frame_s: Annotated[float, Field(gt=0, le=0.2)] = 0.046


@AUGMENTATIONS.register("bpm_mix")
class BpmMix(_PairMix):
    """The seed's BPM mixing: tempo-match a partner with a phase vocoder, overlay, union of labels."""

    Args = BpmMixArgs
    name = "bpm_mix"

    def candidates(self, batch: Batch) -> Tensor:
        """Both tempi known and different labels."""
        known = torch.isfinite(batch.tempo) & (batch.tempo > 0)
        return known[:, None] & known[None, :] & _different_labels(batch.target)

    def partner_waves(self, batch: Batch, idx: Tensor, partner: Tensor) -> Tensor:
        """Partners time-stretched to the primaries' tempi (rate = tempo_self / tempo_partner, clamped)."""
        assert isinstance(self.args, BpmMixArgs)
        lo, hi = self.args.ratio
        rate = (batch.tempo[idx] / batch.tempo[partner]).clamp(lo, hi)
        n_fft = 2 ** max(6, round(math.log2(self.args.frame_s * self.sample_rate)))
        return time_stretch(batch.wave[partner], rate, n_fft=n_fft)


class RandomMixArgs(MixArgs):
    """``random_mix``: clips per mix, the primary included."""

    k: Annotated[int, Field(ge=2, le=8)] = 3


@AUGMENTATIONS.register("random_mix")
class RandomMix(Augmentation):
    """Overlay k - 1 distinct random other clips of the batch (any labels); union of labels."""

    Args = RandomMixArgs
    name = "random_mix"

    def apply(self, batch: Batch, gen: torch.Generator | None) -> Batch:
        """Mix the picked examples with k - 1 others each."""
        assert isinstance(self.args, RandomMixArgs)
        b, dev = len(batch), batch.wave.device
        k = min(self.args.k - 1, b - 1)
        pick = _coin(b, self.p, gen, dev)
        idx = pick.nonzero().squeeze(1)
        if k < 1 or idx.numel() == 0:
            return batch
        scores = torch.rand(b, b, generator=gen)
        scores.fill_diagonal_(2.0)  # never pick yourself
        partners = scores.argsort(dim=1)[:, :k].to(dev)[idx]  # (n, k) distinct
        level = _uniform(idx.numel() * k, _range(self.args.level_db), gen, dev).view(-1, k)
        mixed = _overlay(batch.wave[idx], batch.wave[partners], level)
        return _write_back(
            batch, idx, mixed, torch.maximum(batch.target[idx], batch.target[partners].amax(dim=1))
        )


class MixupArgs(ModelArgs):
    """``mixup``: the Beta(α, α) concentration; small α gives mostly one clip, α = 1 any share."""

    alpha: Annotated[float, Field(gt=0, le=10)] = 0.4


@AUGMENTATIONS.register("mixup")
class Mixup(Augmentation):
    """Mixup: λ·x + (1 − λ)·x_partner at equal RMS, targets mixed with the same weights."""

    Args = MixupArgs
    name = "mixup"

    def apply(self, batch: Batch, gen: torch.Generator | None) -> Batch:
        """Mix each picked example with one random other example of the batch."""
        assert isinstance(self.args, MixupArgs)
        b, dev = len(batch), batch.wave.device
        partner, has = _pick_partner(~torch.eye(b, dtype=torch.bool, device=dev), gen)
        pick = _coin(b, self.p, gen, dev) & has
        # torch's Beta sampler takes no generator: draw λ with numpy, seeded from ``gen`` (reproducible)
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        lam_np = np.random.default_rng(seed).beta(self.args.alpha, self.args.alpha, b)
        lam = torch.from_numpy(np.maximum(lam_np, 1.0 - lam_np)).to(dev, batch.wave.dtype)  # (B,) ≥ 0.5
        idx = pick.nonzero().squeeze(1)
        if idx.numel() == 0:
            return batch
        w = lam[idx, None]
        # λ·x + (1 − λ)·partner at equal RMS is the shared overlay with the partner (1 − λ)/λ below the
        # primary (λ = 1 gives −inf dB: a zero gain), rescaled to the primary's RMS
        level_db = 20.0 * torch.log10((1.0 - w) / w)
        mixed = _overlay(batch.wave[idx], batch.wave[partner[idx]][:, None, :], level_db)
        return _write_back(batch, idx, mixed, w * batch.target[idx] + (1.0 - w) * batch.target[partner[idx]])


# ------------------------------------------------------------------------------------ timbre (sound source)
# The same notes played by another sample library differ in spectral envelope, tuning and room: these
# three steps vary exactly that, so a model cannot lean on one library's timbre.


class EqArgs(_RangeArgs):
    """``eq``: a random smooth gain curve over log frequency, at most ``max_db`` up or down."""

    max_db: Annotated[float, Field(gt=0, le=24)] = 9.0
    nodes: Annotated[int, Field(ge=2, le=32)] = 8
    tilt_db: Annotated[float, Field(ge=0, le=24)] = 6.0


@AUGMENTATIONS.register("eq")
class Eq(Augmentation):
    """Random equalisation: ``nodes`` gains on a log-frequency axis (interpolated) plus a spectral tilt.

    Applied as one real FFT per example (zero phase), so the whole batch costs two FFTs.
    """

    Args = EqArgs
    name = "eq"

    def apply(self, batch: Batch, gen: torch.Generator | None) -> Batch:
        """Filter the picked examples, keeping their RMS."""
        assert isinstance(self.args, EqArgs)
        b, n, dev = batch.wave.shape[0], batch.wave.shape[1], batch.wave.device
        pick = _coin(b, self.p, gen, dev)
        a = self.args
        nodes_db = _uniform(b * a.nodes, (-a.max_db, a.max_db), gen, dev).view(b, a.nodes)
        tilt = _uniform(b, (-a.tilt_db, a.tilt_db), gen, dev)[:, None]
        idx = pick.nonzero().squeeze(1)
        if idx.numel() == 0:
            return batch
        x, nodes_db, tilt = batch.wave[idx], nodes_db[idx], tilt[idx]
        freqs = torch.fft.rfftfreq(n, d=1.0 / self.sample_rate).to(dev)
        # position of every bin on the node axis: log2 frequency from 30 Hz to Nyquist → [0, nodes - 1]
        lo, hi = math.log2(30.0), math.log2(self.sample_rate / 2)
        pos = ((freqs.clamp_min(30.0).log2() - lo) / (hi - lo)).clamp(0, 1)  # (F,)
        node_pos = pos * (a.nodes - 1)
        i0 = node_pos.floor().long().clamp(max=a.nodes - 2)
        frac = node_pos - i0
        curve = nodes_db[:, i0] * (1 - frac) + nodes_db[:, i0 + 1] * frac + tilt * (pos - 0.5) * 2
        spec = torch.fft.rfft(x.float(), dim=-1) * torch.pow(10.0, curve / 20.0)
        y = torch.fft.irfft(spec, n=n, dim=-1).to(x.dtype)
        y = y * (_rms(x) / _rms(y).clamp_min(_EPS))
        return replace(batch, wave=batch.wave.index_copy(0, idx, y))


class PitchArgs(_RangeArgs):
    """``pitch``: varispeed by up to ``semitones`` (pitch and tempo move together, like a tape)."""

    semitones: float | tuple[float, float] = 1.0


@AUGMENTATIONS.register("pitch")
class Pitch(Augmentation):
    """Resample each picked example by 2^(s/12), s drawn in ``semitones``: detuned samples, other registers.

    Linear interpolation on the device; the output keeps the input's length (read cyclically when sped
    up), so the crop stays a crop.
    """

    Args = PitchArgs
    name = "pitch"

    def apply(self, batch: Batch, gen: torch.Generator | None) -> Batch:
        """Shift the picked examples."""
        assert isinstance(self.args, PitchArgs)
        x = batch.wave
        b, n, dev = x.shape[0], x.shape[1], x.device
        pick = _coin(b, self.p, gen, dev)
        rate = torch.pow(2.0, _uniform(b, _range(self.args.semitones, symmetric=True), gen, dev) / 12.0)
        pos = torch.arange(n, device=dev, dtype=torch.float32)[None, :] * rate[:, None]  # (B, S) samples
        pos = torch.remainder(pos, n - 1)
        i0 = pos.floor().long()
        frac = (pos - i0).to(x.dtype)
        y = x.gather(1, i0) * (1 - frac) + x.gather(1, (i0 + 1).clamp(max=n - 1)) * frac
        return replace(batch, wave=torch.where(pick[:, None], y, x))


class ReverbArgs(_RangeArgs):
    """``reverb``: a synthetic room (exponentially decaying noise); RT60 and wet level drawn per example."""

    rt60_s: float | tuple[float, float] = (0.2, 1.2)
    wet_db: float | tuple[float, float] = (-12.0, 0.0)


@AUGMENTATIONS.register("reverb")
class Reverb(Augmentation):
    """Convolve with a random impulse response (decaying noise, direct path first) by FFT."""

    Args = ReverbArgs
    name = "reverb"

    def apply(self, batch: Batch, gen: torch.Generator | None) -> Batch:
        """Add reverberation to the picked examples, keeping their RMS."""
        assert isinstance(self.args, ReverbArgs)
        b, n, dev = batch.wave.shape[0], batch.wave.shape[1], batch.wave.device
        pick = _coin(b, self.p, gen, dev)
        rt60 = _uniform(b, _range(self.args.rt60_s), gen, dev)[:, None]
        wet = torch.pow(10.0, _uniform(b, _range(self.args.wet_db), gen, dev) / 20.0)[:, None]
        idx = pick.nonzero().squeeze(1)
        if idx.numel() == 0:
            return batch
        x, rt60, wet = batch.wave[idx], rt60[idx], wet[idx]
        k = idx.numel()
        # the tail only needs to reach -60 dB; longer than the crop adds nothing audible inside it
        ir_len = min(n, int(self.sample_rate * max(_range(self.args.rt60_s))))
        t = torch.arange(ir_len, device=dev, dtype=torch.float32)[None, :] / self.sample_rate
        # amplitude falls 60 dB over rt60: exp(-6.91 t / rt60)
        tail = _randn_like(torch.empty(k, ir_len, device=dev), gen) * torch.exp(-6.908 * t / rt60)
        tail = tail / tail.square().sum(dim=1, keepdim=True).sqrt().clamp_min(_EPS)
        size = n + ir_len
        wet_sig = torch.fft.irfft(
            torch.fft.rfft(x.float(), n=size, dim=-1) * torch.fft.rfft(tail, n=size, dim=-1), n=size, dim=-1
        )[:, :n]
        y = (x.float() + wet * wet_sig).to(x.dtype)
        y = y * (_rms(x) / _rms(y).clamp_min(_EPS))
        return replace(batch, wave=batch.wave.index_copy(0, idx, y))


# ------------------------------------------------------------------------------------ phase vocoder


def time_stretch(wave: Tensor, rate: Tensor, *, n_fft: int = 1024, hop: int | None = None) -> Tensor:
    """Change the tempo of each row by its own ``rate`` keeping pitch; output has the input's length.

    A batched phase vocoder (the algorithm of ``torchaudio.functional.phase_vocoder``, with a rate per
    example): output frame j reads the input at frame position ``j * rate``, interpolating magnitudes and
    accumulating phase advances. ``rate > 1`` speeds up (the stretched clip is shorter than the input, so
    the read position wraps around and the clip loops); ``rate < 1`` slows down (the clip is cropped).

    Args:
        wave: (B, S) waves.
        rate: (B,) speed factors (> 0).
        n_fft: STFT size (Hann window of that length).
        hop: STFT hop (default n_fft // 4).

    Returns:
        (B, S) stretched waves.
    """
    b, s = wave.shape
    hop = hop or n_fft // 4
    window = torch.hann_window(n_fft, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave, n_fft, hop, window=window, center=True, return_complex=True)  # (B, F, T)
    n_freq, n_t = spec.shape[1], spec.shape[2]
    mag, ang = spec.abs(), spec.angle()
    pos = torch.arange(n_t, device=wave.device, dtype=wave.dtype)[None, :] * rate[:, None].to(wave.dtype)
    pos = torch.remainder(pos, n_t)  # loop the source when it runs out (rate > 1)
    i0 = pos.floor().long().clamp_max(n_t - 1)
    i1 = torch.remainder(i0 + 1, n_t)
    alpha = (pos - i0.to(pos.dtype))[:, None, :]  # (B, 1, T)

    def take(x: Tensor, i: Tensor) -> Tensor:
        return x.gather(2, i[:, None, :].expand(b, n_freq, n_t))

    m0, m1 = take(mag, i0), take(mag, i1)
    a0, a1 = take(ang, i0), take(ang, i1)
    # Phase bookkeeping in float64, reduced modulo 2*pi. The running phase of bin k grows by about
    # pi * hop * k / (n_freq - 1) per frame: up to ~2e5 rad after 3 s at 22 kHz, where float32 values are
    # 0.016 rad apart. Accumulated in float32, its rounding error (and the cancellation of `advance`, ~800
    # rad, between dphi and step) reaches tenths of a radian, so the output depended on the order of the
    # additions: CPU and CUDA (a different cumsum algorithm, another atan2) disagreed by up to ~1e-3, and the
    # float32 result was ~0.4 away from the exact one. Multiples of 2*pi change nothing after torch.polar, so
    # the phase is wrapped before it is cast back; what is left is float32 round-off of the STFT itself.
    #
    # A bin whose magnitude is at the float32 noise floor has a phase made of round-off, and accumulating
    # it would carry that noise into later frames where the bin is loud (an onset; the edge frames read when
    # the clip loops). So a bin's phase restarts from the analysis phase (a0) after any frame where it was
    # below -80 dB of the example's peak: inaudible there, and its phase advance meant nothing.
    tau = 2 * math.pi
    mag_out = (1 - alpha) * m0 + alpha * m1
    advance = torch.linspace(0, math.pi * hop, n_freq, device=wave.device, dtype=torch.float64)[None, :, None]
    dphi = (a1.double() - a0.double()) - advance
    dphi = dphi - tau * torch.round(dphi / tau)  # deviation from the expected advance, in [-pi, pi]
    step = torch.remainder(dphi + advance, tau)
    phase = torch.cat([a0[..., :1].double(), step[..., :-1]], dim=-1).cumsum(dim=-1)
    quiet = mag_out < 1e-4 * mag_out.amax(dim=(1, 2), keepdim=True)
    restart = torch.cat([torch.ones_like(quiet[..., :1]), quiet[..., :-1]], dim=-1)  # frame 0, after quiet
    frame = torch.arange(n_t, device=wave.device).expand_as(restart)
    last = torch.where(restart, frame, torch.zeros_like(frame)).cummax(dim=-1).values  # latest restart
    offset = a0.double() - phase  # what makes the phase equal a0 at a restart
    phase = phase + offset.gather(-1, last)
    phase = torch.remainder(phase, tau).to(wave.dtype)
    out = torch.polar(mag_out, phase)
    return torch.istft(out, n_fft, hop, window=window, center=True, length=s)


# ------------------------------------------------------------------------------------ the augmenter


class Augmenter(nn.Module):
    """A member's augmentation steps, applied in order in training mode; identity in eval mode."""

    def __init__(self, steps: Sequence[Augmentation]) -> None:
        super().__init__()
        self.steps = list(steps)

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """The augmented batch (``batch`` itself in eval mode or with no steps)."""
        if not self.training:
            return batch
        with torch.no_grad():
            for step in self.steps:
                batch = step.apply(batch, generator)
        return batch

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return ", ".join(repr(s) for s in self.steps)


def build_augmenter(steps: Sequence[AugmentStep], sample_rate: int, *, where: str = "augment") -> Augmenter:
    """Build the augmenter of a member's ``augment`` list.

    Args:
        steps: The configured steps (name, p, parameters).
        sample_rate: Sample rate of the waves it will see (Hz).
        where: Config path of the list, for error messages (e.g. ``members.res_bpm.augment``).

    Returns:
        An :class:`Augmenter` in training mode.

    Raises:
        ConfigError: Unknown augmentation name (lists the valid ones) or bad parameters, naming
            ``<where>.<index>.<key>``.
    """
    built = [
        AUGMENTATIONS.get(step.name)(args, p=step.p, sample_rate=sample_rate)
        for step, args in zip(steps, check_augment(steps, where), strict=True)
    ]
    return Augmenter(built)


def check_augment(steps: Sequence[AugmentStep], where: str = "augment") -> list[BaseModel]:
    """Validate configured augmentation steps without building them; their validated arguments.

    Raises:
        ConfigError: Unknown augmentation name (lists the valid ones) or bad parameters, naming
            ``<where>.<index>.<key>``.
    """
    out = []
    for i, step in enumerate(steps):
        if step.name not in AUGMENTATIONS:
            raise ConfigError(
                f"{where}.{i}.name: unknown augmentation {step.name!r}; valid: {AUGMENTATIONS.names()}"
            )
        out.append(validate_args(AUGMENTATIONS.get(step.name).Args, step.params, f"{where}.{i}"))
    return out


# ------------------------------------------------------------------------------------ tempo


def onset_envelope(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """Spectral-flux onset strength of a mono wave, ~200 frames per second.

    Log-compressed STFT magnitudes (23 ms frames, 5 ms hop), half-wave rectified frame-to-frame increase
    summed over bins, then the local mean (over 0.25 s) removed and negatives clipped.

    Returns:
        (envelope (T,), frames per second).
    """
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    hop = max(1, round(sample_rate / 200))
    n_fft = 2 ** max(6, round(math.log2(0.023 * sample_rate)))
    if len(x) < n_fft + hop:
        return np.zeros(0, np.float32), sample_rate / hop
    peak = float(np.abs(x).max())
    if peak > 0:
        x = x / peak
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    mag = np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1))
    logmag = np.log1p(100.0 * mag)
    flux = np.maximum(np.diff(logmag, axis=0), 0.0).sum(axis=1)
    width = max(1, round(0.25 * sample_rate / hop))
    local = np.convolve(flux, np.ones(width) / width, mode="same")
    return np.maximum(flux - local, 0.0).astype(np.float32), sample_rate / hop


def estimate_tempo(
    wave: np.ndarray, sample_rate: int, *, min_bpm: float = 60.0, max_bpm: float = 200.0
) -> float:
    """Global tempo (BPM) of a mono clip, or nan when it has no usable periodicity.

    Autocorrelation of the spectral-flux onset envelope, weighted by a log-normal prior centred on 120 BPM
    (one octave standard deviation, as librosa's ``beat.tempo``), picks the beat period among
    ``[min_bpm, max_bpm]``; a parabola through the autocorrelation around the chosen lag refines it below
    one frame (5 ms). About 2 ms for a 3-s clip.

    Args:
        wave: (S,) mono samples (any float dtype).
        sample_rate: Its sample rate (Hz).
        min_bpm: Slowest tempo considered.
        max_bpm: Fastest tempo considered.

    Returns:
        The tempo in BPM, or nan for silence, clips shorter than two beats at ``max_bpm`` or a flat envelope.
    """
    env, fps = onset_envelope(wave, sample_rate)
    lag_lo = max(1, math.floor(60.0 * fps / max_bpm))
    lag_hi = math.ceil(60.0 * fps / min_bpm)
    if len(env) < 2 * lag_lo + 2 or not np.any(env > 0):
        return math.nan
    env = env - env.mean()
    n = len(env)
    spec = np.fft.rfft(env, 2 ** math.ceil(math.log2(2 * n)))
    acf = np.fft.irfft(np.abs(spec) ** 2)[:n]
    if acf[0] <= 0:
        return math.nan
    acf = acf / acf[0]
    lag_hi = min(lag_hi, n - 2)
    lags = np.arange(lag_lo, lag_hi + 1)
    if len(lags) == 0:
        return math.nan
    bpm = 60.0 * fps / lags
    prior = np.exp(-0.5 * np.log2(bpm / 120.0) ** 2)
    score = acf[lags] * prior
    # only local maxima of the autocorrelation are beat-period candidates
    is_peak = (acf[lags] >= acf[lags - 1]) & (acf[lags] >= acf[lags + 1]) & (acf[lags] > 0)
    if not is_peak.any():
        return math.nan
    best = int(lags[np.argmax(np.where(is_peak, score, -np.inf))])
    y0, y1, y2 = acf[best - 1], acf[best], acf[best + 1]
    denom = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
    return float(60.0 * fps / (best + float(np.clip(shift, -0.5, 0.5))))


def estimate_tempi(
    waves: Sequence[np.ndarray] | np.ndarray,
    sample_rate: int,
    *,
    min_bpm: float = 60.0,
    max_bpm: float = 200.0,
) -> np.ndarray:
    """:func:`estimate_tempo` of each wave → (N,) float32 BPM (nan where unknown)."""
    return np.array(
        [estimate_tempo(w, sample_rate, min_bpm=min_bpm, max_bpm=max_bpm) for w in waves], dtype=np.float32
    )
