import os
from pathlib import Path

import pytest
import yaml

from ml.config import ConfigError, config_from_dict, deep_merge, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "config.yml").read_text())


@pytest.mark.parametrize("profile", [None, "smoke", "demo", "full"])
def test_every_profile_validates(profile):
    cfg = load_config(ROOT / "config.yml", profile=profile)
    assert cfg.label_codes[:3] == ["cel", "cla", "flu"]
    assert len(cfg.labels) == 11
    assert cfg.data.root.is_absolute()
    assert cfg.mlflow.backend_store_uri.startswith("sqlite:////")
    assert cfg.profile == profile
    for m in cfg.ensemble_members:
        assert cfg.members[m].arch in cfg.models


def test_profile_merges_deeply(raw):
    cfg = config_from_dict(raw, profile="smoke", base_dir=ROOT)
    assert cfg.folds.k == 2
    assert cfg.train.epochs == 2
    assert cfg.train.lr == raw["train"]["lr"]  # untouched keys survive the merge


def test_overrides_parse_yaml_values(raw):
    cfg = config_from_dict(raw, overrides=["train.epochs=3", "train.amp=false", "fusion.aggregations=[mean]"])
    assert cfg.train.epochs == 3 and cfg.train.amp is False and cfg.fusion.aggregations == ["mean"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs=many", "train.epochs"),
        ("train.epochz=3", "train.epochz: unknown key; valid keys: ["),
        ("front_ends.mel_fast.kind=stft", "'mel', 'cqt'"),
        ("members.res_genre.front_end=nope", "members.res_genre.front_end: unknown front end 'nope'; valid:"),
        ("members.res_genre.arch=nope", "members.res_genre.arch"),
        ("ensemble=nope", "ensemble: unknown ensemble 'nope'"),
        ("serve.max_batch_size=1000", "max_ongoing_requests must be >= max_batch_size"),
        ("inference.threshold=1.5", "inference.threshold"),
        ("fusion.objective=accuracy", "'macro_f1', 'micro_f1' or 'lrap'"),
        ("serve.default_model=seed_mel", "serve.default_model"),
        ("members.res_genre.train={epochz: 1}", "members.res_genre.train: unknown keys ['epochz']"),
    ],
)
def test_bad_values_name_their_path(raw, override, expected):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw, overrides=[override])
    assert expected in str(e.value)


def test_bad_override_syntax(raw):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config_from_dict(raw, overrides=["train.epochs"])


def test_unknown_profile_lists_valid(raw):
    with pytest.raises(ConfigError, match=r"valid: \['demo', 'full', 'smoke'\]"):
        config_from_dict(raw, profile="fast")


def test_duplicate_labels_rejected(raw):
    bad = deep_merge(raw, {})
    bad["labels"] = [*bad["labels"], {"code": "cel", "name": "Cello again"}]
    with pytest.raises(ConfigError, match="duplicate label codes"):
        config_from_dict(bad)


def test_label_set_is_configurable(raw):
    cfg = config_from_dict(raw, overrides=["labels=[{code: drm, name: Drums}, {code: bas, name: Bass}]"])
    assert cfg.label_codes == ["drm", "bas"]


def test_member_train_overrides(raw):
    cfg = config_from_dict(raw, overrides=["members.res_genre.train={epochs: 2, lr: 0.01}"])
    tc = cfg.member_train("res_genre")
    assert tc.epochs == 2 and tc.lr == 0.01 and tc.batch_size == cfg.train.batch_size
    assert cfg.member_train("res_bpm") == cfg.train


def test_relative_paths_resolve_against_config_dir(tmp_path, raw):
    p = tmp_path / "c.yml"
    p.write_text(yaml.safe_dump(raw))
    cfg = load_config(p)
    assert cfg.data.root == (tmp_path / "data/demo").resolve()
    assert cfg.mlflow.backend_store_uri == f"sqlite:///{(tmp_path / '.cache/mpic/mlflow.db').resolve()}"


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yml")


def test_each_profile_is_its_own_namespace(tmp_path, raw):
    base = tmp_path.resolve()
    cfgs = {p: config_from_dict(raw, profile=p, base_dir=base) for p in (None, "smoke", "demo")}
    for p, cfg in cfgs.items():
        ns = p or "default"
        assert cfg.namespace == ns
        assert cfg.runs_dir == base / ".cache/mpic" / ns / "runs"
        assert cfg.ray.storage_path == str(base / ".cache/mpic" / ns / "ray_results")
        assert cfg.mlflow.experiment == cfg.mlflow.registered_model_prefix == f"mpic-{ns}"
        assert cfg.namespace_dir == base / ".cache/mpic" / ns
    # what is keyed by content stays shared: the data cache and the one MLflow store
    assert len({c.data.cache_dir for c in cfgs.values()}) == 1
    assert len({c.mlflow.backend_store_uri for c in cfgs.values()}) == 1
    # the derived values survive a snapshot round trip (Ray workers, Serve replicas)
    from ml.config import Config

    again = Config.model_validate(cfgs["demo"].snapshot())
    assert (again.runs_dir, again.mlflow.experiment) == (cfgs["demo"].runs_dir, "mpic-demo")


