"""The pure parts of bench/training.py: steady-state rates, ratios, speed-ups, the Markdown report."""

from __future__ import annotations

import math

import pytest

from bench import training as T


def _way(rate: float, share: float, e2e: float, threads: float = 2.0) -> dict[str, float]:
    return {"samples_per_s": rate, "data_share": share, "end_to_end_samples_per_s": e2e, "threads": threads}


def test_steady_drops_the_warm_up_epoch_and_takes_the_median():
    assert T.steady([10.0, 100.0, 90.0, 110.0]) == 100.0
    assert T.steady([42.0]) == 42.0  # a single epoch is all there is
    assert T.steady([5.0, float("nan"), 7.0]) == 7.0
    assert math.isnan(T.steady([]))


def test_summarise_comparison_medians_and_ratios():
    runs = [
        {"bare": _way(200, 0.03, 150), "fit": _way(190, 0.03, 120), "ray": _way(180, 0.04, 20)},
        {"bare": _way(220, 0.02, 160), "fit": _way(210, 0.04, 130), "ray": _way(200, 0.05, 30)},
        {"bare": _way(210, 0.04, 155), "fit": _way(200, 0.05, 125), "ray": _way(190, 0.03, 25)},
    ]
    runs[0]["ray"]["history"] = [{"samples_per_s": 1.0}]  # type: ignore[assignment]  # lists are skipped
    c = T.summarise_comparison(runs)
    assert c["rows"]["bare"]["samples_per_s"] == 210
    assert c["rows"]["ray"]["samples_per_s"] == 190
    assert "history" not in c["rows"]["ray"]
    assert c["ratio"] == pytest.approx(190 / 210)
    assert c["ratio_end_to_end"] == pytest.approx(25 / 210)
    assert c["fit_ratio"] == pytest.approx(200 / 210)
    assert c["ray_vs_fit"] == pytest.approx(190 / 200)
    assert c["ratios_per_repeat"] == pytest.approx([0.9, 200 / 220, 190 / 210])
    assert c["meets_target"] is True  # 0.905 ≥ 0.9
    runs[2]["ray"]["samples_per_s"] = 100
    assert T.summarise_comparison(runs)["meets_target"] is False


def test_summarise_comparison_without_a_bare_rate_gives_no_ratio():
    c = T.summarise_comparison([{"bare": _way(0, 0, 0), "ray": _way(100, 0.1, 10)}])
    assert c["ratio"] is None and c["meets_target"] is False


def test_scaling_points_speedups_against_one_trial():
    pts = T.scaling_points(
        [
            {"trials": 1, "aggregate_samples_per_s": 100.0, "end_to_end_samples_per_s": 10.0},
            {"trials": 2, "aggregate_samples_per_s": 190.0, "end_to_end_samples_per_s": 16.0},
            {"trials": 4, "aggregate_samples_per_s": 200.0, "end_to_end_samples_per_s": 18.0},
        ]
    )
    assert [p["speedup"] for p in pts] == pytest.approx([1.0, 1.9, 2.0])
    assert [p["speedup_end_to_end"] for p in pts] == pytest.approx([1.0, 1.6, 1.8])
    assert pts[2]["efficiency"] == pytest.approx(0.5)


def test_scaling_point_sums_trial_rates():
    hist = [
        [{"samples_per_s": 50.0, "samples": 64.0}, {"samples_per_s": 100.0, "samples": 64.0}],
        [{"samples_per_s": 40.0, "samples": 64.0}, {"samples_per_s": 80.0, "samples": 64.0}],
    ]
    p = T.scaling_point(2, hist, wall=32.0, concurrent=2)
    assert p["aggregate_samples_per_s"] == 180.0
    assert p["per_trial_samples_per_s"] == 90.0
    assert p["end_to_end_samples_per_s"] == 256 / 32


def _result(quick: bool = False) -> dict:
    runs = [{"bare": _way(200, 0.03, 150), "fit": _way(196, 0.03, 120), "ray": _way(188, 0.04, 20)}]
    return {
        "quick": quick,
        "settings": {
            "member": "res_genre",
            "folds_k": 5,
            "train_clips": 110,
            "sample_rate": 22050,
            "crop_s": 1.0,
            "batch_size": 32,
            "epochs": 5,
            "steps_per_epoch": 10,
            "repeats": 1,
            "threads": 2,
            "threads_seen": {"bare": 2, "fit": 2, "ray": 2},
            "device": "cpu",
        },
        "comparison": T.summarise_comparison(runs),
        "scaling": {
            "ray_num_cpus": 5.0,
            "ray_start_s": 6.0,
            "cpus_per_trial": 1.0,
            "threads_per_trial": 1,
            "gpus": 0,
            "gpus_per_trial": 0,
            "epochs": 3,
            "steps_per_epoch": 6,
            "points": T.scaling_points(
                [
                    {"trials": 1, "concurrent": 1, "aggregate_samples_per_s": 120.0},
                    {"trials": 2, "concurrent": 2, "aggregate_samples_per_s": 220.0},
                    {"trials": 4, "concurrent": 4, "aggregate_samples_per_s": 230.0},
                ]
            ),
        },
        "machine_summary": {"cpu": "Test CPU", "usable_cores": 2, "gpus": []},
        "changes": "threads pinned",
    }


def test_render_markdown_has_the_tables_ratio_and_caveat():
    md = T.render_markdown(_result(), "img/bench/training_scaling.png")
    assert md.startswith("## Training")
    assert "**Ray Train trial ÷ bare loop (steady state): 0.940**" in md
    assert "meets the target" in md
    assert "| bare PyTorch loop, steady state | 200.0 | 3.0 % | 1.000 |" in md
    assert "Ray Train trial (`ray_jobs.train.train`), end-to-end | 20.0 |" in md
    assert "| 2 | 2 | 220.0 | 1.83 |" in md
    assert "![aggregate training samples/s against concurrent trials](img/bench/training_scaling.png)" in md
    assert "2 torch thread(s) in every variant" in md
    assert "no GPU" in md and "2 usable core(s)" in md
    assert "threads pinned" in md
    assert "pipeline check" not in md
    assert "pipeline check" in T.render_markdown(_result(quick=True), None)


def test_plot_scaling_draws_ideal_and_measured_lines():
    fig = T.plot_scaling(_result()["scaling"]["points"], "t")
    ax = fig.axes[0]
    assert len(ax.lines) == 3
    assert list(ax.lines[0].get_ydata()) == [120.0, 240.0, 480.0]  # ideal: linear in the trials
