"""bench/report.py: the line that says what the last whole run covered."""

from bench.report import last_run_line

RUN = {
    "quick": False,
    "benchmarks": {"training": {"rc": 0, "wall_s": 351.2}, "accuracy": {"rc": 0, "wall_s": 1471.0}},
    "total_wall_s": 1822.2,
    "finished_at": "2026-11-30T09:20:00+00:00",
}


def test_results_of_the_run_are_not_called_alone():
    results = {
        "training": {"finished_at": "2026-11-30T08:55:00+00:00"},
        "accuracy": {"finished_at": "2026-11-30T09:19:58+00:00"},
    }
    line = last_run_line(RUN, results)
    assert line.startswith("Last `python -m bench` run: full mode, 30.4 min in all (training 351 s, accuracy")
    assert "finished 2026-11-30T09:20:00+00:00." in line
    assert "alone" not in line


def test_a_benchmark_run_alone_afterwards_is_named():
    results = {
        "training": {"finished_at": "2026-11-30T08:55:00+00:00"},
        "accuracy": {"finished_at": "2026-11-30T18:57:37+00:00"},
        "inference": {"finished_at": "2026-11-30T08:00:00+00:00"},  # not part of the run at all
    }
    line = last_run_line(RUN, results)
    assert line.endswith(
        "Run alone since: accuracy (finished 2026-11-30T18:57:37+00:00), "
        "inference (finished 2026-11-30T08:00:00+00:00)."
    )


def test_an_older_run_without_its_end_time_lists_each_result_time():
    run = {k: v for k, v in RUN.items() if k != "finished_at"}
    line = last_run_line(run, {"accuracy": {"finished_at": "2026-11-30T18:57:37+00:00"}})
    assert line.endswith("Each section's result finished at: accuracy 2026-11-30T18:57:37+00:00.")
