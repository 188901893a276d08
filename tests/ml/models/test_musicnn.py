"""The musicnn port: TF checkpoint reader, front end and trunk against the original TensorFlow graph,
the member's training step, checkpoints and errors.

The reference outputs in ``data/musicnn_reference.npz`` come from the ORIGINAL musicnn graph and
checkpoints run under TensorFlow by ``tools/musicnn_reference.py`` (see its docstring) on the signals that
:func:`signals` rebuilds here.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.checkpoint import CheckpointMeta, load_classifier, save_classifier
from ml.config import ConfigError, MusicnnMelConfig, load_config
from ml.features import MusicnnMelFrontEnd, build_front_end, slaney_mel_filterbank
from ml.models import build_classifier, classifier_from_spec, classifier_spec, count_parameters
from ml.models.musicnn import EMBEDDING_SIZES, Musicnn, pretrained_trunk
from ml.pretrained import musicnn as store
from ml.pretrained.tf_checkpoint import (
    TfCheckpointError,
    crc32c,
    parse_index,
    read_checkpoint,
    read_checkpoint_from_zip,
)

ROOT = Path(__file__).resolve().parents[3]
REF = Path(__file__).parent / "data" / "musicnn_reference.npz"
SR = 16000
MODELS = {"mtt": "MTT_musicnn", "msd": "MSD_musicnn"}
# The port and TF sum the same float32 products in different orders (oneDNN vs Eigen convolutions over up
# to 561 x 7 = 3927 terms, pocketfft vs librosa's FFT); measured differences are <= 2e-5 on logits of
# magnitude ~10 and <= 6e-6 on log-mels up to ~5.3. A wrong layout, padding, epsilon or pooling order
# moves them by 1e-2 or more.
ATOL = 1e-4


def signals() -> dict[str, np.ndarray]:
    """The signals of tools/musicnn_reference.py (same code)."""
    rng = np.random.default_rng(12345)
    t3 = np.arange(3 * SR) / SR
    f0 = 220.0 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t3))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    tone = 0.2 * sum(np.sin(k * phase) / k for k in range(1, 11)) + 0.01 * rng.standard_normal(t3.size)
    env = np.exp(-30 * (t3 % 0.25))
    drums = 0.5 * env * rng.standard_normal(t3.size) + 0.3 * np.sin(2 * np.pi * 55 * t3)
    t1 = np.arange(SR) / SR
    chord = sum(0.15 * np.sign(np.sin(2 * np.pi * f * t1)) for f in (220.0, 277.18, 329.63))
    return {
        k: np.asarray(v, dtype=np.float32) for k, v in (("tone", tone), ("drums", drums), ("chord", chord))
    }


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REF) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def waves(ref) -> dict[str, np.ndarray]:
    out = signals()
    for k, w in out.items():  # the very signals the reference was computed on
        size, total, l1 = ref[f"{k}/wave_stats"]
        assert w.size == size
        np.testing.assert_allclose(
            [w.sum(dtype=np.float64), np.abs(w).sum(dtype=np.float64)], [total, l1], rtol=1e-6
        )
    return out


@pytest.fixture(scope="module")
def raw_fe() -> MusicnnMelFrontEnd:
    fe = build_front_end(MusicnnMelConfig(target_rms=None)).eval()  # the level as musicnn's extractor sees it
    assert isinstance(fe, MusicnnMelFrontEnd)
    return fe


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "config.yml")


# ---- the checkpoint reader ---------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _block(entries: list[tuple[bytes, bytes]], restart_every: int = 2) -> bytes:
    out, restarts, prev = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_every == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(prev)) and key[shared] == prev[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        prev = key
    out += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def write_bundle(prefix: Path, tensors: dict[str, np.ndarray], dtypes: dict[str, int]) -> None:
    """A minimal TF tensor bundle (LevelDB table + one data shard), as TF's BundleWriter lays it out."""
    data, entries = bytearray(), [(b"", b"\x08\x01")]  # BundleHeaderProto{num_shards: 1}
    for name in sorted(tensors):
        a = np.asarray(tensors[name])  # (ascontiguousarray would make scalars 1-d)
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        shape = b"".join(b"\x12" + _varint(len(d := b"\x08" + _varint(n))) + d for n in a.shape)
        proto = (
            b"\x08" + _varint(dtypes[name]) + b"\x12" + _varint(len(shape)) + shape
            + b"\x20" + _varint(len(data)) + b"\x28" + _varint(len(raw))
            + b"\x35" + struct.pack("<I", _masked(crc32c(raw)))
        )  # fmt: skip
        entries.append((name.encode(), proto))
        data += raw
    index = bytearray()
    handles = []
    for chunk in (entries[:3], entries[3:]):  # two data blocks: the index block has two handles
        block = _block(chunk)
        handles.append((chunk[-1][0], _varint(len(index)) + _varint(len(block))))
        index += block + b"\x00" + struct.pack("<I", _masked(crc32c(block + b"\x00")))
    meta_off, meta = len(index), _block([])
    index += meta + b"\x00" + struct.pack("<I", _masked(crc32c(meta + b"\x00")))
    idx_off, idx = len(index), _block(handles)
    index += idx + b"\x00" + struct.pack("<I", _masked(crc32c(idx + b"\x00")))
    footer = _varint(meta_off) + _varint(len(meta)) + _varint(idx_off) + _varint(len(idx))
    index += footer + b"\x00" * (40 - len(footer)) + struct.pack("<Q", 0xDB4775248B80FB57)
    Path(f"{prefix}.index").write_bytes(bytes(index))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))


