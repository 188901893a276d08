"""bench/accuracy.py: its pieces, and one tiny end-to-end run on the smoke profile (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import accuracy
from bench.common import derive


def test_ensemble_rule_fuses_aggregated_member_scores():
    rng = np.random.default_rng(0)
    windows = {m: [rng.random((n, 3)) for n in (2, 5)] for m in ("a", "b", "c")}
    rule = accuracy.EnsembleRule("r", ["a", "b", "c"], {"a": 3.0, "b": 1.0, "c": 0.0}, "mean", [0.5] * 3, "")
    got = rule.scores(windows)
    want = np.stack([(3 * windows["a"][i].mean(0) + windows["b"][i].mean(0)) / 4 for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_meta_check_reuses_only_a_matching_rendering(tmp_path):
    meta = {"seed": 3, "soundfonts": ["FluidR3_GM.sf2"], "counts": {"train_files": 0, "test_files": 4}}
    (tmp_path / "synth_meta.json").write_text(json.dumps(meta))
    ok = dict(train_clips=0, test_excerpts=4, seed=3)
    assert accuracy._meta_matches(tmp_path, library="fluidr3", **ok)
    assert not accuracy._meta_matches(tmp_path, library="timgm6mb", **ok)
    assert not accuracy._meta_matches(tmp_path, library="fluidr3", **{**ok, "seed": 4})
    assert not accuracy._meta_matches(tmp_path / "missing", library="fluidr3", **ok)


@pytest.mark.timeout(900)
def test_tiny_run_reports_both_recipes_on_both_libraries(smoke_cfg, tmp_path):
    cfg = derive(smoke_cfg, [f"data.cache_dir={tmp_path / 'cache'}", "folds.k=2"])
    size = accuracy.Size(train_clips=22, test_excerpts=2, budget_s=0.5, steps_per_epoch=1)
    result = accuracy.run(cfg, quick=True, size=size)
    members = cfg.ensembles["seed"] + cfg.ensembles[cfg.ensemble]
    assert set(result["training"]) == set(members)
    for info in result["training"].values():  # the budget, not the epoch count, ends every run
        assert size.budget_s <= info["train_s"] < size.budget_s + 30 and 1 <= info["epochs"] < 1000
        assert info["samples"] == info["epochs"] * size.steps_per_epoch * cfg.train.batch_size
    assert result["same_compositions"] == {"matching_label_sets": 2, "excerpts": 2}
    for ts in accuracy.TEST_SETS:
        rows = result["evaluation"][ts]["results"]
        assert set(rows) >= set(members) | {"our ensemble", "seed ensemble, as published"}
        for r in rows.values():
            assert 0 <= r["macro_f1"] <= 1 and 0 < r["lrap"] <= 1
            assert set(r["per_class_f1"]) == set(cfg.label_codes)
    published = next(e for e in result["ensembles"] if e["name"] == "seed ensemble, as published")
    assert published["weights"] == accuracy.SEED_PUBLISHED_WEIGHTS and set(published["thresholds"]) == {0.5}
    md = accuracy.render_markdown(result, plot=False)
    h = accuracy.headline(result)
    assert f"{h['ours_cross_macro_f1']:.3f}" in md and "not measured here" in md
    assert md.count("| seed_cqt_genre |") == 5  # training table + 2 × (scores, per-class F1)
