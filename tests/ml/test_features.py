import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from ml.config import CqtConfig, MelConfig, SpecAugmentConfig, load_config
from ml.features import FRONT_ENDS, CqtFrontEnd, MelFrontEnd, build_front_end, rms_normalise, window_frames

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "config.yml")


def tone(freq: float, sr: int, seconds: float = 1.0, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * freq * t)).float()


def test_registry_has_both_kinds():
    assert FRONT_ENDS.names() == ["cqt", "mel", "musicnn_mel"]
    assert isinstance(build_front_end(MelConfig()), MelFrontEnd)
    assert isinstance(build_front_end(CqtConfig()), CqtFrontEnd)


@pytest.mark.parametrize(
    ("name", "bins", "frames_1s"), [("cqt_seed", 96, 87), ("mel_seed", 128, 101), ("mel_fast", 96, 100)]
)
def test_shapes_at_1s_and_20s(cfg, name, bins, frames_1s):
    fe = build_front_end(cfg.front_ends[name]).eval()
    sr = fe.sample_rate
    assert fe.n_bins == bins
    assert fe.frames(sr) == frames_1s == window_frames(cfg.front_ends[name], 1.0)
    with torch.inference_mode():
        one = fe(torch.randn(3, sr))
        long = fe(torch.randn(1, 20 * sr))
    assert one.shape == (3, 1, bins, frames_1s)
    assert long.shape == (1, 1, bins, fe.frames(20 * sr))
    assert one.dtype == torch.float32 and torch.isfinite(one).all() and torch.isfinite(long).all()


def test_rejects_bad_input_shapes(cfg):
    fe = build_front_end(cfg.front_ends["mel_fast"])
    with pytest.raises(ValueError, match="batch, samples"):
        fe(torch.randn(22050))
    with pytest.raises(ValueError, match="empty"):
        fe(torch.zeros(2, 0))


def test_mel_power_matches_torchaudio(cfg):
    for name in ("mel_seed", "mel_fast"):
        c = cfg.front_ends[name]
        fe = build_front_end(c)
        ref = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate,
            n_fft=c.n_fft,
            win_length=c.win_length,
            hop_length=c.hop_length,
            f_min=c.f_min,
            f_max=c.f_max,
            n_mels=c.n_mels,
            power=2.0,
            center=True,
            pad_mode="constant",
            norm="slaney",
            mel_scale="slaney",
        )
        for n in (c.sample_rate, 12345, 300):
            x = torch.randn(2, n)
            a, b = fe.power(x), ref(x)
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(b.max()))


@pytest.mark.parametrize("name", ["mel_fast", "mel_seed"])
@pytest.mark.parametrize("freq", [220.0, 440.0, 1000.0, 3000.0])
def test_pure_tone_lights_the_right_mel_band(cfg, name, freq):
    fe = build_front_end(cfg.front_ends[name]).eval()
    with torch.inference_mode():
        spec = fe(tone(freq, fe.sample_rate)[None])[0, 0]
    expected = int(torch.argmin((fe.center_frequencies - freq).abs()))
    assert abs(int(spec.mean(dim=1).argmax()) - expected) <= 1


@pytest.mark.parametrize("freq", [65.41, 220.0, 440.0, 1760.0])
def test_pure_tone_lights_the_right_cqt_bin(cfg, freq):
    fe = build_front_end(cfg.front_ends["cqt_seed"]).eval()
    with torch.inference_mode():
        spec = fe(tone(freq, fe.sample_rate, 2.0)[None])[0, 0]
    expected = round(12 * math.log2(freq / 32.70))  # 12 bins per octave from C1
    assert int(spec[:, 20:-20].mean(dim=1).argmax()) == expected


def test_level_invariant_and_silence_is_finite(cfg):
    for name, c in cfg.front_ends.items():
        fe = build_front_end(c).eval()
        x = torch.randn(2, fe.sample_rate) * 0.01
        with torch.inference_mode():
            a, b = fe(x), fe(x * 50)
            silent = fe(torch.zeros(1, fe.sample_rate))
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=name)
        assert torch.isfinite(silent).all(), name