def test_crc32c_known_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_reader_round_trips_dtypes_and_shapes(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a/kernel": rng.standard_normal((3, 4, 1, 5)).astype(np.float32),
        "a/kernel_half": rng.standard_normal((2, 3)).astype(np.float16),
        "b/bias": rng.standard_normal(7),  # float64
        "global_step": np.array(123456789012, dtype=np.int64),
        "layer/ints": rng.integers(-1000, 1000, size=(4, 2)).astype(np.int32),
        "layer/mask": rng.random(9) > 0.5,
    }
    dtypes = {
        "a/kernel": 1,
        "a/kernel_half": 19,
        "b/bias": 2,
        "global_step": 9,
        "layer/ints": 3,
        "layer/mask": 10,
    }
    write_bundle(tmp_path / "model.ckpt", tensors, dtypes)
    back = read_checkpoint(tmp_path / "model.ckpt", verify_crc=True)
    assert sorted(back) == sorted(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v)
    assert list(read_checkpoint(tmp_path / "model.ckpt", pattern="^layer/")) == ["layer/ints", "layer/mask"]
    # the same files inside a zip archive
    with zipfile.ZipFile(tmp_path / "w.whl", "w") as zf:
        for f in tmp_path.glob("model.ckpt.*"):
            zf.write(f, f"pkg/{f.name}")
    z = read_checkpoint_from_zip(tmp_path / "w.whl", "pkg/model.ckpt", ["b/bias"], verify_crc=True)
    np.testing.assert_array_equal(z["b/bias"], tensors["b/bias"])
    # a flipped data byte is caught by the tensor's CRC32C
    data = bytearray((tmp_path / "model.ckpt.data-00000-of-00001").read_bytes())
    data[5] ^= 0xFF
    (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(bytes(data))
    with pytest.raises(TfCheckpointError, match="CRC32C mismatch"):
        read_checkpoint(tmp_path / "model.ckpt", ["a/kernel"], verify_crc=True)
    with pytest.raises(TfCheckpointError, match="not in the checkpoint"):
        read_checkpoint(tmp_path / "model.ckpt", ["nope"])
    with pytest.raises(TfCheckpointError, match="no LevelDB table magic"):
        parse_index(b"\x00" * 100)


def test_reader_on_the_musicnn_wheel():
    wheel = store.resolve_wheel()
    with zipfile.ZipFile(wheel) as zf:
        entries = parse_index(zf.read("musicnn/MTT_musicnn/.index"), verify_crc=True)
    assert entries["conv2d/kernel"].shape == (7, 38, 1, 204)
    assert entries["conv2d_5/kernel"].shape == (7, 561, 1, 64)
    assert entries["dense/kernel"].shape == (1506, 200) and entries["dense_1/kernel"].shape == (200, 50)
    w = read_checkpoint_from_zip(
        wheel, "musicnn/MTT_musicnn/", pattern=r"^batch_normalization_9/", verify_crc=True
    )
    assert {a.shape for a in w.values()} == {(1506,)} and all(a.dtype == np.float32 for a in w.values())
    model = store.load_weights("mtt")
    assert len(model) == 8 * 2 + 11 * 4 + 2 * 2  # 8 convs, 11 batch norms, 2 dense layers; no Adam slots
    assert sum(a.size for a in model.values()) == 792_079


# ---- the front end and the trunk against TensorFlow --------------------------------------------------


def test_slaney_filterbank_is_librosa_shaped():
    fb = slaney_mel_filterbank(SR, 512, 96)
    assert fb.shape == (257, 96) and fb.dtype == np.float32 and (fb >= 0).all()
    peaks = fb.argmax(axis=0)
    assert (np.diff(peaks) >= 0).all() and (fb.sum(axis=0) > 0).all()  # ordered, none empty


def test_front_end_matches_musicnn_extractor(ref, waves, raw_fe):
    with torch.inference_mode():
        mel = raw_fe(torch.from_numpy(waves["chord"])[None])
    assert mel.shape == (1, 1, 96, 1 + 16000 // 256)
    np.testing.assert_allclose(mel[0, 0].T.numpy(), ref["chord/mel"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("weights", ["mtt", "msd"])
def test_trunk_matches_the_tensorflow_graph(ref, waves, raw_fe, weights):
    trunk = pretrained_trunk(weights)
    m = MODELS[weights]
    with torch.inference_mode():
        # the graph alone, on the reference's own input
        out = trunk(torch.from_numpy(ref["chord/mel"].T.copy())[None, None])
        np.testing.assert_allclose(out["logits"][0].numpy(), ref[f"{m}/chord/logits"], rtol=0, atol=ATOL)
        for name, wave in waves.items():  # front end + graph, 3-s and 1-s inputs
            out = trunk(raw_fe(torch.from_numpy(wave)[None]))
            pooled = np.stack([ref[f"{m}/{name}/max_pool"], ref[f"{m}/{name}/mean_pool"]], axis=1).reshape(-1)
            bn = trunk.pool_bn
            pooled = (pooled - bn.running_mean.numpy()) / np.sqrt(bn.running_var.numpy() + bn.eps)
            pooled = pooled * bn.weight.numpy() + bn.bias.numpy()
            np.testing.assert_allclose(out["pooled"][0].numpy(), pooled, rtol=0, atol=ATOL)
            np.testing.assert_allclose(
                out["penultimate"][0].numpy(), ref[f"{m}/{name}/penultimate"], atol=ATOL
            )
            np.testing.assert_allclose(out["logits"][0].numpy(), ref[f"{m}/{name}/logits"], rtol=0, atol=ATOL)
            np.testing.assert_allclose(
                torch.sigmoid(out["logits"][0]).numpy(), ref[f"{m}/{name}/taggram"], atol=1e-5
            )


def test_level_handling_and_loud_input(waves):
    fe = build_front_end(MusicnnMelConfig()).eval()  # target_rms 0.1
    x = torch.from_numpy(waves["drums"])[None]
    with torch.inference_mode():
        quiet, loud = fe(0.01 * x), fe(100.0 * x)
        raw_loud = build_front_end(MusicnnMelConfig(target_rms=None))(100.0 * x)
    torch.testing.assert_close(quiet, loud, rtol=1e-4, atol=1e-4)  # level-normalised
    # float16 (musicnn's extractor) would overflow to inf here: 10000 x mel power of a loud wave > 65504
    assert torch.isfinite(raw_loud).all() and float(raw_loud.max()) > float(np.log10(65504.0))


def test_tags_come_from_the_wheel():
    mtt, msd = store.tags("mtt"), store.tags("msd")
    assert len(mtt) == len(msd) == 50
    assert mtt[0] == "guitar" and "piano" in mtt and "violin" in mtt and msd[0] == "rock"


# ---- the member --------------------------------------------------------------------------------------


def test_member_builds_with_a_frozen_trunk(cfg):
    clf = build_classifier(cfg, "mn_mtt")
    assert isinstance(clf.model, Musicnn) and clf.front_end.kind == "musicnn_mel"
    names = [n for n, _ in clf.named_parameters()]
    assert names and all(n.startswith("model.head.") for n in names)  # the trunk has no parameters
    a = cfg.models["musicnn"]  # the head on the configured embedding (1506 pooled / 200 / 50 values)
    dim = EMBEDDING_SIZES[a["embedding"]]
    hidden = a["head_hidden"]
    expected = (dim * hidden + hidden + hidden * 11 + 11) if hidden else dim * 11 + 11
    assert count_parameters(clf.model) == expected
    assert not any(k.startswith("model.trunk") for k in clf.state_dict())  # nor state in checkpoints
    clf.train()
    assert clf.model.head.training and not clf.model.trunk.training  # BatchNorm stays frozen


@pytest.mark.parametrize("seconds", [0.3, 1.0, 1.37, 3.0, 20.0])
def test_any_length(cfg, seconds):
    clf = build_classifier(cfg, "mn_mtt").eval()
    with torch.inference_mode():
        assert clf(torch.randn(2, int(seconds * SR))).shape == (2, 11)


def _two_steps(clf, opt) -> torch.Tensor:
    """Two training steps of ``clf`` on 4 random 1-s waves labelled ``gac``; the waves."""
    x, y = 0.1 * torch.randn(4, SR), torch.zeros(4, 11)
    y[:, 3] = 1
    clf.train()
    for _ in range(2):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(clf(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x


def test_trains_a_step_and_the_checkpoint_reloads_identically(cfg, tmp_path):
    torch.manual_seed(0)
    clf = build_classifier(cfg, "mn_mtt")
    trunk_before = {k: v.clone() for k, v in clf.model.trunk.named_buffers()}
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-2)
    x = _two_steps(clf, opt)
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in clf.parameters())
    for k, v in clf.model.trunk.named_buffers():  # weights and BatchNorm statistics untouched
        assert v.grad is None and not v.requires_grad
        torch.testing.assert_close(v, trunk_before[k], rtol=0, atol=0)
    clf.eval()
    path = save_classifier(tmp_path / "model.pt", clf, CheckpointMeta(spec=clf.spec(), member="mn_mtt"))
    # the head only (float32): the 790 k trunk weights come from the wheel
    assert path.stat().st_size < 4 * count_parameters(clf.model.head) + 100_000
    back, meta = load_classifier(path)
    assert meta.spec == classifier_spec(cfg, "mn_mtt")
    with torch.inference_mode():
        torch.testing.assert_close(back(x), clf(x), rtol=0, atol=0)


@pytest.mark.parametrize("embedding", ["pooled", "taggram"])
def test_other_embeddings_and_hidden_head(cfg, embedding):
    c = cfg.model_copy(
        update={"models": {**cfg.models, "musicnn": {"embedding": embedding, "head_hidden": 16}}}
    )
    clf = build_classifier(c, "mn_mtt").eval()
    d = EMBEDDING_SIZES[embedding]
    assert count_parameters(clf.model) == d * 16 + 16 + 16 * 11 + 11
    with torch.inference_mode():
        emb = clf.model.embed(clf.front_end(torch.randn(2, SR)))
    assert emb.shape == (2, d)
    if embedding == "taggram":
        assert float(emb.min()) >= 0 and float(emb.max()) <= 1


def test_unfrozen_trunk_trains_with_frozen_statistics(cfg):
    c = cfg.model_copy(update={"models": {**cfg.models, "musicnn": {"freeze": False}}})
    clf = build_classifier(c, "mn_mtt").train()
    head = count_parameters(clf.model.head)
    assert count_parameters(clf.model) == 792_079 - 2 * (1 + 204 + 204 + 3 * 51 + 3 * 64 + 1506 + 200) + head
    mean_before = clf.model.trunk.pool_bn.running_mean.clone()
    clf(0.1 * torch.randn(2, SR)).sum().backward()
    assert clf.model.trunk.timbral[0].weight.grad is not None
    torch.testing.assert_close(clf.model.trunk.pool_bn.running_mean, mean_before, rtol=0, atol=0)
    assert any(k.startswith("model.trunk.") for k in clf.state_dict())  # fine-tuned weights are saved


def _front_end_frozen(cfg, **args):
    return cfg.model_copy(
        update={"models": {**cfg.models, "musicnn": {**cfg.models["musicnn"], "freeze": "front_end", **args}}}
    )


@pytest.mark.parametrize("embedding", ["pooled", "penultimate"])
def test_front_end_frozen_the_mid_end_trains_and_is_saved(cfg, tmp_path, embedding):
    torch.manual_seed(0)
    c = _front_end_frozen(cfg, embedding=embedding, head_hidden=0)
    clf = build_classifier(c, "mn_mtt")
    trunk = {n.removeprefix("model.trunk.").split(".")[0] for n, _ in clf.named_parameters() if "trunk" in n}
    # the mid end, the pooled BatchNorm and, with the penultimate embedding, the dense layer: no front end
    used = {"mid", "mid_bn", "pool_bn"} | ({"dense", "dense_bn"} if embedding == "penultimate" else set())
    assert trunk == used
    fresh = pretrained_trunk("mtt", freeze=False)
    emb = clf.model.embed(clf.front_end(0.1 * torch.randn(3, SR)))
    assert emb.shape[:2] == (3, 561) and not emb.requires_grad  # the front end's maps: what the cache holds
    groups = clf.model.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-3 * clf.model.trunk_lr_scale)]
    opt = torch.optim.AdamW(groups, lr=1e-3)
    x = _two_steps(clf, opt)
    assert not torch.equal(clf.model.trunk.mid[0].weight, fresh.mid[0].weight)  # fine-tuned …
    assert torch.equal(clf.model.trunk.timbral[0].weight, fresh.timbral[0].weight)  # … the front end is not
    torch.testing.assert_close(clf.model.trunk.mid_bn[0].running_mean, fresh.mid_bn[0].running_mean)
    clf.eval()
    path = save_classifier(tmp_path / "model.pt", clf, CheckpointMeta(spec=clf.spec(), member="mn_mtt"))
    saved = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert "model.trunk.mid.0.weight" in saved and not any("timbral" in k for k in saved)
    back, _ = load_classifier(path)
    with torch.inference_mode():
        torch.testing.assert_close(back(x), clf(x), rtol=0, atol=0)
        torch.testing.assert_close(clf.model.head_logits(clf.model.embed(clf.front_end(x))), clf(x))


def test_missing_or_wrong_wheel_is_a_clear_error(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv(store.WHEEL_ENV, str(tmp_path / "nope.whl"))
    with pytest.raises(store.MusicnnWeightsError, match=r"make pretrained.*MPIC_MUSICNN_WHEEL"):
        build_classifier(cfg, "mn_mtt")
    fake = tmp_path / "musicnn-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("musicnn/__init__.py", "")
    monkeypatch.setenv(store.WHEEL_ENV, str(fake))
    with pytest.raises(store.MusicnnWeightsError, match=r"is not musicnn 0\.1\.0.s wheel"):
        build_classifier(cfg, "mn_mtt")


def test_wrong_front_end_is_refused(cfg):
    spec = classifier_spec(cfg, "mn_mtt")
    spec["front_end"] = cfg.front_ends["mel_fast"].model_dump(mode="json")  # also 96 bins, other numbers
    spec["sample_rate"] = cfg.front_ends["mel_fast"].sample_rate
    with pytest.raises(ConfigError, match="musicnn_mel"):
        classifier_from_spec(spec)


@pytest.mark.parametrize("freeze", [True, "front_end"])
def test_predictor_shares_the_fixed_part_between_fold_models(cfg, freeze):
    from ml.inference import Predictor

    torch.manual_seed(1)
    c = _front_end_frozen(cfg) if freeze == "front_end" else cfg
    folds = [build_classifier(c, "mn_mtt").eval() for _ in range(3)]  # different random heads
    for k, m in enumerate(folds):  # and, when it trains, different fine-tuned mid ends
        if freeze == "front_end":
            with torch.no_grad():
                m.model.trunk.mid[0].weight.mul_(1 + 0.1 * k)
    pred = Predictor("mn_mtt", folds, cfg.label_codes, window_s=1.0, hop_s=1.0)
    assert pred.shared_embedding
    calls = [0, 0, 0]
    for i, m in enumerate(folds):
        original = m.model.trunk.front

        def counting(*a, i=i, original=original, **k):
            calls[i] += 1
            return original(*a, **k)

        m.model.trunk.front = counting  # type: ignore[method-assign]
    x = 0.1 * torch.randn(5, SR)
    scores = pred.score_windows(x)
    assert calls[0] >= 1 and calls[1:] == [0, 0]  # the first fold model's front end serves all three
    with torch.inference_mode():
        expected = torch.stack([torch.sigmoid(m(x)) for m in folds]).mean(0)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=0, atol=1e-6)


def test_an_unfrozen_trunk_is_not_shared(cfg):
    from ml.inference import Predictor

    c = cfg.model_copy(update={"models": {**cfg.models, "musicnn": {"freeze": False}}})
    assert not Predictor(
        "mn_mtt", [build_classifier(c, "mn_mtt")], cfg.label_codes, window_s=1.0, hop_s=1.0
    ).shared_embedding
