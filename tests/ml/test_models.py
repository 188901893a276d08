import json
from pathlib import Path

import pytest
import torch

from ml.config import ConfigError, load_config
from ml.models import (
    MODELS,
    Classifier,
    build_classifier,
    build_model,
    classifier_from_spec,
    classifier_spec,
    count_parameters,
)
from ml.models.rescnn import ConvBN

ROOT = Path(__file__).resolve().parents[2]
N_CLASSES = 11


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "config.yml")


def one_member_per_arch(cfg) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, m in cfg.members.items():
        out.setdefault(m.arch, name)
    return out


def test_registry_names():
    assert {"model2", "model3", "rescnn"} <= set(MODELS.names())


def test_every_configured_arch_builds_with_params_in_range(cfg):
    archs = one_member_per_arch(cfg)
    assert set(archs) == set(cfg.models)  # every models.<arch> section is used by a member and builds
    for arch, member in archs.items():
        clf = build_classifier(cfg, member)
        assert isinstance(clf, Classifier)
        lo, hi = type(clf.model).param_range
        n = count_parameters(clf.model)
        assert lo <= n <= hi, f"{arch}: {n} parameters outside {lo}..{hi}"
        assert clf.n_classes == N_CLASSES


def test_seed_parameter_counts_are_the_seeds(cfg):
    m2 = build_classifier(cfg, "seed_cqt_genre").model
    m3 = build_classifier(cfg, "seed_mel").model
    assert (m2.n_bins, m2.n_frames) == (96, 87)
    assert (m3.n_bins, m3.n_frames) == (128, 101)
    assert 8.5e6 < count_parameters(m2) < 10e6
    assert 2e6 < count_parameters(m3) < 4e6


@pytest.mark.parametrize("arch", ["model2", "model3", "rescnn"])
def test_shapes_at_1s_and_20s(cfg, arch):
    member = one_member_per_arch(cfg)[arch]
    clf = build_classifier(cfg, member).eval()
    sr = clf.sample_rate
    assert clf.window_samples == sr  # 1-s windows
    with torch.inference_mode():
        assert clf(torch.randn(2, clf.window_samples)).shape == (2, N_CLASSES)
        long = torch.randn(1, 20 * sr)
        if type(clf.model).fixed_frames:
            with pytest.raises(ValueError, match="fixed-window"):
                clf(long)
        else:
            assert clf(long).shape == (1, N_CLASSES)


def test_rescnn_accepts_short_and_odd_lengths(cfg):
    clf = build_classifier(cfg, "res_genre").eval()
    with torch.inference_mode():
        for seconds in (0.25, 1.37, 3.0):
            assert clf(torch.randn(2, int(seconds * clf.sample_rate))).shape == (2, N_CLASSES)
    with pytest.raises(ValueError, match="at least 16 frames"):
        clf.model(torch.randn(1, 1, 96, 8))
    with pytest.raises(ValueError, match=r"\(batch, 1, 96, frames\)"):
        clf.model(torch.randn(1, 1, 64, 100))


def test_bad_arch_args_name_the_path(cfg):
    with pytest.raises(ConfigError) as e:
        build_model("rescnn", {"widht": 16}, n_classes=11, n_bins=96, n_frames=100)
    msg = str(e.value)
    assert "models.rescnn.widht" in msg and "valid keys" in msg and "'width'" in msg
    with pytest.raises(ConfigError, match=r"models\.rescnn\.width"):
        build_model("rescnn", {"width": -3}, n_classes=11, n_bins=96, n_frames=100)
    with pytest.raises(ConfigError, match=r"models\.model2\.channels"):
        build_model("model2", {"channels": [1, 2]}, n_classes=11, n_bins=96, n_frames=87)
    bad = cfg.model_copy(update={"models": {**cfg.models, "rescnn": {"width": 32, "dropuot": 0.1}}})
    with pytest.raises(ConfigError, match=r"models\.rescnn\.dropuot"):
        build_classifier(bad, "res_genre")


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        build_model("resnet9000", {}, n_classes=11, n_bins=96, n_frames=100)
    for name in ("model2", "model3", "rescnn"):
        assert name in str(e.value)