def test_rms_normalise_guards_silence():
    x = torch.stack([torch.zeros(100), torch.full((100,), 2.0)])
    y = rms_normalise(x, 0.1)
    assert torch.equal(y[0], torch.zeros(100))
    torch.testing.assert_close(y[1].square().mean().sqrt(), torch.tensor(0.1))


def test_norms(cfg):
    x = tone(1000.0, 22050).expand(2, -1) + 1e-6 * torch.randn(2, 22050)  # > 80 dB of dynamic range
    base = cfg.front_ends["mel_fast"]
    with torch.inference_mode():
        mx = build_front_end(base.model_copy(update={"norm": "max"})).eval()(x)
        inst = build_front_end(base.model_copy(update={"norm": "instance"})).eval()(x)
        raw = build_front_end(base.model_copy(update={"norm": "none"})).eval()(x)
    assert float(mx.max()) == pytest.approx(0.0, abs=1e-6) and float(mx.min()) >= -1.0 - 1e-6
    torch.testing.assert_close(inst.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(inst.std(dim=(1, 2, 3)), torch.ones(2), atol=1e-3, rtol=0)
    assert float(raw.amax() - raw.amin()) == pytest.approx(base.top_db, abs=1e-3)  # clipped at top_db


def test_spec_augment_only_in_training_mode():
    c = MelConfig(
        sample_rate=16000,
        n_mels=64,
        spec_augment=SpecAugmentConfig(freq_masks=2, freq_width=10, time_masks=2, time_width=10),
    )
    fe = build_front_end(c)
    x = torch.randn(8, 16000)
    fe.eval()
    ref = fe(x)
    torch.testing.assert_close(fe(x), ref)  # eval: deterministic, nothing masked
    fe.train()
    a = fe(x, torch.Generator().manual_seed(1))
    b = fe(x, torch.Generator().manual_seed(1))
    c_ = fe(x, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)  # same generator state → same masks
    assert not torch.equal(a, c_)
    assert not torch.equal(a, ref)
    changed = (a != ref)[:, 0]  # (B, F, T)
    full_rows = changed.all(dim=2).sum(dim=1)  # masked frequency rows per example
    full_cols = changed.all(dim=1).sum(dim=1)  # masked frames per example
    assert (full_rows + full_cols > 0).float().mean() > 0.5  # most examples got some mask
    assert (full_rows <= 20).all() and (full_cols <= 20).all()  # at most 2 masks x width 10
    # masks differ per example
    assert len({tuple(r.tolist()) for r in changed.all(dim=2).int()}) > 1


def test_buffers_stay_out_of_state_dict(cfg):
    for c in cfg.front_ends.values():
        fe = build_front_end(c)
        assert fe.state_dict() == {}
        assert len(list(fe.buffers())) > 0


@pytest.mark.parametrize("name", ["cqt_seed", "mel_seed", "mel_fast"])
def test_follows_the_input_device(cfg, name):
    """Every tensor the front end makes lives on the input's device: the meta device catches any stray CPU
    tensor (mixing devices raises) without needing a GPU; CUDA, when present, must match the CPU numbers."""
    fe = build_front_end(cfg.front_ends[name])
    x = torch.randn(2, fe.sample_rate)
    fe.to("meta")
    for mode in (fe.eval, fe.train):
        mode()
        y = fe(x.to("meta"))
        assert y.device.type == "meta" and y.shape == (2, 1, fe.n_bins, fe.frames(fe.sample_rate))
    if torch.cuda.is_available():
        fe_cpu = build_front_end(cfg.front_ends[name]).eval()
        fe_gpu = build_front_end(cfg.front_ends[name]).eval().to("cuda")
        torch.testing.assert_close(fe_gpu(x.cuda()).cpu(), fe_cpu(x), rtol=1e-3, atol=1e-3)


def test_front_end_is_fp32_under_autocast(cfg):
    fe = build_front_end(cfg.front_ends["mel_fast"]).eval()
    x = torch.randn(2, 22050)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fe(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, fe(x))


def test_a_click_lands_in_the_right_frame(cfg):
    fe = build_front_end(cfg.front_ends["mel_fast"]).eval()
    x = torch.zeros(1, fe.sample_rate)
    x[0, 11025 : 11025 + 64] = torch.from_numpy(np.hanning(64).astype(np.float32))
    with torch.inference_mode():
        spec = fe(x)[0, 0]
    frame = int(spec.mean(dim=0).argmax())
    assert abs(frame - 11025 / fe.hop_length) <= 2


def test_cpu_chunking_changes_nothing(cfg):
    fe = build_front_end(cfg.front_ends["mel_fast"]).eval()
    assert 1 < fe.cpu_chunk(fe.sample_rate) < 37
    x = torch.randn(37, fe.sample_rate)
    with torch.inference_mode():
        chunked = fe(x)
        whole = torch.cat([fe(x[:20]), fe(x[20:])])  # 20 > chunk, so these chunk too; compare with db()
        direct = fe.db(rms_normalise(x))
    torch.testing.assert_close(chunked, whole)
    peak = direct.amax(dim=(1, 2), keepdim=True)
    direct = torch.maximum(direct, peak - fe.top_db)
    m, s = direct.mean(dim=(1, 2), keepdim=True), direct.std(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(chunked[:, 0], (direct - m) / (s + 1e-5), rtol=1e-4, atol=1e-4)


def _pcen_reference(e: np.ndarray, s=0.025, alpha=0.98, delta=2.0, r=0.5, eps=1e-6) -> np.ndarray:
    """PCEN written out frame by frame (Wang et al. 2017), smoother started at the first frame."""
    m = np.empty_like(e)
    m[..., 0] = e[..., 0]
    for t in range(1, e.shape[-1]):
        m[..., t] = (1 - s) * m[..., t - 1] + s * e[..., t]
    return (e / (eps + m) ** alpha + delta) ** r - delta**r


def test_pcen_matches_the_frame_by_frame_definition():
    from ml.features import PCEN_SCALE, pcen

    power = torch.rand(2, 5, 300, dtype=torch.float64).float() * 1e-3
    power[:, :, 100:] *= 50.0  # a step in level: the smoother has to catch up
    got = pcen(power)
    want = _pcen_reference(power.double().numpy() * PCEN_SCALE)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_pcen_front_end_cancels_a_fixed_band_gain(cfg):
    """A +20 dB boost of a band moves its dB features by 20 dB but its PCEN features by (1 - 0.98) of that."""
    base = cfg.front_ends["mel_fast"]
    fe = build_front_end(base.model_copy(update={"norm": "pcen"})).eval()
    assert cfg.front_ends["mel_pcen"].norm == "pcen"
    x = torch.randn(2, 2 * fe.sample_rate) * 0.1
    with torch.inference_mode():
        p = fe.power(x)
        boosted = p.clone()
        boosted[:, 40:50] *= 100.0
        from ml.features import pcen

        a, b = pcen(p)[..., 20:], pcen(boosted)[..., 20:]  # after the smoother has settled
        feats = fe(x)
    assert feats.shape == (2, 1, base.n_mels, fe.frames(x.shape[-1])) and torch.isfinite(feats).all()
    rel = (b[:, 40:50] / a[:, 40:50]).mean().item()
    assert 1.0 < rel < 1.2  # 100 ** 0.02 ≈ 1.10 at most, against 100× in power
    torch.testing.assert_close(a[:, :40], b[:, :40])  # other bands untouched
    fe.train()
    torch.manual_seed(0)
    masked = fe(x)
    assert masked.shape == feats.shape and not torch.equal(masked, feats)  # SpecAugment in training only
    with torch.inference_mode():
        torch.testing.assert_close(fe.eval()(x), feats)
