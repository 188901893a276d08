"""The one audio decoder used by everything (training cache, CLI, evaluation and Serve).

Any input libsndfile reads (WAV 8/16/24/32-bit int and 32/64-bit float, FLAC, OGG/Vorbis, MP3, AIFF, …),
any sample rate and channel count → mono float32 at the requested rate. Bad input fails with a typed
:class:`AudioError` carrying a short machine-readable ``code`` and a human reason, never deep inside torch.
"""

from __future__ import annotations

import functools
import io
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as tat


class AudioError(ValueError):
    """Input that cannot be turned into a usable waveform; ``code`` is stable for APIs and tests."""

    code = "invalid_audio"


class EmptyAudioError(AudioError):
    """Zero bytes, or a container with no samples."""

    code = "empty"


class UndecodableAudioError(AudioError):
    """Not a format the decoder reads, or a corrupt/truncated header."""

    code = "undecodable"


class InvalidSamplesError(AudioError):
    """Samples that are NaN or infinite."""

    code = "invalid_samples"


class TooLongAudioError(AudioError):
    """Longer than the configured limit; rejected before the samples are decoded."""

    code = "too_long"


class TooShortAudioError(AudioError):
    """Shorter than the configured minimum."""

    code = "too_short"


@dataclass(frozen=True)
class Audio:
    """A decoded mono waveform and what was learnt about its source."""

    wave: np.ndarray  # (S,) float32, mono, at `sample_rate`
    sample_rate: int
    source_rate: int
    channels: int
    format: str
    subtype: str
    silent: bool  # overall level below the silence floor: callers report it instead of guessing labels

    @property
    def duration_s(self) -> float:
        """Duration in seconds."""
        return len(self.wave) / self.sample_rate


Source = bytes | bytearray | memoryview | str | Path | BinaryIO

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd"}
    | {".caf", ".w64", ".rf64"}
)
"""File name extensions (lower case) of the formats :func:`decode` reads through libsndfile, used to pick
audio files out of folders (``mpic predict DIR``). A file given by name is decoded whatever its name."""

_BLOCK_SAMPLES = 1 << 20  # samples (frames x channels) read at once: 4 MB of float32


def _open(source: Source) -> BinaryIO | str:
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise EmptyAudioError("the file is empty (0 bytes)")
        return io.BytesIO(bytes(source))
    if isinstance(source, str | Path):
        p = Path(source)
        if not p.is_file():
            raise UndecodableAudioError(f"no such file: {p}")
        if p.stat().st_size == 0:
            raise EmptyAudioError("the file is empty (0 bytes)")
        return str(p)
    return source


