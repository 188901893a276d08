"""bench/accuracy.py: data reuse, and one tiny end-to-end leave-one-library-out run on the smoke profile."""

from __future__ import annotations

import json

import pytest

from bench import accuracy
from bench.common import derive
from ml import lolo


def test_meta_check_reuses_only_a_matching_rendering(tmp_path):
    size = accuracy.Size(("timgm6mb", "opl3"), train_clips=4, train_mixes=2, test_excerpts=3, budget_s=1.0)
    meta = {
        "seed": size.seed,
        "libraries": ["timgm6mb", "opl3"],
        "counts": {"train_files": 4, "mix_files": 2, "test_files": 6},
    }
    (tmp_path / "synth_meta.json").write_text(json.dumps(meta))
    assert accuracy._meta_matches(tmp_path, size)
    assert not accuracy._meta_matches(tmp_path, accuracy.Size(("opl3",), 4, 2, 3, 1.0))
    assert not accuracy._meta_matches(tmp_path, accuracy.Size(size.libraries, 4, 2, 3, 1.0, seed=1))
    assert not accuracy._meta_matches(tmp_path, accuracy.Size(size.libraries, 4, 0, 3, 1.0))
    assert not accuracy._meta_matches(tmp_path / "missing", size)
    # real compositions: a rendering reused only when its recorded corpus shares are the size's
    corpus = accuracy.Size(size.libraries, 4, 2, 3, 1.0, corpus_tests=1.0, corpus_mixes=0.5)
    assert not accuracy._meta_matches(tmp_path, corpus)
    meta["scores"] = {"test_share": 1.0, "mix_share": 0.5}
    (tmp_path / "synth_meta.json").write_text(json.dumps(meta))
    assert accuracy._meta_matches(tmp_path, corpus)
    assert not accuracy._meta_matches(tmp_path, size)


def test_full_size_renders_the_demo_data_with_real_compositions():
    """The headline benchmark measures what `make run` trains on, tested on corpus excerpts."""
    from ml.config import load_config

    demo = load_config(profile="demo").synth
    full = accuracy.FULL
    assert set(full.libraries) == set(demo.libraries)
    assert (full.train_clips, full.train_mixes) == (demo.train_clips, demo.train_mixes)
    assert full.corpus_tests == 1.0 and full.corpus_mixes == demo.scores.mix_share
    overrides = accuracy._synth_overrides(full)
    cfg = accuracy.derive(load_config(profile="demo"), overrides).synth
    assert (cfg.scores.test_share, cfg.scores.mix_share, cfg.test_excerpts) == (1.0, 1.0, 24)


@pytest.mark.timeout(900)
def test_tiny_run_reports_both_recipes_per_held_out_library(smoke_cfg, tmp_path):
    cfg = derive(smoke_cfg, [f"data.cache_dir={tmp_path / 'cache'}", f"runs_dir={tmp_path / 'runs'}"])
    size = accuracy.Size(("timgm6mb", "opl3"), train_clips=22, train_mixes=6, test_excerpts=2, budget_s=0.5)
    result = accuracy.run(cfg, quick=True, size=size)
    assert set(result["protocol"]) == {"ours", "seed"}
    for recipe, rep in result["protocol"].items():
        assert sorted(rep["families"]) == ["opl3", "timgm"]
        for fam, f in rep["families"].items():
            assert f["train_libraries"] and all(lolo.default_family(x) != fam for x in f["train_libraries"])
            for info in f["training"].values():  # the budget, not the epoch count, ends every run
                assert info["train_s"] >= size.budget_s and info["epochs"] >= 1
            assert set(f["results"]) == {*result["recipes"][recipe], lolo.ENSEMBLE, lolo.TRIVIAL}
    h = accuracy.headline(result)
    assert 0 <= h["ours_macro_f1"] <= 1 and 0 < h["ours_lrap"] <= 1 and "seed_macro_f1" in h
    md = accuracy.render_markdown(result, plot=False)
    assert f"{h['ours_macro_f1']:.3f}" in md and "not measured here" in md
    assert md.count("| **mean** |") == 2
