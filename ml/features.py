"""Spectrogram front ends as ``nn.Module``: waves in, normalised log spectrograms out.

One module turns a batch of mono waves ``(B, S)`` at the front end's sample rate into features
``(B, 1, n_bins, T)``; training, evaluation, the CLI and Serve all run the same module (it is the first half
of :class:`ml.models.Classifier`), so features can never drift between them.

Every front end

* RMS-normalises each wave (as the seed did), so the absolute level of a clip or window carries no
  information and a silent window stays silent (zero RMS is left alone);
* computes a power (mel) or magnitude (CQT) spectrogram in float32, with autocast disabled, because fp16
  overflows on STFT powers and loses the quiet bins that a dB scale is meant to show;
* converts to dB, clips at ``top_db`` below each example's maximum and normalises per ``norm``:
  ``max`` = dB relative to the example's maximum divided by ``top_db``, so values lie in [-1, 0] (the
  seed's ``power_to_db(ref=np.max)``, rescaled); ``instance`` = per-example standardisation (zero mean,
  unit variance over the whole spectrogram); ``none`` = the clipped dB values; ``pcen`` (mel only) =
  per-channel energy normalisation of the mel power instead of dB (:func:`pcen`);
* applies SpecAugment-style frequency and time masks in training mode only, with a random number and
  placement of masks per example (vectorised over the batch).

Buffers (windows, filter banks, CQT kernels) follow the module to any device and are *not* stored in a
state dict: they are a pure function of the config, which a checkpoint stores anyway.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ClassVar, cast

import numpy as np
import torch
import torchaudio.functional as AF
from nnAudio.features.cqt import CQT1992v2
from torch import Tensor, nn

from ml.config import AnyFrontEndConfig, CqtConfig, MelConfig, MusicnnMelConfig, SpecAugmentConfig
from ml.registry import Registry

TARGET_RMS = 0.1
"""Waves are scaled to this RMS (-20 dBFS) before analysis; only ``norm: none`` ever sees the level."""
PCEN_SMOOTHING = 0.025
"""PCEN's smoother coefficient per frame (librosa's default; ~40 frames ≈ 0.4 s at a 10-ms hop)."""
PCEN_SCALE = 2.0**31
"""Mel power of float waves scaled like 32-bit integer audio before PCEN (librosa's advice)."""

_MIN_RMS = 1e-6  # below this (-120 dBFS) a wave counts as silent and is not amplified
_POWER_AMIN = 1e-10  # floor of power spectrograms before dB (librosa's power_to_db default)
_MAG_AMIN = 1e-5  # floor of magnitude spectrograms before dB (librosa's amplitude_to_db default)
_CPU_CHUNK_BYTES = 4 << 20  # working-set target of one chunk of a CPU batch (L2 is 0.5-2 MB per core)


def rms_normalise(wave: Tensor, target: float = TARGET_RMS) -> Tensor:
    """Scale each row of ``wave`` (B, S) to RMS ``target``; rows below -120 dBFS RMS are left as they are."""
    rms = wave.square().mean(dim=-1, keepdim=True).sqrt()
    scale = torch.where(rms > _MIN_RMS, target / rms.clamp_min(_MIN_RMS), torch.ones_like(rms))
    return wave * scale


def pcen(
    power: Tensor,
    *,
    smoothing: float = PCEN_SMOOTHING,
    gain: float = 0.98,
    bias: float = 2.0,
    power_exp: float = 0.5,
    eps: float = 1e-6,
) -> Tensor:
    """Per-channel energy normalisation (Wang et al. 2017) of a power spectrogram (B, F, T).

    ``(E / (eps + M)^gain + bias)^power_exp - bias^power_exp`` with ``M`` a first-order IIR smoothing of
    ``E`` along time (``M[t] = (1 - smoothing) M[t-1] + smoothing E[t]``, started at ``E[0]`` as if it had
    always been there). Each band is divided by its own recent energy, so a fixed EQ or level of a sound
    source cancels out; librosa's defaults, with the power of waves at :data:`TARGET_RMS` scaled like
    32-bit integer audio (librosa's advice) so that ``bias`` sits at a comparable level.
    """
    e = power.float() * PCEN_SCALE
    e0 = e[..., :1]
    # the IIR runs in float64: a 0.975 pole over thousands of frames drifts in float32 (lfilter clamps off)
    m = (
        AF.lfilter(
            (e - e0).double(),
            torch.tensor([1.0, smoothing - 1.0], dtype=torch.float64, device=e.device),
            torch.tensor([smoothing, 0.0], dtype=torch.float64, device=e.device),
            clamp=False,
        ).float()
        + e0
    )
    return (e / (eps + m).pow(gain) + bias).pow(power_exp) - bias**power_exp


def spec_augment_masks(
    batch: int,
    size: int,
    n_masks: int,
    max_width: int,
    *,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-example boolean masks (B, size): the union of ``n_masks`` random bands of width 0..max_width.

    Random numbers are drawn on the CPU (with ``generator`` when given) and moved to ``device``, so the
    masks are identical on every device for a given generator state.
    """
    if n_masks == 0 or size == 0:
        return torch.zeros(batch, size, dtype=torch.bool, device=device)
    max_width = min(max_width, size)
    widths = torch.randint(0, max_width + 1, (batch, n_masks), generator=generator)
    starts = (torch.rand(batch, n_masks, generator=generator) * (size - widths + 1)).floor().long()
    idx = torch.arange(size)
    inside = (idx >= starts[..., None]) & (idx < (starts + widths)[..., None])  # (B, n_masks, size)
    return inside.any(dim=1).to(device)


class FrontEnd(nn.Module):
    """Base class: wave batch (B, S) float32 at ``sample_rate`` → features (B, 1, n_bins, T).

    Subclasses implement :meth:`db`, the dB spectrogram (B, n_bins, T) of RMS-normalised waves; this class
    does the clipping, normalisation and (training-only) masking.
    """

    kind: ClassVar[str]
    sample_rate: int
    n_bins: int
    hop_length: int

    def __init__(self, cfg: AnyFrontEndConfig) -> None:
        super().__init__()
        self.config = cfg
        self.sample_rate = cfg.sample_rate
        self.hop_length = cfg.hop_length
        self.n_bins = cfg.n_bins if isinstance(cfg, CqtConfig) else cfg.n_mels
        # front ends without a dB scale (musicnn_mel) override forward and use neither
        self.top_db = float(getattr(cfg, "top_db", 0.0))
        self.norm: str = getattr(cfg, "norm", "none")
        self.spec_augment: SpecAugmentConfig = cfg.spec_augment

    def frames(self, n_samples: int) -> int:
        """Number of feature frames for ``n_samples`` samples (centred frames: ``1 + n_samples // hop``)."""
        return 1 + int(n_samples) // self.hop_length

    def db(self, wave: Tensor) -> Tensor:
        """Spectrogram in dB (B, n_bins, T), unclipped, of float32 waves (B, S)."""
        raise NotImplementedError

    def cpu_chunk(self, n_samples: int) -> int:
        """Examples per chunk when computing :meth:`db` on CPU (0: the whole batch at once).

        Chunking changes no number; it keeps the large intermediates (frames, complex spectra) inside the
        CPU caches and out of the allocator's fresh-page path, which is 2-3x faster for big batches.
        """
        return 0

    def forward(self, wave: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Features of a batch of waves.

        Args:
            wave: (B, S) mono waves at :attr:`sample_rate`; any float dtype (computed in float32).
            generator: CPU random generator for the training-mode masks (global RNG when None).

        Returns:
            (B, 1, n_bins, T) float32 features with ``T == self.frames(S)``.
        """
        self._check_wave(wave)
        dev = wave.device.type
        fp32 = torch.autocast(dev, enabled=False) if torch.amp.is_autocast_available(dev) else nullcontext()
        with fp32:
            x = rms_normalise(wave.float())
            chunk = self.cpu_chunk(x.shape[-1]) if x.device.type == "cpu" else 0
            # PCEN replaces the dB scale (mel only: the config allows it for mel front ends alone)
            spectrum = (lambda w: pcen(cast(MelFrontEnd, self).power(w))) if self.norm == "pcen" else self.db
            if 0 < chunk < x.shape[0]:
                spec = torch.cat([spectrum(part) for part in x.split(chunk)])
            else:
                spec = spectrum(x)
            if self.norm != "pcen":  # dB scales: clip at top_db below each example's maximum
                peak = spec.amax(dim=(1, 2), keepdim=True)
                spec = torch.maximum(spec, peak - self.top_db)
            if self.norm == "max":
                spec = (spec - peak) / self.top_db
            elif self.norm == "instance":
                mean = spec.mean(dim=(1, 2), keepdim=True)
                std = spec.std(dim=(1, 2), keepdim=True)
                spec = (spec - mean) / (std + 1e-5)
            if self.training:
                spec = self._mask(spec, generator)
        return spec.unsqueeze(1)

    def _check_wave(self, wave: Tensor) -> None:
        if wave.ndim != 2:
            raise ValueError(
                f"{type(self).__name__} expects waves shaped (batch, samples), got {tuple(wave.shape)}"
            )
        if wave.shape[-1] == 0:
            raise ValueError("cannot compute features of an empty wave")

    def _mask(self, spec: Tensor, generator: torch.Generator | None) -> Tensor:
        sa = self.spec_augment
        if sa.freq_masks == 0 and sa.time_masks == 0:
            return spec
        b, f, t = spec.shape
        fm = spec_augment_masks(b, f, sa.freq_masks, sa.freq_width, device=spec.device, generator=generator)
        tm = spec_augment_masks(b, t, sa.time_masks, sa.time_width, device=spec.device, generator=generator)
        mask = fm[:, :, None] | tm[:, None, :]
        # masked cells take the example's mean so the mask adds no new extreme values to the input
        fill = spec.mean(dim=(1, 2), keepdim=True).expand_as(spec)
        return torch.where(mask, fill, spec)

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return f"sample_rate={self.sample_rate}, n_bins={self.n_bins}, hop_length={self.hop_length}, " + (
            f"norm={self.norm!r}"
        )


FRONT_ENDS: Registry[type[FrontEnd]] = Registry("front end")


@FRONT_ENDS.register("mel")
class MelFrontEnd(FrontEnd):
    """Log-mel spectrogram: the same numbers as ``torchaudio.transforms.MelSpectrogram(power=2)``.

    Slaney mel scale and Slaney-normalised filters (librosa's defaults, which the seed used), a periodic Hann
    window of ``win_length`` centred in ``n_fft``, centred frames with zero padding (librosa >= 0.10's
    ``pad_mode='constant'``, which also works for waves shorter than half a window). The STFT and the filter
    bank are applied directly (not through the torchaudio module) because its complex ``abs().pow(2)`` costs
    as much as the FFT itself on CPU; the test suite checks the two agree.
    """

    kind = "mel"
    fb: Tensor  # (n_fft // 2 + 1, n_mels) filter bank
    window: Tensor  # (win_length,) periodic Hann

    def __init__(self, cfg: MelConfig) -> None:
        super().__init__(cfg)
        self.n_fft = cfg.n_fft
        self.win_length = cfg.win_length
        f_max = cfg.f_max if cfg.f_max is not None else cfg.sample_rate / 2
        fb = AF.melscale_fbanks(
            n_freqs=cfg.n_fft // 2 + 1,
            f_min=cfg.f_min,
            f_max=f_max,
            n_mels=cfg.n_mels,
            sample_rate=cfg.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # (n_freqs, n_mels)
        self.register_buffer("fb", fb, persistent=False)  # (n_freqs, n_mels)
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)

    def power(self, wave: Tensor) -> Tensor:
        """Mel power spectrogram (B, n_mels, T) of float32 waves (B, S)."""
        n_frames = self.frames(wave.shape[-1])
        half = self.n_fft // 2
        # torch.stft(center=True, pad_mode="constant") frames: frame j spans padded[j*hop : j*hop + n_fft]
        # and its window (win_length wide, centred in n_fft) is non-zero only from `left` on. Framing just
        # the windowed part and zero-padding it to n_fft in the FFT shifts each frame circularly, which
        # changes the phase but not the power, and skips multiplying n_fft - win_length zeros (6000 of
        # 8192 for mel_seed).
        left = (self.n_fft - self.win_length) // 2
        padded = nn.functional.pad(wave, (half, half))
        frames = padded[:, left:].unfold(-1, self.win_length, self.hop_length)[:, :n_frames]  # (B, T, win)
        spec = torch.fft.rfft(frames * self.window, n=self.n_fft)  # (B, T, n_freqs)
        power = spec.real.square() + spec.imag.square()
        # one (B*T, n_freqs) @ (n_freqs, n_mels) GEMM, then back to (B, n_mels, T)
        return torch.matmul(power, self.fb).transpose(1, 2).contiguous()

    def cpu_chunk(self, n_samples: int) -> int:
        """Examples per ~4 MB of complex spectrum (10 one-second windows for mel_fast, 1 for mel_seed)."""
        per_example = self.frames(n_samples) * (self.n_fft // 2 + 1) * 8
        return max(1, _CPU_CHUNK_BYTES // per_example)

    def db(self, wave: Tensor) -> Tensor:
        """Mel power in dB (ref 1.0, floor 1e-10), shape (B, n_mels, T)."""
        return 10.0 * torch.log10(self.power(wave).clamp_min(_POWER_AMIN))

    @property
    def center_frequencies(self) -> Tensor:
        """Centre frequency (Hz) of each mel band, low to high: where each triangular filter peaks."""
        n_freqs = self.n_fft // 2 + 1
        freqs = torch.linspace(0, self.sample_rate / 2, n_freqs)
        return freqs[self.fb.cpu().argmax(dim=0)]


@FRONT_ENDS.register("cqt")
class CqtFrontEnd(FrontEnd):
    """Constant-Q magnitude in dB with nnAudio's ``CQT1992v2`` (librosa-compatible kernels and scaling).

    ``CQT1992v2`` convolves the wave with the full-length time-domain kernels: exact, and on CPU as fast as
    the octave-by-octave ``CQT2010v2`` at these sizes, so the faithful one is used. Frames are centred with
    zero padding (librosa's ``cqt`` pads with zeros too; reflection would need waves longer than the longest
    kernel). The kernels are buffers kept out of state dicts.
    """

    kind = "cqt"
    cqt: nn.Module

    def __init__(self, cfg: CqtConfig) -> None:
        super().__init__(cfg)
        self.bins_per_octave = cfg.bins_per_octave
        self.f_min = float(cfg.f_min)
        self.cqt = CQT1992v2(
            sr=cfg.sample_rate,
            hop_length=cfg.hop_length,
            fmin=cfg.f_min,
            n_bins=cfg.n_bins,
            bins_per_octave=cfg.bins_per_octave,
            pad_mode="constant",
            output_format="Magnitude",
            verbose=False,
        )
        # nnAudio registers its kernels as persistent buffers; they derive from the config, so re-register
        # them as non-persistent to keep checkpoints small and loadable across nnAudio versions.
        for name, buf in list(self.cqt.named_buffers(recurse=False)):
            delattr(self.cqt, name)
            self.cqt.register_buffer(name, buf, persistent=False)

    def db(self, wave: Tensor) -> Tensor:
        """CQT magnitude in dB (ref 1.0, floor 1e-5), shape (B, n_bins, T)."""
        mag = self.cqt(wave)  # (B, n_bins, T)
        return 20.0 * torch.log10(mag.clamp_min(_MAG_AMIN))

    @property
    def center_frequencies(self) -> Tensor:
        """Centre frequency (Hz) of each CQT bin: ``f_min * 2 ** (k / bins_per_octave)``."""
        k = torch.arange(self.n_bins, dtype=torch.float64)
        return (self.f_min * 2.0 ** (k / self.bins_per_octave)).float()


def slaney_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Librosa's default mel filter bank (Slaney mel scale, Slaney area normalisation), computed in float64.

    The same numbers as ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min,
    fmax=f_max)`` without depending on librosa.

    Returns:
        (n_fft // 2 + 1, n_mels) float32 weights: power spectrum frames @ weights = mel power.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return np.where(
            f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp
        )

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    mels = np.linspace(hz_to_mel(np.array(f_min)), hz_to_mel(np.array(f_max)), n_mels + 2)
    mel_f = mel_to_hz(mels)
    fft_f = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_f[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return np.ascontiguousarray(weights.T, dtype=np.float32)


@FRONT_ENDS.register("musicnn_mel")
class MusicnnMelFrontEnd(FrontEnd):
    """musicnn's input: 96 Slaney mels of a 512-point STFT at 16 kHz, hop 256, as log10(10000 x + 1).

    The numbers of ``musicnn/extractor.py`` (librosa ``melspectrogram`` with its defaults: periodic Hann
    window, centred frames, power 2) with two deliberate differences: the log compression is done in float32
    (musicnn casts the mel power to float16 first, which overflows to inf above ~6.5, i.e. on loud input,
    and makes every embedding the same), and waves are RMS-normalised to ``target_rms`` first unless that is
    null. Centred frames are padded by reflection (the default of the librosa releases musicnn was trained
    with); waves of at most ``n_fft / 2`` samples, too short to reflect, are zero-padded. There is no dB
    clipping or per-example normalisation: the pretrained network's own input BatchNorm expects these values.
    """

    kind = "musicnn_mel"
    fb: Tensor  # (n_fft // 2 + 1, n_mels)
    window: Tensor  # (n_fft,) periodic Hann

    def __init__(self, cfg: MusicnnMelConfig) -> None:
        super().__init__(cfg)
        self.n_fft = cfg.n_fft
        self.target_rms = cfg.target_rms
        self.pad_mode = cfg.pad_mode
        fb = slaney_mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)
        self.register_buffer("fb", torch.from_numpy(fb), persistent=False)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def power(self, wave: Tensor) -> Tensor:
        """Mel power spectrogram (B, n_mels, T) of float32 waves (B, S), ``T = 1 + S // hop``."""
        half = self.n_fft // 2
        mode = self.pad_mode if wave.shape[-1] > half else "constant"
        padded = nn.functional.pad(wave[:, None, :], (half, half), mode=mode)[:, 0]
        frames = padded.unfold(-1, self.n_fft, self.hop_length)  # (B, T, n_fft)
        spec = torch.fft.rfft(frames * self.window)
        power = spec.real.square() + spec.imag.square()
        return torch.matmul(power, self.fb).transpose(1, 2).contiguous()

    def db(self, wave: Tensor) -> Tensor:
        """The compressed spectrogram log10(10000 x + 1) (B, n_mels, T); not in dB despite the name."""
        return torch.log10(self.power(wave) * 10000.0 + 1.0)

    def cpu_chunk(self, n_samples: int) -> int:
        """Examples per ~4 MB of complex spectrum (about 30 one-second windows)."""
        per_example = self.frames(n_samples) * (self.n_fft // 2 + 1) * 8
        return max(1, _CPU_CHUNK_BYTES // per_example)

    def forward(self, wave: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Features (B, 1, 96, T) of waves (B, S) at 16 kHz; SpecAugment masks in training mode only."""
        self._check_wave(wave)
        dev = wave.device.type
        fp32 = torch.autocast(dev, enabled=False) if torch.amp.is_autocast_available(dev) else nullcontext()
        with fp32:
            x = wave.float()
            if self.target_rms is not None:
                x = rms_normalise(x, self.target_rms)
            chunk = self.cpu_chunk(x.shape[-1]) if x.device.type == "cpu" else 0
            if 0 < chunk < x.shape[0]:
                spec = torch.cat([self.db(part) for part in x.split(chunk)])
            else:
                spec = self.db(x)
            if self.training:
                spec = self._mask(spec, generator)
        return spec.unsqueeze(1)

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return f"sample_rate={self.sample_rate}, n_bins={self.n_bins}, hop_length={self.hop_length}, " + (
            f"target_rms={self.target_rms}, pad_mode={self.pad_mode!r}"
        )


def build_front_end(cfg: AnyFrontEndConfig) -> FrontEnd:
    """Instantiate the front end registered under ``cfg.kind`` (in training mode, like any new module)."""
    return FRONT_ENDS.get(cfg.kind)(cfg)


def window_frames(cfg: AnyFrontEndConfig, window_s: float) -> int:
    """Feature frames of a ``window_s``-second window (``1 + samples // hop``) without building the module."""
    return 1 + round(window_s * cfg.sample_rate) // cfg.hop_length