def test_another_runs_location_is_another_namespace(tmp_path, raw):
    a = config_from_dict(raw, profile="demo", overrides=[f"runs_dir={tmp_path / 'a'}"], base_dir=tmp_path)
    b = config_from_dict(raw, profile="demo", overrides=[f"runs_dir={tmp_path / 'b'}"], base_dir=tmp_path)
    demo = config_from_dict(raw, profile="demo", base_dir=tmp_path)
    names = {c.namespace for c in (a, b, demo)}
    assert len(names) == 3 and all(n.startswith("demo") for n in names)
    assert len({c.mlflow.registered_model_prefix for c in (a, b, demo)}) == 3
    assert a.runs_dir == (tmp_path / "a").resolve()


def test_explicit_values_win_over_the_namespace(tmp_path, raw):
    cfg = config_from_dict(
        raw,
        profile="demo",
        overrides=["namespace=exp1", "mlflow.experiment=mine", "mlflow.registered_model_prefix=team"],
        base_dir=tmp_path,
    )
    assert cfg.namespace == "exp1" and cfg.runs_dir == (tmp_path / ".cache/mpic/exp1/runs").resolve()
    assert (cfg.mlflow.experiment, cfg.mlflow.registered_model_prefix) == ("mine", "team")
    with pytest.raises(ConfigError, match="namespace"):
        config_from_dict(raw, overrides=["namespace=../x"], base_dir=tmp_path)


def test_synth_libraries_and_the_old_key(raw):
    cfg = config_from_dict(raw, profile="demo", base_dir=ROOT)
    assert {"timgm6mb", "fluidr3_gm", "csound_gm", "opl3"} <= set(cfg.synth.libraries)
    assert cfg.synth.train_mixes > 0 and cfg.synth.test_excerpts > 0
    old = deep_merge(raw, {})
    old["synth"] = {k: v for k, v in old["synth"].items() if k != "libraries"} | {"soundfonts": ["opl3"]}
    cfg = config_from_dict(old)
    assert cfg.synth.libraries == ["opl3"] == cfg.synth.soundfonts  # the pre-registry key still reads
    with pytest.raises(ConfigError, match=r"synth\.soundfonts is its old name"):
        config_from_dict(raw, overrides=["synth.soundfonts=[opl3]"])
    with pytest.raises(ConfigError, match="unique"):
        config_from_dict(raw, overrides=["synth.libraries=[opl3, OPL3]"])


def test_ray_env_is_text_with_valid_names(raw):
    cfg = config_from_dict(raw, overrides=["ray.env.MPIC_X=1", "ray.env.MPIC_Y=true", "ray.env.MPIC_Z=0.5"])
    assert {k: cfg.ray.env[k] for k in ("MPIC_X", "MPIC_Y", "MPIC_Z")} == {
        "MPIC_X": "1",
        "MPIC_Y": "1",
        "MPIC_Z": "0.5",
    }
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw, overrides=["ray.env={'BAD NAME': 1}"])
    assert "ray.env" in str(e.value) and "not environment variable names: ['BAD NAME']" in str(e.value)


def test_ray_local_environment_is_scoped(raw, monkeypatch):
    """Inside the block the process has ray.env (so has a local Ray started there); after it, what it had."""
    monkeypatch.setenv("MPIC_KEPT", "before")
    monkeypatch.delenv("MPIC_NEW", raising=False)
    cfg = config_from_dict(raw, overrides=["ray.env={MPIC_KEPT: inside, MPIC_NEW: 2}"])
    with cfg.ray.local_environment():
        assert os.environ["MPIC_KEPT"] == "inside" and os.environ["MPIC_NEW"] == "2"
    assert os.environ["MPIC_KEPT"] == "before" and "MPIC_NEW" not in os.environ
    with pytest.raises(RuntimeError), cfg.ray.local_environment():
        raise RuntimeError("ray.init failed")
    assert os.environ["MPIC_KEPT"] == "before" and "MPIC_NEW" not in os.environ