def rms_dbfs(wave: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (−inf for digital silence)."""
    if wave.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's windowed-sinc) of a mono float32 wave.

    torchaudio builds a sinc kernel of about ``new × orig`` elements after dividing both rates by their
    gcd: nothing for 44.1/48/192 kHz, but 16 GB and half a minute for a WAV whose header says 44101 Hz.
    Such odd ratios are approximated by the nearest one whose kernel fits :data:`MAX_RESAMPLE_KERNEL`
    (a relative rate error below 1e-4: inaudible, and well within what the models tolerate).
    """
    if orig_rate == new_rate:
        return np.ascontiguousarray(wave, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return resample_tensor(t, orig_rate, new_rate).numpy()


def resample_tensor(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """:func:`resample` of a float32 tensor ``(..., S)`` on its own device (CPU or GPU).

    The same numbers as ``torchaudio.functional.resample`` (its windowed-sinc kernel, built in float32 as it
    builds it), but the kernel is built once per rate pair and device and reused (building it costs more
    than applying it to a 10-s song), and integer decimations run as a polyphase convolution
    (:class:`_Resampler`), 3× cheaper on long songs.
    """
    if orig_rate == new_rate:
        return wave
    orig, new = _bounded_ratio(int(orig_rate), int(new_rate))
    return _resampler(orig, new, str(wave.device))(wave)


# A kernel spanning at least this many input blocks of ``orig`` samples runs polyphase (see _Resampler).
POLYPHASE_MIN_BLOCKS = 4


class _Resampler(tat.Resample):
    """torchaudio's resampler with a polyphase path for kernels much longer than their stride.

    torchaudio convolves the padded wave with its ``(new, 1, K)`` kernel at stride ``orig``. When ``orig`` is
    small (2 for 44.1 → 22.05 kHz, 3 for 48 → 16 kHz; K = 28 and 41 taps) that strided single-channel
    convolution is slow on the CPU for long inputs (0.9 ms of CPU per audio-second of a 60-s 44.1-kHz song
    against 0.28 for a 10-s one, one thread; bench/findings.md). The same sums run as a stride-1 convolution
    over the wave folded into ``orig`` phases: ``(N, orig, S / orig)`` with the kernel folded into
    ``(new, orig, ⌈K / orig⌉)`` blocks (zero taps pad the last block) — 0.25 ms at any length, and the same
    products and outputs (tests/ml/test_audio.py compares with torchaudio).
    """

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Resample ``(..., S)`` → ``(..., ⌈S · new / orig⌉)``."""
        if self.orig_freq == self.new_freq:  # a bounded ratio of 1 (e.g. 22051 → 22050 Hz): no kernel
            return super().forward(waveform)
        orig, new = self.orig_freq // self.gcd, self.new_freq // self.gcd
        kernel = self.kernel  # (new, 1, K)
        taps = kernel.shape[-1]
        blocks = -(-taps // orig)
        if blocks < POLYPHASE_MIN_BLOCKS:
            return super().forward(waveform)
        shape, length = waveform.shape, waveform.shape[-1]
        x = waveform.reshape(-1, length)
        frames = -(-length // orig) + 1  # output frames torchaudio computes (then trims to the target)
        padded = torch.nn.functional.pad(x, (self.width, (frames + blocks - 1) * orig - length - self.width))
        phases = padded.reshape(x.shape[0], -1, orig).transpose(1, 2)  # (N, orig, frames + blocks - 1)
        folded = torch.nn.functional.pad(kernel[:, 0], (0, blocks * orig - taps))
        folded = folded.reshape(new, blocks, orig).transpose(1, 2)  # (new, orig, blocks)
        y = torch.nn.functional.conv1d(phases, folded).transpose(1, 2).reshape(x.shape[0], -1)
        target = math.ceil(new * length / orig)
        return y[..., :target].reshape((*shape[:-1], target))


@functools.lru_cache(maxsize=64)
def _resampler(orig: int, new: int, device: str) -> torch.nn.Module:
    # dtype=float32: the kernel torchaudio.functional.resample builds for float32 waves (bit-identical)
    return _Resampler(orig, new, dtype=torch.float32).to(device)


MAX_RESAMPLE_KERNEL = 1 << 22  # elements (16 MB of float32)


def _kernel_elements(orig: int, new: int) -> int:
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    width = math.ceil(6 * o / (0.99 * min(o, n)))  # torchaudio's defaults: 6 zero crossings, rolloff 0.99
    return n * (o + 2 * width)


def _bounded_ratio(orig: int, new: int) -> tuple[int, int]:
    """``(orig, new)`` itself, or the closest ratio of smaller terms whose resampling kernel is bounded."""
    if _kernel_elements(orig, new) <= MAX_RESAMPLE_KERNEL:
        return orig, new
    limit = orig // math.gcd(orig, new)
    while limit > 1:
        limit //= 2
        f = Fraction(new, orig).limit_denominator(limit)
        if f.numerator >= 1 and _kernel_elements(f.denominator, f.numerator) <= MAX_RESAMPLE_KERNEL:
            return f.denominator, f.numerator
    return max(1, round(orig / new)), 1  # a ratio below 1e-6: decimate by the nearest integer


def decode(
    source: Source,
    sample_rate: int | None = None,
    *,
    max_seconds: float | None = 600.0,
    min_seconds: float = 0.0,
    silence_dbfs: float = -70.0,
) -> Audio:
    """Decode audio bytes, a path or a file object to mono float32.

    Args:
        source: Raw bytes, a path, or a binary file object.
        sample_rate: Target rate in Hz; None keeps the source rate.
        max_seconds: Reject longer input (checked from the header before decoding the samples).
        min_seconds: Reject shorter input.
        silence_dbfs: Below this overall RMS level the result is flagged ``silent``.

    Returns:
        The decoded :class:`Audio`.

    Raises:
        AudioError: One of its subclasses, with a reason a person can act on.
    """
    handle = _open(source)
    try:
        with sf.SoundFile(handle) as f:
            rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            fmt, subtype = str(f.format), str(f.subtype)
            if rate <= 0 or channels <= 0:
                raise UndecodableAudioError(f"invalid header: {rate} Hz, {channels} channels")
            if max_seconds is not None and frames > 0 and frames / rate > max_seconds:
                raise TooLongAudioError(
                    f"{frames / rate:.1f} s is longer than the limit of {max_seconds:g} s"
                )
            wave = _read_mono(f, rate, channels, max_seconds)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError, OverflowError) as e:
        raise UndecodableAudioError(f"not a readable audio file ({_short(e)})") from None
    if wave.shape[0] == 0:
        raise EmptyAudioError("the file contains no audio samples")
    duration = wave.shape[0] / rate
    if max_seconds is not None and duration > max_seconds:
        raise TooLongAudioError(f"{duration:.1f} s is longer than the limit of {max_seconds:g} s")
    if duration < min_seconds:
        raise TooShortAudioError(f"{duration * 1000:.0f} ms is shorter than the minimum of {min_seconds:g} s")
    target = sample_rate or rate
    wave = resample(wave, rate, target)
    np.clip(wave, -1.0, 1.0, out=wave)  # float WAVs may exceed full scale; the models never saw that
    return Audio(
        wave=wave,
        sample_rate=target,
        source_rate=rate,
        channels=channels,
        format=fmt,
        subtype=subtype,
        silent=rms_dbfs(wave) < silence_dbfs,
    )


def _read_mono(f: sf.SoundFile, rate: int, channels: int, max_seconds: float | None) -> np.ndarray:
    """Read block by block, down-mixing each block, so memory follows the real samples, never the header.

    A forged header (FLAC/AIFF/CAF frame counts, huge channel counts) cannot make one allocation of its
    claimed size, and a stream whose header tells no length is cut off as soon as it passes ``max_seconds``.
    """
    blocksize = max(256, _BLOCK_SAMPLES // channels)
    limit = None if max_seconds is None else math.floor(max_seconds * rate) + 1
    parts: list[np.ndarray] = []
    total = 0
    while True:
        block = f.read(blocksize, dtype="float32", always_2d=True)  # (n, channels)
        if block.shape[0] == 0:
            break
        if not np.isfinite(block).all():
            raise InvalidSamplesError("the audio contains NaN or infinite samples")
        parts.append(_downmix(block))
        total += block.shape[0]
        if limit is not None and total > limit:
            raise TooLongAudioError(f"longer than the limit of {max_seconds:g} s")
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _downmix(block: np.ndarray) -> np.ndarray:
    """Mean of the channels of an (n, channels) float32 block → (n,).

    Averaging keeps the level of correlated stereo and avoids clipping (a sum would double it). Adding
    whole columns is ~30x faster than ``block.mean(axis=1)``, whose reduction along the short axis was
    most of the decoding time of a stereo upload (bench/inference.py).
    """
    out = block[:, 0].copy()
    for c in range(1, block.shape[1]):
        out += block[:, c]
    if block.shape[1] > 1:
        out *= np.float32(1.0 / block.shape[1])
    return out


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # libsndfile says "Error opening <_io.BytesIO object at 0x…>: Format not recognised." — keep the reason,
    # never an object repr or a server-side path
    text = re.sub(r"^Error opening .*?:\s*", "", text)
    text = re.sub(r"<[^>]*object at 0x[0-9a-f]+>", "input", text)
    if "not a regular file" in text:  # what libsndfile says of a cut-off MP3 stream read from memory
        text = "truncated or corrupt stream"
    return text[:160].rstrip(".")


def write_wav(path: str | Path, wave: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Write a mono or (S, C) float wave as WAV (used by the synthesiser, tests and benchmarks)."""
    sf.write(str(path), np.asarray(wave, dtype=np.float32), sample_rate, subtype=subtype)