@pytest.mark.parametrize("arch", ["model2", "model3", "rescnn"])
def test_backprop_reaches_every_parameter(cfg, arch):
    member = one_member_per_arch(cfg)[arch]
    clf = build_classifier(cfg, member).train()
    x = torch.randn(3, clf.window_samples)
    y = torch.zeros(3, N_CLASSES)
    y[:, 0] = 1
    loss = torch.nn.functional.binary_cross_entropy_with_logits(clf(x), y)
    loss.backward()
    missing = [n for n, p in clf.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert any(float(p.grad.abs().sum()) > 0 for p in clf.parameters() if p.grad is not None)


def _trained_a_little(clf: Classifier, steps: int = 2) -> Classifier:
    """Give BatchNorm running statistics and weights non-default values."""
    opt = torch.optim.SGD(clf.parameters(), lr=0.01)
    clf.train()
    for _ in range(steps):
        x = torch.randn(4, clf.window_samples)
        loss = clf(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval()


@pytest.mark.parametrize("member", ["res_bpm", "seed_mel"])
def test_spec_round_trip_gives_identical_outputs(cfg, member):
    torch.manual_seed(0)
    a = _trained_a_little(build_classifier(cfg, member))
    spec = json.loads(json.dumps(classifier_spec(cfg, member)))  # JSON-able
    assert spec == a.spec()
    assert spec["labels"] == cfg.label_codes and spec["window_s"] == 1.0
    assert spec["sample_rate"] == cfg.front_ends[cfg.members[member].front_end].sample_rate
    b = classifier_from_spec(spec)
    b.load_state_dict(a.state_dict())  # strict: same keys, same shapes
    b.eval()
    x = torch.randn(3, a.window_samples)
    with torch.inference_mode():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
        torch.testing.assert_close(a(x), a(x), rtol=0, atol=0)  # eval mode is deterministic


def test_spec_errors():
    with pytest.raises(ConfigError, match="lacks"):
        classifier_from_spec({"arch": "rescnn"})
    cfg = load_config(ROOT / "config.yml")
    spec = classifier_spec(cfg, "res_genre")
    with pytest.raises(ConfigError, match="newer"):
        classifier_from_spec({**spec, "version": 99})
    with pytest.raises(ConfigError, match="front_end"):
        classifier_from_spec({**spec, "front_end": {"kind": "mel", "n_mels": -1}})
    with pytest.raises(ConfigError, match="unknown member"):
        classifier_spec(cfg, "nope")


def test_spec_window_changes_fixed_models_only(cfg):
    a = build_classifier(cfg, "res_genre", window_s=1.0)
    b = build_classifier(cfg, "res_genre", window_s=2.0)
    b.load_state_dict(a.state_dict())  # rescnn weights do not depend on the window
    assert b.window_samples == 2 * a.window_samples
    m3 = build_classifier(cfg, "seed_mel", window_s=2.0)
    assert m3.model.n_frames == 201


def test_eval_fusions_and_cpu_chunks_change_nothing(cfg):
    torch.manual_seed(0)
    clf = _trained_a_little(build_classifier(cfg, "res_genre"))
    x = torch.randn(37, clf.window_samples)
    with torch.inference_mode():
        feats = clf.front_end(x)
        chunked = clf.model(feats)
        clf.model.cpu_chunk = 0
        whole = clf.model(feats)
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)
    # BatchNorm folded into the conv in eval mode == conv then BatchNorm
    m = ConvBN(8, 16, 3, stride=2, groups=2)
    m.bn.running_mean.uniform_(-1, 1)
    m.bn.running_var.uniform_(0.5, 2)
    m.bn.weight.data.uniform_(0.5, 2)
    m.bn.bias.data.uniform_(-1, 1)
    m.eval()
    z = torch.randn(2, 8, 11, 13)
    with torch.inference_mode():
        torch.testing.assert_close(m(z), torch.relu(m.bn(m.conv(z))), rtol=1e-4, atol=1e-5)


def test_attention_pooling_variant(cfg):
    m = build_model("rescnn", {"width": 16, "pooling": "attention"}, n_classes=5, n_bins=64, n_frames=100)
    assert m(torch.randn(2, 1, 64, 100)).shape == (2, 5)
    assert m.eval()(torch.randn(1, 1, 64, 400)).shape == (1, 5)


def test_smoke_profile_builds_tiny_rescnn():
    cfg = load_config(ROOT / "config.yml", profile="smoke")
    clf = build_classifier(cfg, "res_genre").eval()
    assert count_parameters(clf.model) < 50_000
    assert clf(torch.randn(2, clf.window_samples)).shape == (2, N_CLASSES)


@pytest.mark.parametrize("member", ["res_genre", "seed_mel"])
def test_classifier_follows_the_input_device(cfg, member):
    clf = build_classifier(cfg, member).to("meta")
    for mode in (clf.eval, clf.train):
        mode()
        assert clf(torch.randn(2, clf.window_samples, device="meta")).device.type == "meta"
    if torch.cuda.is_available():
        torch.manual_seed(0)
        a = build_classifier(cfg, member).eval()
        b = build_classifier(cfg, member).eval().cuda()
        b.load_state_dict(a.state_dict())
        x = torch.randn(4, a.window_samples)
        torch.testing.assert_close(b(x.cuda()).cpu(), a(x), rtol=1e-3, atol=1e-3)
