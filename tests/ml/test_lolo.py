"""Leave-one-library-out: splits by family, refuses leaks, and a tiny end-to-end protocol run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml import lolo
from ml.config import Config
from ml.data.manifest import ClipRecord, Manifest

LIBS = {"timgm6mb": "timgm6mb", "fluidr3_gm": "fluidr3", "fluidr3_gs": "fluidr3", "opl3": "opl3"}


def rec(path: str, split: str, library: str, labels=("pia",), group: str = "") -> ClipRecord:
    return ClipRecord(
        path=path, split=split, duration_s=3.0, labels=tuple(labels), group=group or path, library=library
    )


def manifest(records) -> Manifest:
    return Manifest("/data", records)


def family(lib: str) -> str:
    return LIBS[lib]


def test_split_holds_out_a_whole_family():
    m = manifest(
        [
            rec("t/a.wav", "train", "timgm6mb"),
            rec("t/b.wav", "train", "fluidr3_gm"),
            rec("t/c.wav", "train", "fluidr3_gs"),
            rec("t/d.wav", "train", "opl3"),
            rec("x/a.wav", "test", "timgm6mb"),
            rec("x/b.wav", "test", "fluidr3_gm"),
            rec("x/d.wav", "test", "opl3"),
        ]
    )
    splits = lolo.split_families(m, family)
    assert sorted(splits) == ["fluidr3", "opl3", "timgm6mb"]
    fl = splits["fluidr3"]
    # FluidR3_GS shares FluidR3_GM's samples: holding out the family removes both from training
    assert [r.path for r in fl.train] == ["t/a.wav", "t/d.wav"]
    assert [r.path for r in fl.test] == ["x/b.wav"]
    for fam, s in splits.items():
        assert all(family(r.library) != fam for r in s.train)
        assert all(family(r.library) == fam for r in s.test)


def test_split_needs_recorded_libraries_and_two_families():
    with pytest.raises(lolo.LoloError, match="no recorded sample library"):
        lolo.split_families(manifest([rec("a.wav", "train", ""), rec("b.wav", "test", "opl3")]), family)
    with pytest.raises(lolo.LoloError, match="at least two"):
        lolo.split_families(manifest([rec("a.wav", "train", "opl3"), rec("b.wav", "test", "opl3")]), family)


def test_leak_check_catches_clips_and_mixtures_of_the_held_out_family():
    records = {r.path: r for r in [rec("a.wav", "train", "timgm6mb"), rec("b.wav", "train", "fluidr3_gs")]}
    lolo.check_no_leak(["a.wav", "mix0:a.wav+a.wav"], records, "fluidr3", family, "training")
    with pytest.raises(AssertionError, match=r"leaked in through 'b\.wav'"):
        lolo.check_no_leak(["a.wav", "b.wav"], records, "fluidr3", family, "training")
    with pytest.raises(AssertionError, match=r"thresholds.*'b\.wav'"):
        lolo.check_no_leak(["mix1:a.wav+b.wav"], records, "fluidr3", family, "thresholds")
    with pytest.raises(AssertionError, match="not a clip"):
        lolo.check_no_leak(["zzz.wav"], records, "fluidr3", family, "training")


def test_trivial_report_answers_every_instrument():
    y = np.array([[1, 0, 0], [1, 1, 0]], np.float32)
    r = lolo.trivial_report(y, ["a", "b", "c"])
    assert r["cardinality_pred"] == 3.0 and r["cardinality_true"] == 1.5
    assert r["per_class_f1"]["c"] == 0.0 and r["per_class_f1"]["a"] == 1.0


@pytest.fixture(scope="module")
def lolo_data(smoke_cfg: Config, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Manifest]:
    """A tiny data set rendered with three library families (single clips, mixes, tests per library)."""
    from ml.data.irmas import build_manifest
    from ml.data.synth import synthesize

    root = tmp_path_factory.mktemp("lolo-data")
    s = smoke_cfg.synth
    synthesize(
        root,
        labels=smoke_cfg.label_codes,
        programs={c: s.programs[c] for c in smoke_cfg.label_codes},
        train_clips=33,
        train_mixes=6,
        test_excerpts=2,
        seed=5,
        libraries=["timgm6mb", "fluidr3_gm", "opl3"],
        sample_rate=s.sample_rate,
        clips_per_recording=s.clips_per_recording,
        workers=1,
        progress=False,
    )
    cfg = smoke_cfg.model_copy(update={"data": smoke_cfg.data.model_copy(update={"root": root})})
    return cfg, build_manifest(
        root, cfg.label_codes, cache_path=Path(cfg.data.cache_dir) / "lolo-manifest.csv"
    )


def test_protocol_end_to_end_never_trains_or_fits_on_the_held_out_family(lolo_data, tmp_path, monkeypatch):
    cfg, m = lolo_data
    seen: dict[str, list[str]] = {}
    real_fit = lolo.fit

    def spy_fit(c, member, fold, *, out_dir, hooks, data, device):
        fam = Path(c.runs_dir).name.removeprefix("holdout-")
        seen.setdefault(fam, []).extend(r.library for r in data.manifest.records)
        return real_fit(c, member, fold, out_dir=out_dir, hooks=hooks, data=data, device=device)

    monkeypatch.setattr(lolo, "fit", spy_fit)
    report = lolo.run_lolo(cfg, m, tmp_path / "run", members=["res_genre"], log=lambda _: None)
    assert sorted(report["families"]) == ["fluidr3", "opl3", "timgm"]
    for fam, libs in seen.items():
        assert libs and fam not in {lolo.default_family(x) for x in libs}
    for fam, f in report["families"].items():
        assert fam not in {lolo.default_family(x) for x in f["train_libraries"]}
        assert f["libraries"] and all(lolo.default_family(x) == fam for x in f["libraries"])
        res = f["results"]
        assert set(res) == {"res_genre", lolo.ENSEMBLE, lolo.TRIVIAL}
        assert 0.0 <= res[lolo.ENSEMBLE]["macro_f1"] <= 1.0
    saved = json.loads((tmp_path / "run" / "lolo.json").read_text())
    assert saved["mean"][lolo.TRIVIAL]["macro_f1"] == report["mean"][lolo.TRIVIAL]["macro_f1"]
    assert "mean" in lolo.format_report(report)
    # a second run into the same folder would overwrite the first: refused
    with pytest.raises(FileExistsError, match="already holds"):
        lolo.run_lolo(cfg, m, tmp_path / "run", members=["res_genre"], log=lambda _: None)


def test_protocol_refuses_a_leak_injected_into_the_training_data(lolo_data, tmp_path, monkeypatch):
    """If the training set ever included the held-out family, the protocol stops instead of reporting."""
    cfg, m = lolo_data
    real = lolo.split_families

    def leaky(manifest, family_of):
        out = real(manifest, family_of)
        fam, s = next(iter(out.items()))
        out[fam] = lolo.HoldOut(fam, s.train + s.test[:1], s.test)
        return out

    monkeypatch.setattr(lolo, "split_families", leaky)
    with pytest.raises(AssertionError, match="leaked in"):
        lolo.run_lolo(cfg, m, tmp_path / "leak", members=["res_genre"], log=lambda _: None)
