import io
import math

import numpy as np
import pytest
import soundfile as sf

from ml.audio import (
    AudioError,
    EmptyAudioError,
    InvalidSamplesError,
    TooLongAudioError,
    TooShortAudioError,
    UndecodableAudioError,
    decode,
    resample,
    rms_dbfs,
)
from tests.conftest import tone


def encode(wave: np.ndarray, sr: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


FORMATS = [
    ("WAV", "PCM_U8"),
    ("WAV", "PCM_16"),
    ("WAV", "PCM_24"),
    ("WAV", "PCM_32"),
    ("WAV", "FLOAT"),
    ("WAV", "DOUBLE"),
    ("FLAC", "PCM_16"),
    ("FLAC", "PCM_24"),
    ("OGG", "VORBIS"),
    ("MP3", "MPEG_LAYER_III"),
]


@pytest.mark.parametrize(("fmt", "subtype"), FORMATS)
def test_every_format_decodes_to_mono_float32_at_model_rate(fmt, subtype):
    sr = 44100
    stereo = np.stack([tone(440, 1.0, sr), tone(440, 1.0, sr)], axis=1)
    audio = decode(encode(stereo, sr, fmt, subtype), 22050)
    assert audio.wave.dtype == np.float32 and audio.wave.ndim == 1
    assert audio.sample_rate == 22050 and audio.source_rate == sr and audio.channels == 2
    assert abs(audio.duration_s - 1.0) < 0.06  # MP3 encoder padding
    # the tone survives: the spectrum peaks at 440 Hz
    spec = np.abs(np.fft.rfft(audio.wave[:16384]))
    assert abs(np.argmax(spec) * 22050 / 16384 - 440) < 5
    assert not audio.silent


@pytest.mark.parametrize("sr", [8000, 11025, 16000, 22050, 48000, 96000, 192000])
@pytest.mark.parametrize("channels", [1, 2, 6, 8])
def test_any_rate_and_channel_count(sr, channels):
    wave = np.repeat(tone(300, 0.5, sr)[:, None], channels, axis=1)
    audio = decode(encode(wave, sr, "WAV", "PCM_16"), 16000)
    assert audio.sample_rate == 16000 and abs(len(audio.wave) - 8000) <= 2
    assert audio.channels == channels
    assert np.max(np.abs(audio.wave)) == pytest.approx(0.3, abs=0.02)  # channel mean keeps the level


def test_path_and_file_object_sources(tmp_path):
    p = tmp_path / "a.flac"
    sf.write(p, tone(220, 0.5, 16000), 16000)
    assert decode(p).sample_rate == 16000
    with open(p, "rb") as f:
        assert len(decode(f).wave) == 8000


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", EmptyAudioError),
        (b"this is not audio at all" * 10, UndecodableAudioError),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", UndecodableAudioError),  # truncated header
        (b"fLaC\x00\x00\x00\x22" + b"\x00" * 10, UndecodableAudioError),
        (b"OggS" + b"\x00" * 40, UndecodableAudioError),
        (b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff" * 3, UndecodableAudioError),
    ],
)
def test_bad_bytes_give_typed_errors(data, error):
    with pytest.raises(error) as e:
        decode(data, 16000)
    assert isinstance(e.value, AudioError) and e.value.code and str(e.value)


def test_header_only_wav_has_no_samples():
    data = encode(np.zeros(0, dtype=np.float32), 16000, "WAV", "PCM_16")
    with pytest.raises(EmptyAudioError):
        decode(data)


def test_truncated_wav_keeps_what_is_there():
    data = encode(tone(440, 1.0, 16000), 16000, "WAV", "PCM_16")
    audio = decode(data[: len(data) // 2])
    assert 0.4 < audio.duration_s < 0.6


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_rejected(bad):
    wave = tone(440, 0.2, 16000)
    wave[100] = bad
    with pytest.raises(InvalidSamplesError):
        decode(encode(wave, 16000, "WAV", "FLOAT"))


def test_too_long_rejected_before_decoding():
    data = encode(np.zeros(16000 * 3, dtype=np.float32), 16000, "WAV", "PCM_16")
    with pytest.raises(TooLongAudioError, match="limit of 2 s"):
        decode(data, max_seconds=2)


def test_too_short_and_one_sample():
    one = encode(np.array([0.1], dtype=np.float32), 16000, "WAV", "PCM_16")
    assert len(decode(one).wave) == 1
    with pytest.raises(TooShortAudioError):
        decode(one, min_seconds=0.05)


def test_silence_is_flagged_not_an_error():
    audio = decode(encode(np.zeros(16000, dtype=np.float32), 16000, "WAV", "PCM_16"))
    assert audio.silent and rms_dbfs(audio.wave) == -math.inf


def test_float_wav_over_full_scale_is_clipped():
    audio = decode(encode(tone(100, 0.1, 8000, amp=4.0), 8000, "WAV", "FLOAT"))
    assert np.max(np.abs(audio.wave)) <= 1.0


def test_resample_identity_and_length():
    w = tone(100, 1.0, 44100)
    assert resample(w, 44100, 44100) is not None and len(resample(w, 44100, 16000)) == 16000


@pytest.mark.parametrize(
    ("orig", "new", "polyphase"),
    [
        (44100, 22050, True),
        (48000, 16000, True),
        (32000, 16000, True),
        (44100, 16000, False),
        (16000, 44100, False),
    ],
)
@pytest.mark.parametrize("length", [1, 2, 3, 4411, 44100 * 3 + 7])
def test_resample_tensor_matches_torchaudio(orig, new, polyphase, length):
    """Both paths of the cached resampler give torchaudio's numbers (polyphase only re-orders sums)."""
    import torch
    import torchaudio.functional as taf

    from ml.audio import POLYPHASE_MIN_BLOCKS, _resampler, resample_tensor

    g = math.gcd(orig, new)
    module = _resampler(orig // g, new // g, "cpu")
    assert (-(-module.kernel.shape[-1] // (orig // g)) >= POLYPHASE_MIN_BLOCKS) == polyphase
    wave = torch.from_numpy(np.random.default_rng(length).standard_normal((2, length)).astype(np.float32))
    want = taf.resample(wave, orig, new)
    got = resample_tensor(wave, orig, new)
    assert got.shape == want.shape == (2, math.ceil(length * new / orig))
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert torch.allclose(resample_tensor(wave[0], orig, new), got[0], atol=1e-6, rtol=0)  # 1-D input


def test_resampler_of_ratio_one_is_the_identity():
    """An odd header rate approximated by the ratio 1 (22051 → 22050 Hz) builds no kernel, copies nothing."""
    import torch

    from ml.audio import _resampler

    wave = torch.randn(3, 100)
    assert torch.equal(_resampler(1, 1, "cpu")(wave), wave)
    assert len(resample(np.zeros(22051, np.float32), 22051, 22050)) == 22051  # ratio 1: same samples
